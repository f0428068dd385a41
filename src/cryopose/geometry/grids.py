"""Orientation grids: viewing directions and poses restricted to the asymmetric unit, and
local grids of rotations about the identity.

A viewing direction d (unit 3-vector, map coordinates) is the projection direction
A^T e_z of pose A, i.e. (cos rot sin tilt, sin rot sin tilt, cos tilt). Directions d and S d
are equivalent for every S of ``direction_symmetry_matrices(sym)`` (the proper subgroup
for chiral groups). d and -d are NOT equivalent (a projection and its mirror image differ).

The asymmetric unit (ASU) is the Dirichlet domain of a fixed generic reference direction
``REFERENCE_DIRECTION``: d is in the ASU when, of all members S d of its orbit, d itself is
the closest to the reference. The ASU images under the group tile the sphere exactly once.

Local grids (``local_rotation_grid``): rotations exp([v]) whose rotation vectors v lie on a
cubic lattice about 0, cut to a ball (every rotation within the radius of the identity on
SO(3)) or kept whole (a cube); a pose A's neighbourhood is then {dR A} or {A dR}.
Angles: degrees for ``step_deg`` and ``max_angle_deg``, radians everywhere else.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from cryopose.geometry.distances import symmetry_mates
from cryopose.geometry.rotations import axis_angle_to_matrix, euler_to_matrix, rotation_angle, viewing_direction
from cryopose.geometry.symmetry import direction_symmetry_matrices, symmetry_matrices

__all__ = [
    "REFERENCE_DIRECTION",
    "fibonacci_directions",
    "asymmetric_unit_mask",
    "canonical_direction",
    "sample_directions",
    "sample_rotations",
    "sample_rotations_near_identity",
    "local_rotation_grid",
    "random_directions_in_asu",
    "directions_to_euler",
    "fibonacci_count",
    "poses_in_asymmetric_unit",
]

# Generic: on no rotation axis of any RELION group (Cn, Dn, T, O, I1-I4 and their
# improper variants); the closest axis is several degrees away.
REFERENCE_DIRECTION = (0.1, 0.2, 0.97)

# Mean nearest-neighbour angle of n Fibonacci points is 3.40 / sqrt(n) rad (measured).
_FIB_SPACING = 3.40


def _reference(dtype: torch.dtype, device) -> torch.Tensor:
    r = torch.tensor(REFERENCE_DIRECTION, dtype=dtype, device=device)
    return r / r.norm()


def fibonacci_count(step_deg: float) -> int:
    """Number of Fibonacci points on the whole sphere with mean nearest-neighbour angle ~ step."""
    step = math.radians(step_deg)
    return max(1, round((_FIB_SPACING / step) ** 2))


def fibonacci_directions(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """n near-uniform unit vectors on the sphere (Fibonacci lattice), shape (n, 3)."""
    i = torch.arange(n, dtype=torch.float64)
    z = 1 - (2 * i + 1) / n
    phi = math.pi * (3 - math.sqrt(5)) * i  # golden angle
    r = torch.sqrt((1 - z * z).clamp_min(0))
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    return d.to(dtype=dtype, device=device)


def _orbit_choice(directions: torch.Tensor, sym: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the group element S maximising (S d) . ref, the operators S), batched."""
    ops = direction_symmetry_matrices(sym, dtype=directions.dtype, device=directions.device)
    ref = _reference(directions.dtype, directions.device)
    # (S d) . ref = d . (S^T ref)
    targets = ops.transpose(-1, -2) @ ref  # (K, 3)
    scores = directions @ targets.T  # (..., K)
    # ties (points on the ASU boundary, e.g. on an axis) go to the identity
    eps = 1e-9 if directions.dtype == torch.float64 else 1e-5
    scores[..., 0] += eps * directions.norm(dim=-1)
    return scores.argmax(dim=-1), ops


def asymmetric_unit_mask(directions: torch.Tensor, sym: str) -> torch.Tensor:
    """True where a direction (..., 3) is the canonical member of its orbit, shape (...).

    Points on the boundary of the ASU (within rounding) count as inside.
    """
    best, _ = _orbit_choice(directions, sym)
    return best == 0  # identity is first


def canonical_direction(directions: torch.Tensor, sym: str) -> torch.Tensor:
    """Map each direction (..., 3) to its equivalent in the asymmetric unit, shape (..., 3)."""
    best, ops = _orbit_choice(directions, sym)
    return (ops[best] @ directions.unsqueeze(-1)).squeeze(-1)


def _tidy_orbits(asu: torch.Tensor, sym: str, min_angle: float) -> torch.Tensor:
    """Make the orbits of the ASU points (n, 3) at least ``min_angle`` (rad) apart.

    A point whose own images crowd it (it lies near a rotation axis) is moved onto that
    axis; two points whose orbits come too close (across the ASU boundary) are merged into
    their midpoint. Returns canonical directions.
    """
    ops = direction_symmetry_matrices(sym, dtype=torch.float64)
    if ops.shape[0] == 1 or asu.shape[0] == 0:
        return asu
    s = ops.numpy()
    pts = asu.to(torch.float64).cpu().numpy().copy()
    chord = 2 * math.sin(min_angle / 2)
    # 1. near an axis: snap onto the axis of the crowding element
    axes = np.linalg.svd(s[1:] - np.eye(3))[2][:, 2]  # null vector of S - I: the axis
    img = np.einsum("kij,nj->nki", s[1:], pts)  # (n, K-1, 3)
    self_dist = np.linalg.norm(img - pts[:, None], axis=-1)
    for i in np.nonzero((self_dist < chord).any(axis=1))[0].tolist():
        k = int(self_dist[i].argmin())
        ax = axes[k] * np.sign(axes[k] @ pts[i])
        pts[i] = ax
    # 2. orbits of different points too close: merge pairs greedily
    keep = np.ones(len(pts), dtype=bool)
    images = np.einsum("kij,nj->kni", s, pts).reshape(-1, 3)
    owner = np.tile(np.arange(len(pts)), s.shape[0])
    tree = cKDTree(images)
    for i, hits in enumerate(tree.query_ball_point(pts, chord)):
        if not keep[i]:
            continue
        for h in hits:
            j = owner[h]
            if j != i and keep[j]:
                mid = pts[i] + images[h]
                pts[i] = mid / np.linalg.norm(mid)
                keep[j] = False
    pts = pts[keep]
    # 3. axis ends left far from every point (the lattice can miss a pole): add them
    ends = np.concatenate([axes, -axes])
    for a in ends:
        images = np.einsum("kij,nj->kni", s, pts).reshape(-1, 3)
        if np.linalg.norm(images - a, axis=1).min() > 1.5 * chord:
            pts = np.concatenate([pts, a[None]])
    out = torch.as_tensor(pts, dtype=asu.dtype, device=asu.device)
    return canonical_direction(out, sym)


def sample_directions(
    step_deg: float,
    sym: str = "C1",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Viewing directions in the asymmetric unit of ``sym``, spacing ~ ``step_deg``, (m, 3).

    A Fibonacci sphere with mean nearest-neighbour angle ~ step, restricted to the ASU; ASU
    points within step/2 of a rotation axis are moved onto it and pairs whose orbits come
    within step/2 of each other are merged, and rotation axes with no point within
    ~3/4 step get one, so the distinct directions of the orbits
    cover the sphere once with spacing >= ~step/2. Points on an n-fold axis have only
    |G|/n distinct images.
    """
    if step_deg <= 0:
        raise ValueError("step_deg must be positive")
    d = fibonacci_directions(fibonacci_count(step_deg), dtype=torch.float64)
    asu = d[asymmetric_unit_mask(d, sym)]
    asu = _tidy_orbits(asu, sym, 0.5 * math.radians(step_deg))
    return asu.to(dtype=dtype, device=device)


def directions_to_euler(directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions (..., 3) -> RELION (rot, tilt) in rad; tilt in [0, pi], rot in (-pi, pi]."""
    x, y, z = directions.unbind(-1)
    rot = torch.atan2(y, x)
    tilt = torch.atan2(torch.sqrt(x * x + y * y), z)
    return rot, tilt


def _in_plane_stabiliser(directions: torch.Tensor, sym: str) -> torch.Tensor:
    """Number of group elements g whose pose action keeps each direction (n, 3) fixed.

    They act on a pose with that direction as in-plane rotations forming a cyclic group,
    so psi only needs [0, 2 pi / k). k = 1 for generic directions, n on an n-fold axis,
    and doubled when the group contains the inversion.
    """
    g = symmetry_matrices(sym, dtype=torch.float64)
    s = torch.where(torch.linalg.det(g)[:, None, None] > 0, g, -g)  # not deduplicated
    images = torch.einsum("gij,nj->ngi", s, directions.to(torch.float64))
    return ((images - directions[:, None].to(torch.float64)).norm(dim=-1) < 1e-9).sum(-1)


def sample_rotations(
    step_deg: float,
    sym: str = "C1",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pose matrices A = euler_to_matrix(rot, tilt, psi) covering SO(3) modulo ``sym``, (m, 3, 3).

    Directions from ``sample_directions`` times in-plane angles psi = j * 2 pi / n_psi,
    n_psi = round(360 / step_deg), psi in [0, 2 pi). Ordered direction-major (all psi of
    the first direction first). Where k group elements map a direction's poses onto
    in-plane rotations of each other (direction on a k-fold axis; k doubled by an
    inversion) psi is restricted to [0, 2 pi / k) with round(n_psi / k) values.
    """
    d = sample_directions(step_deg, sym, dtype=torch.float64)
    rot, tilt = directions_to_euler(d)
    n_psi_full = max(1, round(360.0 / step_deg))
    k = _in_plane_stabiliser(d, sym)
    counts = torch.clamp(torch.round(n_psi_full / k.double()).long(), min=1)
    which = torch.repeat_interleave(torch.arange(len(d)), counts)
    start = torch.cumsum(counts, 0) - counts
    j = torch.arange(int(counts.sum())) - start[which]
    psi = j.double() * (2 * math.pi / k[which].double()) / counts[which].double()
    a = euler_to_matrix(rot[which], tilt[which], psi)
    return a.to(dtype=dtype, device=device)


def sample_rotations_near_identity(
    step_deg: float,
    max_angle_deg: float = 180.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotations (m, 3, 3): the identity first, then those of ``sample_rotations(step_deg, "C1")``
    whose angle is at most ``max_angle_deg`` (all of them from 180 deg on)."""
    rots = sample_rotations(step_deg, "C1", dtype=torch.float64)
    if max_angle_deg < 180.0:
        rots = rots[torch.rad2deg(rotation_angle(rots)) <= max_angle_deg]
    rots = torch.cat([torch.eye(3, dtype=torch.float64)[None], rots])
    return rots.to(dtype=dtype, device=device)


def local_rotation_grid(
    max_angle: float,
    step: float,
    *,
    shape: str = "ball",
    as_matrices: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A local grid about the identity: rotation vectors (rad) v = step * (i, j, k) with
    integers |i|, |j|, |k| <= n = floor(max_angle / step).

    ``shape="ball"``: only those with |v| <= ``max_angle`` (every rotation within
    ``max_angle`` of the identity), ordered by |v| (the identity first; ties in lattice
    order); ``shape="cube"``: all (2 n + 1)^3 in lattice order (i slowest), the identity in
    the middle. Returns the rotations (K, 3, 3) (``as_matrices``) or the rotation vectors
    (K, 3), computed in float64 and then cast to ``dtype``.
    """
    if shape not in ("ball", "cube"):
        raise ValueError(f"unknown local grid shape {shape!r}; use ball or cube")
    n = int(math.floor(max_angle / step + 1e-9))
    axis = torch.arange(-n, n + 1, dtype=torch.float64) * step
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    if shape == "ball":
        grid = grid[grid.norm(dim=-1) <= max_angle + 1e-9]
        grid = grid[grid.norm(dim=-1).argsort(stable=True)]
    out = axis_angle_to_matrix(grid) if as_matrices else grid
    return out.to(dtype=dtype, device=device)


def random_directions_in_asu(
    n: int,
    sym: str = "C1",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n directions uniform on the asymmetric unit of ``sym``, shape (n, 3)."""
    v = torch.randn(n, 3, generator=generator, dtype=dtype, device=device)
    v = v / v.norm(dim=-1, keepdim=True)
    return canonical_direction(v, sym)


def poses_in_asymmetric_unit(rotations: torch.Tensor, sym: str) -> torch.Tensor:
    """Each pose A (n, 3, 3) replaced by the equivalent A R (R in the proper subgroup of
    ``sym``) whose viewing direction lies in the asymmetric unit; (n, 3, 3)."""
    candidates = symmetry_mates(rotations, sym, proper_only=True)  # (n, G, 3, 3)
    if candidates.shape[1] == 1:
        return rotations
    inside = asymmetric_unit_mask(viewing_direction(candidates).reshape(-1, 3), sym).reshape(candidates.shape[:2])
    first = torch.zeros(len(rotations), dtype=torch.long, device=rotations.device)
    pick = torch.where(inside.any(dim=1), inside.float().argmax(dim=1), first)
    return candidates[torch.arange(len(rotations), device=rotations.device), pick]
