"""The command line: user errors give one clear line and exit 2; simulate is reproducible."""

from __future__ import annotations

import json
import shutil

import mrcfile
import numpy as np
import pytest

from cli_helpers import BUNDLED, assert_user_error, run
from cryopose.cli.main import main
from cryopose.io.mrc import write_map
from cryopose.io.star import read_star


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--map", str(BUNDLED), "--n", "40", "--snr", "0.5", "--max-shift", "10", "--out", str(out)])
    assert exc.value.code == 0
    return out


def test_help_on_every_command(capsys):
    from cryopose.cli.main import COMMANDS

    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert len(COMMANDS) >= 7
    for name in COMMANDS:
        assert name in out
        code, sub, _ = run([name, "--help"], capsys)
        assert code == 0 and f"Usage: cryopose {name}" in sub and "Example:" in sub and "--device" in sub, name


def test_simulate_same_seed_same_bytes(small_sim, tmp_path, capsys):
    code, _, _ = run(
        ["simulate", "--map", BUNDLED, "--n", "40", "--snr", "0.5", "--max-shift", "10", "--out", tmp_path], capsys
    )
    assert code == 0
    for name in ("particles.mrcs", "particles.star"):
        assert (tmp_path / name).read_bytes() == (small_sim / name).read_bytes()
    other = tmp_path / "other"
    run(["simulate", "--map", BUNDLED, "--n", "40", "--snr", "0.5", "--seed", "1", "--out", other], capsys)
    assert (other / "particles.mrcs").read_bytes() != (small_sim / "particles.mrcs").read_bytes()


def test_simulate_writes_relion31_with_truth(small_sim):
    ps = read_star(small_sim / "particles.star")
    assert ps.optics is not None and len(ps) == 40
    assert np.allclose(ps.pixel_size, 5.7, atol=1e-4)
    assert np.abs(ps.shifts_angstrom).max() > 1 and np.linalg.norm(ps.shifts_angstrom, axis=1).max() <= 10 + 1e-6
    ctf = ps.ctf_parameters()
    assert 1e4 <= ctf["defocus_u"].min() and ctf["defocus_u"].max() <= 2.5e4 + 200
    with mrcfile.open(small_sim / "particles.mrcs") as m:
        assert m.data.shape == (40, 64, 64)


def test_simulate_from_star_keeps_poses(small_sim, tmp_path, capsys):
    code, _, err = run(
        ["simulate", "--map", BUNDLED, "--from-star", small_sim / "particles.star", "--snr", "inf", "--out", tmp_path],
        capsys,
    )
    assert code == 0, err
    a, b = read_star(small_sim / "particles.star"), read_star(tmp_path / "particles.star")
    assert np.allclose(a.rotations, b.rotations, atol=1e-9)
    assert np.allclose(a.shifts_angstrom, b.shifts_angstrom, atol=1e-6)
    assert np.allclose(a.ctf_parameters()["defocus_u"], b.ctf_parameters()["defocus_u"], atol=1e-3)


def test_reconstruct_and_fsc_commands(small_sim, tmp_path, capsys):
    code, out, err = run(["reconstruct", small_sim / "particles.star", "--out", tmp_path / "rec"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["n_particles"] == 40 and summary["n_half1"] + summary["n_half2"] == 40
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png"):
        assert (tmp_path / "rec" / name).stat().st_size > 0
    with mrcfile.open(tmp_path / "rec" / "map.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(5.7, abs=1e-3)
    code, out, _ = run(["fsc", BUNDLED, BUNDLED, "--json"], capsys)
    data = json.loads(out)
    assert data["resolution_0143"] == pytest.approx(11.4, abs=1e-3)  # identical maps: Nyquist
    assert len(data["fsc"]) == 33


def test_error_missing_stack(shared_data, tmp_path, capsys):
    assert_user_error(
        ["reconstruct", shared_data / "trpv1" / "trpv1_small_stack.star", "--out", tmp_path],
        capsys,
        "batch_0_restacked.mrc",
        "does not exist",
    )


def test_error_unreadable_stack(small_sim, tmp_path, capsys):
    shutil.copy(small_sim / "particles.star", tmp_path / "particles.star")
    (tmp_path / "particles.mrcs").write_bytes(b"this is not an MRC file" * 10)
    assert_user_error(["reconstruct", tmp_path / "particles.star", "--out", tmp_path / "o"], capsys, "particles.mrcs")


def test_error_star_and_stack_disagree(small_sim, tmp_path, capsys):
    text = (small_sim / "particles.star").read_text().replace("000040@particles.mrcs", "000041@particles.mrcs")
    (tmp_path / "particles.star").write_text(text)
    shutil.copy(small_sim / "particles.mrcs", tmp_path / "particles.mrcs")
    assert_user_error(["reconstruct", tmp_path / "particles.star", "--out", tmp_path / "o"], capsys, "41", "40")


def test_error_missing_angles(shared_data, tmp_path, capsys):
    assert_user_error(
        ["reconstruct", shared_data / "metadata" / "empiar_10076_7.star", "--out", tmp_path], capsys, "angles"
    )


def test_error_missing_ctf_columns(shared_data, tmp_path, capsys):
    star = shared_data / "relion_projections_70s" / "rln_proj_64.star"
    assert_user_error(["reconstruct", star, "--apix", "1", "--out", tmp_path], capsys, "--no-ctf")


def test_error_star_without_pixel_size(shared_data, tmp_path, capsys):
    star = shared_data / "relion_projections_70s" / "rln_proj_64.star"
    assert_user_error(["reconstruct", star, "--no-ctf", "--out", tmp_path], capsys, "--apix")


def test_error_truncated_map(tmp_path, capsys):
    data = BUNDLED.read_bytes()
    (tmp_path / "cut.mrc").write_bytes(data[: len(data) // 2])
    assert_user_error(["fsc", tmp_path / "cut.mrc", BUNDLED], capsys, "cut.mrc")


def test_error_non_cubic_map(tmp_path, capsys):
    with mrcfile.new(tmp_path / "flat.mrc") as m:
        m.set_data(np.zeros((16, 32, 32), dtype=np.float32))
    assert_user_error(
        ["simulate", "--map", tmp_path / "flat.mrc", "--n", "5", "--out", tmp_path / "o"], capsys, "cubic"
    )


def test_error_nan_in_map(tmp_path, capsys):
    vol = np.zeros((16, 16, 16), dtype=np.float32)
    vol[3, 4, 5] = np.nan
    with mrcfile.new(tmp_path / "nan.mrc") as m:
        m.set_data(vol)
        m.voxel_size = 1.0
    assert_user_error(["simulate", "--map", tmp_path / "nan.mrc", "--n", "5", "--out", tmp_path / "o"], capsys, "NaN")


def test_error_pixel_sizes_disagree(tmp_path, capsys):
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    write_map(tmp_path / "a.mrc", vol, 1.0)
    write_map(tmp_path / "b.mrc", vol, 2.0)
    assert_user_error(["fsc", tmp_path / "a.mrc", tmp_path / "b.mrc"], capsys, "pixel size")


def test_error_cuda_absent_or_bad_symmetry(small_sim, tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert_user_error(["fsc", BUNDLED, BUNDLED, "--device", "cuda"], capsys, "cuda")
    assert_user_error(["reconstruct", small_sim / "particles.star", "--sym", "Q7", "--out", tmp_path], capsys, "Q7")


def test_inputs_never_modified(small_sim, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in small_sim.iterdir() if p.is_file()}
    run(["reconstruct", small_sim / "particles.star", "--out", tmp_path], capsys)
    run(["convert", small_sim / "particles.star", small_sim / "particles.star"], capsys)
    after = {p.name: p.read_bytes() for p in small_sim.iterdir() if p.is_file()}
    assert before == after


def test_simulate_resumes_after_interruption(small_sim, tmp_path, capsys, monkeypatch):
    """An interrupted simulate keeps finished chunks and the rerun gives the same bytes."""
    import cryopose.jobs.simulate as sim

    monkeypatch.setattr(sim, "BLOCK", 16)
    calls = {"n": 0}
    original = sim.add_noise

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(sim, "add_noise", interrupt_on_third)
    args = ["simulate", "--map", BUNDLED, "--n", "40", "--snr", "0.5", "--max-shift", "10", "--out", tmp_path]
    code, _, _ = run(args, capsys)
    assert code == 130
    assert not (tmp_path / "particles.mrcs").exists()
    assert (tmp_path / ".particles.mrcs.partial").exists()
    monkeypatch.setattr(sim, "add_noise", original)
    code, _, err = run(args, capsys)
    assert code == 0 and "resuming: 32 of 40" in err
    reference = tmp_path / "fresh"
    run([*args[:-1], reference], capsys)
    assert (tmp_path / "particles.mrcs").read_bytes() == (reference / "particles.mrcs").read_bytes()


def test_reconstruct_resumes_from_checkpoint(small_sim, tmp_path, capsys, monkeypatch):
    import cryopose.jobs.reconstruct as rec

    monkeypatch.setattr(rec, "CHECKPOINT_SECONDS", -1.0)  # checkpoint after every chunk
    calls = {"n": 0}
    original = rec.insert_images

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rec, "insert_images", interrupt)
    args = ["reconstruct", small_sim / "particles.star", "--chunk-size", "8", "--out", tmp_path / "a"]
    code, _, _ = run(args, capsys)
    assert code == 130 and (tmp_path / "a" / rec.CHECKPOINT).exists()
    monkeypatch.setattr(rec, "insert_images", original)
    code, _, err = run(args, capsys)
    assert code == 0 and "resuming from" in err
    assert not (tmp_path / "a" / rec.CHECKPOINT).exists()
    run(["reconstruct", small_sim / "particles.star", "--chunk-size", "8", "--out", tmp_path / "b"], capsys)
    a = mrcfile.read(tmp_path / "a" / "map.mrc")
    b = mrcfile.read(tmp_path / "b" / "map.mrc")
    assert np.allclose(a, b, atol=1e-5 * np.abs(b).max())


def test_a_stale_checkpoint_is_discarded(small_sim, tmp_path, capsys, monkeypatch):
    """A checkpoint made with other settings (here: the symmetry) is not resumed from: the
    rerun starts over, says why, and gives the map of a fresh run."""
    import cryopose.jobs.reconstruct as rec

    monkeypatch.setattr(rec, "CHECKPOINT_SECONDS", -1.0)
    original = rec.insert_images
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rec, "insert_images", interrupt)
    args = ["reconstruct", small_sim / "particles.star", "--chunk-size", "8", "--out", tmp_path / "a"]
    code, _, _ = run(args, capsys)
    assert code == 130 and (tmp_path / "a" / rec.CHECKPOINT).exists()
    monkeypatch.setattr(rec, "insert_images", original)
    code, _, err = run([*args, "--sym", "C2"], capsys)
    assert code == 0 and "discarding checkpoint" in err and "symmetry" in err and "resuming" not in err, err
    run(["reconstruct", small_sim / "particles.star", "--sym", "C2", "--out", tmp_path / "b"], capsys)
    a = mrcfile.read(tmp_path / "a" / "map.mrc")
    b = mrcfile.read(tmp_path / "b" / "map.mrc")
    assert np.allclose(a, b, atol=1e-5 * np.abs(b).max())


def test_reconstruct_reports_the_canonical_symmetry_and_resumes_across_spellings(
    small_sim, tmp_path, capsys, monkeypatch
):
    import cryopose.jobs.reconstruct as rec

    monkeypatch.setattr(rec, "CHECKPOINT_SECONDS", -1.0)
    original = rec.insert_images
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rec, "insert_images", interrupt)
    args = ["reconstruct", small_sim / "particles.star", "--chunk-size", "8", "--out", tmp_path]
    code, _, _ = run([*args, "--sym", "c2"], capsys)
    assert code == 130 and (tmp_path / rec.CHECKPOINT).exists()
    monkeypatch.setattr(rec, "insert_images", original)
    code, _, err = run([*args, "--sym", "C2"], capsys)
    assert code == 0 and "resuming" in err and "discarding" not in err, err
    assert json.loads((tmp_path / "summary.json").read_text())["symmetry"] == "C2"


def test_simulate_sym_draws_in_asymmetric_unit(tmp_path, capsys):
    import torch

    from cryopose.geometry.grids import asymmetric_unit_mask
    from cryopose.geometry.rotations import viewing_direction

    code, _, _ = run(
        ["simulate", "--map", BUNDLED, "--n", "60", "--sym", "D2", "--snr", "inf", "--no-ctf", "--out", tmp_path],
        capsys,
    )
    assert code == 0
    dirs = viewing_direction(torch.from_numpy(read_star(tmp_path / "particles.star").rotations))
    assert asymmetric_unit_mask(dirs, "D2").all()
    assert not asymmetric_unit_mask(dirs, "C1").logical_not().any()
    # without --sym the same seed puts most directions outside the D2 unit
    code, _, _ = run(
        ["simulate", "--map", BUNDLED, "--n", "60", "--snr", "inf", "--no-ctf", "--out", tmp_path / "c1"], capsys
    )
    dirs_c1 = viewing_direction(torch.from_numpy(read_star(tmp_path / "c1" / "particles.star").rotations))
    assert asymmetric_unit_mask(dirs_c1, "D2").float().mean() < 0.5


def test_ctrl_c_says_finished_work_is_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C (which click turns into Abort) ends with exit 130 and the line saying that a
    rerun resumes, not click's bare "Aborted."."""
    import cryopose.jobs.simulate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cryopose.jobs.simulate, "run_simulate", interrupted)
    code, _, err = run(["simulate", "--map", BUNDLED, "--n", "10", "--out", tmp_path / "sim"], capsys)
    assert code == 130
    assert err.strip().splitlines()[-1] == "Interrupted; finished work is kept and a rerun resumes.", err
