"""Training across processes (PyTorch DDP under torchrun): two CPU processes with gloo give
the loss curve of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.learn.distributed import DistributedContext, backend_for, distributed_context

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_ddp.py"


def _run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, *args, str(EXAMPLE), "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_cpu_processes_match_one(tmp_path):
    one = _run([], tmp_path / "one.json")
    two = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path / "two.json")
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 24
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two["final_bias"], one["final_bias"], rtol=1e-4, atol=1e-6)
    assert one["losses"][-1] < 0.5 * one["losses"][0]  # it learns


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_context("cpu") as ctx:
        assert ctx == DistributedContext(0, 0, 1, torch.device("cpu"), None)
        assert ctx.is_main and not ctx.is_distributed
        model = torch.nn.Linear(2, 1)
        assert ctx.wrap(model) is model and ctx.unwrap(model) is model
        assert float(ctx.mean(torch.tensor(3.0))) == 3.0
        assert ctx.on_main(lambda: 7) == 7
        loader = ctx.loader(torch.utils.data.TensorDataset(torch.arange(10.0)), 4, shuffle=False)
        assert [len(b[0]) for b in loader] == [4, 4, 2]
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"


def test_uneven_global_batch_is_refused():
    from cryopose.errors import UserError

    with pytest.raises(UserError, match="multiple of the number of processes"):
        DistributedContext(world_size=3).per_rank_batch_size(32)


def test_cryopose_train_under_torchrun(tmp_path):
    """``torchrun -m cryopose train`` on 2 CPU processes trains one model whose loss curve
    follows the one-process run (BatchNorm statistics are per process on CPU, so not to
    rounding); only rank 0 writes."""
    from cryopose.jobs.simulate import SimulateSettings, run_simulate

    bundled = ROOT / "src" / "cryopose" / "data" / "emd_1832.map"
    run_simulate(bundled, tmp_path / "sim", SimulateSettings(n=160, snr=1.0, box=32, apix=11.4, seed=4))
    args = [
        "train",
        "--particles",
        str(tmp_path / "sim" / "particles.star"),
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
        "--epochs",
        "2",
        "--val-fraction",
        "0.2",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    runs = {}
    for label, launcher in (
        ("one", [sys.executable, "-m", "cryopose"]),
        (
            "two",
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cryopose"],
        ),
    ):
        done = subprocess.run(
            [*launcher, *args, "--out", str(tmp_path / label)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[label] = json.loads((tmp_path / label / "summary.json").read_text())
    assert runs["one"]["processes"] == 1 and runs["two"]["processes"] == 2
    one = [r["train_loss"] for r in _history(tmp_path / "one")]
    two = [r["train_loss"] for r in _history(tmp_path / "two")]
    assert len(one) == len(two) == 2
    np.testing.assert_allclose(two, one, rtol=0.05)
    assert (tmp_path / "two" / "model.pt").is_file() and not list((tmp_path / "two").glob("*.tmp*"))


def _history(folder: Path) -> list[dict]:
    import csv

    return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(open(folder / "training.csv"))]
