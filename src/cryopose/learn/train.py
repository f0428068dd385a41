"""The training loop of the pose estimators, and batched prediction (no file access: the
jobs layer saves what ``on_epoch`` hands it).

Images are prepared once (CTF-corrected, normalised, Fourier-cropped; a few MB at 32-64 px)
and held as one tensor; each batch is augmented on the fly (in-plane rotations and shifts
that update the pose exactly).

The schedule counts epochs, never the clock: the learning rate rises linearly from 10% to
its peak over the first epoch, then follows a cosine to 1% of its peak at the last planned
epoch, so a busy machine gives the same model as an idle one, only later. A time budget
(``minutes``) is turned into a number of epochs once, from the first epoch's duration
(validation included), and that number is kept in the state. A run resumed from its last
state (model, optimiser, random generator, planned epochs, history) continues exactly where
it stopped. Distributed runs (:mod:`cryopose.learn.distributed`) give each process a slice
of every global batch; gradients are averaged by DDP.

Every run with validation particles also records the chance level: the median error of
uniformly random poses under the symmetry group, and the threshold a best validation
median must beat to count as learned (:func:`chance_level`).
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
from cryopose.evaluate.pose_errors import chance_error_quantile
from cryopose.geometry.distances import rotation_distance
from cryopose.geometry.rotations import matrix_to_quaternion
from cryopose.geometry.symmetry import Symmetry
from cryopose.learn.distributed import DistributedContext
from cryopose.learn.losses import forum_loss, grid_cross_entropy, grid_targets, origin_loss, pair_indices
from cryopose.learn.models import _Estimator, build_estimator

__all__ = [
    "TrainSettings",
    "TrainingData",
    "train_estimator",
    "predict_poses",
    "angular_errors_deg",
    "planned_epochs",
    "learning_rate_at",
    "chance_level",
    "at_chance",
    "DEFAULT_EPOCHS",
]


DEFAULT_EPOCHS = {"grid": 60, "forum": 100}
"""Epochs per estimator when neither epochs nor minutes are given: at 32 px on 8,000
particles, about 15 and 25 minutes on 2 CPU cores (cryo-forum's quaternion head needs more
epochs than the grid; benchmarks/bench_learn.py)."""


@dataclass
class TrainSettings:
    """How to train. ``epochs``: the length of the schedule; ``minutes``: a time budget
    turned into epochs after the first one (with both, the smaller); neither:
    ``DEFAULT_EPOCHS`` of the estimator. ``network``: the estimator's config (``model`` "forum" or "grid",
    channels, blur_sigmas, grid_order, degree, auxiliary_grid, dropout). ``symmetry``: the
    particles' point group (a str becomes a ``Symmetry``)."""

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
        self.symmetry = Symmetry(self.symmetry)
        if self.epochs is None and self.minutes is None:
            self.epochs = DEFAULT_EPOCHS.get(self.network.get("model", "grid"), DEFAULT_EPOCHS["grid"])
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


Augment = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def angular_errors_deg(predicted: torch.Tensor, true: torch.Tensor, sym: str) -> torch.Tensor:
    """Symmetry-reduced geodesic error (deg) of each predicted pose (n, 3, 3)."""
    return torch.rad2deg(rotation_distance(predicted.double(), true.double(), sym))


def planned_epochs(settings: TrainSettings, first_epoch_seconds: float | None) -> int | None:
    """The number of epochs the schedule runs: ``settings.epochs``; with a time budget, the
    epochs of the first one's duration that fit into it (at least 1; the smaller of the two
    when both are given); None while a budget-only run has not finished its first epoch."""
    if settings.minutes is None:
        return settings.epochs
    if first_epoch_seconds is None:
        return None
    fit = max(1, int(60.0 * settings.minutes // max(first_epoch_seconds, 1e-9)))
    return fit if settings.epochs is None else min(settings.epochs, fit)


def learning_rate_at(base: float, epoch_progress: float, epochs: int | None) -> float:
    """Learning rate at ``epoch_progress`` epochs into a schedule of ``epochs``: linear
    warm-up from 0.1 base to base over the first epoch (the same whatever the length, so a
    time budget can set the length after it), then a cosine to 0.01 base at ``epochs``."""
    if epoch_progress < 1.0:
        return base * (0.1 + 0.9 * epoch_progress)
    if epochs is None or epochs <= 1:
        return base
    t = min(1.0, (epoch_progress - 1.0) / (epochs - 1.0))
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def curriculum_progress(epoch_progress: float, epochs: int | None) -> float:
    """Progress in [0, 1] of the losses' curriculum (cryo-forum's weights, the fading
    auxiliary grid): 0 through the warm-up epoch, then linear to 1 at ``epochs``."""
    if epochs is None or epochs <= 1:
        return 0.0 if epoch_progress < 1.0 or epochs is None else 1.0
    return min(1.0, max(0.0, (epoch_progress - 1.0) / (epochs - 1.0)))


CHANCE_SIGMAS = 4.0
"""How many standard errors below chance the best validation median must lie."""
CHANCE_MARGIN = 0.1
"""... and by at least this fraction of the chance median."""


def chance_level(sym: str, n_validation: int) -> dict[str, float]:
    """The chance level of a validation set of ``n_validation`` particles under ``sym``:
    {"chance_median_deg": the median angular error of uniformly random poses (132.3 deg in
    C1; ``evaluate.pose_errors.chance_error_quantile``), "chance_threshold_deg": the best
    validation median must be below this to count as learned}.

    The threshold is the lower of (1 - CHANCE_MARGIN) x the chance median and the quantile
    1/2 - CHANCE_SIGMAS / (2 sqrt(n)) of the chance errors. The median of n errors of a
    model that learned nothing falls below the second with probability Phi(-4) = 3e-5 per
    epoch, so even the best of hundreds of epochs (selection on the same particles) rarely
    passes it; the first is for large sets, where a median a few degrees below chance is
    significant but still useless for pose estimation."""
    median = chance_error_quantile(sym, 0.5)
    q = max(0.0, 0.5 - CHANCE_SIGMAS / (2.0 * math.sqrt(max(n_validation, 1))))
    threshold = min((1.0 - CHANCE_MARGIN) * median, chance_error_quantile(sym, q))
    return {"chance_median_deg": math.degrees(median), "chance_threshold_deg": math.degrees(threshold)}


def at_chance(best_validation_median_deg: float, chance: dict[str, float]) -> bool:
    """Whether a best validation median (deg) is not clearly better than ``chance_level``'s
    threshold (NaN counts as at chance)."""
    return not (best_validation_median_deg < chance["chance_threshold_deg"])


def _batch_loss(
    model: torch.nn.Module,
    kind: str,
    images: torch.Tensor,
    rotations: torch.Tensor,
    origins_px: torch.Tensor,
    weights: torch.Tensor,
    settings: TrainSettings,
    progress: float,
    generator: torch.Generator,
    grid_quaternions: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(images)
    parts: dict[str, float] = {}
    if kind == "forum":
        true_q = matrix_to_quaternion(rotations)
        pairs = pair_indices(true_q, settings.symmetry, settings.pair_sampling, generator)
        terms = forum_loss(out["quaternion"], rotations, settings.symmetry, progress, pairs, weights)
        loss = terms["loss"]
        parts["geodesic_deg"] = math.degrees(float(terms["geodesic"]))
        if "grid_logits" in out and grid_quaternions is not None:
            targets = grid_targets(rotations, grid_quaternions, settings.symmetry)
            ce = grid_cross_entropy(out["grid_logits"], targets, weights)
            loss = loss + (1 - progress) * ce  # the auxiliary grid head fades out as training ends
            parts["grid_ce"] = float(ce.detach())
    else:
        assert grid_quaternions is not None  # a grid estimator's head has its grid
        targets = grid_targets(rotations, grid_quaternions, settings.symmetry)
        ce = grid_cross_entropy(out["grid_logits"], targets, weights)
        loss = ce
        parts["grid_ce"] = float(ce.detach())
    shift = origin_loss(out["origin_px"], origins_px)
    parts["origin_px"] = float(shift.detach())
    return loss + settings.origin_weight * shift, parts


def _grid_quaternions(model: torch.nn.Module) -> torch.Tensor | None:
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "grid_quaternions"):
        return head.grid_quaternions
    aux = getattr(model, "auxiliary", None)
    return None if aux is None else aux.grid_quaternions


@torch.no_grad()
def predict_poses(
    model: _Estimator,
    images: torch.Tensor,
    pixel_size: float,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Poses of prepared images (n, 1, s, s) from a trained estimator, in batches:
    {"rotations" (n, 3, 3), "origins_angstrom" (n, 2), "confidence" (n,), and the
    estimator's extras (lambda_max, lambda_trace, grid_probability)}, numpy float64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
            out = model.predict(batch)
            out["origins_angstrom"] = out.pop("origin_px") * pixel_size
            for key, value in out.items():
                parts.setdefault(key, []).append(value.double().cpu().numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _validate(model: _Estimator, data: TrainingData, sym: str, device: torch.device) -> dict[str, float]:
    pred = predict_poses(model, data.images, data.pixel_size, device=device)
    errors = angular_errors_deg(torch.from_numpy(pred["rotations"]), data.rotations, sym).numpy()
    shift = np.linalg.norm(pred["origins_angstrom"] - data.origins_angstrom.double().numpy(), axis=1)
    return {
        "val_median_deg": float(np.median(errors)),
        "val_mean_deg": float(np.mean(errors)),
        "val_under_10_deg": float(np.mean(errors < 10)),
        "val_origin_median_angstrom": float(np.median(shift)),
    }


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
    median error; the last ones without validation data), "best_epoch", "best_score",
    "history" (one record per epoch: losses, validation median/mean error in deg, origin
    error in Å, learning rate, seconds), "epoch", "planned_epochs" (the schedule's length;
    None until a budget-only run has timed its first epoch), "first_epoch_seconds",
    "elapsed", "chance" (``chance_level`` of the validation set, or None), "at_chance"
    (whether the best validation median is not clearly better than chance; None without
    validation), "optimiser", "generator", "finished"}; plain tensors, numbers, strings and
    containers of them.

    ``state``: a state returned or handed to ``on_epoch`` before, to resume from; a finished
    state continues when ``settings`` plan more epochs. ``on_epoch(state)`` is called on the
    main process after each epoch (to save it). ``progress(k, total)``: k more steps done
    out of total (an estimate during a budget-only run's first epoch). ``clock`` (seconds)
    only times the epochs: it changes the schedule only through a time budget's first epoch."""
    ctx = context or DistributedContext()
    device = ctx.device
    if len(train) < settings.batch_size:
        raise UserError(
            f"{len(train)} training particles are fewer than one batch of {settings.batch_size}; "
            "use a smaller batch or more particles"
        )
    config = dict(state["config"]) if state else dict(settings.network)
    torch.manual_seed(settings.seed)  # the same initial weights on every rank and rerun
    estimator = build_estimator(config)
    config = estimator.config
    if state:
        estimator.load_state_dict(state["model"])
    # BatchNorm statistics over the global batch where SyncBatchNorm runs (CUDA); per process on CPU
    model = ctx.wrap(estimator, sync_batchnorm=ctx.is_distributed and device.type == "cuda")
    plain = ctx.unwrap(model)
    assert isinstance(plain, _Estimator)  # the estimator, moved (and wrapped in DDP) by ctx.wrap
    kind = plain.kind
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, Any]] = []
    epoch, elapsed, first_seconds = 0, 0.0, None
    best_model, best_epoch, best_score = None, -1, math.inf
    chance = chance_level(settings.symmetry, len(val)) if val is not None and len(val) else None
    if state:
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        first_seconds = state.get("first_epoch_seconds")
        best_model, best_epoch = state.get("best_model"), int(state.get("best_epoch", -1))
        best_score = float(state.get("best_score", math.inf))
    planned = planned_epochs(settings, first_seconds)
    if state and planned is not None and epoch >= planned:
        return {**state, "planned_epochs": planned, "finished": True}
    per_rank = ctx.per_rank_batch_size(settings.batch_size)
    n = len(train)
    steps_per_epoch = n // settings.batch_size
    grid_q = _grid_quaternions(plain)
    while planned is None or epoch < planned:
        start_clock = clock()
        model.train()
        order = torch.randperm(n, generator=generator)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            p = epoch + step / steps_per_epoch  # epochs done
            lr = learning_rate_at(settings.learning_rate, p, planned)
            for group in optimiser.param_groups:
                group["lr"] = lr
            chosen = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            # the whole global batch is augmented on every rank (same draws as one process)
            images, rotations = train.images[chosen], train.rotations[chosen].float()
            origins = train.origins_angstrom[chosen].float()
            if augment is not None:
                images, rotations, origins = augment(images, rotations, origins, generator)
            mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
            images, rotations, origins = images[mine], rotations[mine], origins[mine]
            weights = train.confidence[chosen][mine].float()
            loss, parts = _batch_loss(
                model,
                kind,
                images.to(device),
                rotations.to(device),
                (origins / train.pixel_size).to(device),
                weights.to(device),
                settings,
                curriculum_progress(p, planned),
                generator,
                grid_q,
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            sums["loss"] = sums.get("loss", 0.0) + float(ctx.mean(loss.detach()))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress is not None and ctx.is_main:
                if planned is None:  # a budget-only run's first epoch: extrapolate its pace
                    assert settings.minutes is not None  # planned_epochs gives None only with a time budget
                    so_far = max(clock() - start_clock, 1e-9) * steps_per_epoch / (step + 1)
                    total = steps_per_epoch * max(1, int(60.0 * settings.minutes // so_far))
                else:
                    total = steps_per_epoch * planned
                progress(1, max(total, epoch * steps_per_epoch + step + 1))
        epoch += 1
        record = {
            "epoch": epoch,
            "steps": steps_per_epoch,
            "learning_rate": lr,
            **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        if val is not None and len(val) and ctx.is_main:
            record.update(_validate(plain, val, settings.symmetry, device))
        elapsed += clock() - start_clock
        record["seconds"] = elapsed
        history.append(record)
        if first_seconds is None:  # the same on every rank
            first_seconds = float(ctx.mean(elapsed))
            planned = planned_epochs(settings, first_seconds)
        score = record.get("val_median_deg", -epoch)
        if score <= best_score:
            best_score, best_epoch = score, epoch
            best_model = copy.deepcopy({k: v.detach().cpu() for k, v in plain.state_dict().items()})
        state = {
            "config": config,
            "model": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
            "best_model": best_model,
            "best_epoch": best_epoch,
            "best_score": best_score,
            "history": history,
            "epoch": epoch,
            "planned_epochs": planned,
            "first_epoch_seconds": first_seconds,
            "elapsed": elapsed,
            "chance": chance,
            "at_chance": None if chance is None else at_chance(best_score, chance),
            "optimiser": optimiser.state_dict(),
            "generator": generator.get_state(),
            "finished": planned is not None and epoch >= planned,
        }
        if on_epoch is not None:
            ctx.on_main(on_epoch, state)
    assert state is not None  # the loop ran (a state already finished returned above)
    return state
