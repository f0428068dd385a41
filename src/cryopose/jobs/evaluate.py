"""The evaluate job: benchmark predicted poses against a ground truth the CESPED way
(Sanchez-Garcia et al., seed 001, sections 2.3-2.5, appendices D and H), with no RELION.

:func:`evaluate_predictions` works on ParticleSets: the ground truth (poses, origins, CTF,
half sets, images) and one or more prediction sets (the same particles, matched by
``rlnImageName``, with predicted ``rlnAngleRot/Tilt/Psi``, optionally predicted origins
``rlnOriginX/YAngst`` and a per-particle ``cryoposeConfidence``). It computes the
per-particle errors and their summaries (``cryopose.evaluate.pose_errors``), reconstructs
the ground-truth half maps GT0/GT1 and the half maps V0/V1 from the predicted poses of each
half (CTF-weighted, with symmetry, ``jobs.reconstruct.reconstruct_halves``), and compares
them unmasked and masked (``cryopose.evaluate.map_metrics``). :func:`~cryopose.jobs.evaluation_report.write_evaluation`
writes its result into a folder; :func:`run_evaluate` is the job on files behind
``cryopose evaluate``.

Conventions (matching the predictions with the truth: :mod:`cryopose.jobs.prediction_matching`):

- Origins: a prediction without origin columns is reconstructed with the true origins (as
  CESPED does for estimators that predict rotations only) and has no shift error.
- Half sets: the truth's ``rlnRandomSubset``; else the predictions' (all must have it);
  else, with exactly two prediction files, the file (first file = half 1); else a random
  balanced split drawn from ``seed``. Half h of the predictions gives V_h.
- GT = (GT0 + GT1)/2 unless a ground-truth map is given (``map_metrics.ground_truth_map``).
- Mask: given, or made from GT by ``imaging.filters.soft_mask_from_map`` (low-pass 15 Å,
  threshold 0.2 of the maximum, extended 6 Å, raised-cosine edge 8 Å; all settings).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.evaluate import (
    MapComparison,
    compare_maps,
    confident_subset_statistics,
    error_statistics,
    ground_truth_map,
    pose_errors,
    spearman_correlation,
)
from cryopose.geometry.symmetry import Symmetry
from cryopose.imaging.filters import soft_mask_from_map
from cryopose.io import read_particles
from cryopose.io.checkpoints import Checkpoint, file_identity
from cryopose.io.mrc import ParticleImages, read_map
from cryopose.io.outputs import output_folder
from cryopose.jobs.evaluation_report import write_evaluation
from cryopose.jobs.inputs import half_set_labels, particle_pixel_size, require_reconstruction_memory
from cryopose.jobs.prediction_matching import Matched, describe, match_predictions, truth_from_predictions
from cryopose.jobs.reconstruct import ReconstructSettings, reconstruct_halves
from cryopose.particles import (
    ANGLE_COLUMNS,
    CONFIDENCE_COLUMN,
    ORIGIN_ANGST_COLUMNS,
    ORIGIN_PX_COLUMNS,
    TRUE_ANGLE_COLUMNS,
    TRUE_ORIGIN_COLUMNS,
    ParticleSet,
)

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.executor import DaskExecutor

__all__ = [
    "EvaluateSettings",
    "Matched",
    "Evaluation",
    "match_predictions",
    "truth_from_predictions",
    "evaluate_predictions",
    "write_evaluation",
    "run_evaluate",
    "TRUE_ANGLE_COLUMNS",
    "TRUE_ORIGIN_COLUMNS",
    "CONFIDENCE_COLUMN",
    "ERROR_COLUMNS",
    "OUTPUTS",
]

log = logging.getLogger("cryopose")

# per-particle error columns of per_particle.star: degrees, degrees, degrees, Å
ERROR_COLUMNS = ("cryoposeAngularError", "cryoposeDirectionError", "cryoposeInPlaneError", "cryoposeShiftError")

MAPS = ("gt.mrc", "gt_half1.mrc", "gt_half2.mrc", "pred.mrc", "pred_half1.mrc", "pred_half2.mrc", "mask.mrc")
FIGURES = ("errors.png", "confidence.png", "directions.png", "fsc.png", "fsc_masked.png", "slices.png")
OUTPUTS = ("metrics.json", "per_particle.star", "report.md", *FIGURES, *MAPS)
STAGES = ("gt", "pred")


@dataclass
class EvaluateSettings:
    """Settings of an evaluation.

    symmetry: RELION point group of the errors and reconstructions (a str becomes a ``Symmetry``); reconstruct: False
    computes the pose errors only; ctf: CTF-weighted reconstruction; seed: of the random
    half split when no half sets are known; chunk_size: particles read and inserted at a
    time (results do not depend on it); thresholds: angular errors (deg) whose fractions
    below are reported; confident_fraction: the share of most confident particles whose
    errors are reported; mask_*: the automatic mask (``imaging.filters.soft_mask_from_map``;
    threshold None: 0.2 of the low-passed map's maximum; lengths in Å).
    """

    symmetry: str = "C1"
    reconstruct: bool = True
    ctf: bool = True
    seed: int = 0
    chunk_size: int = 256
    thresholds: tuple[float, ...] = (5.0, 10.0, 15.0, 30.0)
    confident_fraction: float = 0.75
    mask_threshold: float | None = None
    mask_lowpass: float = 15.0
    mask_extend: float = 6.0
    mask_soft_edge: float = 8.0

    def __post_init__(self) -> None:
        self.symmetry = Symmetry(self.symmetry)
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if int(self.chunk_size) < 1:
            raise UserError(f"the chunk size must be at least 1, got {self.chunk_size}", option="chunk-size")
        if not 0 < self.confident_fraction <= 1:
            raise UserError(f"the confident fraction must be in (0, 1], got {self.confident_fraction}")
        for name in ("mask_lowpass", "mask_extend", "mask_soft_edge"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(
                    f"the {name.replace('_', ' ')} must be a finite number >= 0 Å, got {value}",
                    option=name.replace("_", "-"),
                )
        if self.mask_threshold is not None and not math.isfinite(self.mask_threshold):
            raise UserError(
                f"the mask threshold must be a finite number, got {self.mask_threshold}", option="mask-threshold"
            )


@dataclass
class Evaluation:
    """The result of :func:`evaluate_predictions`.

    per_particle: the evaluated truth particles with the predicted poses (rlnAngle*,
    rlnOriginX/YAngst), the truth in cryoposeTrue* columns, the errors (``ERROR_COLUMNS``,
    deg and Å), cryoposeConfidence when predicted and rlnRandomSubset (the halves used);
    metrics: everything of metrics.json; maps: the volumes (numpy, (N, N, N)) by output
    name (gt, gt_half1, gt_half2, pred, pred_half1, pred_half2, mask; those computed);
    comparisons: the unmasked and masked ``MapComparison`` (empty without reconstruction).
    """

    per_particle: ParticleSet
    metrics: dict
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    comparisons: dict[str, MapComparison] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers
def _without_origins(ps: ParticleSet) -> ParticleSet:
    return ps.with_table(
        ps.table.drop(columns=[c for c in (*ORIGIN_ANGST_COLUMNS, *ORIGIN_PX_COLUMNS) if c in ps.table.columns])
    )


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _halves(truth_m: ParticleSet, matched: Matched, n_sets: int, seed: int) -> tuple[np.ndarray, str]:
    if truth_m.half_sets is not None:
        return half_set_labels(truth_m, seed)[0], "rlnRandomSubset of the ground truth"
    if matched.half_sets is not None:
        return half_set_labels(truth_m.with_columns(rlnRandomSubset=matched.half_sets), seed)[
            0
        ], "rlnRandomSubset of the predictions"
    if n_sets == 2:
        return matched.source + 1, "the two prediction files (first = half 1)"
    return half_set_labels(truth_m, seed)[0], f"a random balanced split (seed {seed})"


def _degrees(x: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(x.double().cpu())


def _pose_metrics(
    errors, truth_conf: np.ndarray, matched: Matched, halves: np.ndarray, settings: EvaluateSettings
) -> dict:
    ang = _degrees(errors.angular)
    stats = error_statistics(ang, torch.from_numpy(truth_conf), settings.thresholds)
    out: dict = {
        "MAnE_deg": stats["mean"],
        "wMAnE_deg": stats["weighted_mean"],
        "median_angular_error_deg": stats["median"],
        "angular_error_deg": stats,
        "direction_error_deg": error_statistics(_degrees(errors.direction), thresholds=settings.thresholds),
        "in_plane_error_deg": error_statistics(_degrees(errors.in_plane), thresholds=settings.thresholds),
        "wMAnE_weights": "rlnMaxValueProbDistribution of the ground truth (1 where absent)",
    }
    if errors.shift is not None and matched.shifts_predicted.any():
        shift = errors.shift.double().cpu()[torch.from_numpy(matched.shifts_predicted)]
        out["shift_error_angstrom"] = error_statistics(shift)
    else:
        out["shift_error_angstrom"] = None
    conf = torch.from_numpy(matched.confidence)
    if torch.isfinite(conf).any():
        top = confident_subset_statistics(ang, conf, settings.confident_fraction)
        out["confidence"] = {
            "n": int(torch.isfinite(conf).sum()),
            "spearman_confidence_vs_error": spearman_correlation(conf, ang),
            "most_confident": top,
        }
    else:
        out["confidence"] = None
    out["by_half"] = {}
    for h in (1, 2):
        sel = torch.from_numpy(halves == h)
        s = error_statistics(ang[sel], torch.from_numpy(truth_conf)[sel])
        out["by_half"][str(h)] = {
            "n": s["n"],
            "MAnE_deg": s["mean"],
            "wMAnE_deg": s["weighted_mean"],
            "median_angular_error_deg": s["median"],
        }
    return out


def _reconstruct_stage(
    name: str,
    tensors,
    images,
    halves: np.ndarray,
    pixel_size: float,
    rsettings: ReconstructSettings,
    device: torch.device,
    checkpoint_dir: Path | None,
    signature: dict | None,
    progress: Callable[[int, int], None] | None,
    executor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half maps of one stage; finished maps and running sums checkpointed in ``checkpoint_dir``."""
    if checkpoint_dir is None or signature is None:
        h1, h2, _ = reconstruct_halves(tensors, images, halves, pixel_size, rsettings, device, None, progress, executor)
        return h1, h2
    finished = Checkpoint(checkpoint_dir / f".evaluate_{name}_maps.pt", signature)
    state = finished.load(map_location=device)
    if state is not None:
        log.info("reusing the %s half maps finished by an earlier run", name)
        if progress is not None:
            progress(len(tensors), len(tensors))
        return state["half1"], state["half2"]
    partial = Checkpoint(checkpoint_dir / f".evaluate_{name}_sums.pt", signature)
    h1, h2, _ = reconstruct_halves(tensors, images, halves, pixel_size, rsettings, device, partial, progress, executor)
    finished.save({"half1": h1.cpu(), "half2": h2.cpu()})
    partial.remove()
    return h1, h2


def _on_grid(volume: np.ndarray | torch.Tensor, box: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    if tuple(v.shape) != (box, box, box):
        raise UserError(
            f"{what} is {'x'.join(map(str, v.shape))} but the particles are {box} px; "
            f"resample {what} onto the particles' {box}^3 grid"
        )
    return v


# ---------------------------------------------------------------------------- the evaluation
def evaluate_predictions(
    truth: ParticleSet,
    predictions: list[ParticleSet],
    images=None,
    settings: EvaluateSettings | None = None,
    gt_map: np.ndarray | torch.Tensor | None = None,
    mask: np.ndarray | torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    checkpoint_dir: Path | None = None,
    signature: dict | None = None,
    executor: DaskExecutor | None = None,
) -> Evaluation:
    """Evaluate ``predictions`` of the ``truth`` particles (see the module for matching,
    half sets, origins, the GT map and the mask).

    ``images``: the truth's image source (``ParticleImages`` or ``ArrayImages``, row i =
    truth row i; None: ``ParticleImages(truth)``), read only to reconstruct. ``gt_map``: a
    ground-truth map on the particles' grid to use as GT (the half maps are still
    reconstructed); ``mask``: a mask on that grid (None: automatic). ``progress(advance,
    total)`` counts particles inserted over both reconstructions. With ``checkpoint_dir``
    and a ``signature`` (the run's inputs and settings) the reconstructions checkpoint
    there and a rerun resumes them. ``executor``: reconstruct on a Dask cluster."""
    settings = settings or EvaluateSettings()
    device = torch.device(device)
    t0 = time.perf_counter()
    # every check first, then the work
    matched = match_predictions(truth, predictions)
    truth_m = truth.subset(matched.truth_rows)
    n = len(truth_m)
    if truth_m.rotations is None:
        raise UserError(
            f"{describe(truth, 'the ground truth')} has no angles (rlnAngleRot/Tilt/Psi); give ground-truth poses"
        )
    truth_conf = np.array(truth_m.confidence(), dtype=np.float64)
    truth_m.reject_rows(
        ~(np.isfinite(truth_conf) & (truth_conf >= 0)),
        "rlnMaxValueProbDistribution",
        truth_conf,
        "not a number >= 0",
        "fix the confidence (the wMAnE weight)",
    )
    true_rot = torch.from_numpy(truth_m.rotations)
    true_shift = torch.from_numpy(truth_m.shifts_angstrom)
    halves, halves_from = _halves(truth_m, matched, len(predictions), settings.seed)
    if settings.reconstruct:
        for h in (1, 2):
            if not np.any(halves == h):
                raise UserError(
                    f"half set {h} has no particles ({halves_from}); give both halves particles to "
                    "reconstruct, or evaluate the poses only",
                    option="no-maps",
                )
        pixel_size = particle_pixel_size(truth_m)
        true_tensors = truth_m.to_tensors(ctf=settings.ctf)
        if settings.ctf and true_tensors.ctf is None:
            raise UserError(
                f"{describe(truth, 'the ground truth')} has no CTF columns (rlnDefocusU ...); evaluate without CTF",
                option="no-ctf",
            )
        images_m = (ParticleImages(truth) if images is None else images).take(matched.truth_rows)
        box = images_m.image_shape[0]
        require_reconstruction_memory(box, device, extra_volumes=8)
        gt_given = None if gt_map is None else _on_grid(gt_map, box, "the ground-truth map").to(device)
        mask_given = None if mask is None else _on_grid(mask, box, "the mask").to(device)
        if mask_given is not None and not bool((mask_given > 0).any()):
            raise UserError("the mask is all zeros; give a mask that covers the particle")
    if n < len(truth):
        log.info(
            "note: %d of the %d ground-truth particles have no prediction and are left out", len(truth) - n, len(truth)
        )
    errors = pose_errors(
        torch.from_numpy(matched.rotations).to(device),
        true_rot.to(device),
        settings.symmetry,
        torch.from_numpy(matched.shifts).to(device),
        true_shift.to(device),
    )
    metrics: dict = {
        "n_particles": n,
        "n_half1": int((halves == 1).sum()),
        "n_half2": int((halves == 2).sum()),
        "half_sets_from": halves_from,
        "symmetry": settings.symmetry,
        "matching": {
            "n_truth": matched.n_truth,
            "n_predicted": matched.n_predicted,
            "n_matched": n,
            "n_truth_without_prediction": matched.n_truth - n,
            "n_matched_by_resolved_path": matched.n_by_path,
            "n_with_predicted_origins": int(matched.shifts_predicted.sum()),
        },
        "pose": _pose_metrics(errors, truth_conf, matched, halves, settings),
    }
    t_pose = time.perf_counter() - t0
    maps: dict[str, np.ndarray] = {}
    comparisons: dict[str, MapComparison] = {}
    if settings.reconstruct:
        rsettings = ReconstructSettings(
            symmetry=settings.symmetry, ctf=settings.ctf, seed=settings.seed, chunk_size=settings.chunk_size
        )
        pred_tensors = replace(
            true_tensors,
            rotations=torch.from_numpy(matched.rotations),
            shifts_angstrom=torch.from_numpy(matched.shifts),
        )
        total = 2 * n
        step = None if progress is None else (lambda advance, _n: progress(advance, total))
        base = None
        if signature is not None:
            base = {
                **signature,
                "symmetry": settings.symmetry,
                "ctf": settings.ctf,
                "halves": _digest(halves),
                "rows": _digest(matched.truth_rows),
            }
        t1 = time.perf_counter()
        gt1, gt2 = _reconstruct_stage(
            "gt",
            true_tensors,
            images_m,
            halves,
            pixel_size,
            rsettings,
            device,
            checkpoint_dir,
            None if base is None else {**base, "predictions": None, "stage": "gt"},
            step,
            executor,
        )
        v1, v2 = _reconstruct_stage(
            "pred",
            pred_tensors,
            images_m,
            halves,
            pixel_size,
            rsettings,
            device,
            checkpoint_dir,
            None if base is None else {**base, "stage": "pred", "poses": _digest(matched.rotations, matched.shifts)},
            step,
            executor,
        )
        t_rec = time.perf_counter() - t1
        gt = gt_given if gt_given is not None else ground_truth_map(gt1, gt2)
        mask_info: dict
        if mask_given is None:
            try:
                mask_t, thr = soft_mask_from_map(
                    gt,
                    pixel_size,
                    settings.mask_threshold,
                    settings.mask_lowpass,
                    settings.mask_extend,
                    settings.mask_soft_edge,
                )
            except ValueError as exc:
                raise UserError(
                    f"cannot make a mask from the ground-truth map: {exc}; give a lower threshold or a mask",
                    option="mask-threshold",
                ) from None
            mask_info = {
                "source": "automatic from the GT map",
                "threshold": thr,
                "lowpass_angstrom": settings.mask_lowpass,
                "extend_angstrom": settings.mask_extend,
                "soft_edge_angstrom": settings.mask_soft_edge,
            }
        else:
            mask_t = mask_given
            mask_info = {"source": "given"}
        mask_info["fraction_of_box_above_half"] = float((mask_t > 0.5).float().mean())
        comparisons = {
            "unmasked": compare_maps(gt, gt1, gt2, v1, v2, pixel_size),
            "masked": compare_maps(gt, gt1, gt2, v1, v2, pixel_size, mask_t),
        }
        freq = comparisons["unmasked"].fsc["gt_v"].frequency
        metrics["maps"] = {
            "pixel_size": pixel_size,
            "box": box,
            "ctf": settings.ctf,
            "gt_map": "given" if gt_given is not None else "(GT0 + GT1) / 2 from ground-truth poses",
            "origins": (
                "predicted"
                if matched.shifts_predicted.all()
                else "ground truth"
                if not matched.shifts_predicted.any()
                else "predicted where given, else ground truth"
            ),
            "mask": mask_info,
            **{kind: c.to_dict() for kind, c in comparisons.items()},
            "fsc_curves": {
                "frequency_per_angstrom": [float(f) for f in freq],
                **{
                    kind: {pair: [float(v) for v in r.fsc] for pair, r in c.fsc.items()}
                    for kind, c in comparisons.items()
                },
            },
        }
        volumes = {"gt_half1": gt1, "gt_half2": gt2, "pred_half1": v1, "pred_half2": v2, "pred": 0.5 * (v1 + v2)}
        if gt_given is None:
            volumes["gt"] = gt
        if mask_given is None:
            volumes["mask"] = mask_t
        maps = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in volumes.items()}
        metrics["seconds_reconstruction"] = t_rec
    metrics["seconds_pose_errors"] = t_pose
    metrics["seconds"] = time.perf_counter() - t0
    metrics["device"] = str(device)
    per_particle = _per_particle(truth_m, matched, errors, halves)
    return Evaluation(per_particle=per_particle, metrics=metrics, maps=maps, comparisons=comparisons)


def _per_particle(truth_m: ParticleSet, matched: Matched, errors, halves: np.ndarray) -> ParticleSet:
    true_angles = truth_m.finite_columns(ANGLE_COLUMNS)
    true_shifts = truth_m.shifts_angstrom
    out = truth_m.with_poses(shifts_angstrom=matched.shifts)
    shift_err = np.full(len(truth_m), np.nan)
    if errors.shift is not None:
        shift_err = errors.shift.double().cpu().numpy()
        shift_err[~matched.shifts_predicted] = np.nan
    cols = {c: matched.angles_deg[:, j] for j, c in enumerate(ANGLE_COLUMNS)}
    cols.update({c: true_angles[:, j] for j, c in enumerate(TRUE_ANGLE_COLUMNS)})
    cols.update({c: true_shifts[:, j] for j, c in enumerate(TRUE_ORIGIN_COLUMNS)})
    cols.update(
        zip(
            ERROR_COLUMNS,
            (
                _degrees(errors.angular).numpy(),
                _degrees(errors.direction).numpy(),
                _degrees(errors.in_plane).numpy(),
                shift_err,
            ),
        )
    )
    if np.isfinite(matched.confidence).any():
        cols[CONFIDENCE_COLUMN] = matched.confidence
    cols["rlnRandomSubset"] = halves.astype(np.int64)
    return out.with_columns(**cols)


def run_evaluate(
    predictions: list[Path],
    out: Path,
    truth: Path | None = None,
    gt_map: Path | None = None,
    mask: Path | None = None,
    settings: EvaluateSettings | None = None,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: DaskExecutor | None = None,
) -> dict:
    """The ``cryopose evaluate`` job on files; returns the metrics (out/metrics.json).

    ``truth`` None takes the ground truth from the predictions' cryoposeTrue* columns.
    Inputs and the output folder are checked before any work; files in ``out`` that
    cryopose did not write are replaced only with ``force``; an interrupted run resumes
    its reconstructions."""
    settings = settings or EvaluateSettings()
    out = Path(out)
    preds = [read_particles(p, apix=apix) for p in predictions]
    if truth is not None:
        truth_ps = read_particles(truth, apix=apix)
    else:
        truth_ps = truth_from_predictions(preds)
        # without cryoposeTrueOrigin* the truth's origins are the prediction's: no shift error to report
        preds = [
            ps if all(c in ps.table.columns for c in TRUE_ORIGIN_COLUMNS) else _without_origins(ps) for ps in preds
        ]
    if len(truth_ps) == 0:
        raise UserError(f"{truth} has no particles; nothing to evaluate")
    gt_vol = mask_vol = None
    inputs = [Path(p) for p in predictions] + ([Path(truth)] if truth is not None else [])
    if gt_map is not None:
        gt_vol, gt_apix = read_map(gt_map)
        inputs.append(Path(gt_map))
    if mask is not None:
        mask_vol, _ = read_map(mask)
        inputs.append(Path(mask))
    matched = match_predictions(truth_ps, preds)  # the matching problems, before the output folder
    images = None
    if settings.reconstruct:
        images = ParticleImages(truth_ps)  # checks the stacks: they exist, indices in range, one size
        inputs += [Path(p) for p in images.paths]
        apix_particles = particle_pixel_size(truth_ps.subset(matched.truth_rows))
        if gt_map is not None and gt_apix > 0 and abs(gt_apix - apix_particles) > 0.01 * apix_particles:
            raise UserError(
                f"the ground-truth map {gt_map} has {gt_apix:.4f} A/px but the particles {apix_particles:.4f} "
                "A/px; resample the map to the particles' pixel size"
            )
    signature = {
        "truth": None if truth is None else file_identity(truth),
        "predictions": [file_identity(p) for p in predictions],
        "apix": apix,
        "map": None if gt_map is None else file_identity(gt_map),
        "seed": settings.seed,
    }
    with output_folder(out, inputs=inputs, outputs=OUTPUTS, force=force):
        ev = evaluate_predictions(
            truth_ps, preds, images, settings, gt_vol, mask_vol, device, progress, out, signature, executor
        )
        ev.metrics["inputs"] = {
            "truth": None if truth is None else str(truth),
            "predictions": [str(p) for p in predictions],
            "map": None if gt_map is None else str(gt_map),
            "mask": None if mask is None else str(mask),
        }
        write_evaluation(ev, out)
        for stage in STAGES:
            Checkpoint(out / f".evaluate_{stage}_maps.pt", {}).remove()
    return ev.metrics
