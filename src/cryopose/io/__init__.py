"""Everything cryopose reads or writes: file formats, figures, checkpoints.

RELION STAR (3.0, 3.1+, 5), MRC maps and memory-mapped MRCS stacks, cryoSPARC ``.cs``
(-> ``ParticleSet``); figures and FSC tables (``plots``); atomic writing (``atomic``);
checkpoints and stores of finished chunks (``checkpoints``). The numerical packages never
touch files; the jobs (``cryopose.jobs``) and the CLI read and write through here.
"""

from cryopose.io.atomic import atomic_path, atomic_write, write_json_atomic, write_text_atomic
from cryopose.io.cryosparc import cryosparc_pose_to_matrix, matrix_to_cryosparc_pose, read_cryosparc
from cryopose.io.mrc import (
    ArrayImages,
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
    "ArrayImages",
    "atomic_path",
    "atomic_write",
    "write_text_atomic",
    "write_json_atomic",
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
    """Read a .star or .cs particle file by its extension.

    ``apix`` (Å/px) is used only where the file has no pixel size of its own; when it has
    one that differs, a note on the ``cryopose`` logger says which is used.
    """
    import logging
    from pathlib import Path

    import numpy as np

    from cryopose.errors import UserError

    suffix = Path(path).suffix.lower()
    if suffix == ".cs":
        particles = read_cryosparc(path, apix=apix)
    elif suffix == ".star":
        particles = read_star(path, apix=apix)
    else:
        raise UserError(f"{path}: unknown particle file type {suffix or '(none)'}; give a .star or .cs file")
    own = particles.pixel_size_or_none()
    if apix is not None and own is not None and np.any(np.abs(own - apix) > 1e-6 * apix):
        values = np.unique(np.round(own, 6))
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (" ..." if len(values) > 4 else "")
        logging.getLogger("cryopose").info(
            "note: %s has its own pixel size (%s A); it is used, not the given %g A", path, shown, apix
        )
    return particles
