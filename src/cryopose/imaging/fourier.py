"""Fourier-space helpers.

Images and volumes keep their origin (box centre) at index N//2 in real space. Their
transforms are taken after ``ifftshift`` so that phases are relative to that centre, and
kept in the unshifted FFT layout (zero frequency at index 0). Half transforms (``rfft``)
run along x, the last axis. Frequencies are in cycles per pixel unless a pixel size (Å)
is given, then in cycles per Å.
"""

from __future__ import annotations

import torch

__all__ = [
    "centered_rfft2",
    "centered_irfft2",
    "rfft2_frequencies",
    "rfftn_frequencies",
    "radial_shell_index",
]


def centered_rfft2(images: torch.Tensor) -> torch.Tensor:
    """Half transform (..., N, N//2+1) of images (..., N, N) with phases about index N//2."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


def centered_irfft2(spectra: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`centered_rfft2` for images of ``size`` x ``size`` pixels."""
    return torch.fft.fftshift(torch.fft.irfft2(spectra, s=(size, size)), dim=(-2, -1))


def rfft2_frequencies(
    size: int,
    pixel_size: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies (ky, kx), each (N, N//2+1), of the half transform of an N x N image.

    In cycles/Å when ``pixel_size`` (Å) is given; ``pixel_size=1`` gives cycles/px, and
    ``pixel_size=1/N`` gives integer frequency indices.
    """
    ky = torch.fft.fftfreq(size, d=pixel_size, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(size, d=pixel_size, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return gy, gx


def rfftn_frequencies(
    size: int,
    pixel_size: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies (kz, ky, kx), each (N, N, N//2+1), of the half transform of an N^3 volume."""
    k = torch.fft.fftfreq(size, d=pixel_size, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(size, d=pixel_size, device=device, dtype=dtype)
    gz, gy, gx = torch.meshgrid(k, k, kx, indexing="ij")
    return gz, gy, gx


def radial_shell_index(size: int, ndim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """RELION's shell index round(|k|) (k in frequency indices) on a half transform.

    Shape (N, N//2+1) for ``ndim=2`` and (N, N, N//2+1) for ``ndim=3``.
    """
    grids = (
        rfft2_frequencies(size, 1.0 / size, device, torch.float64)
        if ndim == 2
        else rfftn_frequencies(size, 1.0 / size, device, torch.float64)
    )
    radius = torch.sqrt(sum((g**2 for g in grids[1:]), grids[0] ** 2))
    return torch.round(radius).long()
