"""Jobs: the work of each command on files, between the CLI and the numerical packages.

Each job reads its inputs through ``cryopose.io``, converts them to tensors, runs the
numerical code chunk by chunk (with progress callbacks, checkpoints and resume), and writes
its outputs atomically. The CLI only parses options, calls a job and reports.

The chunk loop (``chunks``) runs in this process or, given an executor from ``executor``,
as Dask tasks on a local or remote cluster.
"""

__all__ = [
    "align_maps",
    "chunks",
    "convert",
    "demo",
    "evaluate",
    "executor",
    "fsc",
    "reconstruct",
    "refine",
    "simulate",
    "validate",
]
