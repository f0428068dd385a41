"""The outputs of ``cryopose evaluate``: metrics.json, per_particle.star, report.md, the
figures and the maps of an :class:`~cryopose.jobs.evaluate.Evaluation`, written through io/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopose.geometry.grids import canonical_direction
from cryopose.geometry.rotations import euler_to_matrix, viewing_direction
from cryopose.io.atomic import write_json_atomic, write_text_atomic
from cryopose.io.evaluation_plots import plot_direction_distributions, plot_error_vs_confidence, plot_pose_errors
from cryopose.io.mrc import write_map
from cryopose.io.plots import plot_central_slices, plot_fsc_curves
from cryopose.io.star import write_star
from cryopose.particles import CONFIDENCE_COLUMN, TRUE_ANGLE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.evaluate import Evaluation

__all__ = ["write_evaluation", "evaluation_report"]


def _rot_tilt(rotations: np.ndarray, sym: str) -> np.ndarray:
    """(rot, tilt) in deg of the viewing directions, moved into the asymmetric unit."""
    d = canonical_direction(viewing_direction(torch.from_numpy(rotations)), sym)
    return np.degrees(np.stack([torch.atan2(d[:, 1], d[:, 0]).numpy(), torch.acos(d[:, 2].clamp(-1, 1)).numpy()], 1))


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def evaluation_report(ev: Evaluation, title: str, written: set[str]) -> str:
    """report.md of an evaluation, naming the figures in ``written``."""
    m = ev.metrics
    pose = m["pose"]
    lines = [
        f"# {title}",
        "",
        f"{m['n_particles']} particles ({m['n_half1']} in half 1, {m['n_half2']} in half 2; halves from "
        f"{m['half_sets_from']}), symmetry {m['symmetry']}. Metrics of CESPED (Sanchez-Garcia et al.): "
        "MAnE and wMAnE (weights: the ground truth's rlnMaxValueProbDistribution), dPCC = PCC(GT0, GT1) - "
        "PCC(GT, V), dFSCR = FSCR(GT, V) - FSCR(GT0, GT1) (Å; positive: V is worse).",
        "",
    ]
    mt = m["matching"]
    if mt["n_truth_without_prediction"]:
        lines += [
            f"**{mt['n_truth_without_prediction']} of {mt['n_truth']} ground-truth particles have no prediction "
            "and are left out.**",
            "",
        ]
    lines += [
        "## Pose errors",
        "",
        "| error | median | mean | weighted mean (wMAnE) | "
        + " | ".join(f"< {t:g}°" for t in map(float, pose["angular_error_deg"]["fraction_below"]))
        + " |",
        "| --- | --- | --- | --- |" + " --- |" * len(pose["angular_error_deg"]["fraction_below"]),
    ]
    for label, key in (
        ("angular (°)", "angular_error_deg"),
        ("viewing direction (°)", "direction_error_deg"),
        ("in-plane (°)", "in_plane_error_deg"),
    ):
        s = pose[key]
        wm = _fmt(s["weighted_mean"]) if key == "angular_error_deg" else ""
        fr = " | ".join(f"{100 * v:.1f}%" for v in s["fraction_below"].values())
        lines.append(f"| {label} | {_fmt(s['median'])} | {_fmt(s['mean'])} | {wm} | {fr} |")
    sh = pose["shift_error_angstrom"]
    if sh is not None:
        lines.append(
            f"| shift (Å) | {_fmt(sh['median'])} | {_fmt(sh['mean'])} | | "
            + " | ".join("" for _ in pose["angular_error_deg"]["fraction_below"])
            + " |"
        )
    lines += [
        "",
        f"MAnE {_fmt(pose['MAnE_deg'])}°, wMAnE {_fmt(pose['wMAnE_deg'])}°, median "
        f"{_fmt(pose['median_angular_error_deg'])}°."
        + ("" if sh is not None else " The predictions have no origins: no shift error; maps use the true origins."),
        "",
        "| half | particles | median (°) | MAnE (°) | wMAnE (°) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for h, s in pose["by_half"].items():
        lines.append(
            f"| {h} | {s['n']} | {_fmt(s['median_angular_error_deg'])} | {_fmt(s['MAnE_deg'])} | "
            f"{_fmt(s['wMAnE_deg'])} |"
        )
    conf = pose["confidence"]
    if conf is not None:
        top = conf["most_confident"]
        lines += [
            "",
            f"Predicted confidence (cryoposeConfidence, {conf['n']} particles): Spearman correlation with "
            f"the angular error {_fmt(conf['spearman_confidence_vs_error'], 3)} (negative: confident predictions "
            f"are better); the most confident {100 * top['fraction']:.0f}% ({top['n']}) have median error "
            f"{_fmt(top['median'])}° and mean {_fmt(top['mean'])}°.",
        ]
    lines += [
        "",
        "![errors](errors.png)",
        "",
        "`errors.png`: histograms of the per-particle angular error (geodesic, minimised over the symmetry "
        "group), viewing-direction error, in-plane error and shift error, with the median (black) and mean "
        "(red dashed).",
    ]
    if "confidence.png" in written:
        what = "the predicted confidence" if conf is not None else "the ground truth's rlnMaxValueProbDistribution"
        lines += [
            "",
            "![confidence](confidence.png)",
            "",
            f"`confidence.png`: angular error against {what}, with the median error per decile of confidence; "
            "a useful confidence makes the red line fall from left to right.",
        ]
    lines += [
        "",
        "![directions](directions.png)",
        "",
        "`directions.png`: how the true and the predicted viewing directions (moved into the asymmetric unit) "
        "cover the sphere (Hammer equal-area projection, longitude rot, latitude 90° - tilt). A predictor that "
        "collapses views onto a few directions shows bright spots the truth lacks.",
    ]
    if "maps" in m:
        mp = m["maps"]
        lines += [
            "",
            "## Maps",
            "",
            f"Reconstructed with CTF weighting ({'on' if mp['ctf'] else 'off'}) and symmetry {m['symmetry']} at "
            f"{mp['pixel_size']:.3f} Å/px, box {mp['box']}; GT: {mp['gt_map']}; V = (V0 + V1)/2 from the "
            f"predicted poses; origins: {mp['origins']}. Mask: {mp['mask']['source']}"
            + (f" (threshold {mp['mask']['threshold']:.4g})" if "threshold" in mp["mask"] else "")
            + f", {100 * mp['mask']['fraction_of_box_above_half']:.1f}% of the box above 0.5.",
            "",
            "| | PCC(GT, V) | PCC(V0, V1) | PCC(GT0, GT1) | dPCC | FSCR0.143 (GT, V) | (V0, V1) | (GT0, GT1) "
            "| dFSCR0.143 (Å) | FSCR0.5 (GT, V) | (V0, V1) | (GT0, GT1) | dFSCR0.5 (Å) |",
            "| --- |" + " --- |" * 12,
        ]
        for kind in ("unmasked", "masked"):
            c = mp[kind]
            lines.append(
                f"| {kind} | {_fmt(c['pcc_gt_v'], 4)} | {_fmt(c['pcc_v0_v1'], 4)} | {_fmt(c['pcc_gt0_gt1'], 4)} | "
                f"{_fmt(c['delta_pcc'], 4)} | {_fmt(c['fscr_0143_gt_v'])} | {_fmt(c['fscr_0143_v0_v1'])} | "
                f"{_fmt(c['fscr_0143_gt0_gt1'])} | {_fmt(c['delta_fscr_0143'])} | {_fmt(c['fscr_05_gt_v'])} | "
                f"{_fmt(c['fscr_05_v0_v1'])} | {_fmt(c['fscr_05_gt0_gt1'])} | {_fmt(c['delta_fscr_05'])} |"
            )
        lines += [
            "",
            "Resolutions in Å (Nyquist when the FSC never falls below the threshold). Perfect predictions "
            "give PCC(GT, V) = 1, so dPCC = PCC(GT0, GT1) - 1: how far the ground truth's own halves "
            "disagree.",
            "",
            "![fsc](fsc.png) ![fsc masked](fsc_masked.png)",
            "",
            "`fsc.png`, `fsc_masked.png`: FSC of (GT, V), (V0, V1) and (GT0, GT1), without and with the mask. "
            "The gap between GT-V and GT0-GT1 is what the predicted poses lose.",
            "",
            "![slices](slices.png)",
            "",
            "`slices.png`: central slices of GT and V.",
        ]
    lines += [
        "",
        f"Computed on {m['device']} in {m['seconds']:.1f} s. All numbers are in `metrics.json`, the "
        "per-particle errors in `per_particle.star`.",
        "",
    ]
    return "\n".join(lines)


def write_evaluation(ev: Evaluation, out: Path, title: str = "Pose evaluation") -> list[str]:
    """Write an evaluation into the folder ``out`` (already claimed by the caller's
    ``output_folder``): metrics.json, per_particle.star, report.md, the figures and the maps
    it has. Returns the names written."""
    out = Path(out)
    written: list[str] = []
    m = ev.metrics
    pp = ev.per_particle
    sym = m["symmetry"]
    pixel_size = m.get("maps", {}).get("pixel_size")
    for name, vol in ev.maps.items():
        write_map(out / f"{name}.mrc", vol, pixel_size)
        written.append(f"{name}.mrc")
    write_star(pp, out / "per_particle.star")
    written.append("per_particle.star")
    table = pp.table
    shift = table["cryoposeShiftError"].to_numpy(dtype=float)
    plot_pose_errors(
        table["cryoposeAngularError"].to_numpy(dtype=float),
        table["cryoposeDirectionError"].to_numpy(dtype=float),
        table["cryoposeInPlaneError"].to_numpy(dtype=float),
        shift if np.isfinite(shift).any() else None,
        out / "errors.png",
        f"{len(pp)} particles, {sym}",
    )
    written.append("errors.png")
    if CONFIDENCE_COLUMN in table.columns:
        plot_error_vs_confidence(
            table["cryoposeAngularError"].to_numpy(dtype=float),
            table[CONFIDENCE_COLUMN].to_numpy(dtype=float),
            out / "confidence.png",
            "predicted confidence (cryoposeConfidence)",
        )
        written.append("confidence.png")
    elif (
        "rlnMaxValueProbDistribution" in table.columns
        and np.ptp(table["rlnMaxValueProbDistribution"].to_numpy(dtype=float)) > 0
    ):
        plot_error_vs_confidence(
            table["cryoposeAngularError"].to_numpy(dtype=float),
            table["rlnMaxValueProbDistribution"].to_numpy(dtype=float),
            out / "confidence.png",
            "ground-truth confidence (rlnMaxValueProbDistribution)",
        )
        written.append("confidence.png")
    true_angles = torch.deg2rad(torch.from_numpy(pp.finite_columns(TRUE_ANGLE_COLUMNS)))
    true_rot = euler_to_matrix(*true_angles.unbind(1)).numpy()
    predicted_rot = pp.rotations
    assert predicted_rot is not None  # the evaluated particles have their predicted poses
    plot_direction_distributions(
        _rot_tilt(true_rot, sym),
        _rot_tilt(predicted_rot, sym),
        out / "directions.png",
        f"viewing directions in the asymmetric unit of {sym}",
    )
    written.append("directions.png")
    if ev.comparisons:
        for kind, name in (("unmasked", "fsc.png"), ("masked", "fsc_masked.png")):
            c = ev.comparisons[kind]
            curves = [
                (
                    f"{a} vs {b}" if pair != "gt_v" else "GT vs V (predicted)",
                    c.fsc[pair].frequency.numpy(),
                    c.fsc[pair].fsc.numpy(),
                )
                for pair, (a, b) in (("gt_v", ("GT", "V")), ("v0_v1", ("V0", "V1")), ("gt0_gt1", ("GT0", "GT1")))
            ]
            plot_fsc_curves(curves, out / name, title=f"FSC, {kind}")
            written.append(name)
        gt = ev.maps.get("gt")
        if gt is not None:
            plot_central_slices([("GT", gt), ("V", ev.maps["pred"])], out / "slices.png")
            written.append("slices.png")
    write_json_atomic(out / "metrics.json", m)
    written.append("metrics.json")
    write_text_atomic(out / "report.md", evaluation_report(ev, title, set(written)))
    written.append("report.md")
    return written
