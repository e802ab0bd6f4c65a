"""Prefetching in the dock widget: neighbouring slices are encoded only while the user is
idle, an in-flight prefetch is stopped when a click needs the cores, and the checkbox turns
it off. Real napari, the test-double model (not EdgeSAM); the timing goal itself is measured
by the benchmark harness, not asserted here.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from conftest import SlowModel, disc_image# noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402

TIMEOUT = 20_000


@pytest.fixture(autouse=True)
def _short_idle(monkeypatch):
    from napari_edgesam.widget import _prefetch

    monkeypatch.setattr(_prefetch, "IDLE_MS", 150)


def make_stack():
    stack = np.full((6, 64, 64), 20, np.uint8)
    for z in range(6):
        stack[z][disc_image((64, 64), (30, 30 + z), 10)[1]] = 200
    return stack


def wait_ready(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)


def test_neighbours_prefetched_when_idle(viewer, qtbot, test_model):
    viewer.add_image(make_stack())
    w = make_widget(viewer, test_model)
    viewer.dims.set_point(0, 2)
    wait_ready(qtbot, w)
    ctl = w.prefetcher
    qtbot.waitUntil(lambda: ctl.prefetcher is not None and ctl.prefetcher.stats["done"] >= 4,
                    timeout=TIMEOUT)
    assert ctl.requested[-4:] == [("slice", (3,)), ("slice", (1,)), ("slice", (4,)),
                                  ("slice", (0,))]
    viewer.dims.set_point(0, 3)
    qtbot.waitUntil(lambda: w.session.lead == (3,), timeout=TIMEOUT)
    wait_ready(qtbot, w)
    assert w.session.embedding.embedding.cached  # found in the cache: no encoder run on the way


def test_click_stops_an_inflight_prefetch_and_checkbox_off(viewer, qtbot):
    slow = SlowModel(2.0)
    slow._inner.load()
    viewer.add_image(make_stack())
    w = make_widget(viewer, slow)
    viewer.dims.set_point(0, 2)
    wait_ready(qtbot, w)
    ctl = w.prefetcher
    qtbot.waitUntil(lambda: ctl.prefetcher is not None and ctl.prefetcher.busy,
                    timeout=TIMEOUT)
    t0 = time.perf_counter()
    w.session.add_point((2, 30, 32))
    # the click asked the run in flight to terminate at once (onnxruntime's RunOptions)
    assert ctl.prefetcher._run_options is None or ctl.prefetcher._run_options.terminate
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    latency = time.perf_counter() - t0
    qtbot.waitUntil(lambda: ctl.prefetcher.stats["cancelled"] >= 1, timeout=TIMEOUT)
    assert slow.terminated >= 1
    # answered long before the 2 s prefetch run could have ended
    assert latency < 1.2, f"click answered after {latency:.2f} s"

    # off: nothing is prefetched any more, even when idle
    w.prefetch_check.setChecked(False)
    # the run in flight was told to terminate; its thread ends shortly after, not at once
    qtbot.waitUntil(lambda: not ctl.busy, timeout=2000)
    n = len(ctl.requested)
    viewer.dims.set_point(0, 4)
    qtbot.waitUntil(lambda: w.session.lead == (4,), timeout=TIMEOUT)
    wait_ready(qtbot, w)
    qtbot.wait(400)
    assert len(ctl.requested) == n and not ctl.busy
