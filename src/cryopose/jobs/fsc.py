"""The fsc job: Fourier shell correlation and correlation of two maps on files."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.io.atomic import write_json_atomic
from cryopose.io.mrc import read_map
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_fsc_curves, write_fsc_csv
from cryopose.jobs.inputs import map_pixel_size
from cryopose.reconstruct.fsc import FSCResult, fourier_shell_correlation, map_correlation

__all__ = ["load_map_pair", "run_fsc", "OUTPUTS"]

OUTPUTS = ("fsc.csv", "fsc.png", "summary.json")


def load_map_pair(map1: Path, map2: Path, apix: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Two maps that share box and pixel size, and that pixel size (Å): the headers' (which
    must agree within 1%), ``apix`` for a map whose header has none
    (:func:`cryopose.jobs.inputs.map_pixel_size`)."""
    if apix is not None and not (math.isfinite(apix) and apix > 0):
        raise UserError(f"the pixel size must be a positive number of Å, got {apix}", option="apix")
    v1, p1 = read_map(map1)
    v2, p2 = read_map(map2)
    if v1.shape != v2.shape:
        raise UserError(f"{map1} is {v1.shape[0]}^3 but {map2} is {v2.shape[0]}^3; resample one onto the other's grid")
    # a header-less map takes apix, else the other map's header
    a1 = map_pixel_size(p1, apix if apix is not None or p1 > 0 else (p2 if p2 > 0 else None), map1)
    a2 = map_pixel_size(p2, apix if apix is not None or p2 > 0 else a1, map2)
    if abs(a1 - a2) > 0.01 * a1:
        raise UserError(
            f"pixel sizes disagree: {map1} has {a1:.4f} A, {map2} has {a2:.4f} A; "
            "resample one map onto the other's grid"
        )
    return v1, v2, a1


def run_fsc(
    map1: Path,
    map2: Path,
    mask: Path | None = None,
    apix: float | None = None,
    out: Path | None = None,
    device: torch.device | str = "cpu",
    force: bool = False,
) -> tuple[FSCResult, dict]:
    """FSC of two maps (optionally masked); with ``out`` writes fsc.csv, fsc.png and
    summary.json there (files cryopose did not write are replaced only with ``force``).
    Returns the curve and the summary."""
    v1, v2, pixel_size = load_map_pair(map1, map2, apix)
    mask_t = None
    if mask is not None:
        m, _ = read_map(mask)
        if m.shape != v1.shape:
            raise UserError(
                f"mask {mask} is {m.shape[0]}^3 but the maps are {v1.shape[0]}^3; resample the mask onto the maps' grid"
            )
        if not np.any(m > 0):
            raise UserError(f"mask {mask} is all zeros; give a mask that covers the particle")
        mask_t = torch.from_numpy(m).to(device)
    inputs = [p for p in (map1, map2, mask) if p is not None]
    with output_folder(out, inputs=inputs, outputs=OUTPUTS, force=force) if out is not None else nullcontext():
        t1, t2 = torch.from_numpy(v1).to(device), torch.from_numpy(v2).to(device)
        result = fourier_shell_correlation(t1, t2, pixel_size, mask_t)
        summary = {
            "map1": str(map1),
            "map2": str(map2),
            "mask": str(mask) if mask else None,
            "pixel_size": pixel_size,
            **result.to_dict(),
            "pcc": map_correlation(t1, t2, mask_t),
        }
        if out is not None:
            out = Path(out)
            write_fsc_csv(out / "fsc.csv", result.frequency, result.fsc)
            plot_fsc_curves(
                [(f"{Path(map1).name} vs {Path(map2).name}", result.frequency.numpy(), result.fsc.numpy())],
                out / "fsc.png",
            )
            write_json_atomic(out / "summary.json", summary)
    return result, summary
