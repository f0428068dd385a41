"""``cryopose refine``: gold-standard refinement of particle poses, local or global."""

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

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def result_lines(s: dict, out: Path) -> list[str]:
    """The lines ``cryopose refine`` prints after its work (the demo prints them too)."""
    change = s["pose_change_from_input_median_deg"]
    return [
        f"{s['n_particles']} particles ({s['search']}): {s['resolution_start_0143']:.2f} -> "
        f"{s['resolution_0143']:.2f} A (FSC 0.143, iteration {s['best_iteration']})"
        + ("" if change is None else f"; median pose change {change:.2f} deg")
        + f"; {s['stop_reason']}",
        f"wrote {out}/particles.star and {out}/summary.json",
    ]


@click.command("refine")
@click.option(
    "--particles",
    required=True,
    type=_FILE,
    help="RELION STAR file of the particles: with their current poses, or (with --global) CTF only.",
)
@click.option(
    "--map",
    "map_path",
    required=True,
    type=_FILE,
    help=(
        "Reference map (box and pixel size of the particles): the starting reference, low-passed to --ini-high, for "
        "both halves; each iteration's map is compared with it."
    ),
)
@click.option(
    "--half-maps",
    nargs=2,
    default=None,
    type=_FILE,
    help=(
        "Half maps H1 H2: the first iteration's references of half 1 and half 2 instead (compared only within the "
        "band they hold)."
    ),
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--global",
    "global_search",
    is_flag=True,
    help=(
        "Assign poses from scratch: global searches over the asymmetric unit, psi and origins (input angles are not "
        "used), then the local iterations; like RELION's 3D auto-refine."
    ),
)
@click.option(
    "--ini-high",
    default=30.0,
    type=POSITIVE,
    show_default=True,
    help="Low-pass (A) of --map as the starting reference (and the band of two identical half maps).",
)
@click.option(
    "--initial-reference",
    type=click.Choice(["map", "poses"]),
    default="map",
    show_default=True,
    help=(
        "The first references: --map low-passed to --ini-high (RELION), or each half reconstructed from its own input "
        "poses."
    ),
)
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names).")
@click.option(
    "--sigma-angle",
    default=6.0,
    type=Number(0, 90, low_open=True),
    show_default=True,
    help=(
        "Prior on the rotation about the input pose (or the global one), deg: sigma of a Gaussian (RELION's "
        "--sigma_ang), or a hard limit with --prior wall."
    ),
)
@click.option(
    "--search-angle",
    default=None,
    type=Number(0, 90, low_open=True),
    help="Radius of each iteration's local search about the current pose (deg, psi included) [default: --sigma-angle].",
)
@click.option(
    "--prior",
    type=click.Choice(["gaussian", "wall"]),
    default="gaussian",
    show_default=True,
    help="gaussian: poses may move farther than --sigma-angle over the iterations when the images say so; wall: never.",
)
@click.option(
    "--max-shift",
    default=5.0,
    type=NON_NEGATIVE,
    show_default=True,
    help=(
        "Origin neighbourhood (A): searched about the current origin and the most an origin may move from the input's "
        "(from the box centre with --global); at most a quarter of the box."
    ),
)
@click.option(
    "--iterations",
    default=5,
    type=COUNT,
    show_default=True,
    help="Local iterations at most (the run stops earlier when the resolution stops improving).",
)
@click.option(
    "--global-passes",
    default=2,
    type=COUNT,
    show_default=True,
    help="Global searches before the local iterations (with --global).",
)
@click.option(
    "--global-sampling",
    default=7.5,
    type=Number(0, 30, low_open=True),
    show_default=True,
    help="Angular step of the global searches (deg; RELION's HEALPix order 2 is 7.5).",
)
@click.option(
    "--score",
    type=click.Choice(["ncc", "likelihood"]),
    default="ncc",
    show_default=True,
    help="Normalised cross-correlation, or Gaussian likelihood with per-shell noise from the residuals.",
)
@click.option("--no-ctf", is_flag=True, help="Ignore the CTF (particles without CTF columns).")
@click.option("--apix", default=None, type=POSITIVE, help="Pixel size (A) when the star has none.")
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the random half split when the star has no rlnRandomSubset."
)
@click.option(
    "--chunk-size",
    default=128,
    type=COUNT,
    show_default=True,
    help="Particles searched at a time (results do not depend on it).",
)
@force_option
@device_option
@cluster_options
def command(
    particles,
    map_path,
    half_maps,
    out,
    global_search,
    ini_high,
    initial_reference,
    sym,
    sigma_angle,
    search_angle,
    prior,
    max_shift,
    iterations,
    global_passes,
    global_sampling,
    score,
    no_ctf,
    apix,
    seed,
    chunk_size,
    force,
    device,
    executor,
) -> None:
    """Refine the poses of PARTICLES, each half set against its own half map.

    By default the poses are refined locally from the input ones, starting from --map
    low-passed to --ini-high; with --global they are assigned from scratch first.
    Writes DIR/particles.star (poses and origins, cryoposeRefineScore, the change from
    the input pose), half1.mrc, half2.mrc, map.mrc, fsc.csv, fsc.png and summary.json.
    An interrupted run resumes (finished work is kept in DIR/.cryopose_refine).

    Example: cryopose refine --particles predicted.star --map run_class001.mrc --out refined

    Example: cryopose refine --global --particles ctf_only.star --map initial_model.mrc --out refined
    """
    from cryopose.jobs.refine import RefineSettings, run_refine

    dev = resolve_device(device)
    settings = RefineSettings(
        symmetry=sym,
        sigma_angle=sigma_angle,
        search_angle=search_angle,
        prior=prior,
        max_shift=max_shift,
        iterations=iterations,
        score=score,
        ctf=not no_ctf,
        seed=seed,
        chunk_size=chunk_size,
        initial_reference=initial_reference,
        ini_high=ini_high,
        global_search=global_search,
        global_passes=global_passes,
        global_sampling=global_sampling,
    )
    with progress_bar("refine") as update:
        summary = run_refine(
            particles,
            map_path,
            out,
            tuple(half_maps) if half_maps else None,
            settings,
            apix=apix,
            device=dev,
            progress=update,
            force=force,
            executor=executor,
        )
    for line in result_lines(summary, out):
        click.echo(line)
