"""Benchmark of poses without poses: ``cryopose refine --global`` beside local refinement and
RELION (writes benchmarks/results/global.json).

The map is one no test refines or trains on: the 70S ribosome of ASPIRE's tests, Fourier-
cropped to 64 px (shared/data/relion_projections_70s). Its header says 1.0 Å/px, which would
make the ribosome 46 Å across; a 70S ribosome is about 250 Å, so it is taken at 5.0 Å/px
(box 320 Å, the ribosome about 230 Å, Nyquist 10 Å); ``--map``/``--apix`` take another.

Particles: ``--n`` (2,000) uniform poses, origins uniform in a disc of 4 Å, CTF with defocus
1-2.5 µm (300 kV, Cs 2.7 mm, 10% amplitude contrast), projected with their CTF by RELION's
``relion_project`` where it is installed (an independent projector; else by ``cryopose
simulate``), then white Gaussian noise at SNR 0.1 (cryopose's definition: the variance of the
signal inside a circle of 0.8 of the box over that of the noise). The two projectors are
compared on the first 64 particles (correlation of the noise-free images, in the JSON).

Arms (each a separate process; CPU seconds are user + sys of it and its children):

- ``global``: ``cryopose refine --global`` of a star with CTF only (no angles, no origins),
  from the map low-passed to ``--ini-high`` (its defaults otherwise); ``global_1pass`` the
  same with ``--global-passes 1``;
- ``local``: ``cryopose refine`` (defaults: Gaussian prior) from perturbed poses: 75% turned by
  an isotropic Gaussian rotation vector (median 4 deg), 25% by 8-12 deg (uniform; beyond the
  6 deg of ``--sigma-angle``), origins moved by N(0, 1.5 Å) per axis; ``local_wall`` the
  same with ``--prior wall`` (the hard 6 deg limit of before); ``from_truth`` the same
  refinement started at the true poses (what the data allow);
- ``relion``: ``relion_refine_mpi --auto_refine --split_random_halves`` of the CTF-only star
  from the same low-passed reference (``mpirun -np 3``, ``--j 1``; the command line is in the
  JSON), where RELION is installed (``--no-relion`` skips it);
- ``predict``: with ``--model PATH``, ``cryopose predict`` of the CTF-only star, then
  ``cryopose refine`` of its output.

Per arm: angular error (geodesic, reduced over the symmetry group) median and mean, fraction
under 2 deg, median origin error, CPU and wall seconds, the FSC 0.143 of its half maps and
of its map against the true map (both by cryopose's FSC, unmasked).

    python benchmarks/bench_global.py [--quick] [--n 2000] [--threads 2] [--model model.pt] [--no-relion]

RELION's auto-refine of 2,000 particles takes hours on 2 cores: ``--relion-minutes M`` stops it after
M minutes and scores its last finished iteration (said in the JSON), and ``--arms relion --merge``
adds that arm to the results of an earlier run of the cryopose arms on the same data.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryopose.geometry.distances import rotation_distance
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.filters import lowpass_volume
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.simulation import add_noise, clean_particle_images
from cryopose.io import read_particles, write_star
from cryopose.io.atomic import read_json
from cryopose.io.mrc import read_map, write_map, write_stack
from cryopose.jobs.refine import INI_HIGH
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.particles import ParticleSet
from cryopose.reconstruct.fsc import fourier_shell_correlation

from common import machine, print_table, write_results

MAP = Path("/work/shared/data/relion_projections_70s/clean70SRibosome_vol_64_fourier_cropped.mrc")
APIX = 5.0
SNR = 0.1
MAX_ORIGIN = 4.0  # Å
POSE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]


# ----------------------------------------------------------------------------- running an arm
def _timed(command: list[str], env: dict, log: Path, cwd: Path | None = None, limit_s: float | None = None) -> dict:
    """Run ``command``; its wall seconds and the CPU seconds (user + sys) of it and its children.
    With ``limit_s`` the command is stopped (SIGTERM to its process group) after that many seconds
    and ``stopped`` is True."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    stopped = False
    with open(log, "w") as f:
        proc = subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        polled: dict[int, float] = {}  # CPU seconds of each process of its session, last seen
        while proc.poll() is None:
            polled.update(_session_cpu_seconds(proc.pid))
            if limit_s is not None and time.perf_counter() - t0 > limit_s:
                stopped = True
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                break
            time.sleep(2.0)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:]
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # processes stopped by the limit are not all reaped by their parents: then the polled figure counts
    cpu = max(cpu, sum(polled.values()))
    return {"cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "stopped": stopped}


def _session_cpu_seconds(session: int) -> dict[int, float]:
    """CPU seconds (user + sys) of each live process of ``session``, from /proc (Linux; else empty)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ... utime(11) stime(12)
            found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def _cryopose(args: list, env: dict, log: Path) -> dict:
    timing = _timed([sys.executable, "-m", "cryopose", *map(str, args)], env, log)
    del timing["stopped"]
    return timing


# ----------------------------------------------------------------------------- data
def _simulate(tmp: Path, map_path: Path, n: int, seed: int, use_relion: bool) -> tuple[Path, dict]:
    """The particles (tmp/data/particles.star with the true poses) and how they were made."""
    run_simulate(
        map_path, tmp / "sim", SimulateSettings(n=n, snr=SNR, defocus=(1.0, 2.5), max_shift=MAX_ORIGIN, seed=seed)
    )
    truth = read_particles(tmp / "sim" / "particles.star")
    info = {"simulator": "cryopose simulate (projection, CTF and noise)"}
    if not use_relion:
        return tmp / "sim" / "particles.star", info
    (tmp / "project").mkdir()
    command = [
        "relion_project",
        "--i",
        str(map_path),
        "--ang",
        str(tmp / "sim" / "particles.star"),
        "--ctf",
        "--angpix",
        f"{float(truth.pixel_size[0]):g}",
        "--o",
        str(tmp / "project" / "clean"),
    ]
    subprocess.run(command, check=True, capture_output=True)
    import mrcfile

    with mrcfile.open(tmp / "project" / "clean.mrcs", permissive=True) as m:
        clean = torch.from_numpy(np.asarray(m.data, dtype=np.float32).copy())
    # the two projectors on the same poses, origins and CTF
    t = truth.to_tensors()[:64]
    volume, apix = read_map(map_path)
    ctf = CTFParameters(**{k: v.float() for k, v in vars(t.ctf).items()})
    ours = clean_particle_images(
        fourier_volume(torch.from_numpy(volume).float()),
        t.rotations.float(),
        (t.shifts_angstrom / apix).float(),
        ctf,
        apix,
    )
    agreement = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours.numpy(), clean[:64].numpy())]
    noisy = add_noise(clean, SNR, torch.Generator().manual_seed(seed + 1))
    (tmp / "data").mkdir()
    write_stack(tmp / "data" / "particles.mrcs", noisy.numpy(), apix)
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(len(truth))]
    ps = replace(truth.with_columns(rlnImageName=names), source_dir=(tmp / "data").resolve())
    write_star(ps, tmp / "data" / "particles.star")
    info = {
        "simulator": "relion_project (RELION 3.1: projection with CTF and origins); white Gaussian noise added "
        "by this script at cryopose's SNR definition",
        "relion_project_command": " ".join(command).replace(str(tmp), "TMP"),
        "projector_agreement_first_64": {
            "min_correlation": round(min(agreement), 5),
            "median_correlation": round(float(np.median(agreement)), 5),
        },
    }
    return tmp / "data" / "particles.star", info


def _without_poses(ps: ParticleSet, path: Path) -> Path:
    write_star(ps.with_table(ps.table.drop(columns=[c for c in POSE_COLUMNS if c in ps.table.columns])), path)
    return path


def _perturbed(ps: ParticleSet, path: Path, seed: int) -> tuple[Path, np.ndarray]:
    """Poses turned as the module docstring says; returns the star and which particles start far (> 6 deg)."""
    t = ps.to_tensors()
    n = len(ps)
    g = torch.Generator().manual_seed(seed)
    sigma = math.radians(4.0) / 1.5382  # the median of a chi(3) variable is 1.5382
    vec = sigma * torch.randn(n, 3, generator=g, dtype=torch.float64)
    far = torch.zeros(n, dtype=torch.bool)
    far[torch.randperm(n, generator=g)[: n // 4]] = True
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    angle = torch.deg2rad(8.0 + 4.0 * torch.rand(n, generator=g, dtype=torch.float64))
    vec[far] = (angle[:, None] * axis / axis.norm(dim=-1, keepdim=True))[far]
    start = axis_angle_to_matrix(vec) @ t.rotations
    origins = t.shifts_angstrom + 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    write_star(ps.with_poses(start.numpy(), origins.numpy()), path)
    return path, far.numpy()


# ----------------------------------------------------------------------------- scoring an arm
def _errors(result: ParticleSet, truth: ParticleSet, sym: str, subsets: dict[str, np.ndarray] | None = None) -> dict:
    """Errors of ``result`` against ``truth``, the particles matched by image (stack file and index)."""
    order = {(Path(p).name, i): k for k, (p, i) in enumerate(zip(truth.image_paths, truth.image_indices))}
    idx = np.array([order[(Path(p).name, i)] for p, i in zip(result.image_paths, result.image_indices)])
    if len(set(idx.tolist())) != len(truth):
        raise RuntimeError(f"the result has {len(set(idx.tolist()))} of the {len(truth)} particles")
    got = result.to_tensors(ctf=False)
    true = truth.to_tensors(ctf=False)[idx]
    err = torch.rad2deg(rotation_distance(got.rotations, true.rotations, sym))
    origin = (got.shifts_angstrom - true.shifts_angstrom).norm(dim=-1)

    def stats(sel) -> dict:
        e = err[sel]
        return {
            "n": int(len(e)),
            "median_deg": round(float(e.median()), 3),
            "mean_deg": round(float(e.mean()), 3),
            "under_2_deg": round(float((e < 2).double().mean()), 4),
            "over_20_deg": round(float((e > 20).double().mean()), 4),
            "origin_median_angstrom": round(float(origin[sel].median()), 3),
        }

    out = stats(torch.ones(len(err), dtype=torch.bool))
    for name, mask in (subsets or {}).items():
        out[name] = stats(torch.from_numpy(mask[idx]))
    return out


def _maps(half1: Path, half2: Path, full: Path, true_map: np.ndarray, apix: float) -> dict:
    h1, h2, m = (torch.from_numpy(read_map(p)[0]) for p in (half1, half2, full))
    halves = fourier_shell_correlation(h1, h2, apix)
    truth = fourier_shell_correlation(m, torch.from_numpy(true_map), apix)
    return {
        "half_map_fsc_0143_angstrom": round(halves.resolution_0143, 2),
        "map_vs_truth_fsc_0143_angstrom": round(truth.resolution_0143, 2),
    }


def _cryopose_arm(
    name: str,
    args: list,
    out: Path,
    env: dict,
    truth: ParticleSet,
    true_map: np.ndarray,
    apix: float,
    sym: str,
    subsets: dict | None = None,
) -> dict:
    timing = _cryopose(["refine", *args, "--out", out], env, out.parent / f"{name}.log")
    summary = read_json(out / "summary.json")
    arm = {
        "command": "cryopose refine " + " ".join(map(str, args)),
        **timing,
        **_errors(read_particles(out / "particles.star"), truth, sym, subsets),
        **_maps(out / "half1.mrc", out / "half2.mrc", out / "map.mrc", true_map, apix),
        "iterations": len(summary["iterations"]) - 1,
        "stop_reason": summary["stop_reason"],
        "at_chance": summary["at_chance"],
        "chance_resolution_0143": summary["chance_resolution_0143"],
    }
    return arm


def _relion_arm(
    tmp: Path,
    star: Path,
    reference: Path,
    ini_high: float,
    diameter: float,
    sym: str,
    max_shift: float,
    apix: float,
    truth: ParticleSet,
    true_map: np.ndarray,
    env: dict,
    limit_minutes: float | None,
) -> dict:
    out = tmp / "relion"
    out.mkdir()
    step = max_shift / apix / 2
    command = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "3",
        "relion_refine_mpi",
        "--o",
        str(out / "run"),
        "--auto_refine",
        "--split_random_halves",
        "--i",
        str(star),
        "--ref",
        str(reference),
        "--firstiter_cc",
        "--ini_high",
        f"{ini_high:g}",
        "--dont_combine_weights_via_disc",
        "--pool",
        "30",
        "--pad",
        "2",
        "--ctf",
        "--particle_diameter",
        f"{diameter:g}",
        "--flatten_solvent",
        "--zero_mask",
        "--oversampling",
        "1",
        "--healpix_order",
        "2",
        "--auto_local_healpix_order",
        "4",
        "--offset_range",
        f"{max_shift / apix:g}",
        "--offset_step",
        f"{step:g}",
        "--sym",
        sym,
        "--low_resol_join_halves",
        "40",
        "--norm",
        "--scale",
        "--j",
        "1",
    ]
    # RELION resolves image names from where it runs
    timing = _timed(
        command, env, tmp / "relion.log", cwd=tmp, limit_s=None if limit_minutes is None else 60 * limit_minutes
    )
    stopped = timing.pop("stopped")
    described = " ".join(command).replace(str(tmp), "TMP")
    if stopped:
        described += f" (stopped after {limit_minutes:g} min, unfinished: its last iteration is scored)"
    return {
        "command": described,
        **timing,
        **_relion_iteration(out, tmp, truth, true_map, apix, sym, final=not stopped),
    }


def _relion_iteration(
    folder: Path, tmp: Path, truth: ParticleSet, true_map: np.ndarray, apix: float, sym: str, final: bool
) -> dict:
    """Scores of a RELION run in ``folder``: its final output (``final``), else its last finished iteration
    (run_itNNN_*; the map scored against the truth is then the average of the two half maps)."""
    if final:
        result = replace(read_particles(folder / "run_data.star"), source_dir=tmp)
        return {
            **_errors(result, truth, sym),
            **_maps(
                folder / "run_half1_class001_unfil.mrc",
                folder / "run_half2_class001_unfil.mrc",
                folder / "run_class001.mrc",
                true_map,
                apix,
            ),
            "iterations": len(list(folder.glob("run_it*_data.star"))) - 1,
            "converged": True,
        }
    data = sorted(folder.glob("run_it*_data.star"))
    if len(data) < 2:
        raise SystemExit(f"{folder}: RELION finished no iteration; give it more time (--relion-minutes)")
    last = data[-1]
    it = last.name[len("run_it") : len("run_it") + 3]
    result = replace(read_particles(last), source_dir=tmp)
    half1, half2 = (folder / f"run_it{it}_half{h}_class001.mrc" for h in (1, 2))
    full = tmp / "relion_last_average.mrc"
    write_map(full, 0.5 * (read_map(half1)[0] + read_map(half2)[0]), apix)
    return {
        **_errors(result, truth, sym),
        **_maps(half1, half2, full, true_map, apix),
        "iterations": int(it),
        "converged": False,
    }


def _relion_earlier_arm(
    folder: Path, tmp: Path, truth: ParticleSet, true_map: np.ndarray, apix: float, sym: str
) -> dict:
    """The last iteration a RELION run of the same particles left in ``folder`` (run_it*_data.star),
    scored as the ``relion`` arm is: for a run too long to repeat within one session. Its particles
    must be this run's (the same stack bytes, checked); its time is the wall time between its first
    and last files (CPU time unknown)."""
    import hashlib

    stacks = [folder.parent / "data" / "particles.mrcs", tmp / "data" / "particles.mrcs"]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in stacks]
    if digests[0] is None or digests[0] != digests[1]:
        raise SystemExit(f"{folder}: its particles ({stacks[0]}) are not this run's; run with the same --n and --seed")
    final = (folder / "run_data.star").exists()
    scores = _relion_iteration(folder, folder.parent, truth, true_map, apix, sym, final=final)
    files = list(folder.glob("run_*"))
    first = min(p.stat().st_mtime for p in folder.glob("run_it000_*"))
    header = (folder / "run_it000_optimiser.star").read_text().splitlines()
    command = next((line[2:].strip() for line in header if line.startswith("# --o ")), "unknown")
    return {
        "command": "mpirun -np 3 relion_refine_mpi "
        + command.replace(str(folder.parent), "TMP")
        + " (an earlier run of these particles)"
        + ("" if final else ", stopped unfinished"),
        "cpu_seconds": None,
        "wall_seconds": round(max(p.stat().st_mtime for p in files) - first, 1),
        **scores,
    }


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="300 particles, global and local arms only (a smoke run)")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--map", type=Path, default=MAP)
    p.add_argument(
        "--apix",
        type=float,
        default=None,
        help=f"pixel size of --map [default: {APIX} for the ribosome, else its header's]",
    )
    p.add_argument("--sym", default="C1")
    p.add_argument("--ini-high", type=float, default=INI_HIGH)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each cryopose process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--model", type=Path, default=None, help="a model.pt: add the arm cryopose predict -> refine")
    p.add_argument("--no-relion", action="store_true", help="skip RELION even where it is installed")
    p.add_argument(
        "--relion-from",
        type=Path,
        default=None,
        help="score the last iteration of an earlier RELION run of the same particles in this folder "
        "(WORK/relion of a --keep WORK run) instead of running RELION",
    )
    p.add_argument(
        "--relion-minutes",
        type=float,
        default=None,
        help="stop RELION after this many minutes and score its last finished iteration [default: no limit]",
    )
    p.add_argument("--arms", default=None, help="comma-separated arms to run [default: all that apply]")
    p.add_argument(
        "--merge",
        action="store_true",
        help="add these arms to the results JSON already written (same data, checked) instead of replacing it",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write the JSON here instead of benchmarks/results/global.json"
    )
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = p.parse_args()
    n = args.n or (300 if args.quick else 2000)
    has_relion = all(shutil.which(x) for x in ("relion_refine_mpi", "relion_project", "mpirun"))
    arms = (
        args.arms.split(",")
        if args.arms
        else (
            ["global", "local"]
            if args.quick
            else ["global", "global_1pass", "local", "local_wall", "from_truth"]
            + (["relion"] if (has_relion and not args.no_relion) or args.relion_from else [])
            + (["predict"] if args.model else [])
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_global_")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        volume, header_apix = read_map(args.map)
        apix = args.apix or (APIX if args.map == MAP else header_apix)
        box = volume.shape[-1]
        map_path = tmp / "map.mrc"
        write_map(map_path, volume, apix)
        low = lowpass_volume(torch.from_numpy(volume), args.ini_high, apix)
        write_map(tmp / "reference_lowpass.mrc", low.numpy(), apix)
        star, data_info = _simulate(tmp, map_path, n, args.seed, has_relion and not args.no_relion)
        truth = read_particles(star)
        ctf_only = _without_poses(truth, tmp / "ctf_only.star")
        local_start, far = _perturbed(truth, tmp / "perturbed.star", args.seed + 2)
        common = ["--map", map_path, "--sym", args.sym, "--ini-high", f"{args.ini_high:g}", "--device", args.device]
        results = {}
        for arm in arms:
            print(f"running {arm} ...", flush=True)
            if arm == "global":
                results[arm] = _cryopose_arm(
                    arm, ["--global", "--particles", ctf_only, *common], tmp / arm, env, truth, volume, apix, args.sym
                )
            elif arm == "global_1pass":
                results[arm] = _cryopose_arm(
                    arm,
                    ["--global", "--global-passes", "1", "--particles", ctf_only, *common],
                    tmp / arm,
                    env,
                    truth,
                    volume,
                    apix,
                    args.sym,
                )
            elif arm in ("local", "local_wall"):
                extra = ["--prior", "wall"] if arm == "local_wall" else []
                results[arm] = _cryopose_arm(
                    arm,
                    ["--particles", local_start, *common, *extra],
                    tmp / arm,
                    env,
                    truth,
                    volume,
                    apix,
                    args.sym,
                    {"start_within_6_deg": ~far, "start_beyond_6_deg": far},
                )
            elif arm == "from_truth":
                results[arm] = _cryopose_arm(
                    arm, ["--particles", star, *common], tmp / arm, env, truth, volume, apix, args.sym
                )
            elif arm == "relion" and args.relion_from is not None:
                results[arm] = _relion_earlier_arm(args.relion_from, tmp, truth, volume, apix, args.sym)
            elif arm == "relion":
                results[arm] = _relion_arm(
                    tmp,
                    ctf_only,
                    tmp / "reference_lowpass.mrc",
                    args.ini_high,
                    0.9 * box * apix,
                    args.sym,
                    5.0,
                    apix,
                    truth,
                    volume,
                    env,
                    args.relion_minutes,
                )
            elif arm == "predict":
                timing = _cryopose(
                    [
                        "predict",
                        "--model",
                        args.model,
                        "--particles",
                        ctf_only,
                        "--out",
                        tmp / "predicted",
                        "--device",
                        args.device,
                    ],
                    env,
                    tmp / "predict.log",
                )
                predicted = _errors(read_particles(tmp / "predicted" / "particles.star"), truth, args.sym)
                arm_result = _cryopose_arm(
                    arm,
                    ["--particles", tmp / "predicted" / "particles.star", *common],
                    tmp / "predicted_refined",
                    env,
                    truth,
                    volume,
                    apix,
                    args.sym,
                )
                arm_result["predicted"] = predicted
                arm_result["predict_cpu_seconds"] = timing["cpu_seconds"]
                arm_result["cpu_seconds"] = round(arm_result["cpu_seconds"] + timing["cpu_seconds"], 1)
                arm_result["wall_seconds"] = round(arm_result["wall_seconds"] + timing["wall_seconds"], 1)
                results[arm] = arm_result
            else:
                raise SystemExit(f"unknown arm {arm!r}")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "poses without poses: cryopose refine --global beside local refinement and RELION auto-refine",
        "machine": machine(),
        "device": args.device,
        "torch_threads_per_process": args.threads,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "data": {
            "map": str(args.map),
            "pixel_size": apix,
            "box": int(box),
            "n": n,
            "snr": SNR,
            "defocus_um": [1.0, 2.5],
            "max_origin_angstrom": MAX_ORIGIN,
            "symmetry": args.sym,
            "seed": args.seed,
            **data_info,
            "local_start": "75%: Gaussian rotation vector (median 4 deg); 25%: 8-12 deg (uniform), "
            "origins + N(0, 1.5 A) per axis",
        },
        "settings": {"ini_high": args.ini_high, "relion": "relion_refine_mpi 3.1, mpirun -np 3 (2 workers), --j 1"},
        "arms": results,
    }
    target = args.out or Path(__file__).parent / "results" / "global.json"
    if args.merge and target.exists():
        import json

        earlier = json.loads(target.read_text())
        if earlier["data"] != result["data"]:
            raise SystemExit(f"{target} holds another data set; run with its --n, --seed and --map, or without --merge")
        earlier.setdefault(
            "runs",
            [
                {
                    key: earlier[key]
                    for key in ("machine", "load_average_before", "load_average_after", "total_wall_seconds")
                }
                | {"arms": list(earlier["arms"])}
            ],
        )
        earlier["runs"].append(
            {key: result[key] for key in ("machine", "load_average_before", "load_average_after", "total_wall_seconds")}
            | {"arms": list(results)}
        )
        earlier["arms"].update(results)
        result = earlier
        results = result["arms"]
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "arm": name,
                "median (deg)": r["median_deg"],
                "mean (deg)": r["mean_deg"],
                "< 2 deg": r["under_2_deg"],
                "> 20 deg": r["over_20_deg"],
                "origin (A)": r["origin_median_angstrom"],
                "CPU s": r["cpu_seconds"],
                "wall s": r["wall_seconds"],
                "half-map FSC (A)": r["half_map_fsc_0143_angstrom"],
                "vs truth (A)": r["map_vs_truth_fsc_0143_angstrom"],
            }
        )
        for sub in ("start_within_6_deg", "start_beyond_6_deg"):
            if sub in r:
                rows.append(
                    {
                        "arm": f"  {sub}",
                        "median (deg)": r[sub]["median_deg"],
                        "mean (deg)": r[sub]["mean_deg"],
                        "< 2 deg": r[sub]["under_2_deg"],
                        "> 20 deg": r[sub]["over_20_deg"],
                        "origin (A)": r[sub]["origin_median_angstrom"],
                    }
                )
    print_table(
        rows,
        [
            "arm",
            "median (deg)",
            "mean (deg)",
            "< 2 deg",
            "> 20 deg",
            "origin (A)",
            "CPU s",
            "wall s",
            "half-map FSC (A)",
            "vs truth (A)",
        ],
    )
    print(
        f"data: {result['data']['simulator']}; load {result['load_average_before']} -> {result['load_average_after']}"
    )
    if args.out:
        args.out.write_text(__import__("json").dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    elif not args.quick:
        print(f"wrote {write_results('global', result)}")


if __name__ == "__main__":
    main()
