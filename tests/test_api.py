"""The public API at the package top level."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

import cryopose

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cryopose" / "data" / "emd_1832.map"


def test_version_is_defined_once():
    assert cryopose.__version__ == importlib.metadata.version("cryopose")


def test_simulate_reconstruct_fsc_round_trip(tmp_path):
    summary = cryopose.simulate(BUNDLED, tmp_path / "sim", n=40, snr=float("inf"), ctf=False, seed=1)
    assert summary["n_particles"] == 40 and summary["box"] == 64
    particles = cryopose.read_particles(tmp_path / "sim" / "particles.star")
    assert isinstance(particles, cryopose.ParticleSet) and len(particles) == 40
    cryopose.write_particles(particles.subset(np.arange(10)), tmp_path / "other" / "ten.star")
    assert len(cryopose.read_particles(tmp_path / "other" / "ten.star")) == 10
    rec = cryopose.reconstruct_map(tmp_path / "sim" / "particles.star", tmp_path / "rec", ctf=False)
    volume, apix = cryopose.read_map(tmp_path / "rec" / "map.mrc")
    assert volume.shape == (64, 64, 64) and abs(apix - 5.7) < 1e-3
    result = cryopose.fsc(tmp_path / "rec" / "map.mrc", BUNDLED)
    # 40 noise-free views fill the low shells: the map agrees with the truth to ~20 A
    assert result.resolution_05 < 30.0 and rec["resolution_0143"] > 0


def test_public_names_are_the_functions():
    import cryopose.reconstruct  # noqa: F401  (subpackages must not shadow the API)
    import cryopose.validate  # noqa: F401

    for name in cryopose.__all__:
        if name != "__version__":
            assert getattr(cryopose, name) is not None
    assert callable(cryopose.reconstruct_map) and callable(cryopose.validate_alignment)
