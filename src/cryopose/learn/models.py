"""Pose estimators: a CNN backbone with a cryo-forum quaternion head or an SO(3)-grid head,
and an origin head; all give RELION pose matrices A and origins in pixels of the prepared
image (x along columns, y along rows; RELION's image is the projection shifted by minus the
origin, so the particle's centre sits at box centre - origin).

- ``ForumEstimator`` (seed 004): optional blur layer (Gaussian low-pass copies as channels),
  CNN, generalised-mean pooling with a learned exponent, 10 numbers -> A = L L^T (the
  paper's, ``qcqp="cholesky"``) or A symmetric with the 10 numbers as its upper triangle
  (Peretroukhin et al.'s, ``qcqp="symmetric"``; its eigenvectors and eigenvalue gaps, all
  that is used, are those of the PSD A - lambda_1 I) -> the quaternion of A's smallest
  eigenvalue, Bingham dispersions as uncertainty. The 10 numbers come from one linear layer
  (the paper's) or, with ``head_hidden``, from a hidden ReLU layer first. An optional
  auxiliary SO(3)-grid head shares the features during training (it steadies the early
  epochs; the quaternion head alone makes the prediction).
- ``GridEstimator`` (Image2Sphere spirit, without e3nn): the head gives the coefficients of a
  band-limited function on SO(3) (all polynomials of degree <= ``degree`` in the entries of
  the rotation matrix, which span the Wigner-D functions of degree <= ``degree``), evaluated
  on a HEALPix SO(3) grid as logits. Prediction: the grid's argmax, refined by evaluating the
  same function on ever finer local grids around it; confidence: the probability mass
  within one grid spacing of the prediction.

``build_estimator(config)`` rebuilds a model from its plain-dict ``config`` (what a model
file keeps beside the weights).
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations_with_replacement
from typing import Any

import torch
from torch import nn

from cryopose.geometry.grids import local_rotation_grid
from cryopose.geometry.rotations import axis_angle_to_matrix, matrix_to_quaternion, quaternion_to_matrix
from cryopose.learn.so3 import (
    bingham_dispersions,
    grid_spacing,
    healpix_rotations,
    quaternion_from_symmetric,
    symmetric_from_entries,
    symmetric_from_triangle,
)

__all__ = [
    "BlurLayer",
    "GeneralisedMeanPool",
    "ConvBackbone",
    "OriginHead",
    "HarmonicGridHead",
    "ForumEstimator",
    "GridEstimator",
    "build_estimator",
    "default_network",
    "DEFAULT_CHANNELS",
    "estimator_config_problem",
    "weights_problem",
]

DEFAULT_CHANNELS = (16, 32, 64, 128)
"""Backbone widths of the default network, sized to train in minutes on a laptop CPU at
32 px; the paper's VGG-like net is about (32, 64, 128, 256, 1024)."""


class BlurLayer(nn.Module):
    """Gaussian low-pass copies of each image as channels: sigma 0 (the image) and each of
    ``sigmas`` (px), applied in Fourier space (exact, periodic). (n, 1, s, s) -> (n, 1 + k, s, s)."""

    def __init__(self, sigmas: tuple[float, ...] = (1.0, 2.0)) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)

    @property
    def channels(self) -> int:
        return 1 + len(self.sigmas)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.sigmas:
            return images
        size = images.shape[-1]
        ky = torch.fft.fftfreq(size, device=images.device, dtype=images.dtype)[:, None]
        kx = torch.fft.rfftfreq(size, device=images.device, dtype=images.dtype)[None, :]
        k2 = ky**2 + kx**2
        spectrum = torch.fft.rfft2(images)
        copies = [images]
        for sigma in self.sigmas:
            gain = torch.exp(-2 * math.pi**2 * sigma**2 * k2)
            copies.append(torch.fft.irfft2(spectrum * gain, s=images.shape[-2:]))
        return torch.cat(copies, dim=1)


class GeneralisedMeanPool(nn.Module):
    """(mean over pixels of clamp(x, eps)^p)^(1/p) per channel, p learned (starts at ``p``):
    average pooling at p = 1, max pooling as p -> inf. (n, c, h, w) -> (n, c)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 16.0)
        return x.clamp_min(self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvBackbone(nn.Module):
    """VGG-like: one double 3x3 convolution block per entry of ``channels``, 2x max pooling
    between blocks. ``forward`` gives the last feature map and the first block's (stride 1)
    for the origin head."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] = DEFAULT_CHANNELS, dropout: float = 0.0) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for c in channels:
            blocks.append(_double_conv(cin, c))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = cin
        self.first_channels = channels[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first: torch.Tensor | None = None
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            if i == 0:
                first = x
        assert first is not None  # channels has at least one entry (__init__ reads channels[0])
        return self.dropout(x), first


class OriginHead(nn.Module):
    """Origin (x, y) in px of the input from a heat map of the particle's centre: a small
    convolution over the first feature map (full resolution), softmax over pixels, minus the
    expected position relative to the box centre (soft-argmax; shift-equivariant, sub-pixel)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heat = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.heat(features).flatten(1)
        weights = torch.softmax(logits, dim=1)
        h, w = features.shape[-2:]
        ys = torch.arange(h, device=features.device, dtype=features.dtype) - h // 2
        xs = torch.arange(w, device=features.device, dtype=features.dtype) - w // 2
        y = (weights.view(-1, h, w).sum(-1) * ys).sum(-1)
        x = (weights.view(-1, h, w).sum(-2) * xs).sum(-1)
        return -torch.stack([x, y], dim=-1)


# ---------------------------------------------------------------------- band-limited SO(3) functions
def _monomial_indices(degree: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for d in range(1, degree + 1):
        out.extend(combinations_with_replacement(range(9), d))
    return out


def _monomials(rotations: torch.Tensor, keys: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """The monomials ``keys`` (tuples of entry indices 0..8, row-major) of the entries of each
    rotation, (..., len(keys)), each built from its prefix (one product per needed prefix)."""
    entries = rotations.reshape(*rotations.shape[:-2], 9)
    values: dict[tuple[int, ...], torch.Tensor] = {(): torch.ones_like(entries[..., 0])}
    needed = sorted({key[:j] for key in keys for j in range(1, len(key) + 1)}, key=len)
    for key in needed:
        values[key] = values[key[:-1]] * entries[..., key[-1]]
    return torch.stack([values[key] for key in keys], dim=-1)


@lru_cache(maxsize=4)
def _harmonic_basis(
    degree: int, order: int, chosen: tuple[tuple[int, ...], ...] | None = None
) -> tuple[tuple[tuple[int, ...], ...], torch.Tensor]:
    """(monomials, W): monomials(g) @ W is an orthonormal basis (on the order's grid, mean of
    squares 1) of the functions of degree <= ``degree`` on SO(3), K = sum (2l+1)^2 of them.

    On SO(3) the monomials are dependent (rows and columns are unit vectors); K independent
    ones are chosen by pivoted QR of a random sketch of their values on the grid (a few
    seconds; a model keeps its ``chosen`` monomials in its config, so loading skips it)."""
    import scipy.linalg

    grid = healpix_rotations(order, dtype=torch.float64)
    expected = sum((2 * d + 1) ** 2 for d in range(degree + 1))
    if chosen is None:
        every = tuple(_monomial_indices(degree))
        values = _monomials(grid, every)
        g = torch.Generator().manual_seed(12345)
        sketch = torch.randn(expected + 64, grid.shape[0], generator=g, dtype=torch.float64) @ values
        _, _, pivots = scipy.linalg.qr(sketch.numpy(), mode="economic", pivoting=True)
        chosen = tuple(every[i] for i in sorted(pivots[:expected]))
    if len(chosen) != expected:
        raise ValueError(f"a degree-{degree} basis needs {expected} monomials, got {len(chosen)}")
    basis = _monomials(grid, chosen)
    # Gram = R^T R (Cholesky); basis @ R^-1 is orthonormal
    factor, info = torch.linalg.cholesky_ex(basis.T @ basis / grid.shape[0], upper=True)
    if int(info) != 0:
        raise RuntimeError(f"band-limited basis of degree {degree} is rank-deficient on the order-{order} grid")
    eye = torch.eye(expected, dtype=torch.float64)
    return chosen, torch.linalg.solve_triangular(factor, eye, upper=True)


class HarmonicGridHead(nn.Module):
    """Features (n, c) -> logits (n, N) on the SO(3) grid of ``order``: a linear map to the
    coefficients of a function of degree <= ``degree`` on SO(3), evaluated on the grid
    (``refine`` evaluates the same function at poses between the grid points)."""

    # buffers (registered in __init__)
    projection: torch.Tensor
    grid: torch.Tensor
    grid_quaternions: torch.Tensor
    grid_basis: torch.Tensor

    def __init__(self, in_features: int, order: int = 2, degree: int = 6, monomials: list | None = None) -> None:
        super().__init__()
        self.order, self.degree = order, degree
        given = None if monomials is None else tuple(tuple(int(i) for i in key) for key in monomials)
        self.monomials, projection = _harmonic_basis(degree, order, given)
        self.register_buffer("projection", projection.float(), persistent=False)
        grid = healpix_rotations(order)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("grid_quaternions", matrix_to_quaternion(grid), persistent=False)
        self.register_buffer(
            "grid_basis", (_monomials(grid.double(), self.monomials) @ projection).float(), persistent=False
        )
        self.coefficients = nn.Linear(in_features, projection.shape[1])
        with torch.no_grad():  # start near the uniform distribution
            self.coefficients.weight.mul_(0.01)
            self.coefficients.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.coefficients(features) @ self.grid_basis.T

    def refine(self, features: torch.Tensor, logits: torch.Tensor, levels: int = 4) -> torch.Tensor:
        """Poses (n, 3, 3): the grid's argmax refined on local grids of 3^3 rotations about
        it (steps of half a grid spacing, then half as wide at each level)."""
        monomial_coefficients = self.coefficients(features) @ self.projection.T  # (n, M)
        best = self.grid[logits.argmax(dim=1)]
        radius = grid_spacing(self.order) / 2
        rows = torch.arange(len(best), device=best.device)
        for _ in range(levels):
            steps = local_rotation_grid(
                radius, radius, shape="cube", as_matrices=False, dtype=best.dtype, device=best.device
            )
            candidates = best[:, None] @ axis_angle_to_matrix(steps)[None]
            values = (_monomials(candidates, self.monomials) * monomial_coefficients[:, None, :]).sum(-1)
            best = candidates[rows, values.argmax(dim=1)]
            radius /= 2
        return best

    def mass_near(self, logits: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Probability (softmax over the grid) within one grid spacing of each pose (n,)."""
        probs = torch.softmax(logits, dim=1)
        cosine = (matrix_to_quaternion(rotations) @ self.grid_quaternions.T).abs()  # cos(angle / 2)
        near = cosine >= math.cos(grid_spacing(self.order) / 2)
        return (probs * near).sum(dim=1)


# ---------------------------------------------------------------------- estimators
def _grid_head(config: dict[str, Any], in_features: int) -> HarmonicGridHead:
    """The config's grid head; the monomials it chose are written back into the config."""
    order = int(config.get("grid_order", 2))
    config.setdefault("degree", 3 if order <= 1 else 6)  # degree 6 needs more points than order 1's 576
    head = HarmonicGridHead(in_features, order, int(config["degree"]), config.get("grid_monomials"))
    config["grid_monomials"] = [list(key) for key in head.monomials]
    return head


class _Estimator(nn.Module):
    kind = ""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.blur = BlurLayer(tuple(config.get("blur_sigmas", ())))
        self.backbone = ConvBackbone(
            self.blur.channels, tuple(config.get("channels", DEFAULT_CHANNELS)), float(config.get("dropout", 0.0))
        )
        self.pool = GeneralisedMeanPool(float(config.get("gem_p", 3.0)))
        self.origin = OriginHead(self.backbone.first_channels)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features (n, c), origins in px (n, 2)) of images (n, 1, s, s)."""
        last, first = self.backbone(self.blur(images))
        return self.pool(last), self.origin(first)

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """rotations (n, 3, 3), origin_px (n, 2), confidence (larger is surer) and the
        estimator's extras, of images (n, 1, s, s)."""
        raise NotImplementedError


class ForumEstimator(_Estimator):
    """cryo-forum: QCQP quaternion head with Bingham uncertainty (module docstring)."""

    kind = "forum"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        c = self.backbone.out_channels
        hidden = int(config.get("head_hidden", 0))
        last = nn.Linear(hidden or c, 10)
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), last) if hidden else last
        with torch.no_grad():  # start near L (or A) = diag(1, 2, 3, 4): distinct eigenvalues
            last.weight.mul_(0.1)
            bias = torch.zeros(4, 4)
            bias[range(4), range(4)] = torch.tensor([1.0, 2.0, 3.0, 4.0])
            last.bias.copy_(bias[torch.triu_indices(4, 4)[0], torch.triu_indices(4, 4)[1]])
        self.auxiliary = _grid_head(self.config, c) if config.get("auxiliary_grid", True) else None
        self.qcqp = str(config.get("qcqp", "cholesky"))
        if self.qcqp not in ("cholesky", "symmetric"):
            raise ValueError(f"unknown QCQP parameterisation {self.qcqp!r}; use cholesky or symmetric")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, origins = self.features(images)
        entries = self.head(feats).double()  # eigh in float64: stable gradients
        A = symmetric_from_entries(entries) if self.qcqp == "symmetric" else symmetric_from_triangle(entries)
        q, eigenvalues = quaternion_from_symmetric(A)
        out = {"quaternion": q.to(feats.dtype), "eigenvalues": eigenvalues.to(feats.dtype), "origin_px": origins}
        if self.auxiliary is not None and self.training:
            out["grid_logits"] = self.auxiliary(feats)
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """rotations (n, 3, 3), origin_px (n, 2), confidence = -trace(Lambda) (larger is
        surer), lambda_max, lambda_trace."""
        out = self.forward(images)
        _, lam_max, lam_trace = bingham_dispersions(out["eigenvalues"])
        return {
            "rotations": quaternion_to_matrix(out["quaternion"]),
            "origin_px": out["origin_px"],
            "confidence": -lam_trace,
            "lambda_max": lam_max,
            "lambda_trace": lam_trace,
        }


class GridEstimator(_Estimator):
    """Distribution over a HEALPix SO(3) grid from a band-limited head (module docstring)."""

    kind = "grid"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.head = _grid_head(self.config, self.backbone.out_channels)
        self.refine_levels = int(config.get("refine_levels", 4))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, origins = self.features(images)
        return {"grid_logits": self.head(feats), "origin_px": origins, "features": feats}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """rotations (n, 3, 3), origin_px (n, 2), confidence = probability within one grid
        spacing of the prediction, grid_probability = the argmax's own probability."""
        out = self.forward(images)
        logits = out["grid_logits"]
        rotations = self.head.refine(out["features"], logits, self.refine_levels)
        return {
            "rotations": rotations,
            "origin_px": out["origin_px"],
            "confidence": self.head.mass_near(logits, rotations),
            "grid_probability": torch.softmax(logits, dim=1).amax(dim=1),
        }


ESTIMATORS = {"forum": ForumEstimator, "grid": GridEstimator}


def default_network(kind: str) -> dict[str, Any]:
    """The estimator config ``cryopose train`` uses for ``kind`` ("grid" or "forum") unless
    told otherwise (a config without these keys builds the paper's forum head: one linear
    layer, A = L L^T). forum: the blur layer (sigmas 1 and 2 px); a hidden layer of 256 in
    the 10-number head and A symmetric from the 10 numbers, which learn the held-out map
    where one linear layer and L L^T stay far behind (benchmarks/bench_learn.py)."""
    if kind == "forum":
        return {"model": "forum", "blur_sigmas": (1.0, 2.0), "head_hidden": 256, "qcqp": "symmetric"}
    if kind == "grid":
        return {"model": "grid", "blur_sigmas": ()}
    raise ValueError(f"unknown estimator {kind!r}; use one of {sorted(ESTIMATORS)}")


def build_estimator(config: dict[str, Any]) -> _Estimator:
    """A new estimator of ``config["model"]`` ("forum" or "grid") with the config's settings."""
    kind = config.get("model")
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown estimator {kind!r}; use one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[kind](config)


# ---------------------------------------------------------------------- configs read from files
MAX_PARAMETERS = 100_000_000
"""Most backbone weights a config may ask for (400 MB in float32; the paper's net has 13 M)."""
MAX_GRID_VALUES = 50_000_000
"""Most values of a grid head's basis on its grid (grid points x basis functions)."""


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def estimator_config_problem(config: dict[str, Any]) -> str | None:
    """What makes ``config`` (read from a file) unfit to build an estimator from, or None:
    unknown estimator, values of the wrong type or out of range, or a network too large to
    build (more than ``MAX_PARAMETERS`` backbone weights, or a grid head of more than
    ``MAX_GRID_VALUES`` basis values). Checked before anything is allocated."""
    if config.get("model") not in ESTIMATORS:
        return f"unknown estimator {config.get('model')!r} (cryopose has {', '.join(sorted(ESTIMATORS))})"
    channels = config.get("channels", DEFAULT_CHANNELS)
    if (
        not isinstance(channels, (list, tuple))
        or not 1 <= len(channels) <= 8
        or not all(_whole(c, 1, 8192) for c in channels)
    ):
        return f"its channel widths {channels!r} are not 1 to 8 whole numbers of 1 to 8192"
    sigmas = config.get("blur_sigmas", ())
    if not isinstance(sigmas, (list, tuple)) or len(sigmas) > 8 or not all(_real(s, 0.0, 64.0) for s in sigmas):
        return f"its blur sigmas {sigmas!r} are not up to 8 numbers of 0 to 64 px"
    cin, weights = 1 + len(sigmas), 0
    for c in channels:
        weights += 9 * (cin * c + c * c)
        cin = c
    if weights > MAX_PARAMETERS:
        return f"its network would have {weights:,} weights, more than any cryopose estimator ({MAX_PARAMETERS:,})"
    for key, low, high in (("dropout", 0.0, 0.99), ("gem_p", 1.0, 16.0)):
        if key in config and not _real(config[key], low, high):
            return f"its {key} {config[key]!r} is not a number in [{low}, {high}]"
    for key, low, high in (("grid_order", 0, 5), ("degree", 1, 12), ("refine_levels", 0, 16), ("head_hidden", 0, 8192)):
        if key in config and not _whole(config[key], low, high):
            return f"its {key} {config[key]!r} is not a whole number in [{low}, {high}]"
    if config.get("qcqp", "cholesky") not in ("cholesky", "symmetric"):
        return f"its qcqp {config['qcqp']!r} is neither cholesky nor symmetric"
    if "auxiliary_grid" in config and not isinstance(config["auxiliary_grid"], bool):
        return f"its auxiliary_grid {config['auxiliary_grid']!r} is not true or false"
    if config["model"] == "grid" or config.get("auxiliary_grid", True):
        order = config.get("grid_order", 2)
        degree = config.get("degree", 3 if order <= 1 else 6)
        size = sum((2 * d + 1) ** 2 for d in range(degree + 1))
        if 72 * 8**order * size > MAX_GRID_VALUES:
            return f"its grid head (order {order}, degree {degree}) would need {72 * 8**order * size:,} values"
        monomials = config.get("grid_monomials")
        if monomials is not None and (
            not isinstance(monomials, (list, tuple))
            or len(monomials) != size
            or not all(
                isinstance(m, (list, tuple)) and len(m) <= degree and all(_whole(i, 0, 8) for i in m) for m in monomials
            )
        ):
            return f"its grid monomials are not {size} lists of up to {degree} entry indices 0..8"
    return None


def weights_problem(model: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``weights`` from loading into ``model`` (missing or extra names, shapes,
    types), or None."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        return (
            f"its weights do not fit the network its config describes ({len(missing)} missing, e.g. "
            f"{missing[0] if missing else '-'}; {len(extra)} unexpected, e.g. {extra[0] if extra else '-'})"
        )
    for name, value in expected.items():
        given = weights[name]
        if tuple(given.shape) != tuple(value.shape) or given.is_floating_point() != value.is_floating_point():
            return (
                f"its weight {name} is {tuple(given.shape)} {given.dtype}, but the network its config describes "
                f"needs {tuple(value.shape)} {value.dtype}"
            )
    return None
