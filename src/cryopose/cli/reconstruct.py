"""``cryopose reconstruct``: CTF-weighted reconstruction with gold-standard half maps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from cryopose.cli.common import device_option, ensure_out_dir, resolve_device, write_json_atomic
from cryopose.cli.fsc import write_fsc_csv
from cryopose.errors import UserError
from cryopose.geometry.symmetry import symmetry_matrices
from cryopose.imaging.ctf import CTFParameters
from cryopose.io.mrc import ParticleImages, write_map
from cryopose.io.plots import plot_fsc_curves
from cryopose.io.star import read_star
from cryopose.particles import ParticleSet
from cryopose.reconstruct.backproject import FourierAccumulator, finalise_reconstruction, insert_images
from cryopose.reconstruct.fsc import fourier_shell_correlation

CHECKPOINT = ".reconstruct_checkpoint.pt"
CHECKPOINT_SECONDS = 30.0


def single_pixel_size(ps: ParticleSet) -> float:
    """The one pixel size of a particle set (Å); several optics groups must agree."""
    apix = ps.pixel_size
    if np.ptp(apix) > 1e-3 * apix.max():
        raise UserError(
            f"particles have different pixel sizes ({apix.min():.4f}-{apix.max():.4f} A); "
            "reconstruct one optics group at a time or rescale the particles"
        )
    return float(apix[0])


def half_set_labels(ps: ParticleSet, seed: int) -> tuple[np.ndarray, bool]:
    """rlnRandomSubset (1/2) per particle, or a random balanced split when absent."""
    halves = ps.half_sets
    if halves is not None:
        bad = ~np.isin(halves, (1, 2))
        if bad.any():
            raise UserError(f"rlnRandomSubset must be 1 or 2; row {int(np.argmax(bad)) + 1} has {halves[bad][0]}")
        return halves.astype(np.int64), False
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(len(ps)) % 2 == 0, 1, 2)
    rng.shuffle(labels)
    return labels, True


def reconstruct_particles(
    ps: ParticleSet,
    images: ParticleImages,
    device: torch.device,
    use_ctf: bool,
    sym: str,
    halves: np.ndarray,
    chunk_size: int = 256,
    checkpoint: Path | None = None,
    signature: dict | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Half maps and full map from a particle set; resumes from ``checkpoint`` if it matches."""
    pixel_size = single_pixel_size(ps)
    if ps.rotations is None:
        raise UserError("the particles have no angles (rlnAngleRot/Tilt/Psi); reconstruct needs poses")
    ctf_all = None
    if use_ctf:
        values = ps.ctf_parameters()
        if values is None:
            raise UserError("the star has no CTF columns (rlnDefocusU ...); add --no-ctf to reconstruct without CTF")
        ctf_all = CTFParameters.from_mapping(values, dtype=torch.float32)
    box = images.image_shape[0]
    rotations = torch.from_numpy(ps.rotations).float()
    shifts_px = torch.from_numpy(ps.shifts_angstrom / pixel_size).float()
    symmetry = symmetry_matrices(sym, dtype=torch.float32, device=device)
    accs = [FourierAccumulator.zeros(box, device=device) for _ in range(2)]
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device)
        if state.get("signature") == signature:
            accs[0].sums.copy_(state["sums1"])
            accs[1].sums.copy_(state["sums2"])
            start = int(state["next"])
            click.echo(f"Resuming from {checkpoint.name}: {start} of {len(ps)} particles already inserted")
    last_save = time.monotonic()
    bar = tqdm(total=len(ps), initial=start, desc="reconstruct", unit="ptcl", disable=not progress, leave=False)
    for lo in range(start, len(ps), chunk_size):
        idx = np.arange(lo, min(lo + chunk_size, len(ps)))
        batch = torch.from_numpy(images.read(idx)).to(device)
        for h in (1, 2):
            sel = torch.from_numpy(np.nonzero(halves[idx] == h)[0])
            if len(sel) == 0:
                continue
            gidx = torch.from_numpy(idx)[sel]
            insert_images(
                accs[h - 1],
                batch[sel.to(device)],
                rotations[gidx].to(device),
                shifts_px[gidx].to(device),
                None if ctf_all is None else ctf_all[gidx].to(device),
                pixel_size,
                symmetry,
            )
        bar.update(len(idx))
        if checkpoint is not None and time.monotonic() - last_save > CHECKPOINT_SECONDS and idx[-1] + 1 < len(ps):
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            torch.save({"signature": signature, "sums1": accs[0].sums.cpu(), "sums2": accs[1].sums.cpu(), "next": int(idx[-1] + 1)}, tmp)
            os.replace(tmp, checkpoint)
            last_save = time.monotonic()
    bar.close()
    half1 = finalise_reconstruction(accs[0])
    half2 = finalise_reconstruction(accs[1])
    accs[0].add(accs[1])
    full = finalise_reconstruction(accs[0])
    return half1, half2, full, pixel_size


@click.command("reconstruct")
@click.argument("particles", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names: C4, D7, O, I1...).")
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="CTF-weight the insertion (Wiener-like, CTF²).")
@click.option("--apix", type=float, help="Pixel size in Å when the star has none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the half-set split when rlnRandomSubset is absent.")
@click.option("--chunk-size", type=int, default=256, show_default=True, help="Particles read and inserted at a time.")
@device_option
def command(particles: Path, out: Path, sym: str, ctf: bool, apix: float | None, seed: int, chunk_size: int, device: str) -> None:
    """Reconstruct a map from PARTICLES.star with known poses.

    CTF-weighted direct Fourier insertion on a 2x padded grid (trilinear), gridding
    correction, weight floor, symmetry, and gold-standard halves from rlnRandomSubset
    (a random split when absent). Writes DIR/map.mrc, half1.mrc, half2.mrc, fsc.csv,
    fsc.png and summary.json. An interrupted run resumes where it stopped.

    Example: cryopose reconstruct sim/particles.star --out rec --sym C1
    """
    dev = resolve_device(device)
    ps = read_star(particles, apix=apix)
    if chunk_size <= 0:
        raise UserError("--chunk-size must be positive")
    symmetry_matrices(sym)  # validate the name before any work
    images = ParticleImages(ps)
    halves, drawn = half_set_labels(ps, seed)
    out = ensure_out_dir(out)
    st = particles.stat()
    signature = {"star": str(particles.resolve()), "mtime": st.st_mtime, "size": st.st_size, "n": len(ps),
                 "sym": sym, "ctf": ctf, "seed": seed, "chunk": chunk_size}
    checkpoint = out / CHECKPOINT
    t0 = time.perf_counter()
    half1, half2, full, pixel_size = reconstruct_particles(
        ps, images, dev, ctf, sym, halves, chunk_size, checkpoint, signature
    )
    elapsed = time.perf_counter() - t0
    for name, vol in (("map.mrc", full), ("half1.mrc", half1), ("half2.mrc", half2)):
        write_map(out / name, vol.cpu().numpy(), pixel_size)
    result = fourier_shell_correlation(half1, half2, pixel_size)
    write_fsc_csv(out / "fsc.csv", result.frequency, result.fsc, pixel_size)
    plot_fsc_curves([("half1 vs half2", result.frequency.numpy(), result.fsc.numpy())], out / "fsc.png",
                    title=f"Half-map FSC ({len(ps)} particles, {sym})")
    summary = {
        "particles": str(particles),
        "n_particles": len(ps),
        "n_half1": int((halves == 1).sum()),
        "n_half2": int((halves == 2).sum()),
        "half_sets_drawn_at_random": drawn,
        "box": int(full.shape[-1]),
        "pixel_size": pixel_size,
        "symmetry": sym,
        "ctf": ctf,
        "resolution_0143": result.resolution_0143,
        "resolution_05": result.resolution_05,
        "seconds": elapsed,
        "device": str(dev),
    }
    write_json_atomic(out / "summary.json", summary)
    if checkpoint.exists():
        checkpoint.unlink()
    click.echo(
        f"Reconstructed {len(ps)} particles in {elapsed:.1f} s: half-map FSC {result.resolution_0143:.2f} A at 0.143, "
        f"{result.resolution_05:.2f} A at 0.5 -> {out}/map.mrc"
    )
