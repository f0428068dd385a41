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


# ---------------------------------------------------------------------- each step's result, as its command prints it
def _simulate_lines(s: dict, out: Path) -> list[str]:
    return [
        f"Simulated {s['n_particles']} particles ({s['box']} px, {s['pixel_size']:.3f} A/px, SNR {s['snr']:g}, "
        f"CTF {'on' if s['ctf'] else 'off'}) -> {s['star']}, {s['stack']}"
    ]


def _reconstruct_lines(s: dict, out: Path) -> list[str]:
    return [
        f"Reconstructed {s['n_particles']} particles in {s['seconds']:.1f} s: half-map FSC "
        f"{s['resolution_0143']:.2f} A at 0.143, {s['resolution_05']:.2f} A at 0.5 -> {out}/map.mrc"
    ]


def _fsc_lines(s: dict, out: Path) -> list[str]:
    return [
        f"FSC resolution: {s['resolution_0143']:.2f} A at 0.143, {s['resolution_05']:.2f} A at 0.5 "
        f"(pixel size {s['pixel_size']:.3f} A)",
        f"Wrote {out}/fsc.csv, fsc.png, summary.json",
    ]


def _validate_lines(s: dict, out: Path) -> list[str]:
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


def _align_maps_lines(entries: list[dict], out: Path) -> list[str]:
    return [
        *(
            f"{e['map']}: angle {e['angle_deg']:.2f} deg, shift {sum(v * v for v in e['shift_A']) ** 0.5:.2f} A, "
            f"hand flipped {e['hand_flipped']}, FSC0.143 vs reference {e['fsc_resolution_0143']:.1f} A"
            for e in entries
        ),
        f"wrote {out}/transforms.json and the aligned maps",
    ]


def _train_lines(s: dict, out: Path) -> list[str]:
    lines = []
    for m in s["models"]:
        best = m["best"]
        where = f"{out}/{m['name']}" if s["halves"] else str(out)
        if "val_median_deg" in best:
            verdict = (
                f", AT CHANCE LEVEL (random poses: {m['chance_median_deg']:.1f} deg; do not use this model)"
                if m["at_chance"]
                else f" (random poses: {m['chance_median_deg']:.1f} deg)"
            )
            lines.append(
                f"{m['name']}: {m['epochs']} epochs in {m['training_seconds'] / 60:.1f} min; best epoch "
                f"{m['best_epoch']}: validation median {best['val_median_deg']:.1f} deg, mean "
                f"{best['val_mean_deg']:.1f} deg{verdict}, origin {best['val_origin_median_angstrom']:.1f} A "
                f"-> {where}/model.pt"
            )
        else:
            lines.append(
                f"{m['name']}: {m['epochs']} epochs in {m['training_seconds'] / 60:.1f} min -> {where}/model.pt"
            )
    return lines


def _predict_lines(s: dict, out: Path) -> list[str]:
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


def _refine_lines(s: dict, out: Path) -> list[str]:
    change = s["pose_change_from_input_median_deg"]
    return [
        f"{s['n_particles']} particles ({s['search']}): {s['resolution_start_0143']:.2f} -> "
        f"{s['resolution_0143']:.2f} A (FSC 0.143, iteration {s['best_iteration']})"
        + ("" if change is None else f"; median pose change {change:.2f} deg")
        + f"; {s['stop_reason']}",
        f"wrote {out}/particles.star and {out}/summary.json",
    ]


# The lines each command prints after its work (kept the same as in cryopose.cli.<command>).
RESULT_LINES: dict[str, Callable[[Any, Path], list[str]]] = {
    "simulate": _simulate_lines,
    "reconstruct": _reconstruct_lines,
    "fsc": _fsc_lines,
    "validate": _validate_lines,
    "align-maps": _align_maps_lines,
    "train": _train_lines,
    "predict": _predict_lines,
    "refine": _refine_lines,
}
