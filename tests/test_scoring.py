"""The scoring kernel and the local search built on it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cryopose.align.scoring as scoring
from cryopose.align.local_search import LocalSearchSettings, local_search
from cryopose.align.scoring import disc_offsets, make_reference, prepare_particles, score_poses
from cryopose.geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from cryopose.imaging.projection import fourier_volume, project
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import read_map

MAP = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


@pytest.fixture(scope="module")
def volume():
    vol, apix = read_map(MAP)
    return torch.as_tensor(vol), apix


def _numpy_ncc(particle: np.ndarray, reference: np.ndarray, radius: int) -> float:
    """Pearson correlation of two images low-passed to 1 <= |k| <= radius (numpy, real space)."""
    n = particle.shape[-1]
    k = np.fft.fftfreq(n) * n
    band = (k[:, None] ** 2 + k[None] ** 2 >= 1) & (k[:, None] ** 2 + k[None] ** 2 <= radius**2)
    a = np.fft.ifft2(np.fft.fft2(particle) * band).real
    b = np.fft.ifft2(np.fft.fft2(reference) * band).real
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_score_is_the_band_limited_pearson_correlation(volume):
    """score_poses against an independent real-space computation: the particle is masked
    as the kernel does, the reference is projected and moved by minus the origin in real
    space (integer shifts: np.roll), both low-passed in numpy."""
    vol, apix = volume
    ref = make_reference(vol, apix, resolution=2 * apix)  # no Fourier crop: working box = box
    assert ref.work_box == 64
    g = torch.Generator().manual_seed(2)
    rots = random_rotations(3, g).float()
    origins = torch.tensor([[2.0, -1.0], [0.0, 3.0], [-2.0, -2.0]])
    truth = clean_particle_images(fourier_volume(vol), rots, origins, None, apix)
    images = add_noise(truth, 0.5, g)
    prep = prepare_particles(ref, images, None, mask_radius=0.45)
    offsets = torch.tensor([[0.0, 0.0], [2.0, -1.0], [1.0, 1.0]])
    scores = score_poses(ref, prep, torch.arange(3), rots, offsets)
    masked = torch.fft.fftshift(torch.fft.irfft2(prep.spectra, s=(64, 64)), dim=(-2, -1)).numpy()
    projections = project(fourier_volume(vol), rots).numpy()
    for q in range(3):
        for t, (ox, oy) in enumerate(offsets.tolist()):
            # image = projection shifted by -origin
            moved = np.roll(projections[q], shift=(-int(oy), -int(ox)), axis=(0, 1))
            assert scores[q, t].item() == pytest.approx(_numpy_ncc(masked[q], moved, ref.radius), abs=2e-4)
    assert scores[0].argmax().item() == 1  # particle 0 was made with origin (2, -1)


def test_fft_and_phase_ramp_paths_agree(volume, monkeypatch):
    vol, apix = volume
    ref = make_reference(vol, apix, resolution=3 * apix)
    draw = draw_simulation_parameters(4, torch.Generator().manual_seed(5), max_shift_angstrom=3 * apix)
    images = clean_particle_images(
        fourier_volume(vol), draw.rotations.float(), (draw.shifts_angstrom / apix).float(), draw.ctf, apix
    )
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    offsets = disc_offsets(4.0, 1.0)
    centres = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 0.0], [-1.0, -1.0]])
    rots = draw.rotations.float()
    fft = score_poses(ref, prep, torch.arange(4), rots, offsets, centres)
    monkeypatch.setattr(scoring, "_FFT_SHIFTS", 10**9)  # force the phase ramps
    ramp = score_poses(ref, prep, torch.arange(4), rots, offsets, centres)
    torch.testing.assert_close(fft, ramp, atol=2e-5, rtol=0)


def test_sub_pixel_origins_peak_at_the_truth(volume):
    vol, apix = volume
    ref = make_reference(vol, apix, resolution=2 * apix)
    rot = random_rotations(1, torch.Generator().manual_seed(9)).float()
    origin = torch.tensor([[0.75, -0.5]])
    images = clean_particle_images(fourier_volume(vol), rot, origin, None, apix)
    prep = prepare_particles(ref, images, None)
    offsets = disc_offsets(1.5, 0.25)
    scores = score_poses(ref, prep, torch.zeros(1, dtype=torch.long), rot, offsets)[0]
    best = offsets[scores.argmax()]
    assert torch.allclose(best, origin[0], atol=1e-6)


def test_local_search_recovers_perturbed_poses(volume):
    vol, apix = volume
    g = torch.Generator().manual_seed(11)
    n = 24
    draw = draw_simulation_parameters(n, g, max_shift_angstrom=8.0)
    clean = clean_particle_images(
        fourier_volume(vol), draw.rotations.float(), (draw.shifts_angstrom / apix).float(), draw.ctf, apix
    )
    images = add_noise(clean, 1.0, g)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    start = axis_angle_to_matrix(math.radians(5) * axis / axis.norm(dim=-1, keepdim=True)) @ draw.rotations
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    start_origin = draw.shifts_angstrom + 3.0 * torch.stack([phi.cos(), phi.sin()], -1)
    ref = make_reference(vol, apix, resolution=2.1 * apix)
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    settings = LocalSearchSettings(max_angle=8, angle_step=2, max_shift=6, levels=4)
    res = local_search(ref, prep, start.float(), start_origin.float(), settings)
    err = torch.rad2deg(geodesic_distance(res.rotations.double(), draw.rotations))
    shift_err = (res.shifts_angstrom.double() - draw.shifts_angstrom).norm(dim=-1)
    before = torch.rad2deg(geodesic_distance(start, draw.rotations))
    assert before.median() == pytest.approx(5.0, abs=1e-6)
    assert err.median() < 1.0 and shift_err.median() < 1.0, (err.median(), shift_err.median())
    # never farther from the start than the neighbourhood allows (8 deg, then one step per level)
    moved = torch.rad2deg(geodesic_distance(res.rotations.double(), start))
    assert moved.max() <= 8 + 2 + 1 + 0.5 + 1e-3
