"""The numerical rules of gold-standard local refinement (no files, no jobs).

Per iteration, each particle's pose is searched by :func:`cryopose.align.local_search.local_search`
with a schedule that follows the current resolution d (FSC 0.143 of the half maps, Å):

- the references are the half maps Wiener-filtered shell by shell with the gain their FSC
  gives, sqrt(2 FSC / (1 + FSC)) as in RELION (:func:`fsc_reference_weights`), and the
  comparison band, so their low-pass, is d;
- the rotation neighbourhood is a ball of ``sigma_angle`` on SO(3) (a cone that includes
  psi) with a first step of ``sigma_angle / 3``; steps halve level by level until the
  finest is at most :func:`angular_step_for_resolution` (d), the angle that moves a point
  at the edge of the particle (diameter D) by d / 16: degrees(d / (8 D)). So the finest
  step shrinks as the resolution improves;
- origins: a disc of ``max_shift`` Å with a first step of min(max_shift / 2, d / 4),
  halving with the angular step;
- both neighbourhoods are also hard bounds about the input pose (the prior): across all
  levels and iterations no pose moves farther than ``sigma_angle`` from its input pose,
  and no origin farther than ``max_shift`` from its input origin.

The likelihood score needs the noise power per shell: :func:`shell_noise_power` averages
the residual power that :func:`cryopose.align.scoring.residual_shell_power` measures per
particle at its current pose.
"""

from __future__ import annotations

import math

import torch

from cryopose.align.local_search import LocalSearchSettings

__all__ = ["fsc_reference_weights", "angular_step_for_resolution", "local_search_schedule", "shell_noise_power", "resolution_improved",
           "MAX_LEVELS"]

MAX_LEVELS = 6  # levels of one search at most (the first step / 32)


def fsc_reference_weights(fsc: torch.Tensor) -> torch.Tensor:
    """Wiener gain per shell (shells 0..N//2) of a half map from the FSC of the two halves,
    as RELION's gold-standard refinement regularises its references: the FSC of the
    combined map with the truth, C = sqrt(2 FSC / (1 + FSC)), taken as the ratio
    SNR / (1 + SNR) of the reference (FSC clamped to [0, 1]; 1 where the halves agree,
    0 where they do not)."""
    f = fsc.double().clamp(0, 1)
    return torch.sqrt(2 * f / (1 + f)).float()


def angular_step_for_resolution(resolution: float, diameter: float) -> float:
    """Finest angular step (deg) that resolution ``resolution`` Å needs for a particle of
    ``diameter`` Å: the rotation that moves a point at its edge by resolution / 16."""
    return math.degrees(resolution / (8.0 * diameter))


def local_search_schedule(
    resolution: float,
    diameter: float,
    sigma_angle: float,
    max_shift: float,
) -> LocalSearchSettings:
    """Local-search settings for one iteration at ``resolution`` Å (see the module docstring):
    particle ``diameter`` Å, rotation neighbourhood ``sigma_angle`` deg, origin
    neighbourhood ``max_shift`` Å (both also bounds about the prior)."""
    first = sigma_angle / 3.0
    finest = angular_step_for_resolution(resolution, diameter)
    levels = 1 if first <= finest else 1 + math.ceil(math.log2(first / finest) - 1e-9)
    levels = max(1, min(MAX_LEVELS, levels))
    shift_step = min(max_shift / 2.0, resolution / 4.0) if max_shift > 0 else 1.0
    return LocalSearchSettings(
        max_angle=sigma_angle,
        angle_step=first,
        max_shift=max_shift,
        shift_step=shift_step,
        levels=levels,
        keep=2,
        prior_angle=sigma_angle,
        prior_shift=max_shift,
    )


def shell_noise_power(power: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Noise power sigma^2 per shell (R+1,): the residual power ``power`` (M, R+1) of M
    particles summed, divided by M times the shell sizes ``sizes`` (R+1,) (coefficients
    per shell); shells without coefficients get the mean of the others."""
    total = power.double().sum(0)
    count = sizes.double() * power.shape[0]
    filled = count > 0
    out = torch.zeros_like(total)
    out[filled] = total[filled] / count[filled]
    if filled.any():
        out[~filled] = out[filled].mean()
    return out.float()


def resolution_improved(previous: float, current: float, tolerance: float = 0.01) -> bool:
    """Whether ``current`` Å is better than ``previous`` Å by more than ``tolerance`` of it."""
    if not math.isfinite(current):
        return False
    if not math.isfinite(previous):
        return True
    return current < previous * (1.0 - tolerance)
