"""Large images in the dock widget: clicks answered through tiles, lazy windowed reads, crop
previews, commits that touch only the mask's window, label ids without whole-layer scans on
the GUI thread. Real napari, the test-double model (not EdgeSAM).

As in tests/test_tiling.py the tiles are 400 pixels (the test double resolves objects only
from about 30 pixels in its 1024 frame); the logic is the same as with the default 1024.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from scipy import ndimage as ndi  # noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402


TIMEOUT = 30_000
TILE, HALO = 400, 50
SIZE = 2500  # above the 2048-pixel tiling threshold


class RecordingArray:
    """An array-like that records every read: (thread name, pixels, shape of the read)."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype, self.ndim, self.size = arr.shape, arr.dtype, arr.ndim, arr.size
        self.reads = []
        self._lock = threading.Lock()

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        out = np.asarray(self.arr[idx])
        with self._lock:
            self.reads.append((threading.current_thread() is threading.main_thread(),
                               out.size, out.shape))
        return out

    def __array__(self, dtype=None, copy=None):
        return self[...] if dtype is None else self[...].astype(dtype)

    def worker_reads(self):
        return [(n, s) for main, n, s in self.reads if not main]


def scene(size=SIZE):
    """Discs of 12-15 px radius; one centred on a tile seam."""
    img = np.full((size, size), 30, np.float32)
    yy, xx = np.ogrid[:size, :size]
    discs = [(1210, 1290, 13), (620, 700, 12), (1800, 350, 15)]
    for cy, cx, r in discs:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 90
    return ndi.gaussian_filter(img, 0.7).round().astype(np.uint8), discs


def wait_ready(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)


def expected(test_model, image, **prompt):
    from napari_edgesam.engine import IntensityMapping, Predictor
    from napari_edgesam.engine.tiling import TiledPredictor

    tp = TiledPredictor(Predictor(test_model, cache=None), image,
                        IntensityMapping.identity_uint8(), tile_size=TILE, halo=HALO)
    return tp.predict(**prompt)


def test_big_image_clicks_through_tiles_reading_windows_only(viewer, qtbot, test_model,
                                                             monkeypatch):
    img, discs = scene()
    data = RecordingArray(img)
    layer = viewer.add_image(data, name="big")
    existing = np.zeros(img.shape, np.uint16)
    existing[:3, :3] = 7
    labels = viewer.add_labels(existing.copy(), name="big labels")
    w = make_widget(viewer, test_model, prefetch=False)
    assert w.session.image_layer is layer and w.session.use_tiles  # on by default above 2048 pixels
    w.session.set_tile_geometry(TILE, HALO)
    w.session.set_labels_layer(labels)  # 6 M pixels: its largest id is found in a worker
    wait_ready(qtbot, w)
    tp = w.session.tiled_predictor
    assert tp is not None and tp.encoded == []  # nothing encoded before a prompt
    data.reads.clear()

    # a click: only the tile under it is read and encoded
    cy, cx, r = discs[0]
    w.session.add_point((cy, cx))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected(test_model, img, points=[(cx, cy)])
    np.testing.assert_array_equal(w.session.preview_mask, want.full_mask())
    assert len(tp.encoded) == 1 and tp.encoded[0] == tp.grid.tile_for_point(cx, cy)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    inter = np.count_nonzero(want.full_mask() & truth)
    assert inter / np.count_nonzero(want.full_mask() | truth) >= 0.8
    # the preview layer holds the mask's crop only, placed at its offset
    r0, c0, r1, c1 = want.bbox()
    assert w.session.preview_view.layer.data.shape == (r1 - r0, c1 - c0)
    np.testing.assert_allclose(w.session.preview_view.layer.translate, (r0, c0))
    assert "tile" in w.status

    # commit: the next free id after 7 (scanned in the background), only the window written
    written = []
    orig = labels.data_setitem
    monkeypatch.setattr(labels, "data_setitem",
                        lambda idx, value, **kw: (written.append(idx), orig(idx, value, **kw)))
    qtbot.waitUntil(lambda: not w.session.target.label_ids.scanning(labels), timeout=TIMEOUT)
    assert w.commit() == 8
    np.testing.assert_array_equal(labels.data == 8, want.full_mask())
    (rows, cols), = written
    assert rows.min() >= r0 and rows.max() < r1 and cols.min() >= c0 and cols.max() < c1

    # napari's brush paints a new label 40: the tracked maximum follows the paint event
    with labels.block_history():
        orig((np.array([5, 5]), np.array([5, 6])), 40)
    cy, cx, r = discs[1]
    w.session.add_point((cy, cx))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want2 = expected(test_model, img, points=[(cx, cy)])
    assert w.commit() == 41
    np.testing.assert_array_equal(labels.data == 41, want2.full_mask() & (existing == 0))
    labels.undo()
    assert not (labels.data == 41).any()

    # our code never read the image whole: every worker read is one window at most
    reads = data.worker_reads()
    assert reads, "the tiles are read in worker threads"
    assert all(n <= TILE * TILE for n, _ in reads), reads
    assert sum(n for n, _ in reads) <= 4 * TILE * TILE


def test_tiles_on_request_box_across_tiles_and_back(viewer, qtbot, test_model):
    img, _ = scene(900)
    yy, xx = np.ogrid[:900, :900]
    img[(yy - 400) ** 2 + (xx - 395) ** 2 <= 30 ** 2] = 90  # across the seam near 400
    viewer.add_image(img, name="small")
    w = make_widget(viewer, test_model, prefetch=False)
    wait_ready(qtbot, w)
    assert not w.session.use_tiles and w.session.tiled_predictor is None  # whole slices below 2048
    w.session.set_tile_geometry(TILE, HALO)
    w.tiles_check.setChecked(True)
    wait_ready(qtbot, w)
    tp = w.session.tiled_predictor
    assert tp is not None
    box = (355, 360, 435, 440)  # x0, y0, x1, y1: crosses the tiles' border
    w.session.set_box((box[1], box[0]), (box[3], box[2]))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected(test_model, img, box=box)
    np.testing.assert_array_equal(w.session.preview_mask, want.full_mask())
    assert w.commit() == 1
    np.testing.assert_array_equal(w.session.labels_layer.data == 1, want.full_mask())

    w.tiles_check.setChecked(False)  # back to the whole-slice embedding
    wait_ready(qtbot, w)
    assert w.session.tiled_predictor is None and w.session.embedding.embedding.features.shape \
        == (1, 256, 64, 64)
    assert w.session.preview_view.layer.data.shape == (900, 900)


def test_image_over_the_disk_cache_bound_is_a_clear_notification(viewer, qtbot, test_model,
                                                                  tmp_path, monkeypatch):
    """An image whose tiles cannot all be cached is refused once, with the size needed and
    the setting to raise, in napari's notifications; the widget stays usable."""
    import napari.utils.notifications as notifications

    from napari_edgesam.engine.cache import EmbeddingCache, set_default_cache

    errors = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    set_default_cache(EmbeddingCache(disk_dir=tmp_path / "emb", disk_bytes=4 * 2**20))
    img, _ = scene()
    w = make_widget(viewer, test_model, prefetch=False)
    w.session.set_tile_geometry(TILE, HALO)  # 64 tiles of 2 MiB: over the 4 MiB bound
    w.session.set_image_layer(viewer.add_image(img, name="big"))
    qtbot.waitUntil(lambda: bool(errors) and not w.busy, timeout=TIMEOUT)
    assert len(errors) == 1, errors
    assert "64 tiles" in errors[0] and "cache_disk_bytes" in errors[0], errors[0]
    assert "cache_disk_bytes" in w.status and w.session.tiled_predictor is None
    # a small image still works with the same cache
    w.session.set_image_layer(viewer.add_image(img[:600, :600].copy(), name="small"))
    wait_ready(qtbot, w)
    assert len(errors) == 1
