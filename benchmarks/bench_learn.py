"""Benchmark of ``cryopose train`` / ``cryopose predict`` (writes benchmarks/results/learn.json,
or learn_heldout.json with ``--heldout``).

10,000 particles simulated from a map, SNR 0.1, CTF with defocus 1-2.5 µm, origins up to
``--max-shift`` Å: by default the bundled map (EMD-1832, 64 px, 5.7 Å/px, origins up to
10 Å); ``--heldout`` takes the 70S ribosome of ../shared/data/relion_projections_70s
(64 px, taken at 5.0 Å/px as benchmarks/bench_global.py takes it: its header's 1.0 Å/px would make
the ribosome 46 Å across; origins up to 4 Å), a map the bundled data never show; ``--map`` and
``--apix`` any other. Each estimator trains on the first 8,000 (of which the job holds out
10% for its validation curve) for ``--epochs`` (default: cryopose train's) or a
``--minutes`` budget, and predicts the other 2,000, as the commands do (files in, files
out). Reported per estimator: epochs, training minutes, median and mean angular error, the
fraction under 5/10/15/20/30 deg, the median origin error, inference particles/s (the
predict job's own figure: reading, preparing and predicting), the Spearman correlation of
the uncertainty (minus cryoposeConfidence) with the error, the median and mean error of the
most confident 75%, the chance level and whether training flagged the model at it; the
machine's load average before and after. With ``--refine`` the predicted poses are then
refined locally against the true map (``cryopose refine``'s defaults) and the errors
measured again.

    python benchmarks/bench_learn.py [--heldout] [--epochs N | --minutes M] [--models grid forum] [--refine] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryopose.evaluate.pose_errors import (
    confident_subset_statistics,
    error_statistics,
    pose_errors,
    spearman_correlation,
)
from cryopose.io import read_particles, write_star
from cryopose.io.mrc import ParticleImages, read_map, write_map
from cryopose.jobs.predict import PredictSettings, run_predict
from cryopose.jobs.refine import RefineSettings, run_refine
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.jobs.train import TrainJobSettings, run_train
from cryopose.learn.augment import AugmentSettings
from cryopose.learn.models import default_network
from cryopose.learn.preprocess import DEFAULT_IMAGE_SIZE, ImageSettings
from cryopose.learn.train import DEFAULT_EPOCHS, TrainSettings

from common import machine, print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"
HELDOUT_MAP = ROOT.parent / "shared" / "data" / "relion_projections_70s" / "clean70SRibosome_vol_64_fourier_cropped.mrc"


def _errors(star: Path, truth) -> dict:
    pred = read_particles(star)
    p = pred.to_tensors(ctf=False)
    t = truth.to_tensors(ctf=False)
    e = pose_errors(p.rotations, t.rotations, "C1", p.shifts_angstrom, t.shifts_angstrom)
    ang = torch.rad2deg(e.angular)
    stats = error_statistics(ang, thresholds=(5, 10, 15, 20, 30))
    out = {
        "median_deg": round(stats["median"], 2),
        "mean_deg": round(stats["mean"], 2),
        **{f"under_{k}_deg": round(v, 3) for k, v in stats["fraction_below"].items()},
        "origin_median_angstrom": round(float(e.shift.median()), 2),
    }
    if "cryoposeConfidence" in pred.table.columns:
        conf = torch.tensor(pred.table["cryoposeConfidence"].to_numpy(dtype=np.float64))
        out["spearman_uncertainty_vs_error"] = round(spearman_correlation(-conf, ang), 3)
        best = confident_subset_statistics(ang, conf, 0.75)
        out["confident_75_median_deg"] = round(best["median"], 2)
        out["confident_75_mean_deg"] = round(best["mean"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="1,000 particles, 3 epochs per estimator (a smoke run)")
    p.add_argument("--heldout", action="store_true", help="the 70S ribosome map at 5 Å/px, origins up to 4 Å")
    p.add_argument("--map", type=Path, default=None, help="map to simulate from [default: the bundled EMD-1832]")
    p.add_argument(
        "--apix", type=float, default=None, help="pixel size of the map (Å) [default: 5.7, or 5.0 with --heldout]"
    )
    p.add_argument(
        "--max-shift", type=float, default=None, help="largest origin (Å) [default: 10, or 4 with --heldout]"
    )
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per estimator [default: {DEFAULT_EPOCHS}]")
    p.add_argument("--minutes", type=float, default=None, help="a time budget per estimator instead of --epochs")
    p.add_argument("--models", nargs="+", default=["grid", "forum"], choices=["grid", "forum"])
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refine", action="store_true", help="also refine the predicted poses locally and report again")
    p.add_argument("--out", default=None, help="write the JSON here instead of benchmarks/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    map_path = args.map or (HELDOUT_MAP if args.heldout else MAP)
    apix = args.apix or (5.0 if args.heldout else 5.7)
    map_name = map_path.name
    max_shift = args.max_shift if args.max_shift is not None else (4.0 if args.heldout else 10.0)
    n = args.n or (1000 if args.quick else 10000)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick and not args.minutes else None)
    n_train = int(0.8 * n)
    load_before = os.getloadavg()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume, _ = read_map(map_path)  # the map taken at ``apix`` (not resampled to it)
        write_map(tmp / "map.mrc", volume, apix)
        map_path = tmp / "map.mrc"
        run_simulate(
            map_path,
            tmp / "sim",
            SimulateSettings(n=n, snr=0.1, defocus=(1.0, 2.5), max_shift=max_shift, seed=0),
            device=args.device,
        )
        everything = read_particles(tmp / "sim" / "particles.star")
        box = int(ParticleImages(everything).image_shape[0])
        write_star(everything.subset(np.arange(n_train)), tmp / "train.star")
        test = everything.subset(np.arange(n_train, n))
        write_star(test, tmp / "test.star")
        for kind in args.models:
            network = default_network(kind)
            settings = TrainJobSettings(
                train=TrainSettings(
                    network=network, epochs=epochs, minutes=args.minutes, batch_size=64
                ),  # default epochs
                image=ImageSettings(image_size=args.image_size, ctf_correction="phase_flip"),
                augment=AugmentSettings(in_plane=True),
                val_fraction=0.1,
            )
            t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            summary = run_train(tmp / "train.star", tmp / f"model_{kind}", settings, device=args.device)
            train_seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
            model = summary["models"][0]
            pred = run_predict(
                tmp / f"model_{kind}" / "model.pt",
                tmp / "test.star",
                tmp / f"pred_{kind}",
                PredictSettings(),
                device=args.device,
            )
            row = {
                "estimator": kind,
                "epochs": model["epochs"],
                "train_min": round(train_seconds / 60, 1),
                "train_cpu_min": round(cpu_seconds / 60, 1),
                "load_1min_at_start": round(load0, 2),
                **_errors(tmp / f"pred_{kind}" / "particles.star", test),
                "predict_per_s": round(pred["particles_per_second"], 0),
                "chance_median_deg": round(model["chance_median_deg"], 2),
                "at_chance": model["at_chance"],
            }
            if args.refine:
                t1 = time.perf_counter()
                run_refine(
                    tmp / f"pred_{kind}" / "particles.star",
                    map_path,
                    tmp / f"refined_{kind}",
                    None,
                    RefineSettings(),
                    device=args.device,
                )
                refined = _errors(tmp / f"refined_{kind}" / "particles.star", test)
                row.update(
                    {
                        "refined_median_deg": refined["median_deg"],
                        "refined_mean_deg": refined["mean_deg"],
                        "refined_origin_median_angstrom": refined["origin_median_angstrom"],
                        "refine_seconds": round(time.perf_counter() - t1, 0),
                    }
                )
            rows.append(row)
            results[kind] = {
                **row,
                "validation_best": model["best"],
                "best_epoch": model["best_epoch"],
                "chance_threshold_deg": model["chance_threshold_deg"],
            }
            print_table([row], list(row))
    columns = [
        "estimator",
        "epochs",
        "train_min",
        "median_deg",
        "mean_deg",
        "under_5_deg",
        "under_10_deg",
        "under_20_deg",
        "under_30_deg",
        "origin_median_angstrom",
        "predict_per_s",
        "spearman_uncertainty_vs_error",
        "confident_75_median_deg",
        "confident_75_mean_deg",
        "at_chance",
    ] + (["refined_median_deg", "refined_mean_deg"] if args.refine else [])
    print()
    print_table(rows, columns)
    data = {
        "benchmark": "learn_heldout" if args.heldout else "learn",
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "setup": {
            "map": map_name,
            "particles": n,
            "train": n_train,
            "test": n - n_train,
            "box": box,
            "pixel_size": apix,
            "snr": 0.1,
            "defocus_um": [1.0, 2.5],
            "max_origin_angstrom": max_shift,
            "image_size": args.image_size,
            "epochs": epochs or {k: DEFAULT_EPOCHS[k] for k in args.models},
            "minutes_per_estimator": args.minutes,
            "device": args.device,
            "ctf_correction": "phase_flip",
        },
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(__import__("json").dumps(data, indent=2) + "\n")
    elif not args.quick:
        print("wrote", write_results(data["benchmark"], data))


if __name__ == "__main__":
    main()
