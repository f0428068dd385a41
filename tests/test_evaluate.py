"""cryopose evaluate: every metric against an independent computation (scipy, numpy), then the
job on simulated particles (32 px) end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from scipy.spatial.transform import Rotation

from cli_helpers import BUNDLED, assert_user_error, run
from cryopose.evaluate import (
    EXPECTED_RANDOM_ERROR_C1,
    compare_maps,
    confident_subset_statistics,
    error_statistics,
    pose_errors,
    spearman_correlation,
)
from cryopose.imaging.filters import soft_mask_from_map
from cryopose.io import read_particles, write_star
from cryopose.reconstruct.fsc import map_correlation

RNG = np.random.default_rng(20240601)


def _poses(scipy_rotations: Rotation) -> torch.Tensor:
    """RELION matrices A from scipy rotations (A^T is the scipy rotation)."""
    return torch.from_numpy(np.transpose(scipy_rotations.as_matrix(), (0, 2, 1)).copy())


def _scipy_error(true: Rotation, pred: Rotation, group: Rotation) -> np.ndarray:
    """CESPED Eq. 5 with scipy: min over g of the angle of g trueR predR^-1 (R = A^T)."""
    return np.min(np.stack([(g * true * pred.inv()).magnitude() for g in group]), axis=0)


# --------------------------------------------------------------------------- pose errors
@pytest.mark.parametrize(
    "sym, group",
    [
        ("C1", Rotation.identity(1)),
        ("C4", Rotation.from_euler("z", [[0], [90], [180], [270]], degrees=True)),
        ("D2", Rotation.from_rotvec(np.pi * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]))),
    ],
)
def test_angular_error_is_scipy_geodesic_minimised_over_the_group(sym, group):
    true = Rotation.random(500, random_state=1)
    pred = Rotation.random(500, random_state=2)
    ours = pose_errors(_poses(pred), _poses(true), sym).angular.numpy()
    np.testing.assert_allclose(ours, _scipy_error(true, pred, group), atol=1e-9)


@pytest.mark.parametrize(
    "sym, elements",
    [
        ("C4", Rotation.from_euler("z", [[90], [180], [270]], degrees=True)),
        ("D2", Rotation.from_rotvec(np.pi * np.eye(3))),
        ("O", Rotation.create_group("O")),
    ],
)
def test_symmetry_mates_count_as_zero_error(sym, elements):
    true = Rotation.random(len(elements), random_state=3)
    # a mate of pose A is A g: as scipy rotations (A^T), g^-1 A^T
    mate = elements.inv() * true
    assert np.all(_scipy_error(true, mate, Rotation.identity(1)) > 0.1) or sym == "O"
    err = pose_errors(_poses(mate), _poses(true), sym)
    assert err.angular.max() < 1e-6
    assert err.direction.max() < 1e-6
    assert err.in_plane.max() < 1e-6


def test_a_mirror_mate_of_an_improper_group_counts_as_zero_error():
    # C2v has the mirror y -> -y: pose A is equivalent to J A M (J = diag(1, 1, -1))
    true = _poses(Rotation.random(50, random_state=4))
    mirror, flip = (
        torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)),
        torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)),
    )
    mate = flip @ true @ mirror
    assert torch.linalg.det(mate).min() > 0.999  # a proper rotation
    assert pose_errors(mate, true, "C2").angular.min() > 1e-3  # not a mate without the mirror
    assert pose_errors(mate, true, "C2v").angular.max() < 1e-6


def test_psi_only_and_tilt_only_perturbations_split_into_in_plane_and_direction():
    from cryopose.geometry.rotations import euler_to_matrix

    ang = torch.deg2rad(torch.tensor(RNG.uniform([-180, 20, -180], [180, 160, 180], (200, 3))))
    true = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    delta = torch.deg2rad(torch.tensor(RNG.uniform(-40, 40, 200)))
    psi = pose_errors(euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2] + delta), true)
    np.testing.assert_allclose(psi.in_plane, delta.abs(), atol=1e-9)
    np.testing.assert_allclose(psi.angular, delta.abs(), atol=1e-9)
    assert psi.direction.max() < 1e-7
    tilt = pose_errors(euler_to_matrix(ang[:, 0], ang[:, 1] + delta / 2, ang[:, 2]), true)
    np.testing.assert_allclose(tilt.direction, delta.abs() / 2, atol=1e-9)
    assert tilt.in_plane.max() < 1e-7


def test_in_plane_error_equals_the_residual_after_aligning_viewing_directions():
    """Independent construction: rotate the true pose by the minimal rotation Q (Rodrigues,
    numpy) that takes its viewing direction onto the predicted one; what is left of
    P (T Q^T)^T is a rotation about z whose angle is the in-plane error."""
    true, pred = Rotation.random(300, random_state=5), Rotation.random(300, random_state=6)
    t, p = _poses(true).numpy(), _poses(pred).numpy()
    expected = []
    for a, b in zip(t, p):
        d1, d2 = a[2], b[2]
        axis = np.cross(d1, d2)
        s, c = np.linalg.norm(axis), d1 @ d2
        k = axis / s
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        q = np.eye(3) + s * kx + (1 - c) * kx @ kx
        assert np.allclose(q @ d1, d2)
        rest = b @ (a @ q.T).T
        assert np.allclose(rest[2], [0, 0, 1], atol=1e-9)
        expected.append(abs(math.atan2(rest[1, 0], rest[0, 0])))
    err = pose_errors(torch.from_numpy(p), torch.from_numpy(t))
    np.testing.assert_allclose(err.in_plane.numpy(), expected, atol=1e-9)
    direction = np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", t[:, 2], p[:, 2]), -1, 1)))
    np.testing.assert_allclose(np.degrees(err.direction.numpy()), direction, atol=1e-6)


def test_random_poses_give_the_expected_mean_error():
    assert math.degrees(EXPECTED_RANDOM_ERROR_C1) == pytest.approx(126.48, abs=0.01)
    n = 20000
    true = Rotation.random(n, random_state=7)
    pred = Rotation.from_quat(true.as_quat())  # perfect
    all_random = pose_errors(_poses(Rotation.random(n, random_state=8)), _poses(true)).angular
    # the sd of the error of a random pose is sqrt(pi^2/12 - 4/pi^2) rad = 37 deg: 5 s.e. = 1.3 deg
    assert math.degrees(float(all_random.mean())) == pytest.approx(126.48, abs=1.3)
    replaced = RNG.permutation(n)[: n // 5]
    quats = pred.as_quat()
    quats[replaced] = Rotation.random(len(replaced), random_state=9).as_quat()
    err = pose_errors(_poses(Rotation.from_quat(quats)), _poses(true)).angular
    mane = math.degrees(float(err.mean()))
    assert mane == pytest.approx(0.2 * 126.48, abs=0.6)  # 5 s.e.
    assert float(err[np.setdiff1d(np.arange(n), replaced)].max()) < 1e-6


def test_shift_error_is_the_distance_of_the_origins():
    rot = _poses(Rotation.random(4, random_state=10))
    true_shift = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-3.0, 4.0], [5.5, -1.5]], dtype=torch.float64)
    pred_shift = true_shift + torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    err = pose_errors(rot, rot, "C1", pred_shift, true_shift)
    np.testing.assert_allclose(err.shift.numpy(), [5.0, 0.0, 1.0, math.sqrt(0.5)], atol=1e-12)


def test_error_statistics_match_numpy():
    e = RNG.gamma(2.0, 8.0, 1001)
    w = RNG.uniform(0, 1, 1001)
    s = error_statistics(torch.from_numpy(e), torch.from_numpy(w), (5, 10, 15, 30))
    assert s["mean"] == pytest.approx(np.mean(e))
    assert s["median"] == pytest.approx(np.median(e))
    assert s["weighted_mean"] == pytest.approx(np.average(e, weights=w))  # wMAnE, Eq. 6
    assert s["rms"] == pytest.approx(np.sqrt(np.mean(e**2)))
    for t in (5, 10, 15, 30):
        assert s["fraction_below"][str(t)] == pytest.approx(np.mean(e < t))
    even = error_statistics(torch.tensor([1.0, 2.0, 10.0, 20.0]))
    assert even["median"] == 6.0


def test_spearman_matches_scipy_with_ties():
    x = RNG.integers(0, 20, 500).astype(float)  # many ties
    y = 0.3 * x + RNG.normal(0, 3, 500)
    y[::7] = np.round(y[::7])
    assert spearman_correlation(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        stats.spearmanr(x, y).statistic, abs=1e-12
    )
    x[3] = np.nan  # NaN pairs are left out
    ok = np.isfinite(x)
    assert spearman_correlation(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        stats.spearmanr(x[ok], y[ok]).statistic, abs=1e-12
    )


def test_most_confident_subset():
    e = np.arange(100.0)
    conf = -e + RNG.normal(0, 1e-3, 100)  # most confident = smallest error
    s = confident_subset_statistics(torch.from_numpy(e), torch.from_numpy(conf), 0.75)
    assert s["n"] == 75
    assert s["median"] == pytest.approx(np.median(e[:75]))
    assert s["mean"] == pytest.approx(np.mean(e[:75]))


# --------------------------------------------------------------------------- map metrics
def _fsc_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC with shells round(|k|) on the half transform (RELION's), written here with numpy."""
    n = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1)
    r = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)).astype(int)
    out = []
    for s in range(n // 2 + 1):
        sel = r == s
        out.append(
            np.real(np.sum(fa[sel] * np.conj(fb[sel]))) / np.sqrt(np.sum(abs(fa[sel]) ** 2) * np.sum(abs(fb[sel]) ** 2))
        )
    return np.array(out)


def test_map_comparison_against_numpy():
    vol = torch.from_numpy(mrcfile.read(BUNDLED).astype(np.float64))
    gen = torch.Generator().manual_seed(0)
    noisy = [vol + 0.1 * torch.randn(vol.shape, generator=gen, dtype=torch.float64) for _ in range(4)]
    gt0, gt1, v0, v1 = noisy[0], noisy[1], noisy[2] + 0.05 * noisy[3], noisy[3]
    gt = 0.5 * (gt0 + gt1)
    mask, _ = soft_mask_from_map(vol, 5.7)
    m = mask.double()
    c = compare_maps(gt, gt0, gt1, v0, v1, 5.7, mask)
    v = 0.5 * (v0 + v1)
    # Eq. 7; masked: the maps times the mask, over the whole box (as CESPED's evaluator)
    assert c.pcc["gt_v"] == pytest.approx(np.corrcoef((gt * m).ravel(), (v * m).ravel())[0, 1], abs=1e-12)
    assert c.pcc["gt0_gt1"] == pytest.approx(np.corrcoef((gt0 * m).ravel(), (gt1 * m).ravel())[0, 1], abs=1e-12)
    assert map_correlation(gt, v) == pytest.approx(np.corrcoef(gt.ravel(), v.ravel())[0, 1], abs=1e-12)
    np.testing.assert_allclose(c.fsc["v0_v1"].fsc.numpy(), _fsc_numpy((v0 * m).numpy(), (v1 * m).numpy()), atol=1e-9)
    assert c.delta_pcc == pytest.approx(c.pcc["gt0_gt1"] - c.pcc["gt_v"])
    assert c.delta_fscr_0143 == pytest.approx(c.fsc["gt_v"].resolution_0143 - c.fsc["gt0_gt1"].resolution_0143)
    assert c.delta_fscr_05 == pytest.approx(c.fsc["gt_v"].resolution_05 - c.fsc["gt0_gt1"].resolution_05)
    perfect = compare_maps(gt, gt0, gt1, gt0, gt1, 5.7)
    assert perfect.pcc["gt_v"] == pytest.approx(1.0, abs=1e-12)
    assert perfect.delta_pcc == pytest.approx(perfect.pcc["gt0_gt1"] - 1.0)
    assert perfect.fsc["gt_v"].resolution_0143 == pytest.approx(2 * 5.7)  # never crosses: Nyquist


def test_automatic_mask_is_threshold_extended_then_soft():
    vol = torch.from_numpy(mrcfile.read(BUNDLED).astype(np.float32))
    mask, thr = soft_mask_from_map(vol, 5.7, threshold=0.5, lowpass=0.0, extend=17.1, soft_edge=28.5)  # 3 px, 5 px
    assert thr == 0.5
    core = vol.numpy() > 0.5
    yy, zz, xx = np.mgrid[-3:4, -3:4, -3:4]
    ball = xx**2 + yy**2 + zz**2 <= 9
    full = mask.numpy() == 1.0
    assert np.array_equal(full, ndimage.binary_dilation(core, ball))  # 1 exactly within 3 px
    reach = ndimage.distance_transform_edt(~core)
    assert np.all(mask.numpy()[reach >= 8] == 0) and np.all(mask.numpy()[(reach > 3) & (reach < 8)] > 0)
    assert mask.min() >= 0 and mask.max() <= 1
    auto, thr = soft_mask_from_map(vol, 5.7)
    assert thr == pytest.approx(
        0.2 * float(__import__("cryopose.imaging.filters", fromlist=["x"]).lowpass_volume(vol, 15, 5.7).max())
    )
    assert 0.02 < float((auto > 0.5).float().mean()) < 0.2


# --------------------------------------------------------------------------- the job
@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """360 particles, 32 px (the bundled map Fourier-cropped to 11.4 Å/px), SNR 1, CTF,
    origins up to 6 Å, with confidences."""
    root = tmp_path_factory.mktemp("evaluate_sim")
    import cryopose

    cryopose.simulate(BUNDLED, root, n=360, snr=1.0, max_shift=6.0, apix=11.4, box=32, seed=3)
    ps = read_particles(root / "particles.star")
    ps = ps.with_columns(rlnMaxValueProbDistribution=RNG.uniform(0.2, 1.0, len(ps)))
    write_star(ps, root / "truth.star")
    return root


def _prediction(
    truth_star: Path,
    out: Path,
    fraction_random: float = 0.0,
    seed: int = 0,
    shuffle: bool = True,
    confidence: bool = True,
    drop_origins: bool = False,
    rows=None,
) -> Path:
    """A prediction file: the truth with ``fraction_random`` of the poses replaced by random
    rotations (confidence 0.1 there, 0.9 elsewhere), rows shuffled."""
    ps = read_particles(truth_star)
    if rows is not None:
        ps = ps.subset(rows)
    rng = np.random.default_rng(seed)
    rot = ps.rotations.copy()
    k = int(round(fraction_random * len(ps)))
    replaced = rng.permutation(len(ps))[:k]
    rot[replaced] = np.transpose(Rotation.random(k, random_state=seed).as_matrix(), (0, 2, 1))
    conf = np.full(len(ps), 0.9)
    conf[replaced] = 0.1
    pred = ps.with_poses(rotations=rot)
    if confidence:
        pred = pred.with_columns(cryoposeConfidence=conf + rng.normal(0, 0.01, len(ps)))
    if drop_origins:
        pred = pred.with_table(pred.table.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"]))
    if shuffle:
        pred = pred.subset(rng.permutation(len(pred)))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_star(pred, out)
    return out


def _evaluate(args, capsys) -> dict:
    code, out, err = run(["evaluate", *args], capsys)
    assert code == 0, err
    folder = Path(args[args.index("--out") + 1])
    return json.loads((folder / "metrics.json").read_text())


def test_perfect_predictions(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star")
    m = _evaluate(["--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "ev"], capsys)
    pose = m["pose"]
    assert pose["MAnE_deg"] < 1e-4 and pose["wMAnE_deg"] < 1e-4 and pose["median_angular_error_deg"] < 1e-4
    assert pose["shift_error_angstrom"]["mean"] < 1e-4
    assert pose["angular_error_deg"]["fraction_below"]["5"] == 1.0
    for kind in ("unmasked", "masked"):
        c = m["maps"][kind]
        assert c["pcc_gt_v"] == pytest.approx(1.0, abs=1e-6)  # V = GT exactly
        assert c["delta_pcc"] == pytest.approx(c["pcc_gt0_gt1"] - 1.0, abs=1e-6)
        assert c["pcc_v0_v1"] == pytest.approx(c["pcc_gt0_gt1"], abs=1e-6)
        assert c["fscr_0143_gt_v"] == pytest.approx(2 * 11.4)
        assert c["delta_fscr_0143"] == pytest.approx(c["fscr_0143_gt_v"] - c["fscr_0143_gt0_gt1"])
    assert -0.05 < m["maps"]["masked"]["delta_pcc"] <= 0  # SNR 1: the truth's halves agree well
    folder = tmp_path / "ev"
    for name in (
        "report.md",
        "per_particle.star",
        "errors.png",
        "directions.png",
        "confidence.png",
        "fsc.png",
        "fsc_masked.png",
        "slices.png",
        "gt.mrc",
        "pred_half1.mrc",
        "mask.mrc",
    ):
        assert (folder / name).is_file(), name
    report = (folder / "report.md").read_text()
    assert "| angular (°) | 0.00 | 0.00 |" in report and "dPCC" in report
    assert not list(folder.glob(".evaluate_*"))  # checkpoints removed


def test_random_poses_raise_mane_and_the_map_deltas(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", fraction_random=0.2, seed=1)
    m = _evaluate(["--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "ev"], capsys)
    pp = read_particles(tmp_path / "ev" / "per_particle.star").table
    err = pp["cryoposeAngularError"].to_numpy()
    # 72 random poses: MAnE = 0.2 x 126.5 deg, s.e. 0.2 x 37/sqrt(72) = 0.9 deg
    assert m["pose"]["MAnE_deg"] == pytest.approx(0.2 * 126.48, abs=4.0)
    assert m["pose"]["MAnE_deg"] == pytest.approx(err.mean())
    assert m["pose"]["median_angular_error_deg"] < 1e-4  # 80% are exact
    w = pp["rlnMaxValueProbDistribution"].to_numpy()
    assert m["pose"]["wMAnE_deg"] == pytest.approx(np.average(err, weights=w))  # the truth's confidence
    truth = read_particles(sim / "truth.star")
    assert np.allclose(np.sort(w), np.sort(truth.table["rlnMaxValueProbDistribution"].to_numpy()))
    conf = m["pose"]["confidence"]
    assert conf["spearman_confidence_vs_error"] == pytest.approx(
        stats.spearmanr(pp["cryoposeConfidence"], err).statistic, abs=1e-9
    )
    assert conf["spearman_confidence_vs_error"] < -0.5
    assert conf["most_confident"]["median"] < 1e-4
    # the maps lose quality
    c = m["maps"]["masked"]
    assert c["pcc_gt_v"] < 0.999 and c["delta_pcc"] > m["maps"]["masked"]["pcc_gt0_gt1"] - 1 + 0.001
    # the map numbers from the written maps, computed here with numpy
    rd = {
        n: mrcfile.read(tmp_path / "ev" / f"{n}.mrc").astype(np.float64)
        for n in ("gt", "gt_half1", "gt_half2", "pred", "pred_half1", "pred_half2")
    }
    u = m["maps"]["unmasked"]
    assert u["pcc_gt_v"] == pytest.approx(np.corrcoef(rd["gt"].ravel(), rd["pred"].ravel())[0, 1], abs=1e-5)
    assert u["pcc_v0_v1"] == pytest.approx(
        np.corrcoef(rd["pred_half1"].ravel(), rd["pred_half2"].ravel())[0, 1], abs=1e-5
    )
    np.testing.assert_allclose(m["maps"]["fsc_curves"]["unmasked"]["gt_v"], _fsc_numpy(rd["gt"], rd["pred"]), atol=1e-4)
    np.testing.assert_allclose(rd["pred"], 0.5 * (rd["pred_half1"] + rd["pred_half2"]), atol=1e-6)


def test_two_files_relinked_elsewhere_are_matched_and_define_the_halves(sim, tmp_path, capsys):
    order = RNG.permutation(360)
    p1 = _prediction(
        sim / "truth.star",
        tmp_path / "elsewhere" / "half1.star",
        rows=np.sort(order[:180]),
        seed=2,
        fraction_random=0.1,
    )
    p2 = _prediction(sim / "truth.star", tmp_path / "elsewhere" / "half2.star", rows=np.sort(order[180:]), seed=3)
    assert (
        "../" in (tmp_path / "elsewhere" / "half1.star").read_text()
        or "/" in read_particles(p1).table["rlnImageName"][0]
    )
    m = _evaluate(
        ["--truth", sim / "particles.star", "--pred", p1, "--pred", p2, "--out", tmp_path / "ev", "--no-maps"], capsys
    )
    assert m["matching"]["n_matched"] == 360 and m["matching"]["n_matched_by_resolved_path"] == 360
    assert m["half_sets_from"].startswith("the two prediction files")
    assert m["pose"]["by_half"]["2"]["MAnE_deg"] < 1e-4 < m["pose"]["by_half"]["1"]["MAnE_deg"]
    pp = read_particles(tmp_path / "ev" / "per_particle.star")
    half = pp.table["rlnRandomSubset"].to_numpy()
    assert np.array_equal(np.flatnonzero(half == 1), np.sort(order[:180]))
    assert not (tmp_path / "ev" / "gt.mrc").exists()


def test_a_subset_of_predictions_is_evaluated_and_reported(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", rows=np.arange(0, 360, 2))
    code, _, err = run(
        ["evaluate", "--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "ev", "--no-maps"], capsys
    )
    assert code == 0, err
    assert "180 of the 360 ground-truth particles have no prediction" in err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_particles"] == 180 and m["matching"]["n_truth_without_prediction"] == 180
    assert "180 of 360 ground-truth particles have no prediction" in (tmp_path / "ev" / "report.md").read_text()


def test_per_particle_star_is_itself_a_prediction_with_its_truth(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", fraction_random=0.3, seed=4)
    first = _evaluate(["--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "a", "--no-maps"], capsys)
    # per_particle.star has the predictions in rlnAngle* and the truth in cryoposeTrue*: no --truth needed
    again = _evaluate(["--pred", tmp_path / "a" / "per_particle.star", "--out", tmp_path / "b", "--no-maps"], capsys)
    for key in ("MAnE_deg", "wMAnE_deg", "median_angular_error_deg"):
        assert again["pose"][key] == pytest.approx(first["pose"][key], abs=1e-6)
    assert again["pose"]["shift_error_angstrom"]["mean"] == pytest.approx(
        first["pose"]["shift_error_angstrom"]["mean"], abs=1e-6
    )
    # without the true origins there is no shift error to report
    pp = read_particles(tmp_path / "a" / "per_particle.star")
    write_star(
        pp.with_table(pp.table.drop(columns=["cryoposeTrueOriginXAngst", "cryoposeTrueOriginYAngst"])),
        tmp_path / "c.star",
    )
    third = _evaluate(["--pred", tmp_path / "c.star", "--out", tmp_path / "c", "--no-maps"], capsys)
    assert third["pose"]["shift_error_angstrom"] is None
    assert third["pose"]["MAnE_deg"] == pytest.approx(first["pose"]["MAnE_deg"], abs=1e-6)


def test_predictions_without_origins_are_reconstructed_with_the_true_ones(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", drop_origins=True, confidence=False)
    m = _evaluate(["--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "ev"], capsys)
    assert m["pose"]["shift_error_angstrom"] is None and m["pose"]["confidence"] is None
    assert m["maps"]["origins"] == "ground truth"
    assert m["maps"]["unmasked"]["pcc_gt_v"] == pytest.approx(1.0, abs=1e-6)
    assert "no shift error" in (tmp_path / "ev" / "report.md").read_text()


def test_symmetry_mates_give_the_ground_truth_map(sim, tmp_path, capsys):
    ps = read_particles(sim / "truth.star")
    g = np.array([np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])  # D2
    mates = ps.rotations @ g[RNG.integers(0, 4, len(ps))]
    write_star(ps.with_poses(rotations=mates), tmp_path / "mates.star")
    m = _evaluate(
        ["--truth", sim / "truth.star", "--pred", tmp_path / "mates.star", "--sym", "D2", "--out", tmp_path / "ev"],
        capsys,
    )
    assert m["pose"]["MAnE_deg"] < 1e-4
    assert m["maps"]["unmasked"]["pcc_gt_v"] == pytest.approx(1.0, abs=1e-5)
    c1 = _evaluate(
        ["--truth", sim / "truth.star", "--pred", tmp_path / "mates.star", "--out", tmp_path / "c1", "--no-maps"],
        capsys,
    )
    assert c1["pose"]["MAnE_deg"] > 90  # the same poses are wrong without the symmetry


def test_given_map_and_mask_are_used(sim, tmp_path, capsys):
    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", fraction_random=0.2, seed=5)
    first = _evaluate(["--truth", sim / "truth.star", "--pred", pred, "--out", tmp_path / "a"], capsys)
    shutil.copy(tmp_path / "a" / "gt.mrc", tmp_path / "gt_map.mrc")
    box = np.ones((32, 32, 32), dtype=np.float32)
    with mrcfile.new(tmp_path / "mask.mrc") as f:
        f.set_data(box)
        f.voxel_size = 11.4
    m = _evaluate(
        [
            "--truth",
            sim / "truth.star",
            "--pred",
            pred,
            "--map",
            tmp_path / "gt_map.mrc",
            "--mask",
            tmp_path / "mask.mrc",
            "--out",
            tmp_path / "b",
        ],
        capsys,
    )
    assert m["maps"]["gt_map"] == "given" and m["maps"]["mask"]["source"] == "given"
    for key in ("pcc_gt_v", "delta_pcc", "fscr_0143_gt_v"):  # the same GT, and a mask of ones = no mask
        assert m["maps"]["masked"][key] == pytest.approx(first["maps"]["unmasked"][key], abs=1e-5)
    assert not (tmp_path / "b" / "gt.mrc").exists() and not (tmp_path / "b" / "mask.mrc").exists()


def test_an_interrupted_evaluation_reuses_its_finished_reconstructions(sim, tmp_path, caplog):
    from cryopose.jobs.evaluate import EvaluateSettings, evaluate_predictions

    truth = read_particles(sim / "truth.star")
    pred = read_particles(_prediction(sim / "truth.star", tmp_path / "pred.star", fraction_random=0.2, seed=6))
    args = dict(settings=EvaluateSettings(), checkpoint_dir=tmp_path, signature={"run": 1})
    first = evaluate_predictions(truth, [pred], **args)
    assert (tmp_path / ".evaluate_gt_maps.pt").is_file() and (tmp_path / ".evaluate_pred_maps.pt").is_file()
    with caplog.at_level("INFO", logger="cryopose"):
        again = evaluate_predictions(truth, [pred], **args)
    assert caplog.text.count("reusing the") == 2
    assert again.metrics["maps"]["masked"] == first.metrics["maps"]["masked"]
    other = read_particles(_prediction(sim / "truth.star", tmp_path / "other.star", fraction_random=0.3, seed=7))
    caplog.clear()
    with caplog.at_level("INFO", logger="cryopose"):
        third = evaluate_predictions(truth, [other], **args)  # other poses: the GT maps are reused, V is not
    assert "reusing the gt" in caplog.text and "reusing the pred" not in caplog.text
    assert third.metrics["maps"]["masked"]["pcc_gt_v"] < first.metrics["maps"]["masked"]["pcc_gt_v"]


def test_python_api(sim, tmp_path):
    import cryopose
    import cryopose.evaluate  # noqa: F401  (the subpackage does not shadow the API function)

    pred = _prediction(sim / "truth.star", tmp_path / "pred.star", fraction_random=0.1, seed=8)
    m = cryopose.evaluate_poses(pred, tmp_path / "ev", truth=sim / "truth.star", reconstruct=False, symmetry="c1")
    assert m["symmetry"] == "C1" and "maps" not in m
    assert m["pose"]["MAnE_deg"] == pytest.approx(
        json.loads((tmp_path / "ev" / "metrics.json").read_text())["pose"]["MAnE_deg"]
    )


def test_train_runs_the_whole_protocol(sim, tmp_path, capsys):
    """``evaluate --train``: one model per half, each half predicted by the other half's
    model, then the evaluation of those predictions."""
    m = _evaluate(
        [
            "--truth",
            sim / "truth.star",
            "--train",
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--no-maps",
            "--out",
            tmp_path / "proto",
        ],
        capsys,
    )
    folder = tmp_path / "proto"
    for name in (
        "train/half1/model.pt",
        "train/half2/model.pt",
        "predict/particles.star",
        "truth_halves.star",
        "metrics.json",
        "protocol.json",
    ):
        assert (folder / name).is_file(), name
    protocol = json.loads((folder / "protocol.json").read_text())
    assert protocol["prediction"]["cross_half_prediction"] is True and protocol["training"]["halves"] is True
    pred = read_particles(folder / "predict" / "particles.star")
    halves = read_particles(folder / "truth_halves.star").half_sets
    assert np.array_equal(pred.half_sets, halves) and set(np.unique(halves)) == {1, 2}
    assert 0 < m["pose"]["MAnE_deg"] <= 180 and m["n_particles"] == 360
    assert_user_error(
        ["evaluate", "--truth", sim / "truth.star", "--train", "--pred", sim / "truth.star", "--out", tmp_path / "x"],
        capsys,
        "not both",
    )
    assert_user_error(
        ["evaluate", "--pred", sim / "truth.star", "--epochs", "2", "--out", tmp_path / "x"], capsys, "--train"
    )


def test_fsc_and_evaluate_give_one_masked_pcc(tmp_path):
    """`cryopose fsc --mask` and `cryopose evaluate` compute the masked PCC the same way:
    the maps times the soft mask, correlated over the whole box (numpy as the reference)."""
    from cryopose.jobs.fsc import run_fsc

    vol = mrcfile.read(BUNDLED).astype(np.float64)
    noisy = vol + 0.2 * np.random.default_rng(1).standard_normal(vol.shape)
    mask, _ = soft_mask_from_map(torch.from_numpy(vol), 5.7)
    m = mask.double().numpy()
    assert 0 < np.mean((m > 0) & (m < 1)) < 0.5  # a soft edge: a hard 0.5 cut would give another number
    paths = []
    for name, data in (("a", vol), ("b", noisy), ("mask", m)):
        with mrcfile.new(tmp_path / f"{name}.mrc") as f:
            f.set_data(data.astype(np.float32))
            f.voxel_size = 5.7
        paths.append(tmp_path / f"{name}.mrc")
    _, summary = run_fsc(*paths)
    a, b = (mrcfile.read(p).astype(np.float64) for p in paths[:2])
    mm = mrcfile.read(paths[2]).astype(np.float64)
    expected = np.corrcoef((a * mm).ravel(), (b * mm).ravel())[0, 1]
    assert summary["pcc"] == pytest.approx(expected, abs=1e-9)
    c = compare_maps(
        torch.from_numpy(a),
        torch.from_numpy(a),
        torch.from_numpy(a),
        torch.from_numpy(b),
        torch.from_numpy(b),
        5.7,
        torch.from_numpy(mm),
    )
    assert c.pcc["gt_v"] == pytest.approx(summary["pcc"], abs=1e-9)
