"""``cryopose demo``: the whole pipeline on the bundled map, with a short report.

The work is ``cryopose.jobs.demo.run_demo``; this module parses the options and prints each
step as the command that does it (``$ cryopose ...``, marked when an earlier, interrupted demo
finished it) followed by that command's result lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cryopose.cli import align_maps, fsc, predict, reconstruct, refine, simulate, train, validate
from cryopose.cli.common import Number, device_option, force_option, progress_bar, resolve_device
from cryopose.jobs.demo import MIN_PARTICLES, DemoStep


@click.command("demo")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("cryopose_demo"), show_default=True, help="Output folder."
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=MIN_PARTICLES),
    default=3000,
    show_default=True,
    help=f"Particles to simulate (at least {MIN_PARTICLES}).",
)
@click.option(
    "--snr",
    type=Number(0.0, low_open=True, allow_inf=True),
    default=0.1,
    show_default=True,
    help="Signal-to-noise ratio of the simulated particles (inf: no noise).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--learn-minutes",
    type=Number(0.0),
    default=3.0,
    show_default=True,
    help="Minutes to train the pose estimator of the learning stage (0 skips the stage).",
)
@force_option
@device_option
def command(out: Path, n: int, snr: float, seed: int, learn_minutes: float, force: bool, device: str) -> None:
    """Run the pipeline on the bundled map (EMD-1832, CC0) and write a report.

    Simulates particles with CTF, shifts and noise; reconstructs them with gold-standard
    halves; measures the FSC against the true map; validates a mixed set and prunes it;
    aligns a moved map and carries its poses along; trains a pose estimator on 80% of the
    particles, predicts the rest and refines those poses locally; writes DIR/report.md
    with figures.

    Example: cryopose demo --out cryopose_demo
    """
    from cryopose.jobs.demo import DemoSettings, run_demo

    dev = resolve_device(device)
    settings = DemoSettings(n=n, snr=snr, seed=seed, learn_minutes=learn_minutes)
    summary = run_demo(
        out,
        settings,
        device=dev,
        force=force,
        announce=_announce,
        report=_report,
        progress=progress_bar,
        stage=lambda text: click.echo(text, err=True),
    )
    click.echo(
        f"\nDemo finished in {summary['seconds']:.0f} s. Report: {out / 'report.md'} (summary: {out / 'summary.json'})"
    )


def _announce(step: DemoStep) -> None:
    click.echo(f"$ {step.command_line}" + ("  # finished by an earlier run" if step.resumed else ""))


def _report(step: DemoStep, result: Any) -> None:
    for line in RESULT_LINES[step.command](result, step.out):
        click.echo(line)


# The lines each command prints after its work.
RESULT_LINES: dict[str, Callable[[Any, Path], list[str]]] = {
    "simulate": simulate.result_lines,
    "reconstruct": reconstruct.result_lines,
    "fsc": fsc.result_lines,
    "validate": validate.result_lines,
    "align-maps": align_maps.result_lines,
    "train": train.result_lines,
    "predict": predict.result_lines,
    "refine": refine.result_lines,
}
