"""``cryopose convert IN OUT``: cryoSPARC .cs -> RELION STAR, and STAR 3.0 <-> 3.1."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import COUNT, POSITIVE, device_option, force_option, resolve_device


@click.command("convert")
@click.argument("source", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--apix", type=POSITIVE, default=None, help="Pixel size (A/px), used when IN has none.")
@click.option(
    "--to",
    "version",
    type=click.Choice(["3.0", "3.1"]),
    default="3.1",
    show_default=True,
    help="STAR version to write (3.1 is also read by RELION 4 and 5).",
)
@click.option("--image-size", type=COUNT, default=None, help="Box size (px) to record when IN has none.")
@force_option
@device_option
def command(
    source: Path, target: Path, apix: float | None, version: str, image_size: int | None, force: bool, device: str
) -> None:
    """Convert particle metadata IN (.star or .cs) to a RELION STAR file OUT.

    Unknown columns and extra data blocks are kept; relative image paths are rewritten to
    resolve from OUT's folder. cryoSPARC poses become RELION angles (A = R(r)^T) and
    cryoSPARC shifts become RELION origins. CTF sign: cryopose uses RELION's (protein white
    at low frequency for underfocus); cryoDRGN and ASPIRE use the opposite sign and invert
    the data instead, so stacks written for those tools must be inverted back before use
    here. --device is accepted for uniformity (conversion does no numerical work).

    Example: cryopose convert cryosparc_P1_J2_particles.cs particles.star --apix 1.06
    """
    from cryopose.jobs.convert import run_convert

    resolve_device(device)
    n = run_convert(source, target, apix=apix, version=version, image_size=image_size, force=force)
    click.echo(f"wrote {target} (RELION {version} STAR, {n} particles)")
