"""Alignment-quality validation (Vargas et al. 2017): precision/accuracy scores and the
per-chunk scoring on tensors. The job on files is ``cryopose.jobs.validate``."""

from cryopose.validate.pipeline import NoiseReferences, noise_references, score_chunk
from cryopose.validate.scores import (
    CONVENTIONS,
    XMIPP_XI,
    alpha_score,
    chi_score,
    noise_alpha,
    noise_chi,
    pair_distance,
    passes,
    quality_score,
    xmipp_noise,
)

__all__ = [
    "NoiseReferences",
    "noise_references",
    "score_chunk",
    "CONVENTIONS",
    "XMIPP_XI",
    "alpha_score",
    "chi_score",
    "noise_alpha",
    "noise_chi",
    "pair_distance",
    "passes",
    "quality_score",
    "xmipp_noise",
]
