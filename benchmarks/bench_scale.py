"""Scale-out on Dask: validate and reconstruct throughput with 1 and 2 workers (1 thread
each) against the plain single process (1 torch thread), on this machine
(writes benchmarks/results/scale.json).

Each figure is a whole job on files (``run_validate`` / ``run_reconstruct``: read the star,
compute, write the outputs), best of ``--repeats``, with the cluster already started; the
cluster's start-up is reported apart. Cases: 64 px particles simulated from the bundled
EMD-1832 map (5.7 Å/px, SNR 0.1, CTF, origins up to 4 px); validate at 5°, C1, max shift
5 px, chunks of 16; reconstruct C1 with CTF, chunks of 256.

    python benchmarks/bench_scale.py [--validate-n 96] [--reconstruct-n 8000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from common import machine, print_table, write_results
from cryopose.align.projection_matching import MatchSettings
from cryopose.jobs.executor import open_executor
from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.jobs.validate import ValidationOptions, run_validate

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"
APIX = 5.7


def validation_options() -> ValidationOptions:
    return ValidationOptions(match=MatchSettings(angular_sampling=5.0, max_shift=5 * APIX), chunk_size=16)


def best_time(job, out_root: Path, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats):
        out = out_root / f"run{i}"
        t = time.perf_counter()
        job(out)
        best = min(best, time.perf_counter() - t)
        shutil.rmtree(out, ignore_errors=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--validate-n", type=int, default=96)
    parser.add_argument("--reconstruct-n", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the single process gets what one worker gets
    tmp = Path(tempfile.mkdtemp(prefix="cryopose_bench_scale_"))
    try:
        sim = SimulateSettings(n=max(args.validate_n, args.reconstruct_n), snr=0.1, max_shift=4 * APIX, seed=0)
        run_simulate(MAP, tmp / "sim", sim)
        star = tmp / "sim" / "particles.star"
        # the validate set: the first validate-n particles of the same stack
        from cryopose.io import read_particles
        from cryopose.io.star import write_star

        ps = read_particles(star)
        write_star(ps.subset(list(range(args.validate_n))), tmp / "sim" / "validate.star")
        vstar = tmp / "sim" / "validate.star"

        def validate(executor):
            return lambda out: run_validate([MAP], vstar, out, validation_options(), executor=executor)

        def reconstruct(executor):
            return lambda out: run_reconstruct(star, out, ReconstructSettings(chunk_size=256), executor=executor)

        rows = []
        single = {"validate": best_time(validate(None), tmp / "v0", args.repeats),
                  "reconstruct": best_time(reconstruct(None), tmp / "r0", args.repeats)}
        rows.append({"path": "single process", "workers": 0, "startup_s": 0.0,
                     "validate_s": single["validate"], "reconstruct_s": single["reconstruct"]})
        for w in args.workers:
            t = time.perf_counter()
            with open_executor(workers=w, torch_threads=1) as ex:
                startup = time.perf_counter() - t
                # warm-up: the first task on each worker imports torch and cryopose
                run_validate([MAP], vstar, tmp / f"warm{w}", validation_options(), executor=ex)
                rows.append({"path": f"LocalCluster, {w} x 1 thread", "workers": w, "startup_s": startup,
                             "validate_s": best_time(validate(ex), tmp / f"v{w}", args.repeats),
                             "reconstruct_s": best_time(reconstruct(ex), tmp / f"r{w}", args.repeats)})
        for r in rows:
            r["validate_particles_per_s"] = round(args.validate_n / r["validate_s"], 2)
            r["reconstruct_particles_per_s"] = round(args.reconstruct_n / r["reconstruct_s"], 1)
            r["validate_vs_single"] = round(single["validate"] / r["validate_s"], 3)
            r["reconstruct_vs_single"] = round(single["reconstruct"] / r["reconstruct_s"], 3)
            for k in ("startup_s", "validate_s", "reconstruct_s"):
                r[k] = round(r[k], 2)
        by_w = {r["workers"]: r for r in rows}
        result = {
            "machine": machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "note": "2 CPU cores shared with other engineers' jobs: figures are inflated and noisy; re-run on an idle machine",
            "case": {"box": 64, "pixel_size": APIX, "snr": 0.1, "ctf": True, "validate": {"n": args.validate_n, "angular_sampling_deg": 5.0,
                     "max_shift_px": 5, "chunk_size": 16}, "reconstruct": {"n": args.reconstruct_n, "sym": "C1", "chunk_size": 256},
                     "torch_threads_per_process": 1, "repeats": args.repeats},
            "rows": rows,
        }
        if 1 in by_w and 2 in by_w:
            result["two_over_one_worker"] = {"validate": round(by_w[1]["validate_s"] / by_w[2]["validate_s"], 3),
                                             "reconstruct": round(by_w[1]["reconstruct_s"] / by_w[2]["reconstruct_s"], 3)}
        if 1 in by_w:
            result["overhead_one_worker_vs_single_process_pct"] = {
                "validate": round(100 * (by_w[1]["validate_s"] / single["validate"] - 1), 1),
                "reconstruct": round(100 * (by_w[1]["reconstruct_s"] / single["reconstruct"] - 1), 1)}
        write_results("scale", result)
        print_table(rows, ["path", "startup_s", "validate_particles_per_s", "validate_vs_single",
                           "reconstruct_particles_per_s", "reconstruct_vs_single"])
        for key in ("two_over_one_worker", "overhead_one_worker_vs_single_process_pct"):
            if key in result:
                print(key, result[key])
        print("load average (1 min):", result["load_average_1min_at_end"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
