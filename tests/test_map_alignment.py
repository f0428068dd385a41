"""Tests of ``cryopose align-maps``: resampling, pose algebra, search, bounds, poses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryopose.align.map_alignment import (
    J,
    MapAlignmentSettings,
    align_map,
    apply_transform,
    hand_flip,
    transform_angle_deg,
    transform_poses,
    transform_volume,
)
from cryopose.geometry.distances import rotation_distance
from cryopose.imaging.filters import lowpass_volume
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.imaging.simulation import clean_particle_images
from cryopose.io.mrc import read_map, write_map
from cryopose.jobs.align_maps import run_align_maps
from cryopose.reconstruct import fourier_shell_correlation, reconstruct_from_images

DATA = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"
SHARED = Path(__file__).resolve().parents[2] / "shared"
TRPV1 = SHARED / "data" / "trpv1" / "trpv1_volume.mrc"


def _emd(size: int = 40) -> tuple[torch.Tensor, float]:
    vol, apix = read_map(DATA)
    v = torch.as_tensor(vol)
    if size != v.shape[-1]:
        apix = apix * v.shape[-1] / size
        v = fourier_resize_volume(v, size)
    return v.float(), apix


def _trpv1(size: int = 40) -> tuple[torch.Tensor, float]:
    if not TRPV1.is_file():
        pytest.skip(f"shared data not found at {TRPV1}")
    vol, apix = read_map(TRPV1)
    v = torch.as_tensor(vol)
    if size != v.shape[-1]:
        apix = apix * v.shape[-1] / size
        v = fourier_resize_volume(v, size)
    return v.float(), apix


def _moved(ref: torch.Tensor, apix: float, m: np.ndarray, t_px: np.ndarray, **kw) -> torch.Tensor:
    """A map V with V(M y + t) = ref(y): V(x) = ref(M^T (x - t))."""
    return apply_transform(ref, m.T, -m.T @ (t_px * apix), apix, **kw)


def _truth(seed: int, flip: bool, max_shift_px: float = 10.0, angle: float | None = None):
    rng = np.random.default_rng(seed)
    if angle is None:
        r = Rotation.random(random_state=seed).as_matrix()
    else:
        axis = rng.normal(size=3)
        r = Rotation.from_rotvec(np.radians(angle) * axis / np.linalg.norm(axis)).as_matrix()
    d = rng.normal(size=3)
    t = d / np.linalg.norm(d) * rng.uniform(0.3, 1.0) * max_shift_px
    return (r @ J if flip else r), t


def _errors(res, m_true: np.ndarray, t_true_px: np.ndarray, sym: str = "C1") -> tuple[float, float]:
    """Angle (deg, minimised over sym as M S) and shift error (px, t unchanged) of res."""
    a = torch.as_tensor(res.rotation)
    b = torch.as_tensor(m_true)
    if np.linalg.det(res.rotation) * np.linalg.det(m_true) < 0:
        return 180.0, float("inf")
    # both improper: compare the proper parts M J (J commutes with rotations about z only,
    # so compare J M^T-free quantities: M_a^T M_b is proper in both cases)
    if np.linalg.det(m_true) < 0:
        a, b = a @ torch.as_tensor(J), b @ torch.as_tensor(J)
        # M S J = (M J)(J S J); J S J is in the group for Cn about z
    ang = float(torch.rad2deg(rotation_distance(a, b, sym)))
    return ang, float(np.linalg.norm(res.shift_px - t_true_px))


# --------------------------------------------------------------------------- resampling
def test_transform_volume_matches_scipy():
    from scipy.ndimage import affine_transform

    v = torch.randn(20, 20, 20)
    lin = Rotation.random(random_state=1).as_matrix() * 1.1
    s = np.array([1.3, -2.0, 0.7])
    out = transform_volume(v, torch.tensor(lin, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), out_size=16)
    p = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    lz, sz = p @ lin @ p, p @ s
    offset = lz @ (-np.full(3, 8.0)) + sz + 10
    ref = affine_transform(v.double().numpy(), lz, offset=offset, output_shape=(16,) * 3, order=1, cval=0.0)
    idx = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = idx @ lz.T + offset
    inside = np.all((pos > 1) & (pos < 18), axis=1).reshape(16, 16, 16)
    assert inside.sum() > 1000
    np.testing.assert_allclose(out.numpy()[inside], ref[inside], atol=1e-4)


@pytest.mark.parametrize("n", [15, 16])
def test_hand_flip_is_z_mirror_about_centre(n):
    v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(n))  # seeded: the test must not flake
    f = hand_flip(v)
    c = n // 2
    assert torch.equal(f[c], v[c])
    assert torch.equal(f[c + 3], v[c - 3])
    if n % 2 == 0:
        assert torch.all(f[0] == 0)
    # trilinear at grid points, float32 coordinates
    np.testing.assert_allclose(transform_volume(v, torch.tensor(J, dtype=torch.float32)).numpy(), f.numpy(), atol=1e-4)


# --------------------------------------------------------------------------- pose algebra
@pytest.mark.parametrize("flip", [False, True])
def test_pose_algebra_gives_same_images(flip):
    """Projecting V at (A, o) equals projecting V'(y) = V(M y + t) at (A', o')."""
    vol, apix = _emd(48)
    m, t_px = _truth(3, flip, 6.0)
    aligned = apply_transform(vol, m, t_px * apix, apix)
    gen = torch.Generator().manual_seed(0)
    rots = torch.as_tensor(Rotation.random(8, random_state=5).as_matrix()).transpose(-1, -2).contiguous()
    o = (torch.rand(8, 2, generator=gen, dtype=torch.float64) - 0.5) * 8
    new_rots, new_o = transform_poses(rots.numpy(), o.numpy(), m, t_px)
    assert np.allclose(np.linalg.det(new_rots), 1.0)
    img = clean_particle_images(fourier_volume(vol), rots.float(), o.float(), None, apix)
    img2 = clean_particle_images(
        fourier_volume(aligned), torch.as_tensor(new_rots).float(), torch.as_tensor(new_o).float(), None, apix
    )
    for a, b in zip(img, img2):
        a, b = a.double().flatten(), b.double().flatten()
        a, b = a - a.mean(), b - b.mean()
        assert float((a @ b) / (a.norm() * b.norm())) > 0.99
    # the alternatives are wrong: the other sign of the origin change, and (flip) J on
    # the other side of A (J on the left is invisible to a projection: it only makes
    # A M proper so that it has Euler angles)
    wrong = [(new_rots, o.numpy() + (rots.numpy() @ t_px)[:, :2])]
    if flip:
        wrong.append((rots.numpy() @ J @ m, new_o))
    for wr, wo in wrong:
        bad = clean_particle_images(
            fourier_volume(aligned), torch.as_tensor(wr).float(), torch.as_tensor(wo).float(), None, apix
        )
        a, b = img.double().flatten(1), bad.double().flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        assert float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()) < 0.9


# --------------------------------------------------------------------------- search
CASES = [("emd", False, 11), ("emd", True, 12), ("trpv1", False, 13), ("trpv1", True, 14)]


@pytest.mark.parametrize("which,flip,seed", CASES)
def test_recovers_random_transform(which, flip, seed):
    vol, apix = _emd(40) if which == "emd" else _trpv1(40)
    sym = "C1" if which == "emd" else "C4"
    m, t_px = _truth(seed, flip, 10.0)
    mov = _moved(vol, apix, m, t_px)
    gen = torch.Generator().manual_seed(seed)
    mov = lowpass_volume(mov, 3.5 * apix, apix)  # a different low-pass on the moving map
    mov = mov + 0.2 * mov.std() * torch.randn(mov.shape, generator=gen)
    res = align_map(vol, mov, apix, settings=MapAlignmentSettings(lowpass=3 * apix, max_shift=12 * apix))
    assert res.hand_flipped == flip
    ang, sh = _errors(res, m, t_px, sym)
    assert ang < 1.0, (ang, sh)
    assert sh < 0.5, (ang, sh)


def test_other_pixel_size_and_box():
    vol, apix = _emd(40)
    m, t_px = _truth(21, False, 6.0)
    apix2 = apix * 0.8
    mov = apply_transform(vol, m.T, -m.T @ (t_px * apix), apix, out_size=52, out_pixel_size=apix2)
    res = align_map(
        vol,
        mov.numpy(),
        apix,
        apix2,
        settings=MapAlignmentSettings(lowpass=3 * apix, max_shift=10 * apix, check_hands=False),
    )
    ang, sh = _errors(res, m, t_px)
    assert ang < 1.0 and sh < 0.5, (ang, sh)


def test_max_angle_is_honoured():
    vol, apix = _emd(40)
    m, t_px = _truth(31, False, 2.0, angle=15.0)
    res = align_map(
        vol,
        _moved(vol, apix, m, t_px),
        apix,
        settings=MapAlignmentSettings(lowpass=3 * apix, max_angle=20, check_hands=False),
    )
    ang, sh = _errors(res, m, t_px)
    assert ang < 1.0 and sh < 0.5, (ang, sh)
    m, t_px = _truth(32, False, 2.0, angle=35.0)
    res = align_map(
        vol,
        _moved(vol, apix, m, t_px),
        apix,
        settings=MapAlignmentSettings(lowpass=3 * apix, max_angle=20, check_hands=True),
    )
    assert transform_angle_deg(res.rotation) <= 20.0 + 1e-6


def test_max_shift_is_honoured():
    vol, apix = _emd(40)
    m, t_px = _truth(41, False, 8.0, angle=10.0)
    t_px = t_px / np.linalg.norm(t_px) * 8.0
    res = align_map(
        vol,
        _moved(vol, apix, m, t_px),
        apix,
        settings=MapAlignmentSettings(lowpass=3 * apix, max_shift=10 * apix, max_angle=30, check_hands=False),
    )
    ang, sh = _errors(res, m, t_px)
    assert ang < 1.0 and sh < 0.5, (ang, sh)
    res = align_map(
        vol,
        _moved(vol, apix, m, t_px),
        apix,
        settings=MapAlignmentSettings(lowpass=3 * apix, max_shift=4 * apix, max_angle=30, check_hands=False),
    )
    assert np.linalg.norm(res.shift_A) <= 4 * apix + 1e-6


# --------------------------------------------------------------------------- poses follow
def _mean_fsc(a: torch.Tensor, b: torch.Tensor, apix: float) -> float:
    f = fourier_shell_correlation(a.float(), b.float(), apix)
    n = a.shape[-1]
    return float(f.fsc[1 : int(0.8 * n / 2)].mean())


@pytest.mark.parametrize("flip", [False, True])
def test_poses_follow_their_map(tmp_path, flip):
    from cryopose.io.star import read_star, write_star
    from cryopose.particles import ParticleSet

    ref, apix = _emd(32)
    m, t_px = _truth(51 + flip, flip, 5.0)
    moved = _moved(ref, apix, m, t_px)  # the map the particles come from
    n_part = 1500
    rots = torch.as_tensor(Rotation.random(n_part, random_state=7).as_matrix()).transpose(-1, -2).contiguous()
    gen = torch.Generator().manual_seed(1)
    o_px = (torch.rand(n_part, 2, generator=gen, dtype=torch.float64) - 0.5) * 6
    images = clean_particle_images(fourier_volume(moved), rots.float(), o_px.float(), None, apix)
    baseline = _mean_fsc(reconstruct_from_images(images, rots.float(), o_px.float(), None, apix), moved, apix)

    write_map(tmp_path / "ref.mrc", ref.numpy(), apix)
    write_map(tmp_path / "moved.mrc", moved.numpy(), apix)
    ps = ParticleSet.from_arrays(
        rots.numpy(), o_px.numpy() * apix, apix, 32, [f"{i + 1:06d}@stack.mrcs" for i in range(n_part)], None
    )
    write_star(ps, tmp_path / "moved.star")
    out = tmp_path / "out"
    entries = run_align_maps(
        tmp_path / "ref.mrc",
        [tmp_path / "moved.mrc"],
        out,
        MapAlignmentSettings(lowpass=3 * apix, max_shift=8 * apix),
        particles=[tmp_path / "moved.star"],
    )
    assert entries[0]["hand_flipped"] == flip
    aligned, _ = read_map(out / "aligned_moved.mrc")
    new = read_star(out / "particles_moved.star")
    new_rots = torch.as_tensor(new.rotations).float()
    new_o = torch.as_tensor(new.shifts_angstrom / apix).float()
    recon = reconstruct_from_images(images, new_rots, new_o, None, apix)
    got = _mean_fsc(recon, torch.as_tensor(aligned), apix)
    assert got > baseline - 0.03, (got, baseline)
    assert _mean_fsc(recon, ref, apix) > baseline - 0.05


# --------------------------------------------------------------------------- CLI
def test_cli_writes_all_outputs(tmp_path):
    from click.testing import CliRunner

    from cryopose.cli.align_maps import command

    ref, apix = _emd(32)
    m, t_px = _truth(61, False, 3.0, angle=25.0)
    mov = _moved(ref, apix, m, t_px)
    write_map(tmp_path / "ref.mrc", ref.numpy(), apix)
    write_map(tmp_path / "map.mrc", mov.numpy(), apix)
    write_map(tmp_path / "half.mrc", mov.numpy(), apix)
    # a real soft mask around the moved map's density (thresholded low-pass, soft edge)
    smooth = lowpass_volume(torch.as_tensor(mov), 4 * apix, apix)
    core = (smooth > smooth.mean() + 0.25 * smooth.std()).float()
    mask = lowpass_volume(core, 3 * apix, apix).clamp(0, 1).numpy()
    assert 0.05 < (mask > 0.5).mean() < 0.6
    write_map(tmp_path / "mask.mrc", mask, apix)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        command,
        [
            "--ref",
            str(tmp_path / "ref.mrc"),
            str(tmp_path / "map.mrc"),
            "--out",
            str(out),
            "--mask",
            str(tmp_path / "mask.mrc"),
            "--max-angle",
            "40",
            "--no-check-hands",
            "--group",
            f"{tmp_path / 'map.mrc'} {tmp_path / 'half.mrc'}",
            "--lowpass",
            str(3 * apix),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "aligned_map.mrc",
        "aligned_half.mrc",
        "aligned_mask.mrc",
        "transforms.json",
        "difference_map.png",
        "fsc.png",
        "align_maps.log",
    ):
        assert (out / name).is_file(), name
    entries = json.loads((out / "transforms.json").read_text())
    assert [Path(e["map"]).name for e in entries] == ["map.mrc", "half.mrc"]
    assert entries[0]["rotation"] == entries[1]["rotation"]
    assert np.allclose(entries[0]["rotation"], m, atol=0.02)
    # the aligned mask is the mask moved by the same transform and lands on the reference's density
    aligned_mask, _ = read_map(out / "aligned_mask.mrc")
    expected = apply_transform(
        mask, np.array(entries[0]["rotation"]), np.array(entries[0]["shift_A"]), apix, oversample=1
    )
    assert np.abs(aligned_mask - expected.clamp(0, 1).numpy()).max() < 1e-4
    inside = aligned_mask > 0.5
    assert ref.numpy()[inside].mean() > ref.numpy()[~inside].mean() + ref.numpy().std()


def test_cli_user_errors(tmp_path):
    from click.testing import CliRunner

    from cryopose.cli.align_maps import command
    from cryopose.errors import UserError

    ref, apix = _emd(32)
    write_map(tmp_path / "ref.mrc", ref.numpy(), apix)
    r = CliRunner().invoke(
        command, ["--ref", str(tmp_path / "ref.mrc"), str(tmp_path / "nope.mrc"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "nope.mrc" in r.output and "does not exist" in r.output
    r = CliRunner().invoke(
        command,
        [
            "--ref",
            str(tmp_path / "ref.mrc"),
            str(tmp_path / "ref.mrc"),
            "--group",
            f"{tmp_path / 'ref.mrc'} {tmp_path / 'gone.mrc'}",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert isinstance(r.exception, UserError) and "gone.mrc" in str(r.exception)
    r = CliRunner().invoke(
        command,
        [
            "--ref",
            str(tmp_path / "ref.mrc"),
            str(tmp_path / "ref.mrc"),
            "--out",
            str(tmp_path / "o"),
            "--max-angle",
            "200",
        ],
    )
    assert r.exit_code == 2 and "200 is out of range" in r.output and not (tmp_path / "o").exists()
