"""What a long job keeps in its output folder so that a restarted run loses no finished work.

``ChunkStore``: the per-particle results of finished chunks, one ``.npz`` per chunk of
particles [start, stop), written atomically the moment the chunk is done. ``Checkpoint``:
one file of tensors (e.g. running Fourier sums) replaced atomically. Both record the
signature of the run (the identity of its input files and every setting); a store or
checkpoint made by a run with another signature is discarded, and the reason is logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose.io.atomic import atomic_path, json_safe, write_json_atomic

__all__ = ["file_identity", "ChunkStore", "Checkpoint", "discard"]

log = logging.getLogger("cryopose")


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Absolute path, size and modification time of a file (part of a run's signature)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def discard(folder: str | os.PathLike) -> None:
    """Delete a folder of finished chunks or checkpoints (after the final outputs exist)."""
    shutil.rmtree(folder, ignore_errors=True)


def _normalise(signature: dict[str, Any]) -> Any:
    return json.loads(json.dumps(json_safe(signature), sort_keys=True, default=str))


def _differences(old: Any, new: Any) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ["(format)"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class ChunkStore:
    """Finished chunks of one job in ``folder`` (created on demand), for ``signature``.

    A store left by a run with another signature is cleared; ``restarted_because`` then
    names the settings that changed.
    """

    def __init__(self, folder: str | os.PathLike, signature: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.signature = _normalise(signature)
        self.restarted_because: list[str] = []
        sig_file = self.folder / "signature.json"
        if sig_file.is_file():
            try:
                old = json.loads(sig_file.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.signature:
                self.restarted_because = _differences(old, self.signature)
                log.info("discarding finished chunks in %s: the run's %s changed", self.folder, ", ".join(self.restarted_because))
                shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sig_file, self.signature)

    def _path(self, start: int, stop: int) -> Path:
        return self.folder / f"chunk_{start:010d}_{stop:010d}.npz"

    def completed(self) -> list[tuple[int, int]]:
        """(start, stop) of the stored chunks, sorted."""
        out = []
        for p in self.folder.glob("chunk_*_*.npz"):
            try:
                _, a, b = p.stem.split("_")
                out.append((int(a), int(b)))
            except ValueError:
                continue
        return sorted(out)

    def save(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """Store the results of particles [start, stop) (each array has stop - start rows)."""
        with atomic_path(self._path(start, stop)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

    def load(self, start: int, stop: int) -> dict[str, np.ndarray]:
        with np.load(self._path(start, stop), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def remove(self) -> None:
        """Delete the store (after the final outputs are written)."""
        discard(self.folder)


class Checkpoint:
    """One file of tensors and a state dict for ``signature``, replaced atomically."""

    def __init__(self, path: str | os.PathLike, signature: dict[str, Any]) -> None:
        self.path = Path(path)
        self.signature = _normalise(signature)

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The saved state, or None when absent or made by a run with another signature
        (which is then deleted and the changed settings logged)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=map_location, weights_only=False)
        except Exception:  # a damaged checkpoint is as good as none
            log.info("ignoring unreadable checkpoint %s", self.path)
            return None
        old = state.get("signature") if isinstance(state, dict) else None
        if old != self.signature:
            log.info("discarding checkpoint %s: the run's %s changed", self.path,
                     ", ".join(_differences(old, self.signature)))
            self.path.unlink(missing_ok=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**state, "signature": self.signature}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
