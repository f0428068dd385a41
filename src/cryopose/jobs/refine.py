"""The refine job: gold-standard refinement of particle poses, local or from scratch.

:func:`refine_particles` works on a ``ParticleSet`` and an image source; :func:`run_refine`
is the job on files behind ``cryopose refine``. Iteration 0 gives each half set
(rlnRandomSubset, or a seeded random split) its own reference, as RELION's 3D auto-refine:
by default the given map low-passed to ``ini_high`` for both halves (compared only within
that band), or the half maps given (compared only within the band they hold), or, with
``initial_reference="poses"``, each half reconstructed from its own input poses. With
``global_search`` the first ``global_passes`` iterations search every particle over the
asymmetric unit, psi and origins within ``max_shift`` (the engine of
:mod:`cryopose.align.projection_matching`, CTF applied to the references), each half against
its own reference; input angles are not used. Every (other) iteration then

1. searches every particle of half h against half h's map only, Wiener-filtered per
   shell (gain sqrt(2 FSC / (1 + FSC)), :func:`fsc_reference_weights`) and low-passed
   at the current resolution (the FSC 0.143 of the two half maps), on the schedule of
   :mod:`cryopose.align.refinement` (neighbourhoods about the current pose, a Gaussian prior
   or a wall about the input pose, or the global pose; steps that shrink with the
   resolution), scored by NCC or by the Gaussian likelihood of the scoring kernel with
   per-shell noise power measured from the residuals of half h's particles against half h's
   map at their current poses;
2. reconstructs the half maps from the new poses (:func:`reconstruct_halves`);
3. stops when the FSC 0.143 resolution improved by less than 1% and the poses settled
   (median change at most twice the finest angular step; :func:`poses_moving`), or after
   the last iteration allowed.

The result is the last iteration whose resolution is within 1% of the best. It is then compared with chance: half
maps reconstructed from the same particles at random poses; a result no better than that,
or than ``ini_high``, is flagged (``chance_reasons``, a warning). Every finished chunk of
every search and every finished iteration is kept (``store_dir``), so an interrupted run
resumes where it stopped; a run whose inputs or settings changed starts over, and says
which changed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cryopose.align.local_search import LocalSearchSettings
from cryopose.align.projection_matching import Gallery, build_gallery
from cryopose.align.refine_chunks import global_search_chunk, local_search_chunk, residual_power_chunk
from cryopose.align.refinement import (
    PRIORS,
    chance_reasons,
    comparison_band,
    fsc_reference_weights,
    global_match_settings,
    local_search_schedule,
    map_content_resolution,
    poses_moving,
    reference_resolution,
    resolution_improved,
    shell_noise_power,
)
from cryopose.align.scoring import Reference, make_reference, shell_sizes
from cryopose.errors import UserError
from cryopose.geometry.rotations import geodesic_distance, random_rotations
from cryopose.geometry.symmetry import Symmetry
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.filters import filter_shells, lowpass_volume
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import Checkpoint, ChunkStore, discard, file_identity
from cryopose.io.mrc import ParticleImages, read_map, write_map
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_fsc_curves, write_fsc_csv
from cryopose.io.star import write_star
from cryopose.jobs.chunks import ChunkWork, run_chunks
from cryopose.jobs.inputs import (
    check_map_fits_particles,
    half_set_labels,
    particle_pixel_size,
    require_reconstruction_memory,
)
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
INITIAL_REFERENCES = ("map", "poses")
MASK_RADIUS = 0.45  # of the box: the particles' soft mask (prepare_particles); its diameter sets the angular steps
# The default initial low-pass (Å). The first global assignment needs shells: its band holds
# R = box / ini_high shells, and a 7.5 deg search resolves about 1/R rad, so a 150 Å particle
# in a 225 Å box has 7.5 shells at 30 Å but 5.6 at 40 Å. Measured on the 70S ribosome
# (64 px at 5 Å/px, SNR 0.1, 2,000 particles, one global pass): first-pass median error 4.2 deg
# at 30 Å, 4.6 at 40, 12.6 at 60 (36% of particles > 20 deg off), final 1.64 / 1.66 / 2.97
# deg. 30 Å is still well below what model bias needs to be harmless (RELION: 30-60 Å).
INI_HIGH = 30.0
# Seeds the random poses of the chance check; far from small seeds, so that they are never the
# poses of a simulation drawn with the same generator and a small seed.
CHANCE_SEED = 0x6A09E667


@dataclass
class RefineSettings:
    """Settings of a refinement (degrees, Å).

    symmetry: RELION group name (searches and reconstructions); sigma_angle: the prior on
    the rotation about the input pose (or the global one): the sigma of a Gaussian
    (``prior="gaussian"``, RELION's --sigma_ang) or a hard limit (``prior="wall"``) (deg,
    geodesic on SO(3), psi included); search_angle: radius of each iteration's local search
    about the current pose (None: sigma_angle); max_shift: the origin neighbourhood (Å),
    searched about the current origin and a hard limit about the input one (about the box
    centre with global_search); iterations: local iterations at most; score: "ncc" or
    "likelihood"; ctf: apply each particle's CTF to its references and CTF-weight the
    reconstructions; seed: of the random half split when there is no rlnRandomSubset (and of
    the random poses of the chance check); min_improvement: a relative resolution gain below
    this stops the run; chunk_size: particles searched at a time (results do not depend on
    it); initial_reference: "map" (the map low-passed to ini_high for both halves, RELION)
    or "poses" (each half reconstructed from its input poses); ini_high: that low-pass (Å),
    and the band of identical half maps; global_search: assign poses from scratch by
    global_passes global searches (directions of the asymmetric unit and psi every
    global_sampling deg) before the local iterations.
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
    search_angle: float | None = None
    prior: str = "gaussian"
    initial_reference: str = "map"
    ini_high: float = INI_HIGH
    global_search: bool = False
    global_passes: int = 2
    global_sampling: float = 7.5

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise UserError(f"unknown score {self.score!r}; use ncc or likelihood", option="score")
        if self.prior not in PRIORS:
            raise UserError(f"unknown prior {self.prior!r}; use gaussian or wall", option="prior")
        if self.initial_reference not in INITIAL_REFERENCES:
            raise UserError(
                f"unknown initial reference {self.initial_reference!r}; use map or poses", option="initial-reference"
            )
        if not (math.isfinite(self.sigma_angle) and 0 < self.sigma_angle <= 90):
            raise UserError(f"the angular prior must be in (0, 90] deg, got {self.sigma_angle}", option="sigma-angle")
        if self.search_angle is not None and not (math.isfinite(self.search_angle) and 0 < self.search_angle <= 90):
            raise UserError(
                f"the angular search range must be in (0, 90] deg, got {self.search_angle}", option="search-angle"
            )
        if not (math.isfinite(self.max_shift) and self.max_shift >= 0):
            raise UserError(
                f"the origin neighbourhood must be a non-negative number of A, got {self.max_shift}", option="max-shift"
            )
        if not (math.isfinite(self.ini_high) and self.ini_high > 0):
            raise UserError(
                f"the initial low-pass must be a positive number of A, got {self.ini_high}", option="ini-high"
            )
        if not (math.isfinite(self.global_sampling) and 0 < self.global_sampling <= 30):
            raise UserError(
                f"the global angular sampling must be in (0, 30] deg, got {self.global_sampling}",
                option="global-sampling",
            )
        for name in ("iterations", "chunk_size", "global_passes"):
            if int(getattr(self, name)) < 1:
                raise UserError(
                    f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}",
                    option=name.replace("_", "-"),
                )
        if not (math.isfinite(self.min_improvement) and 0 <= self.min_improvement < 1):
            raise UserError(
                f"the minimum improvement must be in [0, 1), got {self.min_improvement}", option="min-improvement"
            )
        if self.global_search and self.initial_reference == "poses":
            raise UserError(
                "a global search starts from the map, not from poses; drop the initial reference from poses",
                option="initial-reference",
            )
        self.symmetry = Symmetry(self.symmetry)  # a bad name fails here, before any work

    def check(self, box: int, pixel_size: float) -> None:
        """UserError for settings that do not fit particles of ``box`` px at ``pixel_size`` Å."""
        quarter = 0.25 * box * pixel_size
        if self.max_shift > quarter:
            raise UserError(
                f"the origin neighbourhood ({self.max_shift:g} A) must be at most a quarter of the box "
                f"({quarter:.1f} A); a local refinement moves particles less",
                option="max-shift",
            )
        nyquist = 2.0 * pixel_size
        if self.ini_high <= nyquist:
            raise UserError(
                f"the initial low-pass ({self.ini_high:g} A) must be coarser than Nyquist ({nyquist:.2f} A "
                f"at {pixel_size:g} A/px); RELION starts at 30-60 A",
                option="ini-high",
            )

    def reconstruct_settings(self) -> ReconstructSettings:
        return ReconstructSettings(symmetry=self.symmetry, ctf=self.ctf, seed=self.seed)

    @property
    def total_iterations(self) -> int:
        """Global passes (with global_search) plus local iterations, at most."""
        return (self.global_passes if self.global_search else 0) + self.iterations


@dataclass
class RefineResult:
    """The refined poses (of the best iteration) and what led to them.

    rotations (n, 3, 3) RELION A; shifts_angstrom (n, 2); scores (n,) NCC or log-likelihood
    of the final search; halves (n,) 1/2 and whether they were drawn at random; half maps
    and map (N, N, N) reconstructed from the refined poses; fsc of the half maps;
    iterations: one record per iteration (0 = the references of the start); best_iteration;
    stop_reason; resolution: the best iteration's (Å); chance_resolution: the FSC 0.143 of
    half maps from the same particles at random poses; chance_reasons: why the result looks
    like chance (empty when it does not)."""

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
    resolution: float = math.inf
    chance_resolution: float | None = None
    chance_reasons: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- chunk work
@dataclass
class _SearchShared:
    """What every chunk of one iteration's local search needs (sent once to each Dask worker)."""

    references: tuple[Reference, Reference]  # half 1's and half 2's
    search: LocalSearchSettings
    noise_power: tuple[torch.Tensor, torch.Tensor] | None  # per shell, per half (likelihood)
    device: str


@dataclass
class _GlobalShared:
    """What every chunk of one global pass needs: half 1's and half 2's galleries."""

    galleries: tuple[Gallery, Gallery]
    device: str


def _chunk_images(device: str, part: tuple) -> tuple[torch.Tensor, CTFParameters | None]:
    """The chunk's images (k, N, N) and CTF on ``device``; ``part`` starts (image source, rows)."""
    images, rows = part[:2]
    dev = torch.device(device)
    try:
        imgs = torch.as_tensor(images.read(np.arange(len(images))), device=dev)
    finally:
        images.close()
    return imgs, None if rows.ctf is None else rows.ctf.to(dev, torch.float32)


def _numpy(arrays: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def _noise_part(shared: _SearchShared, part: tuple) -> dict[str, np.ndarray]:
    """Residual power per shell and amplitude scale of one chunk's particles at their current
    poses (:func:`residual_power_chunk`); ``part`` is (image source, rows with the current
    poses, half sets)."""
    imgs, ctf = _chunk_images(shared.device, part)
    rows, halves = part[1], part[2]
    return _numpy(
        residual_power_chunk(
            shared.references, imgs, ctf, torch.from_numpy(halves), rows.rotations, rows.shifts_angstrom, MASK_RADIUS
        )
    )


def _search_part(shared: _SearchShared, part: tuple) -> dict[str, np.ndarray]:
    """Refined poses, origins and scores of one chunk (:func:`local_search_chunk`). ``part``
    is (image source, rows with the current poses, half sets, prior rotations, prior
    origins Å, amplitude scales or None)."""
    _, rows, halves, prior_rot, prior_shift, scale = part
    imgs, ctf = _chunk_images(shared.device, part)
    return _numpy(
        local_search_chunk(
            shared.references,
            shared.search,
            imgs,
            ctf,
            torch.from_numpy(halves),
            rows.rotations,
            rows.shifts_angstrom,
            prior_rot,
            prior_shift,
            MASK_RADIUS,
            shared.noise_power,
            None if scale is None else torch.from_numpy(scale),
        )
    )


def _global_part(shared: _GlobalShared, part: tuple) -> dict[str, np.ndarray]:
    """Best pose, origin and NCC of one chunk's particles (:func:`global_search_chunk`);
    ``part`` is (image source, rows, half sets)."""
    imgs, ctf = _chunk_images(shared.device, part)
    return _numpy(global_search_chunk(shared.galleries, imgs, ctf, torch.from_numpy(part[2])))


# ----------------------------------------------------------------------------- iterations
def _fsc_record(fsc: FSCResult) -> dict:
    return {
        "resolution_0143": fsc.resolution_0143,
        "resolution_05": fsc.resolution_05,
        "frequency": fsc.frequency.tolist(),
        "fsc": fsc.fsc.tolist(),
    }


def _packed(state: dict) -> dict:
    """``state`` as a checkpoint holds it (tensors, numbers, strings and containers of these)."""
    return {**state, "fsc": state["fsc"].to_dict()}


def _unpacked(state: dict | None) -> dict | None:
    if state is None:
        return None
    try:
        f = state["fsc"]
        fsc = FSCResult(
            torch.tensor(f["frequency"], dtype=torch.float64),
            torch.tensor(f["fsc"], dtype=torch.float64),
            float(f["resolution_0143"]),
            float(f["resolution_05"]),
        )
    except (KeyError, TypeError, ValueError):
        return None  # not a state this job wrote: the iteration is recomputed
    return {**state, "fsc": fsc}


def _degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(geodesic_distance(a.double(), b.double()))


def _references(state: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two half maps of ``state`` Wiener-filtered by their FSC (when they are independent)."""
    weights = torch.ones_like(state["fsc"].fsc) if state["identical"] else fsc_reference_weights(state["fsc"].fsc)
    half1, half2 = (filter_shells(state[f"half{h}"].to(device), weights) for h in (1, 2))
    return half1, half2


def _initial_state(
    half_maps: tuple[np.ndarray, np.ndarray] | None,
    reference_map: np.ndarray | None,
    s: RefineSettings,
    apix: float,
    box: int,
    reconstruct: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> dict:
    """Iteration 0: the half maps, their FSC, the resolution they hold and where they came from."""
    content = None
    if half_maps is not None:
        h1, h2 = (torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in half_maps)
        full = 0.5 * (h1 + h2)
        source = "given half maps"
        content = max(map_content_resolution(h1, apix), map_content_resolution(h2, apix))
    elif s.initial_reference == "map":
        if reference_map is None:
            raise UserError(
                "a refinement from the map needs a map; give one or start from the input poses",
                option="initial-reference",
            )
        h1 = lowpass_volume(torch.as_tensor(np.asarray(reference_map), dtype=torch.float32), s.ini_high, apix)
        h2, full = h1.clone(), h1.clone()
        source = f"the map low-passed to {s.ini_high:g} A"
        content = map_content_resolution(h1, apix)
    else:
        h1, h2, full = reconstruct()
        source = "reconstructed from the input poses"
    fsc = fourier_shell_correlation(h1, h2, apix)
    if content is None:
        resolution, identical = fsc.resolution_0143, False
    else:
        resolution, identical = reference_resolution(fsc.fsc, fsc.resolution_0143, content, s.ini_high, box, apix)
    return {
        "half1": h1,
        "half2": h2,
        "full": full,
        "fsc": fsc,
        "resolution": resolution,
        "identical": identical,
        "source": source,
        "content": content,
    }


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
    search (see the module docstring).

    ``half_maps``: the references of half 1 and half 2 for the first iteration (N, N, N);
    else ``reference_map`` low-passed to ``settings.ini_high`` for both, or (with
    ``initial_reference="poses"``) each half reconstructed from its input poses.
    ``reference_map`` is also what each iteration's map is compared with (its FSC goes into
    the iteration records). ``store_dir``: keep finished chunks and iterations there for
    ``signature`` (a rerun with the same signature resumes). ``progress(k, total)`` as
    search chunks finish; ``executor``: run the chunks and the reconstructions on a Dask
    cluster.
    """
    s = settings or RefineSettings()
    device = torch.device(device)
    n = len(particles)
    tensors, apix, halves, drawn = _checked_particles(particles, s, "the particles")
    box = int(images.image_shape[0])
    s.check(box, apix)
    if s.global_search:  # the prior rotations are the last global pass's poses; origins about the box centre
        prior_rot: torch.Tensor | None = None
        prior_shift = torch.zeros(n, 2, dtype=torch.float64)
    else:
        assert tensors.rotations is not None  # _checked_particles: a local refinement starts from poses
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
        if cp is not None:
            cp.save(_packed(state))

    def load(cp: Checkpoint | None) -> dict | None:
        return None if cp is None else _unpacked(cp.load())

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

        def reconstruct_input() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            assert prior_rot is not None  # RefineSettings: no references from poses with a global search
            return reconstruct(prior_rot, prior_shift, "iteration_00_reconstruct.pt")

        state = _initial_state(half_maps, reference_map, s, apix, box, reconstruct_input)
        state.update(
            rotations=None if prior_rot is None else prior_rot.float(),
            shifts=prior_shift.float(),
            scores=torch.full((n,), math.nan),
        )
        state["record"] = {
            "iteration": 0,
            "search": None,
            "references": state.pop("source"),
            **_fsc_record(state["fsc"]),
            "resolution_0143": state["resolution"],
            "fsc_0143_of_the_halves": state["fsc"].resolution_0143,
            "halves_identical": state["identical"],
            "content_resolution": state.pop("content"),
            **compare(state["full"]),
            "seconds": time.perf_counter() - t0,
        }
        save(cp0, state)
    records = [state["record"]]
    log.info(
        "iteration 0 (%s): references hold %.2f A%s",
        state["record"]["references"],
        state["resolution"],
        " (one map for both halves)" if state["identical"] else " (FSC 0.143 of the half maps)",
    )
    total = n * s.total_iterations
    step = None if progress is None else (lambda k, _n: progress(k, total))
    passes = s.global_passes if s.global_search else 0
    ctx = _Context(tensors, images, halves, apix, box, diameter, s, device, step, store, executor)
    stop_reason = f"reached the iteration limit ({s.total_iterations})"
    best_resolution = math.inf
    prev, best = state, None  # only these are held (maps of every iteration would not fit for large boxes)
    for i in range(1, s.total_iterations + 1):
        cp = checkpoint(f"iteration_{i:02d}.pt")
        state = load(cp)
        if state is None:
            if i <= passes:
                state = _global_pass(i, prev, ctx)
            else:
                assert prior_rot is not None  # the input poses, or set by the last global pass
                state = _iterate(i, prev, ctx, prior_rot, prior_shift)
            t1 = time.perf_counter()
            h1, h2, full = reconstruct(state["rotations"], state["shifts"], f"iteration_{i:02d}_reconstruct.pt")
            fsc = fourier_shell_correlation(h1, h2, apix)
            state.update(half1=h1, half2=h2, full=full, fsc=fsc, resolution=fsc.resolution_0143, identical=False)
            state["record"].update(_fsc_record(fsc), **compare(full), reconstruct_seconds=time.perf_counter() - t1)
            state["record"]["seconds"] = state["record"]["search_seconds"] + state["record"]["reconstruct_seconds"]
            save(cp, state)
        elif progress is not None:
            progress(n, total)
        records.append(state["record"])
        r = state["record"]
        change = "-" if r["pose_change_median_deg"] is None else f"{r['pose_change_median_deg']:.2f} deg"
        log.info(
            "iteration %d (%s): %.2f A (FSC 0.143), median pose change %s, %.1f particles/s",
            i,
            r["search"],
            r["resolution_0143"],
            change,
            r["particles_per_second"],
        )
        if i == passes:  # the local iterations keep the poses of the last global pass as their prior
            prior_rot = state["rotations"].double()
        best_resolution = min(best_resolution, state["resolution"])
        if state["resolution"] <= best_resolution * (1 + s.min_improvement):  # within the tolerance: the later one
            best = state
        if i > passes and not resolution_improved(prev["resolution"], state["resolution"], s.min_improvement):
            if not poses_moving(r["pose_change_median_deg"], r.get("angle_step_finest_deg")):
                stop_reason = (
                    f"the resolution stopped improving ({prev['resolution']:.2f} -> "
                    f"{state['resolution']:.2f} A) and the poses settled (median change "
                    f"{r['pose_change_median_deg']:.2f} deg)"
                )
                break
        prev = state
    assert best is not None  # the first iteration is within the tolerance of the best so far
    b = best

    # ---- chance: half maps of the same particles at random poses
    cpc = checkpoint("chance.pt")
    chance = cpc.load() if cpc is not None else None
    if chance is None:
        rand = random_rotations(n, torch.Generator().manual_seed(CHANCE_SEED + s.seed)).double()
        c1, c2, _ = reconstruct(rand, b["shifts"], "chance_reconstruct.pt")
        chance = {"resolution_0143": fourier_shell_correlation(c1, c2, apix).resolution_0143}
        if cpc is not None:
            cpc.save(chance)
    reasons = chance_reasons(b["resolution"], s.ini_high, chance["resolution_0143"])
    for reason in reasons:
        log.warning("warning: this refinement looks like chance: %s", reason)
    return RefineResult(
        rotations=b["rotations"].double(),
        shifts_angstrom=b["shifts"].double(),
        scores=b["scores"].double(),
        halves=halves,
        halves_drawn=drawn,
        half1=b["half1"],
        half2=b["half2"],
        full=b["full"],
        fsc=b["fsc"],
        iterations=records,
        best_iteration=b["record"]["iteration"],
        stop_reason=stop_reason,
        resolution=b["resolution"],
        chance_resolution=chance["resolution_0143"],
        chance_reasons=reasons,
    )


def _moves(rotations: torch.Tensor, shifts: torch.Tensor, prev: dict) -> dict:
    """Median and mean pose change (deg) and median origin change (Å) from ``prev``'s poses."""
    moved = (shifts.double() - prev["shifts"].double()).norm(dim=-1)
    if prev["rotations"] is None:
        return {
            "pose_change_median_deg": None,
            "pose_change_mean_deg": None,
            "origin_change_median_angstrom": float(moved.median()),
        }
    change = _degrees(rotations, prev["rotations"])
    return {
        "pose_change_median_deg": float(change.median()),
        "pose_change_mean_deg": float(change.mean()),
        "origin_change_median_angstrom": float(moved.median()),
    }


@dataclass
class _Context:
    """What every search of one refinement needs: the particles, their images and half sets,
    the geometry (Å/px, box, mask diameter Å), the settings and where and how to run."""

    tensors: ParticleTensors
    images: Any  # the image source (io.mrc.ParticleImages): take, read, close
    halves: np.ndarray
    apix: float
    box: int
    diameter: float
    settings: RefineSettings
    device: torch.device
    progress: Callable[[int, int], None] | None
    store: Callable[[str], ChunkStore | None]
    executor: DaskExecutor | None


def _searched(ctx: _Context, name: str, work: ChunkWork, prev: dict, record: dict, t0: float) -> dict:
    """Run one search's chunks (stored as ``name``) and complete its ``record`` (started at
    ``t0``); returns the new poses, scores and the record."""
    n = len(ctx.tensors)
    store = ctx.store(name)
    resumed = 0 if store is None else sum(b - a for a, b in store.completed())
    raw = run_chunks(n, ctx.settings.chunk_size, work, store, ctx.progress, ctx.executor)
    seconds = time.perf_counter() - t0
    rotations, shifts = torch.from_numpy(raw["rotations"]), torch.from_numpy(raw["shifts"])
    record.update(
        **_moves(rotations, shifts, prev),
        search_seconds=seconds,
        particles_per_second=(n - resumed) / max(seconds, 1e-9),
    )
    return {"rotations": rotations, "shifts": shifts, "scores": torch.from_numpy(raw["scores"]), "record": record}


def _global_pass(i: int, prev: dict, ctx: _Context) -> dict:
    """One global pass: every particle of half h over the gallery of half h's map (as of
    ``prev``), at the band of ``prev``'s resolution; returns the poses, NCCs and record."""
    s = ctx.settings
    band = comparison_band(prev["resolution"], ctx.box, ctx.apix)
    match = global_match_settings(band, s.global_sampling, s.max_shift, s.symmetry, MASK_RADIUS)
    t0 = time.perf_counter()
    half1, half2 = _references(prev, ctx.device)
    galleries = (build_gallery(half1, ctx.apix, match, ctx.device), build_gallery(half2, ctx.apix, match, ctx.device))
    work = ChunkWork(
        _global_part,
        _GlobalShared(galleries, str(ctx.device)),
        lambda idx: (ctx.images.take(idx), ctx.tensors[idx], ctx.halves[idx]),
    )
    g = galleries[0]
    record = {
        "iteration": i,
        "search": "global",
        "comparison_resolution": band,
        "working_box": g.work_box,
        "angular_sampling_deg": s.global_sampling,
        "directions": g.n_directions,
        "psi_steps": g.n_psi,
        "shift_step_angstrom": g.work_pixel_size,
    }
    return _searched(ctx, f"iteration_{i:02d}_global", work, prev, record, t0)


def _iterate(i: int, prev: dict, ctx: _Context, prior_rot: torch.Tensor, prior_shift: torch.Tensor) -> dict:
    """One iteration's local search (noise estimate first, for the likelihood), from the
    poses and half maps of ``prev``, with priors about ``prior_rot`` and ``prior_shift``;
    returns the new poses, scores and the iteration record."""
    s, n, halves, images = ctx.settings, len(ctx.tensors), ctx.halves, ctx.images
    band = comparison_band(prev["resolution"], ctx.box, ctx.apix)
    half1, half2 = _references(prev, ctx.device)
    references = (make_reference(half1, ctx.apix, band, ctx.device), make_reference(half2, ctx.apix, band, ctx.device))
    search = local_search_schedule(band, ctx.diameter, s.sigma_angle, s.max_shift, s.search_angle, s.prior)
    current = replace(ctx.tensors, rotations=prev["rotations"].double(), shifts_angstrom=prev["shifts"].double())
    t0 = time.perf_counter()
    noise_power: tuple[torch.Tensor, torch.Tensor] | None = None
    scale = None
    finest = 2 ** (search.levels - 1)
    record = {
        "iteration": i,
        "search": "local",
        "comparison_resolution": band,
        "working_box": references[0].work_box,
        "angle_step_first_deg": search.angle_step,
        "angle_step_finest_deg": search.angle_step / finest,
        "shift_step_finest_angstrom": search.shift_step / finest,
        "levels": search.levels,
    }
    if s.score == "likelihood":
        shared = _SearchShared(references, search, None, str(ctx.device))
        work = ChunkWork(_noise_part, shared, lambda idx: (images.take(idx), current[idx], halves[idx]))
        raw = run_chunks(n, s.chunk_size, work, ctx.store(f"iteration_{i:02d}_noise"), None, ctx.executor)
        sizes = shell_sizes(references[0]).cpu()
        power = torch.from_numpy(raw["power"])
        noise1, noise2 = (shell_noise_power(power[torch.from_numpy(halves == h)], sizes) for h in (1, 2))
        noise_power = (noise1, noise2)
        scale = torch.from_numpy(raw["scale"])
        record["noise_power_per_shell"] = [p.tolist() for p in noise_power]
    shared = _SearchShared(references, search, noise_power, str(ctx.device))

    def part(idx: np.ndarray) -> tuple:
        t = torch.from_numpy(idx)
        return (
            images.take(idx),
            current[idx],
            halves[idx],
            prior_rot[t],
            prior_shift[t],
            None if scale is None else scale[t].numpy(),
        )

    return _searched(ctx, f"iteration_{i:02d}_search", ChunkWork(_search_part, shared, part), prev, record, t0)


def _checked_particles(
    ps: ParticleSet, s: RefineSettings, name: str
) -> tuple[ParticleTensors, float, np.ndarray, bool]:
    """(tensors, pixel size Å, half sets, whether drawn at random) of particles that can be
    refined; UserError naming ``name`` otherwise."""
    if len(ps) == 0:
        raise UserError(f"{name} has no particles; nothing to refine")
    tensors = ps.to_tensors(ctf=s.ctf)
    if tensors.rotations is None and not s.global_search:
        raise UserError(
            f"{name} has no angles (rlnAngleRot/Tilt/Psi); a local refinement starts from poses: search globally",
            option="global",
        )
    if s.ctf and tensors.ctf is None:
        raise UserError(f"{name} has no CTF columns (rlnDefocusU ...); refine without CTF", option="no-ctf")
    apix = particle_pixel_size(ps)
    halves, drawn = half_set_labels(ps, s.seed)
    for h in (1, 2):
        if not np.any(halves == h):
            raise UserError(
                f"half set {h} of {name} is empty (rlnRandomSubset); give both halves particles "
                "or drop the column to split at random"
            )
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

    ``map_path``: the reference map: the particles' box and pixel size must match it; by
    default the first references are this map low-passed to ``settings.ini_high``, and each
    iteration's map is compared with it (FSC in the summary). ``half_maps``: the two
    references of the first iteration instead. Inputs and the output folder are checked
    before any work. Writes particles.star (every input column, the refined
    rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst, rlnRandomSubset, cryoposeRefineScore, and,
    when the input has angles, cryoposePoseChange (deg) and cryoposeOriginChange (Å) from
    the input), half1.mrc, half2.mrc, map.mrc, fsc.csv (the refined half maps' FSC), fsc.png
    (the FSC of every iteration) and summary.json. Finished work is kept in
    out/.cryopose_refine until the outputs are written.
    """
    s = settings or RefineSettings()
    out = Path(out)
    t0 = time.perf_counter()
    ps = read_particles(particles, apix=apix)
    tensors, pixel_size, _, _ = _checked_particles(ps, s, str(particles))
    images = ParticleImages(ps)
    box = images.image_shape[0]
    s.check(box, pixel_size)
    if half_maps is not None and s.initial_reference == "poses":
        raise UserError(
            "the first references are either the half maps given or reconstructed from the input poses; "
            "drop one of them",
            option="initial-reference",
        )
    volume, map_apix = read_map(map_path)
    check_map_fits_particles(volume, map_apix, box, pixel_size, map_path)
    halves_given = None
    if half_maps is not None:
        given = []
        for path in half_maps:
            half, half_apix = read_map(path)
            check_map_fits_particles(half, half_apix, box, pixel_size, path)
            given.append(half)
        halves_given = (given[0], given[1])
    require_reconstruction_memory(box, device)
    inputs = [particles, map_path, *(half_maps or ()), *images.paths]
    signature = {
        "particles": file_identity(particles),
        "map": file_identity(map_path),
        "half_maps": [file_identity(p) for p in half_maps] if half_maps else None,
        "apix": apix,
        **{k: v for k, v in asdict(s).items() if k not in ("iterations", "chunk_size")},
    }
    with output_folder(out, inputs=inputs, outputs=OUTPUTS, force=force):
        result = refine_particles(
            ps, images, s, halves_given, volume, device, progress, out / STORE, signature, executor
        )
        columns = {"rlnRandomSubset": result.halves.astype(np.int64), "cryoposeRefineScore": result.scores.numpy()}
        change = moved = None
        if tensors.rotations is not None:  # a global search reports how far its poses are from the input's
            change = _degrees(result.rotations, tensors.rotations)
            moved = (result.shifts_angstrom - tensors.shifts_angstrom).norm(dim=-1)
            columns.update(cryoposePoseChange=change.numpy(), cryoposeOriginChange=moved.numpy())
        refined = ps.with_poses(result.rotations.numpy(), result.shifts_angstrom.numpy()).with_columns(**columns)
        write_star(refined, out / "particles.star")
        for name, vol in (("half1.mrc", result.half1), ("half2.mrc", result.half2), ("map.mrc", result.full)):
            write_map(out / name, vol.numpy(), pixel_size)
        write_fsc_csv(out / "fsc.csv", result.fsc.frequency, result.fsc.fsc)
        curves = [
            (
                f"iteration {r['iteration']}"
                + (" (start)" if r["iteration"] == 0 else "")
                + (f" ({r['search']})" if r["search"] == "global" else "")
                + (" (best)" if r["iteration"] == result.best_iteration else ""),
                np.asarray(r["frequency"]),
                np.asarray(r["fsc"]),
            )
            for r in result.iterations
            if not r.get("halves_identical")
        ]  # one map twice has FSC 1: no curve
        plot_fsc_curves(
            curves, out / "fsc.png", title=f"Half-map FSC per iteration ({len(ps)} particles, {s.symmetry})"
        )
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
            "search": "global, then local" if s.global_search else "local",
            "initial_references": result.iterations[0]["references"],
            "resolution_start_0143": result.iterations[0]["resolution_0143"],
            "resolution_0143": result.resolution,
            "resolution_05": result.fsc.resolution_05,
            "best_iteration": result.best_iteration,
            "stop_reason": result.stop_reason,
            "chance_resolution_0143": result.chance_resolution,
            "at_chance": bool(result.chance_reasons),
            "chance_reasons": result.chance_reasons,
            "pose_change_from_input_median_deg": None if change is None else float(change.median()),
            "origin_change_from_input_median_angstrom": None if moved is None else float(moved.median()),
            "map_vs_reference_0143": best.get("map_vs_reference_0143"),
            "iterations": result.iterations,
            "seconds": time.perf_counter() - t0,
            "device": str(device),
        }
        write_json_atomic(out / "summary.json", summary)
        discard(out / STORE)
    return summary
