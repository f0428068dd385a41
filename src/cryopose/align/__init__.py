"""Alignment: the scoring kernel, global projection matching, local search, the rules of
local refinement and its per-chunk searches, map-to-map alignment (numerical code on
tensors; no files)."""

from cryopose.align.local_search import LocalSearchResult, LocalSearchSettings, local_search, ncc_log_likelihood
from cryopose.align.map_alignment import (
    MapAlignment,
    MapAlignmentSettings,
    align_map,
    apply_transform,
    transform_poses,
)
from cryopose.align.projection_matching import MatchResult, MatchSettings, build_gallery, match_images
from cryopose.align.refine_chunks import global_search_chunk, local_search_chunk, residual_power_chunk
from cryopose.align.refinement import (
    angular_step_for_resolution,
    chance_reasons,
    comparison_band,
    fsc_reference_weights,
    global_match_settings,
    local_search_schedule,
    map_content_resolution,
    poses_moving,
    reference_resolution,
    resolution_improved,
    shell_noise_power,
)
from cryopose.align.scoring import (
    GaussianNoise,
    PreparedParticles,
    Reference,
    make_reference,
    prepare_particles,
    residual_shell_power,
    score_poses,
    shell_sizes,
)

__all__ = [
    "LocalSearchResult",
    "LocalSearchSettings",
    "local_search",
    "ncc_log_likelihood",
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
    "GaussianNoise",
    "residual_shell_power",
    "shell_sizes",
    "angular_step_for_resolution",
    "fsc_reference_weights",
    "local_search_schedule",
    "resolution_improved",
    "shell_noise_power",
    "chance_reasons",
    "comparison_band",
    "global_match_settings",
    "map_content_resolution",
    "poses_moving",
    "reference_resolution",
    "residual_power_chunk",
    "local_search_chunk",
    "global_search_chunk",
]
