"""Figures written by the commands (matplotlib, Agg backend) and FSC curves as CSV, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryopose.io.atomic import atomic_path, atomic_write  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "save_figure",
    "plot_fsc_curves",
    "plot_difference_slices",
    "plot_central_slices",
    "plot_image_row",
    "write_fsc_csv",
    "write_table_csv",
    "plot_training_curves",
]


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a figure to a temporary name, rename it into place, and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


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


def write_fsc_csv(
    path: str | os.PathLike,
    frequency: Sequence[float] | np.ndarray | torch.Tensor,
    fsc: Sequence[float] | np.ndarray | torch.Tensor,
) -> None:
    """Write shell, frequency (1/Å), resolution (Å) and FSC as CSV."""
    with atomic_write(path) as fh:
        fh.write("shell,frequency_per_A,resolution_A,fsc\n")
        for i, (f, v) in enumerate(zip(frequency, fsc)):
            res = 1.0 / float(f) if f > 0 else float("inf")
            fh.write(f"{i},{float(f):.6f},{res:.4f},{float(v):.6f}\n")


def plot_difference_slices(difference: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Central xy, xz and yz slices of a difference map (z, y, x) on a symmetric colour scale."""
    d = np.asarray(difference)
    c = d.shape[-1] // 2
    slices = [("z = centre (xy)", d[c]), ("y = centre (xz)", d[:, c, :]), ("x = centre (yz)", d[:, :, c])]
    lim = max(float(np.abs(d).max()), 1e-6)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (label, img) in zip(axes, slices):
        im = ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="reference - aligned (s.d.)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)


def plot_central_slices(maps: list[tuple[str, np.ndarray]], path: str | os.PathLike) -> None:
    """Central z, y and x slices of each map (label, volume (z, y, x)), one row per map."""
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.5 * len(maps)), squeeze=False)
    for row, (label, vol) in enumerate(maps):
        c = vol.shape[0] // 2
        for col, (sl, axis) in enumerate(((vol[c], "z"), (vol[:, c], "y"), (vol[:, :, c], "x"))):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if row == 0:
                ax.set_title(f"central {axis} slice", fontsize=9)
    save_figure(fig, path)


def plot_image_row(images: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """A row of images (k, y, x) in grey."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.4 * len(images), 1.6), squeeze=False)
    for ax, img in zip(axes[0], images):
        ax.imshow(img, cmap="gray", origin="lower")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def write_table_csv(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Records (dicts) as a CSV table, one row each; columns in order of first appearance."""
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    with atomic_write(path) as fh:
        fh.write(",".join(columns) + "\n")
        for record in records:
            fh.write(",".join(cell(record.get(c)) for c in columns) + "\n")


def plot_training_curves(
    history: Sequence[dict], path: str | os.PathLike, title: str, chance: dict | None = None
) -> None:
    """Training loss and validation angular error (median and mean, deg) per epoch; with
    ``chance`` ({"chance_median_deg", "chance_threshold_deg"}) the error of random poses and
    the threshold a learned model's median is below."""
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r.get("train_loss", np.nan) for r in history], "o-", ms=3, label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    if any("val_median_deg" in r for r in history):
        right.plot(epochs, [r.get("val_median_deg", np.nan) for r in history], "o-", ms=3, label="median")
        right.plot(epochs, [r.get("val_mean_deg", np.nan) for r in history], "s--", ms=3, label="mean")
        if chance:
            right.axhline(chance["chance_median_deg"], color="0.4", lw=1, label="median of random poses")
            right.axhline(chance["chance_threshold_deg"], color="0.4", lw=1, ls=":", label="learned below this")
        right.set_ylim(bottom=0)
        right.legend()
    else:
        right.text(0.5, 0.5, "no validation particles", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("epoch")
    right.set_ylabel("validation angular error (deg)")
    fig.suptitle(title)
    save_figure(fig, path)
