"""Rotations in RELION's conventions.

A particle's pose is the matrix A = (Rz(rot) Ry(tilt) Rz(psi))^T (RELION's
``Euler_angles2matrix``). A maps map coordinates (x, y, z) to image coordinates; the
projection samples V(A^T x). A^T equals scipy ``Rotation.from_euler('ZYZ', [rot, tilt, psi])``.
All angles here are in radians; all functions are batched over leading dimensions.
Quaternions are (w, x, y, z) with w >= 0 and represent the same matrix A.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "random_rotations",
    "super_fibonacci_rotations",
    "rotation_angle",
    "geodesic_distance",
    "viewing_direction",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "rotation_about_z",
]


def _rz(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*angle.shape, 3, 3)


def _ry(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*angle.shape, 3, 3)


def rotation_about_z(angle: torch.Tensor) -> torch.Tensor:
    """Matrix of a counter-clockwise rotation by ``angle`` (rad) about z, shape (..., 3, 3)."""
    return _rz(torch.as_tensor(angle))


def euler_to_matrix(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles (rad) -> pose matrices A, shape (..., 3, 3)."""
    rot, tilt, psi = torch.broadcast_tensors(torch.as_tensor(rot), torch.as_tensor(tilt), torch.as_tensor(psi))
    return (_rz(rot) @ _ry(tilt) @ _rz(psi)).transpose(-1, -2)


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Pose matrices A -> RELION Euler angles (rot, tilt, psi) in rad, shape (..., 3).

    tilt is in [0, pi]; rot and psi in (-pi, pi]. At tilt 0 or pi (gimbal lock) psi is set
    to 0 and rot carries the whole in-plane angle, as RELION's ``Euler_matrix2angles`` does.
    """
    a = matrix.transpose(-1, -2)  # Rz(rot) Ry(tilt) Rz(psi)
    cos_tilt = a[..., 2, 2].clamp(-1.0, 1.0)
    sin_tilt = torch.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    tilt = torch.atan2(sin_tilt, cos_tilt)
    regular = sin_tilt > 1e-6
    rot_r = torch.atan2(a[..., 1, 2], a[..., 0, 2])
    psi_r = torch.atan2(a[..., 2, 1], -a[..., 2, 0])
    # Gimbal lock: a = Rz(rot + psi) (tilt 0) or Rz(rot) Ry(pi) Rz(psi) = Rz(rot - psi) Ry(pi).
    rot_g = torch.atan2(a[..., 1, 0], a[..., 0, 0])
    rot_g = torch.where(cos_tilt > 0, rot_g, torch.atan2(-a[..., 1, 0], -a[..., 0, 0]))
    rot = torch.where(regular, rot_r, rot_g)
    psi = torch.where(regular, psi_r, torch.zeros_like(psi_r))
    return torch.stack([rot, tilt, psi], dim=-1)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices -> unit quaternions (w, x, y, z) with w >= 0, shape (..., 4)."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ],
        dim=-1,
    )
    choice = candidates.argmax(dim=-1, keepdim=True)
    t = candidates.gather(-1, choice).squeeze(-1).clamp_min(1e-12)
    s = 0.5 / torch.sqrt(t)
    q_w = torch.stack([t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    q_x = torch.stack([m[..., 2, 1] - m[..., 1, 2], t, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1)
    q_y = torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], t, m[..., 1, 2] + m[..., 2, 1]], -1)
    q_z = torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], t], -1)
    all_q = torch.stack([q_w, q_x, q_y, q_z], dim=-2)  # (..., 4 cases, 4 comps)
    idx = choice.unsqueeze(-1).expand(*choice.shape[:-1], 1, 4)
    q = all_q.gather(-2, idx).squeeze(-2) * s.unsqueeze(-1)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions (w, x, y, z), any norm > 0 -> rotation matrices, shape (..., 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (axis times angle in rad), shape (..., 3) -> matrices (..., 3, 3)."""
    angle = rotvec.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(half)/angle, finite at angle 0
    factor = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp_min(1e-12), 0.5 - angle**2 / 48)
    q = torch.cat([torch.cos(half), rotvec * factor], dim=-1)
    return quaternion_to_matrix(q)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices -> rotation vectors (axis times angle in rad, angle in [0, pi])."""
    q = matrix_to_quaternion(matrix)
    vec = q[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    factor = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-12), 2.0 + sin_half**2 / 3)
    return vec * factor


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n rotation matrices drawn uniformly (Haar measure) on SO(3), shape (n, 3, 3)."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    return quaternion_to_matrix(q)


def super_fibonacci_rotations(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """n rotations (n, 3, 3) spread evenly over SO(3) by the super-Fibonacci spiral (Alexa,
    CVPR 2022): point i = 0..n-1 of the quaternion spiral with s = i + 1/2,
    (sqrt(s/n) sin a, sqrt(s/n) cos a, sqrt(1 - s/n) sin b, sqrt(1 - s/n) cos b),
    a = 2 pi s / sqrt(2), b = 2 pi s / psi, psi the real root of x^4 = x + 4. A deterministic
    low-discrepancy sample of the Haar measure: averages over it converge like (log n) / n,
    not 1 / sqrt(n) as for random rotations."""
    psi = 1.533751168755204288118041  # the real root of x^4 = x + 4
    s = torch.arange(n, dtype=torch.float64) + 0.5
    t = s / n
    r, big_r = torch.sqrt(t), torch.sqrt(1 - t)
    a, b = 2 * math.pi * s / math.sqrt(2.0), 2 * math.pi * s / psi
    q = torch.stack([r * torch.sin(a), r * torch.cos(a), big_r * torch.sin(b), big_r * torch.cos(b)], dim=-1)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def rotation_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Angle (rad, in [0, pi]) of the rotation represented by each matrix."""
    trace = matrix[..., 0, 0] + matrix[..., 1, 1] + matrix[..., 2, 2]
    # atan2 form is accurate near 0 and pi, unlike acos((trace - 1) / 2)
    skew = torch.stack(
        [
            matrix[..., 2, 1] - matrix[..., 1, 2],
            matrix[..., 0, 2] - matrix[..., 2, 0],
            matrix[..., 1, 0] - matrix[..., 0, 1],
        ],
        dim=-1,
    )
    return torch.atan2(skew.norm(dim=-1) / 2, (trace - 1) / 2)


def geodesic_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic distance (rad) on SO(3) between rotation matrices a and b (broadcast)."""
    return rotation_angle(a.transpose(-1, -2) @ b)


def viewing_direction(matrix: torch.Tensor) -> torch.Tensor:
    """Projection direction of pose A in map coordinates: A^T e_z, the third row of A.

    Equals RELION's ``Euler_angles2direction(rot, tilt)``:
    (cos rot sin tilt, sin rot sin tilt, cos tilt).
    """
    return matrix[..., 2, :]
