"""The public Python API: read and write particles and maps, and run the jobs on files.

Each function is the library behind one command (``cryopose simulate`` etc.) with the same
defaults; settings are keyword arguments named like the command's options. (The
reconstruct and validate jobs are ``reconstruct_map`` and ``validate_alignment`` here:
``cryopose.reconstruct`` and ``cryopose.validate`` are the subpackages of their algorithms.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cryopose.align.map_alignment import MapAlignmentSettings
from cryopose.align.projection_matching import MatchSettings
from cryopose.geometry.symmetry import symmetry_argument
from cryopose.io import read_particles
from cryopose.io.mrc import ParticleImages, read_map, write_map
from cryopose.io.star import write_star
from cryopose.jobs.align_maps import run_align_maps
from cryopose.jobs.evaluate import EvaluateSettings, run_evaluate
from cryopose.jobs.fsc import run_fsc
from cryopose.jobs.predict import PredictSettings, run_predict
from cryopose.jobs.predict import load_estimator as _load_estimator
from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct
from cryopose.jobs.refine import RefineSettings, run_refine
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.jobs.train import TrainJobSettings, run_train
from cryopose.jobs.validate import ValidationOptions, run_validate
from cryopose.learn.dataset import ParticlesDataset
from cryopose.learn.preprocess import DEFAULT_IMAGE_SIZE
from cryopose.particles import ParticleSet
from cryopose.reconstruct.fsc import FSCResult

__all__ = [
    "read_particles",
    "write_particles",
    "read_map",
    "write_map",
    "simulate",
    "reconstruct_map",
    "fsc",
    "validate_alignment",
    "align_maps",
    "evaluate_poses",
    "refine_poses",
    "train",
    "predict",
    "load_estimator",
    "particles_dataset",
]

PathLike = str | os.PathLike


def write_particles(particles: ParticleSet, path: PathLike, version: str = "3.1") -> None:
    """Write a ``ParticleSet`` as a RELION STAR file (3.1 or 3.0), atomically."""
    write_star(particles, path, version=version)


def simulate(
    map_path: PathLike, out: PathLike, n: int | None = None, device: str | torch.device = "cpu", **settings: Any
) -> dict:
    """Simulate particles of a map into ``out`` (particles.star, particles.mrcs); settings
    as ``SimulateSettings`` (snr, ctf, defocus, max_shift, apix, box, symmetry, seed,
    from_star, ...). Returns a summary."""
    return run_simulate(Path(map_path), Path(out), SimulateSettings(n=n, **settings), device=device)


def reconstruct_map(
    particles: PathLike, out: PathLike, apix: float | None = None, device: str | torch.device = "cpu", **settings: Any
) -> dict:
    """Reconstruct half maps, map and FSC from a particle file into ``out``; settings as
    ``ReconstructSettings`` (symmetry, ctf, seed, chunk_size). Returns the summary."""
    return run_reconstruct(Path(particles), Path(out), ReconstructSettings(**settings), apix=apix, device=device)


def fsc(
    map1: PathLike,
    map2: PathLike,
    mask: PathLike | None = None,
    apix: float | None = None,
    out: PathLike | None = None,
    device: str | torch.device = "cpu",
) -> FSCResult:
    """Fourier shell correlation of two map files (resolutions at 0.143 and 0.5)."""
    result, _ = run_fsc(
        Path(map1), Path(map2), None if mask is None else Path(mask), apix, None if out is None else Path(out), device
    )
    return result


def validate_alignment(
    map_path: PathLike | list[PathLike],
    particles: PathLike,
    out: PathLike,
    by_class: bool = False,
    apix: float | None = None,
    device: str | torch.device = "cpu",
    match: dict | None = None,
    **options: Any,
) -> dict:
    """Alignment precision/accuracy of a particle file against one map (or several, or
    one per class); ``match`` holds ``MatchSettings`` (angular_sampling, max_shift,
    resolution, xi, symmetry, ctf_references), ``options`` the rest of
    ``ValidationOptions``. Returns the summary."""
    maps = [Path(m) for m in (map_path if isinstance(map_path, (list, tuple)) else [map_path])]
    opts = ValidationOptions(match=MatchSettings(**(match or {})), **options)
    return run_validate(maps, Path(particles), Path(out), opts, by_class=by_class, apix=apix, device=device)


def align_maps(
    reference: PathLike,
    maps: list[PathLike],
    out: PathLike,
    device: str | torch.device = "cpu",
    masks: list[PathLike] | None = None,
    ref_mask: PathLike | None = None,
    particles: list[PathLike] | None = None,
    groups: list[list[PathLike]] | None = None,
    **settings: Any,
) -> list[dict]:
    """Align maps to a reference and carry particle poses along; settings as
    ``MapAlignmentSettings``. Returns the entries of transforms.json."""
    return run_align_maps(
        Path(reference),
        [Path(m) for m in maps],
        Path(out),
        MapAlignmentSettings(**settings),
        ref_mask=None if ref_mask is None else Path(ref_mask),
        masks=[Path(m) for m in masks or []],
        particles=[Path(p) for p in particles or []],
        groups=[[Path(g) for g in grp] for grp in groups or []],
        device=device,
    )


def evaluate_poses(
    predictions: PathLike | list[PathLike],
    out: PathLike,
    truth: PathLike | None = None,
    map_path: PathLike | None = None,
    mask: PathLike | None = None,
    apix: float | None = None,
    device: str | torch.device = "cpu",
    **settings: Any,
) -> dict:
    """Benchmark predicted poses (one STAR or several, e.g. one per half) against the
    ground truth ``truth`` (None: the predictions' cryoposeTrue* columns) the CESPED way;
    writes metrics.json, per_particle.star, report.md, figures and maps into ``out``.
    Settings as ``EvaluateSettings`` (symmetry, reconstruct, ctf, seed, mask_threshold,
    ...). Returns the metrics. On ParticleSets in memory use
    ``cryopose.jobs.evaluate.evaluate_predictions``."""
    preds = [Path(p) for p in (predictions if isinstance(predictions, (list, tuple)) else [predictions])]
    return run_evaluate(
        preds,
        Path(out),
        truth=None if truth is None else Path(truth),
        gt_map=None if map_path is None else Path(map_path),
        mask=None if mask is None else Path(mask),
        settings=EvaluateSettings(**settings),
        apix=apix,
        device=device,
    )


def refine_poses(
    particles: PathLike,
    map_path: PathLike,
    out: PathLike,
    half_maps: tuple[PathLike, PathLike] | None = None,
    apix: float | None = None,
    device: str | torch.device = "cpu",
    **settings: Any,
) -> dict:
    """Gold-standard refinement of a particle file's poses into ``out`` (particles.star, half
    maps, map, FSC, summary.json), local from its poses or, with ``global_search=True``,
    from scratch; settings as ``RefineSettings`` (symmetry, sigma_angle, search_angle,
    prior, max_shift, iterations, score, ctf, seed, chunk_size, initial_reference, ini_high,
    global_search, global_passes, global_sampling). Returns the summary."""
    return run_refine(
        Path(particles),
        Path(map_path),
        Path(out),
        None if half_maps is None else (Path(half_maps[0]), Path(half_maps[1])),
        RefineSettings(**settings),
        apix=apix,
        device=device,
    )


def train(
    particles: PathLike,
    out: PathLike,
    model: str = "grid",
    epochs: int | None = None,
    minutes: float | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    ctf_correction: str = "phase_flip",
    symmetry: str = "C1",
    halves: bool = False,
    val_fraction: float = 0.1,
    apix: float | None = None,
    device: str | torch.device = "cpu",
    network: dict[str, Any] | None = None,
    sym: str | None = None,
    **train_settings: Any,
) -> dict:
    """Train a pose estimator ("grid" or "forum") on a particle file's poses into ``out``
    (model.pt, training.csv/png, summary.json; with ``halves`` one per half set). Without
    ``epochs`` or ``minutes`` it trains for ``learn.train.DEFAULT_EPOCHS`` (grid 60, forum
    100); ``minutes`` sets the number of epochs from the first one's duration. ``network``: extra estimator
    settings (channels, grid_order, degree, blur_sigmas, auxiliary_grid, head_hidden, qcqp;
    defaults: ``learn.models.default_network``); other keywords
    as ``TrainSettings`` (batch_size, learning_rate, pair_sampling, seed). ``symmetry``: the
    particles' point group (``sym``: its deprecated name). Returns the summary."""
    from cryopose.learn.models import default_network
    from cryopose.learn.preprocess import ImageSettings
    from cryopose.learn.train import TrainSettings

    net = {**default_network(model), **(network or {})}
    settings = TrainJobSettings(
        train=TrainSettings(
            network=net,
            epochs=epochs,
            minutes=minutes,
            symmetry=symmetry_argument(symmetry, sym, "train"),
            **train_settings,
        ),
        image=ImageSettings(image_size=image_size, ctf_correction=ctf_correction),
        val_fraction=val_fraction,
        halves=halves,
    )
    return run_train(Path(particles), Path(out), settings, apix=apix, device=device)


def predict(
    model: PathLike,
    particles: PathLike,
    out: PathLike,
    keep_fraction: float | None = None,
    min_confidence: float | None = None,
    apix: float | None = None,
    device: str | torch.device = "cpu",
    **settings: Any,
) -> dict:
    """Predict a particle file's poses with a trained model (a model.pt, or a training
    folder; a ``halves`` folder predicts each half with the other half's model) into ``out``
    (particles.star, summary.json, and kept.star with a clean-up). Returns the summary."""
    return run_predict(
        Path(model),
        Path(particles),
        Path(out),
        PredictSettings(keep_fraction=keep_fraction, min_confidence=min_confidence, **settings),
        apix=apix,
        device=device,
    )


def load_estimator(model: PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A trained estimator from its model.pt, in eval mode: ``estimator.predict(images)``
    takes prepared images (n, 1, s, s) (see ``particles_dataset``) and gives poses
    (RELION matrices), origins in px of the prepared images and confidences."""
    from cryopose.io.models import read_model_file

    return _load_estimator(read_model_file(Path(model)), device, Path(model))


def particles_dataset(
    particles: PathLike,
    image_size: int | None = 64,
    ctf_correction: str = "none",
    crop_factor: float = 1.0,
    symmetry: str = "C1",
    augment: bool = False,
    apix: float | None = None,
    seed: int = 0,
    *,
    sym: str | None = None,
) -> ParticlesDataset:
    """A PyTorch Dataset over a RELION STAR and its stacks (images read on demand; safe with
    DataLoader workers): each item holds the prepared image (1, s, s), pose matrix and
    quaternion, origin (Å), confidence, CTF parameters, half set and index. ``augment``
    adds random in-plane rotations with exactly updated poses. ``symmetry``: the particles'
    point group (``sym``: its deprecated name)."""
    from cryopose.learn.augment import AugmentSettings
    from cryopose.learn.preprocess import ImageSettings

    group = symmetry_argument(symmetry, sym, "particles_dataset")
    ps = read_particles(Path(particles), apix)
    tensors = ps.to_tensors(ctf=ctf_correction != "none")
    return ParticlesDataset(
        ParticleImages(ps),
        tensors,
        ImageSettings(image_size=image_size, crop_factor=crop_factor, ctf_correction=ctf_correction),
        augment=AugmentSettings() if augment else None,
        symmetry=group,
        seed=seed,
    )
