"""Checks of what a job would need before it allocates it (memory), with clear refusals."""

from __future__ import annotations

import os

import torch

from cryopose.errors import UserError

__all__ = ["total_memory", "require_memory", "format_bytes"]

# A job may plan to use at most this fraction of the memory of its device.
MEMORY_FRACTION = 0.75


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def total_memory(device: torch.device | str = "cpu") -> int:
    """Total memory (bytes) of ``device``: physical RAM for the CPU, the GPU's own for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 << 30


def require_memory(
    nbytes: float, what: str, fix: str, device: torch.device | str = "cpu", option: str | None = None
) -> None:
    """UserError when ``what`` would need more than MEMORY_FRACTION of the device's memory;
    the message gives both numbers and ``fix`` (what to do)."""
    total = total_memory(device)
    if nbytes > MEMORY_FRACTION * total:
        raise UserError(
            f"{what} would need about {format_bytes(nbytes)} of memory but {torch.device(device).type} has "
            f"{format_bytes(total)}; {fix}",
            option=option,
        )
