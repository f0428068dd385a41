"""Jobs: the work of each command on files, between the CLI and the numerical packages.

Each job reads its inputs through ``cryopose.io``, converts them to tensors, runs the
numerical code chunk by chunk (with progress callbacks, checkpoints and resume), and writes
its outputs atomically. The CLI only parses options, calls a job and reports.
"""

__all__ = ["align_maps", "chunks", "convert", "demo", "fsc", "reconstruct", "simulate", "validate"]
