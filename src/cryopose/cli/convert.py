"""``cryopose convert IN OUT``: cryoSPARC .cs -> RELION STAR, and STAR 3.0 <-> 3.1."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import device_option, resolve_device
from cryopose.errors import UserError


@click.command("convert")
@click.argument("source", metavar="IN", type=click.Path(path_type=Path))
@click.argument("target", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--apix", type=float, default=None, help="Pixel size (A/px), needed when IN has none.")
@click.option(
    "--to", "version", type=click.Choice(["3.0", "3.1"]), default="3.1", show_default=True,
    help="STAR version to write (3.1 is also read by RELION 4 and 5).",
)
@click.option("--image-size", type=int, default=None, help="Box size (px) to record when IN has none.")
@device_option
def command(source: Path, target: Path, apix: float | None, version: str, image_size: int | None, device: str) -> None:
    """Convert particle metadata IN (.star or .cs) to a RELION STAR file OUT.

    Unknown columns and extra data blocks are kept. --device is accepted for uniformity
    (conversion does no numerical work).

    Example: cryopose convert cryosparc_P1_J2_particles.cs particles.star --apix 1.06
    """
    from cryopose.io import read_particles, write_star

    resolve_device(device)

    if target.suffix.lower() != ".star":
        raise UserError(f"output {target} must be a .star file; cryopose writes RELION STAR only")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise UserError(f"output {target} is the input file; choose another output name")
    if apix is not None and apix <= 0:
        raise UserError(f"--apix must be positive, got {apix}")
    particles = read_particles(source, apix=apix)
    if apix is not None and particles._pixel_size_or_none() is None:
        particles = particles.with_columns(rlnImagePixelSize=apix)
    if particles._pixel_size_or_none() is None:
        raise UserError(f"{source} has no pixel size (rlnImagePixelSize); pass --apix")
    if image_size is not None:
        if image_size <= 0:
            raise UserError(f"--image-size must be positive, got {image_size}")
        if particles.image_size is None:
            particles = particles.with_columns(rlnImageSize=image_size)
    write_star(particles, target, version=version)
    click.echo(f"wrote {target} (RELION {version} STAR, {len(particles)} particles)")
