"""The scoring kernel: exact NCC of particles against map projections at given poses and shifts.

Every search in cryopose (the global polar search, validate's good references, local
refinement, evaluation) scores candidates with :func:`score_poses`. The score of particle
X at pose A and origin t is the normalised cross-correlation of band-limited transforms

    NCC = Re sum_k w_k X(k) conj(G(k)) exp(-2 pi i k.t / n) / (||X|| ||G||),  1 <= |k| <= R,

G the projection of the map at A (times the particle's CTF when references carry it),
w_k the multiplicity of a half-transform column in the full transform, R the band (from the
comparison resolution), t the origin in working pixels. The DC term is left out, so the
score is the Pearson correlation of the low-passed, masked images. The particle image is the
projection shifted by minus its origin (RELION), so the score peaks at the true origin.

Everything runs at a working size: images and map are Fourier-cropped to the smallest even
box that holds the band (:func:`working_geometry`); shifts are in working pixels
(``Reference.work_pixel_size`` Å each). Integer shift sets are scored through one inverse
FFT per candidate; other shifts (sub-pixel, local search) through phase ramps. Both give the
same numbers.

With a :class:`GaussianNoise` model the same kernel returns instead the Gaussian
log-likelihood of the particle given the candidate (up to the normalising constant, which
does not depend on the pose):

    log L = -1/2 sum_k w_k |X(k) - a G(k) exp(2 pi i k.t / n)|^2 / sigma^2(s(k)),  1 <= |k| <= R,

sigma^2(s) the noise power of shell s = round(|k|) and a the particle's amplitude scale
(both given; :func:`residual_shell_power` measures them from residuals at known poses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryopose.imaging.ctf import CTFParameters, ctf_rfft2, wiener_filter
from cryopose.imaging.filters import soft_circular_mask
from cryopose.imaging.fourier import centered_rfft2, radial_shell_index, rfft2_frequencies
from cryopose.imaging.projection import FourierVolume, fourier_volume, project_fourier, project_points
from cryopose.imaging.resample import fourier_resize_images, fourier_resize_volume
from cryopose.imaging.shifts import shift_rfft2

__all__ = [
    "Reference",
    "PreparedParticles",
    "working_geometry",
    "make_reference",
    "prepare_particles",
    "disc_offsets",
    "score_poses",
    "GaussianNoise",
    "residual_shell_power",
    "shell_sizes",
]

# Integer shift sets larger than this are scored through an inverse FFT per candidate.
_FFT_SHIFTS = 12


def working_geometry(box: int, pixel_size: float, resolution: float) -> tuple[int, int]:
    """(working box, band R) for comparing ``box``-px images of ``pixel_size`` Å up to
    ``resolution`` Å: the box is cropped in Fourier space to just hold the band."""
    r_full = box * pixel_size / resolution
    want = 2 * math.ceil(r_full) + 4
    work = min(box, want + (want % 2))
    radius = int(min(work // 2 - 1, math.floor(r_full)))
    return work, max(radius, 2)


@dataclass
class Reference:
    """A map ready for scoring: its working-size transform and the comparison geometry."""

    volume: FourierVolume  # working-size map, gridding-corrected and padded
    box: int  # particle (and map) box, px
    pixel_size: float  # Å/px of the particles
    work_box: int
    work_pixel_size: float  # Å per working pixel
    radius: int  # band R, frequency index of the working box

    @property
    def device(self) -> torch.device:
        return self.volume.data.device

    def band(self) -> torch.Tensor:
        """1 on the half transform where 1 <= |k| <= R, else 0, (n, n//2+1)."""
        ky, kx = rfft2_frequencies(self.work_box, 1.0 / self.work_box, device=self.device)
        k2 = ky**2 + kx**2
        return ((k2 >= 1) & (k2 <= self.radius**2)).float()

    def multiplicity(self) -> torch.Tensor:
        """Multiplicity (1 or 2) of each half-transform column in the full transform, (n//2+1,)."""
        n = self.work_box
        w = torch.full((n // 2 + 1,), 2.0, device=self.device)
        w[0] = 1.0
        if n % 2 == 0:
            w[-1] = 1.0
        return w


def make_reference(
    volume: torch.Tensor | np.ndarray, pixel_size: float, resolution: float, device: torch.device | str = "cpu"
) -> Reference:
    """A ``Reference`` of ``volume`` (N, N, N) at ``pixel_size`` Å, compared up to ``resolution`` Å."""
    device = torch.device(device)
    vol = torch.as_tensor(
        np.asarray(volume) if not torch.is_tensor(volume) else volume, dtype=torch.float32, device=device
    )
    box = int(vol.shape[-1])
    work, radius = working_geometry(box, pixel_size, resolution)
    if work != box:
        vol = fourier_resize_volume(vol, work)
    return Reference(
        volume=fourier_volume(vol),
        box=box,
        pixel_size=float(pixel_size),
        work_box=work,
        work_pixel_size=box * float(pixel_size) / work,
        radius=radius,
    )


@dataclass
class PreparedParticles:
    """Particles at the working size: half spectra (B, n, n//2+1), masked, CTF handled; and
    the CTF (B, n, n//2+1) to apply to their references (None when the particles were
    Wiener-corrected instead, or have no CTF)."""

    spectra: torch.Tensor
    ctf: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.spectra.shape[0])


def prepare_particles(
    reference: Reference,
    images: torch.Tensor,
    ctf: CTFParameters | None = None,
    ctf_references: bool = True,
    wiener_snr: float = 0.1,
    mask_radius: float = 0.45,
) -> PreparedParticles:
    """Mask (soft circle of ``mask_radius`` x box), Fourier-crop and CTF-handle particle
    images (B, N, N) of the reference's box. With a CTF, either the references get it
    (``ctf_references``) or the particles are Wiener-corrected with constant ``wiener_snr``."""
    device = reference.device
    images = images.to(device, torch.float32)
    n0 = images.shape[-1]
    if n0 != reference.box:
        raise ValueError(f"images are {n0} px but the map is {reference.box} px")
    mask = soft_circular_mask(n0, mask_radius * n0, edge_width=max(2.0, 0.05 * n0), device=device)
    images = images - (images * mask).sum((-2, -1), keepdim=True) / mask.sum()
    images = images * mask
    if reference.work_box != n0:
        images = fourier_resize_images(images, reference.work_box)
    spectra = centered_rfft2(images)
    ctf_values = None
    if ctf is not None:
        ctf_values = ctf_rfft2(ctf.to(device), reference.work_box, reference.work_pixel_size).to(torch.float32)
        if not ctf_references:
            spectra = wiener_filter(spectra, ctf_values, wiener_snr)
            ctf_values = None
    return PreparedParticles(spectra=spectra, ctf=ctf_values)


def disc_offsets(radius_px: float, step: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Shifts (T, 2) (x, y) on a square grid of ``step`` px inside a disc of ``radius_px``,
    nearest first (the zero shift is row 0)."""
    n = int(math.floor(radius_px / step + 1e-9))
    ax = torch.arange(-n, n + 1, dtype=torch.float32, device=device) * step
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    pts = pts[pts.norm(dim=-1) <= radius_px + 1e-6]
    return pts[pts.norm(dim=-1).argsort(stable=True)]


def _is_integer(t: torch.Tensor) -> bool:
    return bool(torch.all(t == torch.round(t)))


@dataclass
class GaussianNoise:
    """A Gaussian noise model for :func:`score_poses`: ``shell_power`` (R+1,) the noise power
    sigma^2 per shell round(|k|) of the working half transform (units of |X(k)|^2; entry 0
    unused), and ``scale`` (B,) the amplitude a of each prepared particle's reference."""

    shell_power: torch.Tensor
    scale: torch.Tensor

    def inverse_power(self, reference: Reference) -> torch.Tensor:
        """1 / sigma^2(round(|k|)) on the working half transform inside the band, 0 outside, (n, n//2+1)."""
        shell = radial_shell_index(reference.work_box, 2, device=reference.device).clamp_max(reference.radius)
        power = self.shell_power.to(reference.device, torch.float32)
        return reference.band() / power[shell].clamp_min(1e-30)


def _reference_spectra(
    reference: Reference, particles: PreparedParticles, particle_index: torch.Tensor, rotations: torch.Tensor
) -> torch.Tensor:
    """Band-limited projections (Q, n, n//2+1) at ``rotations`` (Q, 3, 3), times the CTF of
    particle ``particle_index[q]`` when the references carry it."""
    g = project_fourier(reference.volume, rotations.to(reference.device), max_frequency=reference.radius + 1)
    g = g * reference.band()
    if particles.ctf is not None:
        g = g * particles.ctf[particle_index.to(reference.device)]
    return g


def shell_sizes(reference: Reference) -> torch.Tensor:
    """Number of coefficients of the full transform in each shell round(|k|) = 0..R of the
    band (the half transform counted with multiplicity), (R+1,) float."""
    shell = radial_shell_index(reference.work_box, 2, device=reference.device).clamp_max(reference.radius)
    weight = reference.band() * reference.multiplicity()
    empty = torch.zeros(reference.radius + 1, device=reference.device)
    return empty.index_add_(0, shell.reshape(-1), weight.reshape(-1))


def residual_shell_power(
    reference: Reference,
    particles: PreparedParticles,
    rotations: torch.Tensor,
    origins_px: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual power per shell of each particle at its pose, and its amplitude scale.

    For particle b at pose ``rotations[b]`` (B, 3, 3) and origin ``origins_px[b]`` (B, 2,
    working px): G_t = the reference spectrum (CTF applied when the references carry it)
    moved to the origin, a = Re sum_k w_k X conj(G_t) / sum_k w_k |G_t|^2 (least squares,
    clamped at 0), and P_s = sum_{round(|k|)=s} w_k |X(k) - a G_t(k)|^2 over the band.
    Returns (P (B, R+1), a (B,)); the mean of P_s / shell_sizes(reference)[s] over
    particles is the noise power sigma^2(s) of :class:`GaussianNoise`.
    """
    device = reference.device
    b = len(particles)
    band = reference.band()
    hw = reference.multiplicity()
    g = _reference_spectra(reference, particles, torch.arange(b, device=device), rotations)
    g = shift_rfft2(g, -origins_px.to(device, torch.float32))  # image = projection shifted by -origin
    x = particles.spectra * band
    cross = ((x * g.conj()).real * hw).sum((-2, -1))
    scale = (cross / ((g.abs() ** 2 * hw).sum((-2, -1))).clamp_min(1e-30)).clamp_min(0)
    residual = (x - scale[:, None, None] * g).abs() ** 2 * hw * band
    shell = radial_shell_index(reference.work_box, 2, device=device).clamp_max(reference.radius).reshape(-1)
    power = torch.zeros(b, reference.radius + 1, device=device).index_add_(1, shell, residual.reshape(b, -1))
    return power, scale


def _combine(cross: torch.Tensor, xx: torch.Tensor, gg: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """NCC (scale None) or log-likelihood (Q, T) from the cross terms (Q, T) and the
    (weighted) powers of particle (Q,) and reference (Q,)."""
    if scale is None:
        return cross / torch.sqrt(xx * gg).clamp_min(1e-20)[:, None]
    return scale[:, None] * cross - 0.5 * (scale**2 * gg + xx)[:, None]


def score_poses(
    reference: Reference,
    particles: PreparedParticles,
    particle_index: torch.Tensor,
    rotations: torch.Tensor,
    offsets_px: torch.Tensor,
    centres_px: torch.Tensor | None = None,
    max_batch: int = 1024,
    noise: GaussianNoise | None = None,
) -> torch.Tensor:
    """Exact NCC (Q, T) of particle ``particle_index[q]`` (Q,) against the projection at pose
    ``rotations[q]`` (Q, 3, 3) for origins ``centres_px[q] + offsets_px[t]`` (working px;
    centres default to 0); with ``noise``, the Gaussian log-likelihood instead (see the
    module docstring). Batched over candidates; CPU or CUDA."""
    device = reference.device
    n = reference.work_box
    band = reference.band()
    hw = reference.multiplicity()
    offsets = offsets_px.to(device, torch.float32)
    q_total = int(particle_index.shape[0])
    centres = torch.zeros(q_total, 2, device=device) if centres_px is None else centres_px.to(device, torch.float32)
    use_fft = offsets.shape[0] > _FFT_SHIFTS and _is_integer(offsets) and _is_integer(centres)
    inverse = None if noise is None else noise.inverse_power(reference)
    scale_all = None if noise is None else noise.scale.to(device, torch.float32)
    keep = band > 0
    if not use_fft:
        # only the band matters: work on its coefficients (K of them) as vectors
        ky, kx = rfft2_frequencies(n, 1.0 / n, device=device)
        kxy = torch.stack([kx[keep], ky[keep]], dim=-1)  # (K, 2) frequency indices
        weight = (hw.expand(n, -1))[keep]  # (K,)
        if inverse is not None:
            weight = weight * inverse[keep]
        x_band = particles.spectra[:, keep]  # (B, K)
        ctf_band = None if particles.ctf is None else particles.ctf[:, keep]
        xx_all = ((x_band.abs() ** 2) * weight).sum(-1)  # (B,)
        ramp_o = torch.polar(torch.ones(1, device=device), -2 * math.pi * (kxy @ offsets.T) / n)  # (K, T)
    else:
        weight_grid = hw if inverse is None else hw * inverse
    out = []
    for start in range(0, q_total, max_batch):
        pi = particle_index[start : start + max_batch].to(device)
        rots = rotations[start : start + max_batch].to(device)
        c = centres[start : start + max_batch]
        scale = None if scale_all is None else scale_all[pi]
        if use_fft:
            g = _reference_spectra(reference, particles, pi, rots)
            x = particles.spectra[pi] * band
            xx = ((x.abs() ** 2) * weight_grid).sum((-2, -1))
            gg = ((g.abs() ** 2) * weight_grid).sum((-2, -1))
            xw = x if inverse is None else x * inverse
            cmap = torch.fft.irfft2(xw * g.conj(), s=(n, n)) * (n * n)  # cmap[-t mod n] = cross term at origin t
            t = c[:, None, :] + offsets[None]  # (q, T, 2)
            iy = (-t[..., 1]).long() % n
            ix = (-t[..., 0]).long() % n
            cross = cmap.reshape(cmap.shape[0], -1).gather(1, iy * n + ix)
        else:
            g = project_points(reference.volume, rots, kxy)  # (q, K)
            if ctf_band is not None:
                g = g * ctf_band[pi]
            xx = xx_all[pi]
            gg = ((g.abs() ** 2) * weight).sum(-1)
            prod = x_band[pi] * g.conj() * weight  # (q, K)
            prod = prod * torch.polar(torch.ones(1, device=device), -2 * math.pi * (c @ kxy.T) / n)
            cross = (prod @ ramp_o).real
        out.append(_combine(cross, xx, gg, scale))
    if not out:
        return torch.zeros(0, offsets.shape[0], device=device)
    return torch.cat(out)
