"""Alignment: the scoring kernel, global projection matching, local search, map-to-map
alignment (numerical code on tensors; no files)."""

from cryopose.align.local_search import LocalSearchResult, LocalSearchSettings, local_search, rotation_ball
from cryopose.align.map_alignment import (
    MapAlignment,
    MapAlignmentSettings,
    align_map,
    apply_transform,
    transform_poses,
)
from cryopose.align.projection_matching import MatchResult, MatchSettings, build_gallery, match_images
from cryopose.align.scoring import PreparedParticles, Reference, make_reference, prepare_particles, score_poses

__all__ = [
    "LocalSearchResult",
    "LocalSearchSettings",
    "local_search",
    "rotation_ball",
    "MapAlignment",
    "MapAlignmentSettings",
    "align_map",
    "apply_transform",
    "transform_poses",
    "MatchResult",
    "MatchSettings",
    "build_gallery",
    "match_images",
    "PreparedParticles",
    "Reference",
    "make_reference",
    "prepare_particles",
    "score_poses",
]
