"""Fourier shell correlation and real-space correlation of maps.

Shells as RELION: shell index round(|k|) (k in frequency indices) on the half transform,
shells 0..N//2. Shell i has spatial frequency i / (N * pixel size) 1/Å. Resolution at a
threshold is found by linear interpolation of the first crossing below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.imaging.fourier import radial_shell_index
from cryopose.imaging.statistics import pearson_correlation

__all__ = ["fsc_curve", "resolution_at", "FSCResult", "fourier_shell_correlation", "map_correlation"]


def fsc_curve(map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FSC per shell (N//2 + 1,) between two cubic maps (N, N, N), optionally masked."""
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {tuple(map1.shape)} vs {tuple(map2.shape)}")
    n = map1.shape[-1]
    a, b = map1.double(), map2.double()
    if mask is not None:
        a, b = a * mask, b * mask
    fa = torch.fft.rfftn(a)
    fb = torch.fft.rfftn(b)
    shell = radial_shell_index(n, 3, device=map1.device).reshape(-1)
    nsh = n // 2 + 1
    keep = shell < nsh
    idx = shell[keep]

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(nsh, dtype=v.dtype, device=v.device)
        return out.index_add_(0, idx, v.reshape(-1)[keep])

    num = shell_sum((fa * fb.conj()).real)
    den = torch.sqrt(shell_sum(fa.abs() ** 2) * shell_sum(fb.abs() ** 2))
    fsc = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    fsc[0] = 1.0 if den[0] > 0 else 0.0
    return fsc


def resolution_at(fsc: torch.Tensor, pixel_size: float, threshold: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation
    between shells). If it never does, the Nyquist resolution 2 * pixel size."""
    nsh = fsc.shape[0]
    box = 2 * (nsh - 1)
    values = fsc.tolist()
    for i in range(1, nsh):
        if values[i] < threshold:
            f0, f1 = values[i - 1], values[i]
            t = (f0 - threshold) / (f0 - f1) if f0 != f1 else 0.0
            shell = (i - 1) + t
            if shell <= 0:
                return float("inf")
            return box * pixel_size / shell
    return 2.0 * pixel_size


@dataclass
class FSCResult:
    """An FSC curve with its spatial frequencies (1/Å) and resolutions (Å)."""

    frequency: torch.Tensor
    fsc: torch.Tensor
    resolution_0143: float
    resolution_05: float

    def to_dict(self) -> dict:
        return {
            "resolution_0143": self.resolution_0143,
            "resolution_05": self.resolution_05,
            "frequency": [float(f) for f in self.frequency],
            "fsc": [float(v) for v in self.fsc],
        }


def fourier_shell_correlation(
    map1: torch.Tensor, map2: torch.Tensor, pixel_size: float, mask: torch.Tensor | None = None
) -> FSCResult:
    """FSC curve, frequencies (1/Å) and resolutions at 0.143 and 0.5."""
    fsc = fsc_curve(map1, map2, mask)
    n = map1.shape[-1]
    freq = torch.arange(fsc.shape[0], dtype=torch.float64) / (n * pixel_size)
    return FSCResult(freq, fsc.cpu(), resolution_at(fsc, pixel_size, 0.143), resolution_at(fsc, pixel_size, 0.5))


def map_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Pearson correlation coefficient of two maps (or images) over every voxel; with a
    ``mask`` (soft, 0..1) the correlation of a * mask with b * mask over the whole box: the
    maps the masked FSC compares (CESPED's Eq. 7 with a mask)."""
    a, b = a.double(), b.double()
    if mask is not None:
        m = mask.double()
        a, b = a * m, b * m
    return float(pearson_correlation(a, b))
