"""The chunk loop of per-particle jobs: plan, compute, store, assemble.

A per-particle job computes a dict of arrays (one row per particle) for a chunk of particle
indices. Chunks already in the run's ``ChunkStore`` are skipped, each finished chunk is
stored the moment it is done, and the final arrays are assembled in particle order. Because
a chunk's result depends only on its particles, the result is the same whatever the chunk
size, order or interruption.

On a Dask cluster (an ``executor`` from :mod:`cryopose.jobs.executor`) the same loop runs
the chunks as tasks: give ``compute`` as a :class:`ChunkWork`, whose ``run(shared, part)``
runs on the workers; finished chunks come back in any order and are stored by this process
the moment they arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cryopose.io.checkpoints import ChunkStore

__all__ = ["ChunkWork", "pending_ranges", "run_chunks", "assemble", "torch_threads"]


@dataclass(frozen=True)
class ChunkWork:
    """A per-particle computation split so that its chunks can run in other processes.

    ``run(shared, part)`` computes the result of one chunk (a dict of arrays, one row per
    particle); it must be a module-level function (workers import it by name). ``shared``
    is what every chunk needs (a gallery, a map, model weights): it is sent to each worker
    once per run, not with every chunk. ``part(indices)`` runs in the driving process and
    gives the chunk's own small inputs, e.g. ``(images.take(indices), tensors[indices])``.
    Called in-process, ``work(indices)`` is ``run(shared, part(indices))``.
    """

    run: Callable[[Any, Any], Any]
    shared: Any
    part: Callable[[np.ndarray], Any]

    def __call__(self, indices: np.ndarray) -> Any:
        return self.run(self.shared, self.part(np.asarray(indices)))


def pending_ranges(n: int, chunk_size: int, done: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``chunk_size`` covering 0..n-1 minus the ``done`` ranges."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    covered = np.zeros(n, dtype=bool)
    for a, b in done:
        covered[max(0, a) : min(n, b)] = True
    out = []
    i = 0
    while i < n:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < n and not covered[j] and j - i < chunk_size:
            j += 1
        out.append((i, j))
        i = j
    return out


def run_chunks(
    n: int,
    chunk_size: int,
    compute: Callable[[np.ndarray], dict[str, np.ndarray]],
    store: ChunkStore | None = None,
    progress: Callable[[int, int], None] | None = None,
    executor: Any = None,
) -> dict[str, np.ndarray]:
    """Run ``compute(indices)`` over particles 0..n-1 in chunks and return the assembled
    arrays (each of n rows, in particle order). With a ``store``, finished chunks are kept
    and a rerun computes only the missing ones; ``progress(k, n)`` is called after each
    chunk of k particles (and once for the particles found done).

    ``executor``: None runs the chunks here, in order; a ``DaskExecutor`` runs them as
    tasks on its cluster (``compute`` then a :class:`ChunkWork`, or any picklable callable,
    which is sent once to each worker), storing each as it arrives."""
    parts: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    if store is not None:  # a stored chunk that cannot be read is discarded (logged) and computed again
        for a, b in store.completed():
            if 0 <= a < b <= n and (arrays := store.load(a, b)) is not None:
                parts[(a, b)] = arrays
    if parts and progress is not None:
        progress(sum(b - a for a, b in parts), n)
    computed = _compute(n, pending_ranges(n, chunk_size, list(parts)), compute, store, progress, executor, parts)
    # a stored chunk laid out unlike this run's (other arrays, shapes or types) is not this run's: redo it
    layouts = [_layout(parts[r]) for r in (computed or list(parts))]
    usual = max(layouts, key=layouts.count) if layouts else None
    foreign = [r for r in parts if r not in computed and _layout(parts[r]) != usual]
    for a, b in foreign:  # only stored chunks are foreign: there is a store
        assert store is not None
        store.discard_chunk(a, b, "its arrays are not laid out like this run's")
        del parts[(a, b)]
    if foreign:
        _compute(n, foreign, compute, store, None, executor, parts)
    return assemble(n, parts)


def _compute(
    n: int,
    todo: list[tuple[int, int]],
    compute: Callable[[np.ndarray], dict[str, np.ndarray]],
    store: ChunkStore | None,
    progress: Callable[[int, int], None] | None,
    executor: Any,
    parts: dict[tuple[int, int], dict[str, np.ndarray]],
) -> list[tuple[int, int]]:
    """Compute the ranges ``todo`` (here or on the executor) into ``parts``, storing each as
    it arrives (``progress(k, n)`` after each); returns the ranges computed."""
    if executor is None:
        results = ((rng, compute(np.arange(*rng))) for rng in todo)
    else:
        work = compute if isinstance(compute, ChunkWork) else ChunkWork(_call, compute, _identity)
        results = executor.map(work, todo)
    done = []
    try:
        for (a, b), chunk in results:
            result = {k: np.asarray(v) for k, v in chunk.items()}
            if store is not None:
                store.save(a, b, result)
            parts[(a, b)] = result
            done.append((a, b))
            if progress is not None:
                progress(b - a, n)
    finally:
        results.close()  # an interrupted run cancels its queued tasks
    return done


def _layout(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (v.dtype.str, v.shape[1:]) for k, v in arrays.items()}


def _call(compute: Callable[[np.ndarray], Any], indices: np.ndarray) -> Any:
    return compute(indices)


def _identity(indices: np.ndarray) -> np.ndarray:
    return indices


def assemble(n: int, parts: dict[tuple[int, int], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays of n rows from per-range results {(start, stop): {name: rows}}."""
    if not parts:
        return {}
    names = next(iter(parts.values())).keys()
    out = {}
    for name in names:
        first = next(iter(parts.values()))[name]
        arr = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for (a, b), values in parts.items():
            arr[a:b] = values[name]
        out[name] = arr
    return out


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads (process-wide), then restore the count. Some
    CPU kernels (MKL's FFT) round differently with another thread count; a computation
    whose bytes must not depend on the machine or the worker runs with a fixed count."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
