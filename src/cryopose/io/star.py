"""RELION STAR files (3.0, 3.1+, 5) <-> ``ParticleSet``.

Reading merges the optics group's columns into every particle row and converts pre-3.1
origins (rlnOriginX/Y, pixels) to rlnOriginXAngst/YAngst (Angstrom). Writing splits them
again (3.1) or merges everything into one ``data_`` block (3.0, origins in pixels).
Unknown columns and other data blocks are kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryopose.errors import UserError
from cryopose.io.atomic import write_text_atomic
from cryopose.io.star_text import NOTE_PREFIX, LoopLayout, check_values, scan_star
from cryopose.particles import OPTICS_COLUMNS, ORIGIN_ANGST_COLUMNS, ORIGIN_PX_COLUMNS, ParticleSet

__all__ = ["read_star", "write_star", "relink_image_names", "locate_image_folder", "names_folder"]

log = logging.getLogger("cryopose")

# Columns that are text even when every value looks like a number ("000001", "1").
_STRING_COLUMNS = {
    "rlnImageName",
    "rlnImageOriginalName",
    "rlnMicrographName",
    "rlnMicrographMovieName",
    "rlnMicrographMetadata",
    "rlnOpticsGroupName",
    "rlnMtfFileName",
    "rlnCtfImage",
    "rlnReconstructImageName",
    "rlnSymmetryGroup",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnGroupName",
    "rlnTomoName",
    "rlnTomoParticleName",
}

_PARTICLE_BLOCK_NAMES = ("particles", "", "images")


def _format_floats(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns as text: RELION's "%.6f" where that is exact, else 12 significant digits.

    Values read from RELION files (6 decimals) come back byte-identical; computed values
    (angles from matrices) keep ~1e-12 relative precision. A decimal point is always kept
    so that float columns read back as floats.
    """
    out = df.copy()
    for col in out.columns:
        values = out[col]
        if values.dtype.kind != "f":
            continue
        arr = values.to_numpy(dtype=np.float64)
        text = np.char.mod("%.6f", arr)
        with np.errstate(invalid="ignore"):
            exact = text.astype(np.float64) == arr
        exact |= ~np.isfinite(arr)
        if not exact.all():
            long = np.char.mod("%.12g", arr)
            plain = (np.char.find(long, ".") < 0) & (np.char.find(long, "e") < 0)
            long = np.where(plain, np.char.add(long, ".0"), long)
            text = np.where(exact, text, long)
        out[col] = text.astype(object)
    return out


def _string_columns(names: set[str]) -> list[str]:
    return sorted(c for c in names if c in _STRING_COLUMNS or c.endswith("Name"))


def _pick_particle_block(blocks: dict[str, Any], path: Path) -> str:
    frames = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    for name in _PARTICLE_BLOCK_NAMES:
        if name in frames:
            return name
    with_images = [k for k, v in frames.items() if "rlnImageName" in v.columns and k != "optics"]
    if with_images:
        return with_images[0]
    if len(frames) == 1 and "optics" not in frames:
        return next(iter(frames))
    raise UserError(
        f"{path} has no particle block (data_particles, data_ or data_images); give a RELION particle star file"
    )


def _merge_optics(particles: pd.DataFrame, optics: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "rlnOpticsGroup" not in optics.columns:
        raise UserError(f"{path}: the data_optics block has no rlnOpticsGroup column; the file is not valid RELION 3.1")
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) == 1:
            particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
        else:
            raise UserError(f"{path}: particles have no rlnOpticsGroup but there are {len(optics)} optics groups")
    groups = optics["rlnOpticsGroup"]
    twice = groups.duplicated(keep=False).to_numpy()
    if twice.any():
        raise UserError(
            f"{path}: data_optics defines optics group {groups[twice].iloc[0]} more than once; keep one row per group"
        )
    known = particles["rlnOpticsGroup"].isin(groups).to_numpy()
    if not known.all():
        unknown = ", ".join(str(g) for g in pd.unique(particles["rlnOpticsGroup"][~known])[:5])
        raise UserError(
            f"{path}: particles refer to optics groups {unknown} that data_optics does not define "
            f"(first: particle {int(np.argmin(known)) + 1}); fix rlnOpticsGroup or add the groups"
        )
    extra = [c for c in optics.columns if c != "rlnOpticsGroup" and c not in particles.columns]
    merged = particles.merge(optics[["rlnOpticsGroup", *extra]], on="rlnOpticsGroup", how="left", sort=False)
    merged.index = particles.index
    return merged


def read_star(path: str | os.PathLike, apix: float | None = None) -> ParticleSet:
    """Read a RELION particle STAR file (3.0, 3.1+, 5) into a ``ParticleSet``.

    apix (A/px) is used only when the file has no pixel size of its own; it is stored as
    rlnImagePixelSize (in the optics table when there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"star file {path} does not exist; check the path")
    layout = scan_star(path)  # structure, field counts, truncation: UserError naming the line
    if not layout.blocks:
        raise UserError(f"{path} has no data blocks; is it a RELION .star file?")
    strings = _string_columns(layout.names())
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=strings)
    except Exception as exc:  # starfile/pandas raise many kinds
        layout.count_values()  # a row without one value per column: UserError naming its line
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UserError(f"could not parse {path} as a STAR file ({reason}); is it a RELION .star?") from None
    check_values(blocks, layout, set(strings))  # a value that is not a number: UserError naming its line
    blocks = dict(blocks)
    order = tuple(blocks)
    particle_name = _pick_particle_block(blocks, path)
    particles = blocks.pop(particle_name).reset_index(drop=True)
    spec = layout.block(particle_name)
    if len(particles) == 0 and isinstance(spec, LoopLayout):
        raise UserError(f"{path}: data_{particle_name} (line {spec.line}) has no particle rows; nothing to read")
    block_name = particle_name
    note = layout.particle_block_note
    if note is not None and particle_name == "particles" and "optics" in order and note not in order:
        block_name = note  # a RELION 3.0 particle block name kept through a 3.1 file
    optics = blocks.pop("optics", None) if particle_name != "optics" else None
    if optics is not None and not isinstance(optics, pd.DataFrame):
        optics = pd.DataFrame([optics])
    if optics is not None:
        optics = optics.reset_index(drop=True)
        table = _merge_optics(particles, optics, path)
    else:
        table = particles.copy()

    pset = ParticleSet(
        table=table,
        optics=optics,
        extra_blocks=blocks,
        source_dir=locate_image_folder(table, path),
        source_file=path.resolve(),
        particle_block=block_name,
        star_blocks=tuple(block_name if n == particle_name else n for n in order),
    )
    if apix is not None and pset.pixel_size_or_none() is None:
        pset = _set_pixel_size(pset, float(apix))

    # Pre-3.1 origins (px) -> Angstrom, visible in the table; RELION 3.1 ignores rlnOriginX/Y.
    cols = pset.table.columns
    if all(c in cols for c in ORIGIN_PX_COLUMNS):
        table = pset.table.copy()
        if not all(c in cols for c in ORIGIN_ANGST_COLUMNS):
            apix_arr = pset.pixel_size_or_none()
            if apix_arr is None:
                raise UserError(
                    f"{path} has origins in pixels (rlnOriginX/Y) but no pixel size (rlnImagePixelSize); "
                    "give the pixel size",
                    option="apix",
                )
            position = table.columns.get_loc(ORIGIN_PX_COLUMNS[0])
            ox = table[ORIGIN_PX_COLUMNS[0]].to_numpy(np.float64) * apix_arr
            oy = table[ORIGIN_PX_COLUMNS[1]].to_numpy(np.float64) * apix_arr
            table.insert(position, ORIGIN_ANGST_COLUMNS[0], ox)
            table.insert(position + 1, ORIGIN_ANGST_COLUMNS[1], oy)
        table = table.drop(columns=list(ORIGIN_PX_COLUMNS))
        pset = replace(pset, table=table)
    return pset


def _set_pixel_size(pset: ParticleSet, apix: float) -> ParticleSet:
    table = pset.table.copy()
    table["rlnImagePixelSize"] = apix
    optics = pset.optics
    if optics is not None:
        optics = optics.copy()
        optics["rlnImagePixelSize"] = apix
    return replace(pset, table=table, optics=optics)


# --------------------------------------------------------------------------- writing
def _constant_within(table: pd.DataFrame, column: str, groups: pd.Series) -> bool:
    return bool((table.groupby(groups, sort=False)[column].nunique(dropna=False) <= 1).all())


# What RELION needs as one value per optics group.
_GROUP_SETTINGS = (
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


def _split_optics(pset: ParticleSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(optics, particles) blocks for RELION 3.1 from a set's merged table."""
    table = pset.table.copy()
    # RELION 3.0 pixel size columns become rlnImagePixelSize.
    if "rlnImagePixelSize" not in table.columns:
        apix = pset.pixel_size_or_none()
        if apix is not None:
            table["rlnImagePixelSize"] = apix
    table = table.drop(
        columns=[c for c in ("rlnMagnification", "rlnDetectorPixelSize", "rlnPixelSize") if c in table.columns]
    )
    if "rlnImageDimensionality" not in table.columns and ("rlnImageSize" in table.columns or pset.optics is None):
        table["rlnImageDimensionality"] = 2

    if pset.optics is not None and "rlnOpticsGroup" in table.columns:
        base = pset.optics.copy()
        candidates = [
            c for c in dict.fromkeys([*base.columns, *OPTICS_COLUMNS]) if c != "rlnOpticsGroup" and c in table.columns
        ]
        groups = table["rlnOpticsGroup"]
        movable = [c for c in candidates if _constant_within(table, c, groups)]
        # Refresh optics values from the table for the groups that have particles.
        firsts = table.groupby("rlnOpticsGroup", sort=False)[movable].first() if movable else pd.DataFrame()
        for col in movable:
            mapped = base["rlnOpticsGroup"].map(firsts[col])
            if col not in base.columns:
                base[col] = mapped
                continue
            original = base[col]
            merged = mapped.where(mapped.notna(), original)
            if original.dtype.kind in "iu" and merged.notna().all():
                merged = merged.astype(original.dtype)
            elif original.dtype == object:
                merged = merged.astype(object)
            base[col] = merged
        # Columns that vary within a group stay per particle and leave the optics table.
        base = base.drop(columns=[c for c in candidates if c not in movable and c in base.columns])
        particles = table.drop(columns=movable)
        return base, particles

    # No optics table (RELION 3.0 or cryoSPARC). The file's own rlnOpticsGroup numbers (a
    # 3.0 file written from 3.1 keeps them) are kept when the settings RELION needs per group
    # agree within each group; otherwise one group per distinct setting. Columns that vary
    # within a group stay per particle.
    candidates = [c for c in OPTICS_COLUMNS if c in table.columns]
    settings = [c for c in candidates if c in _GROUP_SETTINGS]
    if "rlnOpticsGroup" in table.columns and all(_constant_within(table, c, table["rlnOpticsGroup"]) for c in settings):
        group_ids = table["rlnOpticsGroup"].to_numpy()
    elif settings:
        group_ids = table.groupby(settings, sort=False, dropna=False).ngroup().to_numpy() + 1
    else:
        group_ids = np.ones(len(table), dtype=np.int64)
    table["rlnOpticsGroup"] = group_ids
    movable = [c for c in candidates if _constant_within(table, c, table["rlnOpticsGroup"])]
    firsts = table.groupby("rlnOpticsGroup", sort=True)[movable].first().reset_index()
    if "rlnOpticsGroupName" not in firsts.columns:
        firsts.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in firsts["rlnOpticsGroup"]])
    particles = table.drop(columns=movable)
    return firsts, particles


def _to_30(pset: ParticleSet) -> pd.DataFrame:
    table = pset.table.copy()
    if all(c in table.columns for c in ORIGIN_ANGST_COLUMNS):
        pixel = pset.pixel_size  # UserError "... give the pixel size" when unknown: 3.0 origins are in pixels
        position = table.columns.get_loc(ORIGIN_ANGST_COLUMNS[0])
        ox = table[ORIGIN_ANGST_COLUMNS[0]].to_numpy(np.float64) / pixel
        oy = table[ORIGIN_ANGST_COLUMNS[1]].to_numpy(np.float64) / pixel
        table = table.drop(columns=[*ORIGIN_ANGST_COLUMNS, *[c for c in ORIGIN_PX_COLUMNS if c in table.columns]])
        table.insert(position, ORIGIN_PX_COLUMNS[0], ox)
        table.insert(position + 1, ORIGIN_PX_COLUMNS[1], oy)
    apix = pset.pixel_size_or_none()
    if apix is not None and not ("rlnMagnification" in table.columns and "rlnDetectorPixelSize" in table.columns):
        # RELION 3.0: pixel size (A) = rlnDetectorPixelSize (um) * 1e4 / rlnMagnification.
        table["rlnMagnification"] = 10000.0
        table["rlnDetectorPixelSize"] = apix
    # rlnOpticsGroup and rlnOpticsGroupName stay (RELION 3.0 ignores them), so that a 3.1 file
    # written from this one gets the same groups back.
    return table.drop(columns=[c for c in ("rlnImagePixelSize",) if c in table.columns])


def _check_writable(name: str, block: pd.DataFrame) -> None:
    """UserError for text values STAR cannot hold (quotes, '#', tabs, line breaks)."""
    for col in block.columns:
        values = block[col]
        if values.dtype.kind in "biufcmM" or len(values) == 0:
            continue
        bad = values.astype(str).str.contains(r"[\x00-\x1f\x7f\"'#]", regex=True).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(
                f"{col} of row {i + 1} in data_{name} is {str(values.iloc[i])[:60]!r}: a STAR file cannot hold quotes, "
                "'#', tabs or line breaks in a value; rename it"
            )


def _block_text(name: str, block: Any, version_line: str, note: str = "") -> str:
    if isinstance(block, pd.DataFrame):
        _check_writable(name, block)
        block = _format_floats(block)
    # starfile quotes values with spaces ("a b"); pandas' csv writer refuses a separator inside
    # a value, so write with a separator no value holds and make it a blank afterwards.
    text = starfile.to_string({name: block}, sep="\x1f").replace("\x1f", " ")
    # drop starfile's own "created by" header; keep RELION's version comment instead
    body = text.split("\n", 1)[1].lstrip("\n")
    return f"\n{version_line}\n{note}\n{body}"


def _file_order(particles: ParticleSet, main: list[tuple[str, Any]], version: str) -> list[tuple[str, Any]]:
    """The blocks to write: the particle (and optics) blocks where the file read had them,
    the extra blocks in their file order. RELION 3.0 reads the first block, so a 3.0 file
    made from a 3.1 one starts with the particles."""
    extras = dict(particles.extra_blocks)
    order = list(particles.star_blocks)
    own = particles.particle_block
    if own not in order:
        return main + list(extras.items())
    if version == "3.0" and "optics" in order:
        order.remove(own)
        order.insert(0, own)
    by_name = dict(main)
    out: list[tuple[str, Any]] = []
    for name in order:
        if name == own:
            if "optics" in by_name and "optics" not in order:
                out.append(("optics", by_name["optics"]))
            out.append(main[-1])
        elif name == "optics":
            if "optics" in by_name:
                out.append(("optics", by_name["optics"]))
        elif name in extras:
            out.append((name, extras.pop(name)))
    return out + list(extras.items())


def write_star(particles: ParticleSet, path: str | os.PathLike, version: str = "3.1") -> None:
    """Write a ``ParticleSet`` as a RELION STAR file.

    version "3.1" (also read by RELION 4 and 5): data_optics + data_particles, then the
    extra blocks. version "3.0": one data_ block with optics merged in, origins in pixels
    (rlnOriginX/Y) and the pixel size as rlnMagnification=10000, rlnDetectorPixelSize=apix.
    Relative image names are rewritten to reach the same stacks from the folder
    :func:`names_folder` gives (the working folder when the file is written inside it, as
    RELION expects; else the new file's folder) (``relink_image_names``). The file is written
    to a temporary name and renamed into place; the source star file itself is never
    overwritten.
    """
    path = Path(path)
    if version not in ("3.0", "3.1"):
        raise UserError(f"unknown STAR version {version!r}; use 3.0 or 3.1")
    if particles.source_file is not None and path.exists():
        if path.resolve() == Path(particles.source_file).resolve():
            raise UserError(f"refusing to overwrite the input file {path}; choose another output name")
    folder = path.resolve().parent
    if particles.source_dir is None:  # a set built in memory names its images from the folder it is written to
        particles = replace(particles, source_dir=folder)
    particles = relink_image_names(particles, names_folder(folder))
    own = particles.particle_block
    if version == "3.1":
        optics, table = _split_optics(particles)
        main: list[tuple[str, Any]] = [("optics", optics), ("particles", table)]
        version_line = "# version 30001"
        # a RELION 3.0 block name (data_model_class_1) survives a 3.1 file as a comment
        note = f"{NOTE_PREFIX}{own}\n" if own not in (None, "", "particles") else ""
    else:
        name = own if own not in (None, "particles") else ""
        if name in particles.extra_blocks:
            name = "particles"
        main = [(name, _to_30(particles))]
        version_line, note = "# version 30000", ""
    blocks = _file_order(particles, main, version)
    particle_block = main[-1][0]
    text = "".join(
        _block_text(name, block, version_line, note if name == particle_block else "") for name, block in blocks
    )
    write_text_atomic(path, text)


def locate_image_folder(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The folder the relative image names of particle file ``path`` resolve from: the
    file's own folder (where cryopose writes its stacks), else the working folder (where
    RELION reads them from), else the nearest folder above the file's (a RELION or
    cryoSPARC project folder holds its jobs' folders): the first that holds every named
    stack; a line on the ``cryopose`` logger says so when it is not the file's own folder.
    When none holds them all, the file's folder (the image reader then names what is missing)."""
    own = Path(path).resolve().parent
    if "rlnImageName" not in table.columns:
        return own
    names = pd.unique(table["rlnImageName"].astype(str))
    stacks = {n.split("@", 1)[1] if "@" in n else n for n in names}
    relative = [p for p in stacks if not os.path.isabs(p)]
    if not relative:
        return own
    cwd = Path.cwd().resolve()
    for folder in dict.fromkeys([own, cwd, *own.parents]):
        if all(os.path.isfile(os.path.join(folder, p)) for p in relative):
            if folder != own:
                where = "the working folder, as RELION reads them" if folder == cwd else "a folder above it"
                log.info("image names in %s are read from %s (%s), not from the file's own folder", path, folder, where)
            return folder
    return own


def names_folder(star_folder: str | os.PathLike) -> Path:
    """The folder that the image names of a STAR file written into ``star_folder`` are
    written relative to: the working folder when the file lies inside it (RELION's project
    convention: RELION run from there reads them, and cryopose finds them from anywhere in
    the project), else the file's own folder."""
    folder = Path(star_folder).resolve()
    cwd = Path.cwd().resolve()
    return cwd if folder == cwd or cwd in folder.parents else folder


def relink_image_names(particles: ParticleSet, folder: str | os.PathLike) -> ParticleSet:
    """The set with each relative rlnImageName path rewritten to resolve from ``folder``
    to the same stack it resolves to from the set's ``source_dir``.

    Paths become relative to ``folder`` where possible (absolute otherwise, e.g. across
    Windows drives); absolute paths and sets without a ``source_dir`` are left as they are.
    """
    if particles.source_dir is None or "rlnImageName" not in particles.table.columns:
        return particles
    source = Path(particles.source_dir).resolve()
    target = Path(folder).resolve()
    if source == target:
        return particles
    names = particles.table["rlnImageName"].astype(str)
    has_at = names.str.contains("@", regex=False)
    prefix = names.str.extract(r"^([^@]*@)", expand=False).where(has_at, "")
    paths = names.where(~has_at, names.str.split("@", n=1).str[1])
    mapping = {}
    for p in paths.unique():
        if os.path.isabs(p):
            mapping[p] = p
            continue
        absolute = os.path.normpath(os.path.join(str(source), p))
        try:
            mapping[p] = os.path.relpath(absolute, str(target))
        except ValueError:  # no relative path (another drive)
            mapping[p] = absolute
    table = particles.table.copy()
    table["rlnImageName"] = (prefix + paths.map(mapping)).to_numpy(dtype=object)
    return replace(particles, table=table, source_dir=target)
