"""Figures of ``cryopose evaluate``: pose-error histograms, error against confidence, and
the distribution of true and predicted viewing directions on the sphere."""

from __future__ import annotations

import os

import numpy as np

from cryopose.io.plots import plt, save_figure

__all__ = ["plot_pose_errors", "plot_error_vs_confidence", "plot_direction_distributions"]


def _histogram(ax, values: np.ndarray, label: str, unit: str, limit: float | None) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        return
    hi = limit if limit is not None else max(float(np.percentile(v, 99.5)), 1e-3)
    ax.hist(np.clip(v, 0, hi), bins=60, range=(0, hi), color="tab:blue", alpha=0.85, histtype="stepfilled")
    med, mean = float(np.median(v)), float(np.mean(v))
    ax.axvline(med, color="k", ls="-", lw=1.2, label=f"median {med:.2f} {unit}")
    ax.axvline(mean, color="tab:red", ls="--", lw=1.2, label=f"mean {mean:.2f} {unit}")
    ax.set_xlabel(f"{label} ({unit})")
    ax.set_ylabel("particles")
    ax.set_title(label)
    ax.legend(frameon=False, fontsize=8)


def plot_pose_errors(
    angular_deg: np.ndarray,
    direction_deg: np.ndarray,
    in_plane_deg: np.ndarray,
    shift_angstrom: np.ndarray | None,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Histograms of the per-particle angular, viewing-direction, in-plane (0-180°) and
    shift errors (Å; 'not available' when None), each with its median and mean."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    _histogram(axes[0, 0], angular_deg, "angular error", "deg", 180.0)
    _histogram(axes[0, 1], direction_deg, "viewing-direction error", "deg", 180.0)
    _histogram(axes[1, 0], in_plane_deg, "in-plane error", "deg", 180.0)
    _histogram(axes[1, 1], np.array([]) if shift_angstrom is None else shift_angstrom, "shift error", "Å", None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_error_vs_confidence(
    errors_deg: np.ndarray,
    confidence: np.ndarray,
    path: str | os.PathLike,
    label: str = "confidence",
    title: str = "",
) -> None:
    """Angular error (deg) against a per-particle confidence, one point per particle, with
    the median error in ten bins of equal particle count."""
    e = np.asarray(errors_deg, dtype=float)
    c = np.asarray(confidence, dtype=float)
    ok = np.isfinite(e) & np.isfinite(c)
    e, c = e[ok], c[ok]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter(c, e, s=4, alpha=0.35, lw=0, color="tab:blue")
    if c.size >= 10:
        order = np.argsort(c, kind="stable")
        bins = np.array_split(order, 10)
        ax.plot(
            [np.median(c[b]) for b in bins],
            [np.median(e[b]) for b in bins],
            "o-",
            color="tab:red",
            lw=1.5,
            ms=4,
            label="median error per decile of confidence",
        )
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("angular error (deg)")
    ax.set_ylim(0, 180)
    ax.set_title(title or f"angular error against {label}")
    ax.grid(alpha=0.2)
    save_figure(fig, path)


def plot_direction_distributions(
    true_rot_tilt_deg: np.ndarray,
    predicted_rot_tilt_deg: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Density of viewing directions (rot, tilt in deg, (n, 2)) of the truth and of the
    prediction on equal-area Hammer projections: longitude rot, latitude 90° - tilt, bins of
    equal solid angle (about 10 particles per bin on average, 6 to 36 bands of latitude),
    one colour scale for both."""
    n = max(len(np.asarray(true_rot_tilt_deg).reshape(-1, 2)), 1)
    n_lat = int(np.clip(round(np.sqrt(n / 20)), 6, 36))
    n_lon = 2 * n_lat
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    lat_edges = np.arcsin(np.linspace(-1, 1, n_lat + 1))  # equal solid angle per bin

    def density(rot_tilt: np.ndarray) -> np.ndarray:
        rt = np.asarray(rot_tilt, dtype=float).reshape(-1, 2)
        lon = np.angle(np.exp(1j * np.radians(rt[:, 0])))
        lat = np.pi / 2 - np.radians(rt[:, 1])
        h, _, _ = np.histogram2d(lon, lat, bins=(lon_edges, lat_edges))
        return h.T

    maps = [density(true_rot_tilt_deg), density(predicted_rot_tilt_deg)]
    top = max(1.0, max(float(m.max()) for m in maps))
    fig = plt.figure(figsize=(12, 3.8))
    for i, (name, h) in enumerate(zip(("true", "predicted"), maps)):
        ax = fig.add_subplot(1, 2, i + 1, projection="hammer")
        mesh = ax.pcolormesh(lon_edges, lat_edges, h, cmap="viridis", vmin=0, vmax=top, shading="flat")
        ax.set_title(f"{name} viewing directions", pad=14)
        ax.grid(alpha=0.3)
        ax.set_xticklabels([])  # longitude labels crowd the equator
        ax.tick_params(labelsize=7)
    fig.colorbar(mesh, ax=fig.axes, shrink=0.8, label="particles per bin (equal solid angle)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
