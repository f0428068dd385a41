"""glibc malloc settings for cryopose's processes (the command line and Dask workers).

The search kernels allocate and free hundreds of MiB of temporaries per chunk. With
glibc's defaults much of that memory goes back to the kernel after each chunk and is
faulted in again, page by page, for the next, and a Dask worker's task thread (served by
its own arena) fared worse than a main thread: the same validation chunks took 1.45
million page faults in a worker against 0.72 million in the driver, and ran 17% slower.
With these settings the faults all but vanish (``benchmarks/bench_allocator.py``: validate
14-30% faster in one process, reconstruct unchanged), and the 1-worker cluster's overhead
on validate fell from 36% to 1% (``benchmarks/bench_scale.py``).

The settings: one arena for every thread (``M_ARENA_MAX`` 1: the task thread shares the
main arena, whose memory is kept), 256 MiB kept at the top of the heap when it grows and
shrinks (``M_TOP_PAD``, ``M_TRIM_THRESHOLD``), allocations up to 32 MiB (where
glibc's adaptive threshold stops) served from the heap (``M_MMAP_THRESHOLD``). They take full effect only before
the process has allocated much (before torch is imported), hence the environment
variables for worker processes and :func:`tune_allocator` first thing in the command
line. A setting the user exported (``MALLOC_ARENA_MAX=...``) is left as it is.

This module imports only the standard library.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["ALLOCATOR_SETTINGS", "allocator_environment", "tune_allocator"]

MIB = 1 << 20

# (glibc environment variable, mallopt parameter number, value)
ALLOCATOR_SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("MALLOC_ARENA_MAX", -8, 1),
    ("MALLOC_TOP_PAD_", -2, 256 * MIB),
    ("MALLOC_TRIM_THRESHOLD_", -1, 256 * MIB),
    ("MALLOC_MMAP_THRESHOLD_", -3, 32 * MIB),
)


def allocator_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that give a new process these settings, less those
    already set in ``environ`` (default: this process's environment)."""
    current: Mapping[str, str] = os.environ if environ is None else environ
    return {name: str(value) for name, _, value in ALLOCATOR_SETTINGS if name not in current}


def tune_allocator(override: tuple[str, ...] = (), one_arena: bool = True) -> bool:
    """Apply the settings to this process with glibc's ``mallopt``; those whose variable
    is in the environment are skipped unless named in ``override`` (Dask's nanny sets
    ``MALLOC_TRIM_THRESHOLD_`` in its workers). ``one_arena`` False keeps glibc's
    per-thread arenas (a process running several tasks at once). Returns False where
    glibc's mallopt is not available (not Linux, musl) or refuses a value."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for name, param, value in ALLOCATOR_SETTINGS:
        if (name in os.environ and name not in override) or (name == "MALLOC_ARENA_MAX" and not one_arena):
            continue
        ok = bool(mallopt(ctypes.c_int(param), ctypes.c_int(value))) and ok
    return ok
