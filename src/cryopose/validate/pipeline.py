"""Alignment-quality scores of a chunk of particles (tensors in, tensors out; no files).

For each particle: the global search (:func:`cryopose.align.projection_matching.match_images`)
gives its xi best directions and their NCC; the same search on its good reference (a
noise-free, CTF-affected projection of the map at the particle's own pose and origin) gives
the good values; the noise references are drawn once per run (:func:`noise_references`).
Every per-particle number depends only on that particle, the map and the run's settings and
seed, never on how the particles are chunked or ordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.align.projection_matching import Gallery, match_images
from cryopose.geometry.grids import random_directions_in_asu
from cryopose.geometry.rotations import viewing_direction
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.projection import FourierVolume
from cryopose.imaging.simulation import clean_particle_images
from cryopose.validate import scores as sc

__all__ = ["NoiseReferences", "noise_references", "score_chunk"]


@dataclass
class NoiseReferences:
    """The run's noise references: alpha (rad; the paper's alpha_noise, or Xmipp's shared
    value used for both scores) and, for the paper convention, the random directions
    (M * xi, 3) that every particle's chi_noise is measured against."""

    alpha: float
    directions: torch.Tensor | None


def noise_references(gallery: Gallery, xi: int, sym: str, convention: str, draws: int, seed: int) -> NoiseReferences:
    """Draw the run's noise references from ``seed`` (same seed, same values)."""
    gen = torch.Generator().manual_seed(seed)
    if convention == "xmipp":
        return NoiseReferences(sc.xmipp_noise(gallery.directions.cpu(), xi, sym, draws, gen), None)
    alpha = sc.noise_alpha(xi, sym, draws, gen)
    return NoiseReferences(alpha, random_directions_in_asu(draws * xi, sym, generator=gen))


def score_chunk(
    gallery: Gallery,
    clean_volume: FourierVolume,
    images: torch.Tensor,
    ctf: CTFParameters | None,
    rotations: torch.Tensor | None,
    shifts_angstrom: torch.Tensor | None,
    pixel_size: float,
    noise: NoiseReferences,
    convention: str,
) -> dict[str, torch.Tensor]:
    """Scores of particles ``images`` (B, N, N) with their CTF and assigned poses (B, 3, 3)
    and origins (B, 2) in Å (None: no poses; the good reference is then made at the best pose
    found, and only precision is scored).

    Returns float64 tensors (B,): alpha, alpha_good (rad), qp, score (best NCC) and, with
    poses, chi, chi_good, chi_noise (rad), qa.
    """
    sym = gallery.settings.symmetry
    device = gallery.device
    weighted = convention == "paper"
    res = match_images(gallery, images, ctf)
    if rotations is not None:
        if shifts_angstrom is None:
            raise ValueError("assigned poses need their origins (shifts_angstrom)")
        pose = rotations.to(device, torch.float32)
        origin = shifts_angstrom.to(device, torch.float32)
    else:
        pose, origin = res.rotations[:, 0], res.shifts_angstrom[:, 0]
    clean = clean_particle_images(clean_volume, pose, origin / pixel_size, ctf, pixel_size)
    good = match_images(gallery, clean, ctf)
    w = res.scores.clamp_min(0).double() if weighted else None
    wg = good.scores.clamp_min(0).double() if weighted else None
    alpha = sc.alpha_score(res.directions.double(), w, sym, convention)
    alpha_good = sc.alpha_score(good.directions.double(), wg, sym, convention)
    out = {
        "alpha": alpha,
        "alpha_good": alpha_good,
        "qp": sc.quality_score(alpha, noise.alpha, alpha_good),
        "score": res.scores[:, 0].double(),
    }
    if rotations is not None:
        assigned = viewing_direction(pose.double())
        chi = sc.chi_score(assigned, res.directions.double(), w, sym, convention)
        chi_good = sc.chi_score(assigned, good.directions.double(), wg, sym, convention)
        if noise.directions is not None:
            chi_noise = sc.noise_chi(assigned, noise.directions, sym)
        else:
            chi_noise = torch.full_like(chi, noise.alpha)
        out.update(chi=chi, chi_good=chi_good, chi_noise=chi_noise, qa=sc.quality_score(chi, chi_noise, chi_good))
    return {k: v.cpu() for k, v in out.items()}
