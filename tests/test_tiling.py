"""Tiled embeddings: small objects in large images, seams, boxes across tiles, lazy reads.

The test double (not EdgeSAM) resolves objects only from about 30 pixels in its 1024 frame,
so these tests use 400-pixel tiles (each encoded at 2.56x): objects of 15-30 pixels then
reach it at 38-77 pixels. The tiling logic is the same for any tile size; the default is
1024-pixel tiles encoded at 1x. Discs are blurred slightly (sigma 0.7 px, like a microscope's
point spread) because the test double's hard-edge masks sit about a pixel inside sharp edges.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import iou
from scipy import ndimage as ndi

from napari_edgesam.engine import IntensityMapping, InvalidInputError, Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.tiling import TiledPredictor, TileGrid, Window, needs_tiling

TILE, HALO = 400, 50
H = W = 4000


def _paint(img, cy, cx, r, value):
    sl = (slice(max(0, int(cy - r - 2)), int(cy + r + 3)), slice(max(0, int(cx - r - 2)), int(cx + r + 3)))
    y, x = np.ogrid[sl]
    img[sl][(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = value


def _local_iou(res, cy, cx, r):
    """IoU of a tiled prediction with the disc, in a window around the disc."""
    pad = int(3 * r)
    r0, c0 = max(0, int(cy) - pad), max(0, int(cx) - pad)
    r1, c1 = min(H, int(cy) + pad), min(W, int(cx) + pad)
    y, x = np.ogrid[r0:r1, c0:c1]
    truth = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    w = res.window
    full = np.zeros((r1 - r0, c1 - c0), bool)
    ir0, ic0 = max(r0, w.row0), max(c0, w.col0)
    ir1, ic1 = min(r1, w.row1), min(c1, w.col1)
    if ir1 > ir0 and ic1 > ic0:
        full[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = res.mask[ir0 - w.row0:ir1 - w.row0,
                                                              ic0 - w.col0:ic1 - w.col0]
    # Nothing of the mask may lie outside the local window (no stray pixels elsewhere).
    assert res.area == full.sum()
    return iou(full, truth)


@pytest.fixture(scope="module")
def scene():
    """A 4000 x 4000 image with 40 discs of 15-30 px, 18 of them on tile seams or on the
    boundaries of tiles' central regions."""
    rng = np.random.default_rng(0)
    grid = TileGrid((H, W), TILE, HALO)
    cs = grid.col_starts
    seams = np.array(sorted(set(cs[1:] + [c + TILE for c in cs[:-1]] + [c + HALO for c in cs[1:]])))
    img = np.full((H, W), 30, np.float32)
    cells = [(r, c) for r in range(14) for c in range(14)]
    rng.shuffle(cells)
    objects = []
    for i, (r, c) in enumerate(cells[:40]):
        rad = rng.uniform(7.5, 15)
        cy, cx = 140 + 280 * r + rng.uniform(-20, 20), 140 + 280 * c + rng.uniform(-20, 20)
        if i < 12:  # on a vertical seam
            cx = seams[np.argmin(np.abs(seams - cx))] + rng.uniform(-2, 2)
        elif i < 18:  # on a horizontal seam
            cy = seams[np.argmin(np.abs(seams - cy))] + rng.uniform(-2, 2)
        objects.append((cy, cx, rad))
        _paint(img, cy, cx, rad, 90)
    img = ndi.gaussian_filter(img, 0.7).round().astype(np.uint8)
    return img, objects


def test_small_objects_one_click_each(test_model, scene):
    img, objects = scene
    tp = TiledPredictor(Predictor(test_model, cache=None), img, tile_size=TILE, halo=HALO)
    scores = []
    for cy, cx, r in objects:
        res = tp.predict(points=[(cx, cy)])
        scores.append(_local_iou(res, cy, cx, r))
    assert min(scores) >= 0.8, np.round(scores, 2)
    # Only the tiles that the clicks needed were encoded, not the whole image.
    assert len(tp.encoded) <= len(objects) + 5
    assert len(tp.encoded) < len(tp.grid) / 2


def test_whole_image_would_lose_them(test_model, scene):
    """Without tiles the 4000 px image is shrunk ~4x and small objects are not found."""
    img, objects = scene
    pred = Predictor(test_model, cache=None)
    pred.set_image(img)
    ious = []
    for cy, cx, r in objects[:10]:
        res = pred.predict(points=[(cx, cy)])
        y, x = np.ogrid[:H, :W]
        ious.append(iou(res.mask, (y - cy) ** 2 + (x - cx) ** 2 <= r * r))
    assert np.median(ious) < 0.8


def test_object_larger_than_the_halo_on_a_seam_is_not_cut(test_model):
    img = np.full((2000, 2000), 30, np.uint8)
    grid = TileGrid(img.shape, TILE, HALO)
    seam = grid.col_starts[1] + HALO  # where the tile choice switches
    cy, cx, r = 700.0, float(seam + 40), 110.0
    _paint(img, cy, cx, r, 90)
    tp = TiledPredictor(Predictor(test_model, cache=None), img, tile_size=TILE, halo=HALO)
    first = tp.grid.tile_for_point(cx, cy)
    res = tp.predict(points=[(cx, cy)])
    y, x = np.ogrid[:2000, :2000]
    assert iou(res.full_mask(), (y - cy) ** 2 + (x - cx) ** 2 <= r * r) >= 0.9
    assert res.window != first  # re-centred on the object
    assert len(tp.encoded) >= 2


def test_box_crossing_a_tile_border(test_model):
    img = np.full((3000, 3000), 30, np.uint8)
    grid = TileGrid(img.shape, TILE, HALO)
    seam = float(grid.col_starts[2])  # a tile edge
    cy, cx, r = 1500.0, seam, 60.0
    _paint(img, cy, cx, r, 90)
    tp = TiledPredictor(Predictor(test_model, cache=None), img, tile_size=TILE, halo=HALO)
    box = (cx - 80, cy - 80, cx + 80, cy + 80)
    res = tp.predict(box=box)
    y, x = np.ogrid[:3000, :3000]
    assert iou(res.full_mask(), (y - cy) ** 2 + (x - cx) ** 2 <= r * r) >= 0.8
    w = res.window
    assert w.col0 <= box[0] and box[2] < w.col1 and w.row0 <= box[1] and box[3] < w.row1


class CountingArray:
    """A lazy array stand-in (like dask or zarr) that records every region read."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.pixels_read = 0

    def __getitem__(self, idx):
        out = np.asarray(self.arr[idx])
        self.pixels_read += out.size
        return out


def test_lazy_image_read_tile_by_tile(test_model):
    arr = np.full((6000, 6000), 30, np.uint8)
    _paint(arr, 3000, 3000, 14, 90)
    lazy = CountingArray(arr)
    tp = TiledPredictor(Predictor(test_model, cache=None), lazy,
                        IntensityMapping.identity_uint8(), tile_size=TILE, halo=HALO)
    res = tp.predict(points=[(3000, 3000)])
    assert res.area > 300
    assert lazy.pixels_read <= 3 * TILE * TILE  # a tile or two, never the 36 M pixels


def test_dask_array_input(test_model):
    import dask.array as da
    arr = np.full((3000, 2500), 30, np.uint8)
    _paint(arr, 2000, 400, 14, 90)
    tp = TiledPredictor(Predictor(test_model, cache=None), da.from_array(arr, chunks=500),
                        tile_size=TILE, halo=HALO)
    res = tp.predict(points=[(400, 2000)])
    y, x = np.ogrid[:3000, :2500]
    assert iou(res.full_mask(), (y - 2000) ** 2 + (x - 400) ** 2 <= 14 * 14) >= 0.8


def test_tile_geometry_is_in_the_cache_key(test_model):
    cache = EmbeddingCache(disk_dir=False)
    img = np.full((2000, 2000), 30, np.uint8)  # identical pixels in every tile
    tp = TiledPredictor(Predictor(test_model, cache=cache), img, tile_size=TILE, halo=HALO)
    a = tp.embedding(tp.grid.tiles[0])
    b = tp.embedding(tp.grid.tiles[1])
    assert a.key != b.key and "window[" in a.key
    tp2 = TiledPredictor(Predictor(test_model, cache=cache), img, tile_size=TILE, halo=HALO)
    tp2.embedding(tp.grid.tiles[0])
    assert cache.stats["memory_hits"] == 1


@pytest.mark.parametrize("shape", [(4000, 4000), (1000, 5000), (700, 600), (2049, 513)])
def test_central_regions_cover_the_image(shape):
    grid = TileGrid(shape, TILE, HALO)
    covered = np.zeros(shape, bool)
    for t in grid.tiles:
        assert 0 <= t.row0 and t.row1 <= shape[0] and 0 <= t.col0 and t.col1 <= shape[1]
        c = grid.central(t)
        covered[c.row0:c.row1, c.col0:c.col1] = True
    assert covered.all()
    # Every pixel's tile holds it in its central region.
    for y, x in [(0, 0), (shape[0] - 1, shape[1] - 1), (shape[0] // 2, shape[1] // 3)]:
        assert grid.central(grid.tile_for_point(x, y)).contains_xy(x, y)


def test_needs_tiling_and_bad_prompts(test_model):
    assert needs_tiling((4000, 100)) and not needs_tiling((2048, 2048))
    tp = TiledPredictor(Predictor(test_model, cache=None), np.zeros((3000, 3000), np.uint8),
                        tile_size=TILE, halo=HALO)
    with pytest.raises(InvalidInputError, match="outside"):
        tp.predict(points=[(3000, 10)])
    with pytest.raises(InvalidInputError, match="no prompt"):
        tp.predict()
    assert Window(0, 0, 10, 10).contains_xy(9.4, 0) and not Window(0, 0, 10, 10).contains_xy(9.6, 0)
