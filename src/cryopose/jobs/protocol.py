"""CESPED's benchmark protocol in one job (``cryopose evaluate --train``): train an
estimator on each half set of a ground-truth STAR, predict each half with the model of the
other half, and evaluate the predictions against the truth (pose errors and maps).

Writes ``train/`` (the two models, as ``cryopose train --halves``), ``predict/`` (the
cross-half predictions, as ``cryopose predict``), the evaluation itself and
``protocol.json`` (the training and prediction summaries) into the output folder. A truth
without rlnRandomSubset gets half sets drawn at random (the evaluation's seed), written as
``truth_halves.star`` and used by every step. Each step resumes: the training from its
per-epoch state, the prediction and the reconstructions from their finished chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.outputs import output_folder
from cryopose.io.star import write_star
from cryopose.jobs.evaluate import EvaluateSettings, run_evaluate
from cryopose.jobs.inputs import half_set_labels
from cryopose.jobs.predict import PredictSettings, run_predict
from cryopose.jobs.train import TrainJobSettings, run_train

__all__ = ["run_protocol"]


def run_protocol(
    truth: str | Path,
    out: str | Path,
    training: TrainJobSettings,
    evaluation: EvaluateSettings | None = None,
    gt_map: Path | None = None,
    mask: Path | None = None,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    stage: Callable[[str], None] | None = None,
    force: bool = False,
    executor: Any = None,
) -> dict[str, Any]:
    """Train per half, cross-predict, evaluate; returns the evaluation's metrics with the
    training and prediction summaries under "protocol"."""
    truth, out = Path(truth), Path(out)
    evaluation = evaluation or EvaluateSettings()
    training = replace(training, halves=True, train=replace(training.train, symmetry=evaluation.symmetry))
    ps = read_particles(truth, apix)
    labels, drawn = half_set_labels(ps, evaluation.seed)
    out.mkdir(parents=True, exist_ok=True)
    if drawn:  # the halves every step uses, drawn as the evaluation would draw them
        if stage is not None:
            stage(
                f"{truth} has no rlnRandomSubset: half sets drawn at random (seed {evaluation.seed}) into "
                f"{out / 'truth_halves.star'}"
            )
        write_star(ps.with_columns(rlnRandomSubset=labels), out / "truth_halves.star")
        truth = out / "truth_halves.star"
    trained = run_train(
        truth, out / "train", training, apix=apix, device=device, progress=progress, stage=stage, force=force
    )
    if stage is not None:
        stage("predicting each half with the other half's model")
    predicted = run_predict(
        out / "train",
        truth,
        out / "predict",
        PredictSettings(),
        apix=apix,
        device=device,
        force=force,
        executor=executor,
    )
    if stage is not None:
        stage("evaluating")
    metrics = run_evaluate(
        [out / "predict" / "particles.star"],
        out,
        truth=truth,
        gt_map=gt_map,
        mask=mask,
        settings=evaluation,
        apix=apix,
        device=device,
        progress=progress,
        force=force,
        executor=executor,
    )
    metrics["protocol"] = {"training": trained, "prediction": predicted}
    with output_folder(out, inputs=[truth], outputs=["protocol.json"], force=force):
        write_json_atomic(out / "protocol.json", metrics["protocol"])
    return metrics
