"""Alignment precision and accuracy scores (Vargas et al. 2017), two conventions.

Per particle m with its xi best gallery directions p_n and weights w_n (their NCC):

``paper`` (default, DESIGN.md):
  alpha_m = sum_{n != n'} w_n w_n' d(p_n, p_n') / sum_{n != n'} w_n w_n'
  chi_m   = sum_n w_n d(p_hat_m, p_n) / sum_n w_n
  alpha_noise = mean over M draws of alpha of xi directions uniform in the asymmetric unit,
  with equal weights (random draws have no correlation to weigh by);
  chi_noise_m = mean over M draws of chi(p_hat_m, xi uniform directions), equal weights
  (the M * xi directions are drawn once per run and shared by all particles);
  q = (value - noise) / (good - noise), not clipped; passes when q >= threshold.

``xmipp`` (xmipp_multireference_aligneability, MultireferenceAligneability in Xmipp's
src/xmipp/libraries/reconstruction/multireference_aligneability.cpp, as run by Scipion's
validate-nontilt protocol with --check_mirrors):
  - calc_sumu: the double sum runs over all ordered pairs, self-pairs included (their
    distance is 0 but their weight product is in the denominator);
  - distances are SymList::computeDistance in projection-direction mode, with check_mirrors:
    d and -d are the same direction (antipodal directions folded);
  - calc_sumw2: ONE noise value shared by all particles and by both scores: over 500 trials,
    xi distinct gallery directions drawn at random, the unweighted sum of distances over
    all ordered pairs, divided by trials * (xi - 1)^2;
  - obtainAngularAccuracy: chi = sum w d(p_hat, p_n) / sum w; q^a uses the same shared
    noise value as q^p;
  - Q and the fractions count q > 0.5 (strict), divided by the number of particles;
  - its GPU path keeps 6 candidates and uses them unweighted (--dontUseWeights); we use
    xi = 6 and unit weights for this convention unless told otherwise.

Distances d are angles between viewing directions, minimised over the symmetry group.
All angles here are radians; the pipeline reports degrees.
"""

from __future__ import annotations

import math

import torch

from cryopose.geometry.distances import direction_distance
from cryopose.geometry.grids import random_directions_in_asu

__all__ = [
    "CONVENTIONS",
    "XMIPP_XI",
    "pair_distance",
    "alpha_score",
    "chi_score",
    "noise_alpha",
    "noise_chi",
    "xmipp_noise",
    "quality_score",
    "passes",
]

CONVENTIONS = ("paper", "xmipp")
XMIPP_XI = 6


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; use one of {CONVENTIONS}")


def pair_distance(d1: torch.Tensor, d2: torch.Tensor, sym: str = "C1", convention: str = "paper") -> torch.Tensor:
    """Angle (rad) between viewing directions (broadcast), minimised over ``sym``; the
    xmipp convention also folds antipodal directions (min(d, pi - d))."""
    _check(convention)
    d1, d2 = torch.broadcast_tensors(d1, d2)
    d = direction_distance(d1, d2, sym)
    if convention == "xmipp":
        d = torch.minimum(d, direction_distance(d1, -d2, sym))
    return d


def alpha_score(
    directions: torch.Tensor, weights: torch.Tensor | None, sym: str = "C1", convention: str = "paper"
) -> torch.Tensor:
    """Precision alpha (rad) of each particle from its directions (B, xi, 3) and weights
    (B, xi) (None: equal weights). Paper: pairs n != n'; xmipp: all ordered pairs."""
    _check(convention)
    b, xi, _ = directions.shape
    w = (
        torch.ones(b, xi, dtype=directions.dtype, device=directions.device)
        if weights is None
        else weights.to(directions.dtype)
    )
    d = pair_distance(directions[:, :, None, :], directions[:, None, :, :], sym, convention)  # (B, xi, xi)
    ww = w[:, :, None] * w[:, None, :]
    if convention == "paper":
        ww = ww * (1 - torch.eye(xi, dtype=ww.dtype, device=ww.device))
    return (ww * d).sum((1, 2)) / ww.sum((1, 2))


def chi_score(
    assigned: torch.Tensor,
    directions: torch.Tensor,
    weights: torch.Tensor | None,
    sym: str = "C1",
    convention: str = "paper",
) -> torch.Tensor:
    """Accuracy chi (rad): weighted mean distance from each particle's assigned direction
    (B, 3) to its directions (B, xi, 3), weights (B, xi) or None (equal)."""
    _check(convention)
    b, xi, _ = directions.shape
    w = (
        torch.ones(b, xi, dtype=directions.dtype, device=directions.device)
        if weights is None
        else weights.to(directions.dtype)
    )
    d = pair_distance(assigned[:, None, :].to(directions.dtype), directions, sym, convention)
    return (w * d).sum(1) / w.sum(1)


def noise_alpha(xi: int, sym: str, draws: int = 500, generator: torch.Generator | None = None) -> float:
    """Paper noise reference: mean alpha (equal weights, n != n') of ``draws`` sets of xi
    directions uniform in the asymmetric unit."""
    d = random_directions_in_asu(draws * xi, sym, generator=generator).reshape(draws, xi, 3)
    return float(alpha_score(d, None, sym, "paper").mean())


def noise_chi(assigned: torch.Tensor, random_directions: torch.Tensor, sym: str) -> torch.Tensor:
    """Paper noise reference per particle: mean chi (equal weights) between the assigned
    direction (B, 3) and ``random_directions`` (M * xi, 3), the directions of M draws of xi
    uniform directions in the asymmetric unit, drawn once per run and shared by all
    particles (so each particle's value depends on nothing but its own direction), (B,)."""
    r = random_directions.to(device=assigned.device, dtype=assigned.dtype)
    out = []
    for start in range(0, assigned.shape[0], 256):
        a = assigned[start : start + 256]
        out.append(pair_distance(a[:, None, :], r[None], sym, "paper").mean(1))
    return torch.cat(out) if out else assigned.new_zeros(0)


def xmipp_noise(
    gallery_directions: torch.Tensor, xi: int, sym: str, trials: int = 500, generator: torch.Generator | None = None
) -> float:
    """Xmipp's shared noise value (calc_sumw2): per trial xi distinct gallery directions,
    the unweighted sum of folded distances over all ordered pairs; the total over trials is
    divided by trials * (xi - 1)^2."""
    g = gallery_directions.shape[0]
    if g < xi:
        raise ValueError("the gallery has fewer directions than xi; use a finer angular sampling")
    idx = torch.stack([torch.randperm(g, generator=generator)[:xi] for _ in range(trials)])
    d = gallery_directions.to(torch.float64)[idx]  # (trials, xi, 3)
    dist = pair_distance(d[:, :, None, :], d[:, None, :, :], sym, "xmipp")
    return float(dist.sum() / (trials * (xi - 1) ** 2))


def quality_score(value: torch.Tensor, noise, good: torch.Tensor) -> torch.Tensor:
    """q = (value - noise) / (good - noise), not clipped; NaN where good == noise."""
    den = good - noise
    safe = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    return torch.where(den.abs() > 1e-12, (value - noise) / safe, torch.full_like(den, math.nan))


def passes(q: torch.Tensor, threshold: float, convention: str = "paper") -> torch.Tensor:
    """Paper: q >= threshold (inclusive); xmipp: q > threshold. NaN fails."""
    _check(convention)
    return q > threshold if convention == "xmipp" else q >= threshold
