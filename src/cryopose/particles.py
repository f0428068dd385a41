"""``ParticleSet``: particle metadata in RELION's vocabulary, as one table (pure data).

The table holds one row per particle with every column read from the file, named as in
STAR without the leading underscore (``rlnDefocusU``); the columns of the particle's optics
group are merged into each row. Units at this boundary are RELION's: angles in degrees,
origins in Angstrom (``rlnOriginXAngst/YAngst``), defocus in Angstrom. The accessors return
numpy float64 arrays in the units named in their docstrings; poses are RELION matrices A
(see ``cryopose.geometry.rotations``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryopose.errors import UserError
from cryopose.geometry.rotations import euler_to_matrix, matrix_to_euler
from cryopose.imaging.ctf import CTFParameters

__all__ = [
    "ParticleSet",
    "ParticleTensors",
    "ANGLE_COLUMNS",
    "ORIGIN_ANGST_COLUMNS",
    "ORIGIN_PX_COLUMNS",
    "OPTICS_COLUMNS",
    "TRUE_ANGLE_COLUMNS",
    "TRUE_ORIGIN_COLUMNS",
    "CONFIDENCE_COLUMN",
]

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_ANGST_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
ORIGIN_PX_COLUMNS = ("rlnOriginX", "rlnOriginY")
# cryopose's own columns: a particle's true pose kept beside a predicted one (deg, Å), and a
# prediction's confidence (larger is surer)
TRUE_ANGLE_COLUMNS = ("cryoposeTrueAngleRot", "cryoposeTrueAngleTilt", "cryoposeTrueAnglePsi")
TRUE_ORIGIN_COLUMNS = ("cryoposeTrueOriginXAngst", "cryoposeTrueOriginYAngst")
CONFIDENCE_COLUMN = "cryoposeConfidence"

# Columns RELION 3.1+ keeps in the optics table (one value per optics group).
OPTICS_COLUMNS = (
    "rlnOpticsGroupName",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMtfFileName",
)

# CTF parameter -> (column, default when the column is absent; None = required)
_CTF_COLUMNS: dict[str, tuple[str, float | None]] = {
    "defocus_u": ("rlnDefocusU", None),
    "defocus_v": ("rlnDefocusV", None),
    "defocus_angle": ("rlnDefocusAngle", None),
    "voltage": ("rlnVoltage", None),
    "spherical_aberration": ("rlnSphericalAberration", None),
    "amplitude_contrast": ("rlnAmplitudeContrast", None),
    "phase_shift": ("rlnPhaseShift", 0.0),
    "bfactor": ("rlnCtfBfactor", 0.0),
    "scale": ("rlnCtfScalefactor", 1.0),
}


def _show(value: Any) -> str:
    """A value for a message: nan, inf, 1.5 (not np.float64(1.5)); text quoted."""
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return repr(float(value))
    return repr(str(value))


@dataclass
class ParticleTensors:
    """The per-particle numbers the algorithms need, as tensors (one row per particle).

    rotations: RELION pose matrices A (n, 3, 3), None without angles; shifts_angstrom:
    origins (x, y) in Å (n, 2); pixel_size: Å/px (n,); ctf: CTF parameters or None;
    half_sets: rlnRandomSubset (1 or 2) or None; classes: rlnClassNumber or None;
    confidence: rlnMaxValueProbDistribution, 1 where absent (n,).
    """

    rotations: torch.Tensor | None
    shifts_angstrom: torch.Tensor
    pixel_size: torch.Tensor
    ctf: CTFParameters | None
    half_sets: torch.Tensor | None
    classes: torch.Tensor | None
    confidence: torch.Tensor

    def __len__(self) -> int:
        return int(self.shifts_angstrom.shape[0])

    @property
    def shifts_px(self) -> torch.Tensor:
        """Origins (x, y) in pixels, (n, 2)."""
        return self.shifts_angstrom / self.pixel_size[:, None]

    def __getitem__(self, index: Any) -> "ParticleTensors":
        """The rows at ``index`` (integer tensor/array, slice or boolean mask)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)

        def pick(t):
            return None if t is None else t[index]

        return ParticleTensors(
            rotations=pick(self.rotations),
            shifts_angstrom=self.shifts_angstrom[index],
            pixel_size=self.pixel_size[index],
            ctf=None if self.ctf is None else self.ctf[index],
            half_sets=pick(self.half_sets),
            classes=pick(self.classes),
            confidence=self.confidence[index],
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ParticleTensors":
        """A copy on ``device`` with floating tensors cast to ``dtype`` (None: unchanged)."""

        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

        ctf = None
        if self.ctf is not None:
            ctf = CTFParameters(**{k: move(v) for k, v in vars(self.ctf).items()})
        return ParticleTensors(
            rotations=move(self.rotations),
            shifts_angstrom=move(self.shifts_angstrom),
            pixel_size=move(self.pixel_size),
            ctf=ctf,
            half_sets=move(self.half_sets),
            classes=move(self.classes),
            confidence=move(self.confidence),
        )


@dataclass
class ParticleSet:
    """Particle metadata: one row per particle, optics columns merged in.

    Attributes:
        table: one row per particle; STAR column names without the leading underscore.
        optics: the optics table as read (None for RELION 3.0 / no optics).
        extra_blocks: other data blocks, kept verbatim (in file order) for round trips.
        source_dir: folder of the file read; relative image names resolve against it.
        source_file: the file read, if any (optional; writers refuse to overwrite it).
    """

    table: pd.DataFrame
    optics: pd.DataFrame | None = None
    extra_blocks: dict[str, Any] = field(default_factory=dict)
    source_dir: Path | None = None
    source_file: Path | None = field(default=None, repr=False, compare=False)
    """The file this set was read from (write_star refuses to overwrite it); None if built."""
    particle_block: str | None = field(default=None, repr=False, compare=False)
    """Name of the STAR block the particles came from ("particles", "", "model_class_1")."""
    star_blocks: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Names of all data blocks of the STAR file read, in file order (for round trips)."""

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.table)

    def _column(self, name: str) -> np.ndarray:
        return self.table[name].to_numpy(dtype=np.float64)

    def with_table(self, table: pd.DataFrame) -> "ParticleSet":
        """This set with another particle table (rows renumbered; optics and blocks copied)."""
        return replace(
            self,
            table=table.reset_index(drop=True),
            optics=None if self.optics is None else self.optics.copy(),
            extra_blocks=dict(self.extra_blocks),
        )

    # ------------------------------------------------------------------ poses
    @property
    def rotations(self) -> np.ndarray | None:
        """Pose matrices A, (n, 3, 3) float64, from rlnAngleRot/Tilt/Psi (degrees).

        None when the table has no angle columns (rot and tilt both absent). A missing
        rlnAngleRot or rlnAngleTilt (2D-only data with rlnAnglePsi) also gives None.
        """
        if not all(c in self.table.columns for c in ANGLE_COLUMNS):
            return None
        angles = np.deg2rad(self.finite_columns(ANGLE_COLUMNS))
        t = torch.from_numpy(angles)
        return euler_to_matrix(t[:, 0], t[:, 1], t[:, 2]).numpy().astype(np.float64)

    @property
    def shifts_angstrom(self) -> np.ndarray:
        """Origins (x, y) in Angstrom, (n, 2) float64, from rlnOriginX/YAngst; zeros if absent."""
        if all(c in self.table.columns for c in ORIGIN_ANGST_COLUMNS):
            return self.finite_columns(ORIGIN_ANGST_COLUMNS)
        if all(c in self.table.columns for c in ORIGIN_PX_COLUMNS):
            px = self.finite_columns(ORIGIN_PX_COLUMNS)
            return px * self.pixel_size[:, None]
        return np.zeros((len(self), 2), dtype=np.float64)

    # ------------------------------------------------------------------ optics
    def _pixel_size_source(self) -> tuple[np.ndarray, str] | None:
        cols = self.table.columns
        if "rlnImagePixelSize" in cols:
            return self._column("rlnImagePixelSize"), "rlnImagePixelSize"
        if "rlnPixelSize" in cols:
            return self._column("rlnPixelSize"), "rlnPixelSize"
        if "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
            # RELION 3.0: pixel size (A) = detector pixel size (um) * 1e4 / magnification
            # (1e4 / magnification first: exact for the magnification 10000 that write_star uses)
            with np.errstate(divide="ignore", invalid="ignore"):  # a magnification of 0: reported by pixel_size
                apix = self._column("rlnDetectorPixelSize") * (1e4 / self._column("rlnMagnification"))
            return apix, "rlnDetectorPixelSize*1e4/rlnMagnification"
        return None

    def pixel_size_or_none(self) -> np.ndarray | None:
        """Pixel size in Å per particle from whichever column holds it, or None (unchecked)."""
        source = self._pixel_size_source()
        return None if source is None else source[0]

    @property
    def pixel_size(self) -> np.ndarray:
        """Pixel size in Angstrom per particle, (n,) float64.

        From rlnImagePixelSize (merged from optics), else rlnPixelSize, else RELION 3.0's
        rlnDetectorPixelSize * 1e4 / rlnMagnification. Raises UserError if unknown, or
        naming the particles whose pixel size is not a positive number.
        """
        source = self._pixel_size_source()
        if source is None:
            raise UserError(f"{self._name()} has no pixel size (rlnImagePixelSize); give the pixel size", option="apix")
        apix, column = source
        self.reject_rows(
            ~(np.isfinite(apix) & (apix > 0)),
            column,
            apix,
            "not a positive number",
            "give the right pixel size in the file",
        )
        return apix

    def _name(self) -> str:
        if self.source_file is not None:
            return f"the particle metadata in {self.source_file}"
        return "the particle metadata" if self.source_dir is None else f"the particle metadata in {self.source_dir}"

    def reject_rows(self, bad: np.ndarray, column: str, values: np.ndarray, problem: str, fix: str) -> None:
        """UserError naming the first few particles (1-based rows) where ``bad`` is True."""
        if not bad.any():
            return
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(int(r) + 1) for r in rows[:5]) + (", ..." if rows.size > 5 else "")
        first = int(rows[0])
        which = f"row {first + 1}"
        if "rlnImageName" in self.table.columns and column != "rlnImageName":
            which = str(self.table["rlnImageName"].iloc[first])
        raise UserError(
            f"{self._name()}: {column} is {problem} for {rows.size} of {len(self)} particles "
            f"(row{'s' if rows.size > 1 else ''} {shown}, counted from 1; {which} has {_show(values[first])}); "
            f"{fix} or remove {'them' if rows.size > 1 else 'it'}"
        )

    def finite_columns(self, columns: tuple[str, ...] | list[str]) -> np.ndarray:
        """The columns as (n, k) float64; UserError naming the particles with NaN or infinity."""
        out = np.empty((len(self), len(columns)), dtype=np.float64)
        for j, col in enumerate(columns):
            values = self._column(col)
            self.reject_rows(~np.isfinite(values), col, values, "not finite", "fix")
            out[:, j] = values
        return out

    @property
    def image_size(self) -> int | None:
        """Box size in pixels (rlnImageSize, the first particle's) or None if absent."""
        if "rlnImageSize" not in self.table.columns or len(self) == 0:
            return None
        size = self._column("rlnImageSize")[:1]
        self.reject_rows(
            ~(np.isfinite(size) & (size > 0) & (size == np.round(size))),
            "rlnImageSize",
            size,
            "not a positive whole number",
            "fix the box size",
        )
        return int(size[0])

    def ctf_parameters(self) -> dict[str, np.ndarray] | None:
        """CTF parameters per particle, each (n,) float64, or None without rlnDefocusU.

        Keys and units: defocus_u, defocus_v (A), defocus_angle (deg), voltage (kV),
        spherical_aberration (mm), amplitude_contrast, phase_shift (deg, 0 if absent),
        bfactor (A^2, 0 if absent), scale (1 if absent). Raises UserError naming the
        required columns that are missing.
        """
        if "rlnDefocusU" not in self.table.columns:
            return None
        missing = [col for col, default in _CTF_COLUMNS.values() if default is None and col not in self.table.columns]
        if missing:
            raise UserError(
                f"{self._name()} has CTF defocus but lacks {', '.join(missing)}; "
                "add the missing CTF columns (or an optics group with them) to the star file"
            )
        n = len(self)
        out: dict[str, np.ndarray] = {}
        for key, (col, default) in _CTF_COLUMNS.items():
            if col in self.table.columns:
                out[key] = self.finite_columns([col])[:, 0]
            else:
                assert default is not None  # the columns without a default were checked above
                out[key] = np.full(n, float(default), dtype=np.float64)
        self.reject_rows(out["voltage"] <= 0, "rlnVoltage", out["voltage"], "not positive", "give the voltage in kV")
        return out

    # ------------------------------------------------------------------ images
    def _split_names(self) -> tuple[list[str], np.ndarray]:
        if "rlnImageName" not in self.table.columns:
            raise UserError(f"{self._name()} has no rlnImageName column; cannot locate particle images")
        names = self.table["rlnImageName"]
        self.reject_rows(names.isna().to_numpy(), "rlnImageName", names.to_numpy(), "missing", "give the image names")
        paths: list[str] = []
        indices = np.zeros(len(self), dtype=np.int64)
        for i, name in enumerate(names.astype(str)):
            if "@" in name:
                number, path = name.split("@", 1)
                try:
                    indices[i] = int(number) - 1
                except ValueError:
                    raise UserError(f"image name {name!r} is not of the form NNN@stack.mrcs") from None
            else:
                path = name
            paths.append(path)
        return paths, indices

    @property
    def image_paths(self) -> np.ndarray:
        """Absolute stack path per particle (str array), relative names resolved against source_dir."""
        paths, _ = self._split_names()
        base = self.source_dir if self.source_dir is not None else Path.cwd()
        cache: dict[str, str] = {}
        out = []
        for p in paths:
            if p not in cache:
                cache[p] = p if os.path.isabs(p) else os.path.normpath(os.path.join(str(base), p))
            out.append(cache[p])
        return np.array(out, dtype=str)

    @property
    def image_indices(self) -> np.ndarray:
        """0-based index in the stack per particle (int64); NNN in NNN@path is 1-based."""
        return self._split_names()[1]

    @property
    def half_sets(self) -> np.ndarray | None:
        """rlnRandomSubset (1 or 2) per particle, int64, or None."""
        if "rlnRandomSubset" not in self.table.columns:
            return None
        return self._whole_numbers("rlnRandomSubset")

    @property
    def class_numbers(self) -> np.ndarray | None:
        """rlnClassNumber per particle, int64, or None."""
        if "rlnClassNumber" not in self.table.columns:
            return None
        return self._whole_numbers("rlnClassNumber")

    def _whole_numbers(self, column: str) -> np.ndarray:
        values = self._column(column)
        self.reject_rows(
            ~np.isfinite(values) | (values != np.round(values)), column, values, "not a whole number", "fix"
        )
        return values.astype(np.int64)

    def confidence(self) -> np.ndarray:
        """rlnMaxValueProbDistribution per particle (float64), 1 where the column is absent."""
        if "rlnMaxValueProbDistribution" not in self.table.columns:
            return np.ones(len(self), dtype=np.float64)
        return self._column("rlnMaxValueProbDistribution")

    def to_tensors(self, ctf: bool = True) -> ParticleTensors:
        """The set's poses, origins, pixel sizes, CTF, half sets, classes and confidences as
        float64/int64 CPU tensors (``ParticleTensors``). ``ctf=False`` skips the CTF (None).

        Raises UserError when the pixel size is unknown or required CTF columns are missing.
        """
        rotations = self.rotations
        values = self.ctf_parameters() if ctf else None
        halves, classes = self.half_sets, self.class_numbers
        return ParticleTensors(
            rotations=None if rotations is None else torch.from_numpy(rotations),
            shifts_angstrom=torch.tensor(self.shifts_angstrom, dtype=torch.float64),
            pixel_size=torch.tensor(self.pixel_size, dtype=torch.float64),
            ctf=None if values is None else CTFParameters.from_mapping(values, dtype=torch.float64),
            half_sets=None if halves is None else torch.tensor(halves),
            classes=None if classes is None else torch.tensor(classes),
            confidence=torch.tensor(self.confidence(), dtype=torch.float64),
        )

    # ------------------------------------------------------------------ new sets
    def subset(self, selection: np.ndarray | list) -> "ParticleSet":
        """New set with the particles picked by integer indices or a boolean mask (n,)."""
        sel = np.asarray(selection)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {sel.shape}, expected ({len(self)},)")
            sel = np.nonzero(sel)[0]
        return self.with_table(self.table.iloc[sel.astype(np.int64)].copy())

    def with_poses(
        self,
        rotations: np.ndarray | None = None,
        shifts_angstrom: np.ndarray | None = None,
    ) -> "ParticleSet":
        """New set with poses written as rlnAngleRot/Tilt/Psi (deg) and origins rlnOriginX/YAngst (A).

        rotations: (n, 3, 3) RELION matrices A; shifts_angstrom: (n, 2) (x, y) in A. Either
        may be None to keep the current values. Pre-3.1 rlnOriginX/Y are dropped when
        shifts are written.
        """
        table = self.table.copy()
        n = len(self)
        if rotations is not None:
            rot = np.asarray(rotations, dtype=np.float64)
            if rot.shape != (n, 3, 3):
                raise ValueError(f"rotations have shape {rot.shape}, expected ({n}, 3, 3)")
            angles = np.rad2deg(matrix_to_euler(torch.from_numpy(rot)).numpy())
            for j, col in enumerate(ANGLE_COLUMNS):
                table[col] = angles[:, j]
        if shifts_angstrom is not None:
            sh = np.asarray(shifts_angstrom, dtype=np.float64)
            if sh.shape != (n, 2):
                raise ValueError(f"shifts have shape {sh.shape}, expected ({n}, 2)")
            table = table.drop(columns=[c for c in ORIGIN_PX_COLUMNS if c in table.columns])
            table[ORIGIN_ANGST_COLUMNS[0]] = sh[:, 0]
            table[ORIGIN_ANGST_COLUMNS[1]] = sh[:, 1]
        return self.with_table(table)

    def with_columns(self, **columns: Any) -> "ParticleSet":
        """New set with the given columns added or replaced (scalars or array-likes of length n)."""
        table = self.table.copy()
        for name, values in columns.items():
            if np.ndim(values) == 0:
                table[name] = values
                continue
            arr = np.asarray(values)
            if arr.shape[0] != len(self):
                raise ValueError(f"column {name} has {arr.shape[0]} values, expected {len(self)}")
            table[name] = arr
        return self.with_table(table)

    @classmethod
    def from_arrays(
        cls,
        rotations: np.ndarray | None,
        shifts_angstrom: np.ndarray | None,
        pixel_size: float,
        image_size: int,
        image_names: list[str],
        ctf: dict[str, Any] | None,
        extra_columns: dict[str, Any] | None = None,
        optics_group_name: str = "opticsGroup1",
    ) -> "ParticleSet":
        """Build a RELION 3.1 style set with one optics group.

        rotations (n, 3, 3) matrices A or None; shifts_angstrom (n, 2) or None (zeros);
        pixel_size in A/px; image_size in px; image_names like "000001@stack.mrcs"; ctf a
        dict with the keys of ``ctf_parameters()`` (scalars or (n,) arrays; voltage,
        spherical_aberration and amplitude_contrast go to the optics table and must be
        single values) or None.
        """
        n = len(image_names)
        optics: dict[str, Any] = {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": [optics_group_name],
            "rlnImagePixelSize": [float(pixel_size)],
            "rlnImageSize": [int(image_size)],
            "rlnImageDimensionality": [2],
        }
        particles: dict[str, Any] = {"rlnImageName": [str(s) for s in image_names]}
        if ctf is not None:
            for key, col in (
                ("voltage", "rlnVoltage"),
                ("spherical_aberration", "rlnSphericalAberration"),
                ("amplitude_contrast", "rlnAmplitudeContrast"),
            ):
                values = np.unique(np.asarray(ctf[key], dtype=np.float64))
                if values.size != 1:
                    raise ValueError(f"ctf[{key!r}] must be one value for a single optics group")
                optics[col] = [float(values[0])]
            for key, col in (
                ("defocus_u", "rlnDefocusU"),
                ("defocus_v", "rlnDefocusV"),
                ("defocus_angle", "rlnDefocusAngle"),
                ("phase_shift", "rlnPhaseShift"),
                ("bfactor", "rlnCtfBfactor"),
                ("scale", "rlnCtfScalefactor"),
            ):
                if key in ctf:
                    particles[col] = np.broadcast_to(np.asarray(ctf[key], dtype=np.float64), (n,)).copy()
                elif key in ("phase_shift", "bfactor"):
                    particles[col] = np.zeros(n)
        particles["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)
        table = pd.DataFrame(particles)
        for name, values in (extra_columns or {}).items():
            table[name] = (
                np.broadcast_to(np.asarray(values), (n,)).copy() if np.ndim(values) == 0 else np.asarray(values)
            )
        optics_df = pd.DataFrame(optics)
        merged = table.merge(optics_df, on="rlnOpticsGroup", how="left")
        pset = cls(table=merged, optics=optics_df, extra_blocks={}, source_dir=None)
        return pset.with_poses(
            rotations=rotations,
            shifts_angstrom=np.zeros((n, 2)) if shifts_angstrom is None else shifts_angstrom,
        )
