"""Imaging: Fourier helpers, projection (Fourier slice), CTF, filters and masks, shifts, rotation,
resampling, simulation and correlation statistics (batched PyTorch functions)."""

__all__ = ["ctf", "filters", "fourier", "projection", "resample", "rotate", "shifts", "simulation", "statistics"]
