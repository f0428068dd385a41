"""Benchmark of ``cryopose align-maps``: wall time and error for 64^3, 128^3 and 256^3 maps.

Maps are the bundled EMD-1832 map (64^3, 5.7 A/px) and its Fourier-upsampled versions
(128^3 at 2.85 A/px, 256^3 at 1.425 A/px). For each size, the moving maps are the reference
under a random rotation (full range), a shift of up to 10 px (of the 64^3 map), with and
without a hand flip, with noise and a different low-pass; full rotation range, both hands
checked, low-pass 12 A. Errors are the angle (deg) between the recovered and true M and
the shift error (A).

Brute force: a grid over SO(3) at the final precision (0.5 deg: what the
refinement reaches or beats), both hands, each rotation of the full map followed by an
FFT translation search at the full box. Running it is infeasible (~10^8 rotations), so its
per-rotation cost is MEASURED in this run on a sample of the grid, and multiplied by the
grid size (extrapolated; said so in the output). The grid size at step d is that of
``geometry.grids.sample_rotations`` at 15 deg (measured) times (15/d)^3.

Usage: python benchmarks/bench_align_maps.py [--device cpu|cuda] [--sizes 64 128 256]
Writes benchmarks/results/align_maps.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from cryopose.align.map_alignment import J, MapAlignmentSettings, align_map, apply_transform, transform_volume
from cryopose.geometry.grids import sample_rotations_near_identity
from cryopose.imaging.filters import lowpass_volume
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.io.mrc import read_map

from common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"
FINAL_STEP_DEG = 0.5
LOWPASS = 12.0


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def brute_force_per_rotation(ref: torch.Tensor, mov: torch.Tensor, dev, sample: int = 16, batch: int = 4) -> float:
    """Seconds per rotation of an exhaustive search at the full box: rotate the map, FFT
    cross-correlate with the reference, take the peak (measured on ``sample`` rotations)."""
    n = ref.shape[-1]
    rots = torch.as_tensor(Rotation.random(sample, random_state=0).as_matrix(), dtype=torch.float32, device=dev)
    ref_f = torch.fft.rfftn(ref, dim=(-3, -2, -1)).conj()
    batch = max(1, min(batch, int(2**27 // n**3)))
    _sync(dev)
    t0 = time.perf_counter()
    for s in range(0, sample, batch):
        v = transform_volume(mov, rots[s : s + batch])
        cc = torch.fft.irfftn(torch.fft.rfftn(v, dim=(-3, -2, -1)) * ref_f, s=(n, n, n), dim=(-3, -2, -1))
        cc.reshape(cc.shape[0], -1).max(dim=1)
    _sync(dev)
    return (time.perf_counter() - t0) / sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    dev = torch.device(args.device)
    vol64, apix64 = read_map(DATA)
    base = torch.as_tensor(vol64)
    n_grid_15 = sample_rotations_near_identity(15.0).shape[0] - 1
    n_grid_final = int(round(n_grid_15 * (15.0 / FINAL_STEP_DEG) ** 3)) * 2  # both hands
    rows = []
    for size in args.sizes:
        apix = apix64 * 64 / size
        ref = fourier_resize_volume(base, size).float().to(dev)
        for trial in range(args.trials):
            flip = trial % 2 == 1
            rng = np.random.default_rng(100 + trial)
            r = Rotation.random(random_state=100 + trial).as_matrix()
            m = r @ J if flip else r
            d = rng.normal(size=3)
            t_A = d / np.linalg.norm(d) * rng.uniform(0.3, 1.0) * 10 * apix64
            mov = apply_transform(ref, m.T, -m.T @ t_A, apix, device=dev)
            mov = lowpass_volume(mov, 15.0, apix)
            gen = torch.Generator().manual_seed(trial)
            mov = mov + 0.2 * mov.std() * torch.randn(mov.shape, generator=gen).to(dev)
            _sync(dev)
            t0 = time.perf_counter()
            res = align_map(
                ref,
                mov,
                apix,
                settings=MapAlignmentSettings(lowpass=LOWPASS, max_shift=12 * apix64, max_angle=180, check_hands=True),
                device=dev,
            )
            _sync(dev)
            wall = time.perf_counter() - t0
            err = np.degrees(np.arccos(np.clip((np.trace(res.rotation.T @ m) - 1) / 2, -1, 1)))
            rows.append(
                {
                    "size": size,
                    "pixel_size_A": apix,
                    "trial": trial,
                    "hand_flipped_truth": flip,
                    "hand_right": bool(res.hand_flipped == flip),
                    "wall_s": wall,
                    "angle_error_deg": float(err),
                    "shift_error_A": float(np.linalg.norm(res.shift_A - t_A)),
                    "shift_error_px": float(np.linalg.norm(res.shift_A - t_A) / apix),
                    "stage_s": {k: v for k, v in res.timings.items() if k.endswith("_s")},
                    "refine_box": int(res.timings["refine_box"]),
                }
            )
            print(
                f"size {size} trial {trial}: {wall:.1f} s, error {err:.3f} deg, "
                f"{rows[-1]['shift_error_px']:.3f} px, hand right {rows[-1]['hand_right']}",
                flush=True,
            )
        per_rot = brute_force_per_rotation(ref, mov, dev)
        for row in rows:
            if row["size"] == size:
                row["brute_force_per_rotation_s"] = per_rot
                row["brute_force_extrapolated_s"] = per_rot * n_grid_final
                row["speedup_vs_brute_force"] = per_rot * n_grid_final / row["wall_s"]
    summary = []
    for size in args.sizes:
        rs = [r for r in rows if r["size"] == size]
        summary.append(
            {
                "size": size,
                "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])),
                "angle_error_deg_max": float(np.max([r["angle_error_deg"] for r in rs])),
                "shift_error_px_max": float(np.max([r["shift_error_px"] for r in rs])),
                "hands_right": all(r["hand_right"] for r in rs),
                "brute_force_per_rotation_s": rs[0]["brute_force_per_rotation_s"],
                "brute_force_extrapolated_s": rs[0]["brute_force_extrapolated_s"],
                "ratio_brute_force_over_ours": rs[0]["brute_force_extrapolated_s"]
                / float(np.mean([r["wall_s"] for r in rs])),
            }
        )
    result = {
        "benchmark": "align-maps",
        "device": str(dev),
        "machine": machine(),
        "lowpass_A": LOWPASS,
        "gpu": torch.cuda.get_device_name(0)
        if dev.type == "cuda"
        else "no GPU was lent to this session; GPU figures not measured",
        "brute_force_note": (
            f"brute force = SO(3) grid at {FINAL_STEP_DEG} deg ({n_grid_final} rotations, both hands) x full-box FFT "
            "translation search; its per-rotation cost is measured in this run on 16 sampled rotations and "
            "EXTRAPOLATED to the grid size (running it is infeasible)"
        ),
        "note": "wall times were taken on a shared 2-core machine while other jobs ran; treat them as upper bounds",
        "summary": summary,
        "runs": rows,
    }
    out = write_results("align_maps", result)
    print(
        f"\n{'size':>5} {'wall s':>8} {'err deg':>8} {'err px':>7} {'hands':>6} {'brute/rot s':>12} "
        f"{'brute s (extrap.)':>18} {'ratio':>10}"
    )
    for s in summary:
        print(
            f"{s['size']:>5} {s['wall_s_mean']:>8.1f} {s['angle_error_deg_max']:>8.3f} {s['shift_error_px_max']:>7.3f} "
            f"{str(s['hands_right']):>6} {s['brute_force_per_rotation_s']:>12.4f} "
            f"{s['brute_force_extrapolated_s']:>18.3g} "
            f"{s['ratio_brute_force_over_ours']:>10.3g}"
        )
    print(result["brute_force_note"])
    print(f"GPU: {result['gpu']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
