"""Alignment-quality validation: formulas worked by hand, a simulated mixed set, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.align.projection_matching import MatchSettings
from cryopose.geometry.rotations import random_rotations
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io.mrc import ArrayImages, read_map, write_map, write_stack
from cryopose.io.star import write_star
from cryopose.jobs.validate import ValidationOptions, validate_particles
from cryopose.particles import ParticleSet
from cryopose.validate import scores as sc

MAP = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"
SHARED = Path(__file__).resolve().parents[2] / "shared"
TRPV1 = SHARED / "data" / "trpv1" / "trpv1_volume.mrc"

X, Y, Z = torch.eye(3, dtype=torch.float64)


# ----------------------------------------------------------------------------- by hand
def test_paper_formulas_by_hand():
    # directions z, x, -z: angles z-x = 90, z-(-z) = 180, x-(-z) = 90 deg; weights 1, 2, 1
    d = torch.stack([Z, X, -Z])[None]
    w = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    alpha = sc.alpha_score(d, w, "C1", "paper")
    # pairs n != n' (ordered): (z,x) w 2 d 90 x2, (z,-z) w 1 d 180 x2, (x,-z) w 2 d 90 x2
    num = 2 * (2 * 90 + 1 * 180 + 2 * 90)
    den = 2 * (2 + 1 + 2)
    assert math.degrees(alpha.item()) == pytest.approx(num / den)
    chi = sc.chi_score(Z[None], d, w, "C1", "paper")  # distances 0, 90, 180
    assert math.degrees(chi.item()) == pytest.approx((0 * 1 + 90 * 2 + 180 * 1) / 4)
    q = sc.quality_score(torch.tensor([30.0]), 90.0, torch.tensor([10.0]))
    assert q.item() == pytest.approx(60 / 80)
    assert sc.quality_score(torch.tensor([100.0]), 90.0, torch.tensor([10.0])).item() == pytest.approx(
        -10 / 80
    )  # not clipped
    assert sc.passes(torch.tensor([0.5]), 0.5, "paper").item()  # inclusive
    # symmetry: under C2 about z, x and -x are the same direction
    assert sc.pair_distance(X, -X, "C2", "paper").item() == pytest.approx(0.0, abs=1e-9)
    assert math.degrees(sc.pair_distance(X, -X, "C1", "paper").item()) == pytest.approx(180.0)


def test_xmipp_formulas_by_hand():
    d = torch.stack([Z, X, -Z])[None]
    w = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    # folded distances: z-x 90, z-(-z) 0 (antipodal), x-(-z) 90; self pairs in the denominator
    alpha = sc.alpha_score(d, w, "C1", "xmipp")
    num = 2 * (2 * 90 + 1 * 0 + 2 * 90)
    den = (1 + 2 + 1) ** 2  # all ordered pairs, self included
    assert math.degrees(alpha.item()) == pytest.approx(num / den)
    chi = sc.chi_score(Z[None], d, w, "C1", "xmipp")  # 0, 90, 0
    assert math.degrees(chi.item()) == pytest.approx(90 * 2 / 4)
    assert not sc.passes(torch.tensor([0.5]), 0.5, "xmipp").item()  # strict
    # shared noise: gallery of 3 directions, xi = 3 -> every trial takes all of them:
    # sum over ordered pairs = 2 * (90 + 0 + 90) deg, divided by (xi - 1)^2 = 4
    g = torch.stack([Z, X, -Z])
    noise = sc.xmipp_noise(g, 3, "C1", trials=10, generator=torch.Generator().manual_seed(0))
    assert math.degrees(noise) == pytest.approx(2 * 180 / 4)


def test_paper_noise_references():
    g = torch.Generator().manual_seed(0)
    # uniform directions on the sphere: mean angle between two is 90 deg
    assert math.degrees(sc.noise_alpha(7, "C1", 2000, g)) == pytest.approx(90.0, abs=2.0)
    from cryopose.geometry.grids import random_directions_in_asu

    chi = sc.noise_chi(torch.stack([Z, X]), random_directions_in_asu(7 * 2000, "C1", generator=g), "C1")
    assert torch.allclose(torch.rad2deg(chi), torch.full((2,), 90.0, dtype=torch.float64), atol=2.0)
    # a symmetric ASU is smaller: the noise distance shrinks
    assert sc.noise_alpha(7, "C4", 500, g) < sc.noise_alpha(7, "C1", 500, g)


# ----------------------------------------------------------------------------- simulation
BOX = 48


def _map():
    vol, apix = read_map(MAP)
    v = fourier_resize_volume(torch.as_tensor(vol), BOX)
    return v, apix * 64 / BOX


def _ctf_dict(draw):
    ctf = {
        k: getattr(draw.ctf, k).numpy()
        for k in ("defocus_u", "defocus_v", "defocus_angle", "phase_shift", "bfactor", "scale")
    }
    ctf.update(voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1)
    return ctf


@pytest.fixture(scope="module")
def mixed():
    """Equal thirds: true poses; pure noise; true particles with random star poses."""
    vol, apix = _map()
    g = torch.Generator().manual_seed(1)
    n = 150
    draw = draw_simulation_parameters(n, g, max_shift_angstrom=2 * apix)
    clean = clean_particle_images(
        fourier_volume(vol), draw.rotations.float(), (draw.shifts_angstrom / apix).float(), draw.ctf, apix
    )
    imgs = add_noise(clean, 0.1, g)
    kind = np.repeat([0, 1, 2], n // 3)
    sigma = (imgs - clean).std(dim=(-2, -1))
    imgs[kind == 1] = torch.randn(int((kind == 1).sum()), BOX, BOX, generator=g) * sigma[kind == 1, None, None]
    rots = draw.rotations.clone()
    rots[kind == 2] = random_rotations(int((kind == 2).sum()), g)
    ps = ParticleSet.from_arrays(
        rots.numpy(),
        draw.shifts_angstrom.numpy(),
        apix,
        BOX,
        [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
        _ctf_dict(draw),
    )
    opts = ValidationOptions(
        match=MatchSettings(angular_sampling=7.5, max_shift=3 * apix, ctf_references=True), noise_draws=200
    )
    cols, summary = validate_particles(ps, ArrayImages(imgs.numpy()), [(vol.numpy(), apix)], opts)
    return dict(vol=vol, apix=apix, ps=ps, imgs=imgs, kind=kind, draw=draw, cols=cols, summary=summary, opts=opts)


def _auc(scores, labels):
    scores = np.asarray(scores, dtype=float)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return greater / (len(pos) * len(neg))


def test_scores_separate_good_from_noise_and_wrong_poses(mixed):
    cols, kind, summary = mixed["cols"], mixed["kind"], mixed["summary"]
    qp, qa = cols["cryoposePrecision"], cols["cryoposeAccuracy"]
    good = kind == 0
    both = np.minimum(qp, qa)
    assert max(_auc(qp * qa, good), _auc(both, good)) >= 0.9
    fail_p = qp < 0.5
    fail_a = qa < 0.5
    assert fail_p[kind == 1].mean() > fail_p[good].mean()
    assert fail_a[kind == 2].mean() > fail_a[good].mean()
    assert abs(summary["Q"] - good.mean()) <= 0.15
    assert set(
        [
            "n_particles",
            "precision_fraction",
            "accuracy_fraction",
            "Q",
            "precision_threshold",
            "accuracy_threshold",
            "settings",
        ]
    ) <= set(summary)
    assert np.array_equal(cols["cryoposeAligned"], ((qp >= 0.5) & (qa >= 0.5)).astype(int))


def test_wrong_map_gives_much_lower_q(mixed):
    if not TRPV1.is_file():
        pytest.skip(f"{TRPV1} not found")
    wrong, _ = read_map(TRPV1)  # 48^3, another molecule; used at the particles' pixel size
    good_only = np.nonzero(mixed["kind"] == 0)[0]
    ps = mixed["ps"].subset(good_only)
    imgs = ArrayImages(mixed["imgs"].numpy()[good_only])
    _, right = validate_particles(ps, imgs, [(mixed["vol"].numpy(), mixed["apix"])], mixed["opts"])
    _, wrong_s = validate_particles(ps, imgs, [(wrong, mixed["apix"])], mixed["opts"])
    assert wrong_s["Q"] < right["Q"] - 0.3


def test_pruned_reconstruction_is_better(mixed):
    from cryopose.imaging.ctf import CTFParameters
    from cryopose.reconstruct import fourier_shell_correlation, reconstruct_from_images

    ps, imgs, vol, apix = mixed["ps"], mixed["imgs"], mixed["vol"], mixed["apix"]
    rots = torch.as_tensor(ps.rotations, dtype=torch.float32)
    shifts = torch.as_tensor(ps.shifts_angstrom / apix, dtype=torch.float32)
    ctf = CTFParameters.from_mapping(ps.ctf_parameters())
    keep = torch.as_tensor(mixed["cols"]["cryoposeAligned"].astype(bool))
    assert keep.sum() >= 10
    full = reconstruct_from_images(imgs, rots, shifts, ctf, apix)
    pruned = reconstruct_from_images(imgs[keep], rots[keep], shifts[keep], ctf[keep], apix)
    f_full = fourier_shell_correlation(full, vol, apix).fsc
    f_pruned = fourier_shell_correlation(pruned, vol, apix).fsc
    k = len(f_full) // 2
    assert float(torch.as_tensor(f_pruned[1:k]).mean()) > float(torch.as_tensor(f_full[1:k]).mean())


def test_xmipp_convention_runs_on_the_mixed_set(mixed):
    idx = np.arange(0, 150, 5)
    ps = mixed["ps"].subset(idx)
    opts = ValidationOptions(
        match=MatchSettings(angular_sampling=10.0, max_shift=3 * mixed["apix"], ctf_references=True),
        convention="xmipp",
        noise_draws=100,
    )
    cols, summary = validate_particles(
        ps, ArrayImages(mixed["imgs"].numpy()[idx]), [(mixed["vol"].numpy(), mixed["apix"])], opts
    )
    assert summary["settings"]["xi"] == 6 and summary["convention"] == "xmipp"
    # an independent count: q from the raw angles and the shared noise value, by the formula
    noise = summary["alpha_noise_deg"]
    qp = (cols["cryoposeAlpha"] - noise) / (cols["cryoposeAlphaGood"] - noise)
    qa = (cols["cryoposeChi"] - noise) / (cols["cryoposeChiGood"] - noise)
    np.testing.assert_allclose(cols["cryoposePrecision"], qp, rtol=1e-6)
    np.testing.assert_allclose(cols["cryoposeAccuracy"], qa, rtol=1e-6)
    count = sum(1 for p, a in zip(qp, qa) if p > 0.5 and a > 0.5)  # xmipp: strict
    assert summary["Q"] == pytest.approx(count / len(idx))
    assert 0 < count < len(idx)  # a mixed set: neither all nor none pass


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_outputs_without_poses_and_by_class(tmp_path, mixed):
    from cryopose.cli.main import main
    from cryopose.io.star import read_star

    idx = np.arange(0, 30)
    ps = mixed["ps"].subset(idx)
    write_stack(tmp_path / "particles.mrcs", mixed["imgs"].numpy()[idx], mixed["apix"])
    ps = ps.with_columns(
        rlnImageName=[f"{i + 1:06d}@particles.mrcs" for i in range(len(idx))],
        rlnClassNumber=np.where(idx % 2 == 0, 1, 2),
    )
    write_star(ps, tmp_path / "particles.star")
    write_map(tmp_path / "map.mrc", mixed["vol"].numpy(), mixed["apix"])
    common = [
        "--particles",
        str(tmp_path / "particles.star"),
        "--angular-sampling",
        "15",
        "--noise-draws",
        "50",
        "--ctf-references",
    ]
    with pytest.raises(SystemExit) as e:
        main(["validate", "--map", str(tmp_path / "map.mrc"), "--out", str(tmp_path / "out"), *common])
    assert e.value.code == 0
    out = read_star(tmp_path / "out" / "particles.star")
    for c in (
        "cryoposePrecision",
        "cryoposeAccuracy",
        "cryoposeAlpha",
        "cryoposeChi",
        "cryoposeAlphaGood",
        "cryoposeChiGood",
        "cryoposeAligned",
        "rlnClassNumber",
    ):
        assert c in out.table.columns
    pruned = read_star(tmp_path / "out" / "pruned.star")
    assert len(pruned) == int(out.table["cryoposeAligned"].sum())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_particles"] == 30 and summary["Q"] is not None
    assert (tmp_path / "out" / "soft_validation.png").stat().st_size > 1000
    # by class: the same map twice, one summary row per class
    with pytest.raises(SystemExit) as e:
        main(
            [
                "validate",
                "--map",
                str(tmp_path / "map.mrc"),
                "--map",
                str(tmp_path / "map.mrc"),
                "--by-class",
                "--out",
                str(tmp_path / "cls"),
                *common,
            ]
        )
    assert e.value.code == 0
    s = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert [r["class"] for r in s["classes"]] == [1, 2]
    # no poses: precision only, two maps ranked
    bare = ps.table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    write_star(ParticleSet(table=bare, source_dir=tmp_path), tmp_path / "bare.star")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "validate",
                "--map",
                str(tmp_path / "map.mrc"),
                "--map",
                str(tmp_path / "map.mrc"),
                "--out",
                str(tmp_path / "bare"),
                "--particles",
                str(tmp_path / "bare.star"),
                "--angular-sampling",
                "15",
                "--noise-draws",
                "50",
            ]
        )
    assert e.value.code == 0
    s = json.loads((tmp_path / "bare" / "summary.json").read_text())
    assert [r["rank"] for r in s["ranking"]] == [1, 2] and s["ranking"][0]["Q"] is None
