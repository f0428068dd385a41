"""Reconstruction and projection throughput at 64, 128 and 256 px.

Reconstruction: particles/s through CTF computation, shift correction and trilinear
insertion (the per-particle work; the one-off finalisation is reported separately).
Projection: projections/s of the Fourier-slice projector. Baseline in the same run: the
same code fed one particle at a time (no batching), reported as a ratio. GPU figures are
added when CUDA is present.

    python benchmarks/bench_reconstruct.py [--sizes 64 128 256]
"""

from __future__ import annotations

import argparse

import torch

from cryopose.geometry.rotations import random_rotations
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.projection import fourier_volume, project
from cryopose.reconstruct.backproject import FourierAccumulator, finalise_reconstruction, insert_images

from common import machine, print_table, timed, write_results


def ctf_for(n: int, device) -> CTFParameters:
    gen = torch.Generator().manual_seed(0)
    return CTFParameters.from_mapping(
        {
            "defocus_u": 1e4 + 1e4 * torch.rand(n, generator=gen),
            "defocus_v": 1e4 + 1e4 * torch.rand(n, generator=gen),
            "defocus_angle": 180 * torch.rand(n, generator=gen),
            "voltage": 300.0,
            "spherical_aberration": 2.7,
            "amplitude_contrast": 0.1,
        },
        device=device,
    )


def bench(size: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    batch = {64: 512, 128: 256, 256: 64}.get(size, 128)
    gen = torch.Generator().manual_seed(size)
    rots = random_rotations(batch, gen).float().to(device)
    images = torch.randn(batch, size, size, generator=gen).to(device)
    shifts = (torch.rand(batch, 2, generator=gen) * 6 - 3).to(device)
    ctf = ctf_for(batch, device)
    acc = FourierAccumulator.zeros(size, device=device)
    insert_images(acc, images[:4], rots[:4], shifts[:4], ctf[:4], 1.5)  # warm-up
    t_batched = timed(lambda: insert_images(acc, images, rots, shifts, ctf, 1.5), 2, sync)
    n_single = min(batch, 32)

    def one_at_a_time():
        for i in range(n_single):
            insert_images(acc, images[i : i + 1], rots[i : i + 1], shifts[i : i + 1], ctf[i : i + 1], 1.5)

    t_single = timed(one_at_a_time, 1, sync)
    t_final = timed(lambda: finalise_reconstruction(acc), 1, sync)
    vol = torch.randn(size, size, size, generator=gen).to(device)
    fv = fourier_volume(vol)
    project(fv, rots[:4])
    t_proj = timed(lambda: project(fv, rots), 2, sync)
    t_proj_single = timed(lambda: [project(fv, rots[i : i + 1]) for i in range(n_single)], 1, sync)
    rec_rate = batch / t_batched
    single_rate = n_single / t_single
    return {
        "size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reconstruct_particles_per_s": round(rec_rate, 1),
        "reconstruct_unbatched_particles_per_s": round(single_rate, 1),
        "reconstruct_speedup_vs_unbatched": round(rec_rate / single_rate, 2),
        "finalise_s": round(t_final, 2),
        "project_per_s": round(batch / t_proj, 1),
        "project_unbatched_per_s": round(n_single / t_proj_single, 1),
        "project_speedup_vs_unbatched": round((batch / t_proj) / (n_single / t_proj_single), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [bench(s, d) for d in devices for s in args.sizes]
    print_table(
        rows,
        [
            "device",
            "size",
            "threads",
            "reconstruct_particles_per_s",
            "reconstruct_speedup_vs_unbatched",
            "finalise_s",
            "project_per_s",
            "project_speedup_vs_unbatched",
        ],
    )
    target = next((r for r in rows if r["device"] == "cpu" and r["size"] == 128), None)
    result = {
        "benchmark": "reconstruct and project throughput",
        "machine": machine(),
        "gpu": "measured" if torch.cuda.is_available() else "no GPU was available for this run",
        "target": "at least 300 particles/s reconstructed at 128 px on 2 CPU cores",
        "target_met": None if target is None else target["reconstruct_particles_per_s"] >= 300,
        "rows": rows,
    }
    print(f"wrote {write_results('reconstruct', result)}")


if __name__ == "__main__":
    main()
