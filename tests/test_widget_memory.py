"""Bounded memory in the GUI: the dock widget keeps no finished worker, no embedding beyond
the memory cache's bound plus the slice in use, and nothing of a removed image layer.

Live objects are counted (``gc``), not the cache's own byte counter.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from conftest import disc_image

from napari_edgesam.engine.predictor import Embedding

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TIMEOUT = 20_000
#: Four embeddings of 4 MiB fit the memory cache used here.
CACHE_ENTRIES = 4


def _live(cls) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def _live_workers() -> int:
    from superqt.utils import WorkerBase

    return _live(WorkerBase)


def test_one_click_on_each_of_many_slices_keeps_memory_bounded(viewer, qtbot, test_model):
    from napari_edgesam.engine.cache import EmbeddingCache, set_default_cache
    from widget_support import make_widget

    emb_bytes = 256 * 64 * 64 * 4
    set_default_cache(EmbeddingCache(memory_bytes=CACHE_ENTRIES * emb_bytes + 1024,
                                     disk_dir=False))
    n = 40
    stack = np.full((n, 48, 48), 20, np.uint8)
    disc = disc_image((48, 48), (24, 24), 9)[1]
    stack[:, disc] = 200
    w = make_widget(viewer, test_model, prefetch=False)
    layer = viewer.add_image(stack, name="stack")
    s = w.session
    qtbot.waitUntil(lambda: s.image_layer is not None and s.image_layer.name == "stack"
                    and not w.busy and s.embedding is not None, timeout=TIMEOUT)
    workers_before = _live_workers()
    for z in range(n):
        viewer.dims.set_point(0, z)
        qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)
        w.session.add_point((z, 24, 24))
        qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    qtbot.wait(50)
    # every finished worker (with its arguments and result) is gone
    assert _live_workers() <= workers_before + 1
    # the cache's bound plus the slice in use (and one in flight)
    assert _live(Embedding) <= CACHE_ENTRIES + 2

    # a removed image layer is collectable: nothing of the widget keeps it
    ref = weakref.ref(layer)
    viewer.layers.remove(layer)
    del layer
    qtbot.wait(50)
    gc.collect()
    assert ref() is None


def test_closing_the_viewer_stops_running_work(make_napari_viewer, qtbot):
    """viewer.close() (no closeEvent reaches a docked widget) terminates the encoder run
    in flight instead of letting it finish in the background."""
    import time

    from conftest import SlowModel
    from widget_support import make_widget

    viewer = make_napari_viewer()
    model = SlowModel(8.0)
    w = make_widget(viewer, model, prefetch=False)
    viewer.add_image(disc_image((64, 64), (30, 30), 10)[0], name="disc")
    qtbot.waitUntil(lambda: model.calls >= 1 and w.busy, timeout=TIMEOUT)
    t0 = time.perf_counter()
    viewer.close()
    qtbot.waitUntil(lambda: model.terminated >= 1, timeout=3000)
    assert time.perf_counter() - t0 < 3.0
