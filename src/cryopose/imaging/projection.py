"""Fourier-slice projection of a volume, as RELION's projector does it.

The volume is gridding-pre-corrected, zero-padded by ``padding`` and transformed once
(:func:`fourier_volume`). A projection at pose A is the central slice V̂(A^T k) sampled by
trilinear interpolation (:func:`project_fourier`), which equals the transform of the line
integral of V(A^T x) along z. Odd and even boxes; box centre at index N//2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryopose.imaging.fourier import centered_irfft2, rfft2_frequencies

__all__ = ["FourierVolume", "fourier_volume", "project_fourier", "project_points", "project", "sinc2_gridding_kernel"]


@dataclass
class FourierVolume:
    """Centred (fftshifted) transform of a padded volume, ready for slicing.

    ``data`` has shape (2, M, M, M) (real and imaginary parts, z, y, x) with M = padding*N
    and zero frequency at index M//2.
    """

    data: torch.Tensor
    box: int
    padding: int

    @property
    def padded_size(self) -> int:
        return self.data.shape[-1]


def sinc2_gridding_kernel(size: int, padded_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """1-D real-space profile sinc^2(x / M) that trilinear interpolation on a grid of M
    frequency samples imposes, for x = index - size//2 (pixels)."""
    x = (torch.arange(size, device=device, dtype=dtype) - size // 2) / padded_size
    return torch.sinc(x) ** 2


def fourier_volume(volume: torch.Tensor, padding: int = 2) -> FourierVolume:
    """Prepare a real volume (N, N, N) for projection (gridding correction, padding, FFT)."""
    n = volume.shape[-1]
    if volume.shape != (n, n, n):
        raise ValueError(f"volume must be cubic, got {tuple(volume.shape)}")
    m = padding * n
    prof = sinc2_gridding_kernel(n, m, volume.device, volume.dtype)
    corrected = volume / (prof[:, None, None] * prof[None, :, None] * prof[None, None, :])
    padded = volume.new_zeros((m, m, m))
    o = m // 2 - n // 2
    padded[o : o + n, o : o + n, o : o + n] = corrected
    spectrum = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))
    data = torch.view_as_real(spectrum).permute(3, 0, 1, 2).contiguous()
    return FourierVolume(data=data, box=n, padding=padding)


def slice_coordinates(rotations: torch.Tensor, size: int, max_frequency: float | None = None):
    """3-D frequency (x, y, z; frequency indices of an N-box) of each half-transform pixel.

    Returns coords (B, N, N//2+1, 3) and the mask of pixels within ``max_frequency``
    (frequency index, default N/2).
    """
    ky, kx = rfft2_frequencies(size, 1.0 / size, device=rotations.device, dtype=rotations.dtype)
    radius = max_frequency if max_frequency is not None else size / 2
    inside = (kx**2 + ky**2) <= radius**2
    # A^T [kx, ky, 0] = kx * A[0, :] + ky * A[1, :]
    coords = kx[None, ..., None] * rotations[:, None, None, 0, :] + ky[None, ..., None] * rotations[:, None, None, 1, :]
    return coords, inside


def project_fourier(volume: FourierVolume, rotations: torch.Tensor, max_frequency: float | None = None) -> torch.Tensor:
    """Half transforms (B, N, N//2+1) of projections at poses ``rotations`` (B, 3, 3).

    Frequencies beyond ``max_frequency`` (frequency index; default N/2) are zero.
    """
    rot = rotations.to(device=volume.data.device, dtype=volume.data.dtype)
    coords, inside = slice_coordinates(rot, volume.box, max_frequency)
    return _sample(volume, coords) * inside


def _sample(volume: FourierVolume, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples (B, H, W) complex of the padded transform at 3-D frequencies
    ``coords`` (B, H, W, 3) (x, y, z; frequency indices of the N-box)."""
    m = volume.padded_size
    # grid_sample wants (x, y, z) normalised to [-1, 1] with align_corners=True
    grid = (coords * volume.padding + m // 2) * (2.0 / (m - 1)) - 1.0
    sampled = F.grid_sample(
        volume.data[None],
        grid[None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[0]  # (2, B, H, W)
    return torch.complex(sampled[0], sampled[1])


def project_points(volume: FourierVolume, rotations: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Central-slice values (B, K) of the projections at poses ``rotations`` (B, 3, 3) at
    the 2-D frequencies ``kxy`` (K, 2) (x, y; frequency indices of the N-box): the entries
    of :func:`project_fourier` at those frequencies, without computing the others."""
    rot = rotations.to(device=volume.data.device, dtype=volume.data.dtype)
    k = kxy.to(rot)
    coords = k[None, :, 0, None] * rot[:, None, 0, :] + k[None, :, 1, None] * rot[:, None, 1, :]  # (B, K, 3)
    return _sample(volume, coords[:, None])[:, 0]


def project(volume: FourierVolume, rotations: torch.Tensor) -> torch.Tensor:
    """Real-space projections (B, N, N) of the volume at poses ``rotations`` (B, 3, 3)."""
    return centered_irfft2(project_fourier(volume, rotations), volume.box)
