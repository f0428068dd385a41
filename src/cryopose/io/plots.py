"""Figures written by the commands (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["save_figure", "plot_fsc_curves"]


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a figure to a temporary name, rename it into place, and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_fsc_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str = "Fourier shell correlation",
) -> None:
    """Plot FSC curves (label, frequency in 1/Å, fsc) with the 0.143 and 0.5 lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, freq, fsc in curves:
        ax.plot(np.asarray(freq), np.asarray(fsc), label=label, lw=1.6)
    ax.axhline(0.143, color="0.4", ls="--", lw=0.8)
    ax.axhline(0.5, color="0.4", ls=":", lw=0.8)
    ax.text(0.0, 0.153, "0.143", color="0.4", fontsize=8)
    ax.text(0.0, 0.51, "0.5", color="0.4", fontsize=8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title, pad=28)
    top = max(float(np.max(f)) for _, f, _ in curves) if curves else 0.5
    ax.set_xlim(0, top)
    ticks = [t for t in (50, 30, 20, 15, 12, 10, 8, 6, 5, 4, 3, 2.5, 2) if 1 / t <= top * 1.001]
    top_axis = ax.twiny()
    top_axis.set_xlim(ax.get_xlim())
    top_axis.set_xticks([1 / t for t in ticks])
    top_axis.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    top_axis.set_xlabel("resolution (Å)")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.2)
    save_figure(fig, path)
