"""cryopose's malloc settings (cryopose.jobs.allocator) against glibc's defaults: validate
and reconstruct wall time and page faults, run in the main thread (the command line) and in
a second thread (where a Dask worker runs its tasks), with 1 and 2 torch threads
(writes benchmarks/results/allocator.json).

Each configuration runs in its own process (the settings are fixed when a process starts):
glibc's defaults, or the environment variables that cryopose gives its Dask workers (the
command line applies the same values with mallopt before it imports torch). The processes
alternate, ``--rounds`` times, and the ratios are medians of the per-round ratios (this
machine's speed drifts). Cases as in bench_scale: 64 px particles simulated from the bundled
EMD-1832 map; validate at 5 deg, max shift 5 px, chunks of 16; reconstruct C1 with CTF.

    python benchmarks/bench_allocator.py [--validate-n 256] [--reconstruct-n 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _child(folder: Path, torch_threads: int, repeats: int) -> dict:
    """In a fresh process: time each job (after one warm-up run) in this thread and in a new one."""
    import torch

    from cryopose.jobs.reconstruct import run_reconstruct
    from cryopose.jobs.validate import run_validate

    from common import BUNDLED_MAP, scale_reconstruction, scale_validation

    torch.set_num_threads(torch_threads)
    jobs = {
        "validate": lambda out: run_validate([BUNDLED_MAP], folder / "validate.star", out, scale_validation()),
        "reconstruct": lambda out: run_reconstruct(folder / "particles.star", out, scale_reconstruction()),
    }

    def measure(job) -> tuple[float, int]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        job(folder / f"out{os.getpid()}")
        wall = time.perf_counter() - t
        shutil.rmtree(folder / f"out{os.getpid()}")
        return wall, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    def in_thread(job) -> tuple[float, int]:
        box: list = []
        thread = threading.Thread(target=lambda: box.append(measure(job)))
        thread.start()
        thread.join()
        return box[0]

    result = {}
    for name, job in jobs.items():
        measure(job)
        for where, run in (("main", measure), ("thread", in_thread)):
            runs = [run(job) for _ in range(repeats)]
            best = min(runs)
            result[f"{name}_{where}"] = {"s": best[0], "page_faults": best[1]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--validate-n", type=int, default=256)
    parser.add_argument("--reconstruct-n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "TORCH_THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(Path(args.child[0]), int(args.child[1]), args.repeats)))
        return

    import numpy as np

    from cryopose.io import read_particles
    from cryopose.io.star import write_star
    from cryopose.jobs.allocator import ALLOCATOR_SETTINGS, allocator_environment
    from cryopose.jobs.simulate import run_simulate

    from common import BUNDLED_APIX, BUNDLED_MAP, machine, print_table, scale_simulation, write_results

    load_at_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="cryopose_bench_allocator_"))
    try:
        n = max(args.validate_n, args.reconstruct_n)
        run_simulate(BUNDLED_MAP, tmp, scale_simulation(n))
        ps = read_particles(tmp / "particles.star")
        write_star(ps.subset(list(range(args.validate_n))), tmp / "validate.star")
        if args.reconstruct_n < n:
            write_star(ps.subset(list(range(args.reconstruct_n))), tmp / "particles_rec.star")
            os.replace(tmp / "particles_rec.star", tmp / "particles.star")
        base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        envs = {"glibc defaults": base, "cryopose settings": {**base, **allocator_environment({})}}
        figures: dict = {}
        for _ in range(args.rounds):
            for threads in (1, 2):
                for label, env in envs.items():
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", str(tmp), str(threads), "--repeats", str(args.repeats)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=Path(__file__).parent,
                    )
                    figures.setdefault((threads, label), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows = []
        for (threads, label), runs in figures.items():
            for case in runs[0]:
                job, where = case.split("_")
                row = {
                    "job": job,
                    "thread": where,
                    "torch_threads": threads,
                    "malloc": label,
                    "s": round(min(r[case]["s"] for r in runs), 2),
                    "page_faults": int(np.median([r[case]["page_faults"] for r in runs])),
                }
                if label == "cryopose settings":
                    ref = figures[(threads, "glibc defaults")]
                    row["speed_vs_defaults"] = round(
                        float(np.median([d[case]["s"] / c[case]["s"] for d, c in zip(ref, runs)])), 3
                    )
                rows.append(row)
        rows.sort(key=lambda r: (r["job"], r["torch_threads"], r["thread"], r["malloc"]))
        print_table(rows, ["job", "torch_threads", "thread", "malloc", "s", "page_faults", "speed_vs_defaults"])
        result = {
            "machine": {**machine(), "torch_threads": "1 and 2 (per row)"},
            "load_average_1min_at_start": load_at_start,
            "load_average_1min_at_end": os.getloadavg()[0],
            "malloc_settings": {name: value for name, _, value in ALLOCATOR_SETTINGS},
            "case": {
                "box": 64,
                "pixel_size": BUNDLED_APIX,
                "validate": {"n": args.validate_n, "angular_sampling_deg": 5.0, "max_shift_px": 5, "chunk_size": 16},
                "reconstruct": {"n": args.reconstruct_n, "sym": "C1", "chunk_size": 256},
                "rounds": args.rounds,
                "repeats": args.repeats,
            },
            "note": (
                "s: best wall time; page_faults: minor page faults of the process during that job, median over "
                "rounds; speed_vs_defaults: median over rounds of the defaults' time over the settings' time"
            ),
            "rows": rows,
        }
        print("wrote", write_results("allocator", result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
