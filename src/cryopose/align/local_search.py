"""Local search: each particle's best pose and origin in a neighbourhood of its current ones.

Candidates are A' = dR A with dR a rotation by a rotation vector on a cubic grid of
``angle_step`` inside a ball of radius ``max_angle`` (:func:`cryopose.geometry.grids.local_rotation_grid`;
so every A' is within ``max_angle`` of A on SO(3), in-plane angle included: a rotation
about the image z axis changes psi),
and origins o' = o + s with s on a square grid of ``shift_step`` inside a disc of
``max_shift``. Scores come from the scoring kernel (:func:`cryopose.align.scoring.score_poses`).
Coarse to fine: after each level the ``keep`` best candidates seed the next level, whose
rotation ball and shift disc are one step of the previous level wide and whose steps are
halved. Units: degrees and Å at the boundary (settings), radians and working pixels inside.

Priors about each particle's prior pose P (``prior_rotations``) and origin:

- ``settings.prior_sigma``: a Gaussian prior on the rotation, log p = -theta^2 / (2 sigma^2)
  with theta the geodesic angle between the candidate and P (on SO(3), psi included), as
  RELION's ``--sigma_ang``. Candidates are ranked by data term + log prior: with the
  likelihood score the data term is the log-likelihood itself; with NCC it is the
  log-likelihood the NCC implies under white noise of the particle's own power,
  (M/2) NCC |NCC| (:func:`ncc_log_likelihood`, M the coefficients of the band);
- ``settings.prior_angle`` (a wall): a candidate farther than ``prior_angle`` from P is
  never chosen, and likewise origins farther than ``settings.prior_shift`` from the prior
  origin; so an iterated search never wanders beyond them, whatever the number of levels or
  iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryopose.align.scoring import GaussianNoise, PreparedParticles, Reference, disc_offsets, score_poses, shell_sizes
from cryopose.geometry.grids import local_rotation_grid

__all__ = ["LocalSearchSettings", "LocalSearchResult", "ncc_log_likelihood", "local_search"]


@dataclass
class LocalSearchSettings:
    """Neighbourhood and coarse-to-fine schedule of a local search (degrees, Å)."""

    max_angle: float = 6.0  # deg, radius of the rotation neighbourhood (first level)
    angle_step: float = 2.0  # deg, rotation grid step of the first level
    max_shift: float = 3.0  # Å, radius of the origin neighbourhood (first level)
    shift_step: float | None = None  # Å, origin grid step of the first level (default: one working px)
    levels: int = 3  # coarse-to-fine levels (steps halve each level)
    keep: int = 2  # candidates carried from one level to the next
    prior_angle: float | None = None  # deg, largest distance from the prior pose (with prior_rotations)
    prior_sigma: float | None = None  # deg, sigma of a Gaussian prior about the prior pose (with prior_rotations)
    prior_shift: float | None = None  # Å, largest distance from the prior origin (with prior_shifts_angstrom)


@dataclass
class LocalSearchResult:
    """Best pose per particle: rotations (B, 3, 3) RELION A, origins (B, 2) Å, and its score
    (B,): NCC, or the log-likelihood with a noise model (the prior not included)."""

    rotations: torch.Tensor
    shifts_angstrom: torch.Tensor
    scores: torch.Tensor


def ncc_log_likelihood(ncc: torch.Tensor, reference: Reference) -> torch.Tensor:
    """The log-likelihood (up to a constant) that an NCC implies: (M/2) NCC |NCC|, M the
    number of coefficients of the full transform in the reference's band. For a particle X
    whose noise is white with power |X|^2 / M per coefficient, the Gaussian log-likelihood at
    the best amplitude is -(M/2)(1 - NCC^2); the sign is kept so that the ranking of
    negative NCCs is kept too."""
    m = float(shell_sizes(reference).sum())
    return 0.5 * m * ncc * ncc.abs()


def local_search(
    reference: Reference,
    particles: PreparedParticles,
    rotations: torch.Tensor,
    shifts_angstrom: torch.Tensor,
    settings: LocalSearchSettings | None = None,
    max_candidates: int = 4096,
    prior_rotations: torch.Tensor | None = None,
    prior_shifts_angstrom: torch.Tensor | None = None,
    noise: GaussianNoise | None = None,
) -> LocalSearchResult:
    """Refine poses ``rotations`` (B, 3, 3) and origins ``shifts_angstrom`` (B, 2) of the
    prepared ``particles`` against ``reference``; returns the best candidate found.
    ``prior_rotations`` (B, 3, 3) and ``prior_shifts_angstrom`` (B, 2) with the settings'
    ``prior_angle``/``prior_shift`` bound the result (see the module docstring); the
    current poses must lie within those bounds; with ``prior_sigma`` they carry a Gaussian
    prior instead (or as well). ``noise``: score by the Gaussian log-likelihood of the
    kernel instead of NCC."""
    s = settings or LocalSearchSettings()
    device = reference.device
    b = len(particles)
    apix = reference.work_pixel_size
    angle, angle_step = math.radians(s.max_angle), math.radians(s.angle_step)
    shift, shift_step = s.max_shift / apix, (s.shift_step / apix if s.shift_step else 1.0)
    # current candidates: (B, C, 3, 3) rotations and (B, C, 2) origins in working px
    rots = rotations.to(device, torch.float32)[:, None]
    origins = (shifts_angstrom.to(device, torch.float32) / apix)[:, None]
    prior = None if prior_rotations is None else prior_rotations.to(device, torch.float64)
    cone = None
    if prior is not None and s.prior_angle is not None:
        cone = math.cos(math.radians(s.prior_angle))
    gaussian = None
    if prior is not None and s.prior_sigma is not None:
        gaussian = 0.5 / math.radians(s.prior_sigma) ** 2
    disc = None
    if prior_shifts_angstrom is not None and s.prior_shift is not None:
        disc = (prior_shifts_angstrom.to(device, torch.float32) / apix, s.prior_shift / apix)
    best_scores = None
    for level in range(max(1, s.levels)):
        ball = local_rotation_grid(angle, angle_step, device=device)  # (K, 3, 3), the identity first
        offsets = disc_offsets(shift, shift_step, device)  # (T, 2)
        c = rots.shape[1]
        k = ball.shape[0]
        cand = (ball[None, None] @ rots[:, :, None]).reshape(b, c * k, 3, 3)
        centres = origins[:, :, None].expand(-1, -1, k, -1).reshape(b, c * k, 2)
        pidx = torch.arange(b, device=device)[:, None].expand(-1, c * k).reshape(-1)
        scores = []
        flat_rots, flat_centres = cand.reshape(-1, 3, 3), centres.reshape(-1, 2)
        for start in range(0, pidx.shape[0], max_candidates):
            sl = slice(start, start + max_candidates)
            scores.append(
                score_poses(reference, particles, pidx[sl], flat_rots[sl], offsets, flat_centres[sl], noise=noise)
            )
        table = torch.cat(scores).reshape(b, c * k, -1)  # (B, C*K, T)
        if prior is not None and (cone is not None or gaussian is not None):
            # cos of the angle to the prior = (trace(P^T A') - 1) / 2
            cos = ((prior[:, None] * cand.double()).sum((-2, -1)) - 1) / 2
            if cone is not None:
                table = table.masked_fill((cos < cone - 1e-9)[..., None], -math.inf)
        if disc is not None:
            away = (centres[:, :, None] + offsets[None, None] - disc[0][:, None, None]).norm(dim=-1)  # (B, C*K, T)
            table = table.masked_fill(away > disc[1] + 1e-4, -math.inf)
        per_rot, t_idx = table.max(dim=-1)  # (B, C*K)
        objective = per_rot
        if gaussian is not None:
            data = per_rot if noise is not None else ncc_log_likelihood(per_rot, reference)
            theta = torch.arccos(cos.clamp(-1, 1))
            objective = data - (gaussian * theta**2).to(data.dtype)
        keep = min(s.keep if level < s.levels - 1 else 1, c * k)
        _, top = objective.topk(keep, dim=1)  # (B, keep)
        best_scores = per_rot.gather(1, top)
        rots = cand.gather(1, top[:, :, None, None].expand(-1, -1, 3, 3))
        chosen_t = t_idx.gather(1, top)
        origins = centres.gather(1, top[:, :, None].expand(-1, -1, 2)) + offsets[chosen_t]
        # next level: one step wide, half the step
        angle, angle_step = angle_step, angle_step / 2
        shift, shift_step = shift_step, shift_step / 2
    assert best_scores is not None  # at least one level ran
    return LocalSearchResult(rotations=rots[:, 0], shifts_angstrom=origins[:, 0] * apix, scores=best_scores[:, 0])
