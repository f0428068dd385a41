"""CTF-weighted direct Fourier reconstruction.

Each particle's centred transform X (shift undone) is inserted as CTF·X, with weight CTF²,
into a 3-D grid padded ``padding`` times, at the frequencies A^T k of its central slice,
by trilinear splatting. Symmetry inserts every slice once per group element (poses A·R).
The map is Σ CTF·X / max(Σ CTF², floor), with RELION-like regularisation of empty or
nearly empty voxels: the floor is 1/1000 of the mean weight of the voxel's resolution
shell. The inverse transform is windowed to the original box and divided by the sinc²
profile of the trilinear kernel (gridding correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.imaging.ctf import CTFParameters, ctf_rfft2
from cryopose.imaging.fourier import centered_rfft2
from cryopose.imaging.projection import sinc2_gridding_kernel, slice_coordinates
from cryopose.imaging.shifts import shift_rfft2

__all__ = ["FourierAccumulator", "insert_slices", "insert_images", "finalise_reconstruction", "WEIGHT_FLOOR"]

WEIGHT_FLOOR = 1e-3
SPLAT_POINTS = 1 << 15  # samples splatted per call


@dataclass
class FourierAccumulator:
    """Running sums of a reconstruction on a padded grid (M = padding * box).

    ``sums`` is (M^3, 3): real and imaginary parts of Σ CTF·X, and Σ CTF², indexed
    (z, y, x) with zero frequency at M//2.
    """

    sums: torch.Tensor
    box: int
    padding: int

    @classmethod
    def zeros(cls, box: int, padding: int = 2, device=None, dtype=torch.float32) -> "FourierAccumulator":
        m = box * padding
        # guard rows past M^3 take the zero-weight far corners of edge samples
        return cls(sums=torch.zeros(m**3 + m * m + m + 1, 3, device=device, dtype=dtype), box=box, padding=padding)

    @property
    def padded_size(self) -> int:
        return self.box * self.padding

    def add(self, other: "FourierAccumulator") -> None:
        """Add another accumulator's sums into this one (e.g. halves into the full map)."""
        self.sums += other.sums


def _splat(acc: FourierAccumulator, coords: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
    """Trilinear splat of complex ``values`` (P,) and real ``weights`` (P,) at grid
    coordinates ``coords`` (P, 3) (x, y, z in padded-grid indices, within [0, M]).

    Coordinates are clamped to M - 1 (only samples exactly at Nyquist along an axis move,
    by less than one padded voxel); far corners of edge samples then carry zero weight and
    land in guard rows of the accumulator.
    """
    m = acc.padded_size
    c = coords.clamp(0, m - 1)
    base = torch.floor(c)
    frac = c - base
    base = base.long()
    flat0 = (base[:, 2] * m + base[:, 1]) * m + base[:, 0]
    offsets = torch.tensor(
        [dz * m * m + dy * m + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], device=coords.device
    )
    fx, fy, fz = frac.unbind(-1)
    wx = torch.stack([1 - fx, fx])
    wy = torch.stack([1 - fy, fy])
    wz = torch.stack([1 - fz, fz])
    w = (wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).reshape(8, -1)
    payload = torch.stack([values.real, values.imag, weights], dim=1)  # (P, 3)
    flat = (flat0[None] + offsets[:, None]).reshape(-1)
    acc.sums.index_add_(0, flat, (w[..., None] * payload[None]).reshape(-1, 3))


def insert_slices(
    acc: FourierAccumulator,
    spectra: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
) -> None:
    """Insert half-transform slices ``spectra`` (B, N, N//2+1, complex) with ``weights``
    (B, N, N//2+1) at poses ``rotations`` (B, 3, 3) into ``acc``.

    Only one of each Friedel pair on the kx = 0 line is inserted; Hermitian symmetry is
    restored in :func:`finalise_reconstruction`.
    """
    n, pad = acc.box, acc.padding
    coords, inside = slice_coordinates(rotations.to(spectra.real.dtype), n, max_frequency=n / 2)
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=spectra.device)
    half_line = torch.ones_like(inside)
    half_line[:, 0] = ky >= 0  # kx == 0 column: keep ky >= 0 only
    keep = (inside & half_line)[None].expand(spectra.shape[0], -1, -1)
    pts = coords[keep] * pad + acc.padded_size // 2
    values, w = spectra[keep], weights[keep]
    # bounded pieces keep the (8, P, 3) temporaries cache-friendly
    for lo in range(0, pts.shape[0], SPLAT_POINTS):
        hi = lo + SPLAT_POINTS
        _splat(acc, pts[lo:hi], values[lo:hi], w[lo:hi])


def insert_images(
    acc: FourierAccumulator,
    images: torch.Tensor,
    rotations: torch.Tensor,
    shifts_px: torch.Tensor,
    ctf: CTFParameters | None,
    pixel_size: float,
    symmetry: torch.Tensor | None = None,
) -> None:
    """Insert particle images (B, N, N) with poses (B, 3, 3), origins (B, 2) in px
    (RELION rlnOriginX/Y: the image is the projection shifted by minus the origin) and CTF
    (None: no CTF weighting) into ``acc``. ``symmetry`` (G, 3, 3) inserts each image at
    every equivalent pose A·R."""
    n = images.shape[-1]
    spectra = shift_rfft2(centered_rfft2(images), shifts_px)  # undo the -origin shift
    if ctf is not None:
        c = ctf_rfft2(ctf, n, pixel_size)
        spectra = spectra * c
        weights = c**2
    else:
        weights = torch.ones(spectra.shape, dtype=images.dtype, device=images.device)
    rots = rotations.to(images.dtype)
    if symmetry is None or symmetry.shape[0] == 1:
        insert_slices(acc, spectra, weights, rots)
        return
    for r in symmetry.to(images.dtype):
        insert_slices(acc, spectra, weights, rots @ r)


def _friedel_partner(t: torch.Tensor) -> torch.Tensor:
    """Value at -k for each k of a centred cubic grid (index i -> (M - i) mod M per axis)."""
    dims = (0, 1, 2)
    return torch.roll(torch.flip(t, dims), shifts=(1, 1, 1), dims=dims)


def finalise_reconstruction(acc: FourierAccumulator, weight_floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """Real-space map (N, N, N) from accumulated sums."""
    n, m, pad = acc.box, acc.padded_size, acc.padding
    sums = acc.sums[: m**3].reshape(m, m, m, 3)
    data = torch.complex(sums[..., 0], sums[..., 1])
    weight = sums[..., 2]
    data = data + _friedel_partner(data).conj()
    weight = weight + _friedel_partner(weight)
    # shell-wise floor on the weights (shells in original-box frequency indices)
    ax = torch.arange(m, device=weight.device, dtype=torch.float32) - m // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2) / pad
    shell = torch.round(r).long()
    nshell = n // 2 + 1
    inside = (r <= n / 2) & (shell < nshell)
    sums = torch.zeros(nshell, dtype=weight.dtype, device=weight.device)
    counts = torch.zeros(nshell, dtype=weight.dtype, device=weight.device)
    sums.index_add_(0, shell[inside], weight[inside])
    counts.index_add_(0, shell[inside], torch.ones_like(weight[inside]))
    mean = sums / counts.clamp_min(1)
    floor = weight_floor * mean[shell.clamp_max(nshell - 1)]
    denom = torch.maximum(weight, floor).clamp_min(1e-30)
    spectrum = torch.where(inside, data / denom, torch.zeros_like(data))
    padded = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spectrum))).real
    o = m // 2 - n // 2
    vol = padded[o : o + n, o : o + n, o : o + n]
    prof = sinc2_gridding_kernel(n, m, vol.device, vol.dtype)
    return vol / (prof[:, None, None] * prof[None, :, None] * prof[None, None, :])
