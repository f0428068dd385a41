"""Geometry of poses: RELION rotations, symmetry groups, orientation grids, distances."""

from cryopose.geometry.distances import *  # noqa: F401,F403
from cryopose.geometry.distances import __all__ as _distances_all
from cryopose.geometry.grids import *  # noqa: F401,F403
from cryopose.geometry.grids import __all__ as _grids_all
from cryopose.geometry.rotations import *  # noqa: F401,F403
from cryopose.geometry.rotations import __all__ as _rotations_all
from cryopose.geometry.symmetry import *  # noqa: F401,F403
from cryopose.geometry.symmetry import __all__ as _symmetry_all

__all__ = [*_rotations_all, *_symmetry_all, *_grids_all, *_distances_all]
