"""``cryopose fsc``: Fourier shell correlation between two maps."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from cryopose.cli.common import device_option, ensure_out_dir, resolve_device, write_json_atomic
from cryopose.errors import UserError
from cryopose.io.mrc import read_map
from cryopose.io.plots import plot_fsc_curves
from cryopose.reconstruct.fsc import fourier_shell_correlation, pearson_correlation


def write_fsc_csv(path: Path, frequency, fsc, pixel_size: float) -> None:
    """Write shell, frequency (1/Å), resolution (Å) and FSC as CSV (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write("shell,frequency_per_A,resolution_A,fsc\n")
        for i, (f, v) in enumerate(zip(frequency, fsc)):
            res = 1.0 / float(f) if f > 0 else float("inf")
            fh.write(f"{i},{float(f):.6f},{res:.4f},{float(v):.6f}\n")
    tmp.replace(path)


def load_map_pair(map1: Path, map2: Path, apix: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Read two maps that must share box and pixel size."""
    v1, p1 = read_map(map1)
    v2, p2 = read_map(map2)
    if v1.shape != v2.shape:
        raise UserError(f"{map1} is {v1.shape[0]}^3 but {map2} is {v2.shape[0]}^3; resample one onto the other's grid")
    if apix is None:
        if p1 > 0 and p2 > 0 and abs(p1 - p2) > 0.01 * p1:
            raise UserError(f"pixel sizes disagree: {map1} has {p1:.4f} A, {map2} has {p2:.4f} A; pass --apix to override")
        apix = p1 if p1 > 0 else p2
        if apix <= 0:
            raise UserError("neither map header has a pixel size; pass --apix")
    return v1, v2, apix


@click.command("fsc")
@click.argument("map1", type=click.Path(path_type=Path))
@click.argument("map2", type=click.Path(path_type=Path))
@click.option("--mask", type=click.Path(path_type=Path), help="Mask (same box) applied to both maps.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for fsc.csv, fsc.png and summary.json.")
@click.option("--apix", type=float, help="Pixel size in Å (overrides the headers).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (resolutions and curve) to stdout.")
@device_option
def command(map1: Path, map2: Path, mask: Path | None, out: Path | None, apix: float | None, as_json: bool, device: str) -> None:
    """Fourier shell correlation of MAP1 and MAP2, resolution at 0.143 and 0.5.

    Shells follow RELION (round(|k|)); the resolution is the first crossing, interpolated.

    Example: cryopose fsc half1.mrc half2.mrc --mask mask.mrc --out fsc_job
    """
    dev = resolve_device(device)
    v1, v2, pixel_size = load_map_pair(map1, map2, apix)
    mask_t = None
    if mask is not None:
        m, _ = read_map(mask)
        if m.shape != v1.shape:
            raise UserError(f"mask {mask} is {m.shape[0]}^3 but the maps are {v1.shape[0]}^3")
        mask_t = torch.from_numpy(m).to(dev)
    t1, t2 = torch.from_numpy(v1).to(dev), torch.from_numpy(v2).to(dev)
    result = fourier_shell_correlation(t1, t2, pixel_size, mask_t)
    summary = {
        "map1": str(map1),
        "map2": str(map2),
        "mask": str(mask) if mask else None,
        "pixel_size": pixel_size,
        **result.to_dict(),
        "pcc": pearson_correlation(t1, t2, mask_t),
    }
    if out is not None:
        out = ensure_out_dir(out)
        write_fsc_csv(out / "fsc.csv", result.frequency, result.fsc, pixel_size)
        plot_fsc_curves([(f"{map1.name} vs {map2.name}", result.frequency.numpy(), result.fsc.numpy())], out / "fsc.png")
        write_json_atomic(out / "summary.json", summary)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"FSC resolution: {result.resolution_0143:.2f} A at 0.143, {result.resolution_05:.2f} A at 0.5 "
            f"(pixel size {pixel_size:.3f} A)"
        )
        if out is not None:
            click.echo(f"Wrote {out}/fsc.csv, fsc.png, summary.json")
