"""The ``Symmetry`` value type: a user's name parsed once into its canonical RELION name, held by
every settings object, pickled to workers, and taken by the API as ``symmetry=``."""

from __future__ import annotations

import copy
import json
import math
import pickle
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import cryopose
import cryopose.api as api
from cryopose.align.projection_matching import MatchSettings
from cryopose.errors import UserError
from cryopose.geometry.symmetry import Symmetry, _parse, symmetry_matrices
from cryopose.io.checkpoints import Checkpoint
from cryopose.jobs.evaluate import EvaluateSettings
from cryopose.jobs.reconstruct import ReconstructSettings
from cryopose.jobs.refine import RefineSettings
from cryopose.jobs.simulate import SimulateSettings
from cryopose.jobs.validate import ValidationOptions
from cryopose.learn.dataset import ParticlesDataset
from cryopose.learn.preprocess import ImageSettings
from cryopose.learn.train import TrainSettings

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"
EYE = torch.eye(3, dtype=torch.float64)


def _rot_z(fold: int) -> torch.Tensor:
    c, s = math.cos(2 * math.pi / fold), math.sin(2 * math.pi / fold)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


def _contains(group: torch.Tensor, m: torch.Tensor) -> bool:
    return bool(((group - m).abs().amax(dim=(1, 2)) < 1e-9).any())


# ----------------------------------------------------------------------------- the value type
def test_d7_is_its_canonical_name_with_14_proper_rotations():
    d7 = Symmetry("d7")
    assert d7 == "D7" and d7 == Symmetry("D7") and d7 != "d7"
    assert str(d7) == "D7" and type(str(d7)) is str and repr(d7) == "Symmetry('D7')"
    assert hash(d7) == hash("D7") and {"D7": 1}[d7] == 1
    g = d7.matrices
    assert g.shape == (14, 3, 3) and g.dtype == torch.float64 and d7.order == 14
    torch.testing.assert_close(g[0], EYE)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(14, dtype=torch.float64))
    torch.testing.assert_close(g @ g.transpose(1, 2), EYE.expand(14, 3, 3))
    separation = (g[:, None] - g[None]).abs().amax(dim=(-1, -2)) + 10 * torch.eye(14, dtype=torch.float64)
    assert float(separation.min()) > 0.1  # 14 distinct operators
    assert _contains(g, _rot_z(7)) and _contains(g, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))
    torch.testing.assert_close(d7.proper_matrices, g)
    torch.testing.assert_close(g, symmetry_matrices("D7"))
    assert not d7.is_identity and Symmetry("c1").is_identity and Symmetry() == "C1"


def test_aliases_and_improper_groups():
    assert Symmetry("i") == "I2" and Symmetry(" ih ") == "I2H" and Symmetry("c4v") == "C4V"
    c4v = Symmetry("C4v")
    assert c4v.order == 8 and c4v.proper_matrices.shape == (4, 3, 3)
    assert Symmetry("I1").order == 60 and Symmetry("o").order == 24


def test_a_symmetry_is_not_built_again():
    d7 = Symmetry("D7")
    assert Symmetry(d7) is d7 and copy.copy(d7) is d7 and copy.deepcopy(d7) is d7


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_symmetry_pickles(protocol):
    back = pickle.loads(pickle.dumps(Symmetry("d7"), protocol=protocol))
    assert type(back) is Symmetry and back == "D7" and back.order == 14


def test_symmetry_cloudpickles_for_dask():
    cloudpickle = pytest.importorskip("cloudpickle")
    back = cloudpickle.loads(cloudpickle.dumps({"s": Symmetry("o")}))["s"]
    assert type(back) is Symmetry and back == "O"


def test_symmetry_goes_into_json_as_its_name():
    assert json.dumps({"symmetry": Symmetry("d2")}) == '{"symmetry": "D2"}'


@pytest.mark.parametrize("bad", ["Q7", "C0", "S3", "I5", "", "C4x", "D", None, 7])
def test_unknown_names_raise_one_clear_value_error(bad):
    with pytest.raises(ValueError) as info:
        Symmetry(bad)
    assert isinstance(info.value, UserError) and info.value.option == "sym"
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"unknown symmetry {bad!r}; give a RELION point group")
    assert "I1-I4" in message


def test_names_are_parsed_once():
    symmetry_matrices("d5")
    before = _parse.cache_info()
    symmetry_matrices("d5")
    Symmetry("d5")
    after = _parse.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2
    d5 = Symmetry("D5")
    before = _parse.cache_info()
    d5.matrices, d5.order, symmetry_matrices(d5), Symmetry(d5)  # a Symmetry is never parsed again
    assert _parse.cache_info() == before


def test_returned_matrices_cannot_change_the_cached_group():
    Symmetry("D7").matrices.zero_()
    symmetry_matrices("d7").zero_()
    assert float(Symmetry("D7").matrices.abs().sum()) > 10
    torch.testing.assert_close(Symmetry("D7").matrices[0], EYE)


# ----------------------------------------------------------------------------- settings
SETTINGS = {
    "reconstruct": lambda **kw: ReconstructSettings(**kw),
    "simulate": lambda **kw: SimulateSettings(n=10, **kw),
    "refine": lambda **kw: RefineSettings(**kw),
    "evaluate": lambda **kw: EvaluateSettings(**kw),
    "train": lambda **kw: TrainSettings(**kw),
    "validate": lambda **kw: ValidationOptions(match=MatchSettings(**kw)).match,
}


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_settings_hold_a_canonical_symmetry(kind):
    make = SETTINGS[kind]
    default, d7 = make(), make(symmetry="d7")
    assert type(default.symmetry) is Symmetry and default.symmetry == "C1"
    assert type(d7.symmetry) is Symmetry and d7.symmetry == "D7" and asdict(d7)["symmetry"] == "D7"
    back = pickle.loads(pickle.dumps(d7))
    assert back == d7 and type(back.symmetry) is Symmetry
    if kind != "validate":
        assert replace(d7, symmetry="i").symmetry == "I2"
    with pytest.raises(UserError, match="unknown symmetry 'Q7'"):
        make(symmetry="Q7")


def test_validation_options_leave_the_callers_match_settings_alone():
    match = MatchSettings(symmetry="c4")
    opts = ValidationOptions(match=match)
    assert opts.match.symmetry == "C4" and type(opts.match.symmetry) is Symmetry and match.symmetry == "c4"


def test_checkpoints_resume_across_spellings_and_restart_from_old_lowercase_ones(tmp_path):
    new = Checkpoint(tmp_path / "new.pt", {"symmetry": ReconstructSettings(symmetry="c2").symmetry})
    new.save({"done": [1]})
    assert Checkpoint(tmp_path / "new.pt", {"symmetry": Symmetry("C2")}).load()["done"] == [1]
    # a run of an older cryopose kept the name as typed: its checkpoint is discarded (a restart)
    Checkpoint(tmp_path / "old.pt", {"symmetry": "c2"}).save({"done": [1]})
    assert Checkpoint(tmp_path / "old.pt", {"symmetry": Symmetry("c2")}).load() is None
    assert not (tmp_path / "old.pt").exists()


# ----------------------------------------------------------------------------- API: symmetry=, sym= deprecated
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    cryopose.simulate(BUNDLED, out, n=6, snr=float("inf"), ctf=False, seed=3)
    return out / "particles.star"


def test_api_train_takes_symmetry_and_warns_on_sym(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(api, "run_train", lambda particles, out, settings, **kw: seen.append(settings) or {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cryopose.train(tmp_path / "p.star", tmp_path / "o", symmetry="d2", epochs=1)
    assert type(seen[-1].train.symmetry) is Symmetry and seen[-1].train.symmetry == "D2"
    with pytest.warns(DeprecationWarning, match=r"train\(sym=\.\.\.\) is deprecated; use symmetry=") as record:
        cryopose.train(tmp_path / "p.star", tmp_path / "o", sym="c4", epochs=1)
    assert record[0].filename == __file__  # points at the caller
    assert seen[-1].train.symmetry == "C4"
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="give symmetry only"):
        cryopose.train(tmp_path / "p.star", tmp_path / "o", symmetry="D2", sym="C4", epochs=1)
    with pytest.raises(UserError, match="Q7"):
        cryopose.train(tmp_path / "p.star", tmp_path / "o", symmetry="Q7", epochs=1)


def test_api_particles_dataset_takes_symmetry_and_warns_on_sym(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = cryopose.particles_dataset(sim, image_size=16, symmetry="d2")
        assert type(ds.symmetry) is Symmetry and ds.symmetry == "D2"
    with pytest.warns(DeprecationWarning, match=r"particles_dataset\(sym=\.\.\.\)") as record:
        ds = cryopose.particles_dataset(sim, image_size=16, sym="c4")
    assert record[0].filename == __file__ and ds.symmetry == "C4"
    with pytest.warns(DeprecationWarning, match=r"\.sym is deprecated"):
        assert ds.sym == "C4"


def test_particles_dataset_takes_symmetry_and_warns_on_sym(sim):
    ps = cryopose.read_particles(sim)
    images, tensors, settings = api.ParticleImages(ps), ps.to_tensors(ctf=False), ImageSettings(image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ParticlesDataset(images, tensors, settings, symmetry="i").symmetry == "I2"
    with pytest.warns(DeprecationWarning, match=r"ParticlesDataset\(sym=\.\.\.\)") as record:
        assert ParticlesDataset(images, tensors, settings, sym="d3").symmetry == "D3"
    assert record[0].filename == __file__
    with pytest.raises(UserError, match="Q7"):
        ParticlesDataset(images, tensors, settings, symmetry="Q7")
