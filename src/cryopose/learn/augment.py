"""Augmentation of prepared particle images that keeps their poses exact.

RELION's model of a particle image (DESIGN.md): I(x) = P_A(x + o), the projection
P_A(x) = integral of V(A^T (x, z)) dz shifted by minus the origin o (x and o in px).

In-plane rotation by theta (``imaging.rotate.rotate_images``, I'(x) = I(R^T x) with
R = R(theta) the 2-D rotation, Rz its 3-D extension about z):
I'(x) = P_A(R^T x + o) = P_A(R^T (x + R o)) = P_{Rz A}(x + R o), because
A^T (R^T x', z) = A^T Rz^T (x', z). So

    A' = Rz(theta) A,    o' = R(theta) o    (psi' = psi - theta in RELION's angles).

A shift of the image content by t (px), I''(x) = I'(x - t), gives o'' = o' - t.
Origins here are in Å: o (Å) = o (px) * pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryopose.errors import UserError
from cryopose.geometry.rotations import rotation_about_z
from cryopose.imaging.rotate import rotate_images
from cryopose.imaging.shifts import shift_images

__all__ = [
    "AugmentSettings",
    "AugmentDraw",
    "draw_augmentation",
    "apply_augmentation",
    "rotate_in_plane",
    "augment_batch",
]


@dataclass
class AugmentSettings:
    """Random changes to training images.

    in_plane: rotate each image by an angle uniform in [0, 2 pi) (pose updated exactly).
    max_shift_angstrom: shift each image by a vector uniform in a disc of this radius (Å;
        origin updated exactly).
    noise_std: standard deviation of added white Gaussian noise (in units of the
        normalised background's standard deviation).
    contrast: multiply each image by a factor uniform in [1 - contrast, 1 + contrast].
    """

    in_plane: bool = True
    max_shift_angstrom: float = 0.0
    noise_std: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        if not (float(self.max_shift_angstrom) >= 0.0):
            raise UserError(
                f"maximum augmentation shift {self.max_shift_angstrom!r} Å is negative; give 0 or more",
                option="max-shift-augment",
            )
        if not (float(self.noise_std) >= 0.0):
            raise UserError(f"augmentation noise {self.noise_std!r} is negative; give 0 or more", option="noise_std")
        if not (0.0 <= float(self.contrast) < 1.0):
            raise UserError(
                f"augmentation contrast {self.contrast!r} is outside [0, 1); give a fraction below 1", option="contrast"
            )


@dataclass
class AugmentDraw:
    """The random numbers of one augmentation of n images of s x s px (CPU tensors).

    angles (n,) rad; shifts_angstrom (n, 2) content shift (x, y) in Å; contrast (n,)
    factors; noise (n, 1, s, s) already scaled by noise_std (or None).
    """

    angles: torch.Tensor
    shifts_angstrom: torch.Tensor
    contrast: torch.Tensor
    noise: torch.Tensor | None

    @staticmethod
    def cat(draws: list[AugmentDraw]) -> AugmentDraw:
        """The draws of several batches, one after the other."""
        noise = None if draws[0].noise is None else torch.cat([d.noise for d in draws if d.noise is not None])
        return AugmentDraw(
            angles=torch.cat([d.angles for d in draws]),
            shifts_angstrom=torch.cat([d.shifts_angstrom for d in draws]),
            contrast=torch.cat([d.contrast for d in draws]),
            noise=noise,
        )


def draw_augmentation(n: int, size: int, settings: AugmentSettings, generator: torch.Generator) -> AugmentDraw:
    """Draw the augmentation of n images of ``size`` px from ``generator`` (a CPU generator)."""
    f64 = torch.float64
    angles = 2 * math.pi * torch.rand(n, generator=generator, dtype=f64)
    if not settings.in_plane:
        angles = torch.zeros(n, dtype=f64)
    radius = settings.max_shift_angstrom * torch.sqrt(torch.rand(n, generator=generator, dtype=f64))
    phi = 2 * math.pi * torch.rand(n, generator=generator, dtype=f64)
    shifts = torch.stack([radius * torch.cos(phi), radius * torch.sin(phi)], dim=-1)
    contrast = 1.0 + settings.contrast * (2 * torch.rand(n, generator=generator, dtype=f64) - 1)
    noise = None
    if settings.noise_std > 0:
        noise = settings.noise_std * torch.randn(n, 1, size, size, generator=generator, dtype=torch.float32)
    return AugmentDraw(angles, shifts, contrast, noise)


def rotate_in_plane(
    images: torch.Tensor, rotations: torch.Tensor, origins: torch.Tensor, theta: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate images (n, 1, s, s) or (n, s, s) by ``theta`` rad (scalar or (n,)) about the box
    centre, with their poses: returns (images, Rz(theta) A, R(theta) o). Origins (n, 2) in
    any unit (Å or px); rotations (n, 3, 3) RELION matrices A."""
    n = images.shape[0]
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1).expand(n).to(images.device)
    rz = rotation_about_z(theta)  # (n, 3, 3) float64
    new_rot = (rz.to(rotations.device) @ rotations.to(torch.float64)).to(rotations.dtype)
    r2 = rz[:, :2, :2].to(origins.device)
    new_origin = (r2 @ origins.to(torch.float64)[..., None])[..., 0].to(origins.dtype)
    return rotate_images(images, theta), new_rot, new_origin


def apply_augmentation(
    images: torch.Tensor,
    rotations: torch.Tensor,
    origins_angstrom: torch.Tensor,
    pixel_size: float,
    draw: AugmentDraw,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a drawn augmentation to images (n, 1, s, s) at ``pixel_size`` Å/px, their poses
    (n, 3, 3) and origins (n, 2) Å: in-plane rotation, content shift, contrast, noise."""
    device = images.device
    images, rotations, origins = rotate_in_plane(images, rotations, origins_angstrom, draw.angles)
    shifts = draw.shifts_angstrom
    if bool((shifts != 0).any()):
        shifted = shift_images(images[:, 0], (shifts / pixel_size).to(device=device, dtype=images.dtype))
        images = shifted[:, None]
        origins = origins - shifts.to(origins)
    images = images * draw.contrast.to(device=device, dtype=images.dtype)[:, None, None, None]
    if draw.noise is not None:
        images = images + draw.noise.to(device)
    return images, rotations, origins


def augment_batch(
    images: torch.Tensor,
    rotations: torch.Tensor,
    origins_angstrom: torch.Tensor,
    pixel_size: float,
    settings: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomly augment images (n, 1, s, s) at ``pixel_size`` Å/px with their poses (n, 3, 3)
    and origins (n, 2) Å, drawing from the CPU ``generator``; returns the three updated."""
    draw = draw_augmentation(images.shape[0], images.shape[-1], settings, generator)
    return apply_augmentation(images, rotations, origins_angstrom, pixel_size, draw)
