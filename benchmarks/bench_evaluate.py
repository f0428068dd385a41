"""Benchmark of ``cryopose evaluate`` (writes benchmarks/results/evaluate.json).

Simulates particles of the bundled map (EMD-1832, 64 px at 5.7 Å/px, SNR 0.1, CTF 1-2.5 µm,
origins up to 10 Å, a random half split in rlnRandomSubset) and evaluates a ladder of
synthetic predictors the CESPED way (each half predicted by a predictor "trained" on the
other half): the true poses; every pose rotated by exactly 2, 5 or 10 deg about a random
axis; 10% or 30% of the poses replaced by uniformly random rotations (with a confidence
drawn from U(0.4, 1) for kept poses and U(0, 0.6) for random ones, so that the confidence
metrics have something to find). Synthetic predictors keep the true origins. The truth of
a simulation is exact, so rlnMaxValueProbDistribution is absent (1) and wMAnE = MAnE.

Prints a CESPED-Table-2-like table (MAnE, wMAnE, median, PCC, dPCC, FSC resolutions and
dFSCR, masked and unmasked), and beside it the agreement of V with the noise-free map the
particles were simulated from (PCC and FSC 0.143 resolution, masked): GT and V are made
from the same noisy images, so at small N their shared noise dominates PCC(GT, V) and
FSC(GT, V) (identical poses share all of it); the simulation map shows the quality itself.
Then the throughput: pose errors per second (C1, O, I) and
whole evaluations (pose errors, the V0/V1 reconstructions, masks and comparisons; the GT
half maps are reconstructed once and reused from the evaluation's checkpoint).

A predictor is a function ``predict(train, test, rng) -> ParticleSet``: given the
particles of the training half (ParticleSet with poses, CTF and images) and those of the
other half, it returns the test half with predicted rlnAngleRot/Tilt/Psi (and, if it
predicts them, rlnOriginX/YAngst and cryoposeConfidence). Add one to ``PREDICTORS`` (or
pass ``predictors=`` to :func:`run`) to benchmark a learned estimator on the same set.

    python benchmarks/bench_evaluate.py [--quick] [--n 2000] [--device cuda] [--learned MINUTES]

``--learned M`` adds the two estimators of ``cryopose train`` (grid and forum, M minutes
of training per half, 32 px) to the ladder.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import cryopose
from cryopose.evaluate import compare_maps, pose_errors
from cryopose.geometry.rotations import axis_angle_to_matrix, random_rotations
from cryopose.io import ParticleImages, read_map, read_particles, write_star
from cryopose.jobs.evaluate import EvaluateSettings, evaluate_predictions
from cryopose.particles import ParticleSet

from common import machine, print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"

Predictor = Callable[[ParticleSet, ParticleSet, np.random.Generator], ParticleSet]


def truth_predictor(train: ParticleSet, test: ParticleSet, rng: np.random.Generator) -> ParticleSet:
    """The ground-truth poses themselves."""
    return test.with_poses(rotations=test.rotations)


def perturbed(degrees: float) -> Predictor:
    """Every pose A -> A R(u, degrees) with u uniform on the sphere: an angular error of exactly ``degrees``."""

    def predict(train: ParticleSet, test: ParticleSet, rng: np.random.Generator) -> ParticleSet:
        axis = rng.normal(size=(len(test), 3))
        axis *= math.radians(degrees) / np.linalg.norm(axis, axis=1, keepdims=True)
        turn = axis_angle_to_matrix(torch.from_numpy(axis)).numpy()
        return test.with_poses(rotations=test.rotations @ turn)

    return predict


def randomised(fraction: float) -> Predictor:
    """``fraction`` of the poses replaced by uniformly random rotations; confidence U(0.4, 1)
    for the others and U(0, 0.6) for the random ones."""

    def predict(train: ParticleSet, test: ParticleSet, rng: np.random.Generator) -> ParticleSet:
        rot = test.rotations.copy()
        k = int(round(fraction * len(test)))
        pick = rng.permutation(len(test))[:k]
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        rot[pick] = random_rotations(k, gen).numpy()
        conf = rng.uniform(0.4, 1.0, len(test))
        conf[pick] = rng.uniform(0.0, 0.6, k)
        return test.with_poses(rotations=rot).with_columns(cryoposeConfidence=conf)

    return predict


PREDICTORS: dict[str, Predictor] = {
    "true poses": truth_predictor,
    "perturbed 2°": perturbed(2.0),
    "perturbed 5°": perturbed(5.0),
    "perturbed 10°": perturbed(10.0),
    "10% random": randomised(0.10),
    "30% random": randomised(0.30),
}


def learned(kind: str, minutes: float, image_size: int = 32) -> Predictor:
    """A real estimator: ``cryopose train`` on the training half (``minutes``, 32 px, the
    command's defaults otherwise), then ``cryopose predict`` of the other half (poses,
    origins, confidence), through files as a user runs them."""

    def predict(train: ParticleSet, test: ParticleSet, rng: np.random.Generator) -> ParticleSet:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_star(train, tmp / "train.star")
            write_star(test, tmp / "test.star")
            cryopose.train(
                tmp / "train.star",
                tmp / "model",
                model=kind,
                minutes=minutes,
                image_size=image_size,
                seed=int(rng.integers(1 << 30)),
            )
            cryopose.predict(tmp / "model" / "model.pt", tmp / "test.star", tmp / "pred")
            pred = read_particles(tmp / "pred" / "particles.star")
            return test.with_poses(pred.rotations, pred.shifts_angstrom).with_columns(
                cryoposeConfidence=pred.table["cryoposeConfidence"].to_numpy(dtype=float)
            )

    return predict


def simulate_truth(folder: Path, n: int, seed: int = 0) -> Path:
    """Simulated particles with a random half split; returns the truth STAR."""
    cryopose.simulate(BUNDLED, folder, n=n, snr=0.1, max_shift=10.0, seed=seed)
    ps = read_particles(folder / "particles.star")
    halves = np.where(np.arange(n) % 2 == 0, 1, 2)
    np.random.default_rng(seed).shuffle(halves)
    write_star(ps.with_columns(rlnRandomSubset=halves), folder / "truth.star")
    return folder / "truth.star"


def predict_halves(predictor: Predictor, truth: ParticleSet, seed: int) -> list[ParticleSet]:
    """CESPED's protocol: half 1 predicted by a predictor trained on half 2, and vice versa."""
    halves = truth.half_sets
    h1, h2 = truth.subset(halves == 1), truth.subset(halves == 2)
    rng = np.random.default_rng(seed)
    return [predictor(h2, h1, rng), predictor(h1, h2, rng)]


def pose_error_throughput(n: int, device: torch.device) -> dict:
    """Pose errors per second on ``n`` random poses for C1, O and I (the symmetry minimum)."""
    gen = torch.Generator().manual_seed(1)
    a = random_rotations(n, gen).to(device)
    b = random_rotations(n, gen).to(device)
    shift = torch.zeros(n, 2, dtype=torch.float64, device=device)
    out = {}
    for sym in ("C1", "O", "I"):
        pose_errors(a[:10], b[:10], sym)
        t = time.perf_counter()
        pose_errors(a, b, sym, shift, shift)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[sym] = n / (time.perf_counter() - t)
    return out


def run(n: int, device: torch.device, predictors: dict[str, Predictor] | None = None, seed: int = 0) -> dict:
    predictors = predictors or PREDICTORS
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        truth = read_particles(simulate_truth(folder / "sim", n, seed))
        simulate_s = time.perf_counter() - t
        images = ParticleImages(truth)
        settings = EvaluateSettings(symmetry="C1")
        clean = torch.from_numpy(read_map(BUNDLED)[0]).to(device)
        rows, details = [], {}
        first = True
        for i, (name, predictor) in enumerate(predictors.items()):
            t = time.perf_counter()
            preds = predict_halves(predictor, truth, seed + 1 + i)
            predict_s = time.perf_counter() - t
            t = time.perf_counter()
            ev = evaluate_predictions(
                truth, preds, images, settings, device=device, checkpoint_dir=folder, signature={"benchmark": n}
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            m = ev.metrics
            pose, maps = m["pose"], m["maps"]
            row = {
                "predictor": name,
                "MAnE": pose["MAnE_deg"],
                "wMAnE": pose["wMAnE_deg"],
                "median": pose["median_angular_error_deg"],
                "spearman": (pose["confidence"] or {}).get("spearman_confidence_vs_error"),
                "seconds": seconds,
                "predict_seconds": predict_s,
                "includes_gt_reconstruction": first,
            }
            for kind in ("unmasked", "masked"):
                c = maps[kind]
                row[kind] = {
                    k: c[k]
                    for k in (
                        "pcc_gt_v",
                        "pcc_v0_v1",
                        "pcc_gt0_gt1",
                        "delta_pcc",
                        "fscr_0143_gt_v",
                        "fscr_05_gt_v",
                        "fscr_0143_v0_v1",
                        "fscr_05_v0_v1",
                        "fscr_0143_gt0_gt1",
                        "fscr_05_gt0_gt1",
                        "delta_fscr_0143",
                        "delta_fscr_05",
                    )
                }
            h = {k: torch.from_numpy(v).to(device) for k, v in ev.maps.items()}
            vs_map = compare_maps(
                clean, h["gt_half1"], h["gt_half2"], h["pred_half1"], h["pred_half2"], maps["pixel_size"], h["mask"]
            )
            row["vs_simulation_map_masked"] = {
                "pcc": vs_map.pcc["gt_v"],
                "fscr_0143": vs_map.fsc["gt_v"].resolution_0143,
                "fscr_05": vs_map.fsc["gt_v"].resolution_05,
            }
            rows.append(row)
            details[name] = {
                "fraction_below": pose["angular_error_deg"]["fraction_below"],
                "direction_median": pose["direction_error_deg"]["median"],
                "in_plane_median": pose["in_plane_error_deg"]["median"],
                "most_confident": (pose["confidence"] or {}).get("most_confident"),
            }
            first = False
        repeat = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
        return {
            "machine": machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "device": str(device),
            "threads": torch.get_num_threads(),
            "case": {
                "map": "EMD-1832 (bundled)",
                "box": 64,
                "pixel_size": 5.7,
                "n_particles": n,
                "snr": 0.1,
                "ctf": True,
                "max_shift_angstrom": 10.0,
                "symmetry": "C1",
                "mask": "automatic (soft_mask_from_map defaults)",
            },
            "simulate_seconds": simulate_s,
            "rows": rows,
            "details": details,
            "throughput": {
                "evaluation_particles_per_second": n / float(np.median(repeat)),
                "evaluation_with_gt_reconstruction_seconds": rows[0]["seconds"],
                "pose_errors_per_second": pose_error_throughput(200_000 if n >= 1000 else 50_000, device),
            },
        }


def _fmt(v, digits=2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="particles simulated (2000)")
    p.add_argument("--quick", action="store_true", help="600 particles: a quick check of the ladder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--learned",
        type=float,
        default=None,
        metavar="MINUTES",
        help="also train the grid and forum estimators for MINUTES per half and evaluate their predictions",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 600 if args.quick else args.n
    predictors = dict(PREDICTORS)
    if args.learned:
        for kind in ("grid", "forum"):
            predictors[f"{kind} (trained {args.learned:g} min/half)"] = learned(kind, args.learned)
    result = run(n, torch.device(args.device), predictors)
    result["learned_minutes_per_half"] = args.learned
    rows = result["rows"]
    gt = rows[0]
    for kind in ("unmasked", "masked"):
        c = gt[kind]
        print(
            f"\n{kind}: GT0 vs GT1 PCC {c['pcc_gt0_gt1']:.4f}, FSCR0.143 {c['fscr_0143_gt0_gt1']:.2f} Å, "
            f"FSCR0.5 {c['fscr_05_gt0_gt1']:.2f} Å"
        )
        table = [
            {
                "predictor": r["predictor"],
                "MAnE°": _fmt(r["MAnE"]),
                "wMAnE°": _fmt(r["wMAnE"]),
                "median°": _fmt(r["median"]),
                "PCC(V0,V1)": _fmt(r[kind]["pcc_v0_v1"], 4),
                "PCC(GT,V)": _fmt(r[kind]["pcc_gt_v"], 4),
                "dPCC": _fmt(r[kind]["delta_pcc"], 4),
                "FSCR.143(GT,V)": _fmt(r[kind]["fscr_0143_gt_v"]),
                "dFSCR.143": _fmt(r[kind]["delta_fscr_0143"]),
                "FSCR.5(GT,V)": _fmt(r[kind]["fscr_05_gt_v"]),
                "dFSCR.5": _fmt(r[kind]["delta_fscr_05"]),
                "spearman": _fmt(r["spearman"], 3),
            }
            for r in rows
        ]
        if kind == "masked":
            for t, r in zip(table, rows):
                t["PCC(map,V)"] = _fmt(r["vs_simulation_map_masked"]["pcc"], 4)
                t["FSCR.143(map,V)"] = _fmt(r["vs_simulation_map_masked"]["fscr_0143"])
        print_table(table, list(table[0]))
    tp = result["throughput"]
    print(
        f"\n{n} particles, 64 px, on {result['device']} ({result['threads']} threads, "
        f"load {result['load_average_1min_at_end']:.1f}): "
        f"evaluation {tp['evaluation_particles_per_second']:.0f} particles/s (pose errors + V0/V1 + comparisons), "
        f"first evaluation with the GT half maps {tp['evaluation_with_gt_reconstruction_seconds']:.1f} s; "
        "pose errors/s " + ", ".join(f"{k} {v:,.0f}" for k, v in tp["pose_errors_per_second"].items())
    )
    path = write_results("evaluate" if not args.quick else "evaluate_quick", result)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
