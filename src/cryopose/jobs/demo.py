"""Data the demo makes from its simulated particles: a mixed set for validation and a moved
map for alignment (files in the demo's folders)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryopose.align.map_alignment import apply_transform, transform_poses
from cryopose.geometry.rotations import random_rotations
from cryopose.io.mrc import ParticleImages, read_map, write_map, write_stack
from cryopose.io.star import read_star, write_star

__all__ = ["make_mixed_set", "make_moved_map", "split_particles", "pose_error_summary"]


def make_mixed_set(sim: Path, out: Path, n_good: int, n_noise: int, n_wrong: int, seed: int) -> np.ndarray:
    """Good particles, pure-noise images and true particles with random poses, taken from
    sim/particles.star and written as out/mixed.star + out/mixed.mrcs; returns each
    particle's kind ("good", "noise", "wrong_pose")."""
    ps = read_star(sim / "particles.star")
    total = n_good + n_noise + n_wrong
    subset = ps.subset(np.arange(total))
    images = ParticleImages(subset).read(np.arange(total))
    rng = np.random.default_rng(seed)
    kinds = np.array(["good"] * n_good + ["noise"] * n_noise + ["wrong_pose"] * n_wrong)
    noise = kinds == "noise"
    images[noise] = rng.normal(0.0, images[~noise].std(), size=images[noise].shape).astype(np.float32)
    rotations = subset.rotations.copy()
    wrong = kinds == "wrong_pose"
    rotations[wrong] = random_rotations(int(wrong.sum()), torch.Generator().manual_seed(seed)).numpy()
    names = [f"{i + 1:06d}@mixed.mrcs" for i in range(total)]
    mixed = subset.with_poses(rotations=rotations).with_columns(rlnImageName=names, cryoposeDemoKind=kinds)
    mixed = replace(mixed, source_dir=Path(out).resolve())  # the new names resolve from out
    write_stack(out / "mixed.mrcs", images, float(ps.pixel_size[0]))
    write_star(mixed, out / "mixed.star")
    return kinds


def make_moved_map(true_map: Path, sim: Path, out: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate, shift and hand-flip the map into out/moved.mrc and move the poses of
    sim/particles.star with it into out/moved_particles.star. Returns (the rotation R,
    the transform M = R J, t in Å) with moved(y) = true(M y + t)."""
    volume, apix = read_map(true_map)
    rot = random_rotations(1, torch.Generator().manual_seed(seed + 7))[0].numpy()
    m_true = rot @ np.diag([1.0, 1.0, -1.0])  # improper: a hand flip
    t_true = np.array([4.0, -3.0, 2.5]) * apix
    moved = apply_transform(torch.from_numpy(volume), m_true, t_true, apix)
    write_map(out / "moved.mrc", moved.numpy(), apix)
    ps = read_star(sim / "particles.star")
    rotations, shifts = transform_poses(ps.rotations, ps.shifts_angstrom, m_true, t_true)
    write_star(ps.with_poses(rotations=rotations, shifts_angstrom=shifts), out / "moved_particles.star")
    return rot, m_true, t_true


def split_particles(sim: Path, out: Path, n_train: int) -> tuple[Path, Path]:
    """sim/particles.star split into out/train.star (the first n_train particles) and
    out/test.star (the rest), image names relinked; returns their paths."""
    ps = read_star(sim / "particles.star")
    if not 0 < n_train < len(ps):
        raise ValueError(f"cannot split {len(ps)} particles into {n_train} for training and the rest for testing")
    write_star(ps.subset(np.arange(n_train)), out / "train.star")
    write_star(ps.subset(np.arange(n_train, len(ps))), out / "test.star")
    return out / "train.star", out / "test.star"


def pose_error_summary(predicted_star: Path, truth_star: Path) -> dict:
    """Median and mean angular error (deg) and median origin error (Å) of predicted_star's
    poses against truth_star's (same particles, same order)."""
    from cryopose.geometry.distances import rotation_distance

    pred, truth = read_star(predicted_star).to_tensors(ctf=False), read_star(truth_star).to_tensors(ctf=False)
    err = torch.rad2deg(rotation_distance(pred.rotations, truth.rotations))
    shift = (pred.shifts_angstrom - truth.shifts_angstrom).norm(dim=-1)
    return {"median_deg": float(err.median()), "mean_deg": float(err.mean()),
            "under_10_deg": float((err < 10).double().mean()), "origin_median_angstrom": float(shift.median())}
