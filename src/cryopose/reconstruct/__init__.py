"""CTF-weighted reconstruction, FSC and map correlation."""

from cryopose.reconstruct.backproject import (
    FourierAccumulator,
    finalise_reconstruction,
    insert_images,
    insert_slices,
)
from cryopose.reconstruct.fsc import (
    FSCResult,
    fourier_shell_correlation,
    fsc_curve,
    map_correlation,
    resolution_at,
)

__all__ = [
    "FourierAccumulator",
    "finalise_reconstruction",
    "insert_images",
    "insert_slices",
    "FSCResult",
    "fourier_shell_correlation",
    "fsc_curve",
    "map_correlation",
    "resolution_at",
    "reconstruct_from_images",
]


def reconstruct_from_images(images, rotations, shifts_px, ctf, pixel_size, symmetry=None, padding=2, batch_size=256):
    """Map (N, N, N) from in-memory images (B, N, N), poses (B, 3, 3), origins (B, 2) px
    and CTF (or None); a convenience over :class:`FourierAccumulator` for small sets."""
    n = images.shape[-1]
    acc = FourierAccumulator.zeros(n, padding, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        insert_images(
            acc,
            images[sl].float(),
            rotations[sl].float(),
            shifts_px[sl].float(),
            None if ctf is None else ctf[sl].to(images.device),
            pixel_size,
            symmetry,
        )
    return finalise_reconstruction(acc)
