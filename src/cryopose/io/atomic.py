"""Atomic output: every file is written to a temporary name beside it and renamed into place.

Also the output folder itself (``make_output_folder``) and small JSON documents (``read_json``).

A reader never sees a half-written file, and an interrupted write leaves the previous
version (or nothing) under the final name. Temporary files are created with mode 0666
minus the umask, like any other writer's files (not 0600 as ``tempfile.mkstemp`` makes
them), so a lab's shared project folder can read the outputs.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cryopose.io.outputs import record_written

__all__ = [
    "read_json",
    "make_output_folder",
    "temporary_path",
    "atomic_path",
    "atomic_write",
    "write_text_atomic",
    "write_json_atomic",
    "json_safe",
]


def make_output_folder(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); UserError if ``path`` is a file."""
    from cryopose.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder; choose another output folder", option="out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def temporary_path(path: str | os.PathLike) -> Path:
    """Create an empty, unique temporary file beside ``path`` (same suffix) and return it.

    The file is created with O_EXCL and mode 0666 & ~umask; the parent folder is created
    if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (for writers that take a file
    name: mrcfile, matplotlib, torch.save); it is renamed to ``path`` when the block ends
    without an exception and removed otherwise."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
        record_written(path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` through a temporary file renamed into place on success."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write opens files for writing only, not mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (NaN, ±inf) replaced by None, recursively, and numpy
    scalars and arrays turned into Python numbers and lists: valid JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically; non-finite numbers become null."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path`` (e.g. a command's summary.json)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
