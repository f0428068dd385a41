"""Maps on the wrong grid, stacks given as maps, truncated or over-long MRC files, and image
names without NNN@: one UserError line each."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryopose.errors import UserError
from cryopose.io import ParticleImages, open_stack, read_map, read_star, write_map, write_stack, write_star
from cryopose.particles import ParticleSet

RNG = np.random.default_rng(0)
VOL = RNG.normal(size=(16, 16, 16)).astype(np.float32)


def refused(path: Path, *fragments: str) -> None:
    with pytest.raises(UserError) as exc:
        read_map(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_stacks_are_not_maps(tmp_path: Path) -> None:
    write_stack(tmp_path / "s.mrcs", VOL, 2.0)  # 16 images of 16x16: cubic, but a stack
    refused(tmp_path / "s.mrcs", "stack of 16 images of 16x16", ".mrcs")
    write_stack(tmp_path / "s.mrc", VOL, 2.0)  # space group 0, mz 1: an image stack by its header
    refused(tmp_path / "s.mrc", "stack of 16 images", "space group 0")
    with mrcfile.new(tmp_path / "ispg0.mrc") as m:  # space group 0 but mz = nz: old-style volume (as trpv1's)
        m.set_data(VOL)
        m.header.ispg = 0
        m.voxel_size = 1.5
    vol, apix = read_map(tmp_path / "ispg0.mrc")
    np.testing.assert_array_equal(vol, VOL)
    assert apix == pytest.approx(1.5)


def test_volume_stacks(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "one.mrc") as m:  # 1x16x16x16, space group 401 (as ASPIRE writes)
        m.set_data(VOL[None])
        m.voxel_size = 2.5
    assert int(mrcfile.open(tmp_path / "one.mrc", header_only=True).header.ispg) == 401
    vol, apix = read_map(tmp_path / "one.mrc")
    np.testing.assert_array_equal(vol, VOL)
    assert apix == pytest.approx(2.5)
    with mrcfile.new(tmp_path / "two.mrc") as m:
        m.set_data(np.stack([VOL, VOL]))
    refused(tmp_path / "two.mrc", "stack of 2 volumes")


def test_header_and_file_size_disagree(tmp_path: Path) -> None:
    write_map(tmp_path / "big.mrc", RNG.normal(size=(32, 32, 32)).astype(np.float32), 1.0)
    write_map(tmp_path / "small.mrc", VOL, 1.0)
    header16 = (tmp_path / "small.mrc").read_bytes()[:1024]
    (tmp_path / "lie.mrc").write_bytes(header16 + (tmp_path / "big.mrc").read_bytes()[1024:])
    refused(tmp_path / "lie.mrc", "more than its header announces", "16x16x16")
    with pytest.raises(UserError, match="more than its header announces"):
        open_stack(tmp_path / "lie.mrc")  # stacks too
    data = (tmp_path / "small.mrc").read_bytes()
    (tmp_path / "short.mrc").write_bytes(data[:-4])
    refused(tmp_path / "short.mrc", "truncated")
    (tmp_path / "zero.mrc").write_bytes(b"")
    refused(tmp_path / "zero.mrc", "empty (0 bytes)")
    (tmp_path / "tiny.mrc").write_bytes(data[:100])
    refused(tmp_path / "tiny.mrc", "only 100 bytes")


def test_images_and_pixel_size_zero(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "image.mrc") as m:
        m.set_data(VOL[0])
    refused(tmp_path / "image.mrc", "single 2-D image (16x16)")
    write_map(tmp_path / "nc.mrc", np.zeros((8, 8, 10), np.float32), 1.0)
    refused(tmp_path / "nc.mrc", "cubic")
    with mrcfile.new(tmp_path / "nopix.mrc") as m:  # mrcfile's default pixel size is 0: unknown
        m.set_data(VOL)
    assert read_map(tmp_path / "nopix.mrc")[1] == 0.0


def _set(tmp_path: Path, names: list[str]) -> ParticleSet:
    write_star(ParticleSet.from_arrays(None, None, 2.0, 12, names, None), tmp_path / "p.star")
    return read_star(tmp_path / "p.star")


def test_names_without_index_are_single_images(tmp_path: Path) -> None:
    images = RNG.normal(size=(3, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", images, 2.0)
    with pytest.raises(UserError) as exc:
        ParticleImages(_set(tmp_path, ["s.mrcs", "s.mrcs"]))
    message = str(exc.value)
    assert "s.mrcs has no NNN@ image number" in message and "holds 3" in message and "NNN@s.mrcs" in message
    with pytest.raises(UserError, match="no NNN@"):  # mixed with numbered names of the same stack
        ParticleImages(_set(tmp_path, ["000001@s.mrcs", "s.mrcs"]))
    # single images: a 2-D MRC, or a stack of one
    for i in range(2):
        write_stack(tmp_path / f"one{i}.mrc", images[i], 2.0)
    with mrcfile.new(tmp_path / "flat.mrc") as m:
        m.set_data(images[2])
        m.voxel_size = 2.0
    got = ParticleImages(_set(tmp_path, ["one0.mrc", "one1.mrc", "flat.mrc", "000003@s.mrcs"])).read([0, 1, 2, 3])
    np.testing.assert_array_equal(got, images[[0, 1, 2, 2]])
