"""``cryopose train``: train a pose estimator on aligned particles (a RELION STAR + stacks).

Writes into the output folder ``model.pt`` (the best model by validation median error, with
its settings; loadable on its own), ``training.csv`` and ``training.png`` (loss and
validation angular error per epoch), ``summary.json``. With ``halves`` one model per
``rlnRandomSubset`` half goes to ``half1/`` and ``half2/`` (for the evaluation protocol:
each half is later predicted by the other half's model). The training state is saved after
every epoch in ``.cryopose_train/`` (kept after the run); a rerun with the same inputs and
settings resumes from it, or continues a finished run when given more epochs or minutes (a
rerun with other settings starts afresh and says why in the log).

Started by ``torchrun`` the job trains one model on all processes (DDP); only the first
process writes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import Checkpoint, file_identity
from cryopose.io.models import write_model_file
from cryopose.io.mrc import ParticleImages
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_training_curves, write_table_csv
from cryopose.learn.augment import AugmentSettings, augment_batch
from cryopose.learn.dataset import ParticlesDataset
from cryopose.learn.distributed import distributed_context
from cryopose.learn.preprocess import ImageSettings, prepared_size
from cryopose.learn.train import TrainingData, TrainSettings, train_estimator

__all__ = ["TrainJobSettings", "run_train", "training_parts", "STORE"]

log = logging.getLogger("cryopose")
STORE = ".cryopose_train"


@dataclass
class TrainJobSettings:
    """Everything ``cryopose train`` needs besides its files."""

    train: TrainSettings
    image: ImageSettings = field(default_factory=ImageSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    val_fraction: float = 0.1
    halves: bool = False
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        if not (0.0 <= self.val_fraction < 1.0) or math.isnan(self.val_fraction):
            raise UserError(f"the validation fraction must be in [0, 1), not {self.val_fraction}")


def training_parts(n: int, halves: np.ndarray | None, by_half: bool) -> list[tuple[str, np.ndarray]]:
    """(name, particle indices) of each model to train: ("", all) or ("half1", ...), ("half2", ...)."""
    if not by_half:
        return [("", np.arange(n))]
    if halves is None:
        raise UserError(
            "training one model per half set needs rlnRandomSubset in the particles; add it "
            "(e.g. cryopose refine writes it) or train one model on all particles"
        )
    parts = [(f"half{h}", np.nonzero(halves == h)[0]) for h in (1, 2)]
    for name, idx in parts:
        if len(idx) == 0:
            raise UserError(f"rlnRandomSubset has no particle in {name}; both half sets need particles")
    return parts


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _data(images: torch.Tensor, tensors, idx: np.ndarray, pixel_size: float) -> TrainingData:
    t = tensors[idx]
    return TrainingData(images[idx], t.rotations.float(), t.shifts_angstrom.float(), t.confidence.float(), pixel_size)


def _outputs(names: list[str]) -> list[str]:
    files = ["model.pt", "training.csv", "training.png"]
    out = ["summary.json"]
    for name in names:
        out.extend(f"{name}/{f}" if name else f for f in files)
    return out


def run_train(
    particles: str | Path,
    out: str | Path,
    settings: TrainJobSettings,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    stage: Callable[[str], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train the estimator(s) of ``settings`` on the particles; returns the summary
    (also written as ``summary.json``). ``stage(text)`` announces each phase."""
    t0 = time.perf_counter()
    particles, out = Path(particles), Path(out)
    ps = read_particles(particles, apix)
    if ps.rotations is None:
        raise UserError(f"{particles} has no rlnAngleRot/rlnAngleTilt/rlnAnglePsi; training needs particles with poses")
    tensors = ps.to_tensors(ctf=settings.image.ctf_correction != "none")
    images = ParticleImages(ps)
    box = images.image_shape[0]
    parts = training_parts(len(ps), None if tensors.half_sets is None else tensors.half_sets.numpy(), settings.halves)
    prepared_size(box, settings.image)  # an image size larger than the (cropped) box is refused here
    for name, idx in parts:
        n_train = len(idx) - int(round(settings.val_fraction * len(idx)))
        if n_train < settings.train.batch_size:
            raise UserError(
                f"{n_train} training particles{' in ' + name if name else ''} are fewer than one batch of "
                f"{settings.train.batch_size}; use a smaller batch, a smaller validation fraction or more "
                "particles",
                option="batch-size",
            )
    signature_base = {
        "particles": file_identity(particles),
        "apix": apix,
        "image": asdict(settings.image),
        "augment": asdict(settings.augment),
        "val_fraction": settings.val_fraction,
        # the budget is not part of it: a rerun with more epochs or minutes continues
        "train": {k: v for k, v in asdict(settings.train).items() if k not in ("epochs", "minutes")},
    }
    summaries = []
    with distributed_context(device) as ctx:
        folder = (
            output_folder(out, inputs=[particles, *images.paths], outputs=_outputs([p[0] for p in parts]), force=force)
            if ctx.is_main
            else nullcontext()
        )
        with folder:
            ctx.barrier()
            for name, idx in parts:
                summaries.append(
                    _train_one(name, idx, ps, tensors, images, box, settings, signature_base, out, ctx, progress, stage)
                )
            summary = {
                "particles": str(particles),
                "n_particles": len(ps),
                "box": int(box),
                "model": settings.train.network.get("model"),
                "halves": settings.halves,
                "processes": ctx.world_size,
                "device": str(ctx.device),
                "seconds": time.perf_counter() - t0,
                "models": summaries,
            }
            if ctx.is_main:
                write_json_atomic(out / "summary.json", summary)
            ctx.barrier()
    return summary


def _train_one(
    name: str,
    idx: np.ndarray,
    ps,
    tensors,
    images: ParticleImages,
    box: int,
    settings: TrainJobSettings,
    signature_base: dict,
    out: Path,
    ctx,
    progress,
    stage,
) -> dict[str, Any]:
    label = name or "model"
    where = out / name if name else out
    if ctx.is_main and name:
        where.mkdir(exist_ok=True)
    subset = tensors[idx]
    dataset = ParticlesDataset(images.take(idx), subset, settings.image, symmetry=settings.train.symmetry)
    if stage is not None and ctx.is_main:
        stage(f"preparing {len(idx)} images ({label})")
    prepared = dataset.prepare_all(settings.chunk_size)
    pixel_size = float(dataset.pixel_size)
    train_idx, val_idx = _split(len(idx), settings.val_fraction, settings.train.seed)
    if len(train_idx) < settings.train.batch_size:
        raise UserError(
            f"{len(train_idx)} training particles in {label} are fewer than one batch of "
            f"{settings.train.batch_size}; use a smaller batch, a smaller validation fraction or more "
            "particles"
        )
    train = _data(prepared, subset, train_idx, pixel_size)
    val = _data(prepared, subset, val_idx, pixel_size) if len(val_idx) else None
    checkpoint = Checkpoint(out / STORE / f"{label}.pt", {**signature_base, "part": name})
    state = checkpoint.load()
    if state is not None and ctx.is_main:
        log.info("resuming %s from epoch %d", label, state["epoch"])
    augment_settings = settings.augment

    def augment(images_, rotations, origins, generator):
        return augment_batch(images_, rotations, origins, pixel_size, augment_settings, generator)

    title = (
        f"{settings.train.network.get('model')} estimator{' ' + name if name else ''}: "
        f"{len(train_idx)} training, {len(val_idx)} validation particles"
    )

    def save(st: dict) -> None:
        (out / STORE).mkdir(exist_ok=True)
        checkpoint.save(st)
        write_table_csv(where / "training.csv", st["history"])
        plot_training_curves(st["history"], where / "training.png", title, st.get("chance"))
        _write_model(where / "model.pt", st, settings, pixel_size, box, ps, name)
        _report_epoch(label, st, settings.train)

    if stage is not None and ctx.is_main:
        stage(f"training {label}")
    state = train_estimator(train, val, settings.train, ctx, augment, state, save, progress)
    if ctx.is_main and not (where / "model.pt").is_file():
        save(state)
    best = state["history"][state["best_epoch"] - 1] if state["best_epoch"] > 0 else {}
    last = state["history"][-1] if state["history"] else {}
    if ctx.is_main and state.get("at_chance"):
        log.warning(
            "%s", chance_warning(label, best.get("val_median_deg", math.nan), state["chance"], settings.train.symmetry)
        )
    return {
        "name": label,
        "n_train": int(len(train_idx)),
        "n_validation": int(len(val_idx)),
        "epochs": int(state["epoch"]),
        "planned_epochs": state.get("planned_epochs"),
        "best_epoch": int(state["best_epoch"]),
        "training_seconds": float(state["elapsed"]),
        "pixel_size": pixel_size,
        "image_size": int(prepared.shape[-1]),
        **(state.get("chance") or {}),
        "at_chance": state.get("at_chance"),
        "best": best,
        "last": last,
    }


def chance_warning(label: str, median_deg: float, chance: dict, sym: str) -> str:
    """The warning for a model whose best validation median is at chance level."""
    return (
        f"WARNING: {label} has not learned the poses: its best validation median error, {median_deg:.1f} deg, "
        f"is not clearly better than chance ({chance['chance_median_deg']:.1f} deg for random poses in {sym}; a "
        f"model that learned is below {chance['chance_threshold_deg']:.1f} deg). Do not use its predictions; "
        "check the poses and --sym of the training particles, or train longer (--epochs) or at another "
        "--image-size."
    )


def _report_epoch(label: str, state: dict, settings: TrainSettings) -> None:
    """Log the schedule once a time budget has set it, and warn halfway through a run
    still at chance level."""
    epoch, planned = int(state["epoch"]), state.get("planned_epochs")
    if epoch == 1 and settings.minutes is not None and planned is not None:
        log.info(
            "%s: the first epoch took %.1f s, so the %g-minute budget runs %d epochs (the schedule is fixed in "
            "epochs from now on; a busier machine takes longer, not fewer epochs)",
            label,
            state["first_epoch_seconds"],
            settings.minutes,
            planned,
        )
    if planned and planned >= 4 and epoch == planned // 2 and state.get("at_chance"):
        best = state["history"][state["best_epoch"] - 1].get("val_median_deg", math.nan)
        log.warning(
            "%s: after %d of %d epochs the best validation median error (%.1f deg) is still at chance level "
            "(%.1f deg for random poses)",
            label,
            epoch,
            planned,
            best,
            state["chance"]["chance_median_deg"],
        )


def _write_model(
    path: Path, state: dict, settings: TrainJobSettings, pixel_size: float, box: int, ps, name: str
) -> None:
    weights = state["best_model"] if state.get("best_model") is not None else state["model"]
    best = state["history"][state["best_epoch"] - 1] if state.get("best_epoch", 0) > 0 else {}
    write_model_file(
        path,
        state["config"],
        weights,
        asdict(settings.image),
        pixel_size,
        settings.train.symmetry,
        {
            "trained_on": str(ps.source_file) if ps.source_file else None,
            "half": name or None,
            "input_box": int(box),
            "input_pixel_size": float(np.median(ps.pixel_size)),
            "epochs": int(state["epoch"]),
            "best_epoch": int(state.get("best_epoch", -1)),
            "validation": {k: v for k, v in best.items() if k.startswith("val_")},
            "chance": state.get("chance"),
            "at_chance": state.get("at_chance"),
        },
    )
