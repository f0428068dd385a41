"""Masks, filters and normalisation of images and volumes (pixels, box centre at N//2)."""

from __future__ import annotations

import math

import torch

from cryopose.imaging.fourier import radial_shell_index, rfftn_frequencies

__all__ = [
    "radial_distance",
    "soft_circular_mask",
    "soft_spherical_mask",
    "normalise_background",
    "lowpass_volume",
    "soft_mask_from_map",
    "filter_shells",
]


def radial_distance(size: int, ndim: int = 2, device=None, dtype=torch.float32) -> torch.Tensor:
    """Distance (px) of each pixel/voxel from the box centre N//2, shape (N,)*ndim."""
    ax = torch.arange(size, device=device, dtype=dtype) - size // 2
    grids = torch.meshgrid(*([ax] * ndim), indexing="ij")
    return torch.sqrt(sum((g**2 for g in grids[1:]), grids[0] ** 2))


def _soft_edge(r: torch.Tensor, radius: float, edge_width: float) -> torch.Tensor:
    if edge_width <= 0:
        return (r <= radius).to(r.dtype)
    t = ((r - radius) / edge_width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def soft_circular_mask(
    size: int, radius: float, edge_width: float = 3.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Circular mask (N, N): 1 inside ``radius`` px, raised-cosine edge ``edge_width`` px wide."""
    return _soft_edge(radial_distance(size, 2, device, dtype), radius, edge_width)


def soft_spherical_mask(
    size: int, radius: float, edge_width: float = 3.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Spherical mask (N, N, N): 1 inside ``radius`` px, raised-cosine edge."""
    return _soft_edge(radial_distance(size, 3, device, dtype), radius, edge_width)


def _lowpass_profile(freq: torch.Tensor, cutoff: float, edge_width: float) -> torch.Tensor:
    """Raised-cosine low-pass on |k| (cycles/Å): 1 below cutoff - edge/2, 0 above cutoff + edge/2."""
    if edge_width <= 0:
        return (freq <= cutoff).to(freq.dtype)
    t = ((freq - (cutoff - edge_width / 2)) / edge_width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def lowpass_volume(volume: torch.Tensor, resolution: float, pixel_size: float) -> torch.Tensor:
    """Low-pass a real volume (N, N, N) to ``resolution`` Å with a 2-pixel raised-cosine edge."""
    n = volume.shape[-1]
    kz, ky, kx = rfftn_frequencies(n, pixel_size, device=volume.device, dtype=torch.float32)
    prof = _lowpass_profile(torch.sqrt(kx**2 + ky**2 + kz**2), 1.0 / resolution, 2.0 / (n * pixel_size))
    spec = torch.fft.rfftn(volume, dim=(-3, -2, -1)) * prof
    return torch.fft.irfftn(spec, s=volume.shape[-3:], dim=(-3, -2, -1))


def filter_shells(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply each Fourier shell round(|k|) = s of a real volume (N, N, N) by
    ``weights[s]`` (shells past the end of ``weights`` get 0)."""
    n = volume.shape[-1]
    shell = radial_shell_index(n, 3, device=volume.device)
    w = torch.zeros(int(shell.max()) + 1, dtype=volume.dtype, device=volume.device)
    k = min(len(weights), len(w))
    w[:k] = torch.as_tensor(weights, dtype=volume.dtype, device=volume.device)[:k]
    spec = torch.fft.rfftn(volume, dim=(-3, -2, -1)) * w[shell]
    return torch.fft.irfftn(spec, s=volume.shape[-3:], dim=(-3, -2, -1))


def normalise_background(images: torch.Tensor, radius: float | None = None) -> torch.Tensor:
    """Normalise images (B, N, N) so that their background, the pixels farther than
    ``radius`` px from the box centre (default 0.45 N, the circle of 0.9 of the box), has
    mean 0 and standard deviation 1 (RELION's background normalisation)."""
    size = images.shape[-1]
    radius = size / 2 * 0.9 if radius is None else radius
    outside = radial_distance(size, 2, images.device, images.dtype) > radius
    bg = images[..., outside]
    mean = bg.mean(dim=-1)
    std = bg.std(dim=-1).clamp_min(1e-12)
    return (images - mean[..., None, None]) / std[..., None, None]


def soft_mask_from_map(
    volume: torch.Tensor,
    pixel_size: float,
    threshold: float | None = None,
    lowpass: float = 15.0,
    extend: float = 6.0,
    soft_edge: float = 8.0,
) -> tuple[torch.Tensor, float]:
    """A soft mask (N, N, N) in [0, 1] around the density of ``volume``, and the threshold used.

    Steps (lengths in Å; RELION's ``relion_mask_create`` recipe): low-pass the map to
    ``lowpass`` Å (skipped when finer than Nyquist); keep voxels above ``threshold`` (None:
    0.2 of the low-passed map's maximum, like cryoSPARC's dynamic mask); extend by
    ``extend`` Å (at least 1 px); then a raised-cosine edge ``soft_edge`` Å wide (at least
    3 px), by the exact Euclidean distance to the extended mask. Returns the mask on
    ``volume``'s device and dtype float32.
    """
    from scipy.ndimage import distance_transform_edt

    vol = volume.float()
    if lowpass > 2 * pixel_size:
        vol = lowpass_volume(vol, lowpass, pixel_size)
    thr = 0.2 * float(vol.max()) if threshold is None else float(threshold)
    core = (vol > thr).cpu().numpy()
    if not core.any():
        raise ValueError(f"no voxel of the map is above the mask threshold {thr:g}")
    extend_px = max(1.0, extend / pixel_size)
    edge_px = max(3.0, soft_edge / pixel_size)
    distance = torch.from_numpy(distance_transform_edt(~core)).to(volume.device)
    mask = _soft_edge(distance, extend_px, edge_px)
    return mask.float(), thr
