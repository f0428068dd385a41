"""The align-maps job: align maps to a reference on files and carry particle poses along.

Writes into the output folder: aligned_<name>.mrc (maps, group members, masks, on the
reference grid), particles_<name>.star (poses and origins that follow their map),
transforms.json (M and t with V'(y) = V(M y + t), y and t in Å about the box centres),
difference_<name>.png, fsc.png and align_maps.log.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose.align.map_alignment import (
    MapAlignment,
    MapAlignmentSettings,
    align_map,
    apply_transform,
    resample_to_grid,
    transform_poses,
)
from cryopose.errors import UserError
from cryopose.imaging.filters import lowpass_volume, soft_spherical_mask
from cryopose.imaging.statistics import standardise
from cryopose.io.atomic import write_json_atomic, write_text_atomic
from cryopose.io.mrc import read_map, write_map
from cryopose.io.plots import plot_difference_slices, plot_fsc_curves
from cryopose.io.star import read_star, write_star
from cryopose.reconstruct.fsc import fourier_shell_correlation

__all__ = ["map_name", "run_align_maps"]

log = logging.getLogger("cryopose")


def map_name(path: str | Path) -> str:
    """A map's file name without its MRC extension (.mrc, .mrcs, .map, .ccp4)."""
    name = Path(path).name
    for ext in (".mrcs", ".mrc", ".map", ".ccp4"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def _difference(reference: torch.Tensor, aligned: torch.Tensor, pixel_size: float, lowpass: float) -> np.ndarray:
    """Low-passed reference minus low-passed aligned map, each standardised within a
    sphere of 0.45 N."""
    n = reference.shape[-1]
    w = soft_spherical_mask(n, 0.45 * n - 3, 3.0, device=reference.device)
    a = standardise(lowpass_volume(reference.float(), lowpass, pixel_size), w)
    b = standardise(lowpass_volume(aligned.float(), lowpass, pixel_size), w)
    return (a - b).cpu().numpy()


def _format_matrix(m: np.ndarray) -> str:
    return "\n".join("    [" + "  ".join(f"{v:+.6f}" for v in row) + "]" for row in m)


def run_align_maps(
    reference: Path,
    maps: list[Path],
    out_dir: Path,
    settings: MapAlignmentSettings | None = None,
    ref_mask: Path | None = None,
    masks: list[Path] | None = None,
    particles: list[Path] | None = None,
    groups: list[list[Path]] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Align ``maps`` to ``reference`` (files) and write the outputs into ``out_dir``;
    returns the entries of transforms.json.

    ``masks``: one for all maps or one per map; ``particles``: one STAR per map (its poses
    follow the map); ``groups``: lists of maps whose first member is aligned (added to
    ``maps`` when absent) and whose other members get the same transform.
    """
    settings = settings or MapAlignmentSettings()
    out = Path(out_dir)
    maps = [Path(m) for m in maps]
    groups = [[Path(g) for g in grp] for grp in (groups or [])]
    masks = [Path(m) for m in (masks or [])]
    particles = [Path(p) for p in (particles or [])]
    if particles and len(particles) != len(maps):
        raise UserError(f"{len(particles)} particle files for {len(maps)} maps; give one STAR file per map, in order")
    if masks and len(masks) not in (1, len(maps)):
        raise UserError(f"{len(masks)} masks for {len(maps)} maps; give one mask for all maps or one per map")
    positional = list(maps)
    results: dict[Path, MapAlignment] = {}
    followers: dict[Path, list[Path]] = {}
    member_of: dict[Path, Path] = {}
    for grp in groups:
        if len(grp) < 2:
            raise UserError("a group needs at least two maps: the one to align, then those that follow it")
        lead = grp[0]
        if lead not in maps:
            maps.append(lead)
        followers.setdefault(lead, []).extend(grp[1:])
        for g in grp[1:]:
            if g in member_of or g in followers:
                raise UserError(f"{g} is in more than one group; a map can follow only one")
            member_of[g] = lead
    aligned_maps = [m for m in maps if m not in member_of]
    names = [map_name(p) for p in aligned_maps + list(member_of)] + [map_name(p) for p in set(masks)]
    if len(set(names)) != len(names):
        raise UserError("two input maps or masks have the same file name; rename them so outputs do not collide")
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(msg)
        log.info(msg)

    ref, apix = read_map(reference)
    ref_t = torch.as_tensor(ref, device=device)
    n = ref.shape[-1]
    rmask = None
    if ref_mask is not None:
        rm, rmapix = read_map(ref_mask)
        rmask = torch.as_tensor(rm, device=device)
        if rm.shape != ref.shape or abs(rmapix - apix) > 1e-3 * apix:
            rmask = resample_to_grid(rmask, rmapix, n, apix, device=device).clamp(0, 1)
    resolution = settings.resolution(apix)
    say(f"reference {reference}: {n}^3 voxels, {apix:.4f} A/px; low-pass {resolution:.2f} A; "
        f"max shift {settings.max_shift if settings.max_shift is not None else 0.25 * n * apix:.1f} A; "
        f"max angle {settings.max_angle:g} deg; check hands {settings.check_hands}; apply mask {settings.apply_mask}")
    entries: list[dict[str, Any]] = []
    curves = []
    for i, path in enumerate(maps):
        if path in member_of:
            continue
        vol, mapix = read_map(path)
        mask_path = None
        if masks:
            mask_path = masks[0] if len(masks) == 1 else (masks[i] if i < len(masks) else None)
        mmask = None
        if mask_path is not None:
            mm, mmask_apix = read_map(mask_path)
            mmask = torch.as_tensor(mm, device=device)
            if mm.shape != vol.shape or abs(mmask_apix - mapix) > 1e-3 * mapix:
                mmask = resample_to_grid(mmask, mmask_apix, vol.shape[-1], mapix, device=device).clamp(0, 1)
        say(f"aligning {path} ({vol.shape[-1]}^3, {mapix:.4f} A/px)")
        res = align_map(ref_t, vol, apix, mapix, ref_mask=rmask, moving_mask=mmask, settings=settings, device=device, log=say)
        say(f"{map_name(path)}: rotation M (aligned map V'(y) = V(M y + t)), det {np.linalg.det(res.rotation):+.0f}:\n"
            f"{_format_matrix(res.rotation)}\n    t = [{', '.join(f'{v:+.3f}' for v in res.shift_A)}] A; "
            f"hand flipped: {res.hand_flipped}; angle {res.angle_deg:.3f} deg; score {res.score:.4f}")
        members = [(path, vol, mapix)] + [(g, *read_map(g)) for g in followers.get(path, [])]
        for mpath, mvol, mv_apix in members:
            aligned = apply_transform(mvol, res.rotation, res.shift_A, mv_apix, n, apix, device=device)
            name = map_name(mpath)
            write_map(out / f"aligned_{name}.mrc", aligned.cpu().numpy().astype(np.float32), apix)
            fsc = fourier_shell_correlation(ref_t.float(), aligned.float(), apix)
            curves.append((name, fsc))
            plot_difference_slices(_difference(ref_t, aligned, apix, resolution), out / f"difference_{name}.png",
                                   f"{name}: difference after low-pass to {resolution:.1f} A")
            entry = {"map": str(mpath), **res.to_dict(), "fsc_resolution_0143": float(fsc.resolution_0143)}
            if mpath != path:
                entry["follows"] = str(path)
                entry["score"] = None
            entries.append(entry)
        if mask_path is not None:
            amask = apply_transform(mmask, res.rotation, res.shift_A, mapix, n, apix, oversample=1, device=device)
            write_map(out / f"aligned_{map_name(mask_path)}.mrc", amask.clamp(0, 1).cpu().numpy().astype(np.float32), apix)
        results[path] = res
    for i, star in enumerate(particles):
        path = positional[i]
        res = results[member_of.get(path, path)]
        ps = read_star(star)
        rots = ps.rotations
        if rots is None:
            raise UserError(f"{star} has no angles (rlnAngleRot/Tilt/Psi); it needs poses to update")
        new_rot, new_sh = transform_poses(rots, ps.shifts_angstrom, res.rotation, res.shift_A)
        write_star(ps.with_poses(rotations=new_rot, shifts_angstrom=new_sh), out / f"particles_{map_name(path)}.star")
        say(f"updated the poses of {len(ps)} particles from {star} (following {map_name(path)})")
    plot_fsc_curves(
        [(f"{name} ({r.resolution_0143:.1f} A)", r.frequency.numpy(), r.fsc.numpy()) for name, r in curves],
        out / "fsc.png",
        title="Between-map FSC against the reference (not gold-standard)",
    )
    write_json_atomic(out / "transforms.json", entries)
    write_text_atomic(out / "align_maps.log", "\n".join(lines + [f"settings: {asdict(settings)}"]) + "\n")
    return entries
