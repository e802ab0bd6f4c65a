"""Images larger than memory: tiled automatic segmentation and batch read window by window,
write labels box by box, and only an image whose tile embeddings exceed the disk cache's
bound is refused (with a message). Test double (not EdgeSAM), 400-px tiles as in
tests/test_tiling.py.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from test_automatic_tiles import TILE, _match, _scene

from napari_edgesam.engine import CacheBoundError, IntensityMapping, Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.tiling import TiledPredictor, TileGrid
from napari_edgesam.workflows import labels_tiff
from napari_edgesam.workflows.automatic import AutoParams, link_ids, link_labels, segment_slice
from napari_edgesam.workflows.batch import BatchParams, ModelSpec, process_file, task
from napari_edgesam.workflows.tiff_io import LazyTiff


class GuardedArray:
    """A lazy array stand-in (like dask or zarr) that records the size of every read."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.reads: list[int] = []

    def __getitem__(self, idx):
        out = np.asarray(self.arr[idx])
        self.reads.append(out.size)
        return out


# -- tile ownership ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4000, 4000), (1000, 5000), (700, 600), (2049, 513)])
def test_owned_regions_partition_the_image_inside_central_regions(shape):
    grid = TileGrid(shape, TILE, 50)
    count = np.zeros(shape, np.uint8)
    for t in grid.tiles:
        own, cen = grid.owned(t), grid.central(t)
        count[own.row0:own.row1, own.col0:own.col1] += 1
        assert cen.row0 <= own.row0 and own.row1 <= cen.row1
        assert cen.col0 <= own.col0 and own.col1 <= cen.col1
    assert (count == 1).all()  # every pixel owned by exactly one tile
    rng = np.random.default_rng(1)
    pts = np.stack([rng.integers(0, shape[1], 300), rng.integers(0, shape[0], 300)], 1)
    for (x, y), k in zip(pts, grid.tile_indices(pts), strict=True):
        own = grid.owned(grid.tiles[k])
        assert own.row0 <= y < own.row1 and own.col0 <= x < own.col1
        assert grid.tile_for_point(x, y) == grid.tiles[k]


# -- automatic segmentation, window by window -----------------------------------------------

def test_tiled_automatic_reads_windows_only_and_matches_in_memory(test_model):
    img, truth = _scene()
    params = AutoParams(object_size=24, tiles="on", tile_size=TILE)
    pred = Predictor(test_model, cache=None)
    guarded = GuardedArray(img)
    res = segment_slice(pred, guarded, params=params)
    # the same labels as from the in-memory array, one id per object, all found
    ref = segment_slice(pred, img, params=params)
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert res.labels.max() == truth.max() and _match(res.labels, truth).min() >= 0.8
    # never the whole image: tiles, detection blocks (a tile's own pixels plus a margin),
    # small windows around masks, and a strided intensity sample
    assert max(guarded.reads) <= (TILE + 2 * 60) ** 2, max(guarded.reads)
    assert max(guarded.reads) < img.size / 10


def test_tiled_automatic_memory_does_not_grow_with_the_image(test_model, tmp_path):
    """A 6000 x 6000 memory-mapped slice: the peak of Python/numpy allocations stays far
    below even one float32 copy of the slice (144 MB), labels go to a memmap."""
    h = w = 6000
    src = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.uint8,
                                    shape=(h, w))
    src[:] = 30
    yy, xx = np.ogrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 12 ** 2
    centres = [(500, 500), (3000, 2990), (5500, 4000), (1200, 5800)]
    for cy, cx in centres:
        src[cy - 30:cy + 30, cx - 30:cx + 30][disc] = 90
    src.flush()
    image = np.load(tmp_path / "img.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint32,
                                    shape=(h, w))
    params = AutoParams(object_size=24, tiles="on", tile_size=TILE)
    pred = Predictor(test_model, cache=None)
    tracemalloc.start()
    try:
        res = segment_slice(pred, image, params=params,
                            mapping=IntensityMapping.identity_uint8(), out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.labels is out
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert res.n_objects == len(centres)
    for cy, cx in centres:  # each disc found where it is
        assert out[cy, cx] > 0
        assert np.count_nonzero(out[cy - 30:cy + 30, cx - 30:cx + 30] == out[cy, cx]) > 300


def test_link_ids_in_row_blocks_equals_whole_slice(monkeypatch):
    from napari_edgesam.workflows.automatic import linking

    rng = np.random.default_rng(0)
    prev = np.zeros((300, 200), np.uint32)
    cur = np.zeros((300, 200), np.uint32)
    for i in range(1, 9):
        r, c = rng.integers(0, 260), rng.integers(0, 160)
        prev[r:r + 40, c:c + 40] = i
        cur[r + 5:r + 45, c:c + 40] = 9 - i
    whole, n1 = link_labels(prev, cur, min_iou=0.3, next_id=9)
    monkeypatch.setattr(linking, "_BLOCK_PIXELS", 1000)  # 5 rows per block (where used)
    ids, n2 = link_ids(prev, cur, min_iou=0.3, next_id=9)
    np.testing.assert_array_equal(ids[cur], whole)
    assert n1 == n2
    # objects that kept their place kept their previous id
    assert (whole[(prev > 0) & (cur > 0)] == prev[(prev > 0) & (cur > 0)]).mean() > 0.5


# -- batch ---------------------------------------------------------------------------------

def _spec():
    return ModelSpec(str(TEST_ENCODER), str(TEST_DECODER), name="test double")


def test_batch_reads_memory_mapped_slices_as_views(tmp_path, monkeypatch):
    """An uncompressed TIFF is never copied whole: its slices are memmap views that tiled
    segmentation reads window by window."""
    img, truth = _scene((2200, 2300), n=12, seed=5)
    tifffile.imwrite(tmp_path / "big.tif", img)

    def no_whole_read(self, index):
        raise AssertionError(f"whole read of {index}")

    monkeypatch.setattr(LazyTiff, "read", no_whole_read)
    out = tmp_path / "out"
    out.mkdir()
    params = BatchParams(automatic=AutoParams(object_size=24, tiles="on", tile_size=TILE))
    res = process_file(tmp_path / "big.tif", out, _spec(), params)
    assert res.status == "done", res.error
    labels = tifffile.imread(out / "big_labels.tif")
    assert labels.max() == truth.max() and _match(labels, truth).min() >= 0.8


def test_batch_writes_large_slices_as_tiled_tiff(tmp_path, monkeypatch):
    """Slices above the in-memory bound are written tile by tile; the file holds the same
    labels as the in-memory path."""
    img, _ = _scene((1000, 900), n=6, seed=2)
    stack = np.stack([img, img])
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    params = BatchParams(automatic=AutoParams(object_size=24, tiles="on", tile_size=TILE))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = process_file(tmp_path / "s.tif", tmp_path / "a", _spec(), params)
    assert ref.status == "done", ref.error
    monkeypatch.setattr(task, "IN_MEMORY_LABELS_BYTES", 1000)  # a scratch memmap
    monkeypatch.setattr(labels_tiff, "IN_MEMORY_LABELS_BYTES", 1000)  # written tile by tile
    monkeypatch.setattr(labels_tiff, "OUTPUT_TILE", 256)
    res = process_file(tmp_path / "s.tif", tmp_path / "b", _spec(), params)
    assert res.status == "done", res.error
    want = tifffile.imread(tmp_path / "a" / "s_labels.tif")
    with tifffile.TiffFile(tmp_path / "b" / "s_labels.tif") as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
        got = tif.asarray()
    assert want.max() >= 2  # objects found (the scene places only some inside 1000 x 900)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert not list((tmp_path / "b").glob(".*"))  # no scratch or partial files left


# -- the disk cache's bound ------------------------------------------------------------------

def test_image_too_large_for_the_disk_cache_bound_is_refused_with_a_message(tmp_path,
                                                                             test_model):
    big = np.broadcast_to(np.uint8(30), (10000, 10000))  # 100 M pixels, no memory
    grey = IntensityMapping.identity_uint8()
    small = EmbeddingCache(disk_dir=tmp_path / "emb", disk_bytes=64 * 2**20)
    with pytest.raises(CacheBoundError) as info:
        TiledPredictor(Predictor(test_model, cache=small), big, grey)
    msg = str(info.value)
    assert "169 tiles" in msg and "676.0 MiB" in msg and "64.0 MiB" in msg
    assert "cache_disk_bytes" in msg and "settings.json" in msg
    # a bound that holds every tile, a memory-only cache, or no cache: not an error
    roomy = EmbeddingCache(disk_dir=tmp_path / "emb", disk_bytes=2 * 2**30)
    for cache in (roomy, EmbeddingCache(disk_dir=False), None):
        tp = TiledPredictor(Predictor(test_model, cache=cache), big, grey)
        assert len(tp.grid) == 169


# -- masks as crops ----------------------------------------------------------------------------

def test_mask_crop_windows_and_round_trip():
    from napari_edgesam.engine.transforms import MaskCrop

    full = np.zeros((50, 60), bool)
    full[10:14, 20:23] = True
    full[12, 25] = True
    m = MaskCrop(full)
    assert m.bbox == (10, 20, 14, 26) and m.area == 13 and m.crop.shape == (4, 6)
    np.testing.assert_array_equal(np.asarray(m), full)
    np.testing.assert_array_equal(m.window(8, 18, 13, 30), full[8:13, 18:30])
    assert not m.window(0, 0, 5, 5).any() and m.window(0, 0, 5, 5).shape == (5, 5)
    # a window crop placed in a slice, trimmed to its box
    w = MaskCrop(full[5:30, 15:40], 5, 15, (50, 60))
    assert w.bbox == m.bbox and np.array_equal(w.full(), full)
    empty = MaskCrop(np.zeros((7, 7), bool), 3, 3, (50, 60))
    assert empty.bbox is None and not empty.any() and not empty.full().any()
    assert empty.full().shape == (50, 60)
