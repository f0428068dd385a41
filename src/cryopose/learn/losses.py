"""Training losses of the pose estimators (angles in radians, origins in pixels).

- cryo-forum (seed 004, eq. 4): beta1 (d(q_i) + d(q_j)) + beta2 |d(q^_i, q^_j) - d(q_i, q_j)|
  over pairs (i, j), d the geodesic quaternion distance 2 arccos|<q, p>| minimised over the
  symmetry group, with the curriculum beta1 = (i/l)^0.5 / 2, beta2 = 1 - (i/l)^0.5 at
  training progress i/l; pairs drawn at random or stratified by their true distance.
- SO(3) grid (CESPED eq. 11): cross-entropy against labels spread uniformly over the grid
  points nearest to the symmetry mates of the true pose, weighted by the particle's
  confidence.
- Origins: smooth-L1 between predicted and true origins (px, 0.1 px knee).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cryopose.geometry.distances import symmetry_mates
from cryopose.geometry.rotations import matrix_to_quaternion, quaternion_to_matrix
from cryopose.learn.so3 import quaternion_distance, symmetric_quaternion_distance

__all__ = [
    "curriculum_weights",
    "pair_indices",
    "pairwise_distances",
    "forum_loss",
    "grid_targets",
    "grid_cross_entropy",
    "origin_loss",
]


def curriculum_weights(progress: float) -> tuple[float, float]:
    """(beta1, beta2) at training progress in [0, 1]: ((p)^0.5 / 2, 1 - (p)^0.5)."""
    root = math.sqrt(min(max(progress, 0.0), 1.0))
    return root / 2, 1 - root


def pairwise_distances(q: torch.Tensor, i: torch.Tensor, j: torch.Tensor, sym: str) -> torch.Tensor:
    """Symmetry-reduced geodesic distance (rad) between poses q[i] and q[j] (quaternions)."""
    if sym.upper() == "C1":
        return quaternion_distance(q[i], q[j])
    mates = matrix_to_quaternion(symmetry_mates(quaternion_to_matrix(q[j]), sym))
    return symmetric_quaternion_distance(q[i], mates)


def pair_indices(
    true_quaternions: torch.Tensor, sym: str, scheme: str, generator: torch.Generator, bins: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) within a batch of n: ``"random"`` pairs each particle with a random other
    one (n pairs); ``"stratified"`` draws 8n candidate pairs and keeps the same number from
    each of ``bins`` bins of true distance over [0, pi] (n / bins, or all a sparser bin
    holds), so near and far pairs weigh alike."""
    n = true_quaternions.shape[0]
    device = true_quaternions.device
    if scheme == "random":
        i = torch.arange(n, device=device)
        j = (i + torch.randint(1, max(n, 2), (n,), generator=generator).to(device)) % n
        return i, j
    if scheme != "stratified":
        raise ValueError(f"unknown pair sampling {scheme!r}; use random or stratified")
    i = torch.randint(0, n, (8 * n,), generator=generator).to(device)
    j = torch.randint(0, n, (8 * n,), generator=generator).to(device)
    keep = i != j
    i, j = i[keep], j[keep]
    with torch.no_grad():
        d = pairwise_distances(true_quaternions, i, j, sym)
    which = (d / math.pi * bins).long().clamp(0, bins - 1)
    per_bin = max(1, n // bins)
    chosen = [torch.nonzero(which == b).flatten()[:per_bin] for b in range(bins)]
    picked = torch.cat(chosen)
    return i[picked], j[picked]


def forum_loss(
    predicted: torch.Tensor,
    true_rotations: torch.Tensor,
    sym: str,
    progress: float,
    pairs: tuple[torch.Tensor, torch.Tensor],
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """cryo-forum's loss for predicted quaternions (n, 4) against true poses (n, 3, 3):
    {"loss", "geodesic" (mean, rad), "siamese" (mean, rad)}; ``weights`` (n,) weigh particles."""
    mates = matrix_to_quaternion(symmetry_mates(true_rotations, sym))
    geodesic = symmetric_quaternion_distance(predicted, mates)
    w = torch.ones_like(geodesic) if weights is None else weights
    i, j = pairs
    true_q = matrix_to_quaternion(true_rotations)
    with torch.no_grad():
        d_true = pairwise_distances(true_q, i, j, sym)
    d_pred = pairwise_distances(predicted, i, j, sym)
    siamese = ((d_pred - d_true).abs() * (w[i] * w[j]).sqrt()).sum() / (w[i] * w[j]).sqrt().sum().clamp_min(1e-12)
    geo = (geodesic * w).sum() / w.sum().clamp_min(1e-12)
    beta1, beta2 = curriculum_weights(progress)
    return {"loss": beta1 * 2 * geo + beta2 * siamese, "geodesic": geo.detach(), "siamese": siamese.detach()}


def grid_targets(true_rotations: torch.Tensor, grid_quaternions: torch.Tensor, sym: str) -> torch.Tensor:
    """Label distributions (n, N) over the grid: uniform over the grid points nearest to the
    symmetry mates of each true pose (a point shared by two mates counts once)."""
    mates = matrix_to_quaternion(symmetry_mates(true_rotations, sym))  # (n, G, 4)
    nearest = (mates @ grid_quaternions.T).abs().argmax(dim=-1)  # (n, G): max |cos(angle/2)|
    targets = torch.zeros(
        true_rotations.shape[0], grid_quaternions.shape[0], dtype=grid_quaternions.dtype, device=grid_quaternions.device
    )
    targets.scatter_(1, nearest, 1.0)
    return targets / targets.sum(dim=1, keepdim=True)


def grid_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over particles (weighted) of -sum targets * log softmax(logits)."""
    per = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum().clamp_min(1e-12)


def origin_loss(predicted_px: torch.Tensor, true_px: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (0.1 px knee: L1 for all but tiny errors; origins are often under a pixel
    of the prepared image) between predicted and true origins (n, 2), summed over x and y,
    mean over particles."""
    return F.smooth_l1_loss(predicted_px, true_px, beta=0.1, reduction="sum") / max(predicted_px.shape[0], 1)
