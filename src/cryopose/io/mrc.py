"""MRC maps and MRCS particle stacks (memory-mapped, never loaded whole).

Arrays are (z, y, x) for maps and (n, y, x) for stacks, as MRC stores them; pixel sizes
are in Angstrom. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np

from cryopose.errors import UserError
from cryopose.io.atomic import atomic_path, temporary_path
from cryopose.io.outputs import record_written
from cryopose.particles import ParticleSet

__all__ = [
    "read_map",
    "write_map",
    "open_stack",
    "StackReader",
    "ParticleImages",
    "ArrayImages",
    "write_stack",
    "StackWriter",
]

# Stack headers often carry 1.0 A/px (or 0) when the writer did not know the pixel size.
_UNSET_PIXEL_SIZES = (0.0, 1.0)


def _check_size(path: Path, mrc: mrcfile.mrcfile.MrcFile) -> None:
    """UserError if the file holds fewer data bytes than its header announces."""
    h = mrc.header
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    if min(nx, ny, nz) <= 0 or int(h.nsymbt) < 0:
        raise UserError(f"{path} is not an MRC file (header dimensions {nx}x{ny}x{nz})")
    try:
        itemsize = mrcfile.utils.data_dtype_from_header(h).itemsize
    except (ValueError, KeyError):
        raise UserError(f"{path} has an unknown MRC data mode {int(h.mode)}; cannot read it") from None
    expected = 1024 + int(h.nsymbt) + nx * ny * nz * itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise UserError(
            f"{path} is truncated: its header announces {nx}x{ny}x{nz} values ({expected} bytes) "
            f"but the file has {actual} bytes; re-copy or re-export it"
        )
    if actual > expected:
        raise UserError(
            f"{path} has {actual - expected} bytes more than its header announces ({nx}x{ny}x{nz} values, "
            f"{expected} bytes): the header does not describe the data; re-export the file"
        )


def _open(path: Path, mmap: bool) -> mrcfile.mrcfile.MrcFile:
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the path")
    size = path.stat().st_size
    if size < 1024:
        what = "is empty (0 bytes)" if size == 0 else f"has only {size} bytes, less than an MRC header"
        raise UserError(f"{path} {what}; is it truncated? re-copy or re-export it")
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            # Missing "MAP " ids and odd machine stamps are common in real stacks; data size is
            # checked separately below.
            warnings.simplefilter("ignore", RuntimeWarning)
            header_check = mrcfile.open(path, mode="r", permissive=True, header_only=True)
            try:
                _check_size(path, header_check)
            finally:
                header_check.close()
            mrc = opener(path, mode="r", permissive=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is not a readable MRC file ({exc})") from None
    if mrc.data is None:
        mrc.close()
        raise UserError(f"{path} is not a readable MRC file (no data could be read); is it truncated?")
    return mrc


def _voxel_size(mrc: mrcfile.mrcfile.MrcFile) -> float:
    value = float(mrc.voxel_size.x)
    return value if np.isfinite(value) and value > 0 else 0.0


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a cubic 3-D map: (volume float32 (z, y, x), pixel size in A; 0.0 if unknown).

    A header pixel size of 0 (mrcfile's default) means unknown and gives 0.0: callers must
    not divide by it. Refused: an image stack (a .mrcs file, or MRC space group 0 with
    mz = 1), a 2-D image, a stack of several volumes (one volume in a volume stack, space
    group 401 as ASPIRE writes, is a map), non-cubic maps, NaN or infinite values.
    """
    path = Path(path)
    mrc = _open(path, mmap=False)
    try:
        data = np.asarray(mrc.data)
        apix = _voxel_size(mrc)
        ispg, mz = int(mrc.header.ispg), int(mrc.header.mz)
    finally:
        mrc.close()
    if data.ndim == 4:  # a volume stack
        if data.shape[0] != 1:
            raise UserError(f"{path} is a stack of {data.shape[0]} volumes; cryopose needs one map (split the stack)")
        data = data[0]
    elif data.ndim == 3 and (path.suffix.lower() == ".mrcs" or (ispg == 0 and mz == 1)):
        kind = "a .mrcs file" if path.suffix.lower() == ".mrcs" else "its header says so: space group 0, mz 1"
        raise UserError(
            f"{path} is a stack of {data.shape[0]} images of {data.shape[2]}x{data.shape[1]} ({kind}), not a 3-D map; "
            "give a map (volume) file"
        )
    elif data.ndim == 2:
        raise UserError(
            f"{path} is a single 2-D image ({data.shape[1]}x{data.shape[0]}), not a 3-D map; give a map file"
        )
    if data.ndim != 3:
        raise UserError(f"map {path} has {data.ndim} dimensions {data.shape}; cryopose needs a 3-D map")
    nz, ny, nx = data.shape
    if not nx == ny == nz:
        raise UserError(f"map {path} is {nx}x{ny}x{nz}; cryopose needs cubic maps (pad or crop it)")
    volume = data.astype(np.float32, copy=True)
    if not np.all(np.isfinite(volume)):
        raise UserError(f"map {path} contains NaN or infinite values; fix or regenerate the map")
    return volume, apix


def _deterministic_label(mrc: mrcfile.mrcfile.MrcFile) -> None:
    """Replace mrcfile's timestamped creation label, so equal data give equal bytes."""
    mrc.header.label[:] = b""
    mrc.header.label[0] = b"cryopose"
    mrc.header.nlabl = 1


def _write_array(path: Path, data: np.ndarray, pixel_size: float, stack: bool) -> None:
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN data is reported by the readers
            mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size)
            mrc.update_header_stats()
            _deterministic_label(mrc)


def write_map(path: str | os.PathLike, volume: np.ndarray, pixel_size: float) -> None:
    """Write a 3-D map (z, y, x) as float32 MRC with voxel size pixel_size (A)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {volume.shape}")
    _write_array(Path(path), volume, pixel_size, stack=False)


def write_stack(path: str | os.PathLike, images: np.ndarray, pixel_size: float) -> None:
    """Write images (n, ny, nx) as a float32 MRCS stack with pixel size (A)."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images must be (n, ny, nx), got shape {images.shape}")
    _write_array(Path(path), images, pixel_size, stack=True)


class StackReader:
    """A memory-mapped, read-only image stack; ``reader[indices]`` -> float32 (k, ny, nx)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._mrc = _open(self.path, mmap=True)
        data = self._mrc.data
        if data.ndim == 2:
            data = data[None]
        elif data.ndim != 3:
            self._mrc.close()
            raise UserError(f"{self.path} has shape {data.shape}; expected an image stack")
        self._data = data
        self.pixel_size: float = _voxel_size(self._mrc)
        """Pixel size from the header in A (0.0 when not set)."""

    def __len__(self) -> int:
        return int(self._data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of one image."""
        return int(self._data.shape[1]), int(self._data.shape[2])

    def __getitem__(self, indices: int | slice | np.ndarray | list) -> np.ndarray:
        if isinstance(indices, (int, np.integer)):
            indices = np.array([indices])
        return np.asarray(self._data[indices], dtype=np.float32)

    def close(self) -> None:
        self._mrc.close()

    def __enter__(self) -> "StackReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stack(path: str | os.PathLike) -> StackReader:
    """Open an MRC/MRCS stack memory-mapped (a 2-D file is a stack of one)."""
    return StackReader(path)


class ParticleImages:
    """The images of a ``ParticleSet`` across its stack files, read by particle index.

    Checks on construction: every stack exists and is readable, every index is inside its
    stack, images are square and the same size, and the stack header's pixel size (when set)
    agrees with the star's within 1%. The object holds only paths and indices: it pickles
    (for DataLoader and Dask workers), and each process opens the memory maps it needs on
    its first read. ``take(indices)`` gives a smaller source for a chunk of particles.
    """

    def __init__(self, particles: ParticleSet) -> None:
        paths = particles.image_paths
        indices = particles.image_indices
        unique, file_ids = np.unique(paths, return_inverse=True)
        # a name without "NNN@" is a single-image file: index 0 of a 2-D (or one-image) MRC
        bare = ~particles.table["rlnImageName"].astype(str).str.contains("@", regex=False).to_numpy(dtype=bool)
        try:
            star_apix = particles.pixel_size_or_none()
        except Exception:
            star_apix = None
        shape = None
        for fid, stack_path in enumerate(unique):
            if not os.path.isfile(stack_path):
                raise UserError(
                    f"stack {stack_path} does not exist (relative image names are looked for from the particle "
                    f"file's folder, the working folder and the folders above the file's, as in a RELION project); "
                    "fix rlnImageName, move the stack, or run from the folder the names are relative to"
                )
            with open_stack(stack_path) as reader:
                mine = file_ids == fid
                if len(reader) > 1 and bare[mine].any():
                    name = particles.table["rlnImageName"].to_numpy()[mine & bare][0]
                    raise UserError(
                        f"image name {name} has no NNN@ image number, so it names a single image, but "
                        f"{stack_path} holds {len(reader)}; write the image names as NNN@{name}"
                    )
                idx = indices[mine]
                if idx.min() < 0:
                    raise UserError(
                        f"star asks for image {int(idx.min()) + 1} of {stack_path}; image numbers start at 1"
                    )
                if idx.max() >= len(reader):
                    raise UserError(
                        f"star asks for image {int(idx.max()) + 1} of {stack_path}, which has {len(reader)}"
                    )
                ny, nx = reader.shape
                if ny != nx:
                    raise UserError(f"images in {stack_path} are {nx}x{ny}; cryopose needs square images")
                if shape is not None and shape != reader.shape:
                    raise UserError(f"images in {stack_path} are {nx}x{ny} but others are {shape[1]}x{shape[0]}")
                shape = reader.shape
                if star_apix is not None and reader.pixel_size not in _UNSET_PIXEL_SIZES:
                    values = np.unique(star_apix[mine])
                    off = values[np.abs(values - reader.pixel_size) > 0.01 * values]
                    if off.size:
                        said = ", ".join(f"{v:.4f}" for v in off[:4])
                        raise UserError(
                            f"stack {stack_path} has pixel size {reader.pixel_size:.4f} A but the star gives "
                            f"{said} A for particles in it; fix the star's rlnImagePixelSize or the stack header"
                        )
        self._paths: list[str] = [str(p) for p in unique]
        self._file_ids = np.asarray(file_ids, dtype=np.int64)
        self._indices = np.asarray(indices, dtype=np.int64)
        self.image_shape: tuple[int, int] = shape if shape is not None else (0, 0)
        self._readers: dict[int, StackReader] = {}
        self._pid = os.getpid()

    @property
    def paths(self) -> list[str]:
        """The stack files this source reads."""
        return list(self._paths)

    # -------------------------------------------------------------- pickling and views
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def take(self, indices: np.ndarray | list) -> "ParticleImages":
        """A source over the particles at ``indices`` only (its index i is indices[i] here)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        view = object.__new__(ParticleImages)
        used, file_ids = np.unique(self._file_ids[indices], return_inverse=True)
        view._paths = [self._paths[i] for i in used]
        view._file_ids = np.asarray(file_ids, dtype=np.int64).reshape(-1)
        view._indices = self._indices[indices].copy()
        view.image_shape = self.image_shape
        view._readers = {}
        view._pid = os.getpid()
        return view

    def _reader(self, fid: int) -> StackReader:
        if self._pid != os.getpid():  # forked: memory maps are not shared safely
            self._readers, self._pid = {}, os.getpid()
        reader = self._readers.get(fid)
        if reader is None:
            reader = self._readers[fid] = open_stack(self._paths[fid])
        return reader

    # -------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._indices)

    def read(self, indices: np.ndarray | list) -> np.ndarray:
        """Images of the particles at ``indices`` (into the set), float32 (k, ny, nx), in that order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self.image_shape), dtype=np.float32)
        file_ids = self._file_ids[indices]
        for fid in np.unique(file_ids):
            where = np.nonzero(file_ids == fid)[0]
            stack_idx = self._indices[indices[where]]
            order = np.argsort(stack_idx, kind="stable")  # sequential reads on the memory map
            out[where[order]] = self._reader(int(fid))[stack_idx[order]]
        if not np.all(np.isfinite(out)):
            bad = indices[~np.isfinite(out).reshape(len(indices), -1).all(axis=1)]
            raise UserError(
                f"particle images {(bad[:5] + 1).tolist()} (1-based) contain NaN or infinite values; fix the stack"
            )
        return out

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, images) over all particles in order, chunk_size at a time."""
        for start in range(0, len(self), chunk_size):
            idx = np.arange(start, min(start + chunk_size, len(self)))
            yield idx, self.read(idx)

    def close(self) -> None:
        """Close the memory maps this process opened (later reads reopen them)."""
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def __enter__(self) -> "ParticleImages":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayImages:
    """An in-memory image source with the ``ParticleImages`` interface (``read``, ``take``)."""

    def __init__(self, images) -> None:
        self.images = np.asarray(images, dtype=np.float32)
        self.image_shape: tuple[int, int] = tuple(self.images.shape[-2:])

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64).reshape(-1)]

    def take(self, indices) -> "ArrayImages":
        return ArrayImages(self.read(indices))

    def close(self) -> None:
        pass


class StackWriter:
    """Write a stack of n images (ny, nx) in chunks; ``close()`` renames it into place.

    >>> with StackWriter(path, n, (ny, nx), pixel_size) as w:
    ...     w.write(0, images)

    With ``resumable=True`` the partial stack has a fixed name (``.NAME.partial`` beside
    the target) and is kept when the writer is interrupted; a new writer with the same
    shape reopens it (``resumed`` is then True) so finished images need not be redone.
    """

    def __init__(
        self, path: str | os.PathLike, n: int, shape: tuple[int, int], pixel_size: float, resumable: bool = False
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        self.resumable = resumable
        self.resumed = False
        if resumable:
            self._tmp = self.path.with_name(f".{self.path.name}.partial")
            if self._tmp.exists():
                try:
                    mrc = mrcfile.mmap(self._tmp, mode="r+")
                    if mrc.data.shape == (self.n, *shape):
                        self._mrc, self.resumed = mrc, True
                    else:
                        mrc.close()
                except ValueError:
                    pass
        else:
            self._tmp = temporary_path(self.path)
        if not self.resumed:
            self._mrc = mrcfile.new_mmap(self._tmp, shape=(self.n, *shape), mrc_mode=2, overwrite=True)
            self._mrc.set_image_stack()
        self._mrc.voxel_size = float(pixel_size)
        self._closed = False

    def write(self, start: int, images: np.ndarray) -> None:
        """Write images (k, ny, nx) at positions start..start+k-1."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if start < 0 or start + len(images) > self.n:
            raise ValueError(f"images {start}..{start + len(images) - 1} do not fit a stack of {self.n}")
        self._mrc.data[start : start + len(images)] = images

    def close(self) -> None:
        """Finish the header and rename the stack into place."""
        if self._closed:
            return
        self._mrc.update_header_stats()
        _deterministic_label(self._mrc)
        self._mrc.close()
        os.replace(self._tmp, self.path)
        record_written(self.path)
        self._closed = True

    def abort(self) -> None:
        """Discard the partial stack."""
        if not self._closed:
            self._mrc.close()
            if self._tmp.exists():
                self._tmp.unlink()
            self._closed = True

    def __enter__(self) -> "StackWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self.resumable:
            self._mrc.flush()
            self._mrc.close()
            self._closed = True
        else:
            self.abort()
