"""Window-by-window TIFF reading and tile-by-tile mask writing (workflows.tiff_windows)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_edgesam.engine.errors import InvalidInputError
from napari_edgesam.workflows.tiff_windows import open_lazy, write_mask_tiled


@pytest.mark.parametrize("layout", [
    {},                                              # contiguous, uncompressed: memory-mapped
    {"compression": "zlib"},                         # strips
    {"compression": "zlib", "tile": (64, 64)},       # tiles
])
def test_open_lazy_windows_equal_the_whole_image(tmp_path, layout):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65535, (3, 300, 410), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", img, metadata={"axes": "ZYX"}, **layout)
    with open_lazy(tmp_path / "s.tif") as lazy:
        data = lazy.stack.data
        assert lazy.mode == ("memmap" if not layout else "tiles")
        assert lazy.stack.axes == "ZYX" and tuple(data.shape) == img.shape
        assert data.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(data[1, 17:250, 33:401]), img[1, 17:250, 33:401])
        np.testing.assert_array_equal(np.asarray(data[2]), img[2])


def test_open_lazy_rgb_keeps_samples_in_one_chunk(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (200, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", img, photometric="rgb", compression="zlib")
    with open_lazy(tmp_path / "c.tif") as lazy:
        assert lazy.stack.axes == "YXS"
        np.testing.assert_array_equal(np.asarray(lazy.stack.data[10:90, 5:140]), img[10:90, 5:140])


def test_open_lazy_refuses_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        open_lazy(tmp_path / "none.tif")
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(InvalidInputError, match="cannot read"):
        open_lazy(tmp_path / "bad.tif")


@pytest.mark.parametrize("offset, crop_shape", [((0, 0), (40, 50)), ((250, 180), (50, 20)),
                                                ((17, 3), (256, 300))])
def test_write_mask_tiled_round_trips(tmp_path, offset, crop_shape):
    shape = (300, 310)
    rng = np.random.default_rng(2)
    crop = rng.random(crop_shape) > 0.5
    write_mask_tiled(tmp_path / "m.tif", crop, offset, shape, tile=64)
    want = np.zeros(shape, np.uint8)
    want[offset[0]:offset[0] + crop_shape[0], offset[1]:offset[1] + crop_shape[1]] = crop
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 64
        np.testing.assert_array_equal(page.asarray(), want)


def test_write_mask_tiled_refuses_crops_outside_and_existing_files(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_mask_tiled(tmp_path / "m.tif", np.ones((10, 10), bool), (95, 0), (100, 100))
    write_mask_tiled(tmp_path / "m.tif", np.ones((10, 10), bool), (0, 0), (100, 100))
    with pytest.raises(InvalidInputError, match="exists"):
        write_mask_tiled(tmp_path / "m.tif", np.ones((10, 10), bool), (0, 0), (100, 100))
    assert list(tmp_path.iterdir()) == [tmp_path / "m.tif"]  # no temporary file left
