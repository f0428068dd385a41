"""``cryopose train`` and ``cryopose predict`` as a user runs them: files, columns, clean-up,
half-set cross-prediction, continuing a run, and one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import BUNDLED, assert_user_error
from cryopose.cli.main import main
from cryopose.io import read_star, write_star
from cryopose.io.models import read_model_file
from cryopose.jobs.chunks import torch_threads
from cryopose.jobs.simulate import SimulateSettings, run_simulate

TINY = [
    "--image-size",
    "16",
    "--channels",
    "8,16",
    "--batch-size",
    "32",
    "--grid-order",
    "1",
    "--ctf-correction",
    "none",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """240 particles of 32 px (11.4 Å/px) with poses, origins, CTF, noise and half sets."""
    root = tmp_path_factory.mktemp("learn")
    with torch_threads(1):
        run_simulate(BUNDLED, root / "sim", SimulateSettings(n=240, snr=1.0, max_shift=8.0, box=32, apix=11.4, seed=2))
    ps = read_star(root / "sim" / "particles.star")
    halves = np.where(np.arange(len(ps)) % 2 == 0, 1, 2)
    write_star(ps.with_columns(rlnRandomSubset=halves), root / "sim" / "halves.star")
    return root / "sim"


@pytest.fixture(scope="module")
def grid_model(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "model"
    code, stdout, err = _train(sim / "particles.star", out, "--epochs", "2")
    assert code == 0, err
    return out, stdout


def _train(star, out, *extra):
    return _run_cli(["train", "--particles", star, "--out", out, *TINY, *extra])


def _run_cli(args):
    """(exit code, stdout, stderr) of the command line run in-process with one thread
    (usable from module fixtures, unlike capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), torch_threads(1):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_train_writes_model_curves_and_summary(grid_model):
    out, stdout = grid_model
    for name in ("model.pt", "training.csv", "training.png", "summary.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "training.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["val_median_deg"]) <= 180 for r in rows)
    payload = read_model_file(out / "model.pt")
    assert payload["config"]["model"] == "grid" and payload["symmetry"] == "C1"
    assert payload["image_settings"]["image_size"] == 16
    assert payload["pixel_size"] == pytest.approx(11.4 * 32 / 16)
    assert "validation median" in stdout and "model.pt" in stdout


def test_predict_writes_poses_truth_confidence_and_cleanup(sim, grid_model, tmp_path):
    model, _ = grid_model
    code, stdout, err = _run_cli(
        [
            "predict",
            "--model",
            model / "model.pt",
            "--particles",
            sim / "particles.star",
            "--out",
            tmp_path / "pred",
            "--keep-fraction",
            "0.25",
            "--chunk-size",
            "100",
        ]
    )
    assert code == 0, err
    truth = read_star(sim / "particles.star").table
    pred = read_star(tmp_path / "pred" / "particles.star").table
    assert len(pred) == 240
    for t, c in (
        ("cryoposeTrueAngleRot", "rlnAngleRot"),
        ("cryoposeTrueAnglePsi", "rlnAnglePsi"),
        ("cryoposeTrueOriginXAngst", "rlnOriginXAngst"),
    ):
        np.testing.assert_allclose(pred[t].to_numpy(float), truth[c].to_numpy(float), atol=1e-4)
    assert not np.allclose(pred["rlnAngleRot"].to_numpy(float), truth["rlnAngleRot"].to_numpy(float))
    assert list(pred["rlnImageName"]) != [] and (tmp_path / "pred" / "summary.json").is_file()
    conf = pred["cryoposeConfidence"].to_numpy(float)
    assert np.all((conf > 0) & (conf <= 1)) and "cryoposeGridProbability" in pred.columns
    kept = read_star(tmp_path / "pred" / "kept.star").table
    assert len(kept) == 60
    assert kept["cryoposeConfidence"].min() >= np.sort(conf)[-60]
    assert "kept 60 of 240" in stdout
    # the images of the written stars resolve from the new folder
    assert (tmp_path / "pred" / kept["rlnImageName"][0].split("@")[1]).resolve() == (sim / "particles.mrcs").resolve()


def test_prediction_does_not_depend_on_the_chunk_size(sim, grid_model, tmp_path):
    model, _ = grid_model
    for chunk in ("7", "240"):
        code, _, err = _run_cli(
            [
                "predict",
                "--model",
                model,
                "--particles",
                sim / "particles.star",
                "--out",
                tmp_path / chunk,
                "--chunk-size",
                chunk,
            ]
        )
        assert code == 0, err
    a = read_star(tmp_path / "7" / "particles.star").table
    b = read_star(tmp_path / "240" / "particles.star").table
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "cryoposeConfidence"):
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), atol=1e-3)


@pytest.mark.parametrize("head", ["default", "paper"])
def test_forum_writes_bingham_uncertainty(sim, tmp_path, head):
    extra = ["--paper-head"] if head == "paper" else []
    code, _, err = _train(sim / "particles.star", tmp_path / "forum", "--model", "forum", "--epochs", "1", *extra)
    assert code == 0, err
    config = read_model_file(tmp_path / "forum" / "model.pt")["config"]
    assert (config["head_hidden"], config["qcqp"]) == ((0, "cholesky") if head == "paper" else (256, "symmetric"))
    code, _, err = _run_cli(
        [
            "predict",
            "--model",
            tmp_path / "forum",
            "--particles",
            sim / "particles.star",
            "--out",
            tmp_path / "pred",
            "--min-confidence",
            "0",
        ]
    )
    assert code == 0, err
    pred = read_star(tmp_path / "pred" / "particles.star").table
    trace = pred["cryoposeLambdaTrace"].to_numpy(float)
    lam_max = pred["cryoposeLambdaMax"].to_numpy(float)
    assert np.all(trace <= lam_max) and np.all(lam_max <= 0)  # sum of three dispersions <= the largest <= 0
    np.testing.assert_allclose(pred["cryoposeConfidence"].to_numpy(float), -trace, rtol=1e-4)
    assert len(read_star(tmp_path / "pred" / "kept.star")) == 240  # -trace >= 0 for all


def test_halves_predict_each_half_with_the_other_half_model(sim, tmp_path):
    code, stdout, err = _train(sim / "halves.star", tmp_path / "halves", "--halves", "--epochs", "1")
    assert code == 0, err
    assert (tmp_path / "halves" / "half1" / "model.pt").is_file() and (
        tmp_path / "halves" / "half2" / "model.pt"
    ).is_file()
    assert read_model_file(tmp_path / "halves" / "half2" / "model.pt")["metadata"]["half"] == "half2"
    code, _, err = _run_cli(
        ["predict", "--model", tmp_path / "halves", "--particles", sim / "halves.star", "--out", tmp_path / "cross"]
    )
    assert code == 0, err
    code, _, err = _run_cli(
        [
            "predict",
            "--model",
            tmp_path / "halves" / "half2" / "model.pt",
            "--particles",
            sim / "halves.star",
            "--out",
            tmp_path / "by2",
        ]
    )
    assert code == 0, err
    cross = read_star(tmp_path / "cross" / "particles.star").table
    by2 = read_star(tmp_path / "by2" / "particles.star").table
    half1 = cross["rlnRandomSubset"].to_numpy() == 1
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        np.testing.assert_allclose(cross[c].to_numpy(float)[half1], by2[c].to_numpy(float)[half1], atol=1e-3)
        assert not np.allclose(cross[c].to_numpy(float)[~half1], by2[c].to_numpy(float)[~half1], atol=1e-3)


def test_a_rerun_with_more_epochs_continues(sim, tmp_path):
    out = tmp_path / "more"
    code, _, err = _train(sim / "particles.star", out, "--epochs", "1")
    assert code == 0, err
    first = list(csv.DictReader(open(out / "training.csv")))
    code, _, err = _train(sim / "particles.star", out, "--epochs", "2")
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "training.csv")))
    assert len(rows) == 2 and rows[0] == first[0]
    # another setting starts afresh
    code, _, err = _train(sim / "particles.star", out, "--epochs", "1", "--learning-rate", "0.001")
    assert code == 0, err
    assert "discarding checkpoint" in err
    assert len(list(csv.DictReader(open(out / "training.csv")))) == 1


def test_a_model_trained_on_shuffled_poses_is_flagged_at_chance_by_train_and_predict(sim, tmp_path):
    ps = read_star(sim / "particles.star")
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    shuffled = ps.table[angles].to_numpy()[np.random.default_rng(0).permutation(len(ps))]
    write_star(ps.with_columns(**{c: shuffled[:, i] for i, c in enumerate(angles)}), sim / "shuffled.star")
    code, stdout, err = _train(sim / "shuffled.star", tmp_path / "m", "--epochs", "2")
    assert code == 0, err
    assert "AT CHANCE LEVEL" in stdout and "has not learned the poses" in err
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())["models"][0]
    assert summary["at_chance"] is True and summary["chance_median_deg"] == pytest.approx(132.35, abs=0.1)
    assert summary["best"]["val_median_deg"] > summary["chance_threshold_deg"]
    meta = read_model_file(tmp_path / "m" / "model.pt")["metadata"]
    assert meta["at_chance"] is True and meta["chance"]["chance_median_deg"] == pytest.approx(132.35, abs=0.1)
    code, stdout, err = _run_cli(
        ["predict", "--model", tmp_path / "m", "--particles", sim / "particles.star", "--out", tmp_path / "p"]
    )
    assert code == 0, err
    assert "did not learn the poses" in err and "chance level" in stdout
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["models_at_chance"] == [
        str(tmp_path / "m" / "model.pt")
    ]


def test_predict_refuses_particles_of_another_pixel_size(sim, grid_model, tmp_path, capsys):
    model, _ = grid_model
    ps = read_star(sim / "particles.star")
    ps.table["rlnImagePixelSize"] = 5.7
    if ps.optics is not None:
        ps.optics["rlnImagePixelSize"] = 5.7
    write_star(ps, sim / "other_apix.star")
    mrcs = sim / "particles.mrcs"
    import mrcfile

    with mrcfile.open(mrcs, permissive=True) as m:
        data = m.data.copy()
    with mrcfile.new(sim / "other.mrcs", overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = 5.7
    ps.table["rlnImageName"] = [n.replace("particles.mrcs", "other.mrcs") for n in ps.table["rlnImageName"]]
    write_star(ps, sim / "other_apix.star")
    assert_user_error(
        ["predict", "--model", model, "--particles", sim / "other_apix.star", "--out", tmp_path / "p"],
        capsys,
        "trained on",
        "resample the particles",
    )


def test_bad_inputs_give_one_line(sim, grid_model, tmp_path, capsys):
    model, _ = grid_model
    ps = read_star(sim / "particles.star")
    write_star(
        replace(ps, table=ps.table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])),
        tmp_path / "no_angles.star",
    )
    assert_user_error(
        ["train", "--particles", tmp_path / "no_angles.star", "--out", tmp_path / "t"],
        capsys,
        "has no rlnAngleRot",
        "poses",
    )
    assert not (tmp_path / "t").exists()
    assert_user_error(
        ["train", "--particles", sim / "particles.star", "--out", tmp_path / "t", "--halves", *TINY],
        capsys,
        "rlnRandomSubset",
    )
    assert_user_error(
        ["train", "--particles", sim / "particles.star", "--out", tmp_path / "t", "--image-size", "64"],
        capsys,
        "image size",
    )
    assert_user_error(
        ["train", "--particles", sim / "particles.star", "--out", tmp_path / "t", "--channels", "8,x"],
        capsys,
        "--channels",
    )
    assert_user_error(
        [
            "predict",
            "--model",
            model,
            "--particles",
            sim / "particles.star",
            "--out",
            tmp_path / "p",
            "--keep-fraction",
            "0.5",
            "--min-confidence",
            "1",
        ],
        capsys,
        "not both",
    )
    assert_user_error(
        ["predict", "--model", sim / "particles.star", "--particles", sim / "particles.star", "--out", tmp_path / "p"],
        capsys,
        "not a",
        "model file",
    )
    assert_user_error(
        ["predict", "--model", tmp_path, "--particles", sim / "particles.star", "--out", tmp_path / "p"],
        capsys,
        "holds no model.pt",
    )
    assert_user_error(
        [
            "predict",
            "--model",
            tmp_path / "halves_missing",
            "--particles",
            sim / "particles.star",
            "--out",
            tmp_path / "p",
        ],
        capsys,
    )


def test_python_api_trains_predicts_and_reads_a_dataset(sim, tmp_path):
    import cryopose
    from cryopose.geometry.rotations import euler_to_matrix

    with torch_threads(1):
        summary = cryopose.train(
            sim / "particles.star",
            tmp_path / "m",
            epochs=1,
            image_size=16,
            ctf_correction="none",
            network={"channels": (8, 16), "grid_order": 1},
            batch_size=32,
        )
        assert summary["models"][0]["epochs"] == 1
        estimator = cryopose.load_estimator(tmp_path / "m" / "model.pt")
        data = cryopose.particles_dataset(sim / "particles.star", image_size=16)
        item = data[3]
        out = estimator.predict(item["image"][None])
        pred = cryopose.predict(tmp_path / "m", sim / "particles.star", tmp_path / "p")
    assert item["image"].shape == (1, 16, 16) and data.pixel_size == pytest.approx(22.8)
    table = read_star(sim / "particles.star").table
    angles = np.deg2rad(table.loc[3, ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    expected = euler_to_matrix(*[torch.tensor(a) for a in angles])
    assert torch.allclose(item["rotation"].double(), expected, atol=1e-5)
    written = read_star(tmp_path / "p" / "particles.star").table
    row = written.loc[3, ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    mine = euler_to_matrix(*[torch.tensor(a) for a in np.deg2rad(row)])
    assert torch.allclose(out["rotations"][0].double(), mine, atol=1e-3)  # the same model, the same image
    assert pred["n_particles"] == 240
