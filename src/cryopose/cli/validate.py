"""``cryopose validate``: alignment precision/accuracy (Vargas et al. 2017), Q and pruning."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import device_option, ensure_out_dir, resolve_device, write_json_atomic
from cryopose.errors import UserError


def _write_outputs(out: Path, particles, cols: dict, summary: dict, opts) -> None:
    import numpy as np

    from cryopose.io.star import write_star
    from cryopose.io.validation_plots import soft_validation_figure

    scored = particles.with_columns(**cols)
    write_star(scored, out / "particles.star")
    keep = np.asarray(cols["cryoposeAligned"]).astype(bool)
    write_star(scored.subset(keep), out / "pruned.star")
    write_json_atomic(out / "summary.json", summary)
    acc = cols.get("cryoposeAccuracy") if summary.get("has_poses") else None
    title = f"Q = {summary['Q']:.3f}" if summary.get("Q") is not None else f"precision = {summary['precision_fraction']:.3f}"
    soft_validation_figure(cols["cryoposePrecision"], acc, opts.precision_threshold, opts.accuracy_threshold, out / "soft_validation.png", title)


@click.command("validate")
@click.option("--map", "maps", multiple=True, required=True, type=click.Path(path_type=Path), help="Map to validate (repeat for several maps or, with --by-class, one per class).")
@click.option("--particles", required=True, type=click.Path(path_type=Path), help="RELION STAR file of the particles.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--angular-sampling", default=5.0, show_default=True, help="Gallery and in-plane step (deg).")
@click.option("--max-shift", default=None, type=float, help="Origin search radius (A) [default: 10% of the box].")
@click.option("--resolution", default=8.0, show_default=True, help="Compare images up to this resolution (A).")
@click.option("--xi", default=None, type=int, help="Directions kept per particle [7; 6 with --convention xmipp].")
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names).")
@click.option("--ctf-references", is_flag=True, help="Apply each particle's CTF to the references instead of Wiener-correcting particles.")
@click.option("--noise-draws", default=500, show_default=True, help="Random draws M of the noise references.")
@click.option("--precision-threshold", default=0.5, show_default=True)
@click.option("--accuracy-threshold", default=0.5, show_default=True)
@click.option("--convention", type=click.Choice(["paper", "xmipp"]), default="paper", show_default=True, help="Score formulas of the paper or Xmipp's choices.")
@click.option("--by-class", is_flag=True, help="Score each particle against the map of its rlnClassNumber (k-th --map for class k).")
@click.option("--apix", default=None, type=float, help="Pixel size (A) when the star has none.")
@click.option("--chunk-size", default=64, show_default=True, help="Particles read and searched at a time.")
@click.option("--seed", default=0, show_default=True, help="Seed of the noise references.")
@device_option
def command(maps, particles, out, angular_sampling, max_shift, resolution, xi, sym, ctf_references, noise_draws,
            precision_threshold, accuracy_threshold, convention, by_class, apix, chunk_size, seed, device) -> None:
    """Validate the alignment of PARTICLES against MAP: per-particle precision and accuracy, Q, pruning."""
    import sys

    from tqdm import tqdm

    from cryopose.geometry.symmetry import normalise_symmetry_name
    from cryopose.io.mrc import ParticleImages, read_map
    from cryopose.io.star import read_star
    from cryopose.validate.report import ValidationOptions, rank_maps, validate_particles

    if angular_sampling <= 0 or resolution <= 0 or (max_shift is not None and max_shift < 0):
        raise UserError("--angular-sampling and --resolution must be positive and --max-shift non-negative")
    if xi is not None and xi < 2:
        raise UserError("--xi must be at least 2")
    dev = resolve_device(device)
    opts = ValidationOptions(
        angular_sampling=angular_sampling, max_shift=max_shift, resolution=resolution, xi=xi,
        symmetry=normalise_symmetry_name(sym), ctf_references=ctf_references, noise_draws=noise_draws,
        precision_threshold=precision_threshold, accuracy_threshold=accuracy_threshold,
        convention=convention, seed=seed, chunk_size=chunk_size,
    )
    ps = read_star(particles, apix=apix)
    volumes = [read_map(m) for m in maps]
    out = ensure_out_dir(out)
    images = ParticleImages(ps)
    try:
        n_runs = 1 if (by_class or len(maps) == 1) else len(maps)
        with tqdm(total=len(ps) * n_runs, unit="particle", disable=not sys.stderr.isatty()) as bar:
            if by_class or len(maps) == 1:
                cols, summary = validate_particles(ps, images, volumes, opts, by_class=by_class, device=dev, progress=bar.update)
                summary["maps"] = [str(m) for m in maps]
                _write_outputs(out, ps, cols, summary, opts)
            else:
                summaries = []
                for i, (m, vol) in enumerate(zip(maps, volumes), start=1):
                    cols, s = validate_particles(ps, images, [vol], opts, device=dev, progress=bar.update)
                    s["map"] = str(m)
                    _write_outputs(ensure_out_dir(out / f"map{i}"), ps, cols, s, opts)
                    summaries.append(s)
                summary = {
                    "n_particles": len(ps),
                    "maps": [str(m) for m in maps],
                    "ranking": rank_maps(summaries, [str(m) for m in maps]),
                    "per_map": summaries,
                    "precision_threshold": precision_threshold,
                    "accuracy_threshold": accuracy_threshold,
                }
                write_json_atomic(out / "summary.json", summary)
    finally:
        images.close()
    if "ranking" in summary:
        for r in summary["ranking"]:
            click.echo(f"#{r['rank']} {r['map']}: precision {r['precision_fraction']:.3f}" + (f", Q {r['Q']:.3f}" if r["Q"] is not None else ""))
    else:
        q = summary.get("Q")
        click.echo(f"{summary['n_particles']} particles: precision {summary['precision_fraction']:.3f}"
                   + (f", accuracy {summary['accuracy_fraction']:.3f}, Q {q:.3f}" if q is not None else " (no poses: precision only)"))
    click.echo(f"wrote {out}/summary.json")
