"""The training loop of the pose estimators, and batched prediction (no file access: the
jobs layer saves what ``on_epoch`` hands it).

Images are prepared once (CTF-corrected, normalised, Fourier-cropped; a few MB at 32-64 px)
and held as one tensor; each batch is augmented on the fly (in-plane rotations and shifts
that update the pose exactly). The learning rate warms up over the first 3% of training and
then follows a cosine to 1% of its peak, on the training progress: the fraction of the
epochs, or of the time budget, spent so far. A run resumed from its last state (model,
optimiser, random generator, clock, history) continues exactly where it stopped.
Distributed runs (:mod:`cryopose.learn.distributed`) give each process a slice of every
global batch; gradients are averaged by DDP.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.geometry.distances import rotation_distance
from cryopose.geometry.rotations import matrix_to_quaternion
from cryopose.learn.distributed import DistributedContext
from cryopose.learn.losses import forum_loss, grid_cross_entropy, grid_targets, origin_loss, pair_indices
from cryopose.learn.models import build_estimator

__all__ = ["TrainSettings", "TrainingData", "train_estimator", "predict_poses", "angular_errors_deg"]


@dataclass
class TrainSettings:
    """How to train. ``epochs`` and/or ``minutes`` bound the run (whichever ends first; at
    least one must be given). ``network``: the estimator's config (``model`` "forum" or
    "grid", channels, blur_sigmas, grid_order, degree, auxiliary_grid, dropout)."""

    network: dict[str, Any] = field(default_factory=lambda: {"model": "grid"})
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    symmetry: str = "C1"
    pair_sampling: str = "random"
    origin_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs is None and self.minutes is None:
            raise UserError("give a number of epochs or a time budget in minutes for the training")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"the number of epochs must be at least 1, not {self.epochs}")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise UserError(f"the time budget must be a positive number of minutes, not {self.minutes}")
        if self.batch_size < 2:
            raise UserError(f"the batch size must be at least 2, not {self.batch_size}")
        if self.pair_sampling not in ("random", "stratified"):
            raise UserError(f"unknown pair sampling {self.pair_sampling!r}; use random or stratified")
        if self.network.get("model") not in ("forum", "grid"):
            raise UserError(f"unknown estimator {self.network.get('model')!r}; use forum or grid")


@dataclass
class TrainingData:
    """Prepared particles: images (n, 1, s, s), poses (n, 3, 3), origins in Å (n, 2), and
    confidence weights (n,); ``pixel_size`` of the prepared images (Å/px)."""

    images: torch.Tensor
    rotations: torch.Tensor
    origins_angstrom: torch.Tensor
    confidence: torch.Tensor
    pixel_size: float

    def __len__(self) -> int:
        return int(self.images.shape[0])


Augment = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def angular_errors_deg(predicted: torch.Tensor, true: torch.Tensor, sym: str) -> torch.Tensor:
    """Symmetry-reduced geodesic error (deg) of each predicted pose (n, 3, 3)."""
    return torch.rad2deg(rotation_distance(predicted.double(), true.double(), sym))


def _progress(settings: TrainSettings, epoch: int, step_in_epoch: int, steps_per_epoch: int, elapsed: float) -> float:
    parts = []
    if settings.epochs is not None:
        parts.append((epoch + step_in_epoch / max(steps_per_epoch, 1)) / settings.epochs)
    if settings.minutes is not None:
        parts.append(elapsed / (60.0 * settings.minutes))
    return min(1.0, max(parts))


def _budget_spent(settings: TrainSettings, epoch: int, elapsed: float) -> bool:
    return ((settings.epochs is not None and epoch >= settings.epochs)
            or (settings.minutes is not None and elapsed >= 60.0 * settings.minutes))


def _learning_rate(base: float, progress: float) -> float:
    warm = 0.03
    if progress < warm:
        return base * (0.1 + 0.9 * progress / warm)
    t = (progress - warm) / (1 - warm)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _batch_loss(model: torch.nn.Module, kind: str, images: torch.Tensor, rotations: torch.Tensor, origins_px: torch.Tensor,
                weights: torch.Tensor, settings: TrainSettings, progress: float, generator: torch.Generator,
                grid_quaternions: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(images)
    parts: dict[str, torch.Tensor] = {}
    if kind == "forum":
        true_q = matrix_to_quaternion(rotations)
        pairs = pair_indices(true_q, settings.symmetry, settings.pair_sampling, generator)
        terms = forum_loss(out["quaternion"], rotations, settings.symmetry, progress, pairs, weights)
        loss = terms["loss"]
        parts["geodesic_deg"] = math.degrees(float(terms["geodesic"]))
        if "grid_logits" in out and grid_quaternions is not None:
            ce = grid_cross_entropy(out["grid_logits"], grid_targets(rotations, grid_quaternions, settings.symmetry), weights)
            loss = loss + (1 - progress) * ce  # the auxiliary grid head fades out as training ends
            parts["grid_ce"] = float(ce.detach())
    else:
        ce = grid_cross_entropy(out["grid_logits"], grid_targets(rotations, grid_quaternions, settings.symmetry), weights)
        loss = ce
        parts["grid_ce"] = float(ce.detach())
    shift = origin_loss(out["origin_px"], origins_px)
    parts["origin_px"] = float(shift.detach())
    return loss + settings.origin_weight * shift, parts


def _grid_quaternions(model: torch.nn.Module) -> torch.Tensor | None:
    head = getattr(model, "head", None)
    if hasattr(head, "grid_quaternions"):
        return head.grid_quaternions
    aux = getattr(model, "auxiliary", None)
    return None if aux is None else aux.grid_quaternions


@torch.no_grad()
def predict_poses(model: torch.nn.Module, images: torch.Tensor, pixel_size: float, batch_size: int = 256,
                  device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """Poses of prepared images (n, 1, s, s) from a trained estimator, in batches:
    {"rotations" (n, 3, 3), "origins_angstrom" (n, 2), "confidence" (n,), and the
    estimator's extras (lambda_max, lambda_trace, grid_probability)}, numpy float64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device=device, dtype=torch.float32)
            out = model.predict(batch)
            out["origins_angstrom"] = out.pop("origin_px") * pixel_size
            for key, value in out.items():
                parts.setdefault(key, []).append(value.double().cpu().numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _validate(model: torch.nn.Module, data: TrainingData, sym: str, device: torch.device) -> dict[str, float]:
    pred = predict_poses(model, data.images, data.pixel_size, device=device)
    errors = angular_errors_deg(torch.from_numpy(pred["rotations"]), data.rotations, sym).numpy()
    shift = np.linalg.norm(pred["origins_angstrom"] - data.origins_angstrom.double().numpy(), axis=1)
    return {"val_median_deg": float(np.median(errors)), "val_mean_deg": float(np.mean(errors)),
            "val_under_10_deg": float(np.mean(errors < 10)), "val_origin_median_angstrom": float(np.median(shift))}


def train_estimator(
    train: TrainingData,
    val: TrainingData | None,
    settings: TrainSettings,
    context: DistributedContext | None = None,
    augment: Augment | None = None,
    state: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Train an estimator of ``settings.network`` and return the final state:
    {"config", "model" (last weights), "best_model" (the weights with the lowest validation
    median error; the last ones without validation data), "best_epoch", "history" (one
    record per epoch: losses, validation median/mean error in deg, origin error in Å,
    learning rate, seconds), "epoch", "elapsed", "optimiser", "generator", "finished"}.

    ``state``: a state returned or handed to ``on_epoch`` before, to resume from.
    ``on_epoch(state)`` is called on the main process after each epoch (to save it).
    ``progress(k, total)``: k more steps done out of total (total is an estimate under a
    time budget)."""
    ctx = context or DistributedContext()
    device = ctx.device
    if len(train) < settings.batch_size:
        raise UserError(f"{len(train)} training particles are fewer than one batch of {settings.batch_size}; "
                        "use a smaller batch or more particles")
    config = dict(state["config"]) if state else dict(settings.network)
    torch.manual_seed(settings.seed)  # the same initial weights on every rank and rerun
    model = build_estimator(config)
    config = model.config
    if state:
        model.load_state_dict(state["model"])
    # BatchNorm statistics over the global batch where SyncBatchNorm runs (CUDA); per process on CPU
    model = ctx.wrap(model, sync_batchnorm=ctx.is_distributed and device.type == "cuda")
    plain = ctx.unwrap(model)
    kind = plain.kind
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, Any]] = []
    epoch, elapsed = 0, 0.0
    best_model, best_epoch, best_score = None, -1, math.inf
    if state:
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        best_model, best_epoch = state.get("best_model"), int(state.get("best_epoch", -1))
        best_score = float(state.get("best_score", math.inf))
        if _budget_spent(settings, epoch, elapsed):
            return {**state, "finished": True}
    per_rank = ctx.per_rank_batch_size(settings.batch_size)
    n = len(train)
    steps_per_epoch = n // settings.batch_size
    grid_q = _grid_quaternions(plain)
    total_steps = steps_per_epoch * (settings.epochs or 10**9)
    finished = False
    while not finished:
        start_clock = clock()
        model.train()
        order = torch.randperm(n, generator=generator)
        sums: dict[str, float] = {}
        steps = 0
        for step in range(steps_per_epoch):
            now = elapsed + clock() - start_clock
            p = _progress(settings, epoch, step, steps_per_epoch, ctx.mean(now).item() if ctx.is_distributed else now)
            if settings.minutes is not None and p >= 1.0:
                finished = True
                break
            lr = _learning_rate(settings.learning_rate, p)
            for group in optimiser.param_groups:
                group["lr"] = lr
            chosen = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            # the whole global batch is augmented on every rank (same draws as one process)
            images, rotations = train.images[chosen], train.rotations[chosen].float()
            origins = train.origins_angstrom[chosen].float()
            if augment is not None:
                images, rotations, origins = augment(images, rotations, origins, generator)
            mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
            images, rotations, origins = images[mine], rotations[mine], origins[mine]
            weights = train.confidence[chosen][mine].float()
            loss, parts = _batch_loss(model, kind, images.to(device), rotations.to(device), (origins / train.pixel_size).to(device),
                                      weights.to(device), settings, p, generator, grid_q)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            steps += 1
            sums["loss"] = sums.get("loss", 0.0) + float(ctx.mean(loss.detach()))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress is not None and ctx.is_main:
                if settings.minutes is not None:
                    done_fraction = max(p, 1e-9)
                    estimate = int((epoch * steps_per_epoch + step + 1) / done_fraction)
                    total_steps = min(total_steps, estimate) if settings.epochs else estimate
                progress(1, max(total_steps, epoch * steps_per_epoch + step + 1))
        elapsed += clock() - start_clock
        if steps == 0 and epoch > 0 and state is not None:  # the budget ran out at an epoch's start
            state = {**state, "finished": True, "elapsed": elapsed}
            break
        epoch += 1
        record = {"epoch": epoch, "steps": steps, "learning_rate": lr if steps else 0.0,
                  **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()}}
        if val is not None and len(val) and ctx.is_main:
            record.update(_validate(plain, val, settings.symmetry, device))
        record["seconds"] = elapsed
        history.append(record)
        score = record.get("val_median_deg", -epoch)
        if score <= best_score:
            best_score, best_epoch = score, epoch
            best_model = copy.deepcopy({k: v.detach().cpu() for k, v in plain.state_dict().items()})
        finished = finished or _budget_spent(settings, epoch, elapsed)
        state = {"config": config, "model": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
                 "best_model": best_model, "best_epoch": best_epoch, "best_score": best_score, "history": history,
                 "epoch": epoch, "elapsed": elapsed, "optimiser": optimiser.state_dict(),
                 "generator": generator.get_state(), "finished": finished}
        if on_epoch is not None:
            ctx.on_main(on_epoch, state)
    return state
