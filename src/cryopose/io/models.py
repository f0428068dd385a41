"""Trained pose estimators on disk: ``model.pt`` holds the network's config, its weights and
how its input images were prepared, so that it loads without the training options.

The file is a ``torch.save`` dict {"format": "cryopose-estimator", "format_version": 1,
"config", "weights", "image_settings", "pixel_size", "symmetry", "metadata"}; it is
written atomically. Loading uses ``weights_only=True`` (no code runs from the file).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from cryopose.errors import UserError
from cryopose.io.checkpoints import UnreadableFile, load_tensor_file, save_tensor_file

__all__ = ["write_model_file", "read_model_file", "MODEL_FORMAT"]

MODEL_FORMAT = "cryopose-estimator"
_VERSION = 1


def write_model_file(
    path: str | os.PathLike,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    image_settings: dict[str, Any],
    pixel_size: float,
    symmetry: str,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a trained estimator to ``path`` atomically (see the module docstring)."""
    payload = {
        "format": MODEL_FORMAT,
        "format_version": _VERSION,
        "config": config,
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
        "image_settings": dict(image_settings),
        "pixel_size": float(pixel_size),
        "symmetry": str(symmetry),
        "metadata": dict(metadata or {}),
    }
    save_tensor_file(path, payload, "model")


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict written by :func:`write_model_file`, its structure checked (keys, types,
    finite weights and pixel size); a one-line UserError for anything else. No code in the
    file runs (``weights_only`` loading). Whether the weights fit the network of the config
    is checked when the network is built (``cryopose.jobs.predict.load_estimator``)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give the model file in it (e.g. {p / 'model.pt'})")
    if not p.exists():
        raise UserError(f"model file {p} does not exist; train one with cryopose train")
    if not p.is_file():
        raise UserError(
            f"{p} is not a regular file (a device, pipe or socket); give the model.pt that cryopose train wrote"
        )
    try:
        payload = load_tensor_file(p)
    except UnreadableFile as exc:
        raise UserError(
            f"{p} is not a cryopose model file: {exc}; give the model.pt that cryopose train wrote"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(
            f"{p} is not a cryopose model file (it holds no {MODEL_FORMAT}); give the model.pt that "
            "cryopose train wrote"
        )
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(
            f"{p} has a damaged header (model format version {version!r} is not a whole number >= 1); "
            "train the model again with cryopose train"
        )
    if version > _VERSION:
        raise UserError(f"{p} was written by a newer cryopose (model format {version}); upgrade cryopose")
    problem = _payload_problem(payload)
    if problem:
        raise UserError(f"{p} is a damaged cryopose model file: {problem}; train the model again with cryopose train")
    return payload


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the parts of a model payload (None if nothing)."""
    for key, kind in (("config", dict), ("weights", dict), ("image_settings", dict), ("symmetry", str)):
        if key not in payload:
            return f"it has no {key}"
        if not isinstance(payload[key], kind):
            return f"its {key} is a {type(payload[key]).__name__}, not a {kind.__name__}"
    if not isinstance(payload.get("metadata", {}), dict):
        return "its metadata is not a dict"
    if not isinstance(payload["config"].get("model"), str):
        return "its config names no estimator"
    if not payload["weights"]:
        return "it holds no weights"
    for name, value in payload["weights"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            return f"its weight {name!r} is not a tensor"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"its weight {name} holds NaN or infinite values (the training diverged or the file is damaged)"
    apix = payload.get("pixel_size")
    if isinstance(apix, bool) or not isinstance(apix, (int, float)) or not (math.isfinite(apix) and apix > 0):
        return f"its pixel size {apix!r} is not a positive number of A"
    return None
