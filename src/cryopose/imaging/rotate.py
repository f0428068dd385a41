"""In-plane rotation of images about the box centre N//2, by Fourier shears.

``rotate_images(images, angles)`` gives out(x) = in(R(-theta) x), with x = (x, y) pixel
coordinates about N//2 and R(theta) = [[cos, -sin], [sin, cos]] (the xy block of
``geometry.rotations.rotation_about_z``): image content at x moves to R(theta) x.

A rotation is a multiple of 90 degrees (exact pixel permutation) times a residual in
[-45, 45] degrees done as three shears (x, y, x; Unser et al. 1995), each a 1-D
sub-pixel shift of every row or column by a Fourier phase ramp. This is exact for
band-limited images within about 0.45 N of the centre; the corners wrap periodically.
"""

from __future__ import annotations

import math

import torch

__all__ = ["rotate_images"]


def _shear(images: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
    """Shift each line of images (B, N, N) along ``axis`` (-1: x, -2: y) by ``factor`` (B,)
    times its coordinate on the other axis (px about N//2): out(x, y) = in(x - f y, y) for x."""
    n = images.shape[-1]
    other = torch.arange(n, device=images.device, dtype=images.dtype) - n // 2
    k = torch.fft.rfftfreq(n, device=images.device, dtype=images.dtype)
    shift = factor[:, None] * other[None]  # (B, N): per line of the other axis
    ramp = torch.polar(torch.ones_like(shift[..., None] * k), -2 * math.pi * shift[..., None] * k)  # (B, N, K)
    if axis == -2:
        images = images.transpose(-1, -2)
    out = torch.fft.irfft(torch.fft.rfft(images, dim=-1) * ramp, n=n, dim=-1)
    return out.transpose(-1, -2) if axis == -2 else out


def _rotate_quarter_turns(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate images (B, N, N) by ``turns`` (B,) x 90 degrees about N//2 (periodic, exact)."""
    n = images.shape[-1]
    h = n // 2
    idx = torch.arange(n, device=images.device)
    flipped = (2 * h - idx) % n  # coordinate u -> -u about N//2
    out = images
    r90 = images.transpose(-1, -2)[..., flipped]  # out(x, y) = in(y, -x): +90 degrees
    r180 = images[..., flipped, :][..., flipped]
    r270 = images.transpose(-1, -2)[..., flipped, :]  # out(x, y) = in(-y, x)
    for k, rotated in ((1, r90), (2, r180), (3, r270)):
        out = torch.where((turns == k)[:, None, None], rotated, out)
    return out


def rotate_images(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate images (..., N, N) about the box centre N//2 by ``angles`` (rad; a scalar, or
    of the leading shape or a prefix of it, e.g. (B,) for (B, C, N, N)):
    out(x) = in(R(-theta) x), content moves from x to R(theta) x."""
    shape = images.shape
    n = shape[-1]
    flat = images.reshape(-1, n, n)
    b = flat.shape[0]
    dtype = flat.dtype if flat.is_floating_point() else torch.float32
    flat = flat.to(dtype)
    lead = shape[:-2]
    theta = torch.as_tensor(angles, dtype=torch.float64, device=flat.device)
    theta = theta.reshape(*theta.shape, *([1] * (len(lead) - theta.ndim))).expand(lead).reshape(b)
    turns = torch.round(theta / (math.pi / 2))
    residual = theta - turns * (math.pi / 2)  # in [-pi/4, pi/4]
    out = _rotate_quarter_turns(flat, torch.remainder(turns, 4).long())
    a = (-torch.tan(residual / 2)).to(dtype)
    s = torch.sin(residual).to(dtype)
    # R(theta) = Sx(a) Sy(s) Sx(a), Sx(a) = [[1, a], [0, 1]], Sy(s) = [[1, 0], [s, 1]]
    out = _shear(out, a, -1)
    out = _shear(out, s, -2)
    out = _shear(out, a, -1)
    return out.reshape(shape)
