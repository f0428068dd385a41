"""Pose learning: the SO(3) tools against formulas and known values, the estimators' heads,
the losses, and the training loop (resume is exact)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from cryopose.geometry.distances import symmetry_mates
from cryopose.geometry.rotations import (
    axis_angle_to_matrix,
    geodesic_distance,
    matrix_to_quaternion,
    random_rotations,
)
from cryopose.learn import losses, models, so3
from cryopose.learn.train import TrainingData, TrainSettings, predict_poses, train_estimator

SMALL = {"channels": (8, 16), "degree": 4, "grid_order": 1}


# ---------------------------------------------------------------------- SO(3) tools
def test_quaternion_head_gradient_float64():
    torch.manual_seed(0)
    v = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)

    def f(x):
        q, _ = so3.quaternion_from_symmetric(so3.symmetric_from_triangle(x))
        return q

    assert torch.autograd.gradcheck(f, (v,), eps=1e-6, atol=1e-5)


def test_quaternion_is_the_smallest_eigenvector():
    q0 = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.7, 0.4]], dtype=torch.float64), dim=-1)
    A = torch.eye(4, dtype=torch.float64) * 5 - 4 * q0.T @ q0  # q0 has eigenvalue 1, the rest 5
    q, lam = so3.quaternion_from_symmetric(A[None])
    assert torch.allclose(q.abs(), q0.abs(), atol=1e-10)
    assert torch.allclose(lam, torch.tensor([[1.0, 5.0, 5.0, 5.0]], dtype=torch.float64))


def test_bingham_dispersions_match_the_paper():
    lam = torch.tensor([[0.5, 2.0, 3.5, 7.0]])
    disp, lam_max, trace = so3.bingham_dispersions(lam)
    # Lambda_i = lambda_1 - lambda_{5-i}: (0.5 - 7, 0.5 - 3.5, 0.5 - 2)
    assert torch.allclose(disp, torch.tensor([[-6.5, -3.0, -1.5]]))
    assert float(lam_max) == pytest.approx(-1.5)
    assert float(trace) == pytest.approx(-11.0)


def test_quaternion_distance_is_the_geodesic():
    a = random_rotations(50, torch.Generator().manual_seed(1))
    b = random_rotations(50, torch.Generator().manual_seed(2))
    d = so3.quaternion_distance(matrix_to_quaternion(a), matrix_to_quaternion(b))
    assert torch.allclose(d, geodesic_distance(a, b), atol=1e-5)


def test_symmetry_mate_counts_as_zero():
    a = random_rotations(10, torch.Generator().manual_seed(3))
    rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi], dtype=torch.float64))
    mate = a @ rz  # A R_g for the C2 operator about z
    d = so3.symmetric_quaternion_distance(matrix_to_quaternion(mate), matrix_to_quaternion(symmetry_mates(a, "C2")))
    assert float(d.max()) < 1e-3  # the distance's floor: dot products are clamped below 1 - 1e-7
    d1 = so3.symmetric_quaternion_distance(matrix_to_quaternion(mate), matrix_to_quaternion(symmetry_mates(a, "C1")))
    assert float(d1.min()) > 1.0


def test_healpix_base_pixels_are_those_of_the_paper():
    # nside = 1 (Gorski et al. 2005, fig. 3): 4 pixels at z = 2/3 (phi = pi/4 + k pi/2),
    # 4 on the equator (phi = k pi/2) and 4 at z = -2/3
    d = so3.healpix_directions(0)
    assert d.shape == (12, 3)
    z = d[:, 2].numpy()
    assert np.allclose(np.sort(z), [-2 / 3] * 4 + [0] * 4 + [2 / 3] * 4, atol=1e-12)
    quarter = np.arctan2(d[:, 1].numpy(), d[:, 0].numpy()) / (np.pi / 2)  # phi in quarter turns
    assert np.allclose(np.sort(np.mod(quarter[:4], 4)), [0.5, 1.5, 2.5, 3.5])
    assert np.allclose(np.sort(np.mod(np.round(quarter[4:8], 9), 4)), [0, 1, 2, 3])


def test_healpix_directions_are_uniform():
    d = so3.healpix_directions(3)
    assert d.shape == (768, 3)
    assert torch.allclose(d.norm(dim=1), torch.ones(768, dtype=torch.float64))
    second = d.T @ d / len(d)  # isotropic: E[d d^T] = I / 3
    assert torch.allclose(second, torch.eye(3, dtype=torch.float64) / 3, atol=2e-3)


def test_healpix_rotation_grid_covers_so3():
    grid = so3.healpix_rotations(1, dtype=torch.float64)
    assert grid.shape == (576, 3, 3)
    x = random_rotations(300, torch.Generator().manual_seed(4))
    nearest = geodesic_distance(x[:, None], grid[None]).amin(dim=1)
    assert float(nearest.max()) < so3.grid_spacing(1)


# ---------------------------------------------------------------------- band-limited head
def test_band_limited_basis_is_invariant_under_rotation():
    """The span of the basis is the functions of degree <= L on SO(3): right translation
    f(g h) stays in it, and it has sum (2l + 1)^2 dimensions."""
    keys, w = models._harmonic_basis(3, 1)
    assert w.shape == (84, 84)  # 1 + 9 + 25 + 49
    grid = so3.healpix_rotations(1, dtype=torch.float64)
    basis = models._monomials(grid, keys) @ w
    assert torch.allclose(basis.T @ basis / len(grid), torch.eye(84, dtype=torch.float64), atol=1e-8)
    h = random_rotations(1, torch.Generator().manual_seed(5))[0]
    moved = models._monomials(grid @ h, keys) @ w
    coefficients = torch.linalg.lstsq(basis, moved).solution
    assert float((basis @ coefficients - moved).abs().max()) < 1e-8
    # a function outside the span (degree 5 in the entries) is not represented
    outside = (grid[:, 0, 0] ** 5)[:, None]
    fit = basis @ torch.linalg.lstsq(basis, outside).solution
    assert float((fit - outside).abs().max()) > 1e-3


def test_grid_estimator_recovers_a_peak_between_grid_points():
    torch.manual_seed(0)
    model = models.build_estimator({"model": "grid", **SMALL}).eval()
    head = model.head
    target = random_rotations(1, torch.Generator().manual_seed(6)).float()
    with torch.no_grad():  # logits = 40 * (band-limited delta at target), whatever the image
        head.coefficients.weight.zero_()
        head.coefficients.bias.copy_(40 * (models._monomials(target, head.monomials) @ head.projection)[0])
    out = model.predict(torch.randn(2, 1, 16, 16))
    err = torch.rad2deg(geodesic_distance(out["rotations"].double(), target.double()))
    grid_err = math.degrees(float(geodesic_distance(head.grid.double(), target.double()).min()))
    assert float(err.max()) < 1.0 < grid_err  # finer than the grid
    assert torch.all(out["confidence"] > 0.2) and torch.all(out["confidence"] <= 1.0)


def test_forum_estimator_gives_the_head_quaternion_and_dispersions():
    torch.manual_seed(0)
    model = models.build_estimator({"model": "forum", **SMALL, "auxiliary_grid": False}).eval()
    with torch.no_grad():
        model.head.weight.zero_()
    out = model.predict(torch.randn(3, 1, 16, 16))
    # the initial bias is L = diag(1, 2, 3, 4): A = diag(1, 4, 9, 16), q = (1, 0, 0, 0)
    assert torch.allclose(out["rotations"], torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(out["lambda_trace"], torch.full((3,), 3 * 1 - 4 - 9 - 16.0))
    assert torch.allclose(out["lambda_max"], torch.full((3,), 1 - 4.0))


def test_forum_default_head_symmetric_a_behind_a_hidden_layer():
    torch.manual_seed(0)
    config = {**models.default_network("forum"), **SMALL, "auxiliary_grid": False}
    assert config["qcqp"] == "symmetric" and config["head_hidden"] == 256
    model = models.build_estimator(config).eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
    out = model.predict(torch.randn(3, 1, 16, 16))
    # the bias is A = diag(1, 2, 3, 4) itself: q = (1, 0, 0, 0), Lambda = (1-4, 1-3, 1-2)
    assert torch.allclose(out["rotations"], torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(out["lambda_trace"], torch.full((3,), -6.0))
    assert torch.allclose(out["lambda_max"], torch.full((3,), -1.0))
    v = torch.arange(10.0)
    A = so3.symmetric_from_entries(v)
    assert torch.equal(A, A.T) and torch.equal(A[torch.triu_indices(4, 4).unbind()], v)


# ---------------------------------------------------------------------- losses
def test_curriculum_weights():
    assert losses.curriculum_weights(0.0) == (0.0, 1.0)
    assert losses.curriculum_weights(0.25) == pytest.approx((0.25, 0.5))
    assert losses.curriculum_weights(1.0) == pytest.approx((0.5, 0.0))


def test_forum_loss_terms():
    g = torch.Generator().manual_seed(7)
    true = random_rotations(16, g).float()
    pairs = losses.pair_indices(matrix_to_quaternion(true), "C1", "random", g)
    perfect = losses.forum_loss(matrix_to_quaternion(true), true, "C1", 0.5, pairs)
    assert float(perfect["geodesic"]) < 1e-3 and float(perfect["siamese"]) < 2e-3
    turned = true @ axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.3]))  # every pose off by 0.3 rad
    terms = losses.forum_loss(matrix_to_quaternion(turned), true, "C1", 0.25, pairs)
    assert float(terms["geodesic"]) == pytest.approx(0.3, abs=1e-3)
    beta1, beta2 = losses.curriculum_weights(0.25)
    expected = beta1 * 2 * float(terms["geodesic"]) + beta2 * float(terms["siamese"])
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)


def test_stratified_pairs_balance_distances():
    g = torch.Generator().manual_seed(8)
    q = matrix_to_quaternion(random_rotations(200, g))
    i, j = losses.pair_indices(q, "C1", "stratified", g)
    d = losses.pairwise_distances(q, i, j, "C1")
    counts = torch.bincount((d / math.pi * 6).long().clamp(0, 5), minlength=6)
    # near pairs are rare among random poses (10 of the 1,600 candidates here): that bin
    # keeps all it has, every other bin the same number, n / bins
    assert counts.tolist() == [10, 33, 33, 33, 33, 33]
    assert torch.all(i != j)


def test_grid_targets_spread_over_symmetry_mates():
    grid = so3.healpix_rotations(1)
    gq = matrix_to_quaternion(grid)
    pose = grid[10:11]
    t1 = losses.grid_targets(pose, gq, "C1")
    assert float(t1[0, 10]) == 1.0 and float(t1.sum()) == 1.0
    t2 = losses.grid_targets(pose, gq, "C2")
    assert int((t2 > 0).sum()) == 2 and torch.allclose(t2[t2 > 0], torch.tensor([0.5, 0.5]))
    rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi]))
    other = int(torch.nonzero(t2[0]).flatten()[torch.nonzero(t2[0]).flatten() != 10][0])
    assert float(geodesic_distance(grid[other], pose[0] @ rz)) < so3.grid_spacing(1)


# ---------------------------------------------------------------------- training
def _toy(n: int = 96, size: int = 16, seed: int = 0) -> TrainingData:
    g = torch.Generator().manual_seed(seed)
    return TrainingData(
        torch.randn(n, 1, size, size, generator=g),
        random_rotations(n, g).float(),
        torch.randn(n, 2, generator=g),
        torch.ones(n),
        4.0,
    )


@pytest.mark.parametrize("kind", ["grid", "forum"])
def test_resumed_training_equals_uninterrupted(kind):
    settings = TrainSettings(network={"model": kind, **SMALL}, epochs=2, batch_size=32)
    train, val = _toy(), _toy(32, seed=1)
    straight = train_estimator(train, val, settings)

    saved = []

    def stop_after_first(state):
        saved.append(state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_estimator(train, val, settings, on_epoch=stop_after_first)
    resumed = train_estimator(train, val, settings, state=saved[0])
    assert resumed["epoch"] == 2 and len(resumed["history"]) == 2
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert straight["history"][1]["train_loss"] == resumed["history"][1]["train_loss"]


def test_training_lowers_the_loss_and_predicts_every_particle():
    settings = TrainSettings(network={"model": "grid", **SMALL}, epochs=4, batch_size=32, learning_rate=3e-3)
    train = _toy(64)
    state = train_estimator(train, None, settings)
    losses_ = [r["train_loss"] for r in state["history"]]
    assert losses_[-1] < losses_[0]
    model = models.build_estimator(state["config"])
    model.load_state_dict(state["best_model"])
    out = predict_poses(model, train.images, train.pixel_size, batch_size=20)
    assert out["rotations"].shape == (64, 3, 3) and out["origins_angstrom"].shape == (64, 2)
    assert np.allclose(np.linalg.det(out["rotations"]), 1.0, atol=1e-4)


def _ticking(step: float):
    """A clock whose every reading is ``step`` seconds after the last."""
    readings = itertools.count()
    return lambda: step * next(readings)


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def test_the_schedule_counts_epochs_not_the_clock():
    settings = TrainSettings(network={"model": "grid", **SMALL}, epochs=3, batch_size=32)
    slow = train_estimator(_toy(), None, settings, clock=_ticking(500.0))  # a machine 10^5 times busier
    fast = train_estimator(_toy(), None, settings, clock=_ticking(0.005))
    assert slow["epoch"] == fast["epoch"] == slow["planned_epochs"] == 3
    assert _same_weights(slow["model"], fast["model"])
    assert slow["history"][-1]["seconds"] > 1000 * fast["history"][-1]["seconds"]
    assert [r["learning_rate"] for r in slow["history"]] == [r["learning_rate"] for r in fast["history"]]


def test_the_learning_rate_warms_up_over_one_epoch_then_follows_a_cosine():
    from cryopose.learn.train import learning_rate_at

    assert learning_rate_at(1.0, 0.0, 10) == pytest.approx(0.1)
    assert learning_rate_at(1.0, 0.5, 10) == pytest.approx(0.55)
    assert learning_rate_at(1.0, 0.5, None) == learning_rate_at(1.0, 0.5, 3)  # the first epoch needs no length
    assert learning_rate_at(1.0, 1.0, 10) == pytest.approx(1.0)
    assert learning_rate_at(1.0, 5.5, 10) == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    assert learning_rate_at(1.0, 10.0, 10) == pytest.approx(0.01)


def test_a_time_budget_fixes_the_epochs_after_the_first_and_resumes_exactly():
    # the first epoch is timed at 15 s (two clock readings): a 1-minute budget plans 4 epochs
    settings = TrainSettings(network={"model": "grid", **SMALL}, minutes=1.0, batch_size=32)
    budget = train_estimator(_toy(), None, settings, clock=_ticking(15.0))
    assert budget["first_epoch_seconds"] == 15.0 and budget["planned_epochs"] == budget["epoch"] == 4
    assert budget["finished"] and budget["elapsed"] == 60.0
    by_epochs = train_estimator(
        _toy(), None, TrainSettings(network={"model": "grid", **SMALL}, epochs=4, batch_size=32)
    )
    assert _same_weights(budget["model"], by_epochs["model"])  # the same as asking for 8 epochs
    saved = []

    def stop_after_second(state):
        saved.append(state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_estimator(_toy(), None, settings, on_epoch=stop_after_second, clock=_ticking(15.0))
    resumed = train_estimator(_toy(), None, settings, state=saved[-1], clock=_ticking(50.0))  # busier after the restart
    assert resumed["planned_epochs"] == resumed["epoch"] == 4
    assert _same_weights(budget["model"], resumed["model"])
    # both: the smaller
    both = TrainSettings(network={"model": "grid", **SMALL}, minutes=1.0, epochs=3, batch_size=32)
    assert train_estimator(_toy(), None, both, clock=_ticking(15.0))["epoch"] == 3


# ---------------------------------------------------------------------- chance level
def test_chance_level_of_random_poses_matches_the_formula_and_monte_carlo():
    from scipy.optimize import brentq

    from cryopose.evaluate.pose_errors import chance_error_quantile
    from cryopose.geometry.distances import rotation_distance

    exact = brentq(lambda t: t - math.sin(t) - math.pi / 2, 0.0, math.pi)  # C1: P(angle < t) = (t - sin t) / pi
    assert math.degrees(chance_error_quantile("C1")) == pytest.approx(math.degrees(exact), abs=0.1)
    assert math.degrees(exact) == pytest.approx(132.35, abs=0.01)
    g = torch.Generator().manual_seed(5)
    for sym in ("C4", "C2v"):  # C2v has mirrors: mates J T g depend on the truth T
        errors = rotation_distance(random_rotations(100_000, g), random_rotations(100_000, g), sym)
        quartiles = [math.degrees(float(errors.quantile(q))) for q in (0.25, 0.5)]
        mine = [math.degrees(v) for v in chance_error_quantile(sym, [0.25, 0.5])]
        assert mine == pytest.approx(quartiles, abs=0.5), sym  # Monte Carlo: about 0.2 deg standard error
    assert math.degrees(chance_error_quantile("C4")) < 100  # symmetry lowers the chance level


def test_chance_threshold_rule():
    from cryopose.learn.train import at_chance, chance_level

    large, small = chance_level("C1", 100_000), chance_level("C1", 30)
    assert large["chance_median_deg"] == pytest.approx(132.35, abs=0.1)
    assert large["chance_threshold_deg"] == pytest.approx(0.9 * large["chance_median_deg"])  # the 10% margin
    assert small["chance_threshold_deg"] < 0.8 * small["chance_median_deg"]  # 4 standard errors of 30 medians
    assert at_chance(125.0, large) and not at_chance(100.0, large) and at_chance(float("nan"), large)


def _posed_toy(n: int, seed: int, shuffle: bool = False) -> TrainingData:
    """Images that are a fixed linear function of their pose's matrix (plus a little noise):
    an estimator can learn them in a few epochs; with the labels shuffled it cannot."""
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, g).float()
    patterns = torch.randn(9, 8, 8, generator=torch.Generator().manual_seed(99))
    images = torch.einsum("nk,kyx->nyx", rotations.reshape(n, 9), patterns)[:, None]
    images = images + 0.1 * torch.randn(images.shape, generator=g)
    if shuffle:
        rotations = rotations[torch.randperm(n, generator=g)]
    return TrainingData(images, rotations, torch.zeros(n, 2), torch.ones(n), 4.0)


def test_a_model_that_cannot_learn_is_flagged_at_chance_and_one_that_learns_is_not():
    settings = TrainSettings(network={"model": "grid", **SMALL}, epochs=6, batch_size=32, learning_rate=1e-2)
    learned = train_estimator(_posed_toy(256, 0), _posed_toy(64, 1), settings)
    shuffled = train_estimator(_posed_toy(256, 0, shuffle=True), _posed_toy(64, 1), settings)
    for state in (learned, shuffled):
        assert state["chance"]["chance_median_deg"] == pytest.approx(132.35, abs=0.1)
    assert learned["best_score"] < learned["chance"]["chance_threshold_deg"] and learned["at_chance"] is False
    assert shuffled["best_score"] > 110 and shuffled["at_chance"] is True
    assert (
        train_estimator(
            _posed_toy(64, 0), None, TrainSettings(network={"model": "grid", **SMALL}, epochs=1, batch_size=32)
        )["at_chance"]
        is None
    )
