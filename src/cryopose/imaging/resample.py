"""Resampling images and volumes to another pixel size by Fourier cropping or padding."""

from __future__ import annotations

import torch

__all__ = ["fourier_resize_images", "fourier_resize_volume", "resample_map"]


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


def resample_map(
    volume: torch.Tensor, pixel_size: float, new_pixel_size: float | None = None, box: int | None = None
) -> tuple[torch.Tensor, float]:
    """A map (N, N, N) of ``pixel_size`` Å resampled to about ``new_pixel_size`` Å (Fourier;
    the box is rounded to an integer, so the exact new pixel size is returned) and then
    cropped or zero-padded about its centre to ``box`` px. None keeps either as it is."""
    vol = volume
    out_apix = pixel_size if new_pixel_size is None else new_pixel_size
    if abs(out_apix - pixel_size) > 1e-6 * pixel_size:
        n_new = max(2, int(round(vol.shape[-1] * pixel_size / out_apix)))
        out_apix = pixel_size * vol.shape[-1] / n_new
        vol = fourier_resize_volume(vol, n_new)
    if box is not None and box != vol.shape[-1]:
        n = vol.shape[-1]
        out = vol.new_zeros((box, box, box))
        src = slice(max(0, n // 2 - box // 2), max(0, n // 2 - box // 2) + min(n, box))
        dst = slice(max(0, box // 2 - n // 2), max(0, box // 2 - n // 2) + min(n, box))
        out[dst, dst, dst] = vol[src, src, src]
        vol = out
    return vol, out_apix
