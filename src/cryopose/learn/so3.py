"""Rotations for learning: the cryo-forum quaternion head, Bingham uncertainty, symmetry-
reduced quaternion distances, and a HEALPix-based grid on SO(3).

Quaternions are (w, x, y, z) as in :mod:`cryopose.geometry.rotations`; q and -q are the
same rotation. Pose matrices are RELION's A (map -> image coordinates). Angles in radians.

cryo-forum (seed 004, after Peretroukhin et al.'s QCQP layer): the network gives 10 numbers,
the upper triangle of L; A = L L^T is symmetric positive semi-definite 4x4, and the
predicted rotation is the eigenvector of A's smallest eigenvalue. With the eigenvalues
sorted ascending, lambda^A_1 <= ... <= lambda^A_4, the Bingham dispersions are
Lambda_i = lambda^A_1 - lambda^A_{5-i} (i = 1..3, all <= 0); Lambda_max = max_i Lambda_i =
lambda^A_1 - lambda^A_2 and trace(Lambda) = 3 lambda^A_1 - lambda^A_2 - lambda^A_3 -
lambda^A_4. Values nearer 0 mean a flatter distribution: more uncertainty.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from cryopose.geometry.rotations import euler_to_matrix

__all__ = [
    "symmetric_from_triangle",
    "symmetric_from_entries",
    "quaternion_from_symmetric",
    "bingham_dispersions",
    "quaternion_distance",
    "symmetric_quaternion_distance",
    "healpix_directions",
    "healpix_rotations",
    "grid_spacing",
]

_TRIU = torch.triu_indices(4, 4)


def symmetric_from_triangle(v: torch.Tensor) -> torch.Tensor:
    """10 numbers per row (..., 10) -> A = L L^T (..., 4, 4), L upper triangular from them."""
    L = v.new_zeros(*v.shape[:-1], 4, 4)
    L[..., _TRIU[0], _TRIU[1]] = v
    return L @ L.transpose(-1, -2)


def symmetric_from_entries(v: torch.Tensor) -> torch.Tensor:
    """10 numbers per row (..., 10) -> the symmetric A (..., 4, 4) with them as its upper
    triangle (row-major), the lower one mirrored: Peretroukhin et al.'s parameterisation, in
    which -4 q q^T, whose smallest eigenvector is q, is linear in the entries of q's matrix."""
    A = v.new_zeros(*v.shape[:-1], 4, 4)
    A[..., _TRIU[0], _TRIU[1]] = v
    A[..., _TRIU[1], _TRIU[0]] = v
    return A


def quaternion_from_symmetric(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit quaternion (..., 4) = eigenvector of A's smallest eigenvalue with w >= 0,
    eigenvalues ascending (..., 4)). Differentiable (``torch.linalg.eigh``) where the two
    smallest eigenvalues differ."""
    values, vectors = torch.linalg.eigh(A)
    q = vectors[..., :, 0]
    q = torch.where(q[..., :1] < 0, -q, q)
    return q, values


def bingham_dispersions(eigenvalues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda (..., 3), Lambda_max (...), trace(Lambda) (...)) from A's ascending eigenvalues:
    Lambda_i = lambda_1 - lambda_{5-i} (module docstring)."""
    lam = eigenvalues
    dispersions = torch.stack([lam[..., 0] - lam[..., 3], lam[..., 0] - lam[..., 2], lam[..., 0] - lam[..., 1]], dim=-1)
    return dispersions, dispersions.amax(dim=-1), dispersions.sum(dim=-1)


def quaternion_distance(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Geodesic angle 2 arccos|<q, p>| (rad, in [0, pi]) between unit quaternions (broadcast).

    The dot product is clamped below 1 - 1e-7 so that the gradient stays finite at zero
    distance (a floor of 9e-4 rad, 0.05 deg)."""
    dot = (q * p).sum(-1).abs().clamp(max=1.0 - 1e-7)
    return 2.0 * torch.acos(dot)


def symmetric_quaternion_distance(q: torch.Tensor, mates: torch.Tensor) -> torch.Tensor:
    """min over the group of quaternion_distance(q (..., 4), mates (..., G, 4)) (rad); ``mates``
    the quaternions of :func:`cryopose.geometry.distances.symmetry_mates` of a pose."""
    return quaternion_distance(q.unsqueeze(-2), mates).amin(dim=-1)


# ---------------------------------------------------------------------- HEALPix grid on SO(3)
def _healpix_ring_angles(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) in rad of the 12 nside^2 HEALPix pixel centres, RING order (Gorski et al.
    2005, eqs. 4-9)."""
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    p = np.arange(npix, dtype=np.float64)
    theta = np.empty(npix)
    phi = np.empty(npix)
    north = p < ncap
    south = p >= npix - ncap
    belt = ~(north | south)
    # north polar cap
    ph = p[north] + 1
    i = np.floor(np.sqrt(ph / 2 - np.sqrt(np.floor(ph / 2)))) + 1
    j = ph - 2 * i * (i - 1)
    theta[north] = np.arccos(1 - i * i / (3.0 * nside * nside))
    phi[north] = math.pi / (2 * i) * (j - 0.5)
    # equatorial belt
    pp = p[belt] - ncap
    i = np.floor(pp / (4 * nside)) + nside
    j = pp % (4 * nside) + 1
    s = (i - nside + 1) % 2
    theta[belt] = np.arccos(4.0 / 3.0 - 2.0 * i / (3.0 * nside))
    phi[belt] = math.pi / (2 * nside) * (j - s / 2.0)
    # south polar cap
    ph = npix - p[south]
    i = np.floor(np.sqrt(ph / 2 - np.sqrt(np.floor(ph / 2)))) + 1
    j = 4 * i + 1 - (ph - 2 * i * (i - 1))
    theta[south] = np.arccos(-(1 - i * i / (3.0 * nside * nside)))
    phi[south] = math.pi / (2 * i) * (j - 0.5)
    return theta, phi


def healpix_directions(order: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unit vectors (12 * 4^order, 3) at the HEALPix pixel centres of nside = 2^order."""
    theta, phi = _healpix_ring_angles(2**order)
    d = np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], axis=-1)
    return torch.as_tensor(d, dtype=dtype)


@lru_cache(maxsize=8)
def _healpix_rotations(order: int) -> torch.Tensor:
    nside = 2**order
    theta, phi = _healpix_ring_angles(nside)
    n_psi = 6 * nside
    psi = (np.arange(n_psi) + 0.5) * 2 * math.pi / n_psi
    rot = np.repeat(phi, n_psi)
    tilt = np.repeat(theta, n_psi)
    psis = np.tile(psi, len(phi))
    t = torch.as_tensor
    return euler_to_matrix(t(rot), t(tilt), t(psis))


def healpix_rotations(
    order: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The SO(3) grid of Image2Sphere: HEALPix viewing directions of nside = 2^order as
    (rot, tilt), times 6 nside equally spaced psi; RELION pose matrices (72 * 8^order, 3, 3).
    Order 2 has 4,608 poses about 15 deg apart, order 3 36,864 about 7.5 deg apart."""
    if order < 0 or order > 5:
        raise ValueError("grid order must be 0..5")
    return _healpix_rotations(order).to(dtype=dtype, device=device)


def grid_spacing(order: int) -> float:
    """Typical spacing (rad) of the order's SO(3) grid: the cube root of its cell volume,
    (8 pi^2 / N)^(1/3) with N = 72 * 8^order (SO(3)'s volume in this metric is 8 pi^2)."""
    return (8 * math.pi**2 / (72 * 8**order)) ** (1 / 3)
