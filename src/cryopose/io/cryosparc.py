"""cryoSPARC ``.cs`` particle files -> ``ParticleSet`` (in RELION's vocabulary).

A .cs file is a numpy structured array (``np.load``). Fields used and what they become:

    blob/path, blob/idx     rlnImageName = f"{idx+1:06d}@{path}" (leading '>' stripped)
    blob/psize_A            rlnImagePixelSize (A/px)
    blob/shape              rlnImageSize (px)
    ctf/df1_A, df2_A        rlnDefocusU, rlnDefocusV (A)
    ctf/df_angle_rad        rlnDefocusAngle (deg)
    ctf/accel_kv, cs_mm     rlnVoltage (kV), rlnSphericalAberration (mm)
    ctf/amp_contrast        rlnAmplitudeContrast
    ctf/phase_shift_rad     rlnPhaseShift (deg)
    ctf/bfactor, ctf/scale  rlnCtfBfactor (A^2), rlnCtfScalefactor
    ctf/exp_group_id        rlnOpticsGroup (+1)
    alignments3D/pose       rlnAngleRot/Tilt/Psi (deg), see below
    alignments3D/shift      rlnOriginXAngst/YAngst (A), see below
    alignments3D/split      rlnRandomSubset (+1)
    alignments*/class       rlnClassNumber (+1)

Pose convention. cryoSPARC stores a rotation vector r (axis times angle, rad). With R(r)
the usual right-handed (Rodrigues) matrix of r, the RELION pose matrix is A = R(r)^T.
Evidence: pyem's csparc2star converts with ``rot2euler(expmap(pose))``, where pyem's
``expmap`` returns the *transpose* of the Rodrigues matrix and ``rot2euler`` inverts
RELION's Euler_angles2matrix (pyem ``euler2rot`` is RELION's A); cryoDRGN's
``parse_pose_csparc`` uses ``expmap(pose).T`` (plain Rodrigues, then transposed) for the same
quantity it builds from a RELION star with ``R_from_relion``, which equals RELION's A. Both
tools agree: A = R(r)^T.

Shift convention. ``alignments3D/shift`` is in pixels of the alignment and is RELION's
origin directly (no sign change): pyem copies it to rlnOriginX/Y unchanged and cryoDRGN uses
it as-is where it uses rlnOriginX/Y from a star. Origins in A = shift * alignments3D/psize_A
(falling back to blob/psize_A).

2D-only files (alignments2D) have no 3D poses: rotations are None; the in-plane angle and
shift are kept as rlnAnglePsi (deg) and origins, as pyem does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryopose.errors import UserError
from cryopose.geometry.rotations import axis_angle_to_matrix, matrix_to_euler
from cryopose.io.star import locate_image_folder
from cryopose.particles import ParticleSet

__all__ = ["read_cryosparc", "cryosparc_pose_to_matrix", "matrix_to_cryosparc_pose"]


def cryosparc_pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC rotation vectors (n, 3) in rad -> RELION pose matrices A = R(r)^T, (n, 3, 3)."""
    r = torch.as_tensor(np.asarray(pose, dtype=np.float64))
    return axis_angle_to_matrix(r).transpose(-1, -2).numpy()


def matrix_to_cryosparc_pose(rotations: np.ndarray) -> np.ndarray:
    """RELION pose matrices A (n, 3, 3) -> cryoSPARC rotation vectors (n, 3) in rad (inverse of above)."""
    from cryopose.geometry.rotations import matrix_to_axis_angle

    a = torch.as_tensor(np.asarray(rotations, dtype=np.float64))
    return matrix_to_axis_angle(a.transpose(-1, -2)).numpy()


def _f64(values: np.ndarray) -> np.ndarray:
    """float32 fields -> float64 via their shortest decimal form (1.345, not 1.34500014782)."""
    values = np.asarray(values)
    if values.dtype == np.float32:
        return values.astype(str).astype(np.float64)
    return values.astype(np.float64)


def _decode(values: np.ndarray) -> list[str]:
    out = []
    for v in values:
        s = v.decode("utf-8", errors="replace") if isinstance(v, (bytes, np.bytes_)) else str(v)
        out.append(s[1:] if s.startswith(">") else s)
    return out


def read_cryosparc(path: str | os.PathLike, apix: float | None = None) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` file as a RELION-style ``ParticleSet`` (no optics table).

    apix (A/px) is used when the file has no blob/psize_A.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cryoSPARC file {path} does not exist; check the path")
    try:
        cs = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path} is not a cryoSPARC .cs file (numpy could not read it: {exc})") from None
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None or cs.ndim != 1:
        raise UserError(f"{path} is not a cryoSPARC .cs file (expected a numpy structured array of particles)")
    fields = set(cs.dtype.names)
    n = len(cs)
    table = pd.DataFrame(index=range(n))

    if "blob/path" in fields:
        paths = _decode(cs["blob/path"])
        idx = cs["blob/idx"].astype(np.int64) if "blob/idx" in fields else np.zeros(n, dtype=np.int64)
        table["rlnImageName"] = [f"{i + 1:06d}@{p}" for i, p in zip(idx, paths)]

    pixel = None
    if "blob/psize_A" in fields:
        pixel = _f64(cs["blob/psize_A"])
    elif apix is not None:
        pixel = np.full(n, float(apix))
    if "blob/shape" in fields:
        table["rlnImageSize"] = np.asarray(cs["blob/shape"]).reshape(n, -1)[:, 0].astype(np.int64)

    def copy(field: str, column: str, scale: float = 1.0) -> None:
        if field in fields:
            table[column] = _f64(cs[field]) * scale if scale != 1.0 else _f64(cs[field])

    copy("ctf/df1_A", "rlnDefocusU")
    copy("ctf/df2_A", "rlnDefocusV")
    copy("ctf/df_angle_rad", "rlnDefocusAngle", 180.0 / np.pi)
    copy("ctf/accel_kv", "rlnVoltage")
    copy("ctf/cs_mm", "rlnSphericalAberration")
    copy("ctf/amp_contrast", "rlnAmplitudeContrast")
    copy("ctf/phase_shift_rad", "rlnPhaseShift", 180.0 / np.pi)
    copy("ctf/bfactor", "rlnCtfBfactor")
    copy("ctf/scale", "rlnCtfScalefactor")
    if pixel is not None:
        table["rlnImagePixelSize"] = pixel
    if "ctf/exp_group_id" in fields:
        table["rlnOpticsGroup"] = cs["ctf/exp_group_id"].astype(np.int64) + 1

    for kind in ("alignments3D", "alignments2D"):
        if f"{kind}/class" in fields:
            table["rlnClassNumber"] = cs[f"{kind}/class"].astype(np.int64) + 1
            break

    if "alignments3D/pose" in fields:
        a = cryosparc_pose_to_matrix(cs["alignments3D/pose"])
        angles = np.rad2deg(matrix_to_euler(torch.from_numpy(a)).numpy())
        table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = angles.T
        if "alignments3D/split" in fields:
            table["rlnRandomSubset"] = cs["alignments3D/split"].astype(np.int64) + 1
        _set_origins(table, cs, "alignments3D", pixel, path)
    elif "alignments2D/pose" in fields:
        table["rlnAnglePsi"] = np.rad2deg(cs["alignments2D/pose"].astype(np.float64))
        _set_origins(table, cs, "alignments2D", pixel, path)

    return ParticleSet(
        table=table,
        optics=None,
        extra_blocks={},
        source_dir=locate_image_folder(table, path),
        source_file=path.resolve(),
    )


def _set_origins(table: pd.DataFrame, cs: np.ndarray, kind: str, pixel: np.ndarray | None, path: Path) -> None:
    fields = cs.dtype.names or ()  # a structured array (checked by the reader)
    if f"{kind}/shift" not in fields:
        return
    shift_px = _f64(cs[f"{kind}/shift"]).reshape(len(cs), 2)
    if f"{kind}/psize_A" in fields:
        scale = _f64(cs[f"{kind}/psize_A"])
    elif pixel is not None:
        scale = pixel
    else:
        raise UserError(
            f"{path} has shifts in pixels but no pixel size (blob/psize_A); give the pixel size", option="apix"
        )
    table["rlnOriginXAngst"] = shift_px[:, 0] * scale
    table["rlnOriginYAngst"] = shift_px[:, 1] * scale
