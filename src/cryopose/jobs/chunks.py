"""The chunk loop of per-particle jobs: plan, compute, store, assemble.

A per-particle job computes a dict of arrays (one row per particle) for a chunk of particle
indices. Chunks already in the run's ``ChunkStore`` are skipped, each finished chunk is
stored the moment it is done, and the final arrays are assembled in particle order. Because
a chunk's result depends only on its particles, the result is the same whatever the chunk
size, order or interruption.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cryopose.io.checkpoints import ChunkStore

__all__ = ["pending_ranges", "run_chunks", "assemble"]


def pending_ranges(n: int, chunk_size: int, done: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
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
) -> dict[str, np.ndarray]:
    """Run ``compute(indices)`` over particles 0..n-1 in chunks and return the assembled
    arrays (each of n rows, in particle order). With a ``store``, finished chunks are kept
    and a rerun computes only the missing ones; ``progress(k, n)`` is called after each
    chunk of k particles (and once for the particles found done)."""
    done = store.completed() if store is not None else []
    done = [(a, b) for a, b in done if 0 <= a < b <= n]
    parts: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    if done and progress is not None:
        progress(sum(b - a for a, b in done), n)
    for a, b in pending_ranges(n, chunk_size, done):
        result = {k: np.asarray(v) for k, v in compute(np.arange(a, b)).items()}
        if store is not None:
            store.save(a, b, result)
        parts[(a, b)] = result
        if progress is not None:
            progress(b - a, n)
    for a, b in done:
        parts[(a, b)] = store.load(a, b)
    return assemble(n, parts)


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
