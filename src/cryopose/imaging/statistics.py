"""Correlation statistics of images and maps (weighted, batched)."""

from __future__ import annotations

import torch

__all__ = ["pearson_correlation", "standardise"]


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted Pearson correlation of each of ``a`` (B, ...) or (...) with ``b`` (...) over
    the trailing dimensions of ``b``; ``weights`` (...) >= 0 (None: all 1). A binary weight is
    a mask. Returns (B,) or a scalar tensor."""
    dims = tuple(range(a.dim() - b.dim(), a.dim()))
    w = torch.ones_like(b) if weights is None else weights.to(b.dtype)
    w = w / w.sum()
    x = a - (w * a).sum(dim=dims, keepdim=True)
    y = b - (w * b).sum()
    num = (w * x * y).sum(dim=dims)
    den = torch.sqrt((w * x * x).sum(dim=dims) * (w * y * y).sum()).clamp_min(1e-30)
    return num / den


def standardise(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``volume`` minus its weighted mean, over its weighted standard deviation."""
    w = weights / weights.sum()
    m = (w * volume).sum()
    sd = torch.sqrt((w * (volume - m) ** 2).sum()).clamp_min(1e-20)
    return (volume - m) / sd
