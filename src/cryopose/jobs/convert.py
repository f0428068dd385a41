"""The convert job: particle metadata (.star or .cs) to a RELION STAR file."""

from __future__ import annotations

from pathlib import Path

from cryopose.errors import UserError
from cryopose.io import read_particles
from cryopose.io.outputs import check_output_file
from cryopose.io.star import write_star

__all__ = ["run_convert"]


def run_convert(
    source: Path,
    target: Path,
    apix: float | None = None,
    version: str = "3.1",
    image_size: int | None = None,
    force: bool = False,
) -> int:
    """Convert ``source`` to a RELION ``version`` STAR file ``target``; returns the number of
    particles. ``apix`` (Å/px) and ``image_size`` (px) fill in what the source lacks; when
    the source has its own pixel size, that one is used (``read_particles`` logs a note).
    An existing ``target`` is replaced only with ``force``, and never when it is ``source``."""
    source, target = Path(source), Path(target)
    if target.suffix.lower() != ".star":
        raise UserError(f"output {target} must be a .star file; cryopose writes RELION STAR only")
    check_output_file(target, [source], force)
    if apix is not None and apix <= 0:
        raise UserError(f"the pixel size must be positive, got {apix}", option="apix")
    particles = read_particles(source, apix=apix)
    if particles.pixel_size_or_none() is None:
        if apix is None:
            raise UserError(f"{source} has no pixel size (rlnImagePixelSize); give the pixel size", option="apix")
        particles = particles.with_columns(rlnImagePixelSize=apix)
    if image_size is not None:
        if image_size <= 0:
            raise UserError(f"the image size must be positive, got {image_size}", option="image-size")
        if particles.image_size is None:
            particles = particles.with_columns(rlnImageSize=image_size)
    write_star(particles, target, version=version)
    return len(particles)
