"""``cryopose simulate``: particle images from a map with known poses, CTF and noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from cryopose.cli.common import device_option, ensure_out_dir, resolve_device, write_json_atomic
from cryopose.errors import UserError
from cryopose.geometry.grids import asymmetric_unit_mask
from cryopose.geometry.rotations import viewing_direction
from cryopose.geometry.symmetry import proper_symmetry_matrices
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import StackWriter, read_map
from cryopose.io.star import read_star, write_star
from cryopose.particles import ParticleSet

CHUNK = 256  # fixed so that the noise, drawn per chunk, does not depend on any option


def prepare_map(volume: np.ndarray, map_apix: float, apix: float | None, box: int | None) -> tuple[torch.Tensor, float]:
    """Resample a map to pixel size ``apix`` (Fourier) and crop/pad it to ``box`` (real space)."""
    vol = torch.from_numpy(volume).double()
    if map_apix <= 0:
        if apix is None:
            raise UserError("the map header has no pixel size; pass --apix")
        map_apix = apix
    out_apix = map_apix if apix is None else apix
    if abs(out_apix - map_apix) > 1e-6 * map_apix:
        n_new = int(round(vol.shape[-1] * map_apix / out_apix))
        vol = fourier_resize_volume(vol, n_new)
        out_apix = map_apix * volume.shape[-1] / n_new
    if box is not None and box != vol.shape[-1]:
        n = vol.shape[-1]
        out = vol.new_zeros((box, box, box))
        src = slice(max(0, n // 2 - box // 2), max(0, n // 2 - box // 2) + min(n, box))
        dst = slice(max(0, box // 2 - n // 2), max(0, box // 2 - n // 2) + min(n, box))
        out[dst, dst, dst] = vol[src, src, src]
        vol = out
    return vol.float(), out_apix


def poses_in_asymmetric_unit(rotations: torch.Tensor, sym: str) -> torch.Tensor:
    """Replace each pose A by the equivalent A·R whose viewing direction lies in the ASU."""
    group = proper_symmetry_matrices(sym, dtype=rotations.dtype)
    if group.shape[0] == 1:
        return rotations
    candidates = rotations[:, None] @ group[None]  # (n, G, 3, 3)
    inside = asymmetric_unit_mask(viewing_direction(candidates).reshape(-1, 3), sym).reshape(candidates.shape[:2])
    pick = torch.where(inside.any(dim=1), inside.float().argmax(dim=1), torch.zeros(len(rotations), dtype=torch.long))
    return candidates[torch.arange(len(rotations)), pick]


def parameters_from_star(star: Path, apix: float | None, use_ctf: bool):
    """Poses, origins (Å) and CTF taken from an existing star file."""
    ps = read_star(star, apix=apix)
    if ps.rotations is None:
        raise UserError(f"{star} has no angles (rlnAngleRot/Tilt/Psi); --from-star needs poses")
    ctf = None
    if use_ctf:
        values = ps.ctf_parameters()
        if values is None:
            raise UserError(f"{star} has no CTF columns (rlnDefocusU ...); add --no-ctf to simulate without CTF")
        ctf = CTFParameters.from_mapping(values, dtype=torch.float64)
    return ps, torch.from_numpy(ps.rotations), torch.from_numpy(ps.shifts_angstrom), ctf


@click.command("simulate")
@click.option("--map", "map_path", required=True, type=click.Path(path_type=Path), help="Map to project (MRC).")
@click.option("--n", "n", type=int, help="Number of particles (not with --from-star).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--snr",
    type=float,
    default=0.1,
    show_default=True,
    help="Signal-to-noise ratio: variance of the noise-free, CTF-affected projection inside the "
    "particle mask over the noise variance, per image. 'inf' means no noise.",
)
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="Apply a CTF (RELION's model).")
@click.option("--defocus", nargs=2, type=float, default=(1.0, 2.5), show_default=True, help="Defocus range MIN MAX in µm (underfocus).")
@click.option("--max-shift", type=float, default=0.0, show_default=True, help="Largest origin offset in Å (uniform in a disc).")
@click.option("--apix", type=float, help="Pixel size of the particles in Å (the map is resampled to it).")
@click.option("--box", type=int, help="Particle box in px (the map is cropped or padded to it).")
@click.option("--sym", default="C1", show_default=True, help="Symmetry: poses are drawn in its asymmetric unit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--from-star", type=click.Path(path_type=Path), help="Take poses, origins and CTF from this star instead of drawing them.")
@click.option("--particle-diameter", type=float, help="Diameter (Å) of the particle mask used for the SNR (default 0.8 of the box).")
@click.option("--voltage", type=float, default=300.0, show_default=True, help="kV.")
@click.option("--cs", type=float, default=2.7, show_default=True, help="Spherical aberration (mm).")
@click.option("--amplitude-contrast", type=float, default=0.1, show_default=True)
@device_option
def command(map_path, n, out, snr, ctf, defocus, max_shift, apix, box, sym, seed, from_star, particle_diameter, voltage, cs, amplitude_contrast, device):
    """Simulate particles from a map; the poses in DIR/particles.star are the ground truth.

    Writes DIR/particles.star (RELION 3.1, optics block) and DIR/particles.mrcs.

    Example: cryopose simulate --map map.mrc --n 2000 --snr 0.05 --max-shift 10 --out sim
    """
    dev = resolve_device(device)
    if snr <= 0 or math.isnan(snr):
        raise UserError(f"--snr must be positive (or inf for no noise), got {snr}")
    if from_star is None and (n is None or n <= 0):
        raise UserError("give the number of particles with --n N (a positive integer), or --from-star STAR")
    if defocus[0] <= 0 or defocus[1] < defocus[0]:
        raise UserError(f"--defocus needs 0 < MIN <= MAX in µm, got {defocus[0]} {defocus[1]}")
    volume, map_apix = read_map(map_path)
    generator = torch.Generator().manual_seed(seed)
    template = None
    if from_star is not None:
        template, rotations, shifts_a, ctf_params = parameters_from_star(from_star, apix, ctf)
        star_apix = float(np.median(template.pixel_size))
        apix = star_apix
        box = box or template.image_size
        n = len(template)
    vol, pixel_size = prepare_map(volume, map_apix, apix, box)
    if from_star is None:
        draw = draw_simulation_parameters(
            n, generator, max_shift, tuple(defocus) if ctf else None,
            voltage=voltage, spherical_aberration=cs, amplitude_contrast=amplitude_contrast,
        )
        rotations = poses_in_asymmetric_unit(draw.rotations, sym)
        shifts_a, ctf_params = draw.shifts_angstrom, draw.ctf
    size = vol.shape[-1]
    out = ensure_out_dir(out)
    fv = fourier_volume(vol.to(dev))
    mask_radius = None if particle_diameter is None else particle_diameter / 2 / pixel_size
    shifts_px = shifts_a / pixel_size
    progress_file = out / ".simulate_progress.json"
    signature = {"map": str(Path(map_path).resolve()), "n": n, "seed": seed, "snr": repr(snr), "ctf": ctf,
                 "defocus": list(defocus), "max_shift": max_shift, "apix": pixel_size, "box": size, "sym": sym,
                 "from_star": str(from_star), "mask": repr(mask_radius)}
    with StackWriter(out / "particles.mrcs", n, (size, size), pixel_size, resumable=True) as writer:
        done = 0
        if writer.resumed and progress_file.exists():
            state = json.loads(progress_file.read_text())
            if state.get("signature") == signature:
                done = int(state["done_chunks"])
                click.echo(f"Resuming: {min(done * CHUNK, n)} of {n} particles already simulated")
        n_chunks = -(-n // CHUNK)
        for chunk in tqdm(range(done, n_chunks), desc="simulate", unit="chunk", leave=False, initial=done, total=n_chunks):
            start = chunk * CHUNK
            sl = slice(start, min(start + CHUNK, n))
            c = None if ctf_params is None else ctf_params[sl].to(dev)
            if c is not None:
                c = CTFParameters(**{k: v.float() for k, v in vars(c).items()})
            images = clean_particle_images(fv, rotations[sl].float().to(dev), shifts_px[sl].float().to(dev), c, pixel_size)
            noise_gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk + 1)
            images = add_noise(images, snr, noise_gen, mask_radius)
            writer.write(start, images.cpu().numpy())
            write_json_atomic(progress_file, {"signature": signature, "done_chunks": chunk + 1})
    progress_file.unlink(missing_ok=True)
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
    ctf_dict = None
    if ctf_params is not None:
        ctf_dict = {k: v.numpy() for k, v in vars(ctf_params).items()}
        for key in ("voltage", "spherical_aberration", "amplitude_contrast"):
            ctf_dict[key] = float(ctf_dict[key][0])
    extra = {}
    if template is not None:
        skip = set(template.optics.columns) if template.optics is not None else set()
        skip |= {"rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                 "rlnOriginX", "rlnOriginY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                 "rlnCtfBfactor", "rlnCtfScalefactor", "rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize", "rlnDetectorPixelSize", "rlnMagnification"}
        extra = {c: template.table[c].to_numpy() for c in template.table.columns if c not in skip}
    ps = ParticleSet.from_arrays(rotations.double().numpy(), shifts_a.double().numpy(), pixel_size, size, names, ctf_dict, extra)
    write_star(ps, out / "particles.star")
    click.echo(
        f"Simulated {n} particles ({size} px, {pixel_size:.3f} A/px, SNR {snr:g}, CTF {'on' if ctf_params is not None else 'off'}) "
        f"-> {out}/particles.star, {out}/particles.mrcs"
    )
