"""The soft-alignment validation plot (Vargas et al. 2017, Fig. 5) and score histograms."""

from __future__ import annotations

import os

import numpy as np

from cryopose.io.plots import save_figure

__all__ = ["soft_validation_figure"]


def soft_validation_figure(
    precision: np.ndarray,
    accuracy: np.ndarray | None,
    precision_threshold: float,
    accuracy_threshold: float,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Save precision (x) vs accuracy (y), one point per particle, the passing region shaded,
    and histograms of both scores, as a PNG at ``path``. Without accuracy only the
    precision histogram is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qp = np.asarray(precision, dtype=float)
    has_acc = accuracy is not None and np.isfinite(np.asarray(accuracy, dtype=float)).any()
    fig, axes = plt.subplots(1, 3 if has_acc else 1, figsize=(15, 4.6) if has_acc else (5.5, 4.6))
    axes = np.atleast_1d(axes)
    finite_p = qp[np.isfinite(qp)]
    if has_acc:
        qa = np.asarray(accuracy, dtype=float)
        ok = np.isfinite(qp) & np.isfinite(qa)
        ax = axes[0]
        lo = min(-0.5, float(np.nanmin(np.r_[qp[ok], qa[ok], 0.0])))
        hi = max(1.5, float(np.nanmax(np.r_[qp[ok], qa[ok], 1.0])))
        ax.axvspan(
            precision_threshold,
            hi,
            ymin=(accuracy_threshold - lo) / (hi - lo),
            ymax=1,
            color="tab:blue",
            alpha=0.15,
            label="aligned",
        )
        ax.scatter(qp[ok], qa[ok], s=6, c="tab:red", alpha=0.6, lw=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("alignment precision q^p")
        ax.set_ylabel("alignment accuracy q^a")
        ax.set_title("soft-alignment validation")
        ax.legend(loc="lower right")
        axes[2].hist(qa[np.isfinite(qa)], bins=40, color="tab:green")
        axes[2].axvline(accuracy_threshold, color="k", ls="--")
        axes[2].set_xlabel("q^a")
        axes[2].set_title("accuracy")
        hist_ax = axes[1]
    else:
        hist_ax = axes[0]
    hist_ax.hist(finite_p, bins=40, color="tab:blue")
    hist_ax.axvline(precision_threshold, color="k", ls="--")
    hist_ax.set_xlabel("q^p")
    hist_ax.set_title("precision")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
