"""The layout of DESIGN.md, enforced: imports only go down (cli -> jobs -> algorithms ->
imaging/geometry -> nothing), files are touched only in io/, library messages name no CLI
option, and every subpackage declares its public names."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cryopose"

# What each part of the package may import from cryopose (besides itself).
ALGORITHMS = {"align", "reconstruct", "validate", "learn", "evaluate"}
BASE = {"errors", "geometry", "imaging"}
ALLOWED = {
    "errors": set(),
    "geometry": {"errors"},
    "imaging": {"errors", "geometry"},
    "particles": BASE,
    "io": BASE | {"particles"},
    **{name: BASE | ALGORITHMS for name in ALGORITHMS},
    "jobs": BASE | ALGORITHMS | {"particles", "io"},
    "api": BASE | ALGORITHMS | {"particles", "io", "jobs"},
    "cli": BASE | ALGORITHMS | {"particles", "io", "jobs", "__init__"},
    "__init__": set(),  # names are imported lazily from cryopose.api
    "__main__": {"cli"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("cryopose."):
                parts.add(name.split(".")[1])
            elif name == "cryopose":
                parts.add("__init__")
    return parts


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path):
    part = _part(path)
    if part == "data":
        return
    assert part in ALLOWED, f"{part} is not in the layout; add it to DESIGN.md and this test"
    upward = _imported_parts(path) - ALLOWED[part] - {part}
    assert not upward, f"{path.relative_to(SRC)} ({part}) imports {sorted(upward)}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from cryopose.cli.main import cli\nimport cryopose.jobs.validate\n")
    assert _imported_parts(bad) == {"cli", "jobs"}


_FILE_CALLS = re.compile(
    r"\b(open\(|\.write_text\(|\.read_text\(|\.write_bytes\(|\.unlink\(|shutil\.|os\.replace\(|np\.save|torch\.save\(|\.savefig\()"
)


@pytest.mark.parametrize(
    "path", [p for p in _modules() if _part(p) not in ("io", "cli")], ids=lambda p: str(p.relative_to(SRC))
)
def test_files_are_touched_only_in_io(path):
    hits = [
        line.strip()
        for line in path.read_text().splitlines()
        if _FILE_CALLS.search(line) and not line.strip().startswith("#")
    ]
    assert not hits, f"{path.relative_to(SRC)} touches files outside io/: {hits}"


def test_library_messages_name_no_cli_option():
    pattern = re.compile(r"UserError\(\s*f?[\"'][^\"']*--[a-z]")
    offenders = []
    for path in _modules():
        if _part(path) == "cli":
            continue
        text = path.read_text()
        for m in pattern.finditer(text):
            offenders.append(f"{path.relative_to(SRC)}: {m.group(0)}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "package",
    [
        "cryopose.geometry",
        "cryopose.imaging",
        "cryopose.io",
        "cryopose.align",
        "cryopose.reconstruct",
        "cryopose.validate",
        "cryopose.evaluate",
        "cryopose.jobs",
    ],
)
def test_every_subpackage_declares_its_public_names(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list) and module.__all__, package
