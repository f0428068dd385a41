"""Tests of cryopose.geometry: RELION rotations, symmetry groups, grids and distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryopose.errors import UserError
from cryopose.geometry import (
    REFERENCE_DIRECTION,
    angle_between,
    asymmetric_unit_mask,
    axis_angle_to_matrix,
    canonical_direction,
    direction_distance,
    direction_distance_matrices,
    direction_symmetry_matrices,
    directions_to_euler,
    euler_to_matrix,
    fibonacci_count,
    fibonacci_directions,
    geodesic_distance,
    local_rotation_grid,
    matrix_to_euler,
    matrix_to_quaternion,
    pairwise_direction_distance,
    pose_symmetry_operators,
    proper_symmetry_matrices,
    quaternion_to_matrix,
    random_directions_in_asu,
    random_rotations,
    rotation_distance,
    sample_directions,
    sample_rotations,
    sample_rotations_near_identity,
    symmetry_mates,
    symmetry_matrices,
    symmetry_order,
    viewing_direction,
)
from cryopose.geometry.symmetry import ICOSAHEDRAL_3FOLD_AXES

ALL_GROUPS = [
    "C1",
    "C2",
    "C4",
    "C7",
    "Ci",
    "Cs",
    "C5v",
    "C2v",
    "C3h",
    "C4h",
    "S4",
    "S6",
    "D2",
    "D3",
    "D7",
    "D2v",
    "D3v",
    "D3h",
    "D4h",
    "T",
    "Td",
    "Th",
    "O",
    "Oh",
    "I",
    "I1",
    "I2",
    "I3",
    "I4",
    "Ih",
    "I3h",
]
# (full order, proper order)
ORDERS = {
    "C1": (1, 1),
    "C4": (4, 4),
    "C7": (7, 7),
    "Ci": (2, 1),
    "Cs": (2, 1),
    "C5v": (10, 5),
    "C3h": (6, 3),
    "S4": (4, 2),
    "D2": (4, 4),
    "D7": (14, 14),
    "D3v": (12, 6),
    "D3h": (12, 6),
    "D4h": (16, 8),
    "T": (12, 12),
    "Td": (24, 12),
    "Th": (24, 12),
    "O": (24, 24),
    "Oh": (48, 24),
    "I": (60, 60),
    "I1": (60, 60),
    "I2": (60, 60),
    "I3": (60, 60),
    "I4": (60, 60),
    "Ih": (120, 60),
    "I3h": (120, 60),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _contains(group: torch.Tensor, m: torch.Tensor, tol: float = 1e-9) -> bool:
    return bool((group - m).abs().amax(dim=(-1, -2)).min() < tol)


def _rot(axis, fold: int) -> torch.Tensor:
    """Rotation by 360/fold degrees about ``axis`` (normalised here)."""
    a = torch.tensor(axis, dtype=torch.float64)
    return axis_angle_to_matrix(a / a.norm() * (2 * math.pi / fold))


# ---------------------------------------------------------------- rotations


def test_euler_matches_scipy_zyz():
    g = _gen(1)
    angles = (torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    a = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    ref = Rotation.from_euler("ZYZ", angles.numpy()).as_matrix()
    np.testing.assert_allclose(a.transpose(-1, -2).numpy(), ref, atol=1e-12)
    # viewing direction = third row of A = (cos rot sin tilt, sin rot sin tilt, cos tilt)
    rot, tilt = angles[:, 0], angles[:, 1]
    expected = torch.stack([rot.cos() * tilt.sin(), rot.sin() * tilt.sin(), tilt.cos()], -1)
    torch.testing.assert_close(viewing_direction(a), expected)


def test_euler_matrix_quaternion_round_trips():
    a = random_rotations(500, _gen(2))
    back = euler_to_matrix(*matrix_to_euler(a).unbind(-1))
    torch.testing.assert_close(back, a, atol=1e-10, rtol=0)
    q = matrix_to_quaternion(a)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(quaternion_to_matrix(q), a, atol=1e-12, rtol=0)
    ref_q = Rotation.from_matrix(a.numpy()).as_quat()  # (x, y, z, w)
    ref_q = np.concatenate([ref_q[:, 3:], ref_q[:, :3]], 1)
    ref_q *= np.sign(ref_q[:, :1])
    np.testing.assert_allclose(q.numpy(), ref_q, atol=1e-10)


@pytest.mark.parametrize("tilt", [0.0, math.pi, 1e-9, math.pi - 1e-9])
def test_euler_gimbal_lock(tilt):
    rot = torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64)
    psi = torch.tensor([0.5, 1.2, -3.0], dtype=torch.float64)
    a = euler_to_matrix(rot, torch.full_like(rot, tilt), psi)
    angles = matrix_to_euler(a)
    torch.testing.assert_close(euler_to_matrix(*angles.unbind(-1)), a, atol=1e-8, rtol=0)
    torch.testing.assert_close(angles[:, 1], torch.full_like(rot, tilt), atol=1e-8, rtol=0)


# ---------------------------------------------------------------- symmetry groups


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_group_is_closed_orthogonal_identity_first(name):
    g = symmetry_matrices(name)
    n = g.shape[0]
    assert n == symmetry_order(name)
    torch.testing.assert_close(g[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    torch.testing.assert_close(g @ g.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(g).abs(), torch.ones(n, dtype=torch.float64))
    # no duplicates
    diff = (g[:, None] - g[None]).abs().amax(dim=(-1, -2)) + torch.eye(n, dtype=torch.float64)
    assert diff.min() > 1e-6
    # closure and inverses
    prods = (g[:, None] @ g[None]).reshape(-1, 3, 3)
    dist = (prods[:, None] - g[None]).abs().amax(dim=(-1, -2)).amin(dim=1)
    assert dist.max() < 1e-9
    inv = g.transpose(-1, -2)
    assert all(_contains(g, m) for m in inv)
    # the proper part is a subgroup of rotations, identity first
    p = proper_symmetry_matrices(name)
    assert (torch.linalg.det(p) > 0).all()
    torch.testing.assert_close(p[0], torch.eye(3, dtype=torch.float64))
    assert n in (p.shape[0], 2 * p.shape[0])


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_group_orders(name):
    full, proper = ORDERS[name]
    assert symmetry_matrices(name).shape[0] == full
    assert proper_symmetry_matrices(name).shape[0] == proper


def test_names_case_insensitive_and_aliases():
    torch.testing.assert_close(symmetry_matrices("d7"), symmetry_matrices("D7"))
    torch.testing.assert_close(symmetry_matrices("i"), symmetry_matrices("I2"))
    torch.testing.assert_close(symmetry_matrices("ih"), symmetry_matrices("I2h"))
    assert symmetry_matrices("c4", dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("bad", ["X", "C", "I5", "Q3", "S3", "C4x", ""])
def test_unknown_symmetry_is_user_error(bad):
    with pytest.raises(UserError, match="valid forms"):
        symmetry_matrices(bad)


def test_relion_axis_conventions_cyclic_dihedral():
    # RELION src/symmetries.cpp, SymList::fill_symmetry_class:
    # CN "rot_axis N 0 0 1"; DN adds "rot_axis 2 1 0 0"; CNV adds "mirror_plane 0 1 0";
    # CNH/DNH add "mirror_plane 0 0 1"; DNV adds "mirror_plane 1 0 0"; CS "mirror_plane 0 0 1".
    c4 = symmetry_matrices("C4")
    assert _contains(c4, _rot((0, 0, 1), 4))
    assert torch.allclose(
        c4 @ torch.tensor([0, 0, 1.0], dtype=torch.float64), torch.tensor([0, 0, 1.0], dtype=torch.float64)
    )
    assert _contains(symmetry_matrices("D7"), torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64)))
    assert _contains(symmetry_matrices("D7"), _rot((0, 0, 1), 7))
    assert _contains(symmetry_matrices("C5v"), torch.diag(torch.tensor([1.0, -1, 1], dtype=torch.float64)))
    assert _contains(symmetry_matrices("D3h"), torch.diag(torch.tensor([1.0, 1, -1], dtype=torch.float64)))
    assert _contains(symmetry_matrices("D3v"), torch.diag(torch.tensor([-1.0, 1, 1], dtype=torch.float64)))
    assert _contains(symmetry_matrices("Cs"), torch.diag(torch.tensor([1.0, 1, -1], dtype=torch.float64)))
    assert _contains(symmetry_matrices("Ci"), -torch.eye(3, dtype=torch.float64))


def test_relion_axis_conventions_polyhedral():
    # RELION fill_symmetry_class: T "rot_axis 3 0 0 1", "rot_axis 2 0 0.816496 0.577350";
    # O "rot_axis 3 .5773502 .5773502 .5773502", "rot_axis 4 0 0 1".
    t = symmetry_matrices("T")
    assert _contains(t, _rot((0, 0, 1), 3))
    assert _contains(t, _rot((0, 0.816496, 0.577350), 2), tol=1e-5)
    o = symmetry_matrices("O")
    assert _contains(o, _rot((1, 1, 1), 3)) and _contains(o, _rot((0, 0, 1), 4))


# RELION fill_symmetry_class (the decimals as written there):
# I2 (= I): rot_axis 2 (0 0 1), 5 (0.525731114 0 0.850650807), 3 (0 0.356822076 0.934172364)
# I1: rot_axis 2 (1 0 0), 5 (0.85065080702670 0 -0.5257311142635), 3 (0.9341723640 0.3568220765 0)
# I3: rot_axis 2 (-0.5257311143 0 0.8506508070), 5 (0 0 1), 3 (-0.49112.. 0.35682.. 0.79465..)
# I4: rot_axis 2 (0.5257311143 0 0.8506508070), 5 (0.8944271932547096 0 0.4472135909903704),
#     3 (0.49112.. 0.35682.. 0.79465..)
RELION_ICOS_AXES = {
    "I1": [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635))],
    "I2": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807))],
    "I3": [(2, (-0.5257311143, 0, 0.8506508070)), (5, (0, 0, 1))],
    "I4": [(2, (0.5257311143, 0, 0.8506508070)), (5, (0.8944271932547096, 0, 0.4472135909903704))],
}


@pytest.mark.parametrize("name", ["I1", "I2", "I3", "I4"])
def test_relion_icosahedral_axes(name):
    g = symmetry_matrices(name)
    for fold, axis in RELION_ICOS_AXES[name]:
        assert _contains(g, _rot(axis, fold), tol=1e-7), (name, fold, axis)
    assert _contains(g, _rot(ICOSAHEDRAL_3FOLD_AXES[name], 3), tol=1e-7)
    # the four settings are different groups (I3 and I4 share the 5-fold on z; they are
    # mirror images through x -> -x)
    for other in RELION_ICOS_AXES:
        if other != name:
            h = symmetry_matrices(other)
            assert not all(_contains(h, m, tol=1e-6) for m in g)
    if name == "I3":
        flip = torch.diag(torch.tensor([-1.0, 1, 1], dtype=torch.float64))
        i4 = symmetry_matrices("I4")
        assert all(_contains(i4, flip @ m @ flip) for m in g)


@pytest.mark.parametrize("name", ["C4", "C5v", "D3h", "Td", "I3h", "Ci", "Cs"])
def test_pose_equivalence_preserves_projection(name):
    """Pose A and L_g A R_g project a symmetric point cloud to the same 2D point set."""
    g = symmetry_matrices(name)
    cloud = (g @ torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)).reshape(-1, 3)
    a = random_rotations(2, _gen(3))
    left, right = pose_symmetry_operators(name)
    for pose in a:
        eq = left @ pose @ right  # (G, 3, 3)
        assert (torch.linalg.det(eq) > 0).all()
        ref = (cloud @ pose.T)[:, :2]
        got = (cloud @ eq.transpose(-1, -2))[..., :2]  # (G, N, 2)
        dist = torch.cdist(got, ref.expand_as(got))
        assert dist.amin(dim=-1).max() < 1e-6 and dist.amin(dim=-2).max() < 1e-6


# ---------------------------------------------------------------- distances
@pytest.mark.parametrize("sym", ["C1", "C4", "D7", "O", "I2", "C5v", "D3h", "Ci"])
def test_symmetry_mates_are_the_equivalent_poses(sym):
    a = random_rotations(5, _gen(8))
    mates = symmetry_mates(a, sym)
    full, proper = ORDERS[sym]
    assert mates.shape == (5, full, 3, 3)
    torch.testing.assert_close(mates[:, 0], a)  # the identity first
    assert (torch.linalg.det(mates) > 0).all()  # proper poses, also for improper elements
    assert rotation_distance(a[:, None], mates, sym).max() < 1e-6
    if full > 1:  # distinct poses: none of the other mates is A itself
        assert geodesic_distance(a[:, None], mates[:, 1:]).min() > 1e-3
    rotations_only = symmetry_mates(a, sym, proper_only=True)
    assert rotations_only.shape == (5, proper, 3, 3)
    torch.testing.assert_close(rotations_only, a[:, None] @ proper_symmetry_matrices(sym))
    if full == proper:  # chiral: the same mates
        torch.testing.assert_close(rotations_only, mates)
    # any batch shape; float32 stays float32
    assert symmetry_mates(a[None, :2].float(), sym).shape == (1, 2, full, 3, 3)
    assert symmetry_mates(a.float(), sym).dtype == torch.float32


def test_local_rotation_grid_ball():
    ball = local_rotation_grid(math.radians(6), math.radians(2), dtype=torch.float64)
    assert ball.shape == (123, 3, 3)  # lattice points i^2 + j^2 + k^2 <= 9
    angle = torch.rad2deg(geodesic_distance(torch.eye(3, dtype=torch.float64), ball))
    assert angle[0] == 0 and angle[1:].min() > 2 - 1e-9 and angle.max() <= 6 + 1e-9
    assert (angle.diff() >= -1e-9).all()  # ordered by angle
    vectors = local_rotation_grid(math.radians(6), math.radians(2), as_matrices=False, dtype=torch.float64)
    assert vectors.shape == (123, 3)
    torch.testing.assert_close(torch.rad2deg(vectors.norm(dim=-1)), angle)
    torch.testing.assert_close(axis_angle_to_matrix(vectors), ball)
    steps = torch.rad2deg(vectors) / 2
    torch.testing.assert_close(steps, steps.round())  # on the lattice of 2 deg
    assert len(local_rotation_grid(1.0, 1.0)) == 7  # the identity and one step along each axis
    assert len(local_rotation_grid(0.5, 1.0)) == 1
    assert local_rotation_grid(0.1, 0.05).dtype == torch.float32


def test_local_rotation_grid_cube():
    r = 0.25
    cube = local_rotation_grid(r, r, shape="cube", as_matrices=False, dtype=torch.float64)
    assert cube.shape == (27, 3)
    assert (cube[13] == 0).all()  # the identity in the middle
    torch.testing.assert_close(cube[0], torch.full((3,), -r, dtype=torch.float64))  # lattice order, x slowest
    torch.testing.assert_close(cube[1], torch.tensor([-r, -r, 0.0], dtype=torch.float64))
    assert set(cube.flatten().tolist()) == {-r, 0.0, r}
    assert cube.norm(dim=-1).max() == pytest.approx(math.sqrt(3) * r)  # corners lie beyond the ball
    assert len(local_rotation_grid(r, r / 2, shape="cube")) == 125
    with pytest.raises(ValueError):
        local_rotation_grid(r, r, shape="sphere")


def test_sample_rotations_near_identity():
    everything = sample_rotations_near_identity(30.0)
    assert everything.shape[0] == sample_rotations(30.0).shape[0] + 1
    torch.testing.assert_close(everything[0], torch.eye(3, dtype=torch.float64))
    near = sample_rotations_near_identity(10.0, 25.0)
    angle = torch.rad2deg(geodesic_distance(torch.eye(3, dtype=torch.float64), near))
    assert angle[0] == 0 and angle.max() <= 25.0
    all_angles = torch.rad2deg(geodesic_distance(torch.eye(3, dtype=torch.float64), sample_rotations(10.0)))
    assert len(near) == int((all_angles <= 25.0).sum()) + 1 > 20


@pytest.mark.parametrize("sym", ["C1", "C4", "D7", "T", "O", "I2", "C5v", "D3h", "Ih"])
def test_distances_invariant_symmetric_zero(sym):
    g = _gen(4)
    a, b = random_rotations(64, g), random_rotations(64, g)
    left, right = pose_symmetry_operators(sym)
    d_ab = rotation_distance(a, b, sym)
    assert d_ab.shape == (64,)
    for k in torch.randint(0, left.shape[0], (4,), generator=g):
        torch.testing.assert_close(rotation_distance(a, left[k] @ b @ right[k], sym), d_ab)
    torch.testing.assert_close(rotation_distance(b, a, sym), d_ab)
    assert rotation_distance(a, a, sym).abs().max() < 1e-6
    assert (d_ab <= geodesic_distance(a, b) + 1e-12).all()

    d1, d2 = viewing_direction(a), viewing_direction(b)
    dd = direction_distance(d1, d2, sym)
    ops = direction_symmetry_matrices(sym)
    for k in range(min(4, ops.shape[0])):
        torch.testing.assert_close(direction_distance(d1, d2 @ ops[-k].T, sym), dd)
    torch.testing.assert_close(direction_distance(d2, d1, sym), dd)
    assert direction_distance(d1, d1, sym).abs().max() < 1e-7
    assert (dd <= angle_between(d1, d2) + 1e-12).all()
    torch.testing.assert_close(pairwise_direction_distance(d1, d2, sym).diagonal(), dd)
    torch.testing.assert_close(direction_distance_matrices(a, b, sym), dd)
    # broadcasting: (n, 1) against (1, m)
    torch.testing.assert_close(
        direction_distance(d1[:5, None], d2[None, :7], sym), pairwise_direction_distance(d1[:5], d2[:7], sym)
    )
    assert rotation_distance(a[:3, None], b[None, :4], sym).shape == (3, 4)


def test_direction_distance_small_angles_accurate():
    d1 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    eps = 1e-9
    d2 = torch.tensor([[math.sin(eps), 0.0, math.cos(eps)]], dtype=torch.float64)
    torch.testing.assert_close(direction_distance(d1, d2), torch.tensor([eps], dtype=torch.float64))
    # antipodes are not equivalent in C1; in C2 (about z) x and -x are
    x = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    assert abs(direction_distance(x, -x).item() - math.pi) < 1e-12
    assert direction_distance(x, -x, "C2").item() < 1e-12
    assert abs(direction_distance(x, -x, "C1").item() - math.pi) < 1e-12


# ---------------------------------------------------------------- grids


def test_fibonacci_and_euler_of_directions():
    d = fibonacci_directions(1000)
    assert d.shape == (1000, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(1000, dtype=torch.float64))
    rot, tilt = directions_to_euler(d)
    a = euler_to_matrix(rot, tilt, torch.zeros_like(rot))
    torch.testing.assert_close(viewing_direction(a), d)


@pytest.mark.parametrize("sym", ["C1", "C4", "D2", "D7", "T", "O", "I1", "I2", "I3", "I4", "C5v", "D3h"])
def test_asymmetric_unit_mask_fraction(sym):
    d = fibonacci_directions(60000)
    frac = asymmetric_unit_mask(d, sym).double().mean().item()
    k = direction_symmetry_matrices(sym).shape[0]
    assert abs(frac * k - 1) < 0.02


@pytest.mark.parametrize("sym", ["C4", "D7", "O", "I3", "D3h"])
def test_canonical_and_random_in_asu(sym):
    g = _gen(5)
    v = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    c = canonical_direction(v, sym)
    assert asymmetric_unit_mask(c, sym).all()
    torch.testing.assert_close(canonical_direction(c, sym), c)
    assert direction_distance(v, c, sym).max() < 1e-7
    r = random_directions_in_asu(3000, sym, generator=g)
    assert asymmetric_unit_mask(r, sym).all()
    # uniform on the ASU: mean distance to the reference matches that of the canonical set
    ref = torch.tensor(REFERENCE_DIRECTION, dtype=torch.float64)
    ref = ref / ref.norm()
    assert abs((r @ ref).mean() - (c @ ref).mean()) < 0.03


def _unique(points: np.ndarray) -> np.ndarray:
    drop = {max(p) for p in cKDTree(points).query_pairs(1e-7)}
    return np.delete(points, sorted(drop), axis=0)


@pytest.mark.parametrize(
    "sym,step", [("C1", 10.0), ("C4", 5.0), ("D2", 5.0), ("T", 5.0), ("O", 4.0), ("I2", 3.0), ("C5v", 5.0)]
)
def test_sample_directions_tile_the_sphere_once(sym, step):
    d = sample_directions(step, sym)
    assert asymmetric_unit_mask(d, sym).all()
    ops = direction_symmetry_matrices(sym)
    expanded = _unique(torch.einsum("kij,nj->kni", ops, d).reshape(-1, 3).numpy())
    n_c1 = fibonacci_count(step)
    assert abs(len(expanded) / n_c1 - 1) < 0.04
    tree = cKDTree(expanded)
    # min spacing between distinct expanded points
    chord, _ = tree.query(expanded, 2)
    assert np.degrees(2 * np.arcsin(chord[:, 1] / 2)).min() > step / 4
    # mean nearest-neighbour spacing ~ step
    assert 0.8 * step < np.degrees(2 * np.arcsin(chord[:, 1] / 2)).mean() < 1.2 * step
    # coverage of a dense test set
    dense = fibonacci_directions(20000).numpy()
    gap, _ = tree.query(dense)
    assert np.degrees(2 * np.arcsin(gap / 2)).max() < 1.1 * step


def test_sample_rotations_cover_so3_once():
    step, sym = 15.0, "C4"
    a = sample_rotations(step, sym)
    dirs = sample_directions(step, sym)
    on_axis = (dirs[:, :2].norm(dim=-1) < 1e-9).sum().item()  # the 4-fold axis: psi in [0, 90)
    assert a.shape == ((len(dirs) - on_axis) * 24 + on_axis * 6, 3, 3)
    torch.testing.assert_close(a @ a.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(a))
    # directions of the poses are the ASU directions; psi runs over [0, 2 pi)
    generic = dirs[:, :2].norm(dim=-1).argmax()
    first = int(torch.where(dirs[:, :2].norm(dim=-1) < 1e-9, 6, 24)[:generic].sum())
    block = a[first : first + 24]
    torch.testing.assert_close(viewing_direction(block), dirs[generic].expand(24, 3))
    assert torch.unique(matrix_to_euler(block)[:, 2].round(decimals=6)).numel() == 24
    # no two poses equivalent; every random pose close to one of them
    dist = rotation_distance(a[:, None], a[None], sym)
    dist = dist + torch.eye(len(a), dtype=torch.float64) * 10
    assert dist.min() > math.radians(step) / 4
    r = random_rotations(200, _gen(6))
    near = rotation_distance(r[:, None], a[None], sym).amin(dim=1)
    assert near.max() < math.radians(1.2 * step)


def test_sample_rotations_halves_psi_with_inversion():
    a = sample_rotations(30.0, "Ci")
    assert a.shape[0] == sample_directions(30.0, "Ci").shape[0] * 6
    assert rotation_distance(a[:, None], a[None], "Ci").fill_diagonal_(1).min() > math.radians(7)
