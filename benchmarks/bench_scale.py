"""Scale-out on Dask: validate and reconstruct throughput with 1 and 2 workers (1 thread
each) against the plain single process (1 torch thread), on this machine
(writes benchmarks/results/scale.json).

Each figure is a whole job on files (``run_validate`` / ``run_reconstruct``: read the star,
compute, write the outputs), best of ``--repeats`` rounds. Each round starts each cluster on its own, warms it with one
untimed run of each job, and times each job on it right after the same job in the single
process; its start-up is reported apart. This machine's speed drifts by tens of percent
from minute to minute, so the ratios to the single process are medians of these pairs'
ratios (runs minutes apart never compared). Cases: 64 px particles simulated from the bundled
EMD-1832 map (5.7 Å/px, SNR 0.1, CTF, origins up to 4 px); validate at 5°, C1, max shift
5 px, chunks of 16; reconstruct C1 with CTF, chunks of 256.

    python benchmarks/bench_scale.py [--validate-n 256] [--reconstruct-n 20000] [--repeats 4]

Besides wall time, the CPU seconds of the driving process plus its workers are reported:
on a shared machine the wall-time ratios mostly measure the load, while the CPU-time
ratio still measures what the cluster path costs on top of the work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from cryopose.jobs.allocator import ALLOCATOR_SETTINGS, tune_allocator

tune_allocator()  # as the command line does, before torch is imported (its workers get the same)

import numpy as np
import torch

from cryopose.jobs.executor import open_executor
from cryopose.jobs.reconstruct import run_reconstruct
from cryopose.jobs.simulate import run_simulate
from cryopose.jobs.validate import run_validate

from common import BUNDLED_APIX as APIX
from common import BUNDLED_MAP as MAP
from common import machine, print_table, scale_reconstruction, scale_simulation, scale_validation, write_results


def cpu_seconds(executor) -> float:
    """CPU time used so far by this process and, with an executor, by its workers."""
    total = time.process_time()
    if executor is not None:
        total += sum(executor.client.run(time.process_time).values())
    return total


def measure(job, executor, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the workers) of one run of ``job``."""
    c = cpu_seconds(executor)
    t = time.perf_counter()
    job(out)
    wall = time.perf_counter() - t
    cpu = cpu_seconds(executor) - c
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--validate-n", type=int, default=256)
    parser.add_argument("--reconstruct-n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(1)  # the single process gets what one worker gets
    tmp = Path(tempfile.mkdtemp(prefix="cryopose_bench_scale_"))
    try:
        sim = scale_simulation(max(args.validate_n, args.reconstruct_n))
        run_simulate(MAP, tmp / "sim", sim)
        star = tmp / "sim" / "particles.star"
        # the validate set: the first validate-n particles of the same stack
        from cryopose.io import read_particles
        from cryopose.io.star import write_star

        ps = read_particles(star)
        write_star(ps.subset(list(range(args.validate_n))), tmp / "sim" / "validate.star")
        vstar = tmp / "sim" / "validate.star"

        def validate(executor):
            return lambda out: run_validate([MAP], vstar, out, scale_validation(), executor=executor)

        def reconstruct(executor):
            return lambda out: run_reconstruct(star, out, scale_reconstruction(), executor=executor)

        # The machine's speed drifts, so each cluster run is paired with a single-process
        # run just before it and the ratios are medians of the per-pair ratios. Only the
        # cluster being measured is running (an idle second cluster's workers and scheduler
        # threads take CPU from the first); each is started afresh every round and warmed up
        # with one full untimed run of each job (the first tasks import torch and cryopose
        # and grow the worker's heap).
        keys = ("validate_s", "validate_cpu_s", "reconstruct_s", "reconstruct_cpu_s")
        rounds = {w: {k: [] for k in keys} for w in args.workers}
        single = {w: {k: [] for k in keys} for w in args.workers}  # the run paired with each
        startup = {w: float("inf") for w in args.workers}
        for _ in range(args.repeats):
            for w in args.workers:
                t = time.perf_counter()
                with open_executor(workers=w, torch_threads=1) as ex:
                    startup[w] = min(startup[w], time.perf_counter() - t)
                    for name, job in (("validate", validate), ("reconstruct", reconstruct)):
                        measure(job(ex), ex, tmp / "warm")
                        for target, e in ((single[w], None), (rounds[w], ex)):
                            wall, cpu = measure(job(e), e, tmp / name)
                            target[f"{name}_s"].append(wall)
                            target[f"{name}_cpu_s"].append(cpu)
        rounds[0] = {k: sum((single[w][k] for w in args.workers), []) for k in keys}
        startup[0] = 0.0
        best = {w: {k: min(v) for k, v in r.items()} for w, r in rounds.items()}

        def ratio(w: int, key: str) -> float:
            """Median over pairs of configuration w's figure over the single process's."""
            if w == 0:
                return 1.0
            return float(np.median(np.array(rounds[w][key]) / np.array(single[w][key])))

        rows = [
            {
                "path": "single process" if w == 0 else f"LocalCluster, {w} x 1 thread",
                "workers": w,
                "startup_s": startup[w],
                **best[w],
            }
            for w in sorted(rounds)
        ]
        for r in rows:
            r["validate_particles_per_s"] = round(args.validate_n / r["validate_s"], 2)
            r["reconstruct_particles_per_s"] = round(args.reconstruct_n / r["reconstruct_s"], 1)
            w = r["workers"]
            r["validate_vs_single"] = round(1 / ratio(w, "validate_s"), 3)
            r["reconstruct_vs_single"] = round(1 / ratio(w, "reconstruct_s"), 3)
            r["validate_cpu_vs_single"] = round(ratio(w, "validate_cpu_s"), 3)
            r["reconstruct_cpu_vs_single"] = round(ratio(w, "reconstruct_cpu_s"), 3)
            for k in ("startup_s", *keys):
                r[k] = round(r[k], 2)
        by_w = {r["workers"]: r for r in rows}
        result = {
            "machine": machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "load_average_1min_at_start": load_at_start,
            "malloc_settings": {name: value for name, _, value in ALLOCATOR_SETTINGS},
            "note": (
                "the machine was otherwise idle at the start (1-minute load average below 1); its speed still drifts, "
                "hence the ratios are medians of paired ratios"
                if load_at_start < 1.0
                else "the cores were shared with other jobs: wall times are inflated and noisy, and 2 workers cannot "
                "show their speed-up while other jobs use the cores; re-run on an idle machine"
            ),
            "case": {
                "box": 64,
                "pixel_size": APIX,
                "snr": 0.1,
                "ctf": True,
                "validate": {"n": args.validate_n, "angular_sampling_deg": 5.0, "max_shift_px": 5, "chunk_size": 16},
                "reconstruct": {"n": args.reconstruct_n, "sym": "C1", "chunk_size": 256},
                "torch_threads_per_process": 1,
                "repeats": args.repeats,
            },
            "rows": rows,
            "rounds_s": {str(w): {k: [round(x, 2) for x in v] for k, v in r.items()} for w, r in rounds.items()},
        }
        if 1 in by_w and 2 in by_w:
            result["two_over_one_worker"] = {
                n: round(ratio(1, f"{n}_s") / ratio(2, f"{n}_s"), 3) for n in ("validate", "reconstruct")
            }
        if 1 in by_w:
            result["overhead_one_worker_vs_single_process_pct"] = {
                "validate": round(100 * (ratio(1, "validate_s") - 1), 1),
                "reconstruct": round(100 * (ratio(1, "reconstruct_s") - 1), 1),
            }
            result["cpu_overhead_one_worker_vs_single_process_pct"] = {
                "validate": round(100 * (by_w[1]["validate_cpu_vs_single"] - 1), 1),
                "reconstruct": round(100 * (by_w[1]["reconstruct_cpu_vs_single"] - 1), 1),
            }
        write_results("scale", result)
        print_table(
            rows,
            [
                "path",
                "startup_s",
                "validate_particles_per_s",
                "validate_vs_single",
                "reconstruct_particles_per_s",
                "reconstruct_vs_single",
            ],
        )
        print_table(
            rows, ["path", "validate_cpu_s", "validate_cpu_vs_single", "reconstruct_cpu_s", "reconstruct_cpu_vs_single"]
        )
        for key in (
            "two_over_one_worker",
            "overhead_one_worker_vs_single_process_pct",
            "cpu_overhead_one_worker_vs_single_process_pct",
        ):
            if key in result:
                print(key, result[key])
        print("load average (1 min):", result["load_average_1min_at_end"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
