"""Sub-pixel image shifts by Fourier phase ramps.

``shift_rfft2(spectra, shifts)`` moves image content by +shift (pixels, (x, y)):
out(x) = in(x - shift). RELION's particle image is the projection shifted by minus its
origin, so ``image = shift(projection, -origin)`` and centring a particle is
``shift(image, +origin)``.
"""

from __future__ import annotations

import math

import torch

from cryopose.imaging.fourier import centered_irfft2, centered_rfft2, rfft2_frequencies

__all__ = ["phase_ramp", "shift_rfft2", "shift_images"]


def phase_ramp(shifts: torch.Tensor, size: int) -> torch.Tensor:
    """exp(-2 pi i k.s) on the half transform, shape (B, N, N//2+1); shifts (B, 2) in px (x, y)."""
    ky, kx = rfft2_frequencies(size, 1.0, device=shifts.device, dtype=shifts.dtype)
    phase = kx[None] * shifts[:, 0, None, None] + ky[None] * shifts[:, 1, None, None]
    return torch.polar(torch.ones_like(phase), -2 * math.pi * phase)


def shift_rfft2(spectra: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift half-transform spectra (B, N, N//2+1) of N x N images by ``shifts`` (B, 2) px."""
    size = spectra.shape[-2]
    return spectra * phase_ramp(shifts.to(spectra.real.dtype), size)


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift real images (B, N, N) by ``shifts`` (B, 2) px (x, y), periodic boundary."""
    size = images.shape[-1]
    return centered_irfft2(shift_rfft2(centered_rfft2(images), shifts), size)
