"""I/O layer: STAR, MRC/MRCS and cryoSPARC .cs <-> ParticleSet, on real files from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from cryopose.errors import UserError
from cryopose.io import (
    ParticleImages,
    StackWriter,
    cryosparc_pose_to_matrix,
    matrix_to_cryosparc_pose,
    open_stack,
    read_cryosparc,
    read_map,
    read_star,
    write_map,
    write_stack,
    write_star,
)
from cryopose.particles import ParticleSet

STAR_FILES = [
    "metadata/empiar_10076_7.star",
    "metadata/relion31.6opticsgroups.star",
    "metadata/relion31.star",
    "metadata/relion5.star",
    "metadata/sample_incomplete_ctf_params.star",
    "metadata/sample_particles_relion30.star",
    "metadata/sample_particles_relion31.star",
    "metadata/sample_relion_symmetry_group_D4.star",
    "relion_projections_70s/rln_proj_64.star",
    "relion_projections_70s/rln_proj_64_shifted.star",
    "relion_projections_70s/rln_proj_65_centered.star",
    "trpv1/trpv1_small_stack.star",
    "trpv1/trpv1_small_stack.relinked.star",
]
CS_FILES = ["metadata/empiar_10076_7.cs", "metadata/cryosparc_J2_particles_exported.cs"]


def assert_tables_equal(a: pd.DataFrame, b: pd.DataFrame, columns=None) -> None:
    columns = sorted(set(a.columns) & set(b.columns)) if columns is None else columns
    for col in columns:
        x, y = a[col], b[col]
        if x.dtype.kind in "fiu":
            assert y.dtype.kind in "fiu", col
            np.testing.assert_allclose(y.to_numpy(float), x.to_numpy(float), rtol=1e-6, atol=1e-9, err_msg=col)
        elif col == "rlnImageName":  # rewritten to resolve from the new file's folder: same number, same stack name
            assert [(n.split("@")[0], Path(n.split("@")[-1]).name) for n in x] == [
                (n.split("@")[0], Path(n.split("@")[-1]).name) for n in y
            ], col
        else:
            assert list(x.astype(str)) == list(y.astype(str)), col


# ----------------------------------------------------------------------------- STAR
@pytest.mark.parametrize("name", STAR_FILES)
def test_star_reads_and_round_trips(shared_data: Path, tmp_path: Path, name: str) -> None:
    p = read_star(shared_data / name, apix=1.0 if "rln_proj_64.star" in name else None)
    assert len(p) > 0
    out = tmp_path / "out.star"
    write_star(p, out)
    q = read_star(out)
    if p.optics is not None:  # 3.1 in, 3.1 out: same columns, same values, same dtypes
        assert list(q.table.columns) == list(p.table.columns)
        assert list(q.optics.columns) == list(p.optics.columns)
        assert (q.table.dtypes == p.table.dtypes).all()
    assert_tables_equal(p.table, q.table)
    assert q.image_paths.tolist() == p.image_paths.tolist()  # the same stacks from the new folder
    np.testing.assert_allclose(q.pixel_size, p.pixel_size, rtol=1e-9)


def test_relion30_to_31_to_30_keeps_values(shared_data: Path, tmp_path: Path) -> None:
    p = read_star(shared_data / "metadata/sample_particles_relion30.star")
    assert p.optics is None
    write_star(p, tmp_path / "a31.star", version="3.1")
    p31 = read_star(tmp_path / "a31.star")
    assert p31.optics is not None
    assert sorted(p31.optics["rlnVoltage"]) == [200.0, 300.0]  # two distinct optics settings -> 2 groups
    write_star(p31, tmp_path / "b30.star", version="3.0")
    p30 = read_star(tmp_path / "b30.star")
    assert p30.optics is None
    text = (tmp_path / "b30.star").read_text()
    assert "data_optics" not in text and "_rlnOriginX " in text.replace("#", " ")
    assert_tables_equal(
        p.table, p30.table, [c for c in p.table.columns if c not in ("rlnMagnification", "rlnDetectorPixelSize")]
    )
    np.testing.assert_allclose(p30.pixel_size, p.pixel_size, rtol=1e-9)
    np.testing.assert_allclose(p30.shifts_angstrom, p.shifts_angstrom, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p30.rotations, p.rotations, atol=1e-9)


def test_six_optics_groups_merge_and_split(shared_data: Path, tmp_path: Path) -> None:
    p = read_star(shared_data / "metadata/relion31.6opticsgroups.star")
    assert len(p.optics) == 6
    by_group = p.optics.set_index("rlnOpticsGroup")
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnImagePixelSize", "rlnOpticsGroupName", "rlnBeamTiltX"):
        expected = p.table["rlnOpticsGroup"].map(by_group[col])
        assert list(p.table[col]) == list(expected), col
    assert set(np.unique(p.pixel_size)) == {1.24, 1.25}
    write_star(p, tmp_path / "o.star")
    q = read_star(tmp_path / "o.star")
    assert len(q.optics) == 6
    assert_tables_equal(p.optics, q.optics)
    # the particle block does not repeat optics columns
    text = (tmp_path / "o.star").read_text().split("data_particles")[1]
    assert "_rlnVoltage" not in text and "_rlnOpticsGroup " in text.replace("#", " ")
    # a subset keeps every optics group (RELION does too) with unchanged types
    write_star(p.subset(p.table["rlnOpticsGroup"].to_numpy() == 6), tmp_path / "s.star")
    s = read_star(tmp_path / "s.star")
    assert len(s.optics) == 6 and (s.optics.dtypes == p.optics.dtypes).all()


def test_numeric_looking_strings_stay_strings(shared_data: Path, tmp_path: Path) -> None:
    p = read_star(shared_data / "metadata/empiar_10076_7.star")
    assert p.table["rlnMicrographName"].tolist()[:2] == ["1", "2"]  # starfile alone makes these ints
    r = read_star(shared_data / "metadata/relion31.star")
    assert r.table["rlnImageName"].iloc[0].startswith("000001@")
    assert r.table["rlnOpticsGroupName"].iloc[0] == "opticsGroup1"
    write_star(p, tmp_path / "e.star")
    q = read_star(tmp_path / "e.star")
    assert q.table["rlnMicrographName"].tolist()[:2] == ["1", "2"]


def test_unknown_columns_and_extra_blocks_survive(tmp_path: Path) -> None:
    src = tmp_path / "in.star"
    src.write_text(
        "data_general\n\n_rlnNrClasses 3\n\n"
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
        "_rlnVoltage #4\n_rlnImageSize #5\n1 007 1.5 300.0 32\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnMyLabel #3\n_rlnMicrographName #4\n"
        "000001@s.mrcs 1 0.123456789 000042\n000002@s.mrcs 1 2.5 000043\n\n"
        "data_extra\n\nloop_\n_rlnSomething #1\n_rlnOther #2\n1 a\n2 b\n"
    )
    p = read_star(src)
    assert list(p.extra_blocks) == ["general", "extra"]
    assert p.table["rlnOpticsGroupName"].iloc[0] == "007"
    assert p.table["rlnMicrographName"].tolist() == ["000042", "000043"]
    write_star(p, tmp_path / "out.star")
    q = read_star(tmp_path / "out.star")
    assert list(q.extra_blocks) == ["general", "extra"]
    assert q.extra_blocks["general"]["rlnNrClasses"] == 3
    assert q.extra_blocks["extra"]["rlnOther"].tolist() == ["a", "b"]
    assert q.table["rlnMyLabel"].tolist() == [0.123456789, 2.5]
    assert q.table["rlnMicrographName"].tolist() == ["000042", "000043"]
    assert q.optics["rlnOpticsGroupName"].tolist() == ["007"]


def test_pre31_origins_become_angstrom(shared_data: Path) -> None:
    p = read_star(shared_data / "metadata/sample_particles_relion30.star")
    assert "rlnOriginX" not in p.table.columns
    # first row of the file: rlnOriginX 0.199600 px, rlnDetectorPixelSize 5 um, rlnMagnification 37369.207031
    apix = 5.0 * 1e4 / 37369.207031
    assert p.table["rlnOriginXAngst"].iloc[0] == pytest.approx(0.1996 * apix, rel=1e-9)
    assert p.shifts_angstrom[0, 1] == pytest.approx(0.1996 * apix, rel=1e-9)
    s = read_star(shared_data / "relion_projections_70s/rln_proj_64_shifted.star")  # 3.1 optics, px origins
    np.testing.assert_allclose(s.shifts_angstrom[:2], [[6.0, 10.0], [10.0, -5.0]])


def test_star_errors(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_star(tmp_path / "missing.star")
    (tmp_path / "bad.star").write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n")
    with pytest.raises(UserError, match="no particle block"):
        read_star(tmp_path / "bad.star")
    p = read_star(shared_data / "relion_projections_70s/rln_proj_64.star")  # no optics, no pixel size
    with pytest.raises(UserError, match=r"no pixel size \(rlnImagePixelSize\); give the pixel size") as err:
        p.pixel_size
    assert err.value.option == "apix" and "--" not in str(err.value)  # the CLI names the option, the library does not
    assert read_star(shared_data / "relion_projections_70s/rln_proj_64.star", apix=1.0).pixel_size[0] == 1.0
    inc = read_star(shared_data / "metadata/sample_incomplete_ctf_params.star")  # has no rlnVoltage
    with pytest.raises(UserError, match="rlnVoltage"):
        inc.ctf_parameters()
    src = tmp_path / "copy.star"
    write_star(p, src)
    with pytest.raises(UserError, match="overwrite"):
        write_star(read_star(src), src)


def test_ctf_and_particle_accessors(shared_data: Path) -> None:
    p = read_star(shared_data / "trpv1/trpv1_small_stack.relinked.star")
    ctf = p.ctf_parameters()
    assert ctf["defocus_u"][0] == pytest.approx(14657.509766)
    assert ctf["voltage"][0] == 300.0 and ctf["spherical_aberration"][0] == 2.0
    assert ctf["scale"][0] == 1.0 and ctf["bfactor"][0] == 0.0
    assert p.image_size == 48
    assert p.half_sets.tolist()[:2] == [2, 1]
    assert p.class_numbers.tolist()[0] == 1
    assert p.image_indices.tolist() == list(range(10))
    assert all(Path(s).is_absolute() for s in p.image_paths)
    # rotations agree with scipy's ZYZ (A^T = Rotation.from_euler('ZYZ', angles))
    angles = p.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(p.rotations, ref, atol=1e-12)
    sub = p.subset(p.half_sets == 1)
    assert len(sub) == 5 and sub.optics is not None
    assert len(p.subset([0, 3])) == 2


def test_with_poses_and_from_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rots = Rotation.random(6, random_state=1).as_matrix().transpose(0, 2, 1)
    shifts = rng.normal(size=(6, 2)) * 3
    ctf = dict(
        defocus_u=rng.uniform(1e4, 2e4, 6),
        defocus_v=rng.uniform(1e4, 2e4, 6),
        defocus_angle=30.0,
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
    )
    names = [f"{i + 1:06d}@sim.mrcs" for i in range(6)]
    p = ParticleSet.from_arrays(rots, shifts, 1.5, 64, names, ctf, extra_columns={"rlnRandomSubset": [1, 2] * 3})
    np.testing.assert_allclose(p.rotations, rots, atol=1e-12)
    np.testing.assert_allclose(p.shifts_angstrom, shifts)
    assert p.pixel_size.tolist() == [1.5] * 6 and p.image_size == 64
    write_star(p, tmp_path / "sim.star")
    q = read_star(tmp_path / "sim.star")
    np.testing.assert_allclose(q.rotations, rots, atol=1e-9)
    np.testing.assert_allclose(q.shifts_angstrom, shifts, atol=1e-9)
    np.testing.assert_allclose(q.ctf_parameters()["defocus_u"], ctf["defocus_u"], rtol=1e-9)
    assert list(q.optics.columns[:2]) == ["rlnOpticsGroup", "rlnOpticsGroupName"]
    r = q.with_poses(rotations=rots[::-1].copy(), shifts_angstrom=np.zeros((6, 2)))
    np.testing.assert_allclose(r.rotations, rots[::-1], atol=1e-12)
    assert r.with_columns(rlnFoo=np.arange(6)).table["rlnFoo"].tolist() == list(range(6))


# ----------------------------------------------------------------------------- MRC
def test_map_round_trip_and_errors(tmp_path: Path) -> None:
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 2.5)
    got, apix = read_map(tmp_path / "m.mrc")
    np.testing.assert_array_equal(got, vol)
    assert apix == pytest.approx(2.5)
    data = (tmp_path / "m.mrc").read_bytes()
    (tmp_path / "t.mrc").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="truncated"):
        read_map(tmp_path / "t.mrc")
    (tmp_path / "junk.mrc").write_bytes(b"not an mrc" * 200)
    with pytest.raises(UserError):
        read_map(tmp_path / "junk.mrc")
    write_map(tmp_path / "nc.mrc", np.zeros((8, 8, 10), np.float32), 1.0)
    with pytest.raises(UserError, match="10x8x8; cryopose needs cubic"):
        read_map(tmp_path / "nc.mrc")
    bad = vol.copy()
    bad[3, 3, 3] = np.nan
    write_map(tmp_path / "nan.mrc", bad, 1.0)
    with pytest.raises(UserError, match="NaN"):
        read_map(tmp_path / "nan.mrc")
    with pytest.raises(UserError, match="does not exist"):
        read_map(tmp_path / "none.mrc")
    assert not list(tmp_path.glob(".*.tmp"))


def test_real_map_pixel_size(shared_data: Path) -> None:
    vol, apix = read_map(shared_data / "maps/emd_1832.map")
    assert vol.shape == (64, 64, 64) and apix == pytest.approx(5.7, rel=1e-5)
    _, apix0 = read_map(shared_data / "relion_projections_70s/clean70SRibosome_vol_65p.mrc")
    assert apix0 == 0.0


def test_stack_write_read_and_writer(tmp_path: Path) -> None:
    imgs = np.random.default_rng(1).normal(size=(7, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", imgs, 3.0)
    with open_stack(tmp_path / "s.mrcs") as s:
        assert len(s) == 7 and s.shape == (12, 12) and s.pixel_size == pytest.approx(3.0)
        np.testing.assert_array_equal(s[np.array([5, 1])], imgs[[5, 1]])
    with StackWriter(tmp_path / "w.mrcs", 7, (12, 12), 3.0) as w:
        w.write(0, imgs[:4])
        w.write(4, imgs[4:])
    with open_stack(tmp_path / "w.mrcs") as s:
        np.testing.assert_array_equal(s[np.arange(7)], imgs)
    write_stack(tmp_path / "one.mrc", imgs[0], 3.0)
    assert len(open_stack(tmp_path / "one.mrc")) == 1
    data = (tmp_path / "s.mrcs").read_bytes()
    (tmp_path / "t.mrcs").write_bytes(data[:-200])
    with pytest.raises(UserError, match="truncated"):
        open_stack(tmp_path / "t.mrcs")


def _star_for_stack(tmp_path: Path, stack: str, n: int, apix: float, name: str = "p.star") -> ParticleSet:
    names = [f"{i + 1:06d}@{stack}" for i in range(n)]
    p = ParticleSet.from_arrays(None, None, apix, 12, names, None)
    write_star(p, tmp_path / name)
    return read_star(tmp_path / name)


def test_particle_images_checks(tmp_path: Path) -> None:
    imgs = np.random.default_rng(2).normal(size=(3, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", imgs, 2.0)
    ok = ParticleImages(_star_for_stack(tmp_path, "s.mrcs", 3, 2.0))
    np.testing.assert_array_equal(ok.read([2, 0]), imgs[[2, 0]])
    chunks = list(ok.iter_chunks(2))
    assert [len(i) for i, _ in chunks] == [2, 1]
    with pytest.raises(UserError, match="asks for image 5 of .*s.mrcs, which has 3"):
        ParticleImages(_star_for_stack(tmp_path, "s.mrcs", 5, 2.0))
    with pytest.raises(UserError, match="pixel size 2.0000 A but the star gives 3.0000 A"):
        ParticleImages(_star_for_stack(tmp_path, "s.mrcs", 3, 3.0))
    write_stack(tmp_path / "rect.mrcs", np.zeros((3, 12, 10), np.float32), 2.0)
    with pytest.raises(UserError, match="square"):
        ParticleImages(_star_for_stack(tmp_path, "rect.mrcs", 3, 2.0))
    bad = imgs.copy()
    bad[1, 0, 0] = np.nan
    write_stack(tmp_path / "nan.mrcs", bad, 2.0)
    images = ParticleImages(_star_for_stack(tmp_path, "nan.mrcs", 3, 2.0))
    images.read([0])
    with pytest.raises(UserError, match="NaN"):
        images.read([0, 1])


def test_real_stack_resolution(shared_data: Path) -> None:
    p = read_star(shared_data / "trpv1/trpv1_small_stack.relinked.star")
    images = ParticleImages(p)
    assert len(images) == 10 and images.image_shape == (48, 48)
    got = images.read(np.arange(10))
    with mrcfile.open(shared_data / "trpv1/trpv1_small_stack.mrcs") as m:
        np.testing.assert_array_equal(got, m.data)
    broken = read_star(shared_data / "trpv1/trpv1_small_stack.star")
    with pytest.raises(
        UserError, match=r"batch_0_restacked\.mrc does not exist.*particle file.s folder, the working folder"
    ):
        ParticleImages(broken)
    # relion31.mrcs has no MAP id and a default 1.0 A/px header: still readable
    r = ParticleImages(
        read_star(shared_data / "metadata/relion31.star").with_columns(
            rlnImageName=[f"{i:06d}@relion31.mrcs" for i in range(1, 6)]
        )
    )
    assert r.read([4]).shape == (1, 256, 256)


# ----------------------------------------------------------------------------- cryoSPARC
@pytest.mark.parametrize("name", CS_FILES)
def test_cs_reads(shared_data: Path, name: str) -> None:
    p = read_cryosparc(shared_data / name)
    assert len(p) in (7, 22)
    assert p.ctf_parameters() is not None
    assert p.rotations is None  # no 3D alignments in either file
    assert not p.table["rlnImageName"].str.contains(">").any()
    if "J2" in name:
        assert p.table["rlnImageName"].iloc[0] == "000001@J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"
        assert p.class_numbers is not None
        np.testing.assert_allclose(p.shifts_angstrom[0], np.array([0.0, 12.0]) * 1.3450001, rtol=1e-6)


def test_cs_matches_star_of_same_particles(shared_data: Path) -> None:
    cs = read_cryosparc(shared_data / "metadata/empiar_10076_7.cs")
    st = read_star(shared_data / "metadata/empiar_10076_7.star")
    a, b = cs.ctf_parameters(), st.ctf_parameters()
    for key in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "spherical_aberration", "amplitude_contrast"):
        np.testing.assert_allclose(a[key], b[key], rtol=2e-3, err_msg=key)
    np.testing.assert_allclose(cs.pixel_size, st.pixel_size, rtol=1e-3)
    assert list(cs.image_paths) == list(st.image_paths)
    assert cs.image_indices.tolist() == st.image_indices.tolist() == list(range(7))
    assert cs.image_size == 320


def _write_cs(path: Path, rotations: np.ndarray, shifts_px: np.ndarray, apix: float) -> None:
    """A minimal cryoSPARC 3D-refinement .cs with the fields cryopose reads."""
    n = len(rotations)
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S20"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("alignments3D/split", "<u4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/psize_A", "<f4"),
    ]
    a = np.zeros(n, dtype=dtype)
    a["uid"] = np.arange(n)
    a["blob/path"] = b">J3/stack.mrcs"
    a["blob/idx"] = np.arange(n)
    a["blob/shape"] = 64
    a["blob/psize_A"] = apix
    a["ctf/accel_kv"], a["ctf/cs_mm"], a["ctf/amp_contrast"] = 300, 2.7, 0.1
    a["ctf/df1_A"], a["ctf/df2_A"], a["ctf/df_angle_rad"] = 15000, 14000, 0.5
    a["alignments3D/split"] = np.arange(n) % 2
    a["alignments3D/shift"] = shifts_px
    a["alignments3D/pose"] = matrix_to_cryosparc_pose(rotations)
    a["alignments3D/psize_A"] = apix
    with open(path, "wb") as fh:
        np.save(fh, a)


def test_cs_pose_convention_and_round_trip(tmp_path: Path) -> None:
    r = np.array([[0.3, -0.2, 1.1], [2.0, 0.5, -0.4]])
    # A = R(r)^T, R the right-handed rotation-vector matrix (pyem, cryoDRGN)
    np.testing.assert_allclose(
        cryosparc_pose_to_matrix(r), Rotation.from_rotvec(r).as_matrix().transpose(0, 2, 1), atol=1e-12
    )
    rots = Rotation.random(8, random_state=3).as_matrix().transpose(0, 2, 1)
    shifts = np.random.default_rng(4).normal(size=(8, 2)) * 4
    _write_cs(tmp_path / "p.cs", rots, shifts, 1.2)
    p = read_cryosparc(tmp_path / "p.cs")
    np.testing.assert_allclose(p.rotations, rots, atol=2e-6)  # float32 in the file
    np.testing.assert_allclose(p.shifts_angstrom, shifts * 1.2, rtol=1e-5, atol=1e-5)
    assert p.half_sets.tolist() == [1, 2] * 4
    assert p.table["rlnImageName"].iloc[1] == "000002@J3/stack.mrcs"
    assert p.table["rlnDefocusAngle"].iloc[0] == pytest.approx(np.rad2deg(0.5), rel=1e-6)


def test_cs_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_cryosparc(tmp_path / "none.cs")
    (tmp_path / "text.cs").write_text("hello")
    with pytest.raises(UserError, match="not a cryoSPARC"):
        read_cryosparc(tmp_path / "text.cs")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    os.replace(tmp_path / "plain.npy", tmp_path / "plain.cs")
    with pytest.raises(UserError, match="structured array"):
        read_cryosparc(tmp_path / "plain.cs")
    a = np.zeros(2, dtype=[("ctf/df1_A", "<f4"), ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4")])
    with open(tmp_path / "nopath.cs", "wb") as fh:
        np.save(fh, a)
    p = read_cryosparc(tmp_path / "nopath.cs", apix=2.0)
    assert len(p) == 2 and p.pixel_size.tolist() == [2.0, 2.0] and p.rotations is None


def test_outputs_finished_before_an_interruption_are_cryoposes(tmp_path):
    """A job stopped by Ctrl-C after writing one of its outputs: the rerun may replace that
    file without --force (the manifest records it); a file of the user's still needs force."""
    from cryopose.errors import UserError
    from cryopose.io.atomic import write_text_atomic
    from cryopose.io.outputs import output_folder

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with output_folder(out, outputs=["a.txt", "b.txt"]):
            write_text_atomic(out / "a.txt", "finished\n")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "finished\n"
    (out / "b.txt").write_text("the user's\n")
    with pytest.raises(UserError, match="b.txt exists and was not written by an earlier run"):
        with output_folder(out, outputs=["a.txt", "b.txt"]):
            pass
    (out / "b.txt").unlink()
    with output_folder(out, outputs=["a.txt", "b.txt"]):
        write_text_atomic(out / "a.txt", "again\n")
