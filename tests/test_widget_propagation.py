"""The propagation tab of the dock widget, in real napari, with the test-double model.

The test double (tests/models) is not EdgeSAM. Expected results come from the engine's
propagation workflow run directly on the same stack, with the same seed mask, mapping and
settings: the tests check that the widget feeds the workflow the right stack, slice, seed
and limits, shows the result before writing it, and writes exactly that result, as one undo
step, into the right slices of the Labels layer.
"""

from __future__ import annotations


import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from conftest import SlowModel  # noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402


TIMEOUT = 30_000
SHAPE = (14, 56, 64)
#: The object: an ellipsoid centred on slice 7 that ends inside the stack (slices ~3..11).
CENTRE, AXES = (7, 28, 30), (4.6, 13, 15)


def make_stack(shape=SHAPE, centre=CENTRE, axes=AXES, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    (cz, cy, cx), (c, ry, rx) = centre, axes
    truth = ((zz - cz) / c) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.full(shape, 100.0)
    img[truth] = 420
    img += rng.normal(0, 6, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), truth


def wait_ready(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)


def wait_idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def expected(test_model, stack, seed_z, seed_mask, *, z_range=None, settings=None):
    from napari_edgesam.engine import Predictor
    from napari_edgesam.workflows.propagation import SliceAnnotation, propagate

    return propagate(Predictor(test_model, cache=None), stack,
                     {1: SliceAnnotation(seed_z, mask=seed_mask)}, z_range=z_range,
                     settings=settings)


def propagate_slowly(viewer, qtbot):
    """The panel on :func:`make_stack` with a slow encoder (0.25 s a slice), one click on
    slice 7, and a propagation started; returns (widget, propagation panel)."""
    slow = SlowModel(0.25)
    slow.load()
    stack, _ = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, slow, prefetch=False)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (7, 28, 30))
    w.propagation.propagate()
    return w, w.propagation


def click_and_wait(qtbot, w, position):
    w.session.add_point(position)
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    return w.session.preview_mask.copy()


# --------------------------------------------------------------------------------------


def test_propagate_preview_then_commit_as_one_undo_step(viewer, qtbot, test_model):
    stack, truth = make_stack()
    layer = viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    assert panel.stack_axis == 0 and panel.z_range == (0, SHAPE[0] - 1)
    # the thresholds start at the workflow's own defaults
    from napari_edgesam.workflows.propagation import PropagationSettings

    d = PropagationSettings()
    assert (panel.min_score, panel.min_overlap, panel.max_growth) == pytest.approx(
        (d.min_score, d.min_overlap, d.max_growth))

    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    seed = click_and_wait(qtbot, w, (7, 28, 30))
    assert panel.propagate() is not None
    assert w.busy
    wait_idle(qtbot, w)
    assert panel.pending and w.session.labels_layer is None  # nothing written before the commit

    want = expected(test_model, stack, 7, seed)
    mask3d = want.mask(1)
    zs = np.flatnonzero(mask3d.any(axis=(1, 2)))
    assert zs[0] > 0 and zs[-1] < SHAPE[0] - 1  # the object ends inside the stack
    assert abs(int(zs[0]) - 3) <= 1 and abs(int(zs[-1]) - 11) <= 1
    # the per-slice read-out: same records as the workflow's
    assert [(r.z, r.accepted, r.reason) for r in panel.records] == [
        (r.z, r.accepted, r.reason) for r in
        (want.objects[1].records[z] for z in sorted(want.objects[1].records))]
    assert panel.table.rowCount() == len(panel.records)
    assert {panel.table.item(i, 1).text() for i in range(panel.table.rowCount())} >= {
        "annotated", "kept", "stopped"}

    # the preview layer shows the pending result (value 2) on the slice you look at
    viewer.dims.set_point(0, 5)
    qtbot.waitUntil(lambda: w.session.lead == (5,), timeout=TIMEOUT)
    np.testing.assert_array_equal(w.session.preview_view.layer.data == 2, mask3d[5])
    # clicking a table row jumps to that slice
    row = [r.z for r in panel.records].index(int(zs[-1]))
    panel.table.cellClicked.emit(row, 0)
    assert layer.world_to_data(viewer.dims.point)[0] == pytest.approx(zs[-1])

    label = panel.commit()
    assert label == 1
    labels = w.session.labels_layer
    np.testing.assert_array_equal(labels.data == 1, mask3d)
    assert set(np.unique(labels.data)) == {0, 1}
    assert not panel.pending
    assert w.session.preview_view.layer.data.max() <= 1  # the overlay is gone after the commit
    # ONE undo step for the whole run
    labels.undo()
    assert not labels.data.any()
    labels.redo()
    np.testing.assert_array_equal(labels.data == 1, mask3d)


def test_label_source_z_limits_weakest_slice_and_thresholds(viewer, qtbot, test_model):
    from napari_edgesam.workflows.propagation import PropagationSettings

    stack, truth = make_stack()
    layer = viewer.add_image(stack, name="stack")
    existing = np.zeros(SHAPE, np.uint16)
    existing[7][truth[7]] = 5          # the object, committed on slice 7 as label 5
    existing[2, :4, :4] = 9            # another object that must stay untouched
    labels = viewer.add_labels(existing.copy(), name="mine")
    w = make_widget(viewer, test_model, prefetch=False)
    w.session.set_labels_layer(labels)
    panel = w.propagation
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    panel.source = "label"
    panel.label = 5
    panel.set_z_range(5, 9)
    panel.min_score = 0.6
    assert panel.propagate() is not None
    wait_idle(qtbot, w)
    settings = PropagationSettings(min_score=0.6)
    want = expected(test_model, stack, 7, truth[7], z_range=(5, 9), settings=settings)
    assert panel.result.z_range == (5, 9)
    assert panel.commit() == 5
    got = labels.data
    np.testing.assert_array_equal(got == 5, want.mask(1) | (existing == 5))
    assert not (got[:5] == 5).any() and not (got[10:] == 5).any()  # the z-limits
    assert (got == 9).sum() == 16
    ends = {e.reason for e in panel.result.objects[5].ends}
    assert ends <= {"z-limit", "low score", "vanished", "overlap collapsed", "area jump"}

    # the weakest kept slice is shown
    kept = [r for r in panel.records if r.accepted and r.source == "propagated"]
    weakest = min(kept, key=lambda r: (r.score, r.z)).z
    viewer.dims.set_point(0, 7)
    assert w.jump_to_weakest_slice() == weakest
    assert layer.world_to_data(viewer.dims.point)[0] == pytest.approx(weakest)
    labels.undo()
    np.testing.assert_array_equal(labels.data, existing)


def test_cancel_mid_run_leaves_a_consistent_undoable_state(viewer, qtbot, test_model):
    slow = SlowModel(0.25)
    slow.load()
    stack, truth = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, slow, prefetch=False)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    seed = click_and_wait(qtbot, w, (7, 28, 30))
    panel = w.propagation
    panel.propagate()
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=TIMEOUT)
    panel.cancel()
    wait_idle(qtbot, w)
    res = panel.result
    assert res.cancelled and panel.pending
    assert any(e.reason == "cancelled" for e in res.objects[1].ends)
    assert w.session.labels_layer is None  # cancelling writes nothing
    # the partial result is complete slices only, each equal to the full run's slice
    full = expected(test_model, stack, 7, seed).mask(1)
    part = res.mask(1)
    done = np.flatnonzero(part.any(axis=(1, 2)))
    assert 7 in done and len(done) < np.count_nonzero(full.any(axis=(1, 2)))
    for z in done:
        np.testing.assert_array_equal(part[z], full[z])
    assert panel.commit() == 1
    labels = w.session.labels_layer
    np.testing.assert_array_equal(labels.data == 1, part)
    labels.undo()
    assert not labels.data.any()


def test_repropagation_after_correcting_a_committed_slice(viewer, qtbot, test_model):
    stack, truth = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (7, 28, 30))
    panel.propagate()
    wait_idle(qtbot, w)
    assert panel.commit() == 1
    labels = w.session.labels_layer
    before = labels.data.copy()
    first = panel.result
    zs = np.flatnonzero(before.any(axis=(1, 2)))
    cut = int(zs[-1]) - 2
    # the user says "the object ends here": erases it on slice `cut` with napari's brush
    idx = np.nonzero(labels.data[cut] == 1)
    with labels.block_history():
        labels.data_setitem((np.full(idx[0].shape, cut), *idx), 0)
    viewer.dims.set_point(0, cut)
    qtbot.waitUntil(lambda: w.session.lead == (cut,), timeout=TIMEOUT)
    wait_ready(qtbot, w)
    assert panel.repropagate() is not None
    wait_idle(qtbot, w)
    assert panel.pending
    # what the workflow's own re-propagation gives
    from napari_edgesam.engine import Predictor
    from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation

    prop = Propagator(Predictor(test_model, cache=None), stack)
    want = prop.repropagate(first, 1, SliceAnnotation(cut, mask=np.zeros(SHAPE[1:], bool)))
    np.testing.assert_array_equal(panel.result.mask(1), want.mask(1))
    assert not want.mask(1)[cut:].any()
    assert panel.commit() == 1
    np.testing.assert_array_equal(labels.data == 1, want.mask(1))
    labels.undo()  # the re-propagation is one step
    after_brush = before.copy()
    after_brush[cut][before[cut] == 1] = 0
    np.testing.assert_array_equal(labels.data, after_brush)


def test_movie_along_time_in_a_4d_image(viewer, qtbot, test_model):
    """(T, Z, Y, X): the stack runs along the chosen axis; other axes stay where they are
    and only their slices are written."""
    stack, truth = make_stack(shape=(10, 48, 48), centre=(5, 24, 24), axes=(3.5, 11, 11))
    data = np.stack([np.full_like(stack, 100), stack])  # (2, 10, 48, 48): t=1 holds it
    layer = viewer.add_image(data, name="movie")
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    assert panel.stack_axis == 0  # the first leading axis by default
    panel.stack_axis = 1
    assert panel.z_range == (0, 9)
    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, 5)
    qtbot.waitUntil(lambda: w.session.lead == (1, 5), timeout=TIMEOUT)
    wait_ready(qtbot, w)
    seed = click_and_wait(qtbot, w, (1, 5, 24, 24))
    panel.propagate()
    wait_idle(qtbot, w)
    want = expected(test_model, stack, 5, seed).mask(1)
    # the overlay is shown only for t=1
    viewer.dims.set_point(1, 4)
    qtbot.waitUntil(lambda: w.session.lead == (1, 4), timeout=TIMEOUT)
    np.testing.assert_array_equal(w.session.preview_view.layer.data == 2, want[4])
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: w.session.lead == (0, 4), timeout=TIMEOUT)
    assert not (w.session.preview_view.layer.data == 2).any()
    assert panel.commit() == 1
    got = w.session.labels_layer.data
    assert got.shape == data.shape
    assert not got[0].any()
    np.testing.assert_array_equal(got[1] == 1, want)
    assert layer.world_to_data(viewer.dims.point)[0] == 0


def test_image_layer_deleted_during_a_run(viewer, qtbot, test_model, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(msg))
    w, panel = propagate_slowly(viewer, qtbot)
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=TIMEOUT)
    viewer.layers.remove("stack")
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: bool(shown), timeout=TIMEOUT)
    assert any("removed during propagation" in m for m in shown)
    assert not panel.pending and w.session.labels_layer is None
    assert panel.commit() is None


def test_labels_layer_deleted_during_a_run(viewer, qtbot, test_model, monkeypatch):
    """The source label's layer goes away mid-run: a notification; the result is committed
    as a new object into a new Labels layer."""
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(msg))
    stack, truth = make_stack()
    viewer.add_image(stack, name="stack")
    existing = np.zeros(SHAPE, np.uint8)
    existing[7][truth[7]] = 3
    labels = viewer.add_labels(existing, name="mine")
    w = make_widget(viewer, test_model, prefetch=False)
    w.session.set_labels_layer(labels)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    panel = w.propagation
    panel.source = "label"
    panel.label = 3
    assert panel.propagate() is not None
    viewer.layers.remove("mine")  # before the worker has delivered anything
    wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: bool(shown), timeout=TIMEOUT)
    assert any("'mine' was removed during propagation" in m for m in shown)
    assert panel.pending
    want = expected(test_model, stack, 7, truth[7]).mask(1)
    assert panel.commit() == 1
    target = w.session.labels_layer
    assert target is not labels and target.name == "stack EdgeSAM labels"
    np.testing.assert_array_equal(w.session.labels_layer.data == 1, want)


def test_propagation_keys_on_the_canvas(make_napari_viewer, qtbot, test_model):
    """Shift+P propagates, Shift+C commits, Shift+W jumps: real key presses."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    stack, _ = make_stack()
    layer = viewer.add_image(stack)
    w = make_widget(viewer, test_model, prefetch=False)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (7, 28, 30))
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    shift = Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_P, shift)
    assert w.propagation.busy or w.propagation.pending
    wait_idle(qtbot, w)
    qtbot.keyClick(canvas, Qt.Key.Key_W, shift)
    z = w.propagation.weakest_slice()
    assert z is not None and layer.world_to_data(viewer.dims.point)[0] == pytest.approx(z)
    qtbot.keyClick(canvas, Qt.Key.Key_C, shift)
    assert w.session.labels_layer is not None and w.session.labels_layer.data.max() == 1
    assert w.session.labels_layer.data.any(axis=(1, 2)).sum() > 3


# -- the progress bar, the activity panel and the tab's messages -----------------------------


def test_after_a_cancel_the_bar_and_the_status_count_the_same_slices(viewer, qtbot, test_model):
    """The bar once said "5 / 5" while the status said six slices: both now count the
    slices the run decided (the annotated slice included), the number of table rows."""
    w, panel = propagate_slowly(viewer, qtbot)
    qtbot.waitUntil(lambda: panel.progress.value() >= 3, timeout=TIMEOUT)
    panel.cancel()
    wait_idle(qtbot, w)
    res = panel.result
    assert res.cancelled and panel.pending
    n = len(panel.records)
    assert n == panel.table.rowCount() and 3 <= n < SHAPE[0]
    bar = panel.progress
    assert bar.value() == bar.maximum() == n
    assert bar.text() == f"cancelled after {n} slices"
    assert f"cancelled after {n} slices" in w.status
    kept = len(res.objects[1].slices)
    assert f"({kept} with the object)" in w.status


def test_discard_and_a_model_change_reset_the_bar(viewer, qtbot, test_model):
    stack, _ = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    bar = panel.progress
    assert bar.isHidden()  # no run yet
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (7, 28, 30))
    panel.propagate()
    wait_idle(qtbot, w)
    assert not bar.isHidden() and bar.value() > 0
    panel.discard()
    assert bar.isHidden() and bar.value() == 0 and bar.text() == ""

    click_and_wait(qtbot, w, (7, 28, 30))
    panel.propagate()
    wait_idle(qtbot, w)
    n = len(panel.records)
    assert not bar.isHidden() and bar.value() == bar.maximum() == n
    assert bar.text() == f"{n} slices done" and f"done, {n} slices" in w.status
    w.session.set_model(test_model)  # the session's model_changed
    assert bar.isHidden() and bar.value() == 0
    assert panel.pending  # the result itself is kept until committed or discarded
    wait_idle(qtbot, w)


def test_shift_p_with_nothing_to_propagate_says_so_in_the_tab(
        make_napari_viewer, qtbot, test_model, monkeypatch):
    """Not only a notification: the tab and the dock's status line say why nothing runs."""
    from qtpy.QtCore import Qt

    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: shown.append(msg))
    viewer = make_napari_viewer(show=True)
    stack, _ = make_stack()
    viewer.add_image(stack)
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_P, Qt.KeyboardModifier.ShiftModifier)
    assert not panel.busy and not panel.pending
    why = "click on an object first"
    assert any(why in m for m in shown)  # the notification, as before
    assert why in w.status
    assert panel.message.startswith("Nothing to propagate: click on an object first")
    assert panel.message_label.text() == panel.message
    assert panel.message_label.isVisibleTo(panel)
    # a run that starts clears the message
    click_and_wait(qtbot, w, (7, 28, 30))
    qtbot.keyClick(canvas, Qt.Key.Key_P, Qt.KeyboardModifier.ShiftModifier)
    assert panel.message_label.text() == ""
    wait_idle(qtbot, w)
    assert panel.pending


def test_the_run_advances_napari_activity_panel_by_its_real_total_and_prints_nothing(
        viewer, qtbot, test_model, monkeypatch, capfd):
    """The run's napari progress is created with the run's slice count and advanced once per
    decided slice, on the GUI thread; nothing (no tqdm bar) reaches the terminal."""
    import threading

    import napari.utils
    from napari.utils import progress as napari_progress

    from napari_edgesam.engine import Predictor
    from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation

    bars = []

    class Recording(napari_progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.initial_total = self.total
            self.steps_on_gui_thread: list = []
            self.closed = False
            bars.append(self)

        def increment_with_overflow(self):
            self.steps_on_gui_thread.append(threading.current_thread() is threading.main_thread())
            super().increment_with_overflow()

        def close(self):
            self.closed = True
            super().close()

    monkeypatch.setattr(napari.utils, "progress", Recording)
    stack, _ = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model, prefetch=False)
    panel = w.propagation
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    seed = click_and_wait(qtbot, w, (7, 28, 30))
    capfd.readouterr()  # only the run's own output from here
    panel.propagate()
    wait_idle(qtbot, w)
    runs = [b for b in bars if "through the stack" in b.desc]
    assert len(runs) == 1
    bar = runs[0]
    # the workflow's bound for this seed, plus the seed's slice (decided without the model):
    # here every slice of the stack
    bound = Propagator(Predictor(test_model, cache=None), stack).start(
        {1: SliceAnnotation(7, mask=seed)}).total
    assert bar.initial_total == bound + 1 == SHAPE[0]
    n = len(panel.records)
    assert len(bar.steps_on_gui_thread) == n == panel.progress.value() and n < SHAPE[0]
    assert all(bar.steps_on_gui_thread)
    assert bar.n == n and bar.closed
    err = capfd.readouterr().err
    assert "it/s]" not in err and "s/it]" not in err and "through the stack" not in err, \
        err[-500:]


def test_repropagation_after_an_undo_paints_the_whole_object(viewer, qtbot, test_model):
    """Commit, Ctrl+Z (napari's undo), correct one slice, re-propagate, commit: every slice
    of the result is in the Labels layer, not only the slices that differ from the undone
    result."""
    stack, truth = make_stack()
    viewer.add_image(stack, name="stack")
    w = make_widget(viewer, test_model, prefetch=False)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (7, 28, 30))
    panel = w.propagation
    panel.propagate()
    wait_idle(qtbot, w)
    label = panel.commit()
    labels = w.session.labels_layer
    assert label == 1 and labels.data.any()
    labels.undo()
    assert not labels.data.any()
    viewer.dims.set_point(0, 8)
    wait_ready(qtbot, w)
    click_and_wait(qtbot, w, (8, 28, 30))  # the correction on slice 8
    assert panel.repropagate() is not None
    wait_idle(qtbot, w)
    assert panel.commit() == 1
    result = panel.result
    want = result.mask(next(iter(result.objects)))
    np.testing.assert_array_equal(labels.data == 1, want)
    assert len({z for z in range(want.shape[0]) if want[z].any()}) > 3


def test_a_commit_pending_while_encoding_is_not_made_for_later_prompts(viewer, qtbot):
    """C while the slice is still encoding commits the answer to THOSE prompts; a click made
    before that answer arrives cancels the pending commit (no object of mixed prompts)."""
    from conftest import SlowModel

    stack, _ = make_stack()
    viewer.add_image(stack, name="stack")
    slow = SlowModel(1.0)
    w = make_widget(viewer, slow, prefetch=False)
    viewer.dims.set_point(0, 7)
    qtbot.waitUntil(lambda: w.session.lead == (7,) and w.session.encoder.busy,
                    timeout=TIMEOUT)
    w.session.add_point((7, 28, 30))
    assert w.commit() is None and "pending" in w.status
    w.session.add_point((7, 5, 5))  # another object, before the first answer arrives
    wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: w.session.preview_mask is not None, timeout=TIMEOUT)
    assert w.session.labels_layer is None or not w.session.labels_layer.data.any()
    assert "Commit not made" in w.status
    # without a later click, C while encoding commits when the answer comes
    w.session.clear_prompts()
    viewer.dims.set_point(0, 6)
    qtbot.waitUntil(lambda: w.session.lead == (6,) and w.session.encoder.busy,
                    timeout=TIMEOUT)
    w.session.add_point((6, 28, 30))
    assert w.commit() is None
    qtbot.waitUntil(lambda: w.session.labels_layer is not None
                    and w.session.labels_layer.data.any(), timeout=TIMEOUT)
    assert w.session.labels_layer.data[6].any() and not w.session.labels_layer.data[7].any()


def test_a_slice_whose_encoding_failed_is_tried_again_when_the_user_comes_back(
        viewer, qtbot, test_model, monkeypatch):
    """A transient failure (a network read, memory) is not remembered forever: moving away
    and back to the slice encodes it again."""
    import napari.utils.notifications as notifications

    errors = []
    monkeypatch.setattr(notifications, "show_error", errors.append)

    class FailsOnce:
        def __init__(self, model):
            self._model, self.calls = model, 0

        def __getattr__(self, name):
            return getattr(self._model, name)

        def encode(self, *a, **k):
            self.calls += 1
            if self.calls == 1:
                raise MemoryError("a transient failure")
            return self._model.encode(*a, **k)

    stack, _ = make_stack()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 7)
    model = FailsOnce(test_model)
    w = make_widget(viewer, model, prefetch=False)
    qtbot.waitUntil(lambda: bool(errors) and not w.busy, timeout=TIMEOUT)
    assert w.session.embedding is None and "transient" in w.status
    viewer.dims.set_point(0, 8)
    wait_ready(qtbot, w)
    viewer.dims.set_point(0, 7)
    wait_ready(qtbot, w)  # encoded this time
    assert w.session.lead == (7,) and model.calls == 3
