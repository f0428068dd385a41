"""The validation pipeline on in-memory objects (no file I/O): search, references, scores.

:func:`validate_particles` is the library entry point (the CLI and the demo call it). It
takes a ``ParticleSet``, an image source with ``.read(indices)`` (``ParticleImages`` or
:class:`ArrayImages`) and one map (or one map per class), and returns per-particle columns
and a summary dict.

Good references: noise-free, CTF-affected projections of the map at each particle's own
pose and origin (``clean_particle_images``), searched exactly like the particles. Without
poses (ranking initial maps) only precision is computed, and the good reference is made at
the best pose the search found for the particle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cryopose.align.projection_matching import MatchSettings, build_gallery, match_images
from cryopose.errors import UserError
from cryopose.geometry.rotations import viewing_direction
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.simulation import clean_particle_images
from cryopose.particles import ParticleSet
from cryopose.validate import scores as sc

__all__ = ["ArrayImages", "ValidationOptions", "validate_particles", "rank_maps", "COLUMN_NAMES"]

COLUMN_NAMES = (
    "cryoposePrecision",
    "cryoposeAccuracy",
    "cryoposeAlpha",
    "cryoposeChi",
    "cryoposeAlphaGood",
    "cryoposeChiGood",
    "cryoposeAligned",
)


class ArrayImages:
    """In-memory image source with the ``ParticleImages.read`` interface."""

    def __init__(self, images) -> None:
        self.images = np.asarray(images, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]


@dataclass
class ValidationOptions:
    angular_sampling: float = 5.0
    max_shift: float | None = None  # Å; None: 10% of the box
    resolution: float = 8.0
    xi: int | None = None  # None: 7 (paper) or 6 (xmipp)
    symmetry: str = "C1"
    ctf_references: bool = False
    noise_draws: int = 500
    precision_threshold: float = 0.5
    accuracy_threshold: float = 0.5
    convention: str = "paper"
    seed: int = 0
    chunk_size: int = 64

    def resolved_xi(self) -> int:
        if self.xi is not None:
            return int(self.xi)
        return sc.XMIPP_XI if self.convention == "xmipp" else 7


def _ctf_for(particles: ParticleSet, idx: np.ndarray, device) -> CTFParameters | None:
    values = particles.ctf_parameters()
    if values is None:
        return None
    return CTFParameters.from_mapping({k: v[idx] for k, v in values.items()}, device=device)


def _check_geometry(volume: np.ndarray, map_apix: float, particles: ParticleSet, image_box: int) -> float:
    apix = float(np.median(particles.pixel_size))
    if volume.shape[-1] != image_box:
        raise UserError(
            f"the map is {volume.shape[-1]} px but the particles are {image_box} px; resample the map to the particles' box"
        )
    if map_apix > 0 and abs(map_apix - apix) > 0.01 * apix:
        raise UserError(
            f"the map has {map_apix:.4f} A/px but the particles {apix:.4f} A/px; resample the map to the particles' pixel size"
        )
    return apix


def _score_one_map(
    particles: ParticleSet,
    images,
    indices: np.ndarray,
    volume: np.ndarray,
    apix: float,
    opts: ValidationOptions,
    device: torch.device,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, np.ndarray], dict]:
    xi = opts.resolved_xi()
    max_shift = opts.max_shift if opts.max_shift is not None else 0.1 * volume.shape[-1] * apix
    settings = MatchSettings(
        angular_sampling=opts.angular_sampling,
        max_shift=max_shift,
        resolution=opts.resolution,
        xi=xi,
        symmetry=opts.symmetry,
        ctf_references=opts.ctf_references,
    )
    gallery = build_gallery(volume, apix, settings, device)
    if gallery.n_directions < xi:
        raise UserError(f"--angular-sampling {opts.angular_sampling} gives {gallery.n_directions} directions, fewer than --xi {xi}; use a finer sampling")
    fv = fourier_volume(torch.as_tensor(volume, dtype=torch.float32, device=device))
    gen = torch.Generator().manual_seed(opts.seed)
    rotations_all = particles.rotations
    has_poses = rotations_all is not None
    shifts_all = particles.shifts_angstrom
    weighted = opts.convention == "paper"
    conv = opts.convention
    sym = opts.symmetry

    if conv == "xmipp":
        noise_value = sc.xmipp_noise(gallery.directions.cpu(), xi, sym, opts.noise_draws, gen)
    else:
        noise_value = sc.noise_alpha(xi, sym, opts.noise_draws, gen)

    cols: dict[str, list] = {k: [] for k in ("alpha", "chi", "alpha_good", "chi_good", "chi_noise", "qp", "qa", "score")}
    for start in range(0, len(indices), opts.chunk_size):
        idx = indices[start : start + opts.chunk_size]
        imgs = torch.as_tensor(images.read(idx), device=device)
        ctf = _ctf_for(particles, idx, device)
        res = match_images(gallery, imgs, ctf)
        if has_poses:
            pose = torch.as_tensor(rotations_all[idx], dtype=torch.float32, device=device)
            origin = torch.as_tensor(shifts_all[idx], dtype=torch.float32, device=device)
        else:
            pose, origin = res.rotations[:, 0], res.shifts_angstrom[:, 0]
        clean = clean_particle_images(fv, pose, origin / apix, ctf, apix)
        good = match_images(gallery, clean, ctf)
        w = res.scores.clamp_min(0) if weighted else None
        wg = good.scores.clamp_min(0) if weighted else None
        alpha = sc.alpha_score(res.directions.double(), None if w is None else w.double(), sym, conv)
        alpha_good = sc.alpha_score(good.directions.double(), None if wg is None else wg.double(), sym, conv)
        qp = sc.quality_score(alpha, noise_value, alpha_good)
        cols["alpha"].append(alpha)
        cols["alpha_good"].append(alpha_good)
        cols["qp"].append(qp)
        cols["score"].append(res.scores[:, 0].double())
        if has_poses:
            assigned = viewing_direction(pose.double())
            chi = sc.chi_score(assigned, res.directions.double(), None if w is None else w.double(), sym, conv)
            chi_good = sc.chi_score(assigned, good.directions.double(), None if wg is None else wg.double(), sym, conv)
            chi_noise = (
                sc.noise_chi(assigned, xi, sym, opts.noise_draws, gen)
                if conv == "paper"
                else torch.full_like(chi, noise_value)
            )
            cols["chi"].append(chi)
            cols["chi_good"].append(chi_good)
            cols["chi_noise"].append(chi_noise)
            cols["qa"].append(sc.quality_score(chi, chi_noise, chi_good))
        if progress is not None:
            progress(len(idx))

    def cat(name):
        return torch.cat(cols[name]).cpu().numpy() if cols[name] else np.full(len(indices), np.nan)

    qp = cat("qp")
    prec = sc.passes(torch.as_tensor(qp), opts.precision_threshold, conv).numpy()
    out = {
        "cryoposePrecision": qp,
        "cryoposeAlpha": np.degrees(cat("alpha")),
        "cryoposeAlphaGood": np.degrees(cat("alpha_good")),
        "cryoposeBestScore": cat("score"),
    }
    summary = {
        "n_particles": int(len(indices)),
        "precision_fraction": float(prec.mean()) if len(prec) else math.nan,
        "alpha_noise_deg": math.degrees(noise_value),
        "gallery_directions": gallery.n_directions,
        "working_box": gallery.work_box,
        "working_pixel_size": gallery.work_pixel_size,
        "band_radius": gallery.radius,
        "max_shift_angstrom": max_shift,
        "xi": xi,
    }
    if has_poses:
        qa = cat("qa")
        acc = sc.passes(torch.as_tensor(qa), opts.accuracy_threshold, conv).numpy()
        both = prec & acc
        out.update(
            cryoposeAccuracy=qa,
            cryoposeChi=np.degrees(cat("chi")),
            cryoposeChiGood=np.degrees(cat("chi_good")),
            cryoposeAligned=both.astype(np.int64),
        )
        summary.update(
            accuracy_fraction=float(acc.mean()) if len(acc) else math.nan,
            Q=float(both.mean()) if len(both) else math.nan,
            chi_noise_mean_deg=float(np.degrees(cat("chi_noise")).mean()) if len(indices) else math.nan,
        )
    else:
        nan = np.full(len(indices), np.nan)
        out.update(cryoposeAccuracy=nan, cryoposeChi=nan.copy(), cryoposeChiGood=nan.copy())
        out["cryoposeAligned"] = prec.astype(np.int64)
        summary.update(accuracy_fraction=None, Q=None)
    return out, summary


def validate_particles(
    particles: ParticleSet,
    images,
    maps: list[tuple[np.ndarray, float]],
    options: ValidationOptions | None = None,
    by_class: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Validate ``particles`` (with images from ``images.read``) against one map, or with
    ``by_class`` against the map of each particle's rlnClassNumber (class k -> maps[k-1]).

    Returns (columns, summary): columns are per-particle arrays in the set's order, named as
    the STAR columns without the underscore; the summary has n_particles,
    precision_fraction, accuracy_fraction, Q (None without poses), thresholds, settings and,
    with ``by_class``, one row per class.
    """
    opts = options or ValidationOptions()
    if opts.convention not in sc.CONVENTIONS:
        raise UserError(f"unknown convention {opts.convention!r}; use paper or xmipp")
    device = torch.device(device)
    n = len(particles)
    if n == 0:
        raise UserError("the particle set is empty; nothing to validate")
    sample = images.read([0])
    box = sample.shape[-1]
    if not by_class:
        if len(maps) != 1:
            raise ValueError("validate_particles takes one map unless by_class is set")
        vol, map_apix = maps[0]
        apix = _check_geometry(vol, map_apix, particles, box)
        cols, summary = _score_one_map(particles, images, np.arange(n), vol, apix, opts, device, progress)
    else:
        classes = particles.class_numbers
        if classes is None:
            raise UserError("--by-class needs rlnClassNumber in the particles' star file")
        bad = sorted(set(int(c) for c in np.unique(classes)) - set(range(1, len(maps) + 1)))
        if bad:
            raise UserError(f"particles have rlnClassNumber {bad} but only {len(maps)} --map were given (class k uses the k-th map)")
        cols = {}
        rows = []
        for k in sorted(int(c) for c in np.unique(classes)):
            idx = np.nonzero(classes == k)[0]
            vol, map_apix = maps[k - 1]
            apix = _check_geometry(vol, map_apix, particles, box)
            c, s = _score_one_map(particles, images, idx, vol, apix, opts, device, progress)
            for name, values in c.items():
                if name not in cols:
                    cols[name] = np.full(n, np.nan) if values.dtype.kind == "f" else np.zeros(n, dtype=values.dtype)
                cols[name][idx] = values
            rows.append({"class": k, **s})
        aligned = cols["cryoposeAligned"]
        has_acc = particles.rotations is not None
        summary = {
            "n_particles": n,
            "precision_fraction": float(np.mean(sc.passes(torch.as_tensor(cols["cryoposePrecision"]), opts.precision_threshold, opts.convention).numpy())),
            "accuracy_fraction": float(np.mean(sc.passes(torch.as_tensor(cols["cryoposeAccuracy"]), opts.accuracy_threshold, opts.convention).numpy())) if has_acc else None,
            "Q": float(np.mean(aligned)) if has_acc else None,
            "classes": rows,
        }
    summary.update(
        precision_threshold=opts.precision_threshold,
        accuracy_threshold=opts.accuracy_threshold,
        convention=opts.convention,
        has_poses=particles.rotations is not None,
        settings={k: v for k, v in asdict(opts).items()} | {"xi": opts.resolved_xi()},
    )
    return cols, summary


def rank_maps(summaries: list[dict], names: list[str]) -> list[dict]:
    """Maps ordered best first: by Q when available, else by precision fraction."""
    rows = []
    for name, s in zip(names, summaries):
        rows.append({"map": name, "precision_fraction": s["precision_fraction"], "accuracy_fraction": s.get("accuracy_fraction"), "Q": s.get("Q")})
    key = (lambda r: (r["Q"], r["precision_fraction"])) if all(r["Q"] is not None for r in rows) else (lambda r: r["precision_fraction"])
    rows.sort(key=key, reverse=True)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows
