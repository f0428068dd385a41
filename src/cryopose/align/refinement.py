"""The numerical rules of gold-standard local refinement (no files, no jobs).

Per iteration, each particle's pose is searched by :func:`cryopose.align.local_search.local_search`
with a schedule that follows the current resolution d (FSC 0.143 of the half maps, Å):

- the references are the half maps Wiener-filtered shell by shell with the gain their FSC
  gives, sqrt(2 FSC / (1 + FSC)) as in RELION (:func:`fsc_reference_weights`), and the
  comparison band, so their low-pass, is d;
- the rotation neighbourhood is a ball of ``search_angle`` on SO(3) about the current pose
  (a cone that includes psi) with a first step of ``search_angle / 3``; steps halve level
  by level until the finest is at most :func:`angular_step_for_resolution` (d), the angle
  that moves a point at the edge of the particle (diameter D) by d / 16: degrees(d / (8 D)).
  So the finest step shrinks as the resolution improves;
- the input pose is a prior: a Gaussian of ``sigma_angle`` on the angle from it (RELION's
  ``--sigma_ang``; the neighbourhood moves with the pose, so a particle can travel farther
  than ``sigma_angle`` over the iterations when its images say so), or, with
  ``prior="wall"``, a hard bound: no pose ever moves farther than ``sigma_angle`` from its
  input pose;
- origins: a disc of ``max_shift`` Å with a first step of min(max_shift / 2, d / 4),
  halving with the angular step; also a hard bound about the input origin.

The first band: a reference that was low-passed (the starting map at ``ini_high``, or half
maps that hold nothing past some frequency) is compared only within the band it holds
(:func:`map_content_resolution`, :func:`reference_resolution`), whatever the FSC of its
halves; two identical half maps (FSC 1 everywhere) are one reference and are compared up to
``ini_high`` like one.

Global passes (``refine --global``) use the engine of
:mod:`cryopose.align.projection_matching` at the band of the current references
(:func:`global_match_settings`).

The iterations go on while the resolution improves or the poses still move
(:func:`resolution_improved`, :func:`poses_moving`). A refinement whose result is no better
than chance says so (:func:`chance_reasons`): its final resolution is no better than
``ini_high``, or no better than that of half maps reconstructed from the same particles at
random poses.

The likelihood score needs the noise power per shell: :func:`shell_noise_power` averages
the residual power that :func:`cryopose.align.scoring.residual_shell_power` measures per
particle at its current pose.
"""

from __future__ import annotations

import math

import torch

from cryopose.align.local_search import LocalSearchSettings
from cryopose.align.projection_matching import MatchSettings
from cryopose.imaging.fourier import radial_shell_index

__all__ = [
    "fsc_reference_weights",
    "angular_step_for_resolution",
    "local_search_schedule",
    "shell_noise_power",
    "resolution_improved",
    "poses_moving",
    "map_content_resolution",
    "halves_identical",
    "reference_resolution",
    "comparison_band",
    "global_match_settings",
    "chance_reasons",
    "MAX_LEVELS",
    "PRIORS",
    "CONTENT_POWER",
    "CHANCE_MARGIN",
]

MAX_LEVELS = 6  # levels of one search at most (the first step / 32)
PRIORS = ("gaussian", "wall")
# A shell holds a map's content while its mean power is above this fraction of the strongest
# shell's: maps at full resolution keep 1e-6..1e-5 at Nyquist, a low-passed map drops to the
# float rounding floor (~1e-14) past its cut-off.
CONTENT_POWER = 1e-9
# A final resolution must be finer than this fraction of the random-pose resolution to count as found.
CHANCE_MARGIN = 0.8


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
    search_angle: float | None = None,
    prior: str = "gaussian",
) -> LocalSearchSettings:
    """Local-search settings for one iteration at ``resolution`` Å (see the module docstring):
    particle ``diameter`` Å, rotation neighbourhood ``search_angle`` deg (default
    ``sigma_angle``) about the current pose, ``prior`` "gaussian" (sigma ``sigma_angle`` deg
    about the prior pose) or "wall" (at most ``sigma_angle`` deg from it), origin
    neighbourhood ``max_shift`` Å (also a bound about the prior origin)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; use one of {PRIORS}")
    search_angle = sigma_angle if search_angle is None else search_angle
    first = search_angle / 3.0
    finest = angular_step_for_resolution(resolution, diameter)
    levels = 1 if first <= finest else 1 + math.ceil(math.log2(first / finest) - 1e-9)
    levels = max(1, min(MAX_LEVELS, levels))
    shift_step = min(max_shift / 2.0, resolution / 4.0) if max_shift > 0 else 1.0
    return LocalSearchSettings(
        max_angle=search_angle,
        angle_step=first,
        max_shift=max_shift,
        shift_step=shift_step,
        levels=levels,
        keep=2,
        prior_angle=sigma_angle if prior == "wall" else None,
        prior_sigma=sigma_angle if prior == "gaussian" else None,
        prior_shift=max_shift,
    )


def map_content_resolution(volume: torch.Tensor, pixel_size: float, relative_power: float = CONTENT_POWER) -> float:
    """The finest resolution (Å) a map (N, N, N) holds anything at: box * pixel_size / s for
    the highest shell s = round(|k|) whose mean power is above ``relative_power`` times the
    strongest shell's (shells >= 1); Nyquist for a map with content in every shell."""
    v = torch.as_tensor(volume).double()
    n = v.shape[-1]
    shell = radial_shell_index(n, 3, device=v.device).reshape(-1)
    nsh = n // 2 + 1
    keep = shell < nsh
    power = torch.zeros(nsh, dtype=torch.float64, device=v.device).index_add_(
        0, shell[keep], (torch.fft.rfftn(v).abs() ** 2).reshape(-1)[keep]
    )
    count = torch.zeros(nsh, dtype=torch.float64, device=v.device).index_add_(
        0, shell[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=v.device)
    )
    mean = (power / count.clamp_min(1))[1:]
    if float(mean.max()) <= 0:
        return math.inf
    held = torch.nonzero(mean > relative_power * mean.max()).reshape(-1)
    return n * pixel_size / float(held.max() + 1)


def halves_identical(fsc: torch.Tensor, last_shell: int, tolerance: float = 1e-3) -> bool:
    """Whether two half maps are one map: FSC (shells 0..N//2) above 1 - ``tolerance`` in
    every shell 1..``last_shell``."""
    values = fsc[1 : last_shell + 1].double()
    return bool(len(values) > 0 and (values > 1 - tolerance).all())


def reference_resolution(
    fsc: torch.Tensor, fsc_resolution: float, content_resolution: float, ini_high: float, box: int, pixel_size: float
) -> tuple[float, bool]:
    """The resolution (Å) a pair of half-map references holds, and whether they are one map:
    their FSC 0.143 resolution, never finer than what the maps hold (``content_resolution``);
    for two identical maps (their FSC says nothing) the coarser of that and ``ini_high``."""
    last = int(math.floor(box * pixel_size / content_resolution + 1e-9)) if math.isfinite(content_resolution) else 0
    identical = halves_identical(fsc, min(last, len(fsc) - 1))
    if identical:
        return float(max(content_resolution, ini_high)), True
    return float(max(fsc_resolution, content_resolution)), False


def comparison_band(resolution: float, box: int, pixel_size: float) -> float:
    """The band (Å) of a search at ``resolution`` Å: kept between Nyquist and a band of 4
    shells (when the half maps agree at no resolution)."""
    if not math.isfinite(resolution):
        resolution = box * pixel_size / 4
    return float(min(max(resolution, 2.0 * pixel_size), box * pixel_size / 4))


def global_match_settings(
    resolution: float, angular_sampling: float, max_shift: float, symmetry: str, mask_radius: float
) -> MatchSettings:
    """Settings of one global pass at ``resolution`` Å: directions of the asymmetric unit of
    ``symmetry`` and psi every ``angular_sampling`` deg, integer origins within
    ``max_shift`` Å, references with each particle's CTF, the best pose kept; the two psi
    neighbours of each candidate direction are re-scored exactly."""
    return MatchSettings(
        angular_sampling=angular_sampling,
        max_shift=max_shift,
        resolution=resolution,
        xi=1,
        symmetry=symmetry,
        ctf_references=True,
        mask_radius=mask_radius,
        refine_psi_neighbours=True,
    )


def chance_reasons(
    resolution: float, ini_high: float, chance_resolution: float | None, margin: float = CHANCE_MARGIN
) -> list[str]:
    """Why a refinement that ended at ``resolution`` Å looks like chance (empty if it does
    not): no better than ``ini_high`` Å, or not finer than ``margin`` times
    ``chance_resolution`` (the FSC 0.143 of half maps from the same particles at random
    poses)."""
    reasons = []
    if not math.isfinite(resolution) or resolution >= ini_high:
        reasons.append(
            f"the final resolution ({resolution:.1f} A) is no better than the initial low-pass ({ini_high:g} A)"
        )
    if (
        chance_resolution is not None
        and math.isfinite(chance_resolution)
        and not resolution < margin * chance_resolution
    ):
        reasons.append(
            f"the half maps agree to {resolution:.1f} A, hardly better than half maps of the same "
            f"particles at random poses ({chance_resolution:.1f} A)"
        )
    return reasons


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


def poses_moving(median_change: float | None, finest_step: float | None, factor: float = 2.0) -> bool:
    """Whether a local iteration still moved the poses: median change (deg) above ``factor``
    times its finest angular step (RELION goes on while its hidden variables change)."""
    return median_change is not None and finest_step is not None and median_change > factor * finest_step


def resolution_improved(previous: float, current: float, tolerance: float = 0.01) -> bool:
    """Whether ``current`` Å is better than ``previous`` Å by more than ``tolerance`` of it."""
    if not math.isfinite(current):
        return False
    if not math.isfinite(previous):
        return True
    return current < previous * (1.0 - tolerance)
