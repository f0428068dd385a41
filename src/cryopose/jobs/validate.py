"""The validate job: alignment precision/accuracy of a particle set (Vargas et al. 2017).

:func:`validate_particles` works on a ``ParticleSet`` and an image source (``ParticleImages``
or ``ArrayImages``) with one map, or one map per class; :func:`run_validate` is the job on
files behind ``cryopose validate``: it checkpoints every finished chunk in the output
folder, so an interrupted run resumes where it stopped, and writes particles.star (every
input column plus the scores), pruned.star, summary.json and soft_validation.png.

Good references: noise-free, CTF-affected projections of the map at each particle's own
pose and origin, searched exactly like the particles. Without poses (ranking initial maps)
only precision is computed, and the good reference is made at the best pose found.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cryopose.align.projection_matching import Gallery, MatchSettings, build_gallery
from cryopose.errors import UserError
from cryopose.geometry.symmetry import Symmetry
from cryopose.imaging.projection import FourierVolume, fourier_volume
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import ChunkStore, discard, file_identity
from cryopose.io.mrc import ParticleImages, read_map
from cryopose.io.outputs import output_folder
from cryopose.io.star import write_star
from cryopose.io.validation_plots import soft_validation_figure
from cryopose.jobs.chunks import ChunkWork, run_chunks
from cryopose.jobs.inputs import check_map_fits_particles, particle_pixel_size
from cryopose.particles import ParticleSet
from cryopose.validate import scores as sc
from cryopose.validate.pipeline import NoiseReferences, noise_references, score_chunk

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.executor import DaskExecutor

__all__ = ["ValidationOptions", "validate_particles", "rank_maps", "run_validate", "COLUMN_NAMES"]

log = logging.getLogger("cryopose")

COLUMN_NAMES = (
    "cryoposePrecision",
    "cryoposeAccuracy",
    "cryoposeAlpha",
    "cryoposeChi",
    "cryoposeAlphaGood",
    "cryoposeChiGood",
    "cryoposeAligned",
    "cryoposeBestScore",
)

STORE = ".cryopose_validate"
OUTPUTS = ("particles.star", "pruned.star", "summary.json", "soft_validation.png")


@dataclass
class ValidationOptions:
    """Settings of a validation run.

    ``match`` holds the search (its ``max_shift`` None means 10% of the box in Å, its
    ``xi`` None means 7, or 6 with the xmipp convention); the noise references are drawn
    once per run from ``seed`` with ``noise_draws`` draws; ``chunk_size`` particles are read
    and searched at a time (results do not depend on it). The search's symmetry becomes a
    ``Symmetry`` (UserError for an unknown name).
    """

    match: MatchSettings = field(default_factory=MatchSettings)
    noise_draws: int = 500
    precision_threshold: float = 0.5
    accuracy_threshold: float = 0.5
    convention: str = "paper"
    seed: int = 0
    chunk_size: int = 64

    def __post_init__(self) -> None:
        self.match = replace(self.match, symmetry=Symmetry(self.match.symmetry))
        if self.convention not in sc.CONVENTIONS:
            raise UserError(f"unknown convention {self.convention!r}; use paper or xmipp", option="convention")
        for name, low in (("noise_draws", 1), ("chunk_size", 1)):
            if int(getattr(self, name)) < low:
                raise UserError(
                    f"{name.replace('_', ' ')} must be at least {low}, got {getattr(self, name)}",
                    option=name.replace("_", "-"),
                )
        for name in ("precision_threshold", "accuracy_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"the {name.replace('_', ' ')} must be a finite number", option=name.replace("_", "-"))

    def check(self, box: int, pixel_size: float) -> None:
        """UserError for search settings that do not fit particles of ``box`` px at ``pixel_size`` Å."""
        self.match.check(box, pixel_size)
        if self.resolved_xi() < 2:
            raise UserError(f"xi must be at least 2, got {self.resolved_xi()}", option="xi")

    def resolved_xi(self) -> int:
        if self.match.xi is not None:
            return int(self.match.xi)
        return sc.XMIPP_XI if self.convention == "xmipp" else 7

    def resolved_match(self, box: int, pixel_size: float) -> MatchSettings:
        """The search settings with xi and max_shift made concrete for a box (px, Å/px)."""
        return replace(self.match, xi=self.resolved_xi()).resolved(box, pixel_size)


def _check_classes(particles: ParticleSet, n_maps: int) -> np.ndarray:
    """rlnClassNumber per particle; UserError unless every class k has a k-th map."""
    classes = particles.class_numbers
    if classes is None:
        raise UserError("validating by class needs rlnClassNumber in the particles' star file")
    bad = sorted(set(int(c) for c in np.unique(classes)) - set(range(1, n_maps + 1)))
    if bad:
        raise UserError(
            f"particles have rlnClassNumber {bad} but only {n_maps} maps were given (class k uses the k-th map)"
        )
    return classes


@dataclass
class _ScoreShared:
    """What every chunk of a validation run needs (sent once to each Dask worker)."""

    gallery: Gallery
    clean_volume: FourierVolume
    noise: NoiseReferences
    apix: float
    convention: str
    device: str


def _score_part(shared: _ScoreShared, part: tuple) -> dict[str, np.ndarray]:
    """Scores of one chunk: ``part`` is (its image source, its rows of ParticleTensors)."""
    images, rows = part
    device = torch.device(shared.device)
    try:
        imgs = torch.as_tensor(images.read(np.arange(len(images))), device=device)
    finally:
        images.close()
    ctf = None if rows.ctf is None else rows.ctf.to(device)
    ctf = None if ctf is None else ctf.to(dtype=torch.float32)
    shifts = rows.shifts_angstrom if rows.rotations is not None else None
    out = score_chunk(
        shared.gallery,
        shared.clean_volume,
        imgs,
        ctf,
        rows.rotations,
        shifts,
        shared.apix,
        shared.noise,
        shared.convention,
    )
    return {k: v.numpy() for k, v in out.items()}


def _score_one_map(
    particles: ParticleSet,
    images,
    indices: np.ndarray,
    volume: np.ndarray,
    apix: float,
    opts: ValidationOptions,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
    store: ChunkStore | None,
    executor: DaskExecutor | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    settings = opts.resolved_match(volume.shape[-1], apix)
    xi = opts.resolved_xi()  # the value of settings.xi
    gallery = build_gallery(volume, apix, settings, device)
    if gallery.n_directions < xi:
        raise UserError(
            f"an angular sampling of {settings.angular_sampling} deg gives {gallery.n_directions} directions, "
            f"fewer than xi = {xi}; use a finer sampling",
            option="angular-sampling",
        )
    clean_volume = fourier_volume(torch.as_tensor(volume, dtype=torch.float32, device=device))
    noise = noise_references(gallery, xi, settings.symmetry, opts.convention, opts.noise_draws, opts.seed)
    tensors = particles.to_tensors()
    shared = _ScoreShared(gallery, clean_volume, noise, apix, opts.convention, str(device))

    def part(local: np.ndarray) -> tuple:
        idx = indices[local]
        return images.take(idx), tensors[idx]

    work = ChunkWork(_score_part, shared, part)
    raw = run_chunks(len(indices), opts.chunk_size, work, store, progress, executor)
    conv = opts.convention
    qp = raw["qp"]
    prec = sc.passes(torch.as_tensor(qp), opts.precision_threshold, conv).numpy()
    cols = {
        "cryoposePrecision": qp,
        "cryoposeAlpha": np.degrees(raw["alpha"]),
        "cryoposeAlphaGood": np.degrees(raw["alpha_good"]),
        "cryoposeBestScore": raw["score"],
    }
    summary = {
        "n_particles": int(len(indices)),
        "precision_fraction": float(prec.mean()) if len(prec) else math.nan,
        "alpha_noise_deg": math.degrees(noise.alpha),
        "gallery_directions": gallery.n_directions,
        "working_box": gallery.work_box,
        "working_pixel_size": gallery.work_pixel_size,
        "band_radius": gallery.radius,
        "max_shift_angstrom": settings.max_shift,
        "xi": xi,
    }
    if tensors.rotations is not None:
        qa = raw["qa"]
        acc = sc.passes(torch.as_tensor(qa), opts.accuracy_threshold, conv).numpy()
        both = prec & acc
        cols.update(
            cryoposeAccuracy=qa,
            cryoposeChi=np.degrees(raw["chi"]),
            cryoposeChiGood=np.degrees(raw["chi_good"]),
            cryoposeAligned=both.astype(np.int64),
        )
        summary.update(
            accuracy_fraction=float(acc.mean()) if len(acc) else math.nan,
            Q=float(both.mean()) if len(both) else math.nan,
            chi_noise_mean_deg=float(np.degrees(raw["chi_noise"]).mean()) if len(indices) else math.nan,
        )
    else:
        nan = np.full(len(indices), np.nan)
        cols.update(cryoposeAccuracy=nan, cryoposeChi=nan.copy(), cryoposeChiGood=nan.copy())
        cols["cryoposeAligned"] = prec.astype(np.int64)
        summary.update(accuracy_fraction=None, Q=None)
    return cols, summary


def validate_particles(
    particles: ParticleSet,
    images,
    maps: list[tuple[np.ndarray, float]],
    options: ValidationOptions | None = None,
    by_class: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    checkpoint_dir: Path | None = None,
    signature: dict | None = None,
    progress_total: int | None = None,
    executor: DaskExecutor | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Validate ``particles`` (images from ``images.read``) against one map, or with
    ``by_class`` against the map of each particle's rlnClassNumber (class k -> maps[k-1]).
    ``maps`` are (volume (N, N, N), pixel size Å; 0 if unknown).

    Returns (columns, summary): columns are per-particle arrays in the set's order, named as
    the STAR columns; the summary has n_particles, precision_fraction, accuracy_fraction, Q
    (None without poses), thresholds, settings and, with ``by_class``, one row per class.
    With ``checkpoint_dir`` every finished chunk is kept there (for ``signature``) and a
    rerun with the same signature computes only the missing chunks. ``progress(k, total)``
    is called as chunks finish (``progress_total`` overrides the total). ``executor``: run
    the chunks on a Dask cluster (see :mod:`cryopose.jobs.executor`; None: here).
    """
    opts = options or ValidationOptions()
    device = torch.device(device)
    n = len(particles)
    if n == 0:
        raise UserError("the particle set is empty; nothing to validate")
    box = images.read([0]).shape[-1]
    apix = particle_pixel_size(particles)
    for k, (vol, map_apix) in enumerate(maps, start=1):
        check_map_fits_particles(vol, map_apix, box, apix, f"map {k}")
    total = n if progress_total is None else progress_total
    step = None if progress is None else (lambda k, _n: progress(k, total))

    def store(name: str) -> ChunkStore | None:
        if checkpoint_dir is None:
            return None
        return ChunkStore(Path(checkpoint_dir) / name, {**(signature or {}), "part": name})

    if not by_class:
        if len(maps) != 1:
            raise ValueError("validate_particles takes one map unless by_class is set")
        vol, _ = maps[0]
        cols, summary = _score_one_map(
            particles, images, np.arange(n), vol, apix, opts, device, step, store("all"), executor
        )
    else:
        classes = _check_classes(particles, len(maps))
        cols = {}
        rows = []
        for k in sorted(int(c) for c in np.unique(classes)):
            idx = np.nonzero(classes == k)[0]
            vol, _ = maps[k - 1]
            c, s = _score_one_map(particles, images, idx, vol, apix, opts, device, step, store(f"class{k}"), executor)
            for name, values in c.items():
                if name not in cols:
                    cols[name] = np.full(n, np.nan) if values.dtype.kind == "f" else np.zeros(n, dtype=values.dtype)
                cols[name][idx] = values
            rows.append({"class": k, **s})
        has_acc = particles.rotations is not None
        conv = opts.convention

        def fraction_passing(column: str, threshold: float) -> float:
            return float(np.mean(sc.passes(torch.as_tensor(cols[column]), threshold, conv).numpy()))

        summary = {
            "n_particles": n,
            "precision_fraction": fraction_passing("cryoposePrecision", opts.precision_threshold),
            "accuracy_fraction": fraction_passing("cryoposeAccuracy", opts.accuracy_threshold) if has_acc else None,
            "Q": float(np.mean(cols["cryoposeAligned"])) if has_acc else None,
            "classes": rows,
        }
    summary.update(
        precision_threshold=opts.precision_threshold,
        accuracy_threshold=opts.accuracy_threshold,
        convention=opts.convention,
        has_poses=particles.rotations is not None,
        settings={
            **{k: v for k, v in asdict(opts).items() if k != "match"},
            **asdict(opts.match),
            "xi": opts.resolved_xi(),
        },
    )
    return cols, summary


def rank_maps(summaries: list[dict], names: list[str]) -> list[dict]:
    """Maps ordered best first: by Q when available, else by precision fraction."""
    rows = []
    for name, s in zip(names, summaries):
        rows.append(
            {
                "map": name,
                "precision_fraction": s["precision_fraction"],
                "accuracy_fraction": s.get("accuracy_fraction"),
                "Q": s.get("Q"),
            }
        )
    key = (
        (lambda r: (r["Q"], r["precision_fraction"]))
        if all(r["Q"] is not None for r in rows)
        else (lambda r: r["precision_fraction"])
    )
    rows.sort(key=key, reverse=True)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _write_outputs(out: Path, particles: ParticleSet, cols: dict, summary: dict, opts: ValidationOptions) -> None:
    scored = particles.with_columns(**cols)
    write_star(scored, out / "particles.star")
    keep = np.asarray(cols["cryoposeAligned"]).astype(bool)
    write_star(scored.subset(keep), out / "pruned.star")
    write_json_atomic(out / "summary.json", summary)
    acc = cols.get("cryoposeAccuracy") if summary.get("has_poses") else None
    title = (
        f"Q = {summary['Q']:.3f}"
        if summary.get("Q") is not None
        else f"precision = {summary['precision_fraction']:.3f}"
    )
    soft_validation_figure(
        cols["cryoposePrecision"],
        acc,
        opts.precision_threshold,
        opts.accuracy_threshold,
        out / "soft_validation.png",
        title,
    )


def run_validate(
    maps: list[Path],
    particles: Path,
    out: Path,
    options: ValidationOptions | None = None,
    by_class: bool = False,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: DaskExecutor | None = None,
) -> dict:
    """The ``cryopose validate`` job on files; returns the summary written to out/summary.json.

    Inputs, options and the output folder are checked before any work; files in ``out``
    that cryopose did not write are replaced only with ``force``.

    One map: scores in out/particles.star, out/pruned.star, out/summary.json and
    out/soft_validation.png. Several maps without ``by_class``: each in out/map<i>/, and a
    ranking in out/summary.json. Finished chunks are kept in out/.cryopose_validate and a
    rerun with the same inputs and settings resumes from them. With an ``executor`` the
    chunks run on its Dask cluster (the stacks must be readable by its workers).
    """
    opts = options or ValidationOptions()
    out = Path(out)
    ps = read_particles(particles, apix=apix)
    if len(ps) == 0:
        raise UserError(f"{particles} has no particles; nothing to validate")
    volumes = [read_map(m) for m in maps]
    images = ParticleImages(ps)
    box = images.image_shape[0]
    apix_used = particle_pixel_size(ps)
    for (vol, map_apix), path in zip(volumes, maps):
        check_map_fits_particles(vol, map_apix, box, apix_used, path)
    if by_class:
        _check_classes(ps, len(maps))
    opts.check(box, apix_used)
    several = not by_class and len(maps) > 1
    outputs = (
        [f"map{i}/{name}" for i in range(1, len(maps) + 1) for name in OUTPUTS] + ["summary.json"]
        if several
        else OUTPUTS
    )
    base: dict[str, Any] = {
        "particles": file_identity(particles),
        "maps": [file_identity(m) for m in maps],
        "apix": apix,
        "by_class": by_class,
        "options": asdict(opts),
    }
    base["options"].pop("chunk_size")  # results do not depend on it
    store_root = out / STORE
    with output_folder(out, inputs=[particles, *maps, *images.paths], outputs=outputs, force=force):
        if not several:
            cols, summary = validate_particles(
                ps, images, volumes, opts, by_class, device, progress, store_root, base, executor=executor
            )
            summary["maps"] = [str(m) for m in maps]
            _write_outputs(out, ps, cols, summary, opts)
        else:
            summaries = []
            for i, (m, map_and_apix) in enumerate(zip(maps, volumes), start=1):
                cols, s = validate_particles(
                    ps,
                    images,
                    [map_and_apix],
                    opts,
                    False,
                    device,
                    progress,
                    store_root / f"map{i}",
                    {**base, "map_index": i},
                    len(ps) * len(maps),
                    executor,
                )
                s["map"] = str(m)
                _write_outputs(out / f"map{i}", ps, cols, s, opts)
                summaries.append(s)
            summary = {
                "n_particles": len(ps),
                "maps": [str(m) for m in maps],
                "ranking": rank_maps(summaries, [str(m) for m in maps]),
                "per_map": summaries,
                "precision_threshold": opts.precision_threshold,
                "accuracy_threshold": opts.accuracy_threshold,
            }
            write_json_atomic(out / "summary.json", summary)
        discard(store_root)
    return summary
