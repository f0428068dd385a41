"""Shared helpers for the benchmark scripts: machine description, result writing, and the
scale-out case that bench_scale and bench_allocator both run."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# The scale-out case: 64 px particles simulated from the bundled EMD-1832 map (5.7 A/px, SNR
# 0.1, CTF, origins up to 4 px); validate at 5 deg, C1, max shift 5 px, chunks of 16;
# reconstruct C1 with CTF, chunks of 256.
BUNDLED_MAP = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"
BUNDLED_APIX = 5.7


def scale_simulation(n: int):
    """SimulateSettings of the scale-out case for ``n`` particles."""
    from cryopose.jobs.simulate import SimulateSettings

    return SimulateSettings(n=n, snr=0.1, max_shift=4 * BUNDLED_APIX, seed=0)


def scale_validation():
    """ValidationOptions of the scale-out case."""
    from cryopose.align.projection_matching import MatchSettings
    from cryopose.jobs.validate import ValidationOptions

    return ValidationOptions(match=MatchSettings(angular_sampling=5.0, max_shift=5 * BUNDLED_APIX), chunk_size=16)


def scale_reconstruction():
    """ReconstructSettings of the scale-out case."""
    from cryopose.jobs.reconstruct import ReconstructSettings

    return ReconstructSettings(chunk_size=256)


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    return info


def timed(fn, repeats: int = 3, sync=None) -> float:
    """Best wall time (s) of ``repeats`` calls of fn()."""
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
