"""Benchmark of ``cryopose refine`` (writes benchmarks/results/refine.json).

2,000 particles simulated from the bundled map (EMD-1832, 64 px, 5.7 Å/px), SNR 0.1,
CTF with defocus 1-2.5 µm, origins up to 10 Å. Starting poses: the true ones turned by an
isotropic Gaussian rotation vector whose norm has a median of 4 deg, origins moved by a
Gaussian of 1.5 Å per axis, and 10% of the particles given uniformly random rotations.
The refinement runs as the command does (files in, files out) with its default settings.

Reported: angular error (geodesic) before and after, median and mean, for all particles and
for the 90% that did not start at random; median origin error; particles per second of the
search (all iterations); wall time; and the FSC 0.143 resolution against the true map of
the refined map and of the map reconstructed from the true poses (same particles, same
reconstruction code).

    python benchmarks/bench_refine.py [--quick] [--device cuda] [--threads 2] [--n 2000]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from cryopose.geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from cryopose.io import ParticleImages, read_particles, write_star
from cryopose.io.mrc import read_map
from cryopose.jobs.inputs import half_set_labels
from cryopose.jobs.reconstruct import ReconstructSettings, reconstruct_halves
from cryopose.jobs.refine import RefineSettings, run_refine
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.reconstruct.fsc import fourier_shell_correlation

from common import machine, print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"


def _deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(geodesic_distance(a.double(), b.double()))


def _stats(err: torch.Tensor) -> dict:
    return {"median": round(float(err.median()), 3), "mean": round(float(err.mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="400 particles, at most 2 iterations (a smoke run)")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--score", default="ncc", choices=["ncc", "likelihood"])
    p.add_argument("--min-improvement", type=float, default=RefineSettings().min_improvement)
    p.add_argument("--out", default=None, help="write the JSON here instead of benchmarks/results/refine.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (400 if args.quick else 2000)
    iterations = args.iterations or (2 if args.quick else RefineSettings().iterations)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run_simulate(
            MAP,
            tmp / "sim",
            SimulateSettings(n=n, snr=0.1, defocus=(1.0, 2.5), max_shift=10.0, seed=0),
            device=args.device,
        )
        truth = read_particles(tmp / "sim" / "particles.star")
        true = truth.to_tensors()
        g = torch.Generator().manual_seed(1)
        sigma = math.radians(4.0) / 1.5382  # the median of a chi(3) variable is 1.5382
        start = axis_angle_to_matrix(sigma * torch.randn(n, 3, generator=g, dtype=torch.float64)) @ true.rotations
        is_random = torch.zeros(n, dtype=torch.bool)
        is_random[torch.randperm(n, generator=g)[: n // 10]] = True
        start[is_random] = random_rotations(int(is_random.sum()), g).double()
        origins = true.shifts_angstrom + 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        write_star(truth.with_poses(start.numpy(), origins.numpy()), tmp / "start.star")
        simulate_seconds = time.perf_counter() - t0

        settings = RefineSettings(iterations=iterations, score=args.score, min_improvement=args.min_improvement)
        t1 = time.perf_counter()
        summary = run_refine(tmp / "start.star", MAP, tmp / "refined", settings=settings, device=args.device)
        wall = time.perf_counter() - t1
        refined = read_particles(tmp / "refined" / "particles.star").to_tensors()

        # the map from the true poses, same halves and reconstruction code
        volume, apix = read_map(MAP)
        images = ParticleImages(truth)
        halves, _ = half_set_labels(truth, 0)
        _, _, true_map = reconstruct_halves(true, images, halves, apix, ReconstructSettings(), args.device)
        refined_map = torch.from_numpy(read_map(tmp / "refined" / "map.mrc")[0])
        vol = torch.from_numpy(volume)
        fsc_refined = fourier_shell_correlation(refined_map, vol, apix)
        fsc_true_poses = fourier_shell_correlation(true_map.cpu(), vol, apix)
        start_map_res = summary["iterations"][0]["map_vs_reference_0143"]
    keep = ~is_random
    before, after = _deg(start, true.rotations), _deg(refined.rotations, true.rotations)
    shift_before = (origins - true.shifts_angstrom).norm(dim=-1)
    shift_after = (refined.shifts_angstrom - true.shifts_angstrom).norm(dim=-1)
    its = summary["iterations"][1:]
    search_seconds = sum(r["search_seconds"] for r in its)
    rate = n * len(its) / search_seconds
    result = {
        "benchmark": "cryopose refine: gold-standard local refinement from perturbed poses",
        "machine": machine(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU was available for this run",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "data": {
            "n": n,
            "box": 64,
            "pixel_size": apix,
            "snr": 0.1,
            "defocus_um": [1.0, 2.5],
            "max_origin_angstrom": 10.0,
            "start": "Gaussian rotation vector (median 4 deg), origins + N(0, 1.5 A) per axis, 10% random rotations",
        },
        "settings": {
            "sigma_angle": settings.sigma_angle,
            "max_shift": settings.max_shift,
            "iterations_max": iterations,
            "min_improvement": settings.min_improvement,
            "score": settings.score,
            "symmetry": settings.symmetry,
        },
        "targets": {"median_error_after_deg": 2.0, "particles_per_second": 15.0},
        "angular_error_deg": {
            "all": {"before": _stats(before), "after": _stats(after)},
            "non_random_90pct": {"before": _stats(before[keep]), "after": _stats(after[keep])},
            "random_10pct": {"before": _stats(before[is_random]), "after": _stats(after[is_random])},
        },
        "origin_error_angstrom_non_random": {"before": _stats(shift_before[keep]), "after": _stats(shift_after[keep])},
        "iterations_run": len(its),
        "best_iteration": summary["best_iteration"],
        "stop_reason": summary["stop_reason"],
        "half_map_fsc_0143_per_iteration": [round(r["resolution_0143"], 2) for r in summary["iterations"]],
        "search_particles_per_second": round(rate, 1),
        "search_seconds": round(search_seconds, 1),
        "refine_wall_seconds": round(wall, 1),
        "simulate_seconds": round(simulate_seconds, 1),
        "fsc_0143_vs_true_map": {
            "start_poses": round(start_map_res, 2),
            "refined": round(fsc_refined.resolution_0143, 2),
            "true_poses": round(fsc_true_poses.resolution_0143, 2),
        },
        "fsc_05_vs_true_map": {
            "refined": round(fsc_refined.resolution_05, 2),
            "true_poses": round(fsc_true_poses.resolution_05, 2),
        },
    }
    result["targets_met"] = {
        "median_error_after_deg": result["angular_error_deg"]["all"]["after"]["median"] <= 2.0,
        "particles_per_second": rate >= 15.0,
    }
    rows = [
        {
            "set": k,
            "median before": v["before"]["median"],
            "mean before": v["before"]["mean"],
            "median after": v["after"]["median"],
            "mean after": v["after"]["mean"],
        }
        for k, v in result["angular_error_deg"].items()
    ]
    print_table(rows, ["set", "median before", "mean before", "median after", "mean after"])
    for key in (
        "origin_error_angstrom_non_random",
        "half_map_fsc_0143_per_iteration",
        "search_particles_per_second",
        "refine_wall_seconds",
        "fsc_0143_vs_true_map",
        "stop_reason",
        "load_average_before",
        "load_average_after",
    ):
        print(f"{key}: {result[key]}")
    if args.out:
        Path(args.out).write_text(__import__("json").dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    elif not args.quick:
        print(f"wrote {write_results('refine', result)}")


if __name__ == "__main__":
    main()
