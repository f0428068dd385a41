"""Simulate -> reconstruct round trips, symmetry, FSC and imaging helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cryopose.geometry.symmetry import proper_symmetry_matrices, symmetry_matrices
from cryopose.imaging.ctf import CTFParameters, ctf_values, electron_wavelength
from cryopose.imaging.filters import normalise_background
from cryopose.imaging.projection import fourier_volume, project
from cryopose.imaging.resample import fourier_resize_images
from cryopose.imaging.shifts import shift_images
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import read_map
from cryopose.reconstruct import (
    fourier_shell_correlation,
    fsc_curve,
    map_correlation,
    reconstruct_from_images,
    resolution_at,
)

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


@pytest.fixture(scope="module")
def bundled():
    vol, apix = read_map(BUNDLED)
    return torch.from_numpy(vol), apix


def _simulate(vol, apix, n, seed, snr=math.inf, max_shift=15.0):
    gen = torch.Generator().manual_seed(seed)
    draw = draw_simulation_parameters(n, gen, max_shift_angstrom=max_shift)
    ctf = CTFParameters.from_mapping({k: v.float() for k, v in vars(draw.ctf).items()})
    shifts = (draw.shifts_angstrom / apix).float()
    images = clean_particle_images(fourier_volume(vol), draw.rotations.float(), shifts, ctf, apix)
    return add_noise(images, snr, gen), draw.rotations.float(), shifts, ctf


def test_noise_free_round_trip_fsc_above_half_to_040(bundled):
    vol, apix = bundled
    images, rots, shifts, ctf = _simulate(vol, apix, 1500, seed=1)
    rec = reconstruct_from_images(images, rots, shifts, ctf, apix)
    fsc = fsc_curve(rec, vol)
    n = vol.shape[-1]
    limit = int(0.4 * n)  # shell index of 0.4 cycles/px
    assert fsc[: limit + 1].min().item() > 0.5, fsc
    assert map_correlation(rec, vol) > 0.99


def test_half_map_resolution_improves_with_particle_count(bundled):
    vol, apix = bundled
    res = []
    for n in (300, 2400):
        images, rots, shifts, ctf = _simulate(vol, apix, n, seed=2, snr=0.05)
        half = torch.arange(n) % 2 == 0
        h1 = reconstruct_from_images(images[half], rots[half], shifts[half], ctf[half], apix)
        h2 = reconstruct_from_images(images[~half], rots[~half], shifts[~half], ctf[~half], apix)
        res.append(fourier_shell_correlation(h1, h2, apix).resolution_0143)
    assert res[1] < res[0] - 2.0, res


def test_wrong_origin_sign_breaks_reconstruction(bundled):
    vol, apix = bundled
    images, rots, shifts, ctf = _simulate(vol, apix, 600, seed=3, max_shift=30.0)
    good = reconstruct_from_images(images, rots, shifts, ctf, apix)
    bad = reconstruct_from_images(images, rots, -shifts, ctf, apix)
    assert map_correlation(good, vol) > map_correlation(bad, vol) + 0.2


def test_ctf_weighting_matters(bundled):
    vol, apix = bundled
    images, rots, shifts, ctf = _simulate(vol, apix, 600, seed=4)
    with_ctf = reconstruct_from_images(images, rots, shifts, ctf, apix)
    without = reconstruct_from_images(images, rots, shifts, None, apix)
    assert map_correlation(with_ctf, vol) > map_correlation(without, vol) + 0.1


def test_symmetric_reconstruction(shared_data):
    vol_np, apix = read_map(shared_data / "trpv1" / "trpv1_volume.mrc")
    vol = torch.from_numpy(vol_np)
    # TRPV1 is C4 about z through index N//2: a quarter turn maps the map onto itself
    quarter = torch.roll(torch.rot90(vol, 1, dims=(1, 2)), 1, dims=1)
    assert map_correlation(quarter, vol) > 0.9999
    gen = torch.Generator().manual_seed(5)
    draw = draw_simulation_parameters(20, gen, max_shift_angstrom=0.0, defocus_range_um=None)
    rots = draw.rotations.float()
    images = project(fourier_volume(vol), rots)
    zero = torch.zeros(len(rots), 2)

    def pcc(sym):
        group = symmetry_matrices(sym, dtype=torch.float32)
        return map_correlation(reconstruct_from_images(images, rots, zero, None, apix, symmetry=group), vol)

    c1, c4, c3 = pcc("C1"), pcc("C4"), pcc("C3")
    assert proper_symmetry_matrices("C4").shape[0] == 4
    assert c4 > c1 + 0.05  # 20 views become 80
    assert c3 < c4 - 0.05  # the wrong group blurs the map


def test_odd_box_round_trip(bundled):
    vol, apix = bundled
    odd = vol[:63, :63, :63].contiguous()
    images, rots, shifts, ctf = _simulate(odd, apix, 800, seed=6)
    rec = reconstruct_from_images(images, rots, shifts, ctf, apix)
    assert map_correlation(rec, odd) > 0.98


def test_resolution_interpolates_first_crossing():
    fsc = torch.tensor([1.0, 0.9, 0.6, 0.4, 0.1, 0.3, 0.0])  # box 12
    # 0.5 crossed between shells 2 (0.6) and 3 (0.4): shell 2.5 -> 12 * 1 / 2.5
    assert resolution_at(fsc, 1.0, 0.5) == pytest.approx(12 / 2.5)
    # 0.143 first crossed between 3 (0.4) and 4 (0.1): 3 + 0.257/0.3
    assert resolution_at(fsc, 2.0, 0.143) == pytest.approx(24 / (3 + 0.257 / 0.3))
    assert resolution_at(torch.ones(7), 1.5, 0.143) == pytest.approx(3.0)


def test_fsc_of_identical_and_independent_maps():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, 32, generator=gen)
    b = torch.randn(32, 32, 32, generator=gen)
    assert torch.allclose(fsc_curve(a, a), torch.ones(17, dtype=torch.float64))
    assert fsc_curve(a, b)[3:].abs().max() < 0.2


def test_ctf_matches_relion_formula_by_hand():
    ctf = CTFParameters.from_mapping(
        {
            "defocus_u": [20000.0],
            "defocus_v": [16000.0],
            "defocus_angle": [30.0],
            "voltage": [300.0],
            "spherical_aberration": [2.7],
            "amplitude_contrast": [0.1],
        },
        dtype=torch.float64,
    )
    lam = float(electron_wavelength(torch.tensor(300.0, dtype=torch.float64)))
    assert lam == pytest.approx(0.019687, abs=1e-6)  # 300 kV electrons
    # at k = 0 the CTF is sin(atan(Q0/sqrt(1-Q0^2))) = Q0
    zero = ctf_values(ctf, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert zero.item() == pytest.approx(0.1)
    # along the defocus angle the defocus is U; RELION: -sin(pi lam (-U) k^2 + pi/2 Cs lam^3 k^4 - K3)
    k = 0.05
    theta = math.radians(30.0)
    val = ctf_values(
        ctf,
        torch.tensor([k * math.sin(theta)], dtype=torch.float64),
        torch.tensor([k * math.cos(theta)], dtype=torch.float64),
    )
    k3 = math.atan(0.1 / math.sqrt(1 - 0.01))
    expected = -math.sin(math.pi * lam * (-20000.0) * k * k + math.pi / 2 * 2.7e7 * lam**3 * k**4 - k3)
    assert val.item() == pytest.approx(expected, abs=1e-9)
    # perpendicular to it the defocus is V
    theta2 = theta + math.pi / 2
    val2 = ctf_values(
        ctf,
        torch.tensor([k * math.sin(theta2)], dtype=torch.float64),
        torch.tensor([k * math.cos(theta2)], dtype=torch.float64),
    )
    expected2 = -math.sin(math.pi * lam * (-16000.0) * k * k + math.pi / 2 * 2.7e7 * lam**3 * k**4 - k3)
    assert val2.item() == pytest.approx(expected2, abs=1e-9)


def test_integer_fourier_shift_equals_roll():
    img = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0))
    shifted = shift_images(img, torch.tensor([[3.0, -5.0]]))
    assert torch.allclose(shifted, torch.roll(img, shifts=(-5, 3), dims=(-2, -1)), atol=1e-5)


def test_fourier_resize_round_trip_band_limited():
    gen = torch.Generator().manual_seed(1)
    # band-limited: no power at the 24-px Nyquist frequency
    small = fourier_resize_images(torch.randn(2, 20, 20, generator=gen), 24)
    big = fourier_resize_images(small, 48)
    back = fourier_resize_images(big, 24)
    assert torch.allclose(back, small, atol=1e-4)
    assert big.mean().item() == pytest.approx(small.mean().item(), abs=1e-4)


def test_normalise_background_and_snr_definition(bundled):
    vol, apix = bundled
    images, *_ = _simulate(vol, apix, 64, seed=7)
    noisy = add_noise(images, 0.5, torch.Generator().manual_seed(0))
    noise = noisy - images
    inside = (torch.arange(64) - 32).pow(2)[:, None] + (torch.arange(64) - 32).pow(2)[None, :] <= (0.4 * 64) ** 2
    ratio = images[:, inside].var(dim=1) / noise.var(dim=(1, 2))
    assert ratio.mean().item() == pytest.approx(0.5, rel=0.05)
    norm = normalise_background(noisy, radius=28)
    outside = ~((torch.arange(64) - 32).pow(2)[:, None] + (torch.arange(64) - 32).pow(2)[None, :] <= 28**2)
    assert norm[:, outside].mean(dim=1).abs().max() < 1e-4
    assert torch.allclose(norm[:, outside].std(dim=1), torch.ones(64), atol=1e-4)
