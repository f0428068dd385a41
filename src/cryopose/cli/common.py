"""Options and helpers shared by the command modules (parsing and reporting only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import torch

from cryopose.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, with a clear error when CUDA is absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown --device {name!r}; use cpu or cuda") from exc


device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where to compute: cpu, cuda or cuda:N.",
)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def ensure_out_dir(path: Path) -> Path:
    """Create the output folder (and parents)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path
