"""``cryopose align-maps``: align 3-D maps to a reference and carry particle poses along."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cryopose.cli.common import device_option, ensure_out_dir, resolve_device
from typing import Any, Callable

import numpy as np
import torch

from cryopose.align.map_alignment import (
    MapAlignment,
    align_map,
    apply_transform,
    resample_to_grid,
    transform_poses,
)
from cryopose.errors import UserError
from cryopose.imaging.filters import lowpass_volume, soft_spherical_mask
from cryopose.io.plots import plot_fsc_curves, save_figure


def _existing(paths, what: str) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"{what} {p} does not exist; check the path")


@click.command("align-maps")
@click.argument("maps", metavar="MAP [MAP ...]", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ref", "reference", required=True, type=click.Path(path_type=Path), help="Reference map (MRC).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--ref-mask", type=click.Path(path_type=Path), default=None, help="Mask of the reference.")
@click.option("--mask", "masks", multiple=True, type=click.Path(path_type=Path),
              help="Mask of the maps: once (for all maps) or once per MAP, in order.")
@click.option("--apply-mask/--no-apply-mask", default=True, show_default=True,
              help="Mask reference and maps before aligning (off: the reference stays unmasked).")
@click.option("--lowpass", type=float, default=None,
              help="Low-pass (A) applied after masking, before alignment [default: max(8, 3 x pixel size)].")
@click.option("--max-shift", type=float, default=None, help="Largest shift searched (A) [default: a quarter of the box].")
@click.option("--max-angle", type=float, default=180.0, show_default=True,
              help="Largest rotation searched (deg); 180 searches all rotations.")
@click.option("--check-hands/--no-check-hands", default=True, show_default=True,
              help="Also try the z-flipped map and keep the better hand.")
@click.option("--particles", multiple=True, type=click.Path(path_type=Path),
              help="STAR file of the particles of a MAP, once per MAP in order; poses follow the map.")
@click.option("--group", "groups", multiple=True, metavar="'MAP MAP ...'",
              help="Maps sharing one transform, quoted and space- (or comma-) separated: the first is "
                   "aligned, the others (sharpened, half maps) are moved with it. Repeatable.")
@device_option
def command(maps, reference, out_dir, ref_mask, masks, apply_mask, lowpass, max_shift, max_angle,
            check_hands, particles, groups, device) -> None:
    """Align each MAP to the reference (--ref) and write aligned maps, masks, particles,
    transforms.json, difference and FSC plots into --out."""
    dev = resolve_device(device)
    group_lists = [[Path(p) for p in shlex.split(g.replace(",", " "))] for g in groups]
    _existing([reference], "reference")
    _existing(maps, "map")
    _existing([p for g in group_lists for p in g], "group map")
    _existing(masks, "mask")
    _existing(particles, "particle file")
    if ref_mask is not None:
        _existing([ref_mask], "reference mask")
    if lowpass is not None and lowpass <= 0:
        raise UserError(f"--lowpass must be positive, got {lowpass}")
    if max_shift is not None and max_shift < 0:
        raise UserError(f"--max-shift must be >= 0, got {max_shift}")
    if not 0 <= max_angle <= 180:
        raise UserError(f"--max-angle must be between 0 and 180 deg, got {max_angle}")
    out = ensure_out_dir(out_dir)
    entries = run_align_maps(
        reference, list(maps), out, ref_mask=ref_mask, masks=list(masks), apply_mask=apply_mask,
        lowpass=lowpass, max_shift=max_shift, max_angle=max_angle, check_hands=check_hands,
        particles=list(particles), groups=group_lists, device=dev, log=click.echo,
    )
    for e in entries:
        click.echo(
            f"{e['map']}: angle {e['angle_deg']:.2f} deg, shift {sum(v * v for v in e['shift_A']) ** 0.5:.2f} A, "
            f"hand flipped {e['hand_flipped']}, FSC0.143 vs reference {e['fsc_resolution_0143']:.1f} A"
        )
    click.echo(f"wrote {out}/transforms.json and the aligned maps")


# ------------------------------------------------------------------ the job on files
# (file reading/writing and plots stay out of cryopose.align; numerics are called from there)
def _map_name(path) -> str:
    from pathlib import Path

    name = Path(path).name
    for ext in (".mrcs", ".mrc", ".map", ".ccp4"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def _unit(vol: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights / weights.sum()
    m = (w * vol).sum()
    sd = torch.sqrt((w * (vol - m) ** 2).sum()).clamp_min(1e-20)
    return (vol - m) / sd


def plot_difference(path, reference: torch.Tensor, aligned: torch.Tensor, pixel_size: float, lowpass: float, title: str) -> None:
    """Central slices (xy, xz, yz) of low-passed reference minus low-passed aligned map,
    each normalised to zero mean and unit s.d. within a sphere of 0.45 N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = reference.shape[-1]
    w = soft_spherical_mask(n, 0.45 * n - 3, 3.0, device=reference.device)
    a = _unit(lowpass_volume(reference.float(), lowpass, pixel_size), w)
    b = _unit(lowpass_volume(aligned.float(), lowpass, pixel_size), w)
    d = (a - b).cpu().numpy()
    c = n // 2
    slices = [("z = centre (xy)", d[c]), ("y = centre (xz)", d[:, c, :]), ("x = centre (yz)", d[:, :, c])]
    lim = max(float(np.abs(d).max()), 1e-6)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (label, img) in zip(axes, slices):
        im = ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="reference - aligned (s.d.)")
    fig.suptitle(f"{title}: difference after low-pass to {lowpass:.1f} A", fontsize=10)
    save_figure(fig, path, dpi=100)


def _format_matrix(m: np.ndarray) -> str:
    return "\n".join("    [" + "  ".join(f"{v:+.6f}" for v in row) + "]" for row in m)


def run_align_maps(
    reference,
    maps: list,
    out_dir,
    ref_mask=None,
    masks: list | None = None,
    apply_mask: bool = True,
    lowpass: float | None = None,
    max_shift: float | None = None,
    max_angle: float = 180.0,
    check_hands: bool = True,
    particles: list | None = None,
    groups: list[list] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    **search_options,
) -> list[dict[str, Any]]:
    """The ``cryopose align-maps`` job on files; returns the entries of transforms.json.

    reference, maps, masks (one for all or one per map), ref_mask and particles (one STAR
    per map, or None) are paths; ``groups`` are lists of paths whose first member is
    aligned (it is added to ``maps`` when absent) and whose other members get the same
    transform. Writes into ``out_dir``: aligned_<name>.mrc (maps, group members, masks),
    particles_<name>.star, transforms.json, difference_<name>.png, fsc.png, align_maps.log.
    """
    from pathlib import Path

    from cryopose.errors import UserError
    from cryopose.io.mrc import read_map, write_map
    from cryopose.io.star import read_star, write_star
    from cryopose.reconstruct.fsc import fourier_shell_correlation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = [Path(m) for m in maps]
    groups = [[Path(g) for g in grp] for grp in (groups or [])]
    masks = [Path(m) for m in (masks or [])]
    particles = [Path(p) for p in (particles or [])]
    if particles and len(particles) != len(maps):
        raise UserError(f"{len(particles)} --particles for {len(maps)} maps; give one STAR file per MAP, in order")
    if masks and len(masks) not in (1, len(maps)):
        raise UserError(f"{len(masks)} --mask for {len(maps)} maps; give one mask for all maps or one per MAP")
    positional = list(maps)
    results: dict[Path, MapAlignment] = {}
    followers: dict[Path, list[Path]] = {}
    member_of: dict[Path, Path] = {}
    for grp in groups:
        if len(grp) < 2:
            raise UserError("a --group needs at least two maps: the one to align, then those that follow it")
        lead = grp[0]
        if lead not in maps:
            maps.append(lead)
        followers.setdefault(lead, []).extend(grp[1:])
        for g in grp[1:]:
            if g in member_of or g in followers:
                raise UserError(f"{g} is in more than one --group; a map can follow only one")
            member_of[g] = lead
    aligned_maps = [m for m in maps if m not in member_of]
    names = [_map_name(p) for p in aligned_maps + list(member_of)] + [_map_name(p) for p in set(masks)]
    if len(set(names)) != len(names):
        raise UserError("two input maps or masks have the same file name; rename them so outputs do not collide")
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(msg)
        if log:
            log(msg)

    ref, apix = read_map(reference)
    if ref.ndim != 3 or len(set(ref.shape)) != 1:
        raise UserError(f"reference {reference} is not a cubic 3-D map; crop or pad it to a cube")
    ref_t = torch.as_tensor(ref, device=device)
    n = ref.shape[-1]
    rmask = None
    if ref_mask is not None:
        rm, rmapix = read_map(ref_mask)
        rmask = torch.as_tensor(rm, device=device)
        if rm.shape != ref.shape or abs(rmapix - apix) > 1e-3 * apix:
            rmask = resample_to_grid(rmask, rmapix, n, apix, device=device).clamp(0, 1)
    resolution = float(lowpass) if lowpass else max(8.0, 3.0 * apix)
    say(f"reference {reference}: {n}^3 voxels, {apix:.4f} A/px; low-pass {resolution:.2f} A; "
        f"max shift {max_shift if max_shift is not None else 0.25 * n * apix:.1f} A; max angle {max_angle:g} deg; "
        f"check hands {check_hands}; apply mask {apply_mask}")
    entries: list[dict[str, Any]] = []
    curves = []
    for i, path in enumerate(maps):
        if path in member_of:
            continue
        vol, mapix = read_map(path)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise UserError(f"{path} is not a cubic 3-D map; crop or pad it to a cube")
        mask_path = None
        if masks:
            mask_path = masks[0] if len(masks) == 1 else (masks[i] if i < len(masks) else None)
        mmask, mmask_apix = (None, None)
        if mask_path is not None:
            mm, mmask_apix = read_map(mask_path)
            mmask = torch.as_tensor(mm, device=device)
            if mm.shape != vol.shape or abs(mmask_apix - mapix) > 1e-3 * mapix:
                mmask = resample_to_grid(mmask, mmask_apix, vol.shape[-1], mapix, device=device).clamp(0, 1)
        say(f"aligning {path} ({vol.shape[-1]}^3, {mapix:.4f} A/px)")
        res = align_map(
            ref_t, vol, apix, mapix, ref_mask=rmask, moving_mask=mmask, apply_mask=apply_mask,
            lowpass=resolution, max_shift=max_shift, max_angle=max_angle, check_hands=check_hands,
            device=device, log=say, **search_options,
        )
        say(f"{_map_name(path)}: rotation M (aligned map V'(y) = V(M y + t)), det {np.linalg.det(res.rotation):+.0f}:\n"
            f"{_format_matrix(res.rotation)}\n    t = [{', '.join(f'{v:+.3f}' for v in res.shift_A)}] A; "
            f"hand flipped: {res.hand_flipped}; angle {res.angle_deg:.3f} deg; score {res.score:.4f}")
        members = [(path, vol, mapix)] + [(g, *read_map(g)) for g in followers.get(path, [])]
        for mpath, mvol, mv_apix in members:
            aligned = apply_transform(mvol, res.rotation, res.shift_A, mv_apix, n, apix, device=device)
            name = _map_name(mpath)
            write_map(out / f"aligned_{name}.mrc", aligned.cpu().numpy().astype(np.float32), apix)
            fsc = fourier_shell_correlation(ref_t.float(), aligned.float(), apix)
            curves.append((name, fsc))
            plot_difference(out / f"difference_{name}.png", ref_t, aligned, apix, resolution, name)
            entry = {"map": str(mpath), **res.to_dict(), "fsc_resolution_0143": float(fsc.resolution_0143)}
            if mpath != path:
                entry["follows"] = str(path)
                entry["score"] = None
            entries.append(entry)
        if mask_path is not None:
            amask = apply_transform(mmask, res.rotation, res.shift_A, mapix, n, apix, oversample=1, device=device)
            write_map(out / f"aligned_{_map_name(mask_path)}.mrc", amask.clamp(0, 1).cpu().numpy().astype(np.float32), apix)
        results[path] = res
    for i, star in enumerate(particles):
        path = positional[i]
        res = results[member_of.get(path, path)]
        ps = read_star(star)
        rots = ps.rotations
        if rots is None:
            raise UserError(f"{star} has no angles (rlnAngleRot/Tilt/Psi); it needs poses to update")
        new_rot, new_sh = transform_poses(rots, ps.shifts_angstrom, res.rotation, res.shift_A)
        write_star(ps.with_poses(rotations=new_rot, shifts_angstrom=new_sh), out / f"particles_{_map_name(path)}.star")
        say(f"updated the poses of {len(ps)} particles from {star} (following {_map_name(path)})")
    plot_fsc_curves(
        [(f"{name} ({res.resolution_0143:.1f} A)", res.frequency.numpy(), res.fsc.numpy()) for name, res in curves],
        out / "fsc.png",
        title="Between-map FSC against the reference (not gold-standard)",
    )
    import json
    import os

    tmp = out / ".transforms.json.tmp"
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, out / "transforms.json")
    (out / "align_maps.log").write_text("\n".join(lines) + "\n")
    return entries
