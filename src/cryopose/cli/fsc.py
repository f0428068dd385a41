"""``cryopose fsc``: Fourier shell correlation between two maps."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cryopose.cli.common import POSITIVE, device_option, force_option, resolve_device


def result_lines(s: dict, out: Path | None) -> list[str]:
    """The lines ``cryopose fsc`` prints after its work (the demo prints them too)."""
    lines = [
        f"FSC resolution: {s['resolution_0143']:.2f} A at 0.143, {s['resolution_05']:.2f} A at 0.5 "
        f"(pixel size {s['pixel_size']:.3f} A)"
    ]
    return lines if out is None else [*lines, f"Wrote {out}/fsc.csv, fsc.png, summary.json"]


@click.command("fsc")
@click.argument("map1", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("map2", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mask", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Mask (same box) applied to both maps."
)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for fsc.csv, fsc.png and summary.json.")
@click.option("--apix", type=POSITIVE, help="Pixel size in Å of a map whose header has none.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (resolutions and curve) to stdout.")
@force_option
@device_option
def command(
    map1: Path,
    map2: Path,
    mask: Path | None,
    out: Path | None,
    apix: float | None,
    as_json: bool,
    force: bool,
    device: str,
) -> None:
    """Fourier shell correlation of MAP1 and MAP2, resolution at 0.143 and 0.5.

    Shells follow RELION (round(|k|)); the resolution is the first crossing, interpolated.

    Example: cryopose fsc half1.mrc half2.mrc --mask mask.mrc --out fsc_job
    """
    from cryopose.io.atomic import json_safe
    from cryopose.jobs.fsc import run_fsc

    dev = resolve_device(device)
    result, summary = run_fsc(map1, map2, mask, apix, out, dev, force=force)
    if as_json:
        click.echo(json.dumps(json_safe(summary)))
    else:
        for line in result_lines(summary, out):
            click.echo(line)
