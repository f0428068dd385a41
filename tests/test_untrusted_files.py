"""Files that cryopose reads back from folders others can write must never run code.

A hostile user who can write into a shared project folder plants a pickle whose unpickling
runs a shell command (it would create ``marker``) where a command keeps its resume state,
or hands over a doctored model file. For every command that resumes: the planted file is
discarded, the run says so on stderr and finishes; the command never ran. Every damaged
model payload is one ``Error:`` line and exit 2, before any work.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import assert_user_error, run
from cryopose.io.checkpoints import Checkpoint, ChunkStore
from test_bad_inputs import _argv, template  # noqa: F401  # (the workspace fixture)


class Bomb:
    """What an attacker plants: unpickling it runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def plant_torch_file(path: Path, marker: Path) -> None:
    """A torch.save file as a checkpoint would look, with the bomb inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    torch.save({"signature": {}, "done": [0], "state": Bomb(marker)}, path)


def plant_chunk(path: Path, marker: Path) -> None:
    """An .npz chunk whose array of objects pickles the bomb."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, rotations=np.array([Bomb(marker)] * 2, dtype=object))


@pytest.fixture
def ws(template, tmp_path) -> Path:  # noqa: F811
    folder = tmp_path / "ws"
    shutil.copytree(template, folder)
    return folder


def test_the_bomb_works_when_unpickled_unsafely(tmp_path):
    """The planted file really runs its command under a plain unpickler (so the tests below
    would see the marker if cryopose unpickled it that way)."""
    marker = tmp_path / "ran"
    plant_torch_file(tmp_path / "bomb.pt", marker)
    torch.load(tmp_path / "bomb.pt", weights_only=False)
    assert marker.exists()


def _interrupt_after_first_save(monkeypatch, cls) -> list[Path]:
    """Make ``cls.save`` write its file, record where, then stop the run (Ctrl-C)."""
    saved: list[Path] = []
    original = cls.save

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        saved.append(self._path(*args[:2]) if cls is ChunkStore else self.path)
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "save", save_then_stop)
    return saved


RESUMING = [  # (command, kind of resume state, extra options)
    ("simulate", Checkpoint, ["--n", "300"]),
    ("validate", ChunkStore, ["--chunk-size", "3"]),
    ("refine", Checkpoint, ["--iterations", "1", "--no-ctf"]),
    ("refine", ChunkStore, ["--iterations", "1", "--chunk-size", "3", "--no-ctf"]),
    ("train", Checkpoint, []),
    ("predict", ChunkStore, ["--chunk-size", "3"]),
    ("evaluate", Checkpoint, []),
]


@pytest.mark.parametrize("command, kind, extra", RESUMING, ids=[f"{c}-{k.__name__}" for c, k, _ in RESUMING])
def test_a_planted_resume_file_is_discarded_unread(command, kind, extra, ws, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    argv = _argv(command, ws, {"extra": extra})
    with monkeypatch.context() as patch:
        saved = _interrupt_after_first_save(patch, kind)
        code, _, err = run(argv, capsys)
    assert code == 130 and saved, err
    planted = saved[0]
    (plant_chunk if kind is ChunkStore else plant_torch_file)(planted, marker)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert not marker.exists(), "the planted file ran its command"
    assert "Traceback" not in err
    assert f"discarded {'checkpoint ' if kind is Checkpoint else ''}{planted}" in err, err


@pytest.mark.parametrize(
    "command, where",
    [
        ("reconstruct", ".reconstruct_checkpoint.pt"),
        ("train", ".cryopose_train/model.pt"),
        ("evaluate", ".evaluate_gt_maps.pt"),
        ("evaluate", ".evaluate_gt_sums.pt"),
        ("refine", ".cryopose_refine/iteration_00.pt"),
    ],
)
def test_a_file_planted_before_the_first_run_is_discarded_unread(command, where, ws, tmp_path, capsys):
    marker = tmp_path / "ran"
    out = ws / "out"
    plant_torch_file(out / where, marker)
    extra = ["--iterations", "1", "--no-ctf"] if command == "refine" else []
    code, _, err = run(_argv(command, ws, {"out": out, "extra": extra}), capsys)
    assert code == 0, err
    assert not marker.exists(), "the planted file ran its command"
    assert f"discarded checkpoint {out / where}" in err and "Traceback" not in err, err


def test_a_chunk_of_another_layout_is_computed_again(tmp_path, caplog):
    """A readable chunk whose arrays are not this run's (other names) is redone, not assembled."""
    from cryopose.jobs.chunks import run_chunks

    store = ChunkStore(tmp_path / "store", {"run": 1})
    store.save(0, 2, {"other": np.zeros(2)})
    store.save(2, 5, {"value": np.ones(3)})

    def compute(idx):
        return {"value": idx.astype(float)}

    result = run_chunks(6, 2, compute, store)
    np.testing.assert_array_equal(result["value"], [0, 1, 1, 1, 1, 5])
    assert "its arrays are not laid out like this run's" in caplog.text
    assert set(store.completed()) == {(0, 2), (2, 5), (5, 6)}


# ----------------------------------------------------------------------------- model files
def _doctor(ws: Path, change) -> Path:
    payload = torch.load(ws / "trained" / "model.pt", weights_only=True)
    change(payload)
    path = ws / "doctored.pt"
    torch.save(payload, path)
    return path


def _first_weight(payload: dict) -> str:
    return next(k for k, v in payload["weights"].items() if v.is_floating_point() and v.ndim == 4)


def _nan_weights(payload):
    for v in payload["weights"].values():
        if v.is_floating_point():
            v.fill_(math.nan)


MODEL_CASES = [
    ("no weights", lambda p: p.pop("weights"), "has no weights"),
    ("no config", lambda p: p.pop("config"), "has no config"),
    ("weights not a dict", lambda p: p.update(weights=[1, 2]), "weights is a list"),
    ("wrong shape", lambda p: p["weights"].update({_first_weight(p): torch.zeros(3, 3, 3, 3)}), "needs ("),
    ("extra weight", lambda p: p["weights"].update(extra=torch.zeros(2)), "1 unexpected"),
    ("version abc", lambda p: p.update(format_version="abc"), "'abc' is not a whole number"),
    ("newer version", lambda p: p.update(format_version=99), "newer cryopose"),
    ("huge channels", lambda p: p["config"].update(channels=[100000, 100000]), "channel widths"),
    ("huge network", lambda p: p["config"].update(channels=[8192] * 8), "more than any cryopose estimator"),
    ("huge grid", lambda p: p["config"].update(grid_order=5, degree=12), "grid head"),
    ("all NaN weights", _nan_weights, "NaN or infinite"),
    ("pixel size NaN", lambda p: p.update(pixel_size=math.nan), "pixel size nan"),
    ("pixel size text", lambda p: p.update(pixel_size="5.7"), "pixel size '5.7'"),
    ("unknown estimator", lambda p: p["config"].update(model="vit"), "unknown estimator 'vit'"),
    ("huge forum head", lambda p: p["config"].update(head_hidden=10**7), "head_hidden"),
    ("unknown qcqp", lambda p: p["config"].update(qcqp="polar"), "qcqp 'polar'"),
    ("bad image settings", lambda p: p["image_settings"].update(colour=True), "image settings"),
    ("bad symmetry", lambda p: p.update(symmetry="Q7"), "symmetry 'Q7'"),
    ("not a model", lambda p: p.update(format="something-else"), "not a cryopose model file"),
]


@pytest.mark.parametrize("change, fragment", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_a_damaged_model_payload_is_one_line(change, fragment, ws, capsys):
    model = _doctor(ws, change)
    argv = _argv("predict", ws, {"model": model})
    assert_user_error(argv, capsys, str(model), fragment)
    assert not (ws / "out" / "particles.star").exists()


def test_a_model_file_with_code_never_runs_it(ws, tmp_path, capsys):
    marker = tmp_path / "ran"
    model = ws / "bomb.pt"
    torch.save({"format": "cryopose-estimator", "format_version": 1, "config": Bomb(marker)}, model)
    line = assert_user_error(_argv("predict", ws, {"model": model}), capsys, "Python objects other than tensors")
    assert not marker.exists()
    assert "Weights only load failed" not in line and len(line) < 400


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("device", lambda ws: Path("/dev/zero"), "is not a regular file"),
        ("link to a device", lambda ws: _link(ws / "zero.pt", "/dev/zero"), "is not a regular file"),
        ("empty", lambda ws: _write(ws / "empty.pt", b""), "empty or cut short"),
        ("text", lambda ws: _write(ws / "text.pt", b"hello, I am not a model\n"), "not a PyTorch file"),
        (
            "cut short",
            lambda ws: _write(ws / "cut.pt", (ws / "trained" / "model.pt").read_bytes()[:500]),
            "not a cryopose model",
        ),
        ("a tensor", lambda ws: _save(ws / "tensor.pt", torch.zeros(3)), "holds no cryopose-estimator"),
    ],
)
def test_a_model_path_that_is_no_model_is_one_line(name, make, fragment, ws, capsys):
    model = make(ws)
    line = assert_user_error(_argv("predict", ws, {"model": model}), capsys, fragment)
    assert "does not exist" not in line


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_the_python_api_refuses_a_damaged_model(ws):
    from cryopose import load_estimator
    from cryopose.errors import UserError

    model = _doctor(ws, _nan_weights)
    with pytest.raises(UserError, match="NaN or infinite"):
        load_estimator(model)
    good = load_estimator(ws / "trained" / "model.pt")
    assert not good.training


def test_a_planted_demo_record_is_discarded_unread(tmp_path, monkeypatch, capsys):
    """The demo's record of finished steps (out/.cryopose_demo.pt) is a checkpoint like the
    others: a planted one is discarded unread (the run is stopped at its first step)."""
    import cryopose.cli.demo as cli_demo

    marker = tmp_path / "ran"
    out = tmp_path / "demo"
    plant_torch_file(out / ".cryopose_demo.pt", marker)

    def stop(step):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_demo, "_announce", stop)
    code, _, err = run(["demo", "--out", out, "--n", "60", "--learn-minutes", "0"], capsys)
    assert code == 130, err
    assert not marker.exists(), "the planted file ran its command"
    assert f"discarded checkpoint {out / '.cryopose_demo.pt'}" in err and "Traceback" not in err, err


def test_a_checkpoint_holds_only_what_the_safe_loader_reads(tmp_path):
    """Saving anything the weights-only load would refuse (here a str subclass, a numpy
    scalar, a path) fails at once, naming it; plain values and tensors round-trip."""
    from cryopose.geometry.symmetry import Symmetry

    checkpoint = Checkpoint(tmp_path / "state.pt", {"run": 1})
    for bad, name in ((Symmetry("c2"), "Symmetry"), (np.float64(1.0), "float64"), (tmp_path, "Path")):
        with pytest.raises(TypeError, match=rf"state\['steps'\]\[1\]\['x'\] is a .*{name}"):
            checkpoint.save({"steps": [{}, {"x": bad}]})
        assert not checkpoint.path.exists()
    state = {"steps": [{"x": "C2", "n": 3, "v": 0.5, "t": torch.arange(3)}], "done": (1, None)}
    checkpoint.save(state)
    loaded = checkpoint.load()
    assert loaded["steps"][0]["x"] == "C2" and loaded["done"] == (1, None)
    assert torch.equal(loaded["steps"][0]["t"], torch.arange(3))
