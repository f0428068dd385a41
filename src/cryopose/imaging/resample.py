"""Resampling images and volumes to another pixel size by Fourier cropping or padding."""

from __future__ import annotations

import torch

__all__ = ["fourier_resize_images", "fourier_resize_volume", "resample_volume_to_pixel_size"]


def _resize_axis(spec: torch.Tensor, dim: int, new: int) -> torch.Tensor:
    """Crop or zero-pad a full (unshifted) spectrum axis to ``new`` samples, centred on 0."""
    old = spec.shape[dim]
    if new == old:
        return spec
    s = torch.fft.fftshift(spec, dim=dim)
    if new < old:
        start = old // 2 - new // 2
        s = s.narrow(dim, start, new)
    else:
        shape = list(s.shape)
        shape[dim] = new
        out = s.new_zeros(shape)
        start = new // 2 - old // 2
        out.narrow(dim, start, old).copy_(s)
        s = out
    return torch.fft.ifftshift(s, dim=dim)


def fourier_resize_images(images: torch.Tensor, new_size: int) -> torch.Tensor:
    """Resize images (..., N, N) to (..., n, n) by Fourier crop/pad (same field of view).

    Pixel size changes by N/n; values are scaled to keep the mean density per pixel.
    """
    n = images.shape[-1]
    spec = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    for d in (-2, -1):
        spec = _resize_axis(spec, d, new_size)
    out = torch.fft.ifft2(spec).real * (new_size / n) ** 2
    return torch.fft.fftshift(out, dim=(-2, -1))


def fourier_resize_volume(volume: torch.Tensor, new_size: int) -> torch.Tensor:
    """Resize a volume (N, N, N) to (n, n, n) by Fourier crop/pad (same field of view),
    keeping voxel values (densities) on the same scale."""
    n = volume.shape[-1]
    spec = torch.fft.fftn(torch.fft.ifftshift(volume, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    for d in (-3, -2, -1):
        spec = _resize_axis(spec, d, new_size)
    out = torch.fft.ifftn(spec, dim=(-3, -2, -1)).real * (new_size / n) ** 3
    return torch.fft.fftshift(out, dim=(-3, -2, -1))


def resample_volume_to_pixel_size(volume: torch.Tensor, pixel_size: float, new_pixel_size: float) -> tuple[torch.Tensor, float]:
    """Fourier-resample a volume to about ``new_pixel_size`` Å (the box is rounded to an
    integer; the exact new pixel size is returned)."""
    n = volume.shape[-1]
    new_n = max(2, int(round(n * pixel_size / new_pixel_size)))
    return fourier_resize_volume(volume, new_n), n * pixel_size / new_n
