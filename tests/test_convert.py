"""``cryopose convert``: .cs -> .star, STAR 3.0 <-> 3.1, errors as one line with exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run
from cryopose.io import read_cryosparc, read_star


def test_cs_to_star(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.star"
    code, stdout, _ = run(["convert", str(shared_data / "metadata/empiar_10076_7.cs"), str(out)], capsys)
    assert code == 0
    assert str(out) in stdout and "7 particles" in stdout
    p = read_star(out)
    cs = read_cryosparc(shared_data / "metadata/empiar_10076_7.cs")
    assert p.optics is not None and len(p.optics) == 1
    np.testing.assert_allclose(p.ctf_parameters()["defocus_u"], cs.ctf_parameters()["defocus_u"], rtol=1e-9)
    np.testing.assert_allclose(p.pixel_size, cs.pixel_size, rtol=1e-9)
    assert p.image_size == 320


def test_star_31_to_30_and_back(shared_data: Path, tmp_path: Path, capsys) -> None:
    src = shared_data / "metadata/relion31.star"
    code, _, _ = run(["convert", str(src), str(tmp_path / "a.star"), "--to", "3.0"], capsys)
    assert code == 0
    assert "data_optics" not in (tmp_path / "a.star").read_text()
    code, _, _ = run(["convert", str(tmp_path / "a.star"), str(tmp_path / "b.star")], capsys)
    assert code == 0
    a, b = read_star(src), read_star(tmp_path / "b.star")
    np.testing.assert_allclose(b.rotations, a.rotations, atol=1e-9)
    np.testing.assert_allclose(b.shifts_angstrom, a.shifts_angstrom, atol=1e-6)
    np.testing.assert_allclose(b.pixel_size, a.pixel_size, rtol=1e-9)
    assert b.image_paths.tolist() == a.image_paths.tolist()  # names rewritten to reach the same stacks


def test_apix_and_image_size(shared_data: Path, tmp_path: Path, capsys) -> None:
    src = shared_data / "relion_projections_70s/rln_proj_64.star"  # no pixel size
    code, _, err = run(["convert", str(src), str(tmp_path / "x.star")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--apix" in err
    code, _, _ = run(["convert", str(src), str(tmp_path / "x.star"), "--apix", "1.0", "--image-size", "64"], capsys)
    assert code == 0
    p = read_star(tmp_path / "x.star")
    assert p.pixel_size.tolist() == [1.0] * 5 and p.image_size == 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.star", "{tmp}/o.star"], "does not exist"),
        (["{tmp}/same.star", "{tmp}/same.star"], "is one of the inputs"),
        (["{data}/metadata/relion31.star", "{tmp}/o.txt"], ".star"),
        (["{tmp}/junk.cs", "{tmp}/o.star"], "not a cryoSPARC"),
    ],
)
def test_errors_are_one_line(shared_data: Path, tmp_path: Path, capsys, args, message) -> None:
    (tmp_path / "same.star").write_text((shared_data / "metadata/relion31.star").read_text())
    (tmp_path / "junk.cs").write_bytes(b"junk")
    argv = ["convert", *[a.format(tmp=tmp_path, data=shared_data) for a in args]]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o.star").exists()
