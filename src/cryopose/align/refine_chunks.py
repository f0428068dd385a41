"""Refine's searches of one chunk of particles (tensors in, tensors out; no files).

Gold standard: each particle is compared only with its own half set's reference, those with
``halves == h`` with ``references[h - 1]`` (or ``galleries[h - 1]``), h = 1, 2. Images
(k, N, N) and their CTF come on the device to work on; poses are RELION A (k, 3, 3), origins
in Å (k, 2). Results are float32 tensors on the CPU, one row per particle, and each row
depends only on its particle, the references and the settings, never on the chunking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from cryopose.align.local_search import LocalSearchSettings, local_search
from cryopose.align.projection_matching import Gallery, match_images
from cryopose.align.scoring import GaussianNoise, PreparedParticles, Reference, prepare_particles, residual_shell_power
from cryopose.imaging.ctf import CTFParameters

__all__ = ["residual_power_chunk", "local_search_chunk", "global_search_chunk"]


def _on_device(reference: Reference, device: torch.device) -> Reference:
    if reference.device == device:
        return reference
    return replace(reference, volume=replace(reference.volume, data=reference.volume.data.to(device)))


def _half_sets(
    images: torch.Tensor, ctf: CTFParameters | None, halves: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, CTFParameters | None]]:
    """For each half set with particles in the chunk: (h, their rows (CPU indices), their
    images and CTF)."""
    for h in (1, 2):
        sel = torch.nonzero(halves.cpu() == h).flatten()
        if len(sel) > 0:
            yield h, sel, images[sel.to(images.device)], None if ctf is None else ctf[sel]


def _prepared_half_sets(
    references: tuple[Reference, Reference],
    images: torch.Tensor,
    ctf: CTFParameters | None,
    halves: torch.Tensor,
    mask_radius: float,
) -> Iterator[tuple[int, torch.Tensor, Reference, PreparedParticles]]:
    """For each half set with particles in the chunk: (h, their rows, half h's reference,
    those particles prepared against it, CTF applied to the references)."""
    for h, sel, imgs, c in _half_sets(images, ctf, halves):
        ref = _on_device(references[h - 1], images.device)
        yield h, sel, ref, prepare_particles(ref, imgs, c, ctf_references=True, mask_radius=mask_radius)


def residual_power_chunk(
    references: tuple[Reference, Reference],
    images: torch.Tensor,
    ctf: CTFParameters | None,
    halves: torch.Tensor,
    rotations: torch.Tensor,
    shifts_angstrom: torch.Tensor,
    mask_radius: float,
) -> dict[str, torch.Tensor]:
    """{"power": residual power per shell (k, R+1), "scale": amplitude scale (k,)} of each
    particle at its pose and origin against its own half's reference
    (:func:`cryopose.align.scoring.residual_shell_power`); ``mask_radius``: of the
    particles' soft mask (fraction of the box)."""
    k = len(halves)
    power = torch.zeros(k, references[0].radius + 1, dtype=torch.float32)
    scale = torch.zeros(k, dtype=torch.float32)
    for _, sel, ref, prep in _prepared_half_sets(references, images, ctf, halves, mask_radius):
        origins_px = (shifts_angstrom[sel] / ref.work_pixel_size).float()
        p, a = residual_shell_power(ref, prep, rotations[sel].float(), origins_px)
        power[sel] = p.cpu().to(torch.float32)
        scale[sel] = a.cpu().to(torch.float32)
    return {"power": power, "scale": scale}


def local_search_chunk(
    references: tuple[Reference, Reference],
    search: LocalSearchSettings,
    images: torch.Tensor,
    ctf: CTFParameters | None,
    halves: torch.Tensor,
    rotations: torch.Tensor,
    shifts_angstrom: torch.Tensor,
    prior_rotations: torch.Tensor,
    prior_shifts_angstrom: torch.Tensor,
    mask_radius: float,
    noise_power: tuple[torch.Tensor, torch.Tensor] | None = None,
    scales: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{"rotations" (k, 3, 3), "shifts" (k, 2) Å, "scores" (k,)}: each particle's best pose
    and origin by :func:`cryopose.align.local_search.local_search` about its current ones,
    against its own half's reference, with priors about ``prior_rotations`` and
    ``prior_shifts_angstrom``. Scored by NCC, or with ``noise_power`` (per shell, per half)
    and the particles' amplitude ``scales`` (k,) by the Gaussian log-likelihood."""
    k = len(halves)
    best_rotations = torch.zeros(k, 3, 3, dtype=torch.float32)
    best_shifts = torch.zeros(k, 2, dtype=torch.float32)
    scores = torch.zeros(k, dtype=torch.float32)
    for h, sel, ref, prep in _prepared_half_sets(references, images, ctf, halves, mask_radius):
        noise = None
        if noise_power is not None:
            if scales is None:
                raise ValueError("a likelihood search needs the particles' amplitude scales")
            noise = GaussianNoise(noise_power[h - 1], scales[sel])
        res = local_search(
            ref,
            prep,
            rotations[sel].float(),
            shifts_angstrom[sel].float(),
            search,
            prior_rotations=prior_rotations[sel],
            prior_shifts_angstrom=prior_shifts_angstrom[sel],
            noise=noise,
        )
        best_rotations[sel] = res.rotations.cpu().to(torch.float32)
        best_shifts[sel] = res.shifts_angstrom.cpu().to(torch.float32)
        scores[sel] = res.scores.cpu().to(torch.float32)
    return {"rotations": best_rotations, "shifts": best_shifts, "scores": scores}


def global_search_chunk(
    galleries: tuple[Gallery, Gallery],
    images: torch.Tensor,
    ctf: CTFParameters | None,
    halves: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """{"rotations" (k, 3, 3), "shifts" (k, 2) Å, "scores" (k,) NCC}: each particle's best
    pose and origin over the whole gallery of its own half's reference
    (:func:`cryopose.align.projection_matching.match_images`)."""
    k = len(halves)
    rotations = torch.zeros(k, 3, 3, dtype=torch.float32)
    shifts = torch.zeros(k, 2, dtype=torch.float32)
    scores = torch.zeros(k, dtype=torch.float32)
    for h, sel, imgs, c in _half_sets(images, ctf, halves):
        res = match_images(galleries[h - 1], imgs, c)
        rotations[sel] = res.rotations[:, 0].cpu().to(torch.float32)
        shifts[sel] = res.shifts_angstrom[:, 0].cpu().to(torch.float32)
        scores[sel] = res.scores[:, 0].cpu().to(torch.float32)
    return {"rotations": rotations, "shifts": shifts, "scores": scores}
