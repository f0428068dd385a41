"""The simulate job: particle images of a map with known poses, origins, CTF and noise.

Writes out/particles.star (RELION 3.1, the ground truth) and out/particles.mrcs. Noise is
drawn per fixed block of ``BLOCK`` particles from a generator seeded by (seed, block), so
the bytes depend only on the settings (not on the order the blocks are made in, nor on
where: here or on Dask workers), and an interrupted run resumes from its partial stack.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopose.errors import UserError
from cryopose.geometry.grids import poses_in_asymmetric_unit
from cryopose.geometry.symmetry import Symmetry
from cryopose.imaging.projection import FourierVolume, fourier_volume
from cryopose.imaging.resample import resample_map
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io import read_particles
from cryopose.io.checkpoints import Checkpoint, file_identity
from cryopose.io.mrc import StackWriter, read_map
from cryopose.io.outputs import output_folder
from cryopose.io.star import write_star
from cryopose.jobs.chunks import ChunkWork, torch_threads
from cryopose.jobs.resources import require_memory
from cryopose.particles import ParticleSet

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.executor import DaskExecutor

__all__ = ["SimulateSettings", "run_simulate", "BLOCK"]

log = logging.getLogger("cryopose")

BLOCK = 256  # fixed so that the noise, drawn per block, does not depend on any option
OUTPUTS = ("particles.star", "particles.mrcs")
PROGRESS = ".simulate_progress.pt"

# Columns a --from-star template's values are replaced by (or that belong to its optics).
_REPLACED = {
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnOriginX",
    "rlnOriginY",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnOpticsGroup",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnDetectorPixelSize",
    "rlnMagnification",
}


@dataclass
class SimulateSettings:
    """n particles (ignored with ``from_star``) at ``snr`` (inf: no noise); CTF with defocus
    uniform in ``defocus`` (µm, underfocus) and ``voltage`` kV, ``cs`` mm,
    ``amplitude_contrast``; origins uniform in a disc of ``max_shift`` Å; poses uniform on
    SO(3), moved into the asymmetric unit of ``symmetry`` (a str becomes a ``Symmetry``); the map resampled to ``apix``
    Å/px and cropped/padded to ``box`` px (None: as it is); SNR measured inside a circle of
    ``particle_diameter`` Å (None: 0.8 of the box); ``from_star``: take poses, origins and
    CTF from this star file instead."""

    n: int | None = None
    snr: float = 0.1
    ctf: bool = True
    defocus: tuple[float, float] = (1.0, 2.5)
    max_shift: float = 0.0
    apix: float | None = None
    box: int | None = None
    symmetry: str = "C1"
    seed: int = 0
    from_star: Path | None = None
    particle_diameter: float | None = None
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1

    def __post_init__(self) -> None:
        def bad(what: str, option: str) -> UserError:
            return UserError(what, option=option)

        finite = math.isfinite
        self.symmetry = Symmetry(self.symmetry)
        if self.from_star is None and (self.n is None or int(self.n) < 1):
            raise bad("give the number of particles (a positive integer) or a star file to take poses from", "n")
        if math.isnan(self.snr) or self.snr <= 0:
            raise bad(f"the SNR must be positive (or inf for no noise), got {self.snr}", "snr")
        lo, hi = self.defocus
        if not (finite(lo) and finite(hi) and 0 < lo <= hi):
            raise bad(f"the defocus range needs 0 < MIN <= MAX in µm, got {lo} {hi}", "defocus")
        if not (finite(self.max_shift) and self.max_shift >= 0):
            raise bad(f"the largest origin offset must be a finite number >= 0 Å, got {self.max_shift}", "max-shift")
        if self.apix is not None and not (finite(self.apix) and self.apix > 0):
            raise bad(f"the pixel size must be a positive number of Å, got {self.apix}", "apix")
        if self.box is not None and int(self.box) < 8:
            raise bad(f"a box of {self.box} px is too small; give at least 8 px", "box")
        if self.particle_diameter is not None and not (finite(self.particle_diameter) and self.particle_diameter > 0):
            raise bad(
                f"the particle diameter must be a positive number of Å, got {self.particle_diameter}",
                "particle-diameter",
            )
        if not (finite(self.voltage) and self.voltage > 0):
            raise bad(f"the voltage must be a positive number of kV, got {self.voltage}", "voltage")
        if not (finite(self.cs) and self.cs >= 0):
            raise bad(f"the spherical aberration must be a number >= 0 mm, got {self.cs}", "cs")
        if not (finite(self.amplitude_contrast) and 0 <= self.amplitude_contrast < 1):
            raise bad(f"the amplitude contrast must be in [0, 1), got {self.amplitude_contrast}", "amplitude-contrast")


def _from_star(star: Path, apix: float | None, use_ctf: bool):
    ps = read_particles(star, apix=apix)
    if ps.rotations is None:
        raise UserError(f"{star} has no angles (rlnAngleRot/Tilt/Psi); simulating from a star file needs poses")
    tensors = ps.to_tensors(ctf=use_ctf)
    if use_ctf and tensors.ctf is None:
        raise UserError(f"{star} has no CTF columns (rlnDefocusU ...); simulate without CTF", option="no-ctf")
    return ps, tensors


@dataclass
class _BlockShared:
    """What every block of a simulation needs (sent once to each Dask worker)."""

    volume: FourierVolume
    snr: float
    seed: int
    mask_radius: float | None
    pixel_size: float
    device: str


def _simulate_block(shared: _BlockShared, part: tuple) -> np.ndarray:
    """Images (float32) of one block: ``part`` is (block number, its poses, origins in px,
    CTF or None); the noise comes from a generator seeded by (seed, block) only. One torch
    thread computes it (MKL's FFTs round differently with other thread counts), so the
    bytes do not depend on the machine, nor on the Dask worker that made them."""
    block, rotations, shifts_px, ctf = part
    device = torch.device(shared.device)
    c = None if ctf is None else ctf.to(device)
    with torch_threads(1):
        images = clean_particle_images(shared.volume, rotations.to(device), shifts_px.to(device), c, shared.pixel_size)
        noise_gen = torch.Generator().manual_seed(shared.seed * 1_000_003 + block + 1)
        images = add_noise(images, shared.snr, noise_gen, shared.mask_radius)
    return images.cpu().numpy()


def run_simulate(
    map_path: Path,
    out: Path,
    settings: SimulateSettings,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    executor: DaskExecutor | None = None,
) -> dict:
    """The ``cryopose simulate`` job on files; returns a summary (n, box, pixel size, paths).

    Inputs, settings, the memory needed and the output folder are checked before any work;
    files in ``out`` that cryopose did not write are replaced only with ``force`` and an input
    never is. With an ``executor`` the blocks are computed on its Dask cluster and this
    process writes each into the stack as it arrives (no worker writes the partial stack,
    so no shared file system is needed for the output and the bytes equal a run here)."""
    s = settings
    device = torch.device(device)
    out = Path(out)
    volume, map_apix = read_map(map_path)
    if not np.any(volume):
        raise UserError(f"the map {map_path} is all zeros; give a map with density")
    apix, box = s.apix, s.box
    template = None
    inputs = [Path(map_path)]
    if s.from_star is not None:
        template, tensors = _from_star(s.from_star, apix, s.ctf)
        apix = float(np.median(template.pixel_size))
        box = box or template.image_size
        n = len(template)
        rotations, shifts_a, ctf_params = tensors.rotations, tensors.shifts_angstrom, tensors.ctf
        inputs.append(Path(s.from_star))
        if "rlnImageName" in template.table.columns:
            inputs += sorted(set(template.image_paths.tolist()))
    else:
        assert s.n is not None  # SimulateSettings requires n without from_star
        n = s.n
    if map_apix <= 0:
        if apix is None:
            raise UserError(f"the map {map_path} has no pixel size in its header; give the pixel size", option="apix")
        map_apix = apix
    size = box if box is not None else int(round(volume.shape[-1] * map_apix / (apix or map_apix)))
    resampled = int(round(volume.shape[-1] * map_apix / (apix or map_apix)))
    require_memory(
        24.0 * max(size, resampled) ** 3 * 8,
        f"a {max(size, resampled)}^3 map (the map resampled to {apix or map_apix:g} A/px)",
        "choose a larger pixel size or a smaller box",
        device,
    )
    if size < 8:
        raise UserError(f"a box of {size} px is too small to simulate particles; give at least 8 px", option="box")
    vol, pixel_size = resample_map(torch.from_numpy(volume).double(), map_apix, apix, box)
    vol = vol.float()
    if template is None:
        draw = draw_simulation_parameters(
            n,
            torch.Generator().manual_seed(s.seed),
            s.max_shift,
            (s.defocus[0], s.defocus[1]) if s.ctf else None,
            voltage=s.voltage,
            spherical_aberration=s.cs,
            amplitude_contrast=s.amplitude_contrast,
        )
        rotations = poses_in_asymmetric_unit(draw.rotations, s.symmetry)
        shifts_a, ctf_params = draw.shifts_angstrom, draw.ctf
    size = vol.shape[-1]
    fv = fourier_volume(vol.to(device))
    mask_radius = None if s.particle_diameter is None else s.particle_diameter / 2 / pixel_size
    signature = {
        "map": file_identity(map_path),
        **asdict(s),
        "apix": pixel_size,
        "box": size,
        "n": n,
        "mask": mask_radius,
    }
    with output_folder(out, inputs=inputs, outputs=OUTPUTS, force=force):
        shifts_px = shifts_a / pixel_size
        checkpoint = Checkpoint(out / PROGRESS, signature)
        ctf_float = None if ctf_params is None else ctf_params.to(dtype=torch.float32)
        shared = _BlockShared(fv, s.snr, s.seed, mask_radius, pixel_size, str(device))
        blocks = -(-n // BLOCK)

        def part(block: int) -> tuple:
            sl = slice(block * BLOCK, min((block + 1) * BLOCK, n))
            return block, rotations[sl].float(), shifts_px[sl].float(), None if ctf_float is None else ctf_float[sl]

        with StackWriter(out / "particles.mrcs", n, (size, size), pixel_size, resumable=True) as writer:
            state = checkpoint.load() if writer.resumed else None
            done: set[int] = set()
            if state is not None:
                done = (
                    set(range(int(state["done_blocks"]))) if "done_blocks" in state else {int(b) for b in state["done"]}
                )
                held = sum(min((b + 1) * BLOCK, n) - b * BLOCK for b in done)
                log.info("resuming: %d of %d particles already simulated", held, n)
                if progress is not None:
                    progress(held, n)
            todo = [b for b in range(blocks) if b not in done]
            results: Generator[tuple[tuple[int, int], np.ndarray], None, None]
            if executor is None:
                results = (((b, b + 1), _simulate_block(shared, part(b))) for b in todo)
            else:  # workers compute, this process writes: one writer of the stack, same bytes
                work = ChunkWork(_simulate_block, shared, lambda idx: part(int(idx[0])))
                results = executor.map(work, [(b, b + 1) for b in todo])
            try:
                for (block, _), images in results:
                    writer.write(block * BLOCK, images)
                    done.add(block)
                    checkpoint.save({"done": sorted(done)})
                    if progress is not None:
                        progress(len(images), n)
            finally:
                results.close()
        checkpoint.remove()
        names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
        ctf_dict = None
        if ctf_params is not None:
            ctf_dict = {k: v.numpy() for k, v in vars(ctf_params).items()}
            for key in ("voltage", "spherical_aberration", "amplitude_contrast"):
                ctf_dict[key] = float(ctf_dict[key][0])
        extra = {}
        if template is not None:
            skip = (set(template.optics.columns) if template.optics is not None else set()) | _REPLACED
            extra = {c: template.table[c].to_numpy() for c in template.table.columns if c not in skip}
        ps = ParticleSet.from_arrays(
            rotations.double().numpy(), shifts_a.double().numpy(), pixel_size, size, names, ctf_dict, extra
        )
        write_star(ps, out / "particles.star")
    return {
        "n_particles": n,
        "box": size,
        "pixel_size": pixel_size,
        "snr": s.snr,
        "ctf": ctf_params is not None,
        "star": str(out / "particles.star"),
        "stack": str(out / "particles.mrcs"),
    }
