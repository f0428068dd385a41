"""Scale-out on Dask: a LocalCluster of 2 workers gives what one process gives, a run
interrupted on the cluster resumes, and a worker killed mid-run changes nothing.

One cluster (2 processes of 1 thread) serves the whole module: starting one costs seconds.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")

from cryopose.align.projection_matching import MatchSettings  # noqa: E402
from cryopose.cli.main import main  # noqa: E402
from cryopose.imaging.resample import resample_map  # noqa: E402
from cryopose.io.mrc import read_map, write_map  # noqa: E402
from cryopose.io.star import read_star  # noqa: E402
from cryopose.jobs import reconstruct as rec  # noqa: E402
from cryopose.jobs import simulate as sim  # noqa: E402
from cryopose.jobs.allocator import ALLOCATOR_SETTINGS  # noqa: E402
from cryopose.jobs.chunks import ChunkWork, run_chunks, torch_threads  # noqa: E402
from cryopose.jobs.executor import DaskExecutor, local_cluster_shape, open_executor  # noqa: E402
from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct  # noqa: E402
from cryopose.jobs.simulate import SimulateSettings, run_simulate  # noqa: E402
from cryopose.jobs.validate import STORE, ValidationOptions, run_validate  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"
COLUMNS = (
    "cryoposePrecision",
    "cryoposeAccuracy",
    "cryoposeAlpha",
    "cryoposeChi",
    "cryoposeAlphaGood",
    "cryoposeChiGood",
    "cryoposeAligned",
    "cryoposeBestScore",
)


@pytest.fixture(scope="module")
def executor():
    with open_executor(workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 px particles with poses, CTF and noise, their map, and the single-process results
    (small boxes: a reconstruction task returns whole Fourier sums)."""
    root = tmp_path_factory.mktemp("scale")
    volume, apix = read_map(BUNDLED)
    small, small_apix = resample_map(torch.from_numpy(volume).double(), apix, 2 * apix, 32)
    write_map(root / "map.mrc", small.float().numpy(), small_apix)
    settings = SimulateSettings(n=48, snr=0.5, max_shift=15.0, seed=3)
    star = root / "sim" / "particles.star"
    with torch_threads(1):  # like a worker; also fast on a shared, loaded machine
        run_simulate(root / "map.mrc", root / "sim", settings)
        run_validate([root / "map.mrc"], star, root / "val", _validation_options())
        run_reconstruct(star, root / "rec", ReconstructSettings(chunk_size=8))
    return {
        "root": root,
        "map_file": root / "map.mrc",
        "star": star,
        "sim": settings,
        "val": read_star(root / "val" / "particles.star"),
        "map": mrcfile.read(root / "rec" / "map.mrc"),
        "half1": mrcfile.read(root / "rec" / "half1.mrc"),
    }


def _validation_options(chunk_size: int = 6) -> ValidationOptions:
    match = MatchSettings(angular_sampling=15.0, max_shift=20.0, resolution=25.0, ctf_references=True)
    return ValidationOptions(match=match, noise_draws=50, chunk_size=chunk_size)


def _same_columns(out: Path, reference) -> None:
    got = read_star(out / "particles.star").table
    for c in COLUMNS:
        np.testing.assert_allclose(
            got[c].to_numpy(float), reference.table[c].to_numpy(float), rtol=1e-4, atol=1e-6, err_msg=c
        )  # float32 work; thread counts change the rounding


def _same_maps(out: Path, data) -> None:
    for name in ("map", "half1"):
        got = mrcfile.read(out / f"{name}.mrc")
        ref = data[name]
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), name


def _kill_one_worker(executor: DaskExecutor) -> None:
    pids = executor.client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)


def _whole_cluster(executor: DaskExecutor) -> None:
    executor.client.wait_for_workers(2, timeout=120)


# ----------------------------------------------------------------------------- mechanism
def test_local_cluster_shape_does_not_oversubscribe():
    assert local_cluster_shape(1, cpus=2) == (1, 2)
    assert local_cluster_shape(2, cpus=2) == (1, 1)
    assert local_cluster_shape(3, cpus=16) == (1, 5)
    assert local_cluster_shape(4, cpus=2) == (1, 1)


def test_workers_have_their_torch_threads(executor):
    def threads():
        import torch

        return torch.get_num_threads()

    expected = local_cluster_shape(2)[1]
    assert set(executor.client.run(threads).values()) == {expected}
    # workers start with cryopose's malloc settings, not the MALLOC_TRIM_THRESHOLD_ of Dask's nanny (slow)
    expected_env = {name: str(value) for name, _, value in ALLOCATOR_SETTINGS}
    assert expected_env["MALLOC_ARENA_MAX"] == "1" and expected_env["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20)
    got = executor.client.run(lambda: {name: os.environ.get(name) for name, _, _ in ALLOCATOR_SETTINGS})
    assert all(env == expected_env for env in got.values()), got


def _square(shared, part):
    return {"y": part.astype(np.float64) ** 2 + shared}


def test_run_chunks_in_any_order_and_chunk_size(executor, tmp_path):
    from cryopose.io.checkpoints import ChunkStore

    work = ChunkWork(_square, 1.0, lambda idx: idx)
    expected = np.arange(23.0) ** 2 + 1
    for size in (1, 5, 23):
        got = run_chunks(23, size, work, ChunkStore(tmp_path / f"s{size}", {}), executor=executor)
        np.testing.assert_array_equal(got["y"], expected)
    np.testing.assert_array_equal(run_chunks(23, 4, work)["y"], expected)


@pytest.mark.parametrize("flush", [None, -1.0])
def test_map_reduce_covers_every_range_once(executor, flush):
    work = ChunkWork(_square, 0.0, lambda idx: idx)
    ranges = [(a, min(a + 3, 31)) for a in range(0, 31, 3)]
    seen = []
    out = list(executor.map_reduce(work, ranges, _add_dicts, flush_seconds=flush, on_chunk=seen.append))
    assert sorted(seen) == ranges
    assert sorted(r for rs, _ in out for r in rs) == ranges
    values = np.sort(np.concatenate([v["y"] for _, v in out]))
    np.testing.assert_array_equal(values, np.arange(31.0) ** 2)
    assert len(out) == (1 if flush is None else len(ranges))  # a tree on the workers, or every chunk brought back


def _add_dicts(a, b):
    return {"y": np.concatenate([a["y"], b["y"]])}


def test_a_task_error_reaches_the_driver(executor):
    with pytest.raises(ZeroDivisionError):
        run_chunks(4, 2, ChunkWork(_fail, None, lambda idx: idx), executor=executor)


def _fail(shared, part):
    return 1 / 0


# ----------------------------------------------------------------------------- the jobs
def test_validate_on_two_workers_equals_one_process(executor, data, tmp_path):
    run_validate([data["map_file"]], data["star"], tmp_path, _validation_options(chunk_size=5), executor=executor)
    _same_columns(tmp_path, data["val"])


def test_reconstruct_on_two_workers_equals_one_process(executor, data, tmp_path):
    run_reconstruct(data["star"], tmp_path, ReconstructSettings(chunk_size=5), executor=executor)
    _same_maps(tmp_path, data)


def test_simulate_on_two_workers_gives_the_same_bytes(executor, data, tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "BLOCK", 16)  # several blocks (the noise seeds change, so compare like with like)
    run_simulate(data["map_file"], tmp_path / "one", data["sim"])
    run_simulate(data["map_file"], tmp_path / "two", data["sim"], executor=executor)
    for name in ("particles.mrcs", "particles.star"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_refine_on_two_workers_equals_one_process(executor, data, tmp_path):
    """The search chunks and the reconstruction run on the cluster; given half maps (so that
    the first search's references are the same bytes), the poses are the same and the maps
    equal to float rounding (float32: angles to 1e-5 deg)."""
    from cryopose.jobs.refine import RefineSettings, run_refine

    halves = (data["root"] / "rec" / "half1.mrc", data["root"] / "rec" / "half2.mrc")
    settings = RefineSettings(iterations=1, chunk_size=10, sigma_angle=4.0, max_shift=8.0)
    with torch_threads(1):
        run_refine(data["star"], data["map_file"], tmp_path / "one", halves, settings)
    run_refine(data["star"], data["map_file"], tmp_path / "two", halves, settings, executor=executor)
    one, two = (
        read_star(tmp_path / "one" / "particles.star").table,
        read_star(tmp_path / "two" / "particles.star").table,
    )
    for c in (
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "cryoposeRefineScore",
    ):
        # float32 rounding: a few 1e-6 deg (FFT libraries may round differently with the buffers' alignment)
        np.testing.assert_allclose(two[c].to_numpy(float), one[c].to_numpy(float), rtol=1e-6, atol=1e-5, err_msg=c)
    assert one["cryoposePoseChange"].to_numpy(float).max() > 0.5  # the search did move poses
    for name in ("map", "half1"):
        a, b = mrcfile.read(tmp_path / "one" / f"{name}.mrc"), mrcfile.read(tmp_path / "two" / f"{name}.mrc")
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), name


def test_global_refine_on_two_workers_equals_one_process(executor, data, tmp_path):
    """The global pass (its galleries sent once to each worker) and the local iteration on the
    cluster give the poses of one process (float32 rounding)."""
    from cryopose.jobs.refine import RefineSettings, run_refine

    settings = RefineSettings(
        global_search=True, global_passes=1, iterations=1, chunk_size=10, max_shift=8.0, ini_high=25.0
    )
    with torch_threads(1):
        run_refine(data["star"], data["map_file"], tmp_path / "one", settings=settings)
    run_refine(data["star"], data["map_file"], tmp_path / "two", settings=settings, executor=executor)
    one, two = (
        read_star(tmp_path / "one" / "particles.star").table,
        read_star(tmp_path / "two" / "particles.star").table,
    )
    for c in (
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "cryoposeRefineScore",
    ):
        np.testing.assert_allclose(two[c].to_numpy(float), one[c].to_numpy(float), rtol=1e-6, atol=1e-4, err_msg=c)


def test_interrupted_validate_resumes_on_the_cluster(executor, data, tmp_path):
    calls = []

    def stop_after_two(k, n):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_validate(
            [data["map_file"]],
            data["star"],
            tmp_path,
            _validation_options(),
            progress=stop_after_two,
            executor=executor,
        )
    stored = list((tmp_path / STORE / "all").glob("chunk_*.npz"))
    assert 2 <= len(stored) < 8
    seen = []
    run_validate(
        [data["map_file"]],
        data["star"],
        tmp_path,
        _validation_options(),
        progress=lambda k, n: seen.append(k),
        executor=executor,
    )
    assert seen[0] == 6 * len(stored)  # the stored chunks are skipped, not recomputed
    _same_columns(tmp_path, data["val"])


def test_interrupted_reconstruct_resumes_on_the_cluster(executor, data, tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "CHECKPOINT_SECONDS", -1.0)  # bring back and checkpoint every partial sum
    calls = []

    def stop(k, n):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reconstruct(data["star"], tmp_path, ReconstructSettings(chunk_size=4), progress=stop, executor=executor)
    assert (tmp_path / rec.CHECKPOINT).exists()
    run_reconstruct(data["star"], tmp_path, ReconstructSettings(chunk_size=4), executor=executor)
    assert not (tmp_path / rec.CHECKPOINT).exists()
    _same_maps(tmp_path, data)


def test_a_killed_worker_is_replaced_and_validate_completes(executor, data, tmp_path):
    killed = []

    def kill_once(k, n):
        if not killed:
            killed.append(True)
            _kill_one_worker(executor)

    try:
        run_validate(
            [data["map_file"]],
            data["star"],
            tmp_path,
            _validation_options(chunk_size=3),
            progress=kill_once,
            executor=executor,
        )
    finally:
        _whole_cluster(executor)
    assert killed
    _same_columns(tmp_path, data["val"])


def test_a_killed_worker_is_replaced_and_reconstruct_completes(executor, data, tmp_path):
    killed = []

    def kill_once(k, n):
        if not killed:
            killed.append(True)
            _kill_one_worker(executor)

    try:
        run_reconstruct(
            data["star"], tmp_path, ReconstructSettings(chunk_size=2), progress=kill_once, executor=executor
        )
    finally:
        _whole_cluster(executor)
    assert killed
    _same_maps(tmp_path, data)


# ----------------------------------------------------------------------------- the CLI
def _cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_reconstruct_with_scheduler_address(executor, data, tmp_path, capsys):
    address = executor.client.scheduler.address
    code, out, err = _cli(
        ["reconstruct", data["star"], "--chunk-size", "5", "--scheduler", address, "--out", tmp_path], capsys
    )
    assert code == 0, err
    _same_maps(tmp_path, data)


def test_cli_cluster_option_errors(data, tmp_path, capsys):
    code, _, err = _cli(
        ["reconstruct", data["star"], "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "--out", tmp_path], capsys
    )
    assert code == 2 and "give one of them" in err
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, _, err = _cli(
            ["reconstruct", data["star"], "--scheduler", "tcp://127.0.0.1:1", "--out", tmp_path], capsys
        )
    assert code == 2 and "cannot reach the Dask scheduler" in err and "Traceback" not in err
    code, _, err = _cli(
        ["validate", "--map", data["map_file"], "--particles", data["star"], "--workers", "0", "--out", tmp_path],
        capsys,
    )
    assert code == 2
    for command in ("validate", "reconstruct", "simulate"):
        code, out, _ = _cli([command, "--help"], capsys)
        assert "--workers" in out and "--scheduler" in out


def test_predict_on_two_workers_equals_one_process(executor, data, tmp_path):
    from cryopose.jobs.predict import PredictSettings, run_predict
    from cryopose.jobs.train import TrainJobSettings, run_train
    from cryopose.learn.preprocess import ImageSettings
    from cryopose.learn.train import TrainSettings

    settings = TrainJobSettings(
        train=TrainSettings(network={"model": "grid", "channels": (8, 16), "grid_order": 1}, epochs=1, batch_size=16),
        image=ImageSettings(image_size=16),
        val_fraction=0.0,
    )
    with torch_threads(1):
        run_train(data["star"], tmp_path / "model", settings)
        run_predict(tmp_path / "model", data["star"], tmp_path / "one", PredictSettings(chunk_size=10))
    _whole_cluster(executor)
    run_predict(tmp_path / "model", data["star"], tmp_path / "two", PredictSettings(chunk_size=10), executor=executor)
    one = read_star(tmp_path / "one" / "particles.star").table
    two = read_star(tmp_path / "two" / "particles.star").table
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "cryoposeConfidence"):
        np.testing.assert_allclose(two[c].to_numpy(float), one[c].to_numpy(float), atol=1e-3, err_msg=c)
