"""Per-particle pose errors and their summaries, as CESPED defines them (Sanchez-Garcia et
al., seed 001, section 2.3). Angles in radians in, statistics in the unit given (the jobs
pass degrees); shifts in Å. Poses are RELION matrices A (``cryopose.geometry.rotations``).

- angular error (Eq. 4-5): the geodesic distance between predicted and true pose,
  minimised over the symmetry group (``geometry.distances.rotation_distance``; improper
  groups identify A with J A M).
- viewing-direction error: the angle between the projection directions A^T e_z, minimised
  over the group on its own (``direction_distance_matrices``).
- in-plane error: the twist about the image normal of P T'^T, T' the symmetry mate of the
  truth nearest to the prediction P (the one that gives the angular error): the rotation
  left after the minimal rotation that brings the true viewing direction onto the
  predicted one. 2 |atan2(q_z, q_w)| of its quaternion, in [0, pi].
- shift error: |predicted origin - true origin| (Å). Origins are not changed by symmetry.
- MAnE (Eq. 3): the mean angular error; wMAnE (Eq. 6): its mean weighted by conf_i, "the
  confidence in the ground-truth pose, measured as Relion's rlnMaxValueProbDistribution"
  (the truth's, not the predictor's; the issue says the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from cryopose.geometry.distances import direction_distance_matrices, nearest_symmetry_mate, rotation_distance
from cryopose.geometry.rotations import matrix_to_quaternion, super_fibonacci_rotations
from cryopose.geometry.symmetry import normalise_symmetry_name, symmetry_order

__all__ = [
    "PoseErrors",
    "pose_errors",
    "in_plane_angle",
    "error_statistics",
    "spearman_correlation",
    "confident_subset_statistics",
    "chance_error_quantile",
    "EXPECTED_RANDOM_ERROR_C1",
]

# Mean geodesic distance (rad) of a uniformly random rotation from a fixed one (C1):
# the angle has density (1 - cos t)/pi on [0, pi], mean pi/2 + 2/pi (126.5 deg).
EXPECTED_RANDOM_ERROR_C1 = math.pi / 2 + 2 / math.pi

# particles x group elements per batch of the symmetry minimisation (bounds memory: 9
# float64 per pair and the temporaries of the products)
_PAIRS_PER_BATCH = 1 << 20


@dataclass
class PoseErrors:
    """Per-particle errors, each (n,): angular, direction, in_plane in radians; shift in Å
    (None when no shifts were given)."""

    angular: torch.Tensor
    direction: torch.Tensor
    in_plane: torch.Tensor
    shift: torch.Tensor | None


def in_plane_angle(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """In-plane (twist) angle (rad, [0, pi]) between poses (..., 3, 3): the rotation about
    the image normal z in the swing-twist split of predicted @ true^T (no symmetry)."""
    q = matrix_to_quaternion(predicted @ true.transpose(-1, -2))
    return (2 * torch.atan2(q[..., 3], q[..., 0])).abs()


def pose_errors(
    predicted: torch.Tensor,
    true: torch.Tensor,
    sym: str = "C1",
    predicted_shifts: torch.Tensor | None = None,
    true_shifts: torch.Tensor | None = None,
) -> PoseErrors:
    """Errors of predicted poses (n, 3, 3) against true ones (n, 3, 3) under ``sym``, and
    of predicted origins (n, 2) Å against true ones when both are given (see module)."""
    if predicted.shape != true.shape:
        raise ValueError(f"predicted poses {tuple(predicted.shape)} and true poses {tuple(true.shape)} differ in shape")
    n = predicted.shape[0]
    step = max(1, _PAIRS_PER_BATCH // symmetry_order(sym))
    angular, direction, in_plane = [], [], []
    for lo in range(0, n, step):
        p, t = predicted[lo : lo + step], true[lo : lo + step]
        dist, mate = nearest_symmetry_mate(p, t, sym)
        angular.append(dist)
        in_plane.append(in_plane_angle(p, mate))
        direction.append(direction_distance_matrices(p, t, sym))
    empty = predicted.new_zeros(0)
    shift = None
    if predicted_shifts is not None and true_shifts is not None:
        shift = (predicted_shifts - true_shifts).norm(dim=-1)
    return PoseErrors(
        angular=torch.cat(angular) if angular else empty,
        direction=torch.cat(direction) if direction else empty,
        in_plane=torch.cat(in_plane) if in_plane else empty,
        shift=shift,
    )


def error_statistics(
    errors: torch.Tensor, weights: torch.Tensor | None = None, thresholds: Sequence[float] = ()
) -> dict:
    """Mean, median, weighted mean (``weights`` >= 0, None: all 1), RMS and the fraction of
    errors below each threshold (same unit as ``errors``), over the finite errors.
    NaN for an empty set. ``fraction_below`` is keyed by the threshold as text ("5")."""
    e = errors.double()
    ok = torch.isfinite(e)
    w = torch.ones_like(e) if weights is None else weights.double()
    e, w = e[ok], w[ok]
    nan = math.nan
    if e.numel() == 0:
        return {
            "n": 0,
            "mean": nan,
            "median": nan,
            "weighted_mean": nan,
            "rms": nan,
            "fraction_below": {f"{t:g}": nan for t in thresholds},
        }
    total = float(w.sum())
    return {
        "n": int(e.numel()),
        "mean": float(e.mean()),
        # the midpoint of the two middle values for an even count (numpy's median)
        "median": float(e.quantile(0.5)),
        "weighted_mean": float((w * e).sum() / total) if total > 0 else nan,
        "rms": float(torch.sqrt((e * e).mean())),
        "fraction_below": {f"{t:g}": float((e < t).double().mean()) for t in thresholds},
    }


@lru_cache(maxsize=16)
def _chance_errors(sym: str, n: int) -> torch.Tensor:
    """Sorted symmetry-reduced errors (rad) of n evenly spread predictions against n evenly
    spread truths: point i of a super-Fibonacci sample of SO(3) against point (i k) mod n,
    k odd near 0.618 n (a rank-1 lattice over the pairs; the truth matters for groups with
    mirrors, whose mates L_g T R_g are not all T g)."""
    poses = super_fibonacci_rotations(n)
    k = int(n * 0.6180339887498949) | 1
    while math.gcd(k, n) != 1:
        k += 2
    truths = poses[(torch.arange(n) * k) % n]
    per_batch = max(1, _PAIRS_PER_BATCH // symmetry_order(sym))
    errors = torch.cat(
        [rotation_distance(poses[i : i + per_batch], truths[i : i + per_batch], sym) for i in range(0, n, per_batch)]
    )
    return errors.sort().values


def chance_error_quantile(sym: str = "C1", quantile: float | Sequence[float] = 0.5, n: int | None = None):
    """The ``quantile`` (or quantiles) of the angular error (rad; geodesic, minimised over
    ``sym``) of uniformly random predictions against uniformly random truths: the error of
    an estimator that learned nothing. C1's median is the root of t - sin t = pi/2
    (132.35 deg; the error angle has density (1 - cos t)/pi); higher symmetry lowers it.
    Computed once per group on a deterministic quasi-uniform sample of ``n`` pairs
    (default 65,536, fewer for groups of more than 16 operators: within about 0.1 deg)."""
    sym = normalise_symmetry_name(sym)
    if n is None:
        n = min(65536, max(8192, 1 << ((_PAIRS_PER_BATCH // symmetry_order(sym)).bit_length() - 1)))
    errors = _chance_errors(sym, int(n))
    q = torch.as_tensor(quantile, dtype=torch.float64)
    values = errors.quantile(q.clamp(0.0, 1.0))
    return float(values) if values.ndim == 0 else [float(v) for v in values]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank (float64)."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    # runs of equal values: first and last position of each run
    new_run = torch.ones(n, dtype=torch.bool, device=x.device)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    n_runs = int(run_id[-1]) + 1
    sums = torch.zeros(n_runs, dtype=torch.float64, device=x.device).index_add_(0, run_id, positions)
    counts = torch.zeros(n_runs, dtype=torch.float64, device=x.device).index_add_(0, run_id, torch.ones_like(positions))
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (sums / counts)[run_id]
    return ranks


def spearman_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of x and y (n,) over the pairs where both are finite:
    the Pearson correlation of their ranks (ties get average ranks). NaN when fewer than
    two pairs or when either is constant."""
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok].double(), y[ok].double()
    if x.numel() < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def confident_subset_statistics(errors: torch.Tensor, confidence: torch.Tensor, fraction: float = 0.75) -> dict:
    """Median and mean error of the ``fraction`` of particles with the highest confidence
    (ceil(fraction * n) of those with a finite confidence and error; ties at the cut are
    broken by order), and how many that is."""
    ok = torch.isfinite(errors) & torch.isfinite(confidence)
    e, c = errors[ok].double(), confidence[ok].double()
    k = math.ceil(fraction * e.numel())
    if k == 0:
        return {"n": 0, "fraction": fraction, "median": math.nan, "mean": math.nan}
    top = torch.argsort(c, descending=True, stable=True)[:k]
    return {"n": int(k), "fraction": fraction, "median": float(e[top].quantile(0.5)), "mean": float(e[top].mean())}
