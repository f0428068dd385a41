"""Benchmarking pose estimators the CESPED way (Sanchez-Garcia et al., seed 001): per-particle
pose errors and their summaries (MAnE, wMAnE, ...), and the comparison of maps from
predicted poses with the ground truth (PCC, FSC resolution, dPCC, dFSCR). Pure functions
on tensors; the job on files is ``cryopose.jobs.evaluate``."""

from cryopose.evaluate.map_metrics import PAIRS, MapComparison, compare_maps, ground_truth_map
from cryopose.evaluate.pose_errors import (
    EXPECTED_RANDOM_ERROR_C1,
    PoseErrors,
    confident_subset_statistics,
    error_statistics,
    in_plane_angle,
    pose_errors,
    spearman_correlation,
)

__all__ = [
    "PAIRS",
    "MapComparison",
    "compare_maps",
    "ground_truth_map",
    "EXPECTED_RANDOM_ERROR_C1",
    "PoseErrors",
    "confident_subset_statistics",
    "error_statistics",
    "in_plane_angle",
    "pose_errors",
    "spearman_correlation",
]
