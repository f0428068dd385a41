"""The reconstruct job: gold-standard half maps and the full map from posed particles.

:func:`reconstruct_halves` inserts the particles of each half set into its own Fourier
accumulator, chunk by chunk, checkpointing the running sums and the chunks they hold;
:func:`run_reconstruct` is the job on files behind ``cryopose reconstruct`` (map.mrc,
half1.mrc, half2.mrc, fsc.csv, fsc.png, summary.json). An interrupted run resumes from its
checkpoint when the inputs and every setting are unchanged, and restarts (saying why)
otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.geometry.symmetry import Symmetry, symmetry_matrices
from cryopose.imaging.ctf import CTFParameters
from cryopose.io import read_particles
from cryopose.io.atomic import write_json_atomic
from cryopose.io.checkpoints import Checkpoint, file_identity
from cryopose.io.mrc import ParticleImages, write_map
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_fsc_curves, write_fsc_csv
from cryopose.jobs.chunks import ChunkWork, pending_ranges
from cryopose.jobs.inputs import half_set_labels, particle_pixel_size, require_reconstruction_memory
from cryopose.particles import ParticleTensors
from cryopose.reconstruct.backproject import FourierAccumulator, finalise_reconstruction, insert_images
from cryopose.reconstruct.fsc import fourier_shell_correlation

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.executor import DaskExecutor

__all__ = ["ReconstructSettings", "reconstruct_halves", "run_reconstruct", "task_size"]

log = logging.getLogger("cryopose")

CHECKPOINT = ".reconstruct_checkpoint.pt"
CHECKPOINT_SECONDS = 30.0


@dataclass
class ReconstructSettings:
    """symmetry: RELION group name (a str becomes a ``Symmetry``: UserError for an unknown
    name); ctf: CTF-weighted insertion; seed: of the random half-set split when the particles
    have no rlnRandomSubset; chunk_size: particles read and inserted at a time (the maps do
    not depend on it)."""

    symmetry: str = "C1"
    ctf: bool = True
    seed: int = 0
    chunk_size: int = 256

    def __post_init__(self) -> None:
        self.symmetry = Symmetry(self.symmetry)


@dataclass
class _InsertShared:
    """What every chunk of a reconstruction needs (sent once to each Dask worker)."""

    box: int
    pixel_size: float
    symmetry: torch.Tensor
    chunk_size: int
    device: str


def _insert_range(
    accs: list[FourierAccumulator],
    images: np.ndarray,
    rows: ParticleTensors,
    halves: np.ndarray,
    pixel_size: float,
    symmetry: torch.Tensor,
    ctf: CTFParameters | None,
) -> None:
    """Insert the particles of one chunk (their images (k, N, N), ``rows`` of poses and
    half sets) into the accumulator of their half."""
    device = accs[0].sums.device
    batch = torch.from_numpy(images).to(device)
    assert rows.rotations is not None  # reconstruct_halves checked that the particles have poses
    rotations = rows.rotations.float()
    shifts_px = (rows.shifts_angstrom / pixel_size).float()
    for h in (1, 2):
        sel = torch.from_numpy(np.nonzero(halves == h)[0])
        if len(sel) == 0:
            continue
        insert_images(
            accs[h - 1],
            batch[sel.to(device)],
            rotations[sel].to(device),
            shifts_px[sel].to(device),
            None if ctf is None else ctf[sel].to(device),
            pixel_size,
            symmetry,
        )


def _insert_part(shared: _InsertShared, part: tuple) -> torch.Tensor:
    """Fourier sums (2, rows, 3) of half 1 and half 2 for one task's particles (a Dask
    task; ``part`` is (image source, ParticleTensors rows, half sets, CTF or None)),
    inserted ``chunk_size`` at a time."""
    images, rows, halves, ctf = part
    device = torch.device(shared.device)
    accs = [FourierAccumulator.zeros(shared.box, device=device) for _ in range(2)]
    symmetry = shared.symmetry.to(device)
    try:
        for lo in range(0, len(halves), shared.chunk_size):
            sl = np.arange(lo, min(lo + shared.chunk_size, len(halves)))
            _insert_range(
                accs,
                images.read(sl),
                rows[sl],
                halves[sl],
                shared.pixel_size,
                symmetry,
                None if ctf is None else ctf[torch.from_numpy(sl)],
            )
    finally:
        images.close()
    return torch.stack([accs[0].sums, accs[1].sums]).cpu()


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def task_size(n: int, chunk_size: int, n_workers: int, per_worker: int = 4, most: int = 16) -> int:
    """Particles per Dask task of a reconstruction. Each task returns whole Fourier sums
    (2 halves x (2N)^3 x 3 float32: 50 MB at 64 px, 400 MB at 128 px), so tasks are large:
    about ``per_worker`` per worker, but at most ``most`` chunks (so that workers that join
    later still find work) and at least one chunk."""
    return max(chunk_size, min(-(-n // max(1, n_workers * per_worker)), most * chunk_size))


def reconstruct_halves(
    tensors: ParticleTensors,
    images,
    halves: np.ndarray,
    pixel_size: float,
    settings: ReconstructSettings,
    device: torch.device | str = "cpu",
    checkpoint: Checkpoint | None = None,
    progress: Callable[[int, int], None] | None = None,
    executor: DaskExecutor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half maps and full map (N, N, N) from particles with poses (``tensors``), images
    from ``images.read``, half set 1/2 per particle. Resumes from ``checkpoint`` if it
    matches the run, and saves it every ``CHECKPOINT_SECONDS``.

    With an ``executor`` the particles are inserted on its Dask cluster: each task returns
    the Fourier sums of its particles (numerator and CTF² per half, not images), the sums
    are added in a tree on the workers, and partial sums come back to be checkpointed
    every ``CHECKPOINT_SECONDS`` (the same checkpoint as here, so either path resumes the
    other's run). The maps equal the single-process ones to float rounding."""
    device = torch.device(device)
    if tensors.rotations is None:
        raise UserError("the particles have no angles (rlnAngleRot/Tilt/Psi); reconstruction needs poses")
    ctf_all = None
    if settings.ctf:
        if tensors.ctf is None:
            raise UserError(
                "the particles have no CTF columns (rlnDefocusU ...); reconstruct without CTF", option="no-ctf"
            )
        ctf_all = tensors.ctf.to(dtype=torch.float32)
    n = len(tensors)
    box = images.image_shape[0]
    symmetry = symmetry_matrices(settings.symmetry, dtype=torch.float32, device=device)
    accs = [FourierAccumulator.zeros(box, device=device) for _ in range(2)]
    done: list[tuple[int, int]] = []
    state = checkpoint.load(map_location=device) if checkpoint is not None else None
    if checkpoint is not None and state is not None:
        accs[0].sums.copy_(state["sums1"])
        accs[1].sums.copy_(state["sums2"])
        done = [tuple(r) for r in state["done"]]
        held = sum(b - a for a, b in done)
        log.info("resuming from %s: %d of %d particles already inserted", checkpoint.path.name, held, n)
        if progress is not None:
            progress(held, n)

    def save(checkpoint: Checkpoint) -> None:
        checkpoint.save({"sums1": accs[0].sums.cpu(), "sums2": accs[1].sums.cpu(), "done": done})

    last_save = time.monotonic()
    if executor is None:
        for lo, hi in pending_ranges(n, settings.chunk_size, done):
            idx = np.arange(lo, hi)
            _insert_range(
                accs,
                images.read(idx),
                tensors[idx],
                halves[idx],
                pixel_size,
                symmetry,
                None if ctf_all is None else ctf_all[torch.from_numpy(idx)],
            )
            done.append((lo, hi))
            if progress is not None:
                progress(hi - lo, n)
            if checkpoint is not None and time.monotonic() - last_save > CHECKPOINT_SECONDS and hi < n:
                save(checkpoint)
                last_save = time.monotonic()
    else:
        shared = _InsertShared(box, pixel_size, symmetry.cpu(), settings.chunk_size, str(device))

        def part(idx: np.ndarray) -> tuple:
            return (
                images.take(idx),
                tensors[idx],
                halves[idx],
                None if ctf_all is None else ctf_all[torch.from_numpy(idx)],
            )

        size = task_size(n - sum(b - a for a, b in done), settings.chunk_size, executor.n_workers)
        on_chunk = None if progress is None else (lambda r: progress(r[1] - r[0], n))
        flush = CHECKPOINT_SECONDS if checkpoint is not None else None
        partials = executor.map_reduce(
            ChunkWork(_insert_part, shared, part), pending_ranges(n, size, done), _add, flush, on_chunk
        )
        try:
            for covered, sums in partials:
                accs[0].sums += sums[0].to(device)
                accs[1].sums += sums[1].to(device)
                done.extend(covered)
                if checkpoint is not None and sum(b - a for a, b in done) < n:
                    save(checkpoint)
        finally:
            partials.close()
        coverage = np.zeros(n, dtype=np.int64)
        for a, b in done:
            coverage[a:b] += 1
        if not np.all(coverage == 1):  # every particle inserted exactly once, whatever failed and was redone
            raise RuntimeError(f"reconstruction covered particles {np.unique(coverage).tolist()} times; this is a bug")
    half1 = finalise_reconstruction(accs[0])
    half2 = finalise_reconstruction(accs[1])
    accs[0].add(accs[1])
    full = finalise_reconstruction(accs[0])
    return half1, half2, full


OUTPUTS = ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "summary.json")


def run_reconstruct(
    particles: Path,
    out: Path,
    settings: ReconstructSettings | None = None,
    apix: float | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: DaskExecutor | None = None,
) -> dict:
    """The ``cryopose reconstruct`` job on files; returns the summary (out/summary.json).

    Inputs and the output folder are checked before any work (``io.outputs``); files in
    ``out`` that cryopose did not write are replaced only with ``force``. With an
    ``executor`` the insertion runs on its Dask cluster (see :func:`reconstruct_halves`)."""
    settings = settings or ReconstructSettings()
    out = Path(out)
    t0 = time.perf_counter()
    ps = read_particles(particles, apix=apix)
    if len(ps) == 0:
        raise UserError(f"{particles} has no particles; nothing to reconstruct")
    tensors = ps.to_tensors(ctf=settings.ctf)
    if tensors.rotations is None:
        raise UserError(f"{particles} has no angles (rlnAngleRot/Tilt/Psi); reconstruction needs poses")
    pixel_size = particle_pixel_size(ps)
    images = ParticleImages(ps)
    halves, drawn = half_set_labels(ps, settings.seed)
    for h in (1, 2):
        if not np.any(halves == h):
            raise UserError(
                f"half set {h} of {particles} is empty (rlnRandomSubset); give both halves particles "
                "or drop the column to split at random"
            )
    box = images.image_shape[0]
    require_reconstruction_memory(box, device)
    signature = {"particles": file_identity(particles), "apix": apix, **asdict(settings)}
    signature.pop("chunk_size")
    with output_folder(out, inputs=[particles, *images.paths], outputs=OUTPUTS, force=force):
        checkpoint = Checkpoint(out / CHECKPOINT, signature)
        half1, half2, full = reconstruct_halves(
            tensors, images, halves, pixel_size, settings, device, checkpoint, progress, executor
        )
        elapsed = time.perf_counter() - t0
        for name, vol in (("map.mrc", full), ("half1.mrc", half1), ("half2.mrc", half2)):
            write_map(out / name, vol.cpu().numpy(), pixel_size)
        result = fourier_shell_correlation(half1, half2, pixel_size)
        write_fsc_csv(out / "fsc.csv", result.frequency, result.fsc)
        plot_fsc_curves(
            [("half1 vs half2", result.frequency.numpy(), result.fsc.numpy())],
            out / "fsc.png",
            title=f"Half-map FSC ({len(ps)} particles, {settings.symmetry})",
        )
        summary = {
            "particles": str(particles),
            "n_particles": len(ps),
            "n_half1": int((halves == 1).sum()),
            "n_half2": int((halves == 2).sum()),
            "half_sets_drawn_at_random": drawn,
            "box": int(full.shape[-1]),
            "pixel_size": pixel_size,
            "symmetry": settings.symmetry,
            "ctf": settings.ctf,
            "resolution_0143": result.resolution_0143,
            "resolution_05": result.resolution_05,
            "seconds": elapsed,
            "device": str(device),
        }
        write_json_atomic(out / "summary.json", summary)
        checkpoint.remove()
    return summary
