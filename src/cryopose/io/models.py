"""Trained pose estimators on disk: ``model.pt`` holds the network's config, its weights and
how its input images were prepared, so that it loads without the training options.

The file is a ``torch.save`` dict {"format": "cryopose-estimator", "format_version": 1,
"config", "weights", "image_settings", "pixel_size", "symmetry", "metadata"}; it is
written atomically. Loading uses ``weights_only=True`` (no code runs from the file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cryopose.errors import UserError
from cryopose.io.atomic import atomic_path

__all__ = ["write_model_file", "read_model_file", "MODEL_FORMAT"]

MODEL_FORMAT = "cryopose-estimator"
_VERSION = 1


def write_model_file(path: str | os.PathLike, config: dict[str, Any], weights: dict[str, torch.Tensor],
                     image_settings: dict[str, Any], pixel_size: float, symmetry: str,
                     metadata: dict[str, Any] | None = None) -> None:
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict written by :func:`write_model_file`; a clear error for anything else."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give the model file in it (e.g. {p / 'model.pt'})")
    if not p.is_file():
        raise UserError(f"model file {p} does not exist; train one with cryopose train")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{p} is not a readable cryopose model file ({first[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(f"{p} is not a cryopose model file (it holds no {MODEL_FORMAT}); give the model.pt that "
                        "cryopose train wrote")
    if int(payload.get("format_version", 0)) > _VERSION:
        raise UserError(f"{p} was written by a newer cryopose (model format {payload['format_version']}); upgrade cryopose")
    return payload
