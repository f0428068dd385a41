"""File formats -> ``ParticleSet`` and maps; nothing else in cryopose touches files.

RELION STAR (3.0, 3.1+, 5), MRC maps and memory-mapped MRCS stacks, cryoSPARC ``.cs``.
"""

from cryopose.io.cryosparc import cryosparc_pose_to_matrix, matrix_to_cryosparc_pose, read_cryosparc
from cryopose.io.mrc import (
    ParticleImages,
    StackReader,
    StackWriter,
    open_stack,
    read_map,
    write_map,
    write_stack,
)
from cryopose.io.star import read_star, write_star
from cryopose.particles import ParticleSet

__all__ = [
    "ParticleSet",
    "read_star",
    "write_star",
    "read_map",
    "write_map",
    "open_stack",
    "StackReader",
    "ParticleImages",
    "write_stack",
    "StackWriter",
    "read_cryosparc",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
    "read_particles",
]


def read_particles(path, apix: float | None = None) -> ParticleSet:
    """Read a .star or .cs particle file by its extension (apix in A/px when the file has none)."""
    from pathlib import Path

    from cryopose.errors import UserError

    suffix = Path(path).suffix.lower()
    if suffix == ".cs":
        return read_cryosparc(path, apix=apix)
    if suffix == ".star":
        return read_star(path, apix=apix)
    raise UserError(f"{path}: unknown particle file type {suffix or '(none)'}; give a .star or .cs file")
