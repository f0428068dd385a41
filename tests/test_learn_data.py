"""The data side of pose learning: image preparation, pose-exact augmentation, the Dataset."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cryopose.errors import UserError
from cryopose.geometry.rotations import euler_to_matrix, matrix_to_quaternion, rotation_about_z
from cryopose.imaging.ctf import CTFParameters, ctf_rfft2
from cryopose.imaging.filters import normalise_background
from cryopose.imaging.fourier import centered_rfft2
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import fourier_resize_images, fourier_resize_volume
from cryopose.imaging.rotate import rotate_images
from cryopose.imaging.simulation import add_noise, clean_particle_images
from cryopose.io.mrc import ArrayImages, read_map
from cryopose.learn.augment import AugmentDraw, AugmentSettings, apply_augmentation, augment_batch, rotate_in_plane
from cryopose.learn.dataset import ParticlesDataset
from cryopose.learn.preprocess import ImageSettings, prepare_images, prepared_pixel_size
from cryopose.particles import ParticleSet

MAP = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


@pytest.fixture(scope="module")
def full_map():
    """The bundled map as it is (64^3 at 5.7 Å: Nyquist 11.4 Å, past three CTF zeros at 2.5 µm)."""
    torch.set_num_threads(1)
    vol, apix = read_map(MAP)
    return fourier_volume(torch.from_numpy(np.asarray(vol, dtype=np.float32))), apix


@pytest.fixture(scope="module")
def small_map():
    """The bundled map (64^3 at 5.7 Å) Fourier-cropped to 32^3: (FourierVolume, Å/px)."""
    torch.set_num_threads(1)
    vol, apix = read_map(MAP)
    vol = torch.from_numpy(np.asarray(vol, dtype=np.float32))
    small = fourier_resize_volume(vol, 32)
    return fourier_volume(small), apix * vol.shape[-1] / 32


def _pcc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def _ctf(n: int, defocus: float = 20000.0) -> dict:
    return {
        "defocus_u": np.full(n, defocus + 150.0),
        "defocus_v": np.full(n, defocus - 150.0),
        "defocus_angle": np.linspace(0, 90, n),
        "voltage": 300.0,
        "spherical_aberration": 2.7,
        "amplitude_contrast": 0.1,
        "phase_shift": 0.0,
    }


# ---------------------------------------------------------------- rotation of images
def test_rotate_images_moves_content_from_x_to_R_x():
    n = 40
    y, x = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")

    def blob(cx, cy):
        return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 18.0).double()

    angles = torch.tensor([0.0, 37.0, 90.0, 135.0, -100.0, 200.0])
    out = rotate_images(blob(8, 3).expand(len(angles), n, n), torch.deg2rad(angles))
    for img, deg in zip(out, angles.tolist()):
        t = math.radians(deg)
        ref = blob(8 * math.cos(t) - 3 * math.sin(t), 8 * math.sin(t) + 3 * math.cos(t))
        assert float((img - ref).abs().max()) < 2e-3, deg


# ---------------------------------------------------------------- the exact pose update
def test_in_plane_rotation_and_shift_change_the_pose_exactly(small_map):
    fv, apix = small_map
    rot = euler_to_matrix(
        *torch.deg2rad(torch.tensor([[30.0, 65.0, 20.0], [-120.0, 110.0, 250.0]], dtype=torch.float64)).T
    )
    origin_px = torch.tensor([[2.5, -1.5], [-3.0, 1.0]], dtype=torch.float64)
    image = clean_particle_images(fv, rot, origin_px, None, apix)[:, None]
    theta = math.radians(37.0)

    rotated, rot2, origin2 = rotate_in_plane(image, rot, origin_px * apix, theta)
    # A' = Rz(theta) A: psi decreases by theta
    assert torch.allclose(rot2, rotation_about_z(torch.tensor(theta, dtype=torch.float64)) @ rot)
    expected = clean_particle_images(fv, rot2, origin2 / apix, None, apix)
    for k in range(2):
        assert _pcc(rotated[k, 0], expected[k]) >= 0.99
    # the wrong sign of the update is clearly worse
    _, rot_bad, origin_bad = rotate_in_plane(image, rot, origin_px * apix, -theta)
    wrong = clean_particle_images(fv, rot_bad, origin_bad / apix, None, apix)
    unrotated_origin = clean_particle_images(fv, rot2, origin_px, None, apix)
    for k in range(2):
        assert _pcc(rotated[k, 0], wrong[k]) < 0.9
        assert _pcc(rotated[k, 0], unrotated_origin[k]) < 0.9

    # a drawn rotation plus a content shift t: o' = R o - t
    draw = AugmentDraw(
        angles=torch.tensor([theta, -2.0], dtype=torch.float64),
        shifts_angstrom=torch.tensor([[10.0, -7.0], [-5.0, 12.0]], dtype=torch.float64),
        contrast=torch.ones(2, dtype=torch.float64),
        noise=None,
    )
    moved, rot3, origin3 = apply_augmentation(image, rot, origin_px * apix, apix, draw)
    r2 = rotation_about_z(draw.angles)[:, :2, :2]
    assert torch.allclose(origin3, (r2 @ (origin_px * apix)[..., None])[..., 0] - draw.shifts_angstrom)
    expected = clean_particle_images(fv, rot3, origin3 / apix, None, apix)
    stale = clean_particle_images(fv, rot3, (r2 @ origin_px[..., None])[..., 0], None, apix)  # shift not applied
    for k in range(2):
        assert _pcc(moved[k, 0], expected[k]) >= 0.99
        assert _pcc(moved[k, 0], stale[k]) < 0.95


def test_augment_batch_contrast_and_noise():
    images = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rot = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    origins = torch.zeros(64, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    out, rot2, origins2 = augment_batch(images, rot, origins, 2.0, AugmentSettings(in_plane=False, contrast=0.5), g)
    factor = (out * images).flatten(1).sum(1) / (images**2).flatten(1).sum(1)
    assert torch.allclose(out, images * factor[:, None, None, None], atol=1e-4)
    assert 0.5 <= float(factor.min()) and float(factor.max()) <= 1.5 and float(factor.std()) > 0.1
    assert torch.equal(rot2, rot) and torch.equal(origins2, origins)
    out, _, _ = augment_batch(images, rot, origins, 2.0, AugmentSettings(in_plane=False, noise_std=0.3), g)
    assert abs(float((out - images).std()) - 0.3) < 0.02


# ---------------------------------------------------------------- preparation
def test_fourier_crop_equals_fourier_resize_of_the_normalised_image():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 48, 48, generator=g) * 2 + 5
    s = ImageSettings(image_size=24)
    out = prepare_images(images, None, 2.0, s)
    assert out.shape == (3, 1, 24, 24) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], fourier_resize_images(normalise_background(images), 24), atol=1e-5)
    assert prepared_pixel_size(48, 2.0, s) == pytest.approx(4.0)
    # the central 36 px, then to 24 px: pixel size 2 * 36 / 24
    s = ImageSettings(image_size=24, crop_factor=0.75)
    out = prepare_images(images, None, 2.0, s)
    assert torch.allclose(out[:, 0], fourier_resize_images(normalise_background(images)[:, 6:42, 6:42], 24), atol=1e-5)
    assert prepared_pixel_size(48, 2.0, s) == pytest.approx(3.0)


def test_fourier_crop_samples_a_band_limited_image_on_the_coarser_grid():
    n, s = 48, 16
    y, x = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    ys, xs = torch.meshgrid(torch.arange(s) - s // 2, torch.arange(s) - s // 2, indexing="ij")
    image = torch.cos(2 * math.pi * (3 * x + 2 * y) / n) + 0.5 * torch.sin(2 * math.pi * (-x + 4 * y) / n)
    coarse = torch.cos(2 * math.pi * (3 * xs + 2 * ys) / s) + 0.5 * torch.sin(2 * math.pi * (-xs + 4 * ys) / s)
    out = prepare_images(image[None].double(), None, 1.0, ImageSettings(image_size=s, normalise=False))
    assert torch.allclose(out[0, 0], coarse.float(), atol=1e-5)


@pytest.mark.parametrize("correction, snr", [("phase_flip", 1.0), ("wiener", 1.0), ("wiener", 100.0)])
def test_ctf_correction_recovers_the_projection(full_map, correction, snr):
    fv, apix = full_map
    rot = euler_to_matrix(
        *torch.deg2rad(torch.tensor([[10.0, 80.0, 40.0], [200.0, 30.0, -60.0]], dtype=torch.float64)).T
    )
    ctf = CTFParameters.from_mapping(_ctf(2, defocus=25000.0), dtype=torch.float64)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    clean = clean_particle_images(fv, rot, zero, None, apix)
    raw = clean_particle_images(fv, rot, zero, ctf, apix)
    settings = ImageSettings(image_size=None, normalise=False, ctf_correction=correction, wiener_snr=snr)
    fixed = prepare_images(raw, ctf, apix, settings)[:, 0]
    # where the CTF is negative the raw image has the clean one's contrast reversed; corrected, it agrees
    flipped = ctf_rfft2(ctf, 64, apix) < 0
    for k in range(2):
        assert _band_correlation(raw[k], clean[k], flipped[k]) < -0.8
        assert _band_correlation(fixed[k], clean[k], flipped[k]) > 0.8
        if correction == "phase_flip":  # |CTF| kept: better overall, a little
            assert _pcc(fixed[k], clean[k]) > _pcc(raw[k], clean[k]) + 0.003
        if snr == 100.0:  # nearly 1/CTF: nearly the clean projection
            assert _pcc(fixed[k], clean[k]) > 0.97 > _pcc(raw[k], clean[k]) + 0.1


def _band_correlation(a: torch.Tensor, b: torch.Tensor, band: torch.Tensor) -> float:
    """Real correlation of two images' spectra over the half-transform pixels in ``band``."""
    fa, fb = centered_rfft2(a.double())[band], centered_rfft2(b.double())[band]
    return float((fa * fb.conj()).real.sum() / (fa.abs().norm() * fb.abs().norm()))


# ---------------------------------------------------------------- the dataset
N = 6
ANGLES = np.array([[10, 40, 70], [100, 90, -30], [-170, 120, 5], [45, 10, 200], [0, 60, 0], [300, 150, 90]], float)


def _particles(small_map, angles: bool = True, n: int = N):
    fv, apix = small_map
    rot = euler_to_matrix(*torch.deg2rad(torch.tensor(ANGLES[:n])).T)
    shifts = np.stack([np.linspace(-8, 8, n), np.linspace(5, -5, n)], -1)
    ctf = _ctf(n)
    clean = clean_particle_images(fv, rot, torch.tensor(shifts) / apix, CTFParameters.from_mapping(ctf), apix)
    noisy = add_noise(clean, 2.0, torch.Generator().manual_seed(0))
    pset = ParticleSet.from_arrays(
        rot.numpy() if angles else None,
        shifts,
        apix,
        32,
        [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
        ctf,
        extra_columns={
            "rlnRandomSubset": np.arange(n) % 2 + 1,
            "rlnMaxValueProbDistribution": np.linspace(0.2, 0.9, n),
        },
    )
    return pset, ArrayImages(noisy.numpy())


def test_dataset_items(small_map):
    pset, images = _particles(small_map)
    settings = ImageSettings(image_size=16, ctf_correction="phase_flip")
    ds = ParticlesDataset(images, pset.to_tensors(), settings, symmetry="c1")
    assert len(ds) == N and ds.image_size == 16 and ds.symmetry == "C1"
    assert ds.pixel_size == pytest.approx(small_map[1] * 2)
    item = ds[2]
    shapes = {
        "image": (1, 16, 16),
        "rotation": (3, 3),
        "quaternion": (4,),
        "origin": (2,),
        "confidence": (),
        "ctf": (7,),
        "half": (),
        "index": (),
        "has_pose": (),
    }
    assert {k: tuple(v.shape) for k, v in item.items()} == shapes
    for key in ("image", "rotation", "quaternion", "origin", "confidence", "ctf"):
        assert item[key].dtype == torch.float32, key
    assert item["half"].dtype == torch.int64 and item["index"].dtype == torch.int64 and bool(item["has_pose"])
    row = pset.table.iloc[2]
    angles = torch.deg2rad(torch.tensor([row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi], dtype=torch.float64))
    expected = euler_to_matrix(*angles).float()
    assert torch.allclose(item["rotation"], expected, atol=1e-6)
    assert torch.allclose(item["quaternion"], matrix_to_quaternion(expected.double()).float(), atol=1e-6)
    assert abs(float(item["quaternion"].norm()) - 1) < 1e-6
    assert torch.allclose(item["origin"], torch.tensor([row.rlnOriginXAngst, row.rlnOriginYAngst], dtype=torch.float32))
    assert float(item["confidence"]) == pytest.approx(row.rlnMaxValueProbDistribution)
    assert int(item["half"]) == 1 and int(item["index"]) == 2
    assert torch.allclose(
        item["ctf"],
        torch.tensor([row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle, 300, 2.7, 0.1, 0], dtype=torch.float32),
    )
    raw = torch.from_numpy(images.read([2]))
    ctf = pset.to_tensors().ctf[[2]]
    assert torch.allclose(item["image"], prepare_images(raw, ctf, small_map[1], settings)[0], atol=1e-5)


def test_batch_equals_stacked_items_and_survives_pickling(small_map):
    pset, images = _particles(small_map)
    ds = ParticlesDataset(
        images,
        pset.to_tensors(),
        ImageSettings(image_size=16),
        AugmentSettings(max_shift_angstrom=10.0, noise_std=0.1, contrast=0.2),
        seed=5,
    )
    batch = ds.batch([4, 1, 3])
    for j, i in enumerate([4, 1, 3]):
        item = ds[i]
        for key, value in item.items():
            assert torch.allclose(batch[key][j].float(), value.float(), atol=1e-5), key
    # augmentation changed the pose consistently: rotation is Rz(theta) A for some theta
    a = euler_to_matrix(*torch.deg2rad(torch.tensor(ANGLES[4]))).float()
    delta = batch["rotation"][0] @ a.T
    assert abs(float(delta[2, 2]) - 1) < 1e-5 and not torch.allclose(delta, torch.eye(3), atol=1e-3)
    # the same epoch gives the same items, another epoch others
    assert torch.allclose(ds[4]["image"], batch["image"][0], atol=1e-5)
    ds.set_epoch(1)
    assert not torch.allclose(ds[4]["rotation"], batch["rotation"][0], atol=1e-3)
    ds.set_epoch(0)
    copy = pickle.loads(pickle.dumps(ds))
    for key, value in copy[1].items():
        assert torch.allclose(value.float(), batch[key][1].float(), atol=1e-5), key
    calls = []
    cached = ds.prepare_all(chunk_size=4, progress=lambda k, n: calls.append(k))
    assert cached.shape == (N, 1, 16, 16) and calls == [4, 2]
    assert torch.allclose(ds.batch([4, 1, 3])["image"], batch["image"], atol=1e-5)


def test_dataloader_workers_do_not_change_the_batches(small_map):
    pset, images = _particles(small_map)
    ds = ParticlesDataset(
        images,
        pset.to_tensors(),
        ImageSettings(image_size=16),
        AugmentSettings(max_shift_angstrom=5.0, noise_std=0.2),
        seed=2,
    )
    ds.set_epoch(3)
    one = list(DataLoader(ds, batch_size=4, num_workers=0))
    two = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_set_without_angles_has_no_pose(small_map):
    pset, images = _particles(small_map, angles=False)
    assert pset.rotations is None
    ds = ParticlesDataset(images, pset.to_tensors(ctf=False), ImageSettings(image_size=None))
    item = ds[0]
    assert not bool(item["has_pose"]) and not ds.has_poses
    assert torch.equal(item["rotation"], torch.eye(3)) and torch.equal(item["ctf"], torch.zeros(7))
    assert item["image"].shape == (1, 32, 32) and ds.pixel_size == pytest.approx(small_map[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_factor": 0.0}, "crop factor 0.0 is outside"),
        ({"crop_factor": 1.5}, "crop factor 1.5 is outside"),
        ({"ctf_correction": "flip"}, "unknown CTF correction 'flip'"),
        ({"image_size": 0}, "image size 0"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        ImageSettings(**kwargs)


def test_image_size_larger_than_the_box_is_a_user_error(small_map):
    pset, images = _particles(small_map, n=2)
    with pytest.raises(UserError, match=r"image size 64 px is larger than the particle box after cropping \(32 px"):
        ParticlesDataset(images, pset.to_tensors(), ImageSettings(image_size=64))
    with pytest.raises(UserError, match=r"larger than the particle box after cropping \(16 px of 32\)"):
        prepare_images(torch.zeros(1, 32, 32), None, 1.0, ImageSettings(image_size=24, crop_factor=0.5))
    with pytest.raises(UserError, match="needs CTF parameters"):
        ParticlesDataset(images, pset.to_tensors(ctf=False), ImageSettings(image_size=16, ctf_correction="wiener"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_equal_those_on_cpu(small_map):
    pset, images = _particles(small_map)
    ds = ParticlesDataset(
        images,
        pset.to_tensors(),
        ImageSettings(image_size=16, ctf_correction="wiener"),
        AugmentSettings(max_shift_angstrom=5.0, noise_std=0.2, contrast=0.1),
        seed=4,
    )
    cpu, gpu = ds.batch([0, 5, 2]), ds.batch([0, 5, 2], device="cuda")
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda", key
        assert torch.allclose(gpu[key].cpu().float(), value.float(), atol=1e-4), key
