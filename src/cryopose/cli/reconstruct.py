"""``cryopose reconstruct``: CTF-weighted reconstruction with gold-standard half maps."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import (
    COUNT,
    POSITIVE,
    cluster_options,
    device_option,
    force_option,
    progress_bar,
    resolve_device,
)


def result_lines(s: dict, out: Path) -> list[str]:
    """The lines ``cryopose reconstruct`` prints after its work (the demo prints them too)."""
    return [
        f"Reconstructed {s['n_particles']} particles in {s['seconds']:.1f} s: half-map FSC "
        f"{s['resolution_0143']:.2f} A at 0.143, {s['resolution_05']:.2f} A at 0.5 -> {out}/map.mrc"
    ]


@click.command("reconstruct")
@click.argument("particles", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names: C4, D7, O, I1...).")
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="CTF-weight the insertion (Wiener-like, CTF²).")
@click.option("--apix", type=POSITIVE, help="Pixel size in Å when the star has none.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for the half-set split when rlnRandomSubset is absent."
)
@click.option("--chunk-size", type=COUNT, default=256, show_default=True, help="Particles read and inserted at a time.")
@force_option
@device_option
@cluster_options
def command(
    particles: Path,
    out: Path,
    sym: str,
    ctf: bool,
    apix: float | None,
    seed: int,
    chunk_size: int,
    force: bool,
    device: str,
    executor=None,
) -> None:
    """Reconstruct a map from PARTICLES.star with known poses.

    CTF-weighted direct Fourier insertion on a 2x padded grid (trilinear), gridding
    correction, weight floor, symmetry, and gold-standard halves from rlnRandomSubset
    (a random split when absent). Writes DIR/map.mrc, half1.mrc, half2.mrc, fsc.csv,
    fsc.png and summary.json. An interrupted run resumes where it stopped.

    Example: cryopose reconstruct sim/particles.star --out rec --sym C1
    """
    from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct

    dev = resolve_device(device)
    settings = ReconstructSettings(symmetry=sym, ctf=ctf, seed=seed, chunk_size=chunk_size)
    with progress_bar("reconstruct") as update:
        s = run_reconstruct(
            particles, out, settings, apix=apix, device=dev, progress=update, force=force, executor=executor
        )
    for line in result_lines(s, out):
        click.echo(line)
