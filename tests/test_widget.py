"""The napari dock widget, in real napari (pytest-qt, Xvfb), with the test-double model.

The test double (tests/models) is not EdgeSAM: it segments "pixels about as bright as the
clicked one near the click", which is enough to assert exact pixels. Expected masks are
computed by the engine's Predictor on the same slice, so the tests check that the widget
feeds the engine the right slice, coordinates, prompts and mapping, and writes the result
to the right place in the Labels layer.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from conftest import TEST_DECODER, TEST_ENCODER, SlowModel, disc_image, iou# noqa: E402

from napari_edgesam.engine import IntensityMapping, Predictor  # noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402

TIMEOUT = 20_000


def wait_ready(qtbot, w):
    """Wait until no worker runs and the current slice's embedding is there."""
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)


def wait_idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def expected_mask(test_model, image, points=None, labels=None, box=None, mapping=None):
    pred = Predictor(test_model, cache=None)
    pred.set_image(image, mapping)
    return pred.predict(points=points, labels=labels, box=box).mask


# --------------------------------------------------------------------------------------


def test_widget_import_does_not_load_onnxruntime():
    import subprocess
    import sys

    code = ("import sys, napari_edgesam.widget.dock; "
            "print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_2d_click_commit_undo_redo(viewer, qtbot, test_model):
    img, truth = disc_image((120, 160), (50, 70), 18)
    viewer.add_image(img, name="discs")
    w = make_widget(viewer, test_model)
    assert w.session.image_layer is viewer.layers["discs"]
    wait_ready(qtbot, w)
    assert "Ready" in w.status

    # a click through the points layer's data (world = data here), at (row 50, col 70)
    w.session.points_layer.add([50, 70])
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)
    want = expected_mask(test_model, img, points=[(70, 50)], labels=[1])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert iou(want, truth) > 0.9
    np.testing.assert_array_equal(w.session.preview_view.layer.data.astype(bool), want)

    label = w.commit()
    assert label == 1
    labels = w.session.labels_layer
    assert labels is not None and labels.data.shape == img.shape
    np.testing.assert_array_equal(labels.data, want.astype(labels.data.dtype))
    # prompts and preview are cleared after a commit
    assert len(w.session.points_layer.data) == 0
    assert w.session.preview_mask is None

    # a second object gets the next id, on the background only
    img2 = img.copy()
    disc2 = disc_image((120, 160), (60, 125), 15)[1]
    img2[disc2] = 200
    viewer.layers["discs"].data = img2
    wait_ready(qtbot, w)
    w.session.add_point((60, 125))
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)
    want2 = expected_mask(test_model, img2, points=[(125, 60)], labels=[1])
    assert w.commit() == 2
    after_two = labels.data.copy()
    np.testing.assert_array_equal(after_two == 2, want2 & ~want)
    np.testing.assert_array_equal(after_two == 1, want)

    # napari's own undo reverts exactly one commit; redo brings it back
    w.undo()
    np.testing.assert_array_equal(labels.data, want.astype(labels.data.dtype))
    labels.undo()
    assert not labels.data.any()
    labels.redo()
    labels.redo()
    np.testing.assert_array_equal(labels.data, after_two)


def test_3d_scaled_translated_commit_touches_only_its_slice(viewer, qtbot, test_model):
    stack = np.full((6, 64, 80), 20, np.uint16)
    disc = disc_image((64, 80), (30, 44), 12)[1]
    stack[3][disc] = 900
    stack[2][disc_image((64, 80), (20, 20), 8)[1]] = 900
    scale, translate = (2.0, 0.5, 0.25), (10.0, -3.0, 7.0)
    layer = viewer.add_image(stack, name="stack", scale=scale, translate=translate)
    w = make_widget(viewer, test_model)
    # napari slider to z = 3 (world coordinate 10 + 3 * 2)
    viewer.dims.set_point(0, translate[0] + 3 * scale[0])
    wait_ready(qtbot, w)
    assert "slice 3" in w.status
    assert w.session.points_layer.scale.tolist() == list(scale)

    # a click in world coordinates at data (3, 30, 44)
    world = np.array(translate) + np.array(scale) * np.array([3, 30, 44])
    np.testing.assert_allclose(layer.world_to_data(world), [3, 30, 44])
    w.session.add_point(world)
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)

    from napari_edgesam.engine import default_mapping

    mapping = default_mapping(stack)  # stack-wide percentiles ("auto" for uint16)
    want = expected_mask(test_model, stack[3], points=[(44, 30)], labels=[1], mapping=mapping)
    assert iou(want, disc) > 0.85
    np.testing.assert_array_equal(w.session.preview_mask, want)
    label = w.commit()
    assert label == 1
    labels = w.session.labels_layer
    assert labels.data.shape == stack.shape
    np.testing.assert_allclose(labels.scale, scale)
    np.testing.assert_allclose(labels.translate, translate)
    np.testing.assert_array_equal(labels.data[3], want.astype(labels.data.dtype))
    for z in (0, 1, 2, 4, 5):
        assert not labels.data[z].any(), f"slice {z} was touched"
    labels.undo()
    assert not labels.data.any()


def test_prompts_on_other_slices_are_ignored(viewer, qtbot, test_model):
    stack = np.full((4, 48, 48), 10, np.uint8)
    for z in range(4):
        stack[z][disc_image((48, 48), (24, 24), 6 + 3 * z)[1]] = 200
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model)
    viewer.dims.set_point(0, 1)
    wait_ready(qtbot, w)
    # a point on slice 1 and one on slice 2 (invisible here)
    w.session.points_layer.data = np.array([[1, 24, 24], [2, 5, 5]])
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)
    want = expected_mask(test_model, stack[1], points=[(24, 24)], labels=[1],
                         mapping=IntensityMapping.identity_uint8())
    np.testing.assert_array_equal(w.session.preview_mask, want)
    # moving to slice 2 encodes it and answers its own prompt
    viewer.dims.set_point(0, 2)
    wait_ready(qtbot, w)
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)
    want2 = expected_mask(test_model, stack[2], points=[(5, 5)], labels=[1],
                          mapping=IntensityMapping.identity_uint8())
    np.testing.assert_array_equal(w.session.preview_mask, want2)
    # one box per slice: boxes of other slices are kept
    w.session.set_box((10, 10), (40, 40))
    viewer.dims.set_point(0, 1)
    wait_ready(qtbot, w)
    w.session.set_box((12, 12), (36, 36))
    w.session.set_box((14, 14), (34, 34))  # replaces the slice's box
    assert w.session.boxes_layer.nshapes == 2
    assert sorted(int(round(v[0, 0])) for v in w.session.boxes_layer.data) == [1, 2]


def test_box_any_direction_is_normalised_and_clipped(viewer, qtbot, test_model):
    img, truth = disc_image((100, 120), (50, 60), 20)
    viewer.add_image(img, name="img")
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    # drawn from bottom-right to top-left, and past the image's right edge
    w.session.set_box((80, 140), (22, 30))
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    wait_idle(qtbot, w)
    want = expected_mask(test_model, img, box=(30, 22, 119.5, 80))
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert iou(want, truth) > 0.85
    # only one box per slice: a new one replaces it
    w.session.set_box((25, 35), (75, 85))
    assert w.session.boxes_layer.nshapes == 1
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    want = expected_mask(test_model, img, box=(35, 25, 85, 75))
    qtbot.waitUntil(lambda: w.session.preview_mask is not None
                    and np.array_equal(w.session.preview_mask, want), timeout=TIMEOUT)


def test_negative_point_and_paint_only_on_background(viewer, qtbot, test_model):
    img, truth = disc_image((100, 100), (50, 50), 25)
    viewer.add_image(img, name="img")
    existing = np.zeros(img.shape, np.int32)
    existing[40:60, 40:60] = 7
    labels = viewer.add_labels(existing.copy(), name="mine")
    w = make_widget(viewer, test_model)
    w.session.set_labels_layer(labels)
    wait_ready(qtbot, w)
    w.session.add_point((50, 35), positive=True)
    w.session.add_point((50, 62), positive=False)
    assert list(w.session.points_layer.features["prompt"]) == ["positive", "negative"]
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(35, 50), (62, 50)], labels=[1, 0])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert not want[50, 62]  # the negative click carved the mask
    assert w.session.paint_background_only
    assert w.commit() == 8  # next free id after 7
    np.testing.assert_array_equal(labels.data[existing == 7], 7)  # kept
    np.testing.assert_array_equal(labels.data == 8, want & (existing == 0))
    after8 = labels.data.copy()

    # unticked: the next commit overwrites
    w.background_only_check.setChecked(False)
    w.session.add_point((50, 35))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(35, 50)], labels=[1])
    assert w.commit() == 9
    np.testing.assert_array_equal(labels.data == 9, want)
    assert (labels.data == 7).sum() < (existing == 7).sum()  # overwritten
    labels.undo()
    np.testing.assert_array_equal(labels.data, after8)


def test_custom_model_named_by_file(viewer, qtbot):
    img, _ = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img)
    w = make_widget(viewer, None)
    assert w.model is None
    assert "No model" in w.status
    w.model_picker.load_custom_model(TEST_ENCODER, TEST_DECODER)
    wait_ready(qtbot, w)
    assert w.model.name == "custom: test_encoder.onnx"
    assert w.model_picker.model_combo.currentText() == "custom: test_encoder.onnx"
    assert "EdgeSAM" not in w.model_picker.model_combo.currentText()


def test_bad_custom_model_shows_error(viewer, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: errors.append(msg))
    img, _ = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img)
    w = make_widget(viewer, None)
    # encoder and decoder swapped
    w.model_picker.load_custom_model(TEST_DECODER, TEST_ENCODER)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.model is None
    assert errors and "swap" in errors[0]
    assert len(viewer.layers) == 4  # image + prompt layers, untouched


def test_layer_deleted_while_encoding(viewer, qtbot, test_model, monkeypatch):
    import napari.utils.notifications as notifications

    warnings_shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: warnings_shown.append(msg))
    slow = SlowModel(0.8)
    img, _ = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img, name="img")
    w = make_widget(viewer, slow)
    qtbot.waitUntil(lambda: w.session.encoder.worker is not None, timeout=TIMEOUT)
    w.session.add_point((32, 32))
    viewer.layers.remove("img")
    wait_idle(qtbot, w)
    assert w.session.image_layer is None
    assert any("removed" in m for m in warnings_shown)
    assert w.session.preview_mask is None
    assert w.session.labels_layer is None
    # prompt layers left intact
    assert len(w.session.points_layer.data) == 1


def test_event_loop_keeps_ticking_while_encoding(viewer, qtbot):
    """A 10 ms QTimer keeps firing (no gap of 50 ms or more) while a slice is encoded, until
    its embedding arrives; a click made meanwhile is answered afterwards.

    The encoder is slowed down to 1 s (it runs in a worker thread). On a machine shared
    with other jobs the OS can deschedule our process for tens of milliseconds, so up to
    three encodings (of different images) are measured and the best one must pass; all
    gaps are reported on failure.
    """
    from qtpy.QtCore import QTimer

    slow = SlowModel(1.0)
    slow._inner.load()  # sessions are created once per model, not per slice
    img, _ = disc_image((512, 512), (200, 200), 40)
    layer = viewer.add_image(img)
    w = make_widget(viewer, None)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    worst = []
    for attempt in range(3):
        encoded = []
        qtbot.wait(50)
        if attempt == 0:
            w.session.set_model(slow)  # starts encoding the current slice
        else:  # new pixels: a cache miss, encoded again
            layer.data = np.roll(img, 7 * attempt, axis=1)
        assert w.session.encoder.worker is not None
        w.session.encoder.worker.returned.connect(lambda *_: encoded.append(time.perf_counter()))
        w.session.add_point((200, 200 + 7 * attempt))  # a click while encoding: answered afterwards
        # from here on the GUI thread only waits for the worker (napari's own handling of
        # the data change and of the click above is synchronous GUI work, not encoding)
        t_start = time.perf_counter()
        qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
        t_end = encoded[0]
        assert t_end - t_start > 0.8  # the encoder really was slow
        during = np.array([t for t in ticks if t_start <= t <= t_end])
        assert len(during) > 30
        stamps = np.concatenate([[t_start], during, [t_end]])
        gaps = np.diff(stamps)
        worst.append(gaps.max())
        print(f"attempt {attempt}: longest gap {gaps.max() * 1000:.0f} ms, starting "
              f"{(stamps[gaps.argmax()] - t_start) * 1000:.0f} ms after the request "
              f"(encoding took {(t_end - t_start) * 1000:.0f} ms)")
        w.clear_prompts()
        if gaps.max() < 0.05:
            break
    timer.stop()
    assert slow.calls == len(worst)
    assert min(worst) < 0.05, f"GUI blocked: longest gaps {[round(g * 1000) for g in worst]} ms"


def test_stale_results_dropped_newest_wins(viewer, qtbot, test_model):
    img = np.full((100, 100), 20, np.uint8)
    a = disc_image((100, 100), (25, 25), 10)[1]
    b = disc_image((100, 100), (70, 70), 14)[1]
    img[a] = 200
    img[b] = 120
    viewer.add_image(img)
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    # many prompt changes in a row, without waiting
    for k in range(8):
        w.session.points_layer.data = np.array([[25 + k % 2, 25]])
    w.session.points_layer.data = np.array([[70, 70]])
    wait_idle(qtbot, w)
    want = expected_mask(test_model, img, points=[(70, 70)], labels=[1])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert iou(want, b) > 0.85


def test_commit_right_after_click_waits_for_preview(viewer, qtbot, test_model):
    img, truth = disc_image((80, 80), (40, 40), 12)
    viewer.add_image(img)
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    w.session.add_point((40, 40))
    assert w.commit() is None  # the preview is still being computed: committed on arrival
    qtbot.waitUntil(lambda: w.session.labels_layer is not None
                    and w.session.labels_layer.data.any(),
                    timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(40, 40)], labels=[1])
    np.testing.assert_array_equal(w.session.labels_layer.data == 1, want)


def test_contrast_mapping_modes(viewer, qtbot, test_model, embedding_cache):
    img = np.full((64, 64), 1000, np.uint16)
    disc = disc_image((64, 64), (32, 32), 12)[1]
    img[disc] = 3000
    layer = viewer.add_image(img, contrast_limits=(0, 4000))
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    w.mapping_combo.setCurrentIndex(w.mapping_combo.findData("contrast"))
    wait_ready(qtbot, w)
    key = w.session.embedding.embedding.key
    assert key is not None and "linear[0|4000]" in key
    misses = embedding_cache.stats["misses"]
    layer.contrast_limits = (500, 3500)
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None
                    and "linear[500|3500]" in w.session.embedding.embedding.key, timeout=TIMEOUT)
    assert embedding_cache.stats["misses"] == misses + 1
    # back to the old limits: a cache hit, no new encoder run
    layer.contrast_limits = (0, 4000)
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None
                    and "linear[0|4000]" in w.session.embedding.embedding.key, timeout=TIMEOUT)
    assert embedding_cache.stats["misses"] == misses + 1
    w.session.add_point((32, 32))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(32, 32)], labels=[1],
                         mapping=IntensityMapping((0.0,), (4000.0,)))
    np.testing.assert_array_equal(w.session.preview_mask, want)


def test_rgb_image(viewer, qtbot, test_model):
    grey, truth = disc_image((90, 110), (45, 60), 15)
    rgb = np.stack([grey, grey // 2, grey], axis=-1)
    viewer.add_image(rgb, name="rgb")
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    assert w.session.points_layer.ndim == 2
    w.session.add_point((45, 60))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, rgb, points=[(60, 45)], labels=[1])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert w.commit() == 1
    assert w.session.labels_layer.data.shape == grey.shape


def test_multichannel_channel_choice(viewer, qtbot, test_model):
    data = np.full((2, 3, 64, 64), 10, np.uint8)  # (channel, z, y, x)
    d0 = disc_image((64, 64), (20, 20), 8)[1]
    d1 = disc_image((64, 64), (44, 44), 12)[1]
    data[0, 1][d0] = 200
    data[1, 1][d1] = 200
    viewer.add_image(data, name="mc")
    w = make_widget(viewer, test_model)
    w.session.set_channel_axis(0, channel=1)
    viewer.dims.set_point(1, 1)
    wait_ready(qtbot, w)
    w.session.add_point((0, 1, 44, 44))  # the slider's channel does not matter
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, data[1, 1], points=[(44, 44)], labels=[1],
                         mapping=IntensityMapping.identity_uint8())
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert w.commit() == 1
    assert w.session.labels_layer.data.shape == (3, 64, 64)
    np.testing.assert_array_equal(w.session.labels_layer.data[1] == 1, want)
    assert not w.session.labels_layer.data[[0, 2]].any()


def test_channel_axis_in_the_middle_warns_about_the_display(viewer, qtbot, test_model,
                                                             monkeypatch):
    """(Z, C, Y, X): a Labels layer without C would be drawn along the wrong sliders, so the
    widget says so (and what to do); with C first there is nothing to say."""
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    viewer.add_image(np.zeros((3, 2, 64, 64), np.uint8), name="zcyx")
    w = make_widget(viewer, test_model, prefetch=False)
    w.session.set_channel_axis(0)
    qtbot.wait(50)
    assert not [m for m in shown if "line up" in m]
    w.session.set_channel_axis(1)
    qtbot.waitUntil(lambda: any("line up" in m for m in shown), timeout=TIMEOUT)
    msg = next(m for m in shown if "line up" in m)
    assert "channel_axis=1" in msg and "zcyx" in msg
    wait_ready(qtbot, w)


def test_mouse_clicks_through_napari_callbacks(viewer, qtbot, test_model):
    """Left click adds a positive point, right click and Ctrl+click negative ones, Shift+drag
    draws a box: through the points layer's mouse callbacks, as napari calls them."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    img, truth = disc_image((100, 100), (50, 50), 20)
    viewer.add_image(img, scale=(2, 2))
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    pts = w.session.points_layer
    assert pts.mode == "add"

    def click(world, button=1, modifiers=()):
        kw = dict(button=button, modifiers=list(modifiers), position=tuple(world),
                  pos=np.array([10.0, 10.0]), dims_displayed=[0, 1])
        mouse_press_callbacks(pts, read_only_mouse_event(type="mouse_press", **kw))
        mouse_release_callbacks(pts, read_only_mouse_event(type="mouse_release", **kw))
        qtbot.wait(5)

    click((100, 80))  # data (50, 40)
    click((100, 130), button=2)  # right click: negative at data (50, 65)
    click((60, 100), modifiers=["Control"])  # Ctrl+click: negative at data (30, 50)
    assert list(pts.features["prompt"]) == ["positive", "negative", "negative"]
    np.testing.assert_allclose(pts.data, [[50, 40], [50, 65], [30, 50]])
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(40, 50), (65, 50), (50, 30)],
                         labels=[1, 0, 0])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    qtbot.wait(10)
    assert pts.feature_defaults["prompt"][0] == "positive"

    # Shift + drag: a box, bottom-right to top-left
    w.clear_prompts()
    requests = []
    request = w.session.request_predict
    w.session.request_predict = lambda *a: (requests.append(1), request(*a))[1]
    start = dict(button=1, modifiers=["Shift"], dims_displayed=[0, 1])
    mouse_press_callbacks(pts, read_only_mouse_event(
        type="mouse_press", position=(170, 170), pos=np.array([0.0, 0.0]), **start))
    for k, p in enumerate([(150, 150), (100, 100), (40, 40)]):
        mouse_move_callbacks(pts, read_only_mouse_event(
            type="mouse_move", position=p, pos=np.array([20.0 * (k + 1), 0.0]),
            is_dragging=True, **start))
    mouse_release_callbacks(pts, read_only_mouse_event(
        type="mouse_release", position=(40, 40), pos=np.array([60.0, 0.0]), **start))
    assert len(pts.data) == 0  # no point added by the drag
    assert w.session.boxes_layer.nshapes == 1
    assert len(requests) == 1  # the decoder runs on release, not on every mouse move
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, box=(20, 20, 85, 85))
    np.testing.assert_array_equal(w.session.preview_mask, want)


def test_keys_on_the_canvas(make_napari_viewer, qtbot, test_model):
    """C commits, Escape clears, Ctrl+Z undoes: real key presses on napari's canvas."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    img, truth = disc_image((80, 80), (40, 40), 12)
    viewer.add_image(img)
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    assert viewer.layers.selection.active is w.session.points_layer
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()

    w.session.add_point((40, 40))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)
    assert len(w.session.points_layer.data) == 0 and w.session.preview_mask is None

    w.session.add_point((40, 40))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    qtbot.keyClick(canvas, Qt.Key.Key_C)
    assert w.session.labels_layer is not None and w.session.labels_layer.data.max() == 1
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not w.session.labels_layer.data.any()
    qtbot.keyClick(canvas, Qt.Key.Key_Z,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert w.session.labels_layer.data.max() == 1


def test_real_mouse_events_on_the_canvas(make_napari_viewer, qtbot, test_model):
    """Qt mouse events on napari's canvas (shown viewer under Xvfb): left click positive,
    right click negative, Shift+drag a box; the preview follows."""
    from qtpy.QtCore import QPoint, Qt

    viewer = make_napari_viewer(show=True)
    img, truth = disc_image((100, 100), (50, 50), 20)
    viewer.add_image(img, scale=(2, 2), translate=(5, -3))
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    viewer.reset_view()
    qtbot.wait(50)
    canvas = viewer.window._qt_viewer.canvas
    native = canvas.native
    dpr = native.devicePixelRatioF()

    def to_screen(row, col):
        """Image data (row, col) -> a Qt position on the canvas widget."""
        world = viewer.layers[0].data_to_world((row, col))
        x, y = canvas.view.scene.transform.map([world[1], world[0]])[:2]
        return QPoint(int(round(x / dpr)), int(round(y / dpr)))

    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=to_screen(50, 40))
    qtbot.mouseClick(native, Qt.MouseButton.RightButton, pos=to_screen(50, 64))
    pts = w.session.points_layer
    assert list(pts.features["prompt"]) == ["positive", "negative"]
    # within a screen pixel of where we clicked
    data = np.array([viewer.layers[0].world_to_data(pts.data_to_world(p)) for p in pts.data])
    np.testing.assert_allclose(data, [[50, 40], [50, 64]], atol=0.6)
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    pts_xy = [(c, r) for r, c in data]
    want = expected_mask(test_model, img, points=pts_xy, labels=[1, 0])
    np.testing.assert_array_equal(w.session.preview_mask, want)

    # Shift + drag from bottom-right to top-left: a box, no point, no panning
    w.clear_prompts()
    camera_center = tuple(viewer.camera.center)
    shift = Qt.KeyboardModifier.ShiftModifier
    qtbot.mousePress(native, Qt.MouseButton.LeftButton, shift, to_screen(80, 80))
    for rc in ((70, 70), (50, 50), (25, 25)):
        qtbot.mouseMove(native, to_screen(*rc))
    qtbot.mouseRelease(native, Qt.MouseButton.LeftButton, shift, to_screen(22, 22))
    assert len(pts.data) == 0
    assert w.session.boxes_layer.nshapes == 1
    assert tuple(viewer.camera.center) == camera_center
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    assert iou(w.session.preview_mask, truth) > 0.85


def test_rotated_image_layers_follow(viewer, qtbot, test_model):
    """Prompt, preview and new Labels layers copy the image's full transform (rotation
    included); clicks are converted through world coordinates."""
    img, truth = disc_image((80, 90), (40, 30), 12)
    layer = viewer.add_image(img, scale=(1.5, 1.5), rotate=30, translate=(4, 9))
    w = make_widget(viewer, test_model)
    wait_ready(qtbot, w)
    for lay in (w.session.points_layer, w.session.boxes_layer, w.session.preview_view.layer):
        np.testing.assert_allclose(lay.rotate, layer.rotate)
        np.testing.assert_allclose(lay.scale, layer.scale)
    w.session.add_point(layer.data_to_world((40, 30)))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    want = expected_mask(test_model, img, points=[(30, 40)], labels=[1])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert w.commit() == 1
    np.testing.assert_allclose(w.session.labels_layer.rotate, layer.rotate)
    np.testing.assert_array_equal(w.session.labels_layer.data == 1, want)
    # the image moves: the helper layers follow
    layer.translate = (0, 0)
    np.testing.assert_allclose(w.session.points_layer.translate, (0, 0))
    np.testing.assert_allclose(w.session.preview_view.layer.translate, (0, 0))


def test_stale_encoding_is_cancelled_when_the_slice_changes(viewer, qtbot):
    """Scrubbing through a stack: the encoder run of a slice left behind is terminated
    (onnxruntime's RunOptions.terminate), and the newest slice is encoded next."""
    slow = SlowModel(1.5)
    slow._inner.load()
    stack = np.full((5, 64, 64), 10, np.uint8)
    stack[3][disc_image((64, 64), (30, 30), 10)[1]] = 200
    viewer.add_image(stack)
    w = make_widget(viewer, slow)
    assert w.session.encoder.worker is not None  # slice 0
    t0 = time.perf_counter()
    for z in (1, 2, 3):
        viewer.dims.set_point(0, z)
        qtbot.wait(30)
    wait_ready(qtbot, w)
    took = time.perf_counter() - t0
    assert slow.terminated >= 1
    assert slow.calls == slow.terminated + 1  # only slice 3 ran to the end
    assert took < 2 * 1.5 + 1.0, f"{took:.1f} s"
    assert "slice 3" in w.status
    w.session.add_point((3, 30, 30))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    assert iou(w.session.preview_mask, disc_image((64, 64), (30, 30), 10)[1]) > 0.8


def test_failed_encoding_is_not_retried_in_a_loop(viewer, qtbot, test_model, monkeypatch):
    """An encoder error is reported once; the widget does not retry the same slice forever."""
    from napari_edgesam.engine import Predictor

    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise ValueError("broken encoder")

    monkeypatch.setattr(Predictor, "embed", broken)
    img, _ = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img)
    w = make_widget(viewer, test_model, prefetch=False)
    qtbot.waitUntil(lambda: not w.busy and bool(calls), timeout=TIMEOUT)
    qtbot.wait(500)
    assert len(calls) == 1 and not w.busy


def test_optimised_checkbox_runs_the_variants_that_passed(viewer, qtbot, model_dir,
                                                          monkeypatch):
    """"optimised" runs the variants made by `napari-edgesam optimize` (here decoder-fast,
    checked on this image) and says so; the same click gives the original's mask. Without
    variants it says how to make them and runs the original."""
    import napari.utils.notifications as notifications

    import onnx  # noqa: F401
    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.engine.optimize import OptimizedEdgeSamModel, optimize_model

    infos = []
    monkeypatch.setattr(notifications, "show_info", infos.append)
    model = EdgeSamModel(model_dir / "enc.onnx", model_dir / "dec.onnx", name="custom: copy")
    img, truth = disc_image((256, 256), (100, 140), 30)
    viewer.add_image(img)
    w = make_widget(viewer, model, prefetch=False)
    wait_ready(qtbot, w)
    w.optimized_check.setChecked(True)  # nothing made yet: the original, and a hint
    wait_ready(qtbot, w)
    assert w.session.predictor.model is model and "napari-edgesam optimize" in infos[-1]
    w.session.add_point((100, 140))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    original = w.session.preview_mask.copy()

    report = optimize_model(model, [img], variants=["decoder-fast"])
    assert "decoder-fast" in report.summary()
    w.optimized_check.setChecked(False)
    w.optimized_check.setChecked(True)
    wait_ready(qtbot, w)
    assert isinstance(w.session.predictor.model, OptimizedEdgeSamModel)
    assert "decoder-fast" in w.session.predictor.model.name and "decoder-fast" in infos[-1]
    assert w.model is model  # the model shown and used by batch stays the original
    w.clear_prompts()
    w.session.add_point((100, 140))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    got = w.session.preview_mask
    assert iou(got, original) >= 0.99 and iou(got, truth) >= 0.9
