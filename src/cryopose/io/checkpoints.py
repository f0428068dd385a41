"""What a long job keeps in its output folder so that a restarted run loses no finished work.

``ChunkStore``: the per-particle results of finished chunks, one ``.npz`` per chunk of
particles [start, stop), written atomically the moment the chunk is done. ``Checkpoint``:
one file of tensors (e.g. running Fourier sums) replaced atomically. Both record the
signature of the run (the identity of its input files and every setting); a store or
checkpoint made by a run with another signature is discarded, and the reason is logged.

Nothing read back from an output folder can run code: chunks are read with
``allow_pickle=False`` and tensor files with ``torch.load(weights_only=True)``
(:func:`load_tensor_file`), which builds only tensors, numbers, strings and containers of
them. A file that holds anything else (a planted pickle, another program's file, a damaged
one) is discarded with a logged line and its work is done again.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose.io.atomic import atomic_path, json_safe, write_json_atomic

__all__ = [
    "file_identity",
    "ChunkStore",
    "Checkpoint",
    "discard",
    "load_tensor_file",
    "save_tensor_file",
    "UnreadableFile",
]

log = logging.getLogger("cryopose")

_TORCH_VERSION = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Absolute path, size and modification time of a file (part of a run's signature)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class UnreadableFile(ValueError):
    """A file that :func:`load_tensor_file` refused; the message says why, in a few words."""


def load_tensor_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The contents of a ``torch.save`` file, unpickled with ``weights_only=True``: only
    tensors, numbers, strings, None and lists/tuples/dicts of them are built, so no code in
    the file runs. Torch's warnings are silenced; any failure is an :class:`UnreadableFile`
    with a short reason (never torch's long text). Torch before 2.10 is refused: its
    ``weights_only`` unpickler could be made to run code (CVE-2025-32434, CVE-2026-24747)."""
    if _TORCH_VERSION < (2, 10):
        raise UnreadableFile(
            f"torch {torch.__version__} cannot read it safely (its weights-only loader has known "
            "flaws); upgrade torch to 2.10 or newer"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UnreadableFile(
            "it holds Python objects other than tensors and numbers, which cryopose never "
            "writes (refused unread: loading them could run code)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        ImportError,
        UnicodeDecodeError,
        MemoryError,
    ) as exc:
        kind = "it is empty or cut short" if isinstance(exc, EOFError) else "it is not a PyTorch file or is damaged"
        raise UnreadableFile(kind) from None


def discard(folder: str | os.PathLike) -> None:
    """Delete a folder of finished chunks or checkpoints (after the final outputs exist)."""
    shutil.rmtree(folder, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete what stands at one of our own store paths (a link itself, not its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
                log.info(
                    "discarding finished chunks in %s: the run's %s changed",
                    self.folder,
                    ", ".join(self.restarted_because),
                )
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
                payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
                np.savez(fh, **payload)

    def load(self, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """The stored results of particles [start, stop), or None when the file is not a
        chunk this store wrote (unreadable, holding pickled objects, or not stop - start
        rows per array): it is then deleted, with a logged line, and the chunk is to be
        computed again."""
        path = self._path(start, stop)
        arrays = None
        if path.is_file():  # never open a device, pipe or folder planted under a chunk's name
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
            except Exception:  # noqa: BLE001  np.load raises many kinds for a file that is not an .npz
                arrays = None
        if arrays is None:
            why = "it is not a chunk of numbers that cryopose wrote (damaged, or holding pickled objects)"
        elif not arrays or any(a.ndim == 0 or a.shape[0] != stop - start for a in arrays.values()):
            why, arrays = f"its arrays do not have one row for each of its {stop - start} particles", None
        if arrays is None:
            self.discard_chunk(start, stop, why)
        return arrays

    def discard_chunk(self, start: int, stop: int, why: str) -> None:
        """Delete the stored chunk [start, stop) that is not this run's, saying ``why``."""
        path = self._path(start, stop)
        log.warning("discarded %s: %s; its particles are computed again", path, why)
        _remove(path)

    def remove(self) -> None:
        """Delete the store (after the final outputs are written)."""
        discard(self.folder)


_PLAIN = (str, int, float, bool, complex, bytes, type(None))


def save_tensor_file(path: str | os.PathLike, value: Any, name: str = "state") -> None:
    """Write ``value`` (tensors, plain numbers, strings, None, and dicts/lists/tuples of them:
    what :func:`load_tensor_file` reads back) with ``torch.save``, atomically; TypeError naming
    anything else (``name`` starts its path), so that cryopose never writes a file it would
    then refuse to read."""
    _check_loadable(value, name)
    with atomic_path(path) as tmp:
        torch.save(value, tmp)


def _check_loadable(value: Any, where: str) -> None:
    """TypeError naming the first value in ``value`` that a weights-only load refuses."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_loadable(item, f"{where}[{i}]")
    elif not (type(value) in _PLAIN or isinstance(value, (torch.Tensor, torch.Size, torch.dtype, torch.device))):
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; "
            "store plain values (convert str subclasses, numpy values and paths first)"
        )


class Checkpoint:
    """One file of tensors and a state dict for ``signature``, replaced atomically."""

    def __init__(self, path: str | os.PathLike, signature: dict[str, Any]) -> None:
        self.path = Path(path)
        self.signature = _normalise(signature)

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The saved state, or None when absent or made by a run with another signature
        (which is then deleted and the changed settings logged)."""
        if not self.path.is_file():
            if self.path.exists() or self.path.is_symlink():
                log.warning("discarded %s: it is not a regular file; the work it held is done again", self.path)
                _remove(self.path)
            return None
        try:
            state = load_tensor_file(self.path, map_location)
        except UnreadableFile as exc:
            log.warning("discarded checkpoint %s: %s; the work it held is done again", self.path, exc)
            _remove(self.path)
            return None
        old = state.get("signature") if isinstance(state, dict) else None
        if old != self.signature:
            log.info(
                "discarding checkpoint %s: the run's %s changed",
                self.path,
                ", ".join(_differences(old, self.signature)),
            )
            self.path.unlink(missing_ok=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (tensors, plain numbers, strings, None, and dicts/lists/tuples of
        them: what ``load`` reads back without unpickling objects); TypeError for anything
        else, so that a run never writes a checkpoint it would then refuse."""
        save_tensor_file(self.path, {**state, "signature": self.signature})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
