"""Helpers for tests that run the command line in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryopose.cli.main import main

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


def run(args, capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_user_error(args, capsys, *fragments) -> str:
    """The command fails with exit 2 and one line 'Error: ...' containing ``fragments``."""
    code, _, err = run(args, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
