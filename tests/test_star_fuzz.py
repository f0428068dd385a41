"""Seeded fuzzing of real STAR files: 440 corruptions (cut at a random byte, lines
deleted, duplicated or swapped, a value swapped for garbage, header lines duplicated,
non-ASCII text or random bytes inserted, empty and optics-only files, ...).

Reading each corrupted file either raises UserError with a one-line message, or succeeds
with values that match the uncorrupted file (at most the one corrupted row differs; a cut
file gives only original rows), and no NaN unless the corruption wrote one. Never another
exception (also from the accessors commands use), never a hang.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryopose.errors import UserError
from cryopose.io import read_star
from cryopose.particles import ParticleSet

SOURCES = [
    "metadata/relion31.star",
    "metadata/sample_particles_relion31.star",  # two optics groups, tabs in the optics rows
    "metadata/sample_particles_relion30.star",  # RELION 3.0, origins in pixels
    "quoted:metadata/relion31.star",  # the same with image names in "double quotes", with spaces
]
CASES_PER_SOURCE = int(os.environ.get("CRYOPOSE_FUZZ_CASES", 110))  # 4 x 110 cases, ~5 s
SEED = int(os.environ.get("CRYOPOSE_FUZZ_SEED", 7))
GARBAGE = [
    "abc",
    "1.2.3",
    "nan",
    "inf",
    "-",
    "12x",
    "1e999",
    "0x10",
    '"',
    "'q",
    "#x",
    "a#b",
    "é",
    "\u00a0",
    "",
    "1,5",
    "--1",
    "_rlnFoo",
    "data_x",
    "loop_",
    "3",
    "-0.0",
    '"a b"',
    "NaN",
    "<NA>",
    "1e-400",
]
NON_ASCII = ["é", "µ", "\u00a0", "\u2003", "中", "\U0001f600", "\ufeff", "\u2028", "\x85"]


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _data_rows(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip() and line.strip()[0] not in "_#dl"]


def corrupt(text: str, rng: np.random.Generator) -> tuple[str | bytes, str]:
    """One random corruption of text: (new content, kind)."""
    lines = _lines(text)
    kind = rng.choice(
        [
            "truncate",
            "delete line",
            "duplicate line",
            "swap rows",
            "garbage field",
            "duplicate header",
            "insert non-ascii",
            "insert bytes",
            "empty",
            "optics only",
            "blank line",
            "delete char",
            "replace char",
            "crlf",
            "lone cr",
            "delete loop_",
            "duplicate block",
            "no final newline",
        ]
    )
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if kind == "truncate":
        return text[: int(rng.integers(len(text)))], kind
    if kind == "delete line":
        del lines[int(rng.integers(len(lines)))]
    elif kind == "duplicate line":
        i = int(rng.integers(len(lines)))
        lines.insert(i, lines[i])
    elif kind == "swap rows":
        rows = _data_rows(lines)
        i, j = pick(rows), pick(rows)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "garbage field":
        i = pick([k for k, line in enumerate(lines) if line.strip()])
        tokens = lines[i].split()
        tokens[int(rng.integers(len(tokens)))] = pick(GARBAGE)
        lines[i] = " ".join(tokens)
    elif kind == "duplicate header":
        i = pick([k for k, line in enumerate(lines) if line.startswith("_")])
        lines.insert(int(rng.integers(i - 3, i + 4)), lines[i])
    elif kind == "insert non-ascii":
        at = int(rng.integers(len(text)))
        return text[:at] + pick(NON_ASCII) + text[at:], kind
    elif kind == "insert bytes":
        data = text.encode()
        at = int(rng.integers(len(data)))
        return data[:at] + bytes(rng.integers(0, 256, int(rng.integers(1, 4))).astype(np.uint8)) + data[at:], kind
    elif kind == "empty":
        return pick(["", "\n", "   \n\n", "# nothing\n"]), kind
    elif kind == "optics only":
        return text.split("data_particles")[0], kind
    elif kind == "blank line":
        lines.insert(int(rng.integers(len(lines))), pick(["", "  ", "\t"]))
    elif kind == "delete char":
        at = int(rng.integers(len(text)))
        return text[:at] + text[at + 1 :], kind
    elif kind == "replace char":
        at = int(rng.integers(len(text)))
        return text[:at] + chr(int(rng.integers(32, 127))) + text[at + 1 :], kind
    elif kind == "crlf":
        return text.replace("\n", "\r\n"), kind
    elif kind == "lone cr":
        at = int(rng.integers(len(text)))
        return text[:at] + "\r" + text[at:], kind
    elif kind == "delete loop_":
        lines.remove(pick([line for line in lines if line.startswith("loop_")]))
    elif kind == "duplicate block":
        start = text.rindex("data_")
        return text + "\n" + text[start:], kind
    elif kind == "no final newline":
        return text.rstrip("\n"), kind
    return "\n".join(lines), kind


def _norm(value) -> object:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return round(float(value), 6)
    return str(value)


def _keys(table: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [tuple(_norm(v) for v in row) for row in table[columns].itertuples(index=False)]


def _new_rows(clean: pd.DataFrame, got: pd.DataFrame, columns: list[str]) -> int:
    """Rows of got (on the shared columns) that are not rows of clean."""
    columns = [c for c in columns if c in got.columns and c in clean.columns]
    if not columns:
        return 0
    pool = Counter(_keys(clean, columns))
    new = 0
    for key in _keys(got, columns):
        if pool[key] > 0:
            pool[key] -= 1
        else:
            new += 1
    return new


def _use(p: ParticleSet) -> None:
    """What commands ask of a set: only UserError may come out."""
    for use in (
        lambda: p.rotations,
        lambda: p.shifts_angstrom,
        lambda: p.ctf_parameters(),
        lambda: p.pixel_size,
        lambda: p.image_indices,
        lambda: p.image_paths,
        lambda: p.half_sets,
        lambda: p.image_size,
    ):
        try:
            use()
        except UserError as exc:
            assert "\n" not in str(exc)


@pytest.mark.parametrize("source", SOURCES)
def test_fuzzed_star_files(shared_data: Path, tmp_path: Path, source: str) -> None:
    src = shared_data / source.removeprefix("quoted:")
    text = src.read_text()
    if source.startswith("quoted:"):
        text = "\n".join(
            " ".join(f'"{t.replace("@", "@my ")}"' if "@" in t else t for t in line.split()) if "@" in line else line
            for line in text.split("\n")
        )
        src = tmp_path / "quoted.star"
        src.write_text(text)
    clean = read_star(src)
    raw = starfile.read(src, always_dict=True)
    raw_particles = raw.get("particles", next(iter(raw.values())))
    # columns of the particle block as written in the file (not merged or computed ones)
    particle_columns = [c for c in raw_particles.columns if c not in ("rlnOriginX", "rlnOriginY")]
    assert not clean.table.isna().any().any()
    assert source != SOURCES[-1] or clean.table["rlnImageName"].str.contains("@my ").all()
    rng = np.random.default_rng(SEED + SOURCES.index(source))
    old = signal.signal(signal.SIGALRM, _alarm)
    outcomes: Counter = Counter()
    started = time.perf_counter()
    try:
        for case in range(CASES_PER_SOURCE):
            content, kind = corrupt(text, rng)
            path = tmp_path / f"c{case}.star"
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
            label = f"case {case} ({kind}) of {source}"
            signal.setitimer(signal.ITIMER_REAL, 10.0)
            try:
                got = read_star(path)
                _use(got)
            except UserError as exc:
                message = str(exc)
                assert message and "\n" not in message and "\r" not in message, (label, message)
                assert "np.float64" not in message, (label, message)
                outcomes["UserError"] += 1
                continue
            except Timeout:
                pytest.fail(f"{label}: reading took over 10 s")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            outcomes["read"] += 1
            written = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
            if not re.search(r"(?<!\S)(nan|NaN|<NA>)(?!\S)", written):
                table = got.table
                assert not table.select_dtypes("number").isna().any().any(), f"{label}: NaN appeared"
                strings = table.select_dtypes(exclude="number")
                assert not (strings.isna().any().any() or (strings.astype(str) == "").any().any()), (
                    f"{label}: empty value"
                )
            allowed = 0 if kind in ("truncate", "swap rows") else 1
            assert len(got) <= len(clean) + 1, label
            new = _new_rows(clean.table, got.table, particle_columns)
            assert new <= allowed, f"{label}: {new} particle rows differ from the file's"
            if clean.optics is not None and got.optics is not None:
                assert _new_rows(clean.optics, got.optics, list(clean.optics.columns)) <= allowed, label
    finally:
        signal.signal(signal.SIGALRM, old)
    assert outcomes["UserError"] > 0.3 * CASES_PER_SOURCE and outcomes["read"] > 0.1 * CASES_PER_SOURCE, outcomes
    assert time.perf_counter() - started < 0.15 * CASES_PER_SOURCE, "a fuzz case takes over 0.15 s on average"
