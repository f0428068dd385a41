"""Predictions matched with the ground-truth particles they are for (``cryopose evaluate``).

- Each prediction's ``rlnImageName`` equals a truth particle's, or names the same image once
  both are resolved against their own STAR file's folder (a prediction written elsewhere with
  relinked names). A predicted particle not in the truth, or predicted twice, is an error;
  truth particles without a prediction are left out of everything (counted and noted).
- Without a ground-truth file, the truth is taken from each prediction's own
  ``cryoposeTrueAngleRot/Tilt/Psi`` and ``cryoposeTrueOriginX/YAngst`` columns (what
  ``cryopose predict`` writes); the other columns (CTF, half sets, image names,
  ``rlnMaxValueProbDistribution``) are the prediction file's, which are its input's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from cryopose.errors import UserError
from cryopose.geometry.rotations import euler_to_matrix
from cryopose.io.star import relink_image_names
from cryopose.particles import (
    ANGLE_COLUMNS,
    CONFIDENCE_COLUMN,
    ORIGIN_ANGST_COLUMNS,
    ORIGIN_PX_COLUMNS,
    TRUE_ANGLE_COLUMNS,
    TRUE_ORIGIN_COLUMNS,
    ParticleSet,
)

__all__ = ["Matched", "match_predictions", "truth_from_predictions", "describe"]


@dataclass
class Matched:
    """Predictions aligned with the truth particles they are for.

    truth_rows: rows of the truth (ascending) that have a prediction; angles_deg (m, 3):
    the predicted rlnAngleRot/Tilt/Psi as written; rotations (m, 3, 3): their matrices A;
    shifts (m, 2) Å: the predicted origins, the truth's where the prediction has none
    (``shifts_predicted`` False); confidence (m,): cryoposeConfidence, NaN where absent;
    source (m,): the index of the prediction set; half_sets: the predictions'
    rlnRandomSubset (None unless every set has it); n_by_path: predictions matched by
    resolved image path rather than by name.
    """

    truth_rows: np.ndarray
    angles_deg: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    shifts_predicted: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    half_sets: np.ndarray | None
    n_truth: int
    n_predicted: int
    n_by_path: int


def _names(ps: ParticleSet, what: str) -> np.ndarray:
    if "rlnImageName" not in ps.table.columns:
        raise UserError(f"{what} has no rlnImageName column; particles are matched by image name")
    names = ps.table["rlnImageName"]
    if names.isna().any():
        raise UserError(
            f"{what} has particles without an image name (rlnImageName, row {int(np.argmax(names.isna())) + 1})"
        )
    return names.astype(str).to_numpy()


def _resolved_keys(ps: ParticleSet) -> np.ndarray:
    """'index@absolute stack path' per particle (names resolved against the set's folder)."""
    return np.char.add(np.char.add(ps.image_indices.astype(str), "@"), ps.image_paths)


def describe(ps: ParticleSet, default: str) -> str:
    """The file a set was read from, else ``default`` (for messages)."""
    return str(ps.source_file) if ps.source_file is not None else default


def _first_duplicate(keys: np.ndarray) -> tuple[str, np.ndarray] | None:
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if counts.max(initial=0) <= 1:
        return None
    k = int(np.argmax(counts > 1))
    return str(uniq[k]), np.flatnonzero(inverse == k)


def match_predictions(truth: ParticleSet, predictions: list[ParticleSet]) -> Matched:
    """Align the predictions with the truth by image name (see the module); UserError for
    predictions without angles, duplicated, or not in the truth."""
    if not predictions:
        raise UserError("no predictions given; give at least one prediction file")
    t_names = _names(truth, describe(truth, "the ground truth"))
    dup = _first_duplicate(t_names)
    if dup is not None:
        listed = ", ".join(str(r + 1) for r in dup[1][:3])
        raise UserError(
            f"{describe(truth, 'the ground truth')} lists image {dup[0]} {len(dup[1])} times (rows {listed}); "
            "each particle must appear once"
        )
    lookup = pd.Series(np.arange(len(t_names)), index=t_names)
    truth_keys: pd.Series | None = None
    rows_all: list[np.ndarray] = []
    angles: list[np.ndarray] = []
    shifts: list[np.ndarray] = []
    has_shift: list[np.ndarray] = []
    conf: list[np.ndarray] = []
    source: list[np.ndarray] = []
    halves: list[np.ndarray] = []
    n_by_path = 0
    all_halves = True
    for k, ps in enumerate(predictions):
        what = describe(ps, f"prediction set {k + 1}")
        if len(ps) == 0:
            raise UserError(f"{what} has no particles; give predictions for the ground truth's particles")
        names = _names(ps, what)
        missing = [c for c in ANGLE_COLUMNS if c not in ps.table.columns]
        if missing:
            raise UserError(
                f"{what} has no predicted angles ({', '.join(missing)} missing); give a file with predicted poses"
            )
        rows = lookup.reindex(names).to_numpy(dtype=np.float64, copy=True)
        unmatched = np.isnan(rows)
        if unmatched.any():
            if truth_keys is None:
                truth_keys = pd.Series(np.arange(len(truth)), index=_resolved_keys(truth))
                truth_keys = truth_keys[~truth_keys.index.duplicated()]
            by_path = truth_keys.reindex(_resolved_keys(ps.subset(unmatched))).to_numpy()
            rows[unmatched] = by_path
            n_by_path += int(np.isfinite(by_path).sum())
            still = np.isnan(rows)
            if still.any():
                first = names[int(np.argmax(still))]
                raise UserError(
                    f"{int(still.sum())} of the {len(ps)} particles of {what} are not in the ground truth "
                    f"(first: {first}); predictions are matched to the truth by rlnImageName"
                )
        rows_all.append(rows.astype(np.int64))
        angles.append(ps.finite_columns(ANGLE_COLUMNS))
        own_origins = all(c in ps.table.columns for c in ORIGIN_ANGST_COLUMNS) or all(
            c in ps.table.columns for c in ORIGIN_PX_COLUMNS
        )
        shifts.append(ps.shifts_angstrom if own_origins else np.full((len(ps), 2), np.nan))
        has_shift.append(np.full(len(ps), own_origins))
        if CONFIDENCE_COLUMN in ps.table.columns:
            conf.append(ps.table[CONFIDENCE_COLUMN].to_numpy(dtype=np.float64))
        else:
            conf.append(np.full(len(ps), np.nan))
        source.append(np.full(len(ps), k, dtype=np.int64))
        h = ps.half_sets
        if h is None:
            all_halves = False
        else:
            halves.append(h)
    rows = np.concatenate(rows_all)
    dup = _first_duplicate(rows)
    if dup is not None:
        src = np.concatenate(source)[dup[1]]
        files = sorted({describe(predictions[s], f"prediction set {s + 1}") for s in src})
        raise UserError(
            f"image {t_names[int(dup[0])]} is predicted {len(dup[1])} times (in {', '.join(files)}); "
            "give one prediction per particle"
        )
    order = np.argsort(rows, kind="stable")
    angles_deg = np.concatenate(angles)[order]
    t = torch.from_numpy(np.deg2rad(angles_deg))
    pred_shifts = np.concatenate(shifts)[order]
    predicted = np.concatenate(has_shift)[order]
    truth_rows = rows[order]
    pred_shifts[~predicted] = truth.subset(truth_rows[~predicted]).shifts_angstrom if (~predicted).any() else 0.0
    return Matched(
        truth_rows=truth_rows,
        angles_deg=angles_deg,
        rotations=euler_to_matrix(t[:, 0], t[:, 1], t[:, 2]).numpy(),
        shifts=pred_shifts,
        shifts_predicted=predicted,
        confidence=np.concatenate(conf)[order],
        source=np.concatenate(source)[order],
        half_sets=np.concatenate(halves)[order] if all_halves else None,
        n_truth=len(truth),
        n_predicted=len(rows),
        n_by_path=n_by_path,
    )


def truth_from_predictions(predictions: list[ParticleSet]) -> ParticleSet:
    """The ground truth kept in prediction sets: their cryoposeTrueAngle* (and, when present,
    cryoposeTrueOrigin*) columns as rlnAngle*/rlnOriginX/YAngst, every other column as it
    is, the sets concatenated (image names relinked to the first set's folder)."""
    parts = []
    for k, ps in enumerate(predictions):
        what = describe(ps, f"prediction set {k + 1}")
        missing = [c for c in TRUE_ANGLE_COLUMNS if c not in ps.table.columns]
        if missing:
            raise UserError(
                f"{what} has no ground-truth columns ({', '.join(missing)} missing); give the ground truth "
                "as a separate file",
                option="truth",
            )
        truth = ps.with_columns(
            **{rln: ps.table[true].to_numpy() for rln, true in zip(ANGLE_COLUMNS, TRUE_ANGLE_COLUMNS)}
        )
        if all(c in ps.table.columns for c in TRUE_ORIGIN_COLUMNS):
            truth = truth.with_poses(shifts_angstrom=ps.finite_columns(TRUE_ORIGIN_COLUMNS))
        parts.append(truth)
    first = parts[0]
    if len(parts) == 1:
        return first
    folder = first.source_dir
    tables = [relink_image_names(p, folder).table if folder is not None else p.table for p in parts]
    return replace(first, table=pd.concat(tables, ignore_index=True), source_file=None)
