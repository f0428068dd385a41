"""A PyTorch Dataset of particles for pose learning: prepared images with their poses.

The dataset reads images through an image source (``len(source)``,
``source.read(indices) -> float32 (k, S, S)``; e.g. ``cryopose.io.mrc.ParticleImages``,
which pickles and opens its memory maps lazily in each process, or ``ArrayImages``), one
item or one batch at a time, never the whole stack unless ``prepare_all`` is asked for.
Metadata come from a ``ParticleTensors``. Images are prepared by
:func:`cryopose.learn.preprocess.prepare_images` and, if asked, augmented by
:mod:`cryopose.learn.augment` with a generator seeded by (seed, epoch, particle index), so
items do not depend on batch composition or on the number of DataLoader workers.

An item (``dataset[i]``) is a dict of tensors:

- "image" (1, s, s) float32, the prepared (and augmented) image;
- "rotation" (3, 3) float32, the RELION pose matrix A (identity without angles);
- "quaternion" (4,) float32, unit (w, x, y, z), w >= 0, of "rotation";
- "has_pose" () bool, whether the set has angles;
- "origin" (2,) float32, rlnOriginX/YAngst in Å (after augmentation);
- "confidence" () float32, rlnMaxValueProbDistribution (1 where absent);
- "ctf" (7,) float32: defocus U, V (Å), defocus angle (deg), voltage (kV), spherical
  aberration (mm), amplitude contrast, phase shift (deg); zeros without CTF;
- "half" () int64, rlnRandomSubset (0 where absent);
- "index" () int64, the particle's index in the set.

``batch(indices)`` gives the same, stacked, from one ``read`` call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cryopose.errors import UserError
from cryopose.geometry.rotations import matrix_to_quaternion
from cryopose.geometry.symmetry import Symmetry, symmetry_argument
from cryopose.learn.augment import AugmentDraw, AugmentSettings, apply_augmentation, draw_augmentation
from cryopose.learn.preprocess import ImageSettings, prepare_images, prepared_pixel_size, prepared_size

__all__ = ["CTF_FIELDS", "ParticlesDataset"]

CTF_FIELDS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "voltage",
    "spherical_aberration",
    "amplitude_contrast",
    "phase_shift",
)
"""The CTFParameters fields of an item's "ctf" vector, in order."""


def _item_seed(seed: int, epoch: int, index: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0])


class ParticlesDataset(Dataset):
    """Particles with prepared images, poses, origins, CTF and half sets (see the module doc).

    Args:
        images: the image source, one image per particle of ``tensors``, in the same order.
        tensors: the particles' ``ParticleTensors`` (one pixel size for all).
        settings: how images are prepared.
        augment: random augmentation of every item, or None.
        symmetry: the symmetry group of the particles (RELION's name), kept for the losses.
        seed: seed of the augmentation.
        sym: the deprecated name of ``symmetry`` (a DeprecationWarning; kept for one release).
    """

    def __init__(
        self,
        images: Any,
        tensors: Any,
        settings: ImageSettings,
        augment: AugmentSettings | None = None,
        symmetry: str = "C1",
        seed: int = 0,
        *,
        sym: str | None = None,
    ) -> None:
        group = symmetry_argument(symmetry, sym, "ParticlesDataset")
        n = len(tensors)
        if len(images) != n:
            raise UserError(f"the image source has {len(images)} images for {n} particles; give one image per particle")
        if n == 0:
            raise UserError("the particle set is empty; give at least one particle")
        apix = tensors.pixel_size.to(torch.float64)
        if float((apix - apix[0]).abs().max()) > 1e-4 * float(apix[0]):
            raise UserError(
                f"particles have pixel sizes from {float(apix.min()):.4f} to {float(apix.max()):.4f} Å; "
                "train on particles of one pixel size (split the set by optics group)"
            )
        shape = getattr(images, "image_shape", None)
        box = int(shape[-1]) if shape is not None else int(np.asarray(images.read([0])).shape[-1])
        if settings.ctf_correction != "none" and tensors.ctf is None:
            raise UserError(
                f"CTF correction {settings.ctf_correction!r} needs CTF parameters but the particles have none; "
                "turn CTF correction off or give particles with CTF columns",
                option="ctf-correction",
            )
        self.images = images
        self.settings = settings
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self._symmetry = group
        self._box = box
        self._input_pixel_size = float(apix[0])
        self._size = prepared_size(box, settings)  # raises UserError for an image size too large
        self._pixel_size = prepared_pixel_size(box, self._input_pixel_size, settings)
        self._ctf = tensors.ctf
        self._has_pose = tensors.rotations is not None
        rot = tensors.rotations if self._has_pose else torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
        self._rotations = rot.to(torch.float64).contiguous()
        self._origins = tensors.shifts_angstrom.to(torch.float64).reshape(n, 2)
        self._confidence = tensors.confidence.to(torch.float32).reshape(n)
        if tensors.ctf is None:
            self._ctf_vectors = torch.zeros(n, len(CTF_FIELDS), dtype=torch.float32)
        else:
            self._ctf_vectors = torch.stack(
                [getattr(tensors.ctf, f).to(torch.float32).reshape(n) for f in CTF_FIELDS], -1
            )
        halves = tensors.half_sets
        self._halves = torch.zeros(n, dtype=torch.int64) if halves is None else halves.to(torch.int64).reshape(n)
        self._cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self._rotations.shape[0])

    @property
    def image_size(self) -> int:
        """Side (px) of the prepared images."""
        return self._size

    @property
    def pixel_size(self) -> float:
        """Pixel size (Å/px) of the prepared images."""
        return self._pixel_size

    @property
    def symmetry(self) -> Symmetry:
        """The particles' symmetry group."""
        return self._symmetry

    @property
    def sym(self) -> Symmetry:
        """Deprecated name of :attr:`symmetry` (kept for one release)."""
        warnings.warn("ParticlesDataset.sym is deprecated; use .symmetry", DeprecationWarning, stacklevel=2)
        return self._symmetry

    @property
    def has_poses(self) -> bool:
        """Whether the particles have angles (else every "rotation" is the identity)."""
        return self._has_pose

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation of ``epoch`` from now on (call before each epoch's loader)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ reading
    def _prepared(self, idx: np.ndarray, device: torch.device | str | None) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[torch.from_numpy(idx)].to(device)
        raw = torch.from_numpy(np.ascontiguousarray(self.images.read(idx), dtype=np.float32)).to(device)
        ctf = None
        if self.settings.ctf_correction != "none":
            ctf = self._ctf[torch.from_numpy(idx)]
        return prepare_images(raw, ctf, self._input_pixel_size, self.settings)

    def _draw(self, idx: np.ndarray, augment: AugmentSettings) -> AugmentDraw:
        draws = []
        for i in idx.tolist():
            generator = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, i))
            draws.append(draw_augmentation(1, self._size, augment, generator))
        return AugmentDraw.cat(draws)

    def batch(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, device: torch.device | str | None = None
    ) -> dict:
        """The items at ``indices`` stacked (leading dimension k), images read in one call,
        on ``device`` (default CPU)."""
        idx = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"particle index out of range for {n} particles")
        idx = idx % n
        t = torch.from_numpy(idx)
        images = self._prepared(idx, device)
        rotations = self._rotations[t].to(device)
        origins = self._origins[t].to(device)
        if self.augment is not None:
            images, rotations, origins = apply_augmentation(
                images, rotations, origins, self._pixel_size, self._draw(idx, self.augment)
            )
        return {
            "image": images.to(torch.float32),
            "rotation": rotations.to(torch.float32),
            "quaternion": matrix_to_quaternion(rotations).to(torch.float32),
            "has_pose": torch.full((len(idx),), self._has_pose, dtype=torch.bool, device=images.device),
            "origin": origins.to(torch.float32),
            "confidence": self._confidence[t].to(device),
            "ctf": self._ctf_vectors[t].to(device),
            "half": self._halves[t].to(device),
            "index": t.to(device),
        }

    def __getitem__(self, index: int) -> dict:
        """Item ``index`` (see the module doc)."""
        item = self.batch([int(index)])
        return {key: value[0] for key, value in item.items()}

    def prepare_all(
        self,
        chunk_size: int = 1024,
        progress: Callable[[int, int], None] | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Prepare every image once, chunk_size at a time (on ``device``), and keep them in
        memory (CPU) for the items to come; returns them, (n, 1, s, s) float32.
        ``progress(k, n)`` is called after each chunk of k images."""
        n = len(self)
        self._cache = None
        out = torch.empty(n, 1, self._size, self._size, dtype=torch.float32)
        for start in range(0, n, chunk_size):
            idx = np.arange(start, min(start + chunk_size, n), dtype=np.int64)
            out[start : start + len(idx)] = self._prepared(idx, device).cpu()
            if progress is not None:
                progress(len(idx), n)
        self._cache = out
        return out
