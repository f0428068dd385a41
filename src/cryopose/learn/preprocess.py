"""Particle images prepared for a network: CTF correction, background normalisation,
centre crop and Fourier downsampling, batched on any device.

The steps, in order, on images (n, S, S) at pixel size p (Å/px):

1. CTF correction at full size with the CTF at pixel size p (``imaging.ctf``): phase
   flipping (F sign(CTF)) or a Wiener filter (F CTF / (CTF^2 + 1/snr)). Our CTF follows
   RELION's sign, positive at low frequency for underfocus, so protein stays white.
2. Background normalisation: mean 0 and standard deviation 1 outside the circle of 0.9
   of the box (``imaging.filters.normalise_background``).
3. Centre crop to the central c = round(S * crop_factor) px (rounded to even when
   cropping), about the box centre S//2; the pixel size is unchanged.
4. Fourier crop (``imaging.resample.fourier_resize_images``) to ``image_size`` px: the
   field of view is kept and the pixel size becomes p c / image_size.

Origins in Å are unchanged by all four steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.errors import UserError
from cryopose.imaging.ctf import CTFParameters, ctf_rfft2, phase_flip, wiener_filter
from cryopose.imaging.filters import normalise_background
from cryopose.imaging.fourier import centered_irfft2, centered_rfft2
from cryopose.imaging.resample import fourier_resize_images

__all__ = [
    "CTF_CORRECTIONS",
    "DEFAULT_IMAGE_SIZE",
    "ImageSettings",
    "cropped_size",
    "prepared_size",
    "prepared_pixel_size",
    "prepare_images",
]

CTF_CORRECTIONS = ("none", "phase_flip", "wiener")

DEFAULT_IMAGE_SIZE = 32
"""Side (px) the training images are Fourier-cropped to unless told otherwise. At 32 px the
estimators leave the chance plateau within a few epochs on maps at 1 and 5.7 Å/px; at 64 px
an epoch costs four times as much and the plateau lasts longer (benchmarks/bench_learn.py)."""


@dataclass
class ImageSettings:
    """How particle images are prepared.

    image_size: side (px) after Fourier cropping; None keeps the cropped box.
    crop_factor: fraction of the box kept by the centre crop, in (0, 1].
    ctf_correction: "none", "phase_flip" or "wiener".
    wiener_snr: the signal-to-noise ratio of the Wiener filter (regularises 1/CTF).
    normalise: normalise the background to mean 0, standard deviation 1.
    """

    image_size: int | None = DEFAULT_IMAGE_SIZE
    crop_factor: float = 1.0
    ctf_correction: str = "none"
    wiener_snr: float = 1.0
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or int(self.image_size) != self.image_size or self.image_size < 2
        ):
            raise UserError(
                f"image size {self.image_size!r} is not a whole number of pixels >= 2; give a larger image size",
                option="image-size",
            )
        if not (0.0 < float(self.crop_factor) <= 1.0):
            raise UserError(
                f"crop factor {self.crop_factor!r} is outside (0, 1]; give the fraction of the box to keep",
                option="crop-factor",
            )
        if self.ctf_correction not in CTF_CORRECTIONS:
            raise UserError(
                f"unknown CTF correction {self.ctf_correction!r}; use one of {', '.join(CTF_CORRECTIONS)}",
                option="ctf-correction",
            )
        if not (float(self.wiener_snr) > 0.0):
            raise UserError(
                f"Wiener SNR {self.wiener_snr!r} is not positive; give a positive signal-to-noise ratio",
                option="wiener_snr",
            )
        if self.image_size is not None:
            self.image_size = int(self.image_size)


def cropped_size(box: int, settings: ImageSettings) -> int:
    """Side (px) kept by the centre crop of a ``box`` px image: the box itself for
    crop_factor 1, else round(box * crop_factor) rounded to even (at least 2)."""
    if settings.crop_factor >= 1.0:
        return int(box)
    return max(2, 2 * round(box * settings.crop_factor / 2))


def prepared_size(box: int, settings: ImageSettings) -> int:
    """Side (px) of images of ``box`` px after preparation; raises UserError when the
    image size is larger than the cropped box."""
    cropped = cropped_size(box, settings)
    if settings.image_size is None:
        return cropped
    if settings.image_size > cropped:
        raise UserError(
            f"image size {settings.image_size} px is larger than the particle box after cropping "
            f"({cropped} px of {box}); give an image size of at most {cropped} px",
            option="image-size",
        )
    return settings.image_size


def prepared_pixel_size(box: int, pixel_size: float, settings: ImageSettings) -> float:
    """Pixel size (Å/px) of images of ``box`` px at ``pixel_size`` Å/px after preparation."""
    return float(pixel_size) * cropped_size(box, settings) / prepared_size(box, settings)


def _correct_ctf(images: torch.Tensor, ctf: CTFParameters, pixel_size: float, settings: ImageSettings) -> torch.Tensor:
    size = images.shape[-1]
    values = ctf_rfft2(ctf.to(images.device), size, pixel_size).to(images.dtype)
    spectra = centered_rfft2(images)
    if settings.ctf_correction == "phase_flip":
        spectra = phase_flip(spectra, values)
    else:
        spectra = wiener_filter(spectra, values, settings.wiener_snr)
    return centered_irfft2(spectra, size)


def prepare_images(
    images: torch.Tensor, ctf: CTFParameters | None, pixel_size: float, settings: ImageSettings
) -> torch.Tensor:
    """Prepared images (n, 1, s, s) float32 from images (n, S, S) at ``pixel_size`` Å/px,
    on the images' device; ``ctf`` (n particles) is needed unless ctf_correction is "none"."""
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (n, S, S), got {tuple(images.shape)}")
    x = images.to(torch.float32)
    box = x.shape[-1]
    size = prepared_size(box, settings)
    if settings.ctf_correction != "none":
        if ctf is None:
            raise UserError(
                "CTF correction needs CTF parameters but the particles have none; "
                "turn CTF correction off or give particles with CTF columns",
                option="ctf-correction",
            )
        x = _correct_ctf(x, ctf, pixel_size, settings)
    if settings.normalise:
        x = normalise_background(x)
    cropped = cropped_size(box, settings)
    if cropped != box:
        start = box // 2 - cropped // 2
        x = x[..., start : start + cropped, start : start + cropped]
    if size != cropped:
        x = fourier_resize_images(x, size)
    return x.unsqueeze(1).contiguous()
