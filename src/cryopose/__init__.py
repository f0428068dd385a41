"""cryopose: the poses of cryo-EM particle images, in RELION's conventions.

>>> import cryopose
>>> cryopose.simulate("map.mrc", "sim", n=2000, snr=0.1, max_shift=10)
>>> cryopose.reconstruct_map("sim/particles.star", "rec")["resolution_0143"]
>>> cryopose.refine_poses("predicted.star", "rec/map.mrc", "refined")["resolution_0143"]
>>> cryopose.train("sim/particles.star", "model", epochs=40)["models"][0]["best"]
>>> cryopose.predict("model/model.pt", "new/particles.star", "pred", keep_fraction=0.75)
>>> particles = cryopose.read_particles("sim/particles.star")

The names below are imported on first use, so ``import cryopose`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "ParticleSet": "cryopose.particles",
    "UserError": "cryopose.errors",
    "read_particles": "cryopose.api",
    "write_particles": "cryopose.api",
    "read_map": "cryopose.api",
    "write_map": "cryopose.api",
    "simulate": "cryopose.api",
    "reconstruct_map": "cryopose.api",
    "fsc": "cryopose.api",
    "validate_alignment": "cryopose.api",
    "align_maps": "cryopose.api",
    "evaluate_poses": "cryopose.api",
    "refine_poses": "cryopose.api",
    "train": "cryopose.api",
    "predict": "cryopose.api",
    "load_estimator": "cryopose.api",
    "particles_dataset": "cryopose.api",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cryopose' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
