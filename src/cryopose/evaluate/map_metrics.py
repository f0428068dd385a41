"""CESPED's map metrics (Sanchez-Garcia et al., seed 001, section 2.3, Eq. 7-10, appendix D).

From the ground-truth half maps GT0/GT1 (ground-truth poses of each half), the ground-truth
map GT, and the half maps V0/V1 reconstructed from the predicted poses of each half:
V = (V0 + V1) / 2 ("reconstructing the two half-maps and averaging them", section 2.5),
then PCC(GT, V), PCC(V0, V1), PCC(GT0, GT1) and the FSC resolutions at 0.5 and 0.143 of
the same three pairs, and the deltas against the ground truth's own half-map agreement:

- dPCC = PCC(GT0, GT1) - PCC(GT, V) (Eq. 9);
- dFSCR_t = FSCR_t(GT, V) - FSCR_t(GT0, GT1), in Å. Eq. 10 writes the difference of FSC
  values as FSC(GT0, GT1) - FSC(GT, V) (the loss of quality); as resolutions in Å the
  same loss is FSCR(GT, V) - FSCR(GT0, GT1), positive when V is worse, which is what the
  paper's tables report (Table 1: dFSCR_0.5 3.5 Å) and what CESPED's evaluator computes.

Perfect predictions give V = GT when GT is made like V (``ground_truth_map``), hence
PCC(GT, V) = 1 and dPCC = PCC(GT0, GT1) - 1 <= 0: dPCC measures the loss against the
half-map agreement, and is about 0 only when the ground-truth halves agree well.

PCC is Eq. 7 over all voxels. Masked: the PCC of the two maps each multiplied by the
(soft) mask, over the whole box, and the FSC of the masked maps (as CESPED's
``compute_stats`` does). FSC shells and the resolution at a threshold follow
``reconstruct.fsc`` (RELION's round(|k|) shells; the first crossing below the threshold,
interpolated; Nyquist if it never crosses). The paper's wording "the highest frequency k
such that FSC_k < t" is read as that first crossing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.reconstruct.fsc import FSCResult, fourier_shell_correlation, map_correlation

__all__ = ["ground_truth_map", "MapComparison", "compare_maps", "PAIRS"]

# the map pairs compared, by name: (first map, second map)
PAIRS = {"gt_v": ("GT", "V"), "v0_v1": ("V0", "V1"), "gt0_gt1": ("GT0", "GT1")}


def ground_truth_map(gt_half1: torch.Tensor, gt_half2: torch.Tensor) -> torch.Tensor:
    """GT = (GT0 + GT1) / 2: made from the ground-truth half maps exactly as V is made from
    V0 and V1 (CESPED's evaluator does the same), so that perfect predictions give V = GT."""
    return 0.5 * (gt_half1 + gt_half2)


@dataclass
class MapComparison:
    """PCCs, FSC curves and resolutions of the three pairs (keys of ``PAIRS``), and the
    deltas; for one mask (or none)."""

    pcc: dict[str, float]
    fsc: dict[str, FSCResult]
    delta_pcc: float
    delta_fscr_0143: float
    delta_fscr_05: float

    def to_dict(self) -> dict:
        """Numbers only (no curves): pcc_*, fscr_0143_*, fscr_05_* per pair, and the deltas."""
        out: dict = {f"pcc_{k}": v for k, v in self.pcc.items()}
        out.update({f"fscr_0143_{k}": r.resolution_0143 for k, r in self.fsc.items()})
        out.update({f"fscr_05_{k}": r.resolution_05 for k, r in self.fsc.items()})
        out.update(delta_pcc=self.delta_pcc, delta_fscr_0143=self.delta_fscr_0143, delta_fscr_05=self.delta_fscr_05)
        return out


def compare_maps(
    gt: torch.Tensor,
    gt_half1: torch.Tensor,
    gt_half2: torch.Tensor,
    v_half1: torch.Tensor,
    v_half2: torch.Tensor,
    pixel_size: float,
    mask: torch.Tensor | None = None,
) -> MapComparison:
    """CESPED's comparison of the maps from predicted poses with the ground truth (see the
    module), all maps (N, N, N) on one grid of ``pixel_size`` Å; V = (V0 + V1) / 2."""
    v = 0.5 * (v_half1 + v_half2)
    maps = {"GT": gt, "V": v, "GT0": gt_half1, "GT1": gt_half2, "V0": v_half1, "V1": v_half2}
    pcc = {k: map_correlation(maps[a], maps[b], mask) for k, (a, b) in PAIRS.items()}
    fsc = {k: fourier_shell_correlation(maps[a], maps[b], pixel_size, mask) for k, (a, b) in PAIRS.items()}
    return MapComparison(
        pcc=pcc,
        fsc=fsc,
        delta_pcc=pcc["gt0_gt1"] - pcc["gt_v"],
        delta_fscr_0143=fsc["gt_v"].resolution_0143 - fsc["gt0_gt1"].resolution_0143,
        delta_fscr_05=fsc["gt_v"].resolution_05 - fsc["gt0_gt1"].resolution_05,
    )
