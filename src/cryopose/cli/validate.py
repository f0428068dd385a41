"""``cryopose validate``: alignment precision/accuracy (Vargas et al. 2017), Q and pruning."""

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
    """The lines ``cryopose validate`` prints after its work (the demo prints them too)."""
    if "ranking" in s:
        lines = [
            f"#{r['rank']} {r['map']}: precision {r['precision_fraction']:.3f}"
            + (f", Q {r['Q']:.3f}" if r["Q"] is not None else "")
            for r in s["ranking"]
        ]
    else:
        q = s.get("Q")
        lines = [
            f"{s['n_particles']} particles: precision {s['precision_fraction']:.3f}"
            + (
                f", accuracy {s['accuracy_fraction']:.3f}, Q {q:.3f}"
                if q is not None
                else " (no poses: precision only)"
            )
        ]
    return [*lines, f"wrote {out}/summary.json"]


@click.command("validate")
@click.option(
    "--map",
    "maps",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Map to validate (repeat for several maps or, with --by-class, one per class).",
)
@click.option(
    "--particles",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="RELION STAR file of the particles.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--angular-sampling",
    default=5.0,
    type=Number(0, 90, low_open=True),
    show_default=True,
    help="Gallery and in-plane step (deg).",
)
@click.option(
    "--max-shift",
    default=None,
    type=NON_NEGATIVE,
    help="Origin search radius (A) [default: 10% of the box; at most half the box].",
)
@click.option(
    "--resolution", default=8.0, type=POSITIVE, show_default=True, help="Compare images up to this resolution (A)."
)
@click.option(
    "--xi",
    default=None,
    type=click.IntRange(min=2),
    help="Directions kept per particle [7; 6 with --convention xmipp].",
)
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names).")
@click.option(
    "--ctf-references",
    is_flag=True,
    help="Apply each particle's CTF to the references instead of Wiener-correcting particles.",
)
@click.option(
    "--noise-draws", default=500, type=COUNT, show_default=True, help="Random draws M of the noise references."
)
@click.option(
    "--precision-threshold", default=0.5, type=Number(), show_default=True, help="q^p a particle needs to pass."
)
@click.option(
    "--accuracy-threshold", default=0.5, type=Number(), show_default=True, help="q^a a particle needs to pass."
)
@click.option(
    "--convention",
    type=click.Choice(["paper", "xmipp"]),
    default="paper",
    show_default=True,
    help="Score formulas of the paper or Xmipp's choices.",
)
@click.option(
    "--by-class",
    is_flag=True,
    help="Score each particle against the map of its rlnClassNumber (k-th --map for class k).",
)
@click.option("--apix", default=None, type=POSITIVE, help="Pixel size (A) when the star has none.")
@click.option(
    "--chunk-size",
    default=64,
    type=COUNT,
    show_default=True,
    help="Particles read and searched at a time (results do not depend on it).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the noise references.")
@force_option
@device_option
@cluster_options
def command(
    maps,
    particles,
    out,
    angular_sampling,
    max_shift,
    resolution,
    xi,
    sym,
    ctf_references,
    noise_draws,
    precision_threshold,
    accuracy_threshold,
    convention,
    by_class,
    apix,
    chunk_size,
    seed,
    force,
    device,
    executor,
) -> None:
    """Validate the alignment of PARTICLES against MAP: per-particle precision and accuracy, Q, pruning.

    An interrupted run resumes from the chunks it finished (kept in DIR/.cryopose_validate).

    Example: cryopose validate --map run_class001.mrc --particles run_data.star --sym C4 --out val
    """
    from cryopose.align.projection_matching import MatchSettings
    from cryopose.jobs.validate import ValidationOptions, run_validate

    dev = resolve_device(device)
    match = MatchSettings(
        angular_sampling=angular_sampling,
        max_shift=max_shift,
        resolution=resolution,
        xi=xi,
        symmetry=sym,
        ctf_references=ctf_references,
    )
    opts = ValidationOptions(
        match=match,
        noise_draws=noise_draws,
        precision_threshold=precision_threshold,
        accuracy_threshold=accuracy_threshold,
        convention=convention,
        seed=seed,
        chunk_size=chunk_size,
    )
    with progress_bar("validate") as update:
        summary = run_validate(
            list(maps),
            particles,
            out,
            opts,
            by_class=by_class,
            apix=apix,
            device=dev,
            progress=update,
            force=force,
            executor=executor,
        )
    for line in result_lines(summary, out):
        click.echo(line)
