"""STAR round trips keep optics group numbers and names, block names and block order; image
names with spaces are quoted on write and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopose.errors import UserError
from cryopose.io import ParticleImages, read_star, write_stack, write_star
from cryopose.particles import ParticleSet

RELION31 = [
    "metadata/relion31.star",
    "metadata/relion31.6opticsgroups.star",
    "metadata/sample_particles_relion31.star",
    "metadata/relion5.star",
    "trpv1/trpv1_small_stack.relinked.star",  # one optics group numbered 7
]


def block_names(path: Path) -> list[str]:
    return [line.strip()[5:] for line in path.read_text().splitlines() if line.strip().startswith("data_")]


def groups(p: ParticleSet) -> list[tuple[int, str]]:
    return [(int(g), str(n)) for g, n in p.optics[["rlnOpticsGroup", "rlnOpticsGroupName"]].to_numpy()]


@pytest.mark.parametrize("name", RELION31)
def test_31_to_30_to_31_keeps_optics_groups(shared_data: Path, tmp_path: Path, name: str) -> None:
    a = read_star(shared_data / name)
    write_star(a, tmp_path / "a30.star", version="3.0")
    b = read_star(tmp_path / "a30.star")
    assert b.optics is None
    write_star(b, tmp_path / "a31.star")
    c = read_star(tmp_path / "a31.star")
    assert groups(c) == groups(a)
    assert c.table["rlnOpticsGroup"].tolist() == a.table["rlnOpticsGroup"].tolist()
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
        by_group = c.optics.set_index("rlnOpticsGroup")[col]
        np.testing.assert_array_equal(
            by_group.loc[a.optics["rlnOpticsGroup"]].to_numpy(), a.optics[col].to_numpy(), col
        )
    np.testing.assert_array_equal(c.pixel_size, a.pixel_size)  # exact: 3.0 writes magnification 10000
    np.testing.assert_allclose(c.rotations, a.rotations, atol=1e-9)
    np.testing.assert_allclose(c.shifts_angstrom, a.shifts_angstrom, atol=1e-6)
    assert block_names(tmp_path / "a31.star") == ["optics", "particles"]


def test_30_to_31_to_30_keeps_the_block_name(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "metadata/sample_particles_relion30.star"
    assert block_names(src) == ["model_class_1"]
    a = read_star(src)
    write_star(a, tmp_path / "same30.star", version="3.0")
    assert block_names(tmp_path / "same30.star") == ["model_class_1"]
    write_star(a, tmp_path / "b31.star")
    assert block_names(tmp_path / "b31.star") == ["optics", "particles"]  # RELION 3.1 needs data_particles
    b = read_star(tmp_path / "b31.star")
    write_star(b, tmp_path / "c31.star")  # the name survives 3.1 -> 3.1 too
    write_star(read_star(tmp_path / "c31.star"), tmp_path / "d30.star", version="3.0")
    assert block_names(tmp_path / "d30.star") == ["model_class_1"]
    d = read_star(tmp_path / "d30.star")
    np.testing.assert_allclose(d.pixel_size, a.pixel_size, rtol=1e-12)  # as magnification 10000 now
    assert d.image_paths.tolist() == a.image_paths.tolist()  # names relinked to the same stack
    for col in a.table.columns.drop(["rlnMagnification", "rlnDetectorPixelSize", "rlnImageName"]):
        x, y = a.table[col], d.table[col]
        if x.dtype.kind in "fiu":
            np.testing.assert_allclose(y.to_numpy(float), x.to_numpy(float), rtol=1e-9, err_msg=col)
        else:
            assert y.astype(str).tolist() == x.astype(str).tolist(), col
    # a set without a block name of its own is written as RELION 3.0's data_
    plain = ParticleSet.from_arrays(None, None, 1.0, 16, ["1@a.mrcs"], None)
    write_star(plain, tmp_path / "p30.star", version="3.0")
    assert block_names(tmp_path / "p30.star") == [""]


def test_relion30_with_optics_group_columns(tmp_path: Path) -> None:
    (tmp_path / "in.star").write_text(
        "data_\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnOpticsGroupName #3\n_rlnVoltage #4\n"
        "_rlnImagePixelSize #5\n_rlnBeamTiltX #6\n"
        "1@a.mrcs 7 late 300.0 1.1 0.1\n2@a.mrcs 3 early 200.0 1.2 0.2\n3@a.mrcs 7 late 300.0 1.1 0.3\n"
    )
    p = read_star(tmp_path / "in.star")
    write_star(p, tmp_path / "out.star")
    q = read_star(tmp_path / "out.star")
    assert groups(q) == [(3, "early"), (7, "late")]  # numbers and names kept, sorted by number
    assert q.table["rlnOpticsGroup"].tolist() == [7, 3, 7]
    assert q.table["rlnBeamTiltX"].tolist() == [0.1, 0.2, 0.3]  # varies within a group: stays per particle
    assert "rlnBeamTiltX" not in q.optics.columns
    # groups that disagree on a setting RELION needs per group get new numbers, one per setting
    (tmp_path / "mixed.star").write_text(
        "data_\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnVoltage #3\n_rlnImagePixelSize #4\n"
        "1@a.mrcs 1 300.0 1.1\n2@a.mrcs 1 200.0 1.1\n"
    )
    write_star(read_star(tmp_path / "mixed.star"), tmp_path / "mixed31.star")
    m = read_star(tmp_path / "mixed31.star")
    assert sorted(m.optics["rlnVoltage"]) == [200.0, 300.0] and m.table["rlnOpticsGroup"].nunique() == 2
    # per-particle beam tilt in a 3.0 file does not make one optics group per particle
    (tmp_path / "tilt.star").write_text(
        "data_\n\nloop_\n_rlnImageName #1\n_rlnVoltage #2\n_rlnImagePixelSize #3\n_rlnBeamTiltX #4\n"
        "1@a.mrcs 300.0 1.1 0.1\n2@a.mrcs 300.0 1.1 0.2\n3@a.mrcs 300.0 1.1 0.3\n"
    )
    write_star(read_star(tmp_path / "tilt.star"), tmp_path / "tilt31.star")
    assert len(read_star(tmp_path / "tilt31.star").optics) == 1


def test_extra_blocks_keep_their_place(tmp_path: Path) -> None:
    src = tmp_path / "in.star"
    src.write_text(
        "data_general\n\n_rlnNrClasses 3\n\n"
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
        "_rlnVoltage #4\n_rlnImageSize #5\n4 g4 1.5 300.0 32\n\n"
        "data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n1@ref.mrcs 1.0\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n1@s.mrcs 4\n2@s.mrcs 4\n\n"
        "data_extra\n\nloop_\n_rlnSomething #1\n1\n"
    )
    p = read_star(src)
    write_star(p, tmp_path / "a.star")
    assert block_names(tmp_path / "a.star") == ["general", "optics", "model_classes", "particles", "extra"]
    assert groups(read_star(tmp_path / "a.star")) == [(4, "g4")]
    write_star(p, tmp_path / "b30.star", version="3.0")  # RELION 3.0 reads the first block: particles first
    assert block_names(tmp_path / "b30.star") == ["", "general", "model_classes", "extra"]
    write_star(read_star(tmp_path / "b30.star"), tmp_path / "c31.star")
    assert groups(read_star(tmp_path / "c31.star")) == [(4, "g4")]
    # subsets and new columns keep the layout
    write_star(p.subset([1]).with_columns(rlnFoo=2.0), tmp_path / "s.star")
    assert block_names(tmp_path / "s.star") == ["general", "optics", "model_classes", "particles", "extra"]


def test_image_names_with_spaces(tmp_path: Path) -> None:
    images = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    write_stack(tmp_path / "my stack.mrcs", images, 2.0)
    names = [f"{i:06d}@my stack.mrcs" for i in (1, 2, 3)]
    p = ParticleSet.from_arrays(None, None, 2.0, 8, names, None, optics_group_name="optics group one")
    write_star(p, tmp_path / "p.star")
    text = (tmp_path / "p.star").read_text()
    assert '"000002@my stack.mrcs"' in text and '"optics group one"' in text
    q = read_star(tmp_path / "p.star")
    assert q.table["rlnImageName"].tolist() == names
    assert q.optics["rlnOpticsGroupName"].tolist() == ["optics group one"]
    np.testing.assert_array_equal(ParticleImages(q).read([2, 0]), images[[2, 0]])
    write_star(q, tmp_path / "p2.star", version="3.0")
    assert read_star(tmp_path / "p2.star").table["rlnImageName"].tolist() == names


@pytest.mark.parametrize("bad", ['1@a"b.mrcs', "1@a'b.mrcs", "1@a#b.mrcs", "1@a\tb.mrcs", "1@a\nb.mrcs"])
def test_names_star_cannot_hold_are_refused(tmp_path: Path, bad: str) -> None:
    p = ParticleSet.from_arrays(None, None, 2.0, 8, ["1@ok.mrcs", bad], None)
    with pytest.raises(UserError, match=r"rlnImageName of row 2 in data_particles .* cannot hold"):
        write_star(p, tmp_path / "p.star")
    assert not (tmp_path / "p.star").exists()
