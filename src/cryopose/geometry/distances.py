"""Symmetry-aware distances between poses and between viewing directions (radians).

Poses A and B are equivalent under symmetry ``sym`` when B = L_g A R_g for an element g
of the group (``pose_symmetry_operators``; ``symmetry_mates`` lists them): A R for rotations
R, J A M (J = diag(1,1,-1)) for mirrors/inversions M. For chiral groups (Cn, Dn, T, O, I...) this is the usual
min over R of d(a, b R). Viewing directions d (unit vectors A^T e_z) are equivalent to
S d for S in ``direction_symmetry_matrices``. All functions broadcast over leading dims.
"""

from __future__ import annotations

import torch

from cryopose.geometry.rotations import rotation_angle, viewing_direction
from cryopose.geometry.symmetry import direction_symmetry_matrices, pose_symmetry_operators, proper_symmetry_matrices

__all__ = [
    "symmetry_mates",
    "rotation_distance",
    "nearest_symmetry_mate",
    "direction_distance",
    "pairwise_direction_distance",
    "direction_distance_matrices",
    "angle_between",
]


def angle_between(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle (rad, in [0, pi]) between vectors u and v (..., 3), via atan2(|u x v|, u . v)."""
    u, v = torch.broadcast_tensors(u, v)
    return torch.atan2(torch.linalg.cross(u, v, dim=-1).norm(dim=-1), (u * v).sum(-1))


def symmetry_mates(rotations: torch.Tensor, sym: str, proper_only: bool = False) -> torch.Tensor:
    """Every pose equivalent to each pose A (..., 3, 3) under ``sym``, shape (..., G, 3, 3), in
    the group's order (A itself first): L_g A R_g for every g (``pose_symmetry_operators``; a
    rotation also for improper g). ``proper_only``: A R for the rotations R of the group only."""
    if proper_only:
        group = proper_symmetry_matrices(sym, dtype=rotations.dtype, device=rotations.device)
        return rotations.unsqueeze(-3) @ group
    left, right = pose_symmetry_operators(sym, dtype=rotations.dtype, device=rotations.device)
    return left @ rotations.unsqueeze(-3) @ right


def _mate_distances(a: torch.Tensor, b: torch.Tensor, sym: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles (..., G) between a and every mate L_g b R_g of b, the mates (..., G, 3, 3))."""
    mates = symmetry_mates(b, sym)
    return rotation_angle(a.unsqueeze(-3).transpose(-1, -2) @ mates), mates


def rotation_distance(a: torch.Tensor, b: torch.Tensor, sym: str = "C1") -> torch.Tensor:
    """Geodesic distance (rad) between poses a and b (..., 3, 3), minimised over ``sym``.

    min over g of geodesic_distance(a, L_g b R_g); for chiral groups min over R of
    geodesic_distance(a, b R). Shapes broadcast; result has the broadcast batch shape.
    """
    return _mate_distances(a, b, sym)[0].amin(dim=-1)


def nearest_symmetry_mate(a: torch.Tensor, b: torch.Tensor, sym: str = "C1") -> tuple[torch.Tensor, torch.Tensor]:
    """(``rotation_distance(a, b, sym)`` in rad, the mate L_g b R_g of b (..., 3, 3) that
    attains it): the pose equivalent to b under ``sym`` that is closest to a."""
    angles, mates = _mate_distances(a, b, sym)
    best = angles.argmin(dim=-1, keepdim=True)
    mates = mates.expand(*angles.shape, 3, 3)
    mate = mates.gather(-3, best[..., None, None].expand(*best.shape, 3, 3)).squeeze(-3)
    return angles.gather(-1, best).squeeze(-1), mate


def direction_distance(d1: torch.Tensor, d2: torch.Tensor, sym: str = "C1") -> torch.Tensor:
    """Angle (rad) between viewing directions d1 and d2 (..., 3), minimised over ``sym``:
    min over S of angle(d1, S d2). Shapes broadcast."""
    ops = direction_symmetry_matrices(sym, dtype=d2.dtype, device=d2.device)
    images = torch.einsum("kij,...j->...ki", ops, d2)  # (..., K, 3)
    d1e = d1.unsqueeze(-2)
    # the smallest angle has the largest dot (|S d2| = |d2|); then atan2 for accuracy
    best = (d1e * images).sum(-1).argmax(dim=-1, keepdim=True)  # (..., 1)
    images, d1e = torch.broadcast_tensors(images, d1e)
    idx = best.unsqueeze(-1).expand(*best.shape, 3)
    closest = images.gather(-2, idx).squeeze(-2)
    return angle_between(d1e[..., 0, :], closest)


def pairwise_direction_distance(d1: torch.Tensor, d2: torch.Tensor, sym: str = "C1") -> torch.Tensor:
    """All symmetry-minimised angles (rad) between d1 (n, 3) and d2 (m, 3), shape (n, m)."""
    ops = direction_symmetry_matrices(sym, dtype=d2.dtype, device=d2.device)
    images = torch.einsum("kij,mj->kmi", ops, d2)  # (K, m, 3)
    dots = torch.einsum("ni,kmi->nmk", d1, images)  # (n, m, K)
    best = dots.argmax(dim=-1)  # (n, m)
    m_idx = torch.arange(d2.shape[0], device=d2.device).expand_as(best)
    closest = images[best, m_idx]  # (n, m, 3)
    return angle_between(d1.unsqueeze(1), closest)


def direction_distance_matrices(a: torch.Tensor, b: torch.Tensor, sym: str = "C1") -> torch.Tensor:
    """Symmetry-minimised angle (rad) between the viewing directions of poses a, b (..., 3, 3)."""
    return direction_distance(viewing_direction(a), viewing_direction(b), sym)
