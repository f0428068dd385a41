"""Contrast transfer function exactly as RELION's ``ctf.h``.

CTF(k) = -scale * sin(gamma) * exp(-B |k|^2 / 4), with
gamma = pi lambda deltaf(k) |k|^2 ... written as RELION does:
argument = K1 * deltaf * u^2 + K2 * u^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2)),
K1 = pi lambda, K2 = pi/2 Cs lambda^3, deltaf = -(dU + dV)/2 - (dU - dV)/2 cos(2 (angle(k) - azimuth)).
Defocus in Å (positive underfocus), azimuth (defocus angle) in degrees from the x axis,
voltage in kV, Cs in mm, phase shift in degrees, B-factor in Å^2, frequencies in 1/Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from cryopose.imaging.fourier import rfft2_frequencies

__all__ = ["CTFParameters", "electron_wavelength", "ctf_values", "ctf_rfft2", "phase_flip", "wiener_filter"]


@dataclass
class CTFParameters:
    """Per-particle CTF parameters as tensors of shape (n,) (RELION units)."""

    defocus_u: torch.Tensor  # Å
    defocus_v: torch.Tensor  # Å
    defocus_angle: torch.Tensor  # degrees
    voltage: torch.Tensor  # kV
    spherical_aberration: torch.Tensor  # mm
    amplitude_contrast: torch.Tensor
    phase_shift: torch.Tensor  # degrees
    bfactor: torch.Tensor  # Å^2
    scale: torch.Tensor

    @classmethod
    def from_mapping(
        cls, values: dict, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> "CTFParameters":
        """Build from a dict of arrays (e.g. ``ParticleSet.ctf_parameters()``); missing
        phase_shift/bfactor default to 0 and scale to 1."""
        n = len(values["defocus_u"])
        defaults = {"phase_shift": 0.0, "bfactor": 0.0, "scale": 1.0}
        kwargs = {}
        for f in fields(cls):
            v = values.get(f.name, defaults.get(f.name))
            if v is None:
                raise KeyError(f"missing CTF parameter {f.name}")
            t = torch.as_tensor(
                np.array(v, dtype=np.float64) if not torch.is_tensor(v) else v, dtype=dtype, device=device
            )
            kwargs[f.name] = t.expand(n).clone() if t.ndim == 0 else t
        return cls(**kwargs)

    def __len__(self) -> int:
        return self.defocus_u.shape[0]

    def __getitem__(self, index) -> "CTFParameters":
        return CTFParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CTFParameters":
        """The parameters on ``device`` and/or as ``dtype`` (e.g. float32 for the image kernels)."""
        return CTFParameters(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})


def electron_wavelength(voltage_kv: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength (Å) at an accelerating voltage (kV)."""
    v = voltage_kv * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))


def ctf_values(ctf: CTFParameters, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """CTF of each particle at frequencies (ky, kx) in 1/Å.

    ``ky``/``kx`` have any shape S; the result has shape (n, *S).
    """
    shape = (-1,) + (1,) * kx.ndim

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(shape).to(kx.dtype)

    lam = electron_wavelength(col(ctf.voltage))
    cs = col(ctf.spherical_aberration) * 1e7
    q0 = col(ctf.amplitude_contrast)
    k1 = math.pi * lam
    k2 = math.pi / 2 * cs * lam**3
    k3 = torch.atan(q0 / torch.sqrt(1 - q0**2))
    k5 = torch.deg2rad(col(ctf.phase_shift))
    u2 = kx**2 + ky**2
    azimuth = torch.deg2rad(col(ctf.defocus_angle))
    defocus_average = -(col(ctf.defocus_u) + col(ctf.defocus_v)) * 0.5
    defocus_deviation = -(col(ctf.defocus_u) - col(ctf.defocus_v)) * 0.5
    ellipse = torch.cos(2 * (torch.atan2(ky, kx) - azimuth))
    deltaf = defocus_average + defocus_deviation * ellipse
    argument = k1 * deltaf * u2 + k2 * u2**2 - k5 - k3
    values = -torch.sin(argument)
    values = values * torch.exp(-col(ctf.bfactor) / 4 * u2)
    return values * col(ctf.scale)


def ctf_rfft2(ctf: CTFParameters, size: int, pixel_size: float) -> torch.Tensor:
    """CTF on the half transform of size x size images (n, N, N//2+1), pixel size in Å."""
    ky, kx = rfft2_frequencies(size, pixel_size, device=ctf.defocus_u.device, dtype=torch.float32)
    return ctf_values(ctf, ky, kx)


def phase_flip(spectra: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply spectra by sign(CTF) (phase flipping)."""
    return spectra * torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)


def wiener_filter(spectra: torch.Tensor, ctf: torch.Tensor, snr: float = 10.0) -> torch.Tensor:
    """Wiener-corrected spectra: F CTF / (CTF^2 + 1/snr)."""
    return spectra * (ctf / (ctf**2 + 1.0 / snr))
