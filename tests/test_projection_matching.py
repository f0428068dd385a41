"""The global projection-matching engine: pose recovery and agreement with brute force."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.align.projection_matching import (
    MatchSettings,
    brute_force_match,
    build_gallery,
    correlation_counts,
    match_images,
)
from cryopose.geometry.distances import direction_distance
from cryopose.geometry.rotations import viewing_direction
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.imaging.simulation import clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import read_map

MAP = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


@pytest.fixture(scope="module")
def small_map():
    vol, apix = read_map(MAP)
    box = 40
    v = fourier_resize_volume(torch.as_tensor(vol), box)
    return v, apix * 64 / box


def _particles(vol, apix, n, seed, max_shift_px=2.0):
    g = torch.Generator().manual_seed(seed)
    draw = draw_simulation_parameters(n, g, max_shift_angstrom=max_shift_px * apix)
    fv = fourier_volume(vol)
    imgs = clean_particle_images(fv, draw.rotations.float(), (draw.shifts_angstrom / apix).float(), draw.ctf, apix)
    return draw, imgs


@pytest.fixture(scope="module")
def full_map():
    vol, apix = read_map(MAP)
    return torch.as_tensor(vol), apix


@pytest.mark.parametrize("ctf_references", [False, True])
def test_engine_recovers_true_pose_of_noise_free_particles(full_map, ctf_references):
    vol, apix = full_map
    step = 5.0
    settings = MatchSettings(angular_sampling=step, max_shift=3 * apix, ctf_references=ctf_references)
    gallery = build_gallery(vol, apix, settings)
    draw, imgs = _particles(vol, apix, 24, seed=3)
    res = match_images(gallery, imgs, draw.ctf)
    assert res.direction_index.shape == (24, gallery.settings.xi) and gallery.settings.xi == 7
    assert torch.all(res.scores[:, :-1] >= res.scores[:, 1:])  # best first
    true_dir = viewing_direction(draw.rotations.float())
    err = torch.rad2deg(direction_distance(true_dir, res.directions[:, 0], "C1"))
    # within the angular sampling (gallery spacing ~step, so the nearest node is < step away)
    assert (err <= step).float().mean() >= 0.9
    # in-plane angle: compare full poses (direction + psi) through the image plane x axis
    a_true = draw.rotations.float()
    a_found = res.rotations[:, 0]
    ok = err <= step
    x_true = a_true[ok][:, 0, :]
    x_found = a_found[ok][:, 0, :]
    ang = torch.rad2deg(torch.acos((x_true * x_found).sum(-1).clamp(-1, 1)))
    assert torch.median(ang) <= 1.5 * step
    shift_err = (res.shifts_angstrom[:, 0] - draw.shifts_angstrom.float()).norm(dim=-1) / apix
    assert torch.median(shift_err[ok]) <= 1.0


def test_engine_agrees_with_brute_force(small_map):
    vol, apix = small_map
    settings = MatchSettings(angular_sampling=15.0, max_shift=2 * apix, xi=5)
    gallery = build_gallery(vol, apix, settings)
    draw, imgs = _particles(vol, apix, 4, seed=5, max_shift_px=1.5)
    g = torch.Generator().manual_seed(1)
    imgs = imgs + 0.5 * imgs.std() * torch.randn(imgs.shape, generator=g)
    fast = match_images(gallery, imgs, draw.ctf)
    brute, table = brute_force_match(gallery, imgs, draw.ctf)
    assert table.shape == (4, gallery.n_directions)
    assert torch.equal(fast.direction_index[:, 0], brute.direction_index[:, 0])
    overlap = np.mean(
        [
            len(set(a.tolist()) & set(b.tolist())) / settings.xi
            for a, b in zip(fast.direction_index, brute.direction_index)
        ]
    )
    assert overlap >= 0.8
    # the engine's scores are exact scores of grid points, so never above brute force's best
    assert torch.all(fast.scores[:, 0] <= brute.scores[:, 0] + 1e-4)
    counts = correlation_counts(gallery)
    assert counts["engine_total"] < counts["brute_force"]
    assert 0 < counts["fraction_total"] < 1


def test_psi_sign_convention(small_map):
    """A particle made at pose (rot, tilt, psi) on a gallery direction comes back with that psi."""
    vol, apix = small_map
    settings = MatchSettings(angular_sampling=10.0, max_shift=apix)
    gallery = build_gallery(vol, apix, settings)
    from cryopose.geometry.grids import directions_to_euler
    from cryopose.geometry.rotations import euler_to_matrix

    d = gallery.directions[[5, 40]]
    rot, tilt = directions_to_euler(d)
    psi = torch.deg2rad(torch.tensor([30.0, 250.0]))
    a = euler_to_matrix(rot, tilt, psi)
    imgs = clean_particle_images(fourier_volume(vol), a, torch.zeros(2, 2), None, apix)
    res = match_images(gallery, imgs, None)
    assert res.direction_index[:, 0].tolist() == [5, 40]
    diff = torch.remainder(res.psi[:, 0] - psi + math.pi, 2 * math.pi) - math.pi
    assert torch.all(torch.rad2deg(diff.abs()) < 1e-3 + 10.0 / 2)
