"""``cryopose predict``: poses of particles from a trained estimator, with an optional
uncertainty-driven clean-up (seed 004's 3-D clean-up).

Writes ``particles.star``: every input column, the predicted rlnAngleRot/Tilt/Psi and
rlnOriginX/YAngst (the input's poses and origins, if any, kept as cryoposeTrueAngle* and
cryoposeTrueOrigin*Angst), cryoposeConfidence (larger is surer), and the estimator's own
uncertainty: cryoposeLambdaMax and cryoposeLambdaTrace (cryo-forum's Bingham dispersions;
nearer 0 is less sure) or cryoposeGridProbability (the grid's largest probability). A
clean-up (keep a fraction, or a minimum confidence) also writes ``kept.star``. Images are
read and predicted in chunks; finished chunks are kept in ``.cryopose_predict/`` so an
interrupted run resumes. With the two models of ``cryopose train --halves`` each half set
is predicted by the model trained on the other half.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.geometry.symmetry import Symmetry
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import ChunkStore, discard, file_identity
from cryopose.io.models import read_model_file
from cryopose.io.mrc import ParticleImages
from cryopose.io.outputs import output_folder
from cryopose.io.star import write_star
from cryopose.jobs.chunks import ChunkWork, run_chunks
from cryopose.learn.dataset import ParticlesDataset
from cryopose.learn.models import _Estimator, build_estimator, estimator_config_problem, weights_problem
from cryopose.learn.preprocess import ImageSettings, prepared_pixel_size, prepared_size
from cryopose.learn.train import angular_errors_deg, predict_poses
from cryopose.particles import (
    ANGLE_COLUMNS,
    ORIGIN_ANGST_COLUMNS,
    TRUE_ANGLE_COLUMNS,
    TRUE_ORIGIN_COLUMNS,
    ParticleTensors,
)

__all__ = ["PredictSettings", "run_predict", "model_files", "load_estimator", "predict_particles", "STORE"]

log = logging.getLogger("cryopose")
STORE = ".cryopose_predict"
EXTRA_COLUMNS = {
    "lambda_max": "cryoposeLambdaMax",
    "lambda_trace": "cryoposeLambdaTrace",
    "grid_probability": "cryoposeGridProbability",
}


@dataclass
class PredictSettings:
    """keep_fraction: keep this fraction of the most confident particles (kept.star);
    min_confidence: keep those with cryoposeConfidence >= this; batch_size: images per
    forward pass; chunk_size: particles read and stored at a time (results do not depend
    on it)."""

    keep_fraction: float | None = None
    min_confidence: float | None = None
    batch_size: int = 256
    chunk_size: int = 2048

    def __post_init__(self) -> None:
        if self.keep_fraction is not None and self.min_confidence is not None:
            raise UserError("give either a fraction of particles to keep or a minimum confidence, not both")
        if self.keep_fraction is not None and not (0 < self.keep_fraction <= 1):
            raise UserError(f"the fraction to keep must be in (0, 1], not {self.keep_fraction}")
        if self.min_confidence is not None and not math.isfinite(self.min_confidence):
            raise UserError(f"the minimum confidence must be a finite number, not {self.min_confidence}")


def model_files(path: str | Path) -> list[tuple[Path, int | None]]:
    """The model files a path names, each with the half set it predicts (None: all):
    a model file; a training folder with ``model.pt``; or a ``--halves`` training folder
    (``half1/model.pt`` predicts half 2 and ``half2/model.pt`` half 1)."""
    p = Path(path)
    if p.is_dir():
        h1, h2 = p / "half1" / "model.pt", p / "half2" / "model.pt"
        if h1.is_file() and h2.is_file():
            return [(h1, 2), (h2, 1)]
        if (p / "model.pt").is_file():
            return [(p / "model.pt", None)]
        raise UserError(
            f"{p} holds no model.pt (nor half1/model.pt and half2/model.pt); give a model file that "
            "cryopose train wrote"
        )
    return [(p, None)]  # read (with a clear error for a missing or foreign file) by the caller


def load_estimator(
    payload: dict[str, Any], device: torch.device | str = "cpu", source: str | Path = "the model file"
) -> _Estimator:
    """The trained estimator of a model file's contents (``io.models.read_model_file``), in
    eval mode. The config is checked before anything is built (ranges, network size), and
    the weights against the network it describes; ``source`` names the file in the
    UserError that answers a bad payload."""
    problem = estimator_config_problem(payload["config"])
    if problem is None:
        try:
            ImageSettings(**payload["image_settings"])
        except (TypeError, UserError):
            problem = f"its image settings {payload['image_settings']!r} are not cryopose's"
    if problem is None:
        try:
            Symmetry(payload["symmetry"])
        except UserError:
            problem = f"its symmetry {payload['symmetry']!r} is not a RELION point group"
    if problem is None:
        model = build_estimator(payload["config"])
        problem = weights_problem(model, payload["weights"])
    if problem is not None:
        raise UserError(
            f"{source} is a damaged cryopose model file: {problem}; train the model again with cryopose train"
        )
    model.load_state_dict(payload["weights"])
    return model.to(device).eval()


_CACHE: list = []  # (payload, device, model) of the last model built in this process


def _cached_model(payload: dict[str, Any], device: torch.device) -> _Estimator:
    if _CACHE and _CACHE[0] is payload and _CACHE[1] == device:
        return _CACHE[2]
    model = load_estimator(payload, device)
    _CACHE[:] = [payload, device, model]
    return model


def _predict_chunk(shared: tuple, part: tuple) -> dict[str, np.ndarray]:
    """One chunk on any process: prepare its images and predict them."""
    payload, device, batch_size = shared
    images, tensors = part
    settings = ImageSettings(**payload["image_settings"])
    dataset = ParticlesDataset(images, tensors, settings, symmetry=payload["symmetry"])
    prepared = dataset.prepare_all(len(dataset))
    model = _cached_model(payload, torch.device(device))
    return predict_poses(model, prepared, dataset.pixel_size, batch_size, device)


def _check_compatible(payload: dict[str, Any], box: int, pixel_size: float, path: Path) -> None:
    settings = ImageSettings(**payload["image_settings"])
    size = prepared_size(box, settings)
    trained = float(payload["pixel_size"])
    mine = prepared_pixel_size(box, pixel_size, settings)
    meta = payload.get("metadata", {})
    if abs(mine - trained) > 0.02 * trained:
        raise UserError(
            f"model {path} was trained on {meta.get('input_box', '?')} px images of "
            f"{meta.get('input_pixel_size', float('nan')):.3f} A/px ({trained:.3f} A/px as the network sees them) "
            f"but these particles are {box} px of {pixel_size:.3f} A/px ({mine:.3f} A/px at {size} px); "
            "resample the particles to the training pixel size or train a model on them"
        )


def predict_particles(
    payload: dict[str, Any],
    images: Any,
    tensors: ParticleTensors,
    batch_size: int = 256,
    chunk_size: int = 2048,
    device: torch.device | str = "cpu",
    store: ChunkStore | None = None,
    progress: Callable[[int, int], None] | None = None,
    executor: Any = None,
) -> dict[str, np.ndarray]:
    """Predictions of a model (the contents of its file) for all particles of an image
    source, chunk by chunk (see :func:`cryopose.learn.train.predict_poses` for the arrays)."""
    shared = (payload, str(device) if executor is None else "cpu", batch_size)
    work = ChunkWork(_predict_chunk, shared, lambda idx: (images.take(idx), tensors[idx]))
    return run_chunks(len(tensors), chunk_size, work, store, progress, executor)


def chance_level_warning(payload: dict[str, Any], path: Path) -> str | None:
    """A warning when ``cryopose train`` found the model at chance level (its metadata's
    "at_chance"), else None."""
    meta = payload.get("metadata", {})
    if not meta.get("at_chance"):
        return None
    median = meta.get("validation", {}).get("val_median_deg", math.nan)
    chance = (meta.get("chance") or {}).get("chance_median_deg", math.nan)
    return (
        f"WARNING: model {path} did not learn the poses (its validation median error, {median:.1f} deg, was at "
        f"chance level: {chance:.1f} deg for random poses); its predictions are no better than random poses"
    )


def _cleanup(confidence: np.ndarray, settings: PredictSettings) -> np.ndarray | None:
    if settings.keep_fraction is not None:
        n_keep = max(1, int(round(settings.keep_fraction * len(confidence))))
        order = np.argsort(-confidence, kind="stable")
        keep = np.zeros(len(confidence), dtype=bool)
        keep[order[:n_keep]] = True
        return keep
    if settings.min_confidence is not None:
        return confidence >= settings.min_confidence
    return None


def run_predict(
    model: str | Path,
    particles: str | Path,
    out: str | Path,
    settings: PredictSettings,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: Any = None,
) -> dict[str, Any]:
    """Predict the particles' poses with the model(s) at ``model``; returns the summary
    (also written as ``summary.json``)."""
    t0 = time.perf_counter()
    particles, out = Path(particles), Path(out)
    files = model_files(model)
    payloads = [(read_model_file(f), f, half) for f, half in files]
    for payload, f, _ in payloads:  # a damaged model is refused before any work
        load_estimator(payload, "cpu", f)
    ps = read_particles(particles, apix)
    if len(ps) == 0:
        raise UserError(f"{particles} has no particles")
    needs_ctf = any(p["image_settings"].get("ctf_correction", "none") != "none" for p, _, _ in payloads)
    tensors = ps.to_tensors(ctf=needs_ctf)
    images = ParticleImages(ps)
    box = images.image_shape[0]
    pixel_size = float(np.median(ps.pixel_size))
    warnings = []
    for payload, f, _ in payloads:
        _check_compatible(payload, box, pixel_size, f)
        warning = chance_level_warning(payload, f)
        if warning:
            log.warning("%s", warning)
            warnings.append(warning)
    groups: list[tuple[dict, Path, np.ndarray]] = []
    if len(payloads) == 2:
        if tensors.half_sets is None:
            raise UserError(
                f"the models in {model} were trained per half set, but {particles} has no rlnRandomSubset; "
                "give one model file, or particles with their half sets"
            )
        halves = tensors.half_sets.numpy()
        for payload, f, half in payloads:
            groups.append((payload, f, np.nonzero(halves == half)[0]))
    else:
        groups.append((payloads[0][0], payloads[0][1], np.arange(len(ps))))
    keeps = settings.keep_fraction or settings.min_confidence is not None
    outputs = ["particles.star", "summary.json"] + (["kept.star"] if keeps else [])
    model_paths = [f for _, f, _ in payloads]
    with output_folder(out, inputs=[particles, *images.paths, *model_paths], outputs=outputs, force=force):
        n = len(ps)
        rotations = np.zeros((n, 3, 3))
        origins = np.zeros((n, 2))
        confidence = np.zeros(n)
        extras: dict[str, np.ndarray] = {}

        def step(k: int, total: int) -> None:  # each group's chunks count toward all n particles
            if progress is not None:
                progress(k, n)

        t_predict = time.perf_counter()
        for i, (payload, f, idx) in enumerate(groups):
            if len(idx) == 0:
                continue
            signature = {
                "particles": file_identity(particles),
                "model": file_identity(f),
                "apix": apix,
                "indices": [int(idx[0]), int(idx[-1]), int(len(idx))],
                "part": i,
            }
            store = ChunkStore(out / STORE / f"part{i}", signature)
            result = predict_particles(
                payload,
                images.take(idx),
                tensors[idx],
                settings.batch_size,
                settings.chunk_size,
                device,
                store,
                step,
                executor,
            )
            rotations[idx], origins[idx] = result["rotations"], result["origins_angstrom"]
            confidence[idx] = result["confidence"]
            for key, column in EXTRA_COLUMNS.items():
                if key in result:
                    extras.setdefault(column, np.full(n, np.nan))[idx] = result[key]
        seconds_predict = time.perf_counter() - t_predict
        table = ps.table
        keep_truth: dict[str, Any] = {}
        truth = tensors.rotations
        if all(c in table.columns for c in ANGLE_COLUMNS):
            keep_truth.update({t: table[c].to_numpy() for t, c in zip(TRUE_ANGLE_COLUMNS, ANGLE_COLUMNS)})
        if all(c in table.columns for c in ORIGIN_ANGST_COLUMNS):
            keep_truth.update({t: table[c].to_numpy() for t, c in zip(TRUE_ORIGIN_COLUMNS, ORIGIN_ANGST_COLUMNS)})
        predicted = ps.with_poses(rotations, origins).with_columns(
            **keep_truth, cryoposeConfidence=confidence, **extras
        )
        write_star(predicted, out / "particles.star")
        keep = _cleanup(confidence, settings)
        summary: dict[str, Any] = {
            "particles": str(particles),
            "models": [str(f) for _, f, _ in payloads],
            "estimator": payloads[0][0]["config"].get("model"),
            "cross_half_prediction": len(payloads) == 2,
            "n_particles": n,
            "device": str(device),
            "workers": None if executor is None else getattr(executor, "n_workers", None),
            "seconds": time.perf_counter() - t0,
            "particles_per_second": n / max(seconds_predict, 1e-9),
            "confidence_median": float(np.median(confidence)),
            "settings": asdict(settings),
            "models_at_chance": [str(f) for p, f, _ in payloads if chance_level_warning(p, f)],
            "warnings": warnings,
        }
        if truth is not None:
            errors = angular_errors_deg(torch.from_numpy(rotations), truth, payloads[0][0]["symmetry"]).numpy()
            origin_errors = np.linalg.norm(origins - tensors.shifts_angstrom.numpy(), axis=1)
            summary["against_input_poses"] = {
                "median_deg": float(np.median(errors)),
                "mean_deg": float(np.mean(errors)),
                "under_10_deg": float(np.mean(errors < 10)),
                "origin_median_angstrom": float(np.median(origin_errors)),
            }
        if keep is not None:
            write_star(predicted.subset(keep), out / "kept.star")
            summary["kept"] = int(keep.sum())
            if truth is not None and keep.any():
                summary["against_input_poses"]["kept_median_deg"] = float(np.median(errors[keep]))
                summary["against_input_poses"]["kept_mean_deg"] = float(np.mean(errors[keep]))
        write_json_atomic(out / "summary.json", summary)
        discard(out / STORE)
    return summary
