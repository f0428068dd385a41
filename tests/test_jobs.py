"""The jobs layer: written STAR files keep their images, results do not depend on chunking,
outputs respect the umask and are atomic, validate resumes, and the regressions of wave 1."""

from __future__ import annotations

import json
import os
import pickle
import stat
from multiprocessing import get_context
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from cli_helpers import BUNDLED, run
from cryopose.cli.main import main
from cryopose.errors import UserError
from cryopose.io.atomic import atomic_write, write_json_atomic
from cryopose.io.mrc import ParticleImages, read_map
from cryopose.io.star import read_star, write_star


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """24 particles of the bundled map (64 px, SNR 1, CTF, origins up to 6 Å) in sim/in/."""
    folder = tmp_path_factory.mktemp("sim") / "in"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "simulate",
                "--map",
                str(BUNDLED),
                "--n",
                "24",
                "--snr",
                "1",
                "--max-shift",
                "6",
                "--seed",
                "3",
                "--out",
                str(folder),
            ]
        )
    assert exc.value.code == 0
    return folder


VALIDATE_FAST = ["--angular-sampling", "15", "--noise-draws", "40", "--resolution", "16", "--ctf-references"]


# ----------------------------------------------------------------------------- 1. image paths
def test_written_stars_keep_their_images(sim, tmp_path, capsys):
    """validate, align-maps and convert write STAR files into other folders; each still
    reconstructs (its image names resolve to the same stack)."""
    code, _, err = run(
        [
            "validate",
            "--map",
            BUNDLED,
            "--particles",
            sim / "particles.star",
            "--out",
            tmp_path / "val",
            *VALIDATE_FAST,
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["convert", sim / "particles.star", tmp_path / "deep" / "er" / "conv.star"], capsys)
    assert code == 0, err
    code, _, err = run(
        [
            "align-maps",
            "--ref",
            BUNDLED,
            BUNDLED,
            "--particles",
            sim / "particles.star",
            "--max-angle",
            "0",
            "--no-check-hands",
            "--out",
            tmp_path / "ali",
        ],
        capsys,
    )
    assert code == 0, err
    stack = (sim / "particles.mrcs").resolve()
    for star in (
        tmp_path / "val" / "particles.star",
        tmp_path / "val" / "pruned.star",
        tmp_path / "deep" / "er" / "conv.star",
        tmp_path / "ali" / "particles_emd_1832.star",
    ):
        ps = read_star(star)
        if len(ps) == 0:
            continue
        assert {Path(p).resolve() for p in ps.image_paths} == {stack}, star
        name = ps.table["rlnImageName"].iloc[0]
        assert not os.path.isabs(name.split("@")[1]), name  # relative where possible
        code, _, err = run(["reconstruct", star, "--out", tmp_path / f"rec_{star.parent.name}_{star.stem}"], capsys)
        assert code == 0, (star, err)


def test_absolute_image_names_stay_absolute(sim, tmp_path):
    ps = read_star(sim / "particles.star")
    absolute = [f"{i + 1:06d}@{(sim / 'particles.mrcs').resolve()}" for i in range(len(ps))]
    write_star(ps.with_columns(rlnImageName=absolute), tmp_path / "a" / "abs.star")
    assert read_star(tmp_path / "a" / "abs.star").table["rlnImageName"].tolist() == absolute


# ----------------------------------------------------------------------------- 2. chunk size
def test_validate_columns_do_not_depend_on_chunk_size(sim):
    from cryopose.align.projection_matching import MatchSettings
    from cryopose.jobs.validate import ValidationOptions, validate_particles

    ps = read_star(sim / "particles.star").subset(np.arange(16))
    images = ParticleImages(ps)
    volume = read_map(BUNDLED)
    results = []
    for chunk in (1, 7, 64):
        opts = ValidationOptions(
            match=MatchSettings(angular_sampling=15.0, resolution=16.0, ctf_references=True),
            noise_draws=40,
            chunk_size=chunk,
        )
        cols, summary = validate_particles(ps, images, [volume], opts)
        results.append((cols, summary["Q"]))
    # identical to float32 rounding (batched matmuls round differently for other batch sizes);
    # before the fix, chunking changed q^a by up to 2.2 and Q by 0.06
    for cols, q in results[1:]:
        assert q == results[0][1]
        np.testing.assert_array_equal(cols["cryoposeAligned"], results[0][0]["cryoposeAligned"])
        for name, values in results[0][0].items():
            np.testing.assert_allclose(cols[name], values, rtol=1e-5, atol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------- 3. umask
def test_outputs_respect_the_umask(sim, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run(["reconstruct", sim / "particles.star", "--out", tmp_path / "rec"], capsys)
        assert code == 0, err
        code, _, err = run(["convert", sim / "particles.star", tmp_path / "c.star"], capsys)
        assert code == 0, err
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "rec").iterdir()] + [tmp_path / "c.star"]
    assert {p.name for p in files} >= {"map.mrc", "half1.mrc", "fsc.png", "fsc.csv", "summary.json", "c.star"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, (p.name, oct(p.stat().st_mode))


# ----------------------------------------------------------------------------- 4. validate resumes
def test_validate_resumes_with_the_same_result(sim, tmp_path, capsys, monkeypatch):
    import cryopose.jobs.validate as job

    args = ["validate", "--map", BUNDLED, "--particles", sim / "particles.star", *VALIDATE_FAST, "--chunk-size", "5"]
    original = job.score_chunk
    calls = {"n": 0}

    def interrupt_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(job, "score_chunk", interrupt_on_third)
    code, _, _ = run([*args, "--out", tmp_path / "a"], capsys)
    assert code == 130
    assert not (tmp_path / "a" / "particles.star").exists()
    assert len(list((tmp_path / "a" / job.STORE / "all").glob("chunk_*.npz"))) == 2
    counted = {"n": 0}

    def count(*a, **k):
        counted["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(job, "score_chunk", count)
    code, _, err = run([*args, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert counted["n"] == 3  # 24 particles in chunks of 5: 2 of 5 chunks were kept
    assert not (tmp_path / "a" / job.STORE).exists()
    code, _, _ = run([*args, "--out", tmp_path / "b"], capsys)
    a, b = read_star(tmp_path / "a" / "particles.star"), read_star(tmp_path / "b" / "particles.star")
    for col in ("cryoposePrecision", "cryoposeAccuracy", "cryoposeAligned"):
        np.testing.assert_allclose(a.table[col].to_numpy(float), b.table[col].to_numpy(float), rtol=1e-6)


def test_changed_settings_discard_finished_chunks(tmp_path):
    from cryopose.io.checkpoints import ChunkStore

    store = ChunkStore(tmp_path / "s", {"a": 1, "b": [1, 2]})
    store.save(0, 3, {"x": np.arange(3)})
    assert ChunkStore(tmp_path / "s", {"a": 1, "b": [1, 2]}).completed() == [(0, 3)]
    again = ChunkStore(tmp_path / "s", {"a": 2, "b": [1, 2]})
    assert again.completed() == [] and again.restarted_because == ["a"]


# ----------------------------------------------------------------------------- 5. atomic outputs
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write('{"v": 2, "half')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary left


def test_json_outputs_are_valid_json(tmp_path):
    write_json_atomic(tmp_path / "s.json", {"inf": float("inf"), "nan": float("nan"), "arr": np.array([1.5, np.inf])})
    assert json.loads((tmp_path / "s.json").read_text()) == {"inf": None, "nan": None, "arr": [1.5, None]}


# ----------------------------------------------------------------------------- 6. fsc and convert
def test_convert_says_which_pixel_size_it_uses(sim, tmp_path, capsys):
    code, _, err = run(["convert", sim / "particles.star", tmp_path / "c.star", "--apix", "2.0"], capsys)
    assert code == 0
    assert "5.7 A" in err and "not the given 2 A" in err
    assert read_star(tmp_path / "c.star").pixel_size[0] == pytest.approx(5.7, abs=1e-4)


# ----------------------------------------------------------------------------- image source, tensors, errors
def _read_in_child(source, indices):
    return source.read(indices)


def test_particle_images_pickle_and_read_in_other_processes(sim):
    ps = read_star(sim / "particles.star")
    images = ParticleImages(ps)
    expected = images.read([3, 1, 20])
    clone = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(clone.read([3, 1, 20]), expected)
    with get_context("spawn").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_read_in_child, (images, [3, 1, 20])), expected)
    part = images.take([20, 3])
    assert len(part) == 2 and len(pickle.dumps(part)) < 2000
    np.testing.assert_array_equal(part.read([1, 0]), expected[[0, 2]])  # part[0] is 20, part[1] is 3


def test_to_tensors_matches_the_accessors(sim):
    ps = read_star(sim / "particles.star")
    t = ps.to_tensors()
    np.testing.assert_allclose(t.rotations.numpy(), ps.rotations)
    np.testing.assert_allclose(t.shifts_px.numpy(), ps.shifts_angstrom / 5.7, rtol=1e-5)
    np.testing.assert_allclose(t.ctf.defocus_u.numpy(), ps.ctf_parameters()["defocus_u"])
    assert t.half_sets is None and torch.all(t.confidence == 1)
    sub = t[torch.tensor([2, 0])]
    np.testing.assert_allclose(sub.rotations.numpy(), ps.rotations[[2, 0]])
    assert len(sub) == 2 and len(sub.ctf) == 2


def test_user_error_is_a_value_error_and_the_cli_names_the_option(tmp_path, capsys):
    assert issubclass(UserError, ValueError)
    back = pickle.loads(pickle.dumps(UserError("no pixel size; give the pixel size", option="apix")))
    assert str(back) == "no pixel size; give the pixel size" and back.option == "apix"  # survives a Dask worker
    star = tmp_path / "p.star"
    star.write_text("data_\nloop_\n_rlnImageName #1\n_rlnOriginX #2\n_rlnOriginY #3\n000001@s.mrcs 1.0 2.0\n")
    code, _, err = run(["reconstruct", star, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.strip().endswith("give the pixel size with --apix"), err
    # fsc has --apix too; a command without the option gets the message alone
    from cryopose.cli.main import user_error_message

    assert (
        user_error_message(UserError("no pixel size; give the pixel size", option="apix"), ["demo"])
        == "no pixel size; give the pixel size"
    )


def test_one_rule_for_pixel_sizes(tmp_path, capsys, caplog):
    """Particles: one pixel size per set, in every job (validate used to take a median).
    Maps: the header's; --apix only where a header has none, with a note when they differ."""
    import logging

    from cryopose.jobs.inputs import map_pixel_size, particle_pixel_size
    from cryopose.particles import ParticleSet

    def particles(apix):
        return ParticleSet(
            table=pd.DataFrame(
                {"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(len(apix))], "rlnImagePixelSize": apix}
            )
        )

    assert particle_pixel_size(particles([1.5, 1.5005])) == 1.5
    with pytest.raises(UserError, match="different pixel sizes"):
        particle_pixel_size(particles([1.5, 1.6]))
    with caplog.at_level(logging.INFO, logger="cryopose"):
        assert map_pixel_size(2.0, None, "m.mrc") == 2.0
        assert map_pixel_size(0.0, 3.0, "m.mrc") == 3.0
        assert "note" not in caplog.text
        assert map_pixel_size(2.0, 3.0, "m.mrc") == 2.0
        assert "m.mrc has its own pixel size (2.0000 A); it is used, not the given 3 A" in caplog.text
    with pytest.raises(UserError, match="no pixel size in its header") as err:
        map_pixel_size(0.0, None, "m.mrc")
    assert err.value.option == "apix"


def test_fsc_takes_the_headers_and_apix_only_where_one_has_none(tmp_path, capsys):
    from cryopose.jobs.fsc import load_map_pair

    vol = np.random.default_rng(0).standard_normal((16, 16, 16)).astype(np.float32)
    for name, voxel in (("a", 2.0), ("b", 2.0), ("none", 0.0), ("other", 3.0)):
        with mrcfile.new(tmp_path / f"{name}.mrc") as m:
            m.set_data(vol)
            m.voxel_size = voxel
    assert load_map_pair(tmp_path / "a.mrc", tmp_path / "b.mrc", 5.0)[2] == 2.0  # the headers win
    assert load_map_pair(tmp_path / "a.mrc", tmp_path / "none.mrc")[2] == 2.0  # the other's header
    assert load_map_pair(tmp_path / "none.mrc", tmp_path / "none.mrc", 4.0)[2] == 4.0
    with pytest.raises(UserError, match="pixel sizes disagree"):
        load_map_pair(tmp_path / "a.mrc", tmp_path / "other.mrc", 2.0)
