"""What every job derives from its inputs, decided once: the pixel size, the half sets, whether
a map fits the particles, and the memory a reconstruction needs.

The rules (the README's "What the commands check" says them to users):

- **Particles' pixel size**: one value for the whole set (:func:`particle_pixel_size`); optics
  groups that differ by more than 0.1% are refused, in every job.
- **A map's pixel size**: its header's; ``apix`` (the ``--apix`` option) only where the header
  has none (:func:`map_pixel_size`). Likewise a STAR file's own pixel size wins over ``apix``
  (``cryopose.io.read_particles``). Where both are given and disagree, a note says which is used.
- **A map for particles**: the same box, and a pixel size within 1% of theirs when its header
  has one (:func:`check_map_fits_particles`).
- **Half sets**: rlnRandomSubset, else a seeded random balanced split (:func:`half_set_labels`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cryopose.errors import UserError
from cryopose.jobs.resources import require_memory
from cryopose.particles import ParticleSet

__all__ = [
    "particle_pixel_size",
    "map_pixel_size",
    "check_map_fits_particles",
    "half_set_labels",
    "require_reconstruction_memory",
]

log = logging.getLogger("cryopose")


def particle_pixel_size(ps: ParticleSet) -> float:
    """The one pixel size of a particle set (Å); optics groups that differ by more than 0.1%
    are a UserError."""
    apix = ps.pixel_size
    if np.ptp(apix) > 1e-3 * apix.max():
        raise UserError(
            f"particles have different pixel sizes ({apix.min():.4f}-{apix.max():.4f} A); "
            "process one optics group at a time or rescale the particles"
        )
    return float(apix[0])


def map_pixel_size(header: float, apix: float | None, path: str | Path, what: str = "map") -> float:
    """A map's pixel size (Å): its ``header``'s when it has one (> 0), else ``apix``; a
    UserError when neither; a note on the log when both are given and differ by over 1%."""
    if header > 0:
        if apix is not None and abs(header - apix) > 0.01 * header:
            log.info(
                "note: %s %s has its own pixel size (%.4f A); it is used, not the given %g A", what, path, header, apix
            )
        return float(header)
    if apix is None:
        raise UserError(f"{what} {path} has no pixel size in its header; give the pixel size", option="apix")
    return float(apix)


def check_map_fits_particles(volume: np.ndarray, header: float, box: int, apix: float, path: str | Path) -> None:
    """UserError unless the map ``volume`` (header pixel size ``header``, 0 if none) has the
    particles' ``box`` and, when its header has one, their pixel size ``apix`` within 1%."""
    if volume.shape[-1] != box:
        raise UserError(
            f"{path} is {volume.shape[-1]} px but the particles are {box} px; resample the map to the particles' box"
        )
    if header > 0 and abs(header - apix) > 0.01 * apix:
        raise UserError(
            f"{path} has {header:.4f} A/px but the particles {apix:.4f} A/px; "
            "resample the map to the particles' pixel size"
        )
    if not np.any(volume):
        raise UserError(f"{path} is all zeros; give a map of the particles' structure")


def half_set_labels(ps: ParticleSet, seed: int) -> tuple[np.ndarray, bool]:
    """rlnRandomSubset (1/2) per particle, or a random balanced split drawn from ``seed`` when
    absent. Returns (labels, whether they were drawn at random)."""
    halves = ps.half_sets
    if halves is not None:
        bad = ~np.isin(halves, (1, 2))
        if bad.any():
            raise UserError(f"rlnRandomSubset must be 1 or 2; row {int(np.argmax(bad)) + 1} has {halves[bad][0]}")
        return halves.astype(np.int64), False
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(len(ps)) % 2 == 0, 1, 2)
    rng.shuffle(labels)
    return labels, True


def require_reconstruction_memory(box: int, device, extra_volumes: int = 0) -> None:
    """UserError when reconstructing two half maps of ``box`` px (complex Fourier sums and
    weights of the padded box, with working copies), plus ``extra_volumes`` float32 maps of
    the box, would not fit ``device``'s memory."""
    need = 2 * 4 * 3 * (2 * box) ** 3 * 2.5 + extra_volumes * 4 * box**3
    require_memory(need, f"reconstructing {box} px images", "bin the particles to a smaller box", device)
