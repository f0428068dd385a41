"""Our projector against RELION's own projections, and real TRPV1 particles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.geometry.rotations import random_rotations
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.simulation import clean_particle_images
from cryopose.io.mrc import ParticleImages, read_map
from cryopose.io.star import read_star


def _correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.reshape(len(a), -1).double()
    b = b.reshape(len(b), -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize(
    "name, minimum",
    [("rln_proj_64", 0.999), ("rln_proj_64_shifted", 0.98), ("rln_proj_64_centered", 0.98)],
)
def test_projection_matches_relion(shared_data, name, minimum):
    folder = shared_data / "relion_projections_70s"
    volume, _ = read_map(folder / "clean70SRibosome_vol_64_fourier_cropped.mrc")
    ps = read_star(folder / f"{name}.star", apix=1.0)  # no optics block: 1 A/px
    relion = torch.from_numpy(ParticleImages(ps).read(np.arange(len(ps))))
    ours = clean_particle_images(
        fourier_volume(torch.from_numpy(volume)),
        torch.from_numpy(ps.rotations).float(),
        torch.from_numpy(ps.shifts_angstrom / ps.pixel_size[:, None]).float(),
        None,
        1.0,
    )
    cc = _correlations(ours, relion)
    assert cc.min().item() >= minimum, cc
    # RELION's projector and ours agree on scale too (line integral, no normalisation)
    ratio = (ours.std() / relion.std()).item()
    assert 0.98 < ratio < 1.02


def test_projection_sign_of_origin(shared_data):
    """Shifting by +origin instead of -origin must fail the oracle (the test can fail)."""
    folder = shared_data / "relion_projections_70s"
    volume, _ = read_map(folder / "clean70SRibosome_vol_64_fourier_cropped.mrc")
    ps = read_star(folder / "rln_proj_64_shifted.star", apix=1.0)
    relion = torch.from_numpy(ParticleImages(ps).read(np.arange(len(ps))))
    shifts = torch.from_numpy(ps.shifts_angstrom).float()
    assert shifts.abs().max() > 1
    wrong = clean_particle_images(
        fourier_volume(torch.from_numpy(volume)), torch.from_numpy(ps.rotations).float(), -shifts, None, 1.0
    )
    assert _correlations(wrong, relion).mean().item() < 0.9


def test_trpv1_particles_prefer_their_poses(shared_data):
    folder = shared_data / "trpv1"
    volume, apix = read_map(folder / "trpv1_volume.mrc")
    ps = read_star(folder / "trpv1_small_stack.relinked.star")
    images = torch.from_numpy(ParticleImages(ps).read(np.arange(len(ps))))
    fv = fourier_volume(torch.from_numpy(volume))
    ctf = CTFParameters.from_mapping(ps.ctf_parameters())
    shifts = torch.from_numpy(ps.shifts_angstrom / ps.pixel_size[:, None]).float()
    at_pose = _correlations(
        clean_particle_images(fv, torch.from_numpy(ps.rotations).float(), shifts, ctf, apix), images
    )
    random_cc = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        rots = random_rotations(len(ps), gen).float()
        random_cc.append(_correlations(clean_particle_images(fv, rots, shifts, ctf, apix), images))
    random_mean = torch.stack(random_cc).mean().item()
    assert at_pose.mean().item() > random_mean + 0.05
    assert at_pose.mean().item() > 0.12
