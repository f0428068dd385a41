"""``cryopose predict``: poses of particles from a trained estimator."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import (
    COUNT,
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
    """The lines ``cryopose predict`` prints after its work (the demo prints them too)."""
    line = f"{s['n_particles']} particles predicted at {s['particles_per_second']:.0f}/s"
    if "against_input_poses" in s:
        a = s["against_input_poses"]
        line += f"; against the input poses: median {a['median_deg']:.1f} deg, mean {a['mean_deg']:.1f} deg"
    if s["models_at_chance"]:
        line += " (the model is at chance level: see the warning)"
    lines = [line]
    if "kept" in s:
        lines.append(f"kept {s['kept']} of {s['n_particles']} in {out}/kept.star")
    return [*lines, f"wrote {out}/particles.star and {out}/summary.json"]


@click.command("predict")
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help=(
        "model.pt from cryopose train, or its output folder (a --halves folder predicts each half with the other "
        "half's model)."
    ),
)
@click.option(
    "--particles",
    required=True,
    type=_FILE,
    help="RELION STAR of the particles (same box and pixel size as the training set).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--keep-fraction",
    type=Number(0, 1, low_open=True),
    default=None,
    help="Clean-up: also write kept.star with this fraction of the most confident particles.",
)
@click.option(
    "--min-confidence",
    type=Number(),
    default=None,
    help="Clean-up: also write kept.star with the particles of cryoposeConfidence >= this.",
)
@click.option("--batch-size", default=256, type=COUNT, show_default=True, help="Images per forward pass.")
@click.option(
    "--chunk-size",
    default=2048,
    type=COUNT,
    show_default=True,
    help="Particles read and stored at a time (results do not depend on it).",
)
@click.option("--apix", default=None, type=POSITIVE, help="Pixel size (Å) when the star has none.")
@force_option
@device_option
@cluster_options
def command(
    model, particles, out, keep_fraction, min_confidence, batch_size, chunk_size, apix, force, device, executor
) -> None:
    """Predict the poses and origins of PARTICLES with a trained estimator.

    Writes DIR/particles.star (every input column; predicted rlnAngleRot/Tilt/Psi and
    rlnOriginX/YAngst; the input's poses kept as cryoposeTrue*; cryoposeConfidence and the
    estimator's uncertainty columns), summary.json, and with a clean-up kept.star.

    Example: cryopose predict --model model/model.pt --particles new.star --out pred --keep-fraction 0.75
    """
    from cryopose.jobs.predict import PredictSettings, run_predict

    dev = resolve_device(device)
    settings = PredictSettings(
        keep_fraction=keep_fraction, min_confidence=min_confidence, batch_size=batch_size, chunk_size=chunk_size
    )
    with progress_bar("predict") as update:
        s = run_predict(
            model, particles, out, settings, apix=apix, device=dev, progress=update, force=force, executor=executor
        )
    for line in result_lines(s, out):
        click.echo(line)
