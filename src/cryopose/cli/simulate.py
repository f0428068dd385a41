"""``cryopose simulate``: particle images from a map with known poses, CTF and noise."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Number,
    cluster_options,
    device_option,
    force_option,
    progress_bar,
    resolve_device,
)


def result_lines(s: dict, out: Path) -> list[str]:
    """The lines ``cryopose simulate`` prints after its work (the demo prints them too)."""
    return [
        f"Simulated {s['n_particles']} particles ({s['box']} px, {s['pixel_size']:.3f} A/px, SNR {s['snr']:g}, "
        f"CTF {'on' if s['ctf'] else 'off'}) -> {s['star']}, {s['stack']}"
    ]


@click.command("simulate")
@click.option(
    "--map",
    "map_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Map to project (MRC).",
)
@click.option("--n", "n", type=COUNT, help="Number of particles (not with --from-star).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--snr",
    type=Number(0.0, low_open=True, allow_inf=True),
    default=0.1,
    show_default=True,
    help="Signal-to-noise ratio: variance of the noise-free, CTF-affected projection inside the "
    "particle mask over the noise variance, per image. 'inf' means no noise.",
)
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="Apply a CTF (RELION's model).")
@click.option(
    "--defocus",
    nargs=2,
    type=POSITIVE,
    default=(1.0, 2.5),
    show_default=True,
    help="Defocus range MIN MAX in µm (underfocus).",
)
@click.option(
    "--max-shift",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Largest origin offset in Å (uniform in a disc).",
)
@click.option("--apix", type=POSITIVE, help="Pixel size of the particles in Å (the map is resampled to it).")
@click.option("--box", type=click.IntRange(min=8), help="Particle box in px (the map is cropped or padded to it).")
@click.option("--sym", default="C1", show_default=True, help="Symmetry: poses are drawn in its asymmetric unit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option(
    "--from-star",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take poses, origins and CTF from this star instead of drawing them.",
)
@click.option(
    "--particle-diameter",
    type=POSITIVE,
    help="Diameter (Å) of the particle mask used for the SNR (default 0.8 of the box).",
)
@click.option("--voltage", type=POSITIVE, default=300.0, show_default=True, help="Acceleration voltage (kV).")
@click.option("--cs", type=NON_NEGATIVE, default=2.7, show_default=True, help="Spherical aberration (mm).")
@click.option(
    "--amplitude-contrast",
    type=Number(0.0, 1.0, high_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of amplitude contrast, in [0, 1).",
)
@force_option
@device_option
@cluster_options
def command(
    map_path,
    n,
    out,
    snr,
    ctf,
    defocus,
    max_shift,
    apix,
    box,
    sym,
    seed,
    from_star,
    particle_diameter,
    voltage,
    cs,
    amplitude_contrast,
    force,
    device,
    executor,
):
    """Simulate particles from a map; the poses in DIR/particles.star are the ground truth.

    Writes DIR/particles.star (RELION 3.1, optics block) and DIR/particles.mrcs.

    Example: cryopose simulate --map map.mrc --n 2000 --snr 0.05 --max-shift 10 --out sim
    """
    from cryopose.jobs.simulate import SimulateSettings, run_simulate

    dev = resolve_device(device)
    settings = SimulateSettings(
        n=n,
        snr=snr,
        ctf=ctf,
        defocus=tuple(defocus),
        max_shift=max_shift,
        apix=apix,
        box=box,
        symmetry=sym,
        seed=seed,
        from_star=from_star,
        particle_diameter=particle_diameter,
        voltage=voltage,
        cs=cs,
        amplitude_contrast=amplitude_contrast,
    )
    with progress_bar("simulate") as update:
        s = run_simulate(map_path, out, settings, device=dev, progress=update, force=force, executor=executor)
    for line in result_lines(s, out):
        click.echo(line)
