"""``cryopose refine``: gold-standard local refinement of particle poses."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import COUNT, NON_NEGATIVE, POSITIVE, Number, cluster_options, device_option, force_option, progress_bar, resolve_device

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("refine")
@click.option("--particles", required=True, type=_FILE, help="RELION STAR file of the particles, with their current poses.")
@click.option("--map", "map_path", required=True, type=_FILE, help="Reference map (box and pixel size of the particles); each iteration's map is compared with it.")
@click.option("--half-maps", nargs=2, default=None, type=_FILE, help="Half maps H1 H2: the first iteration's references of half 1 and half 2 [default: reconstructed from each half's poses].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names).")
@click.option("--sigma-angle", default=6.0, type=Number(0, 90, low_open=True), show_default=True, help="Rotation neighbourhood (deg, psi included): searched about the current pose, and the most a pose may move from the input.")
@click.option("--max-shift", default=5.0, type=NON_NEGATIVE, show_default=True, help="Origin neighbourhood (A), likewise; at most a quarter of the box.")
@click.option("--iterations", default=5, type=COUNT, show_default=True, help="Iterations at most (the run stops earlier when the resolution stops improving).")
@click.option("--score", type=click.Choice(["ncc", "likelihood"]), default="ncc", show_default=True, help="Normalised cross-correlation, or Gaussian likelihood with per-shell noise from the residuals.")
@click.option("--no-ctf", is_flag=True, help="Ignore the CTF (particles without CTF columns).")
@click.option("--apix", default=None, type=POSITIVE, help="Pixel size (A) when the star has none.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random half split when the star has no rlnRandomSubset.")
@click.option("--chunk-size", default=128, type=COUNT, show_default=True, help="Particles searched at a time (results do not depend on it).")
@force_option
@device_option
@cluster_options
def command(particles, map_path, half_maps, out, sym, sigma_angle, max_shift, iterations, score, no_ctf, apix, seed,
            chunk_size, force, device, executor) -> None:
    """Refine the poses of PARTICLES locally, each half set against its own half map.

    Writes DIR/particles.star (refined poses and origins, cryoposeRefineScore, the change
    from the input pose), half1.mrc, half2.mrc, map.mrc, fsc.csv, fsc.png and
    summary.json. An interrupted run resumes (finished work is kept in DIR/.cryopose_refine).

    Example: cryopose refine --particles predicted.star --map run_class001.mrc --sym C1 --out refined
    """
    from cryopose.geometry.symmetry import normalise_symmetry_name
    from cryopose.jobs.refine import RefineSettings, run_refine

    dev = resolve_device(device)
    settings = RefineSettings(symmetry=normalise_symmetry_name(sym), sigma_angle=sigma_angle, max_shift=max_shift,
                              iterations=iterations, score=score, ctf=not no_ctf, seed=seed, chunk_size=chunk_size)
    with progress_bar("refine") as update:
        summary = run_refine(particles, map_path, out, tuple(half_maps) if half_maps else None, settings, apix=apix,
                             device=dev, progress=update, force=force, executor=executor)
    click.echo(f"{summary['n_particles']} particles: {summary['resolution_start_0143']:.2f} -> "
               f"{summary['resolution_0143']:.2f} A (FSC 0.143, iteration {summary['best_iteration']}); "
               f"median pose change {summary['pose_change_from_input_median_deg']:.2f} deg; {summary['stop_reason']}")
    click.echo(f"wrote {out}/particles.star and {out}/summary.json")
