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
from cryopose.io.outputs import output_folder
from cryopose.io.plots import plot_difference_slices, plot_fsc_curves
from cryopose.io.star import read_star, write_star
from cryopose.jobs.inputs import map_pixel_size
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


def _read_checked(path: Path, what: str, apix: float | None) -> tuple[np.ndarray, float]:
    """A map and its pixel size (Å): the header's, or ``apix`` when the header has none
    (:func:`cryopose.jobs.inputs.map_pixel_size`)."""
    vol, header = read_map(path)
    if vol.shape[-1] < 16:
        raise UserError(f"{what} {path} is only {vol.shape[-1]}^3 voxels; align maps of at least 16^3")
    if not np.any(vol):
        raise UserError(f"{what} {path} is all zeros; give a map with density")
    return vol, map_pixel_size(header, apix, path, what)


def _read_mask(path: Path, grid: tuple[np.ndarray, float], device) -> torch.Tensor:
    """A mask on the grid of its map ``grid`` (volume, pixel size): a mask with the map's box
    is on the map's grid whatever its header says; another box is resampled by its header."""
    mask, header = read_map(path)
    vol, apix = grid
    if not np.any(mask > 0):
        raise UserError(f"mask {path} is all zeros; give a mask that covers the particle")
    t = torch.as_tensor(mask, device=device)
    if mask.shape == vol.shape:
        if header > 0 and abs(header - apix) > 0.01 * apix:
            log.info(
                "note: mask %s has the box of its map but says %.4f A/px; it is used on the map's grid (%.4f A/px)",
                path,
                header,
                apix,
            )
        return t.clamp(0, 1)
    if header <= 0:
        raise UserError(
            f"mask {path} is {mask.shape[-1]}^3 but its map is {vol.shape[-1]}^3 and the mask has no pixel "
            "size to resample it by; give a mask on the map's grid"
        )
    return resample_to_grid(t, header, vol.shape[-1], apix, device=device).clamp(0, 1)


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
    apix: float | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Align ``maps`` to ``reference`` (files) and write the outputs into ``out_dir``;
    returns the entries of transforms.json.

    ``masks``: one for all maps or one per map (a mask with its map's box is on its map's
    grid); ``particles``: one STAR per map (its poses follow the map); ``groups``: lists of
    maps whose first member is aligned (added to ``maps`` when absent) and whose other
    members get the same transform; ``apix``: pixel size (Å) of maps whose header has none.
    Every input is read and checked, and the output folder too, before any work; files in
    the output that cryopose did not write are replaced only with ``force``.
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
    leads = [m for m in maps if m not in member_of]
    everything = leads + list(member_of)
    names = [map_name(p) for p in everything] + [map_name(p) for p in set(masks)]
    if len(set(names)) != len(names):
        raise UserError("two input maps or masks have the same file name; rename them so outputs do not collide")

    # every input read and checked before any work
    ref, ref_apix = _read_checked(reference, "reference", apix)
    volumes = {p: _read_checked(p, "map", apix) for p in everything}
    rmask = None if ref_mask is None else _read_mask(ref_mask, (ref, ref_apix), device)
    mask_of = {
        p: masks[0] if len(masks) == 1 else masks[i]
        for i, p in enumerate(maps)
        if p in leads and masks and (len(masks) == 1 or i < len(masks))
    }
    mask_volumes = {p: _read_mask(m, volumes[p], device) for p, m in mask_of.items()}
    stars = {}
    for star in particles:
        ps = read_star(star)
        if ps.rotations is None:
            raise UserError(f"{star} has no angles (rlnAngleRot/Tilt/Psi); it needs poses to update")
        stars[star] = ps
    outputs = [f"aligned_{map_name(p)}.mrc" for p in everything] + [f"difference_{map_name(p)}.png" for p in everything]
    outputs += [f"aligned_{map_name(m)}.mrc" for m in set(mask_of.values())]
    outputs += [f"particles_{map_name(positional[i])}.star" for i in range(len(particles))]
    outputs += ["fsc.png", "transforms.json", "align_maps.log"]
    inputs = [reference, *everything, *masks, *particles, *([ref_mask] if ref_mask is not None else [])]
    with output_folder(out, inputs=inputs, outputs=outputs, force=force):
        if settings.max_angle == 0:
            log.info("note: the largest rotation is 0 deg: a translation-only search")
        lines: list[str] = []

        def say(msg: str) -> None:
            lines.append(msg)
            log.info(msg)

        apix = ref_apix  # from here on the reference's: every map is resampled onto its grid
        ref_t = torch.as_tensor(ref, device=device)
        n = ref.shape[-1]
        resolution = settings.resolution(apix)
        say(
            f"reference {reference}: {n}^3 voxels, {apix:.4f} A/px; low-pass {resolution:.2f} A; "
            f"max shift {settings.max_shift if settings.max_shift is not None else 0.25 * n * apix:.1f} A; "
            f"max angle {settings.max_angle:g} deg; check hands {settings.check_hands}; "
            f"apply mask {settings.apply_mask}"
        )
        entries: list[dict[str, Any]] = []
        curves = []
        results: dict[Path, MapAlignment] = {}
        for path in leads:
            vol, mapix = volumes[path]
            mmask = mask_volumes.get(path)
            say(f"aligning {path} ({vol.shape[-1]}^3, {mapix:.4f} A/px)")
            res = align_map(
                ref_t, vol, apix, mapix, ref_mask=rmask, moving_mask=mmask, settings=settings, device=device, log=say
            )
            say(
                f"{map_name(path)}: rotation M (aligned map V'(y) = V(M y + t)), "
                f"det {np.linalg.det(res.rotation):+.0f}:\n"
                f"{_format_matrix(res.rotation)}\n    t = [{', '.join(f'{v:+.3f}' for v in res.shift_A)}] A; "
                f"hand flipped: {res.hand_flipped}; angle {res.angle_deg:.3f} deg; score {res.score:.4f}"
            )
            for mpath in [path, *followers.get(path, [])]:
                mvol, mv_apix = volumes[mpath]
                aligned = apply_transform(mvol, res.rotation, res.shift_A, mv_apix, n, apix, device=device)
                name = map_name(mpath)
                write_map(out / f"aligned_{name}.mrc", aligned.cpu().numpy().astype(np.float32), apix)
                fsc = fourier_shell_correlation(ref_t.float(), aligned.float(), apix)
                curves.append((name, fsc))
                plot_difference_slices(
                    _difference(ref_t, aligned, apix, resolution),
                    out / f"difference_{name}.png",
                    f"{name}: difference after low-pass to {resolution:.1f} A",
                )
                entry = {"map": str(mpath), **res.to_dict(), "fsc_resolution_0143": float(fsc.resolution_0143)}
                if mpath != path:
                    entry["follows"] = str(path)
                    entry["score"] = None
                entries.append(entry)
            if mmask is not None:
                amask = apply_transform(mmask, res.rotation, res.shift_A, mapix, n, apix, oversample=1, device=device)
                write_map(
                    out / f"aligned_{map_name(mask_of[path])}.mrc",
                    amask.clamp(0, 1).cpu().numpy().astype(np.float32),
                    apix,
                )
            results[path] = res
        for i, (star, ps) in enumerate(stars.items()):
            path = positional[i]
            res = results[member_of.get(path, path)]
            new_rot, new_sh = transform_poses(ps.rotations, ps.shifts_angstrom, res.rotation, res.shift_A)
            write_star(
                ps.with_poses(rotations=new_rot, shifts_angstrom=new_sh), out / f"particles_{map_name(path)}.star"
            )
            say(f"updated the poses of {len(ps)} particles from {star} (following {map_name(path)})")
        plot_fsc_curves(
            [(f"{name} ({r.resolution_0143:.1f} A)", r.frequency.numpy(), r.fsc.numpy()) for name, r in curves],
            out / "fsc.png",
            title="Between-map FSC against the reference (not gold-standard)",
        )
        write_json_atomic(out / "transforms.json", entries)
        write_text_atomic(out / "align_maps.log", "\n".join(lines + [f"settings: {asdict(settings)}"]) + "\n")
    return entries
