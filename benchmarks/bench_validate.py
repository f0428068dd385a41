"""Benchmark of ``cryopose validate``'s engine (writes benchmarks/results/validate.json).

Particles per second of the whole validation (search of each particle, search of its
noise-free good reference, scores) at 64 px (bundled EMD-1832 map, 5.7 A/px), 5 deg sampling,
C1, max shift 5 px, SNR 0.1 with CTF; the fraction of the brute-force grid's correlations the
engine computes; and the agreement of its top-xi lists with brute force on a few particles.

    python benchmarks/bench_validate.py [--device cuda] [--n 256] [--brute 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cryopose.align.projection_matching import (
    MatchSettings,
    brute_force_match,
    build_gallery,
    correlation_counts,
    match_images,
)
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import ArrayImages, read_map
from cryopose.jobs.validate import ValidationOptions, validate_particles
from cryopose.particles import ParticleSet

from common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--brute", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    vol, apix = read_map(ROOT / "src" / "cryopose" / "data" / "emd_1832.map")
    g = torch.Generator().manual_seed(0)
    draw = draw_simulation_parameters(args.n, g, max_shift_angstrom=4 * apix)
    clean = clean_particle_images(
        fourier_volume(torch.as_tensor(vol)),
        draw.rotations.float(),
        (draw.shifts_angstrom / apix).float(),
        draw.ctf,
        apix,
    )
    imgs = add_noise(clean, 0.1, g)
    ctf = {
        k: getattr(draw.ctf, k).numpy()
        for k in ("defocus_u", "defocus_v", "defocus_angle", "phase_shift", "bfactor", "scale")
    }
    ctf.update(voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1)
    ps = ParticleSet.from_arrays(
        draw.rotations.numpy(),
        draw.shifts_angstrom.numpy(),
        apix,
        64,
        [f"{i + 1:06d}@x.mrcs" for i in range(args.n)],
        ctf,
    )
    opts = ValidationOptions(match=MatchSettings(angular_sampling=5.0, max_shift=5 * apix, symmetry="C1"))

    # warm-up on a few particles (gallery build and first-call costs are reported apart)
    validate_particles(ps.subset(np.arange(8)), ArrayImages(imgs.numpy()[:8]), [(vol, apix)], opts, device=dev)
    t0 = time.perf_counter()
    cols, summary = validate_particles(ps, ArrayImages(imgs.numpy()), [(vol, apix)], opts, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0

    settings = MatchSettings(angular_sampling=5.0, max_shift=5 * apix)
    t1 = time.perf_counter()
    gallery = build_gallery(vol, apix, settings, dev)
    gallery_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    match_images(gallery, imgs, draw.ctf)
    search_s = time.perf_counter() - t2
    counts = correlation_counts(gallery)

    k = args.brute
    fast = match_images(gallery, imgs[:k], draw.ctf[:k])
    t3 = time.perf_counter()
    brute, _ = brute_force_match(gallery, imgs[:k], draw.ctf[:k])
    brute_s = time.perf_counter() - t3
    top1 = float((fast.direction_index[:, 0] == brute.direction_index[:, 0]).float().mean())
    overlap = float(
        np.mean(
            [
                len(set(a.tolist()) & set(b.tolist())) / gallery.settings.xi
                for a, b in zip(fast.direction_index, brute.direction_index)
            ]
        )
    )
    score_ratio = float((fast.scores / brute.scores).mean())

    result = {
        "machine": machine(),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "gpu": "none lent in this session" if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "case": {
            "box": 64,
            "pixel_size": apix,
            "angular_sampling_deg": 5.0,
            "sym": "C1",
            "max_shift_px": 5,
            "snr": 0.1,
            "ctf": True,
            "resolution_A": 8.0,
            "n_particles": args.n,
        },
        "validate_particles_per_second": args.n / elapsed,
        "search_only_particles_per_second": args.n / search_s,
        "gallery_build_seconds": gallery_s,
        "correlations_per_particle": counts,
        "brute_force": {
            "particles": k,
            "seconds": brute_s,
            "top1_agreement": top1,
            "top_xi_overlap": overlap,
            "mean_score_ratio_engine_over_brute": score_ratio,
        },
        "Q_on_benchmark_set": summary["Q"],
    }
    write_results("validate", result)
    rows = [
        ("machine", f"{result['machine']['cpu']} ({result['machine']['cpu_count']} cores)"),
        ("device / threads", f"{result['device']} / {result['threads']}"),
        ("GPU", result["gpu"]),
        ("validate particles/s", f"{result['validate_particles_per_second']:.1f}"),
        ("search-only particles/s", f"{result['search_only_particles_per_second']:.1f}"),
        ("gallery build (s)", f"{gallery_s:.2f}"),
        ("correlations: brute force / engine", f"{counts['brute_force']} / {counts['engine_total']}"),
        (
            "fraction computed (all / exact full-band)",
            f"{counts['fraction_total']:.3f} / {counts['fraction_exact']:.5f}",
        ),
        ("top-1 agreement with brute force", f"{top1:.2f} ({k} particles)"),
        ("top-xi overlap with brute force", f"{overlap:.2f}"),
        ("engine/brute best score ratio", f"{score_ratio:.4f}"),
    ]
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{w}}  {value}")


if __name__ == "__main__":
    main()
