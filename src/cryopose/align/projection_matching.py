"""Global projection matching: every particle against a gallery of map projections.

The search grid is the one a brute-force matcher would scan: gallery directions d_g over the
asymmetric unit (``sample_directions``), in-plane angles psi_l = 2 pi l / P (P = 360/step),
and integer shifts (working pixels) inside a disc of ``max_shift``. The score of a grid point
is the normalised cross-correlation (NCC) of the band-limited transforms,

    NCC = Re sum_k X(k) conj(G(k)) / (||X|| ||G||),   1 <= |k| <= R,

X the particle (masked, CTF-corrected or not, shifted back by the trial origin), G the
projection of the map at pose A = euler_to_matrix(rot_g, tilt_g, psi) (optionally times the
particle's CTF), R = box * apix / resolution (frequency index, capped below Nyquist). This is
the score of :mod:`cryopose.align.scoring`, which also prepares map and particles.

How the engine avoids scanning the whole grid exactly (all batched torch, CPU or CUDA):

1. Coarse pass, every (direction, psi, shift) at once, at half the band (rings r <= R_c):
   particle and gallery spectra are sampled on polar rings (bilinear interpolation of the
   full centred spectrum, which carries the Hermitian half) and Fourier-transformed along the
   angle. For every ring and angular harmonic m the correlation over all in-plane angles is
   C[s, g, m] = sum_r r P[s, r, m] conj(G[g, r, m]) -- one batched complex matmul per
   harmonic -- and an inverse real FFT over m gives all P in-plane angles. Shifts are phase
   ramps on the particle's polar samples on a coarse grid (``coarse_shift_step`` px). Only
   harmonics |m| <= P/2 are kept (the correlation is sampled at the search step), and the
   score is divided by the gallery image's polar norm. For each direction the best
   (psi, shift) is kept.
2. Refinement of the ``n_refine`` best directions per particle on the exact grid: the map is
   re-projected at the candidate's coarse psi (and its two grid neighbours when
   ``refine_psi_neighbours`` is set), and the exact NCC over all integer shifts in the disc
   comes from the scoring kernel (:func:`cryopose.align.scoring.score_poses`).
3. The ``xi`` best directions by refined NCC are returned, with psi and origin.

Poses are RELION's: A = euler_to_matrix(rot, tilt, psi) with (rot, tilt) the gallery
direction, and the origin o (Å) such that the particle is the projection shifted by -o.
:func:`brute_force_match` scans the whole grid with the exact score (tests, benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from cryopose.align.scoring import (
    PreparedParticles,
    Reference,
    disc_offsets,
    make_reference,
    prepare_particles,
    score_poses,
)
from cryopose.errors import UserError
from cryopose.geometry.grids import directions_to_euler, sample_directions
from cryopose.geometry.rotations import euler_to_matrix
from cryopose.imaging.ctf import CTFParameters
from cryopose.imaging.fourier import centered_irfft2
from cryopose.imaging.projection import project_fourier

__all__ = [
    "MatchSettings",
    "Gallery",
    "MatchResult",
    "build_gallery",
    "match_images",
    "brute_force_match",
    "correlation_counts",
]


@dataclass
class MatchSettings:
    """Search settings (boundary units: degrees, Å)."""

    angular_sampling: float = 5.0  # deg, gallery directions and in-plane step
    max_shift: float | None = None  # Å, radius of the origin search disc (None: 10% of the box)
    resolution: float = 8.0  # Å, band limit of the comparison
    xi: int | None = None  # directions kept per particle (None: 7)
    symmetry: str = "C1"
    ctf_references: bool = False  # apply each particle's CTF to the references
    wiener_snr: float = 0.1  # Wiener constant (particles are noisy: close to CTF multiplication)
    mask_radius: float = 0.45  # soft circular particle mask, fraction of the box
    n_refine: int | None = None  # directions refined per particle (default max(2 xi, 16))
    coarse_shift_step: float = 2.5  # working px, shift grid of the coarse pass
    coarse_fraction: float = 0.4  # coarse band = this fraction of R (at least 6 rings)
    refine_psi_neighbours: bool = False  # also re-score the two neighbouring psi of each candidate

    def check(self, box: int, pixel_size: float) -> None:
        """UserError for settings that make no sense for ``box`` px images of ``pixel_size`` Å."""
        if not (0 < self.angular_sampling <= 90):
            raise UserError(
                f"the angular sampling must be in (0, 90] deg, got {self.angular_sampling}", option="angular-sampling"
            )
        if not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise UserError(
                f"the comparison resolution must be a positive number of Å, got {self.resolution}", option="resolution"
            )
        half_box = 0.5 * box * pixel_size
        if self.max_shift is not None and not (0 <= self.max_shift <= half_box):
            raise UserError(
                f"the origin search radius must be between 0 and half the box ({half_box:.1f} A), got {self.max_shift}",
                option="max-shift",
            )

    def resolved(self, box: int, pixel_size: float) -> "MatchSettings":
        """These settings with xi and max_shift made concrete for ``box`` px of ``pixel_size`` Å."""
        return replace(
            self,
            xi=7 if self.xi is None else int(self.xi),
            max_shift=0.1 * box * pixel_size if self.max_shift is None else float(self.max_shift),
        )

    def refine_count(self, n_directions: int) -> int:
        xi = 7 if self.xi is None else self.xi
        k = self.n_refine if self.n_refine is not None else max(2 * xi, 16)
        return int(min(max(k, xi), n_directions))


@dataclass
class Gallery:
    """Everything about the map the global search needs, at the working size."""

    settings: MatchSettings  # resolved: xi and max_shift are set
    reference: Reference  # the map for exact scoring (working size, band R)
    coarse_radius: int
    n_psi: int
    n_angle_samples: int
    directions: torch.Tensor  # (G, 3)
    rotations: torch.Tensor  # (G, 3, 3), psi = 0
    # (M+1, 2 R_c, 2 G) real form (columns: Re g0, Im g0, Re g1, ...) of the angular harmonics of the coarse rings
    polar: torch.Tensor
    polar_ring_power: torch.Tensor  # (G, R_c) sum over angle of |G|^2 per ring
    coarse_shifts: torch.Tensor  # (S, 2) working px
    shift_offsets: torch.Tensor  # (T, 2) integer working px in the disc

    @property
    def n_directions(self) -> int:
        return int(self.directions.shape[0])

    @property
    def device(self) -> torch.device:
        return self.reference.device

    @property
    def box(self) -> int:
        return self.reference.box

    @property
    def work_box(self) -> int:
        return self.reference.work_box

    @property
    def work_pixel_size(self) -> float:
        return self.reference.work_pixel_size

    @property
    def radius(self) -> int:
        return self.reference.radius


@dataclass
class MatchResult:
    """Best ``xi`` directions per particle, best first."""

    direction_index: torch.Tensor  # (B, xi) long, into gallery.directions
    directions: torch.Tensor  # (B, xi, 3)
    scores: torch.Tensor  # (B, xi) NCC
    psi: torch.Tensor  # (B, xi) rad
    rotations: torch.Tensor  # (B, xi, 3, 3) RELION pose matrices
    shifts_angstrom: torch.Tensor  # (B, xi, 2) RELION origins


# ----------------------------------------------------------------------------- helpers
def _full_centred_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Full 2-D transform (B, n, n), zero frequency at index n//2 (both axes)."""
    spec = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    return torch.fft.fftshift(spec, dim=(-2, -1))


def _polar_samples(full: torch.Tensor, radii: torch.Tensor, n_angles: int) -> torch.Tensor:
    """Bilinear samples (B, R, A) of full centred spectra at radii x angles 2 pi a / A."""
    b, n, _ = full.shape
    theta = torch.arange(n_angles, device=full.device, dtype=torch.float32) * (2 * math.pi / n_angles)
    kx = radii[:, None] * torch.cos(theta)[None]
    ky = radii[:, None] * torch.sin(theta)[None]
    # grid_sample coordinates: pixel index (k + n//2) -> [-1, 1] with align_corners=True
    gx = (kx + n // 2) * (2.0 / (n - 1)) - 1
    gy = (ky + n // 2) * (2.0 / (n - 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)[None].expand(b, -1, -1, -1)
    parts = torch.stack([full.real, full.imag], dim=1)  # (B, 2, n, n)
    out = F.grid_sample(parts, grid, mode="bilinear", align_corners=True)  # (B, 2, R, A)
    return torch.complex(out[:, 0], out[:, 1])


# ----------------------------------------------------------------------------- gallery
def build_gallery(
    volume: torch.Tensor | np.ndarray,
    pixel_size: float,
    settings: MatchSettings,
    device: torch.device | str = "cpu",
) -> Gallery:
    """Projections of ``volume`` (N, N, N) over the asymmetric unit, ready for matching."""
    device = torch.device(device)
    reference = make_reference(volume, pixel_size, settings.resolution, device)
    settings = settings.resolved(reference.box, pixel_size)
    work, radius = reference.work_box, reference.radius
    directions = sample_directions(settings.angular_sampling, settings.symmetry, dtype=torch.float32).to(device)
    rot, tilt = directions_to_euler(directions)
    rotations = euler_to_matrix(rot, tilt, torch.zeros_like(rot))
    n_psi = max(4, 2 * round(180.0 / settings.angular_sampling))
    coarse_radius = int(min(radius, max(6, math.ceil(settings.coarse_fraction * radius))))
    n_samples = n_psi * max(1, math.ceil(2 * math.pi * coarse_radius / n_psi))
    radii = torch.arange(1, coarse_radius + 1, dtype=torch.float32, device=device)
    polar_parts, power_parts = [], []
    for start in range(0, rotations.shape[0], 512):
        spectra = project_fourier(reference.volume, rotations[start : start + 512], max_frequency=coarse_radius + 1.5)
        images = centered_irfft2(spectra, work)
        samples = _polar_samples(_full_centred_spectrum(images), radii, n_samples)  # (g, R_c, A)
        power_parts.append((samples.abs() ** 2).sum(-1))
        harm = torch.fft.fft(samples, dim=-1)[..., : n_psi // 2 + 1]  # (g, R_c, M+1)
        polar_parts.append(harm)
    harm = torch.cat(polar_parts).permute(2, 1, 0)  # (M+1, R_c, G)
    # real form of X conj(G): [Xr, Xi] @ [[Gr, -Gi], [Gi, Gr]] = [Re, Im]
    top = torch.stack([harm.real, -harm.imag], dim=-1)  # (M+1, R_c, G, 2): Re, Im columns interleaved
    bottom = torch.stack([harm.imag, harm.real], dim=-1)
    polar = torch.cat([top, bottom], dim=1).reshape(harm.shape[0], 2 * harm.shape[1], -1).contiguous()
    assert settings.max_shift is not None  # resolved
    max_shift_px = settings.max_shift / reference.work_pixel_size
    return Gallery(
        settings=settings,
        reference=reference,
        coarse_radius=coarse_radius,
        n_psi=n_psi,
        n_angle_samples=n_samples,
        directions=directions,
        rotations=rotations,
        polar=polar,
        polar_ring_power=torch.cat(power_parts),
        coarse_shifts=disc_offsets(max_shift_px, settings.coarse_shift_step, device),
        shift_offsets=disc_offsets(max_shift_px, 1.0, device),
    )


def _prepare(gallery: Gallery, images: torch.Tensor, ctf: CTFParameters | None) -> PreparedParticles:
    s = gallery.settings
    return prepare_particles(gallery.reference, images, ctf, s.ctf_references, s.wiener_snr, s.mask_radius)


def _coarse_search(gallery: Gallery, prep: PreparedParticles, batch: int = 8):
    """Best coarse score, psi index and shift index per (particle, direction): (B, G) each."""
    n = gallery.work_box
    rc = gallery.coarse_radius
    radii = torch.arange(1, rc + 1, dtype=torch.float32, device=gallery.device)
    images = centered_irfft2(prep.spectra, n)
    samples = _polar_samples(_full_centred_spectrum(images), radii, gallery.n_angle_samples)  # (B, R_c, A)
    theta = torch.arange(gallery.n_angle_samples, device=gallery.device) * (2 * math.pi / gallery.n_angle_samples)
    kx = radii[:, None] * torch.cos(theta)[None]
    ky = radii[:, None] * torch.sin(theta)[None]
    shifts = gallery.coarse_shifts  # (S, 2)
    # undo a trial origin o: multiply by exp(-2 pi i k.o / n)
    ramps = torch.polar(
        torch.ones(1, device=gallery.device),
        -2 * math.pi * (shifts[:, 0, None, None] * kx + shifts[:, 1, None, None] * ky) / n,
    )  # (S, R_c, A)
    m1 = gallery.n_psi // 2 + 1
    gal = gallery.polar  # (M+1, R_c, G)
    ring_w = radii  # area element
    if prep.ctf is not None:
        # references carry the particle's CTF: use its rotational average on each ring
        ctf_ring = _ring_average(prep.ctf, radii, n)  # (B, R_c)
    else:
        ctf_ring = None
    B = samples.shape[0]
    S = shifts.shape[0]
    G = gallery.n_directions
    best = torch.empty(B, G, device=gallery.device)
    best_psi = torch.empty(B, G, dtype=torch.long, device=gallery.device)
    best_shift = torch.empty(B, G, dtype=torch.long, device=gallery.device)
    for start in range(0, B, batch):
        sl = slice(start, min(start + batch, B))
        b = sl.stop - sl.start
        x = samples[sl, None] * ramps[None]  # (b, S, R_c, A)
        w = ring_w[None, :].expand(b, -1)
        if ctf_ring is not None:
            w = w * ctf_ring[sl]
        harm = torch.fft.fft(x, dim=-1)[..., :m1] * w[:, None, :, None]  # (b, S, R_c, M+1)
        lhs = harm.permute(3, 0, 1, 2).reshape(m1, b * S, rc)
        lhs = torch.cat([lhs.real, lhs.imag], dim=-1)  # (M+1, b*S, 2 R_c)
        corr = torch.matmul(lhs, gal)  # (M+1, b*S, 2G): Re, Im interleaved
        corr = torch.view_as_complex(corr.reshape(m1, b * S, G, 2))
        c = torch.fft.irfft(corr, n=gallery.n_psi, dim=0)  # (P, b*S, G)
        c = c.reshape(gallery.n_psi, b, S, G)
        if ctf_ring is not None:
            gnorm = torch.sqrt(gallery.polar_ring_power @ (ctf_ring[sl] ** 2 * ring_w).T).T  # (b, G)
        else:
            gnorm = torch.sqrt(gallery.polar_ring_power @ ring_w)[None].expand(b, -1)
        v, psi_idx = c.max(dim=0)  # (b, S, G)
        v, s_idx = v.max(dim=1)  # (b, G)
        best[sl] = v / gnorm.clamp_min(1e-20)
        best_shift[sl] = s_idx
        best_psi[sl] = psi_idx.gather(1, s_idx[:, None]).squeeze(1)
    return best, best_psi, best_shift


def _ring_average(values: torch.Tensor, radii: torch.Tensor, n: int) -> torch.Tensor:
    """Average of half-spectrum values (B, n, n//2+1) over rings round(|k|) = r, (B, R)."""
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=values.device)
    kx = torch.fft.rfftfreq(n, d=1.0 / n, device=values.device)
    shell = torch.round(torch.sqrt(ky[:, None] ** 2 + kx[None] ** 2)).long().reshape(-1)
    out = []
    flat = values.reshape(values.shape[0], -1)
    for r in radii.long().tolist():
        sel = shell == r
        out.append(flat[:, sel].mean(-1))
    return torch.stack(out, dim=-1)


def _best_over_shifts(gallery: Gallery, prep: PreparedParticles, particle_index: torch.Tensor, rotations: torch.Tensor):
    """Exact NCC maximised over the integer shift disc: (scores (Q,), shift index (Q,))."""
    return score_poses(gallery.reference, prep, particle_index, rotations, gallery.shift_offsets).max(dim=-1)


def _poses(gallery: Gallery, direction_index: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    rot, tilt = directions_to_euler(gallery.directions[direction_index])
    return euler_to_matrix(rot, tilt, psi)


def _psi_of(gallery: Gallery, index: torch.Tensor) -> torch.Tensor:
    # the coarse correlation at psi index l matches the reference rotated by -2 pi l / P
    return torch.remainder(-2 * math.pi * index.float() / gallery.n_psi, 2 * math.pi)


def match_images(gallery: Gallery, images: torch.Tensor, ctf: CTFParameters | None = None) -> MatchResult:
    """Search particle images (B, N, N) (with their CTF, or None) against the gallery."""
    s = gallery.settings
    prep = _prepare(gallery, images, ctf)
    coarse, l_idx, _ = _coarse_search(gallery, prep)
    B = coarse.shape[0]
    k = s.refine_count(gallery.n_directions)
    top = coarse.topk(k, dim=1).indices  # (B, K)
    l0 = l_idx.gather(1, top)
    # candidates: each top direction at its coarse psi and the two grid neighbours
    steps = [-1, 0, 1] if s.refine_psi_neighbours else [0]
    nj = len(steps)
    cand_dir = top[:, :, None].expand(-1, -1, nj)
    cand_l = (l0[:, :, None] + torch.tensor(steps, device=gallery.device)) % gallery.n_psi
    psi = _psi_of(gallery, cand_l)
    rots = _poses(gallery, cand_dir.reshape(-1), psi.reshape(-1))
    pidx = torch.arange(B, device=gallery.device)[:, None, None].expand(-1, k, nj).reshape(-1)
    sc, t_idx = _best_over_shifts(gallery, prep, pidx, rots)
    sc = sc.reshape(B, k, nj)
    t_idx = t_idx.reshape(B, k, nj)
    best_v, best_j = sc.max(dim=-1)  # (B, K)
    order = best_v.topk(s.xi, dim=1).indices  # (B, xi)
    dir_idx = top.gather(1, order)
    score = best_v.gather(1, order)
    j = best_j.gather(1, order)
    psi_sel = psi.gather(1, order[:, :, None].expand(-1, -1, nj)).gather(2, j[:, :, None]).squeeze(-1)
    t_sel = t_idx.gather(1, order[:, :, None].expand(-1, -1, nj)).gather(2, j[:, :, None]).squeeze(-1)
    return _result(gallery, dir_idx, score, psi_sel, t_sel)


def _result(gallery, dir_idx, score, psi, t_idx) -> MatchResult:
    shifts = gallery.shift_offsets[t_idx] * gallery.work_pixel_size
    rots = _poses(gallery, dir_idx.reshape(-1), psi.reshape(-1)).reshape(*dir_idx.shape, 3, 3)
    return MatchResult(
        direction_index=dir_idx,
        directions=gallery.directions[dir_idx],
        scores=score,
        psi=psi,
        rotations=rots,
        shifts_angstrom=shifts,
    )


# ----------------------------------------------------------------------------- reference
def brute_force_match(
    gallery: Gallery, images: torch.Tensor, ctf: CTFParameters | None = None, chunk: int = 2048
) -> tuple[MatchResult, torch.Tensor]:
    """Exhaustive search of the whole grid (every direction, every psi on the grid, every
    integer shift in the disc) with the exact score. Returns the top ``xi`` result and the
    full best-per-direction score table (B, G). Slow; for tests and the benchmark."""
    prep = _prepare(gallery, images, ctf)
    B = len(prep)
    G, P = gallery.n_directions, gallery.n_psi
    psi_all = _psi_of(gallery, torch.arange(P, device=gallery.device))
    best = torch.full((B, G), -2.0, device=gallery.device)
    best_psi = torch.zeros(B, G, device=gallery.device)
    best_t = torch.zeros(B, G, dtype=torch.long, device=gallery.device)
    per = max(1, chunk // P)  # whole directions per chunk
    for start in range(0, G, per):
        d = torch.arange(start, min(start + per, G), device=gallery.device)
        q = d.shape[0]
        rots = _poses(gallery, d.repeat_interleave(P), psi_all.repeat(q))
        for b in range(B):
            pidx = torch.full((q * P,), b, dtype=torch.long, device=gallery.device)
            v, t = _best_over_shifts(gallery, prep, pidx, rots)
            vb, j = v.reshape(q, P).max(dim=1)
            best[b, d] = vb
            best_psi[b, d] = psi_all[j]
            best_t[b, d] = t.reshape(q, P).gather(1, j[:, None]).squeeze(1)
    assert gallery.settings.xi is not None  # resolved
    order = best.topk(gallery.settings.xi, dim=1).indices
    result = _result(gallery, order, best.gather(1, order), best_psi.gather(1, order), best_t.gather(1, order))
    return result, best


def correlation_counts(gallery: Gallery) -> dict:
    """Correlations per particle: brute force (whole grid, exact) vs this engine."""
    G, P = gallery.n_directions, gallery.n_psi
    T = int(gallery.shift_offsets.shape[0])
    S = int(gallery.coarse_shifts.shape[0])
    k = gallery.settings.refine_count(G)
    brute = G * P * T
    coarse = G * P * S
    refine = k * (3 if gallery.settings.refine_psi_neighbours else 1) * T
    return {
        "brute_force": brute,
        "engine_coarse": coarse,
        "engine_refine_exact": refine,
        "engine_total": coarse + refine,
        "fraction_total": (coarse + refine) / brute,
        "fraction_exact": refine / brute,
        "coarse_band_rings": gallery.coarse_radius,
        "full_band_rings": gallery.radius,
        "directions": G,
        "psi_steps": P,
        "shifts_exact": T,
        "shifts_coarse": S,
    }
