"""Align 3-D maps to a reference and carry particle poses along (``cryopose align-maps``).

Conventions
-----------
Volumes are indexed (z, y, x) with the box centre at index N//2; coordinates are (x, y, z)
about that centre, in pixels or, for the public transform, in Angstrom. A transform (M, t)
acts on a map V as

    V'(y) = V(M y + t)                                   (y, t in Angstrom about the centres)

M is orthogonal; det M = -1 means the hand was flipped. We write an improper M as
M = R J with R a rotation and J = diag(1, 1, -1) (z -> -z about the box centre); the
"angle" of a transform is the rotation angle of R = M J (of M itself when proper), and
``max_angle`` bounds that angle on both hands.

Hand flip of a map alone is V'(x, y, z) = V(x, y, -z): new[z] = old[2 (N//2) - z]; for an
even box the plane z = 0 has no partner and is set to zero (never wrapped).

Poses (verified numerically in the tests with projections): if particles were imaged from
V with pose A (projection samples V(A^T x)) and origin o, the same images come from
V'(y) = V(M y + t) with

    A' = A M                 (det M = +1)
    A' = J A M               (det M = -1; J A M is a proper rotation)
    o' = o - (A t)_xy        (both cases; o and t in the same unit)

Symmetry: if the reference is symmetric, Vref(S y) = Vref(y), and (M, t) aligns V with it,
V(M y + t) = Vref(y), then V(M S y + t) = Vref(S y) = Vref(y): (M S, t) is as right, i.e.
the reference's symmetry multiplies M on the RIGHT and leaves t alone (what
``geometry.distances.rotation_distance(a, b, sym)`` minimises over). For a moving map that
is itself symmetric about its own box centre, V(S x) = V(x), the equivalent answers are
(S M, S t) instead.

Method
------
Both maps are masked (optional), low-passed, and brought onto the reference grid. A global
search runs on a small Fourier-cropped box: an SO(3) grid (within ``max_angle``; both
hands when asked), for each rotation the best translation at once from a 3-D FFT
cross-correlation restricted to ``max_shift``. The best few candidates are refined on the
small box, and the best one again on a box whose Nyquist matches the low-pass, by L-BFGS
on the rotation (a rotation vector) and the shift, maximising the mask-weighted Pearson
correlation of the trilinearly resampled map with the reference. Shift and angle are
parameterised so that they can never exceed their bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cryopose.errors import UserError
from cryopose.geometry.grids import sample_rotations_near_identity
from cryopose.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rotation_angle
from cryopose.imaging.filters import lowpass_volume, soft_spherical_mask
from cryopose.imaging.resample import fourier_resize_volume
from cryopose.imaging.statistics import pearson_correlation

__all__ = [
    "J",
    "MapAlignment",
    "MapAlignmentSettings",
    "transform_volume",
    "apply_transform",
    "resample_to_grid",
    "hand_flip",
    "transform_poses",
    "align_map",
    "transform_angle_deg",
]

J = np.diag([1.0, 1.0, -1.0])


# --------------------------------------------------------------------------- helpers
def _t(x, device=None, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def _jmat(device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.diag(torch.tensor([1.0, 1.0, -1.0], device=device, dtype=dtype))


def _angle(r: np.ndarray) -> float:
    """Rotation angle (deg) of a proper rotation matrix (numpy)."""
    return math.degrees(float(rotation_angle(torch.as_tensor(np.asarray(r, dtype=np.float64)))))


def transform_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle (deg) of a transform M: of M if proper, of M J if improper."""
    m = np.asarray(matrix, dtype=np.float64)
    if np.linalg.det(m) < 0:
        m = m @ J
    return _angle(m)


# --------------------------------------------------------------------------- resampling
def transform_volume(
    volume: torch.Tensor,
    matrices: torch.Tensor,
    shifts_px: torch.Tensor | None = None,
    out_size: int | None = None,
    oversample: int = 1,
) -> torch.Tensor:
    """Trilinear resampling out[y] = V(L y + s) of a cubic volume (N, N, N).

    matrices: (3, 3) or (B, 3, 3) linear maps L (any, e.g. a scaled rotation); shifts_px:
    (3,) or (B, 3) in input pixels (x, y, z); y runs over an ``out_size`` box (default N)
    in output pixels about its centre. Returns (out, out, out) or (B, out, out, out);
    samples outside the input box are zero. ``oversample`` > 1 first Fourier-pads the
    volume by that factor, which makes the interpolation nearly exact (costs memory).
    Differentiable in ``matrices`` and ``shifts_px``.
    """
    n = volume.shape[-1]
    out = n if out_size is None else int(out_size)
    single = matrices.dim() == 2
    mats = matrices.reshape(-1, 3, 3).to(volume.dtype)
    b = mats.shape[0]
    if shifts_px is None:
        shifts = torch.zeros(b, 3, device=volume.device, dtype=volume.dtype)
    else:
        shifts = shifts_px.reshape(-1, 3).to(volume.dtype).expand(b, 3)
    src = volume
    k = int(oversample)
    if k > 1:
        src = fourier_resize_volume(volume, k * n)
    nin = src.shape[-1]
    # output normalised u in [-1, 1] -> y = a_o u + b_o (px); input index = k (L y + s) + c_in
    a_o = (out - 1) / 2.0
    b_o = (out - 1) / 2.0 - out // 2
    alpha = 2.0 / (nin - 1)
    beta = (nin // 2) * alpha - 1.0
    lin = (alpha * k * a_o) * mats
    off = alpha * k * (mats.sum(dim=-1) * b_o + shifts) + beta
    theta = torch.cat([lin, off[..., None]], dim=-1)
    grid = F.affine_grid(theta, [b, 1, out, out, out], align_corners=True)
    res = F.grid_sample(
        src[None, None].expand(b, 1, nin, nin, nin),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[:, 0]
    return res[0] if single else res


def apply_transform(
    volume,
    matrix,
    shift_A,
    pixel_size: float,
    out_size: int | None = None,
    out_pixel_size: float | None = None,
    oversample: int = 2,
    device=None,
) -> torch.Tensor:
    """The aligned map V'(y) = V(M y + t) (y, t in Angstrom about the box centres).

    volume: (N, N, N) with ``pixel_size`` Angstrom; the result lies on a grid of
    ``out_size`` voxels of ``out_pixel_size`` Angstrom (default: the input grid).
    Works for proper and improper (hand-flipped) M. Returns a float32 tensor.
    """
    vol = _t(volume, device)
    dev = vol.device
    n = vol.shape[-1]
    out = n if out_size is None else int(out_size)
    apo = pixel_size if out_pixel_size is None else float(out_pixel_size)
    m = _t(matrix, dev) * (apo / pixel_size)
    s = _t(shift_A, dev) / pixel_size
    if oversample > 1 and n * oversample > 512:
        oversample = 1  # keep memory in check for very large boxes
    if apo > pixel_size * 1.0001:
        # coarser output grid: remove what it cannot hold before interpolating
        vol = lowpass_volume(vol, 2.0 * apo, pixel_size)
    return transform_volume(vol, m, s, out, oversample=oversample)


def resample_to_grid(volume, pixel_size: float, out_size: int, out_pixel_size: float, device=None) -> torch.Tensor:
    """A map on another grid (box ``out_size``, ``out_pixel_size`` Angstrom), same centre."""
    return apply_transform(volume, np.eye(3), np.zeros(3), pixel_size, out_size, out_pixel_size, device=device)


def hand_flip(volume) -> torch.Tensor:
    """z -> -z about the box centre: new[z] = old[2 (N//2) - z]; zero where out of range."""
    vol = _t(volume)
    n = vol.shape[-3]
    c = n // 2
    out = torch.zeros_like(vol)
    z = torch.arange(n)
    src = 2 * c - z
    ok = (src >= 0) & (src < n)
    out[..., z[ok], :, :] = vol[..., src[ok], :, :]
    return out


# --------------------------------------------------------------------------- poses
def transform_poses(rotations, shifts, matrix, shift) -> tuple[np.ndarray, np.ndarray]:
    """Poses that give the same particle images from V'(y) = V(M y + t) as (A, o) from V.

    rotations (n, 3, 3) RELION matrices A; shifts (n, 2) origins o (x, y); matrix M (3, 3);
    shift t (3,) in the same unit as the origins. Returns (A', o'):
    A' = A M (proper M) or J A M (improper M), o' = o - (A t)_xy.
    """
    a = np.asarray(rotations, dtype=np.float64)
    o = np.asarray(shifts, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64).reshape(3)
    new_a = a @ m
    if np.linalg.det(m) < 0:
        new_a = J @ new_a
    at = a @ t
    return new_a, o - at[:, :2]


# --------------------------------------------------------------------------- scoring
# --------------------------------------------------------------------------- result
@dataclass
class MapAlignment:
    """A transform V'(y) = V(M y + t) that aligns a map with the reference.

    rotation: M (3, 3), det -1 when ``hand_flipped``; shift_A: t (x, y, z) in Angstrom;
    score: masked Pearson correlation (at the refinement resolution); angle_deg: rotation
    angle of M (of M J when flipped); pixel_size: the reference's, for ``shift_px``.
    """

    rotation: np.ndarray
    shift_A: np.ndarray
    hand_flipped: bool
    score: float
    pixel_size: float
    angle_deg: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def shift_px(self) -> np.ndarray:
        return self.shift_A / self.pixel_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotation": [[float(v) for v in row] for row in self.rotation],
            "shift_A": [float(v) for v in self.shift_A],
            "hand_flipped": bool(self.hand_flipped),
            "score": float(self.score),
            "angle_deg": float(self.angle_deg),
        }


# --------------------------------------------------------------------------- search
def _even(n: float) -> int:
    return max(8, int(2 * round(n / 2)))


@dataclass
class _Level:
    size: int
    apix: float
    ref: torch.Tensor
    moving: torch.Tensor
    weights: torch.Tensor


def _make_level(
    ref: torch.Tensor, mov: torch.Tensor, wts: torch.Tensor, size: int, apix: float, resolution: float
) -> _Level:
    n = ref.shape[-1]
    if size < n:
        ref_s = fourier_resize_volume(ref, size)
        mov_s = fourier_resize_volume(mov, size)
        w_s = fourier_resize_volume(wts, size).clamp(0, 1)
    else:
        size, ref_s, mov_s, w_s = n, ref, mov, wts
    ap = apix * n / size
    res = max(resolution, 2.0 * ap * 1.05)
    ref_s = lowpass_volume(ref_s, res, ap)
    mov_s = lowpass_volume(mov_s, res, ap)
    return _Level(size, ap, ref_s, mov_s, w_s)


def _global_search(
    lv: _Level,
    rotations: np.ndarray,
    hands: list[bool],
    max_shift_px: float,
    batch: int,
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(score, M, t_px at this level) for every grid rotation and hand, best shift each."""
    dev = lv.ref.device
    n = lv.size
    ref = (lv.ref - (lv.weights * lv.ref).sum() / lv.weights.sum()) * lv.weights
    ref_f = torch.fft.rfftn(ref, dim=(-3, -2, -1)).conj()
    rnorm = torch.sqrt((ref * ref).sum())
    ax = torch.arange(n, device=dev)
    ax = torch.where(ax >= (n + 1) // 2, ax - n, ax).to(torch.float32)
    sz, sy, sx = torch.meshgrid(ax, ax, ax, indexing="ij")
    allowed = (sx**2 + sy**2 + sz**2) <= max_shift_px**2 + 1e-6
    scores, shifts, all_mats = [], [], []
    jm = J
    for hand in hands:
        mats_np = rotations @ jm if hand else rotations
        mats = torch.as_tensor(mats_np, dtype=torch.float32, device=dev)
        for start in range(0, mats.shape[0], batch):
            mb = mats[start : start + batch]
            vols = transform_volume(lv.moving, mb)
            vols = vols - vols.mean(dim=(-3, -2, -1), keepdim=True)
            vnorm = torch.sqrt((vols * vols).sum(dim=(-3, -2, -1))).clamp_min(1e-20)
            cc = torch.fft.irfftn(torch.fft.rfftn(vols, dim=(-3, -2, -1)) * ref_f, s=(n, n, n), dim=(-3, -2, -1))
            cc = torch.where(allowed, cc, torch.full_like(cc, -1e30))
            best, idx = cc.reshape(cc.shape[0], -1).max(dim=1)
            score = best / (vnorm * rnorm.clamp_min(1e-20))
            s = torch.stack([sx.reshape(-1)[idx], sy.reshape(-1)[idx], sz.reshape(-1)[idx]], dim=-1)
            # v(y + s) = V(M y + M s): t = M s
            t = torch.einsum("bij,bj->bi", mb, s)
            scores.append(score.double().cpu().numpy())
            shifts.append(t.double().cpu().numpy())
        all_mats.append(mats_np)
    sc = np.concatenate(scores)
    mt = np.concatenate(all_mats)
    sh = np.concatenate(shifts)
    return [(float(sc[i]), mt[i], sh[i]) for i in range(sc.shape[0])]


def _pick_candidates(results, count: int, min_sep_deg: float, hands: list[bool]) -> list:
    order = sorted(results, key=lambda r: -r[0])
    picked: list = []
    per_hand = max(1, count // len(hands))
    for hand in hands:
        mine: list = []
        for r in order:
            if (np.linalg.det(r[1]) < 0) != hand:
                continue
            if all(_angle(r[1] @ p[1].T) > min_sep_deg for p in mine):
                mine.append(r)
            if len(mine) >= per_hand:
                break
        picked.extend(mine)
    return sorted(picked, key=lambda r: -r[0])


def _refine(
    lv: _Level,
    matrix: np.ndarray,
    shift_px: np.ndarray,
    max_shift_px: float,
    max_angle_deg: float,
    iterations: int = 60,
) -> tuple[float, np.ndarray, np.ndarray]:
    """L-BFGS on rotation and shift; returns (score, M, t_px at this level)."""
    dev = lv.ref.device
    dt = torch.float32
    improper = np.linalg.det(matrix) < 0
    jt = _jmat(dev, dt)
    r0 = matrix @ J if improper else np.asarray(matrix, dtype=np.float64)
    radius = max(lv.size / 4.0, 1.0)  # rotation vector scaled so 1 unit ~ 1 px at radius N/4
    bounded_angle = max_angle_deg < 180.0
    amax = math.radians(max_angle_deg)
    if bounded_angle:
        w0 = matrix_to_axis_angle(torch.as_tensor(r0)).numpy()
        r = min(float(np.linalg.norm(w0)) / amax, 0.999) if amax > 0 else 0.0
        nrm = np.linalg.norm(w0)
        v0 = (w0 / nrm) * r / math.sqrt(1 - r * r) if nrm > 1e-12 else np.zeros(3)
        rot_p = torch.tensor(v0, dtype=dt, device=dev, requires_grad=True)
    else:
        rot_p = torch.zeros(3, dtype=dt, device=dev, requires_grad=True)
    r0_t = torch.as_tensor(r0, dtype=dt, device=dev)
    smax = max(float(max_shift_px), 1e-6)
    t0 = np.asarray(shift_px, dtype=np.float64)
    rs = min(float(np.linalg.norm(t0)) / smax, 0.999)
    tn = np.linalg.norm(t0)
    u0 = (t0 / tn) * rs / math.sqrt(1 - rs * rs) if tn > 1e-12 else np.zeros(3)
    sh_p = torch.tensor(u0, dtype=dt, device=dev, requires_grad=True)

    def build():
        if bounded_angle:
            w = amax * rot_p / torch.sqrt(1 + (rot_p * rot_p).sum())
            rot = axis_angle_to_matrix(w)
        else:
            rot = axis_angle_to_matrix(rot_p / radius) @ r0_t
        m = rot @ jt if improper else rot
        t = smax * sh_p / torch.sqrt(1 + (sh_p * sh_p).sum())
        return m, t

    def objective():
        m, t = build()
        vol = transform_volume(lv.moving, m[None], t[None])
        return -pearson_correlation(vol, lv.ref, lv.weights)[0]

    opt = torch.optim.LBFGS(
        [rot_p, sh_p],
        lr=1.0,
        max_iter=iterations,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    if bounded_angle and amax == 0:
        rot_p.requires_grad_(False)
        opt = torch.optim.LBFGS(
            [sh_p],
            lr=1.0,
            max_iter=iterations,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )
    opt.step(closure)
    with torch.no_grad():
        loss = objective()
        m, t = build()
    m_np = m.double().cpu().numpy()
    # re-orthonormalise (float32 drift)
    u, _, vt = np.linalg.svd(m_np)
    m_np = u @ vt
    return -float(loss), m_np, t.double().cpu().numpy()


@dataclass
class MapAlignmentSettings:
    """What the map search looks for and how (Å, degrees).

    lowpass: resolution of the comparison, applied after masking (None: max(8, 3 x pixel
    size)); max_shift: bound on |t| (None: a quarter of the box); max_angle: bound on the
    rotation angle (180: all rotations); check_hands: also try the z-flipped map;
    apply_mask: multiply each map by its mask before aligning (and score within the
    reference mask; without masks a soft sphere of 0.45 N is used). The rest tunes the
    search: the global pass on a ``global_box`` box at ``global_step_deg``, ``candidates``
    refined there, the best refined again on a box of at most ``refine_box_max`` (those
    within ``fine_margin`` of the best score too), rotations scored ``batch`` at a time.
    """

    lowpass: float | None = None
    max_shift: float | None = None
    max_angle: float = 180.0
    check_hands: bool = True
    apply_mask: bool = True
    global_box: int = 24
    global_step_deg: float = 15.0
    candidates: int = 6
    refine_box_max: int = 80
    fine_margin: float = 0.01
    batch: int = 256

    def __post_init__(self) -> None:
        if self.lowpass is not None and not (math.isfinite(self.lowpass) and self.lowpass > 0):
            raise UserError(
                f"the low-pass resolution must be a positive number of Å, got {self.lowpass}", option="lowpass"
            )
        if self.max_shift is not None and not (math.isfinite(self.max_shift) and self.max_shift >= 0):
            raise UserError(f"the largest shift must be a number >= 0 Å, got {self.max_shift}", option="max-shift")
        if not (0 <= self.max_angle <= 180):
            raise UserError(
                f"the largest rotation must be between 0 and 180 deg, got {self.max_angle}", option="max-angle"
            )

    def resolution(self, pixel_size: float) -> float:
        """The comparison resolution (Å) for maps of ``pixel_size`` Å."""
        return float(self.lowpass) if self.lowpass else max(8.0, 3.0 * pixel_size)


def align_map(
    reference,
    moving,
    pixel_size: float,
    moving_pixel_size: float | None = None,
    ref_mask=None,
    moving_mask=None,
    settings: MapAlignmentSettings | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> MapAlignment:
    """Find (M, t) such that the moving map V'(y) = V(M y + t) matches the reference.

    reference (N, N, N) with ``pixel_size`` Angstrom; moving (N', N', N') with
    ``moving_pixel_size`` (default ``pixel_size``), resampled onto the reference grid;
    masks (optional) on the grid of their map; ``settings`` (``MapAlignmentSettings``) say
    what to search. ``log`` receives one line per stage.
    """
    s = settings or MapAlignmentSettings()
    dev = torch.device(device)
    clock = {"start": time.perf_counter()}
    ref = _t(reference, dev)
    n = ref.shape[-1]
    if ref.shape != (n, n, n):
        raise ValueError(f"reference must be cubic, got {tuple(ref.shape)}")
    apix = float(pixel_size)
    mapix = apix if moving_pixel_size is None else float(moving_pixel_size)
    mov = _t(moving, dev)
    if mov.shape[-1] != n or abs(mapix - apix) > 1e-6 * apix:
        mov = resample_to_grid(mov, mapix, n, apix, device=dev)
        if moving_mask is not None:
            moving_mask = resample_to_grid(moving_mask, mapix, n, apix, device=dev).clamp(0, 1)
    rmask = None if ref_mask is None else _t(ref_mask, dev)
    mmask = None if moving_mask is None else _t(moving_mask, dev)
    if s.apply_mask:
        if rmask is not None:
            ref = ref * rmask
        if mmask is not None:
            mov = mov * mmask
    if s.apply_mask and rmask is not None:
        weights = rmask.clamp(0, 1)
    else:
        weights = soft_spherical_mask(n, 0.45 * n - 3, 3.0, device=dev)
    resolution = s.resolution(apix)
    max_shift_A = float(s.max_shift) if s.max_shift is not None else 0.25 * n * apix
    if max_shift_A < 0 or s.max_angle < 0:
        raise ValueError("max_shift and max_angle must be >= 0")
    max_angle = min(float(s.max_angle), 180.0)
    hands = [False, True] if s.check_hands else [False]

    # ---- global search on a small box
    gsize = min(_even(s.global_box), n)
    glv = _make_level(ref, mov, weights, gsize, apix, resolution)
    step = min(s.global_step_deg, max(max_angle / 2.0, 2.0))
    grid = sample_rotations_near_identity(step, max_angle).numpy()
    gshift = max_shift_A / glv.apix
    results = _global_search(glv, grid, hands, gshift, s.batch)
    clock["global"] = time.perf_counter()
    picked = _pick_candidates(results, s.candidates * len(hands) // (2 if s.check_hands else 1), 2 * step, hands)
    if log:
        log(
            f"global search: {len(results)} orientations on a {gsize}^3 box at {step:g} deg; "
            f"best score {picked[0][0]:.4f}"
        )

    # ---- refine candidates on the small box
    refined = []
    for score, m, t in picked:
        t = t * min(1.0, 0.999 * gshift / max(float(np.linalg.norm(t)), 1e-12))
        refined.append(_refine(glv, m, t, gshift, max_angle, iterations=30))
    refined.sort(key=lambda r: -r[0])
    clock["coarse"] = time.perf_counter()

    # ---- refine the best at the low-pass resolution
    fapix = max(apix, resolution / 3.0)
    fsize = min(n, _even(n * apix / fapix), s.refine_box_max)
    flv = _make_level(ref, mov, weights, fsize, apix, resolution)
    fshift = max_shift_A / flv.apix
    finals = []
    close = [r for r in refined if r[0] >= refined[0][0] - s.fine_margin][:2]
    for score, m, t in close:
        t_f = t * glv.apix / flv.apix
        t_f = t_f * min(1.0, 0.999 * fshift / max(float(np.linalg.norm(t_f)), 1e-12))
        finals.append(_refine(flv, m, t_f, fshift, max_angle, iterations=25))
    finals.sort(key=lambda r: -r[0])
    score, m, t = finals[0]
    clock["fine"] = time.perf_counter()
    shift_A = t * flv.apix
    # guarantee the bounds exactly (float32 rounding)
    norm = np.linalg.norm(shift_A)
    if norm > max_shift_A:
        shift_A = shift_A * (max_shift_A / norm)
    timings = {
        "global_s": clock["global"] - clock["start"],
        "coarse_refine_s": clock["coarse"] - clock["global"],
        "fine_refine_s": clock["fine"] - clock["coarse"],
        "total_s": clock["fine"] - clock["start"],
        "n_global_orientations": float(len(results)),
        "refine_box": float(fsize),
    }
    flipped = bool(np.linalg.det(m) < 0)
    res = MapAlignment(m, shift_A, flipped, float(score), apix, transform_angle_deg(m), timings)
    if log:
        log(
            f"refined on a {fsize}^3 box: score {score:.4f}, angle {res.angle_deg:.2f} deg, "
            f"shift {np.linalg.norm(shift_A):.2f} A, hand flipped: {flipped}"
        )
    return res
