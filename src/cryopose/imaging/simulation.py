"""Simulated particle images with known poses, shifts, CTF and noise.

SNR is defined per image as var(signal inside the particle mask) / var(noise), where the
signal is the noise-free, CTF-affected, shifted projection and the particle mask is a
circle of ``mask_radius`` px (default 0.4 of the box) about the box centre. ``snr=inf``
adds no noise. Noise is white Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryopose.geometry.rotations import random_rotations
from cryopose.imaging.ctf import CTFParameters, ctf_rfft2
from cryopose.imaging.filters import radial_distance
from cryopose.imaging.fourier import centered_irfft2
from cryopose.imaging.projection import FourierVolume, project_fourier
from cryopose.imaging.shifts import shift_rfft2

__all__ = ["SimulationDraw", "draw_simulation_parameters", "clean_particle_images", "add_noise"]


@dataclass
class SimulationDraw:
    """Poses (n, 3, 3), origins (n, 2) in Å, and CTF parameters of simulated particles."""

    rotations: torch.Tensor
    shifts_angstrom: torch.Tensor
    ctf: CTFParameters | None


def draw_simulation_parameters(
    n: int,
    generator: torch.Generator,
    max_shift_angstrom: float = 0.0,
    defocus_range_um: tuple[float, float] | None = (1.0, 2.5),
    astigmatism_angstrom: float = 200.0,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> SimulationDraw:
    """Uniform random poses on SO(3), origins uniform in a disc of ``max_shift_angstrom``,
    defoci uniform in ``defocus_range_um`` (µm) with astigmatism up to
    ``astigmatism_angstrom`` at a random angle; ``defocus_range_um=None`` means no CTF."""
    rotations = random_rotations(n, generator=generator)
    radius = max_shift_angstrom * torch.sqrt(torch.rand(n, generator=generator, dtype=torch.float64))
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    shifts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    ctf = None
    if defocus_range_um is not None:
        lo, hi = defocus_range_um
        mean = (lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)) * 1e4
        astig = astigmatism_angstrom * torch.rand(n, generator=generator, dtype=torch.float64)
        ctf = CTFParameters.from_mapping(
            {
                "defocus_u": mean + astig / 2,
                "defocus_v": mean - astig / 2,
                "defocus_angle": 180 * torch.rand(n, generator=generator, dtype=torch.float64),
                "voltage": voltage,
                "spherical_aberration": spherical_aberration,
                "amplitude_contrast": amplitude_contrast,
            },
            dtype=torch.float64,
        )
    return SimulationDraw(rotations, shifts, ctf)


def clean_particle_images(
    volume: FourierVolume,
    rotations: torch.Tensor,
    shifts_px: torch.Tensor,
    ctf: CTFParameters | None,
    pixel_size: float,
) -> torch.Tensor:
    """Noise-free particle images (B, N, N): projection at pose A, CTF applied, shifted by
    minus the origin ``shifts_px`` (B, 2) px, as RELION models a particle image."""
    n = volume.box
    spectra = project_fourier(volume, rotations)
    if ctf is not None:
        spectra = spectra * ctf_rfft2(ctf.to(spectra.device), n, pixel_size)
    spectra = shift_rfft2(spectra, -shifts_px.to(spectra.device, spectra.real.dtype))
    return centered_irfft2(spectra, n)


def add_noise(
    images: torch.Tensor, snr: float, generator: torch.Generator, mask_radius: float | None = None
) -> torch.Tensor:
    """Add white Gaussian noise so that var(signal in mask) / var(noise) = ``snr`` per image."""
    if math.isinf(snr):
        return images
    if snr <= 0:
        raise ValueError("snr must be positive (use inf for no noise)")
    n = images.shape[-1]
    radius = 0.4 * n if mask_radius is None else mask_radius
    inside = radial_distance(n, 2, images.device, images.dtype) <= radius
    signal_var = images[..., inside].var(dim=-1)
    sigma = torch.sqrt(signal_var / snr)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device="cpu").to(images.device)
    return images + noise * sigma[:, None, None]
