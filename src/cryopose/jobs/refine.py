"""The refine job: gold-standard local refinement of particle poses.

:func:`refine_particles` works on a ``ParticleSet`` and an image source; :func:`run_refine`
is the job on files behind ``cryopose refine``. Iteration 0 gives each half set
(rlnRandomSubset, or a seeded random split) its own reference: the half maps given, or
reconstructed from that half's input poses. Iteration i then

1. searches every particle of half h against half h's map only, Wiener-filtered per
   shell (gain sqrt(2 FSC / (1 + FSC)), :func:`fsc_reference_weights`) and low-passed
   at the current resolution (the FSC 0.143 of the two half maps), on the schedule of
   :mod:`cryopose.align.refinement` (neighbourhoods about the current pose, bounded
   about the input pose; steps that shrink with the resolution), scored by NCC or by the
   Gaussian likelihood of the scoring kernel with per-shell noise power measured from
   the residuals of half h's particles against half h's map at their current poses;
2. reconstructs the half maps from the new poses (:func:`reconstruct_halves`);
3. stops when the FSC 0.143 resolution improved by less than 1% (or after the last
   iteration allowed).

The result is the iteration with the best resolution. Every finished chunk of every search
and every finished iteration is kept (``store_dir``), so an interrupted run resumes where it
stopped; a run whose inputs or settings changed starts over, and says which changed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopose.align.local_search import LocalSearchSettings, local_search
from cryopose.align.refinement import fsc_reference_weights, local_search_schedule, resolution_improved, shell_noise_power
from cryopose.align.scoring import (
    GaussianNoise,
    PreparedParticles,
    Reference,
    make_reference,
    prepare_particles,
    residual_shell_power,
    shell_sizes,
)
from cryopose.errors import UserError
from cryopose.geometry.rotations import geodesic_distance
from cryopose.geometry.symmetry import symmetry_matrices
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.filters import filter_shells
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import Checkpoint, ChunkStore, discard, file_identity
from cryopose.io.mrc import ParticleImages, read_map, write_map
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_fsc_curves, write_fsc_csv
from cryopose.io.star import write_star
from cryopose.jobs.chunks import ChunkWork, run_chunks
from cryopose.jobs.inputs import check_map_fits_particles, half_set_labels, particle_pixel_size, require_reconstruction_memory
from cryopose.jobs.reconstruct import ReconstructSettings, reconstruct_halves
from cryopose.particles import ParticleSet, ParticleTensors
from cryopose.reconstruct.fsc import FSCResult, fourier_shell_correlation

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.executor import DaskExecutor

__all__ = ["RefineSettings", "RefineResult", "refine_particles", "run_refine", "COLUMN_NAMES", "STORE", "OUTPUTS"]

log = logging.getLogger("cryopose")

STORE = ".cryopose_refine"
OUTPUTS = ("particles.star", "half1.mrc", "half2.mrc", "map.mrc", "fsc.csv", "fsc.png", "summary.json")
COLUMN_NAMES = ("cryoposeRefineScore", "cryoposePoseChange", "cryoposeOriginChange")
SCORES = ("ncc", "likelihood")
MASK_RADIUS = 0.45  # of the box: the particles' soft mask (prepare_particles); its diameter sets the angular steps


@dataclass
class RefineSettings:
    """Settings of a refinement (degrees, Å).

    symmetry: RELION group name (for the reconstructions); sigma_angle: radius of the
    rotation neighbourhood (deg, geodesic on SO(3), psi included) and largest change from
    the input pose; max_shift: the same for origins (Å); iterations: at most this many;
    score: "ncc" or "likelihood"; ctf: apply each particle's CTF to its references and
    CTF-weight the reconstructions; seed: of the random half split when there is no
    rlnRandomSubset; min_improvement: a relative resolution gain below this stops the run;
    chunk_size: particles searched at a time (results do not depend on it).
    """

    symmetry: str = "C1"
    sigma_angle: float = 6.0
    max_shift: float = 5.0
    iterations: int = 5
    score: str = "ncc"
    ctf: bool = True
    seed: int = 0
    min_improvement: float = 0.01
    chunk_size: int = 128

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise UserError(f"unknown score {self.score!r}; use ncc or likelihood", option="score")
        if not (math.isfinite(self.sigma_angle) and 0 < self.sigma_angle <= 90):
            raise UserError(f"the angular neighbourhood must be in (0, 90] deg, got {self.sigma_angle}", option="sigma-angle")
        if not (math.isfinite(self.max_shift) and self.max_shift >= 0):
            raise UserError(f"the origin neighbourhood must be a non-negative number of A, got {self.max_shift}",
                            option="max-shift")
        for name in ("iterations", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}",
                                option=name.replace("_", "-"))
        if not (math.isfinite(self.min_improvement) and 0 <= self.min_improvement < 1):
            raise UserError(f"the minimum improvement must be in [0, 1), got {self.min_improvement}",
                            option="min-improvement")
        symmetry_matrices(self.symmetry)  # a bad name fails here, before any work

    def check(self, box: int, pixel_size: float) -> None:
        """UserError for settings that do not fit particles of ``box`` px at ``pixel_size`` Å."""
        quarter = 0.25 * box * pixel_size
        if self.max_shift > quarter:
            raise UserError(f"the origin neighbourhood ({self.max_shift:g} A) must be at most a quarter of the box "
                            f"({quarter:.1f} A); a local refinement moves particles less", option="max-shift")

    def reconstruct_settings(self) -> ReconstructSettings:
        return ReconstructSettings(symmetry=self.symmetry, ctf=self.ctf, seed=self.seed)


@dataclass
class RefineResult:
    """The refined poses (of the best iteration) and what led to them.

    rotations (n, 3, 3) RELION A; shifts_angstrom (n, 2); scores (n,) NCC or log-likelihood
    of the final search; halves (n,) 1/2 and whether they were drawn at random; half maps
    and map (N, N, N) reconstructed from the refined poses; fsc of the half maps;
    iterations: one record per iteration (0 = the input poses); best_iteration;
    stop_reason."""

    rotations: torch.Tensor
    shifts_angstrom: torch.Tensor
    scores: torch.Tensor
    halves: np.ndarray
    halves_drawn: bool
    half1: torch.Tensor
    half2: torch.Tensor
    full: torch.Tensor
    fsc: FSCResult
    iterations: list[dict] = field(default_factory=list)
    best_iteration: int = 0
    stop_reason: str = ""


# ----------------------------------------------------------------------------- chunk work
@dataclass
class _SearchShared:
    """What every chunk of one iteration's search needs (sent once to each Dask worker)."""

    references: tuple[Reference, Reference]  # half 1's and half 2's
    search: LocalSearchSettings
    noise_power: tuple[torch.Tensor, torch.Tensor] | None  # per shell, per half (likelihood)
    device: str


def _reference_on(shared: _SearchShared, h: int) -> Reference:
    ref = shared.references[h - 1]
    device = torch.device(shared.device)
    if ref.device != device:
        ref = replace(ref, volume=replace(ref.volume, data=ref.volume.data.to(device)))
    return ref


def _by_half(shared: _SearchShared, part: tuple) -> Iterator[tuple[int, np.ndarray, Reference, PreparedParticles]]:
    """For each half set with particles in the chunk: (h, their rows in the chunk, half h's
    reference, those particles prepared against it). ``part`` starts (image source, rows,
    half sets)."""
    images, rows, halves = part[:3]
    device = torch.device(shared.device)
    try:
        imgs = torch.as_tensor(images.read(np.arange(len(images))), device=device)
    finally:
        images.close()
    ctf = None if rows.ctf is None else CTFParameters(**{k: v.float() for k, v in vars(rows.ctf.to(device)).items()})
    for h in (1, 2):
        sel = np.nonzero(halves == h)[0]
        if len(sel) == 0:
            continue
        ref = _reference_on(shared, h)
        t = torch.from_numpy(sel)
        prep = prepare_particles(ref, imgs[t.to(device)], None if ctf is None else ctf[t], ctf_references=True,
                                 mask_radius=MASK_RADIUS)
        yield h, sel, ref, prep


def _noise_part(shared: _SearchShared, part: tuple) -> dict[str, np.ndarray]:
    """Residual power per shell (k, R+1) and amplitude scale (k,) of one chunk's particles
    at their current poses, each against its own half's reference; ``part`` is (image
    source, rows with the current poses, half sets)."""
    rows, halves = part[1], part[2]
    power = np.zeros((len(halves), shared.references[0].radius + 1), dtype=np.float32)
    scale = np.zeros(len(halves), dtype=np.float32)
    for _, sel, ref, prep in _by_half(shared, part):
        t = torch.from_numpy(sel)
        p, a = residual_shell_power(ref, prep, rows.rotations[t].float(), (rows.shifts_angstrom[t] / ref.work_pixel_size).float())
        power[sel] = p.cpu().numpy()
        scale[sel] = a.cpu().numpy()
    return {"power": power, "scale": scale}


def _search_part(shared: _SearchShared, part: tuple) -> dict[str, np.ndarray]:
    """Refined poses, origins and scores of one chunk: each particle searched against its
    own half's reference only. ``part`` is (image source, rows with the current poses,
    half sets, prior rotations, prior origins Å, amplitude scales or None)."""
    _, rows, halves, prior_rot, prior_shift, scale = part
    k = len(halves)
    rotations = np.zeros((k, 3, 3), dtype=np.float32)
    shifts = np.zeros((k, 2), dtype=np.float32)
    scores = np.zeros(k, dtype=np.float32)
    for h, sel, ref, prep in _by_half(shared, part):
        t = torch.from_numpy(sel)
        noise = None
        if shared.noise_power is not None:
            noise = GaussianNoise(shared.noise_power[h - 1], torch.as_tensor(scale[sel]))
        res = local_search(ref, prep, rows.rotations[t].float(), rows.shifts_angstrom[t].float(), shared.search,
                           prior_rotations=prior_rot[t], prior_shifts_angstrom=prior_shift[t], noise=noise)
        rotations[sel] = res.rotations.cpu().numpy()
        shifts[sel] = res.shifts_angstrom.cpu().numpy()
        scores[sel] = res.scores.cpu().numpy()
    return {"rotations": rotations, "shifts": shifts, "scores": scores}


# ----------------------------------------------------------------------------- iterations
def _fsc_record(fsc: FSCResult) -> dict:
    return {"resolution_0143": fsc.resolution_0143, "resolution_05": fsc.resolution_05,
            "frequency": fsc.frequency.tolist(), "fsc": fsc.fsc.tolist()}


def _comparison_resolution(resolution: float, box: int, pixel_size: float) -> float:
    """The band of the search (Å): the current resolution, kept between Nyquist and a
    band of 4 shells (when the half maps agree at no resolution)."""
    if not math.isfinite(resolution):
        resolution = box * pixel_size / 4
    return float(min(max(resolution, 2.0 * pixel_size), box * pixel_size / 4))


def _degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(geodesic_distance(a.double(), b.double()))


def refine_particles(
    particles: ParticleSet,
    images,
    settings: RefineSettings | None = None,
    half_maps: tuple[np.ndarray, np.ndarray] | None = None,
    reference_map: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    store_dir: Path | None = None,
    signature: dict | None = None,
    executor: DaskExecutor | None = None,
) -> RefineResult:
    """Refine the poses of ``particles`` (images from ``images.read``) by gold-standard
    local search (see the module docstring).

    ``half_maps``: the references of half 1 and half 2 for the first iteration (N, N, N),
    else they are reconstructed from each half's input poses. ``reference_map``: a map to
    compare each iteration's map with (its FSC goes into the iteration records).
    ``store_dir``: keep finished chunks and iterations there for ``signature`` (a rerun
    with the same signature resumes). ``progress(k, total)`` as search chunks finish;
    ``executor``: run the chunks and the reconstructions on a Dask cluster.
    """
    s = settings or RefineSettings()
    device = torch.device(device)
    n = len(particles)
    tensors, apix, halves, drawn = _checked_particles(particles, s, "the particles")
    box = int(images.image_shape[0])
    s.check(box, apix)
    prior_rot, prior_shift = tensors.rotations.clone(), tensors.shifts_angstrom.clone()
    diameter = 2 * MASK_RADIUS * box * apix
    rec = s.reconstruct_settings()
    base = dict(signature or {})

    if store_dir is not None:
        ChunkStore(store_dir, base)  # the store of a run with other inputs or settings is cleared here, and logged

    def checkpoint(name: str) -> Checkpoint | None:
        return None if store_dir is None else Checkpoint(Path(store_dir) / name, {**base, "part": name})

    def store(name: str) -> ChunkStore | None:
        return None if store_dir is None else ChunkStore(Path(store_dir) / name, {**base, "part": name})

    def save(cp: Checkpoint | None, state: dict) -> None:
        if cp is not None:  # plain tensors and numbers only: checkpoints load with weights_only
            cp.save({**state, "fsc": vars(state["fsc"])})

    def load(cp: Checkpoint | None) -> dict | None:
        state = cp.load() if cp is not None else None
        if state is not None:
            state["fsc"] = FSCResult(**state["fsc"])
        return state

    def reconstruct(rotations: torch.Tensor, shifts: torch.Tensor, name: str):
        posed = replace(tensors, rotations=rotations.double(), shifts_angstrom=shifts.double())
        cp = checkpoint(name)
        out = reconstruct_halves(posed, images, halves, apix, rec, device, cp, None, executor)
        if cp is not None:
            cp.remove()
        return tuple(v.cpu() for v in out)

    def compare(full: torch.Tensor) -> dict:
        if reference_map is None:
            return {}
        f = fourier_shell_correlation(full, torch.as_tensor(reference_map, dtype=torch.float32), apix)
        return {"map_vs_reference_0143": f.resolution_0143, "map_vs_reference_05": f.resolution_05}

    # ---- iteration 0: a reference per half
    cp0 = checkpoint("iteration_00.pt")
    state = load(cp0)
    if state is None:
        t0 = time.perf_counter()
        if half_maps is not None:
            h1, h2 = (torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in half_maps)
            full = 0.5 * (h1 + h2)
            source = "given half maps"
        else:
            h1, h2, full = reconstruct(prior_rot, prior_shift, "iteration_00_reconstruct.pt")
            source = "reconstructed from the input poses"
        fsc = fourier_shell_correlation(h1, h2, apix)
        state = {"half1": h1, "half2": h2, "full": full, "fsc": fsc, "rotations": prior_rot.float(),
                 "shifts": prior_shift.float(), "scores": torch.full((n,), math.nan),
                 "record": {"iteration": 0, "references": source, **_fsc_record(fsc), **compare(full),
                            "seconds": time.perf_counter() - t0}}
        save(cp0, state)
    records = [state["record"]]
    log.info("iteration 0 (%s): half maps agree to %.2f A (FSC 0.143)", state["record"]["references"],
             state["fsc"].resolution_0143)
    total = n * s.iterations
    step = None if progress is None else (lambda k, _n: progress(k, total))
    stop_reason = f"reached the iteration limit ({s.iterations})"
    prev, best = state, None  # only these are held (maps of every iteration would not fit for large boxes)
    for i in range(1, s.iterations + 1):
        cp = checkpoint(f"iteration_{i:02d}.pt")
        state = load(cp)
        if state is None:
            state = _iterate(i, prev, tensors, images, halves, prior_rot, prior_shift, apix, box, diameter, s, device,
                             step, store, executor)
            t1 = time.perf_counter()
            h1, h2, full = reconstruct(state["rotations"], state["shifts"], f"iteration_{i:02d}_reconstruct.pt")
            fsc = fourier_shell_correlation(h1, h2, apix)
            state.update(half1=h1, half2=h2, full=full, fsc=fsc)
            state["record"].update(_fsc_record(fsc), **compare(full), reconstruct_seconds=time.perf_counter() - t1)
            state["record"]["seconds"] = state["record"]["search_seconds"] + state["record"]["reconstruct_seconds"]
            save(cp, state)
        elif progress is not None:
            progress(n, total)
        records.append(state["record"])
        r = state["record"]
        log.info("iteration %d: %.2f A (FSC 0.143), median pose change %.2f deg, %.1f particles/s", i,
                 r["resolution_0143"], r["pose_change_median_deg"], r["particles_per_second"])
        if best is None or state["fsc"].resolution_0143 <= best["fsc"].resolution_0143:  # ties: the later one
            best = state
        if not resolution_improved(prev["fsc"].resolution_0143, state["fsc"].resolution_0143, s.min_improvement):
            stop_reason = (f"the resolution stopped improving ({prev['fsc'].resolution_0143:.2f} -> "
                           f"{state['fsc'].resolution_0143:.2f} A)")
            break
        prev = state
    b = best
    return RefineResult(
        rotations=b["rotations"].double(), shifts_angstrom=b["shifts"].double(), scores=b["scores"].double(),
        halves=halves, halves_drawn=drawn, half1=b["half1"], half2=b["half2"], full=b["full"], fsc=b["fsc"],
        iterations=records, best_iteration=b["record"]["iteration"], stop_reason=stop_reason,
    )


def _iterate(
    i: int,
    prev: dict,
    tensors: ParticleTensors,
    images,
    halves: np.ndarray,
    prior_rot: torch.Tensor,
    prior_shift: torch.Tensor,
    apix: float,
    box: int,
    diameter: float,
    s: RefineSettings,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
    store: Callable[[str], ChunkStore | None],
    executor: DaskExecutor | None,
) -> dict:
    """One iteration's search (noise estimate first, for the likelihood), from the poses
    and half maps of ``prev``; returns the new poses, scores and the iteration record."""
    n = len(tensors)
    resolution = _comparison_resolution(prev["fsc"].resolution_0143, box, apix)
    weights = fsc_reference_weights(prev["fsc"].fsc)
    references = tuple(make_reference(filter_shells(prev[f"half{h}"].to(device), weights), apix, resolution, device)
                       for h in (1, 2))
    search = local_search_schedule(resolution, diameter, s.sigma_angle, s.max_shift)
    current = replace(tensors, rotations=prev["rotations"].double(), shifts_angstrom=prev["shifts"].double())
    t0 = time.perf_counter()
    noise_power, scale = None, None
    record = {"iteration": i, "comparison_resolution": resolution, "working_box": references[0].work_box,
              "angle_step_first_deg": search.angle_step, "angle_step_finest_deg": search.angle_step / 2 ** (search.levels - 1),
              "shift_step_finest_angstrom": search.shift_step / 2 ** (search.levels - 1), "levels": search.levels}
    if s.score == "likelihood":
        shared = _SearchShared(references, search, None, str(device))
        work = ChunkWork(_noise_part, shared, lambda idx: (images.take(idx), current[idx], halves[idx]))
        raw = run_chunks(n, s.chunk_size, work, store(f"iteration_{i:02d}_noise"), None, executor)
        sizes = shell_sizes(references[0]).cpu()
        power = torch.from_numpy(raw["power"])
        noise_power = tuple(shell_noise_power(power[torch.from_numpy(halves == h)], sizes) for h in (1, 2))
        scale = torch.from_numpy(raw["scale"])
        record["noise_power_per_shell"] = [p.tolist() for p in noise_power]
    shared = _SearchShared(references, search, noise_power, str(device))

    def part(idx: np.ndarray) -> tuple:
        t = torch.from_numpy(idx)
        return (images.take(idx), current[idx], halves[idx], prior_rot[t], prior_shift[t],
                None if scale is None else scale[t].numpy())

    search_store = store(f"iteration_{i:02d}_search")
    resumed = 0 if search_store is None else sum(b - a for a, b in search_store.completed())
    raw = run_chunks(n, s.chunk_size, ChunkWork(_search_part, shared, part), search_store, progress, executor)
    seconds = time.perf_counter() - t0
    rotations = torch.from_numpy(raw["rotations"])
    shifts = torch.from_numpy(raw["shifts"])
    change = _degrees(rotations, prev["rotations"])
    moved = (shifts.double() - prev["shifts"].double()).norm(dim=-1)
    record.update(
        pose_change_median_deg=float(change.median()), pose_change_mean_deg=float(change.mean()),
        origin_change_median_angstrom=float(moved.median()),
        search_seconds=seconds, particles_per_second=(n - resumed) / max(seconds, 1e-9),
    )
    return {"rotations": rotations, "shifts": shifts, "scores": torch.from_numpy(raw["scores"]), "record": record}


def _checked_particles(ps: ParticleSet, s: RefineSettings, name: str) -> tuple[ParticleTensors, float, np.ndarray, bool]:
    """(tensors, pixel size Å, half sets, whether drawn at random) of particles that can be
    refined; UserError naming ``name`` otherwise."""
    if len(ps) == 0:
        raise UserError(f"{name} has no particles; nothing to refine")
    tensors = ps.to_tensors(ctf=s.ctf)
    if tensors.rotations is None:
        raise UserError(f"{name} has no angles (rlnAngleRot/Tilt/Psi); local refinement starts from poses")
    if s.ctf and tensors.ctf is None:
        raise UserError(f"{name} has no CTF columns (rlnDefocusU ...); refine without CTF", option="no-ctf")
    apix = particle_pixel_size(ps)
    halves, drawn = half_set_labels(ps, s.seed)
    for h in (1, 2):
        if not np.any(halves == h):
            raise UserError(f"half set {h} of {name} is empty (rlnRandomSubset); give both halves particles "
                            "or drop the column to split at random")
    return tensors, apix, halves, drawn


# ----------------------------------------------------------------------------- on files
def run_refine(
    particles: Path,
    map_path: Path,
    out: Path,
    half_maps: tuple[Path, Path] | None = None,
    settings: RefineSettings | None = None,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: DaskExecutor | None = None,
) -> dict:
    """The ``cryopose refine`` job on files; returns the summary written to out/summary.json.

    ``map_path``: the reference map: the particles' box and pixel size must match it, and
    each iteration's map is compared with it (FSC in the summary). ``half_maps``: the two
    references of the first iteration (else reconstructed from each half's input poses).
    Inputs and the output folder are checked before any work. Writes particles.star
    (every input column, the refined rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst,
    rlnRandomSubset, cryoposeRefineScore, cryoposePoseChange (deg) and
    cryoposeOriginChange (Å) from the input), half1.mrc, half2.mrc, map.mrc, fsc.csv
    (the refined half maps' FSC), fsc.png (the FSC of every iteration) and summary.json.
    Finished work is kept in out/.cryopose_refine until the outputs are written.
    """
    s = settings or RefineSettings()
    out = Path(out)
    t0 = time.perf_counter()
    ps = read_particles(particles, apix=apix)
    tensors, pixel_size, _, _ = _checked_particles(ps, s, str(particles))
    images = ParticleImages(ps)
    box = images.image_shape[0]
    s.check(box, pixel_size)
    volume, map_apix = read_map(map_path)
    check_map_fits_particles(volume, map_apix, box, pixel_size, map_path)
    halves_given = None
    if half_maps is not None:
        halves_given = []
        for path in half_maps:
            vol, vol_apix = read_map(path)
            check_map_fits_particles(vol, vol_apix, box, pixel_size, path)
            halves_given.append(vol)
    require_reconstruction_memory(box, device)
    inputs = [particles, map_path, *(half_maps or ()), *images.paths]
    signature = {"particles": file_identity(particles), "map": file_identity(map_path),
                 "half_maps": [file_identity(p) for p in half_maps] if half_maps else None, "apix": apix,
                 **{k: v for k, v in asdict(s).items() if k not in ("iterations", "chunk_size")}}
    with output_folder(out, inputs=inputs, outputs=OUTPUTS, force=force):
        result = refine_particles(ps, images, s, None if halves_given is None else tuple(halves_given), volume, device,
                                  progress, out / STORE, signature, executor)
        change = _degrees(result.rotations, tensors.rotations)
        moved = (result.shifts_angstrom - tensors.shifts_angstrom).norm(dim=-1)
        refined = ps.with_poses(result.rotations.numpy(), result.shifts_angstrom.numpy()).with_columns(
            rlnRandomSubset=result.halves.astype(np.int64),
            cryoposeRefineScore=result.scores.numpy(),
            cryoposePoseChange=change.numpy(),
            cryoposeOriginChange=moved.numpy(),
        )
        write_star(refined, out / "particles.star")
        for name, vol in (("half1.mrc", result.half1), ("half2.mrc", result.half2), ("map.mrc", result.full)):
            write_map(out / name, vol.numpy(), pixel_size)
        write_fsc_csv(out / "fsc.csv", result.fsc.frequency, result.fsc.fsc)
        curves = [(f"iteration {r['iteration']}" + (" (start)" if r["iteration"] == 0 else "")
                   + (" (best)" if r["iteration"] == result.best_iteration else ""),
                   np.asarray(r["frequency"]), np.asarray(r["fsc"])) for r in result.iterations]
        plot_fsc_curves(curves, out / "fsc.png", title=f"Half-map FSC per iteration ({len(ps)} particles, {s.symmetry})")
        best = result.iterations[result.best_iteration]
        summary = {
            "particles": str(particles),
            "map": str(map_path),
            "half_maps": [str(p) for p in half_maps] if half_maps else None,
            "n_particles": len(ps),
            "n_half1": int((result.halves == 1).sum()),
            "n_half2": int((result.halves == 2).sum()),
            "half_sets_drawn_at_random": result.halves_drawn,
            "box": int(box),
            "pixel_size": pixel_size,
            "settings": asdict(s),
            "resolution_start_0143": result.iterations[0]["resolution_0143"],
            "resolution_0143": result.fsc.resolution_0143,
            "resolution_05": result.fsc.resolution_05,
            "best_iteration": result.best_iteration,
            "stop_reason": result.stop_reason,
            "pose_change_from_input_median_deg": float(change.median()),
            "origin_change_from_input_median_angstrom": float(moved.median()),
            "map_vs_reference_0143": best.get("map_vs_reference_0143"),
            "iterations": result.iterations,
            "seconds": time.perf_counter() - t0,
            "device": str(device),
        }
        write_json_atomic(out / "summary.json", summary)
        discard(out / STORE)
    return summary
