"""*Segment all* in the panel: every object of the slice or the stack without clicks, in
the target Labels layer as ONE undo step, painting only background, with new ids; then a
click corrects. Real napari, panel docked first, image opened by the user. Test double
(not EdgeSAM)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from journey import TIMEOUT, choose_test_model, click, dock_panel, wait_until_ready_on

pytestmark = pytest.mark.gui

CENTRES = [(30, 40), (30, 120), (90, 60), (90, 150)]


def _discs(shape=(120, 200)):
    img = np.full(shape, 20, np.uint8)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for r, c in CENTRES:
        img[(yy - r) ** 2 + (xx - c) ** 2 <= 11**2] = 200
    return img


def _ids_at(data, centres):
    return [int(data[r, c]) for r, c in centres]


def test_segment_all_then_undo_then_again_over_an_existing_object(
        make_napari_viewer, npe2pm, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    tifffile.imwrite(tmp_path / "discs.tif", _discs())
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    layer = viewer.open(str(tmp_path / "discs.tif"))[0]
    wait_until_ready_on(qtbot, viewer, w, layer)
    # one object committed by hand first: Segment all keeps it and gives the rest new ids
    click(qtbot, viewer, layer, 30, 40)
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    qtbot.mouseClick(w.commit_button, Qt.MouseButton.LeftButton)
    labels = w.session.labels_layer
    mine = labels.data == 1
    assert mine[30, 40]

    w.tabs.setCurrentIndex(1)
    panel = w.segment_all
    assert not panel.stack_check.isEnabled()  # a 2D image
    panel.size_spin.setValue(22)
    stopped = []  # a prefetch in flight is stopped: the run needs the cores
    w.session.prefetcher.activity = lambda: stopped.append(True)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert panel.busy and not panel.run_button.isEnabled()
    assert stopped
    qtbot.waitUntil(lambda: not panel.busy and "Segment all:" in w.status, timeout=60_000)
    assert "Ctrl+Z undoes them all" in w.status, w.status
    ids = _ids_at(labels.data, CENTRES)
    assert ids[0] == 1 and (labels.data == 1).sum() == mine.sum()  # kept as it was
    assert len(set(ids)) == 4 and min(ids[1:]) >= 2  # new ids after the existing one
    for (r, c), i in zip(CENTRES, ids, strict=True):  # each disc is its object
        yy, xx = np.ogrid[:120, :200]
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 11**2
        got = labels.data == i
        assert (got & disc).sum() / (got | disc).sum() >= 0.8
    # one undo step takes them all back, the hand-made object stays
    qtbot.mouseClick(w.undo_button, Qt.MouseButton.LeftButton)
    np.testing.assert_array_equal(labels.data > 0, mine)


def test_segment_all_on_a_stack_links_objects_through_slices(
        make_napari_viewer, npe2pm, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    stack = np.stack([_discs()] * 4)
    stack[0] = 20  # nothing on the first slice
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    layer = viewer.open(str(tmp_path / "stack.tif"))[0]
    viewer.dims.set_point(0, 2)
    wait_until_ready_on(qtbot, viewer, w, layer)
    w.tabs.setCurrentIndex(1)
    panel = w.segment_all
    assert panel.stack_check.isEnabled()
    panel.stack_check.setChecked(True)
    panel.size_spin.setValue(22)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.busy and "Segment all:" in w.status, timeout=120_000)
    data = w.session.labels_layer.data
    assert data.shape == stack.shape and not data[0].any()
    per_slice = [_ids_at(data[z], CENTRES) for z in (1, 2, 3)]
    assert per_slice[0] == per_slice[1] == per_slice[2]  # linked: one id per 3D object
    assert len(set(per_slice[0])) == 4 and 0 not in per_slice[0]


def test_cancel_writes_nothing(make_napari_viewer, npe2pm, qtbot, tmp_path, monkeypatch):
    from qtpy.QtCore import Qt

    import napari_edgesam.workflows.automatic.prompting as prompting

    tifffile.imwrite(tmp_path / "discs.tif", _discs())
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    layer = viewer.open(str(tmp_path / "discs.tif"))[0]
    wait_until_ready_on(qtbot, viewer, w, layer)
    panel = w.segment_all
    real = prompting._check_cancel
    started = []

    def slow(cancel):  # the run waits at its first cancellation check until cancelled
        import time

        started.append(True)
        t0 = time.monotonic()
        while not cancel.cancelled and time.monotonic() - t0 < 20:
            time.sleep(0.01)
        real(cancel)

    monkeypatch.setattr(prompting, "_check_cancel", slow)
    w.tabs.setCurrentIndex(1)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(started), timeout=TIMEOUT)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    assert "cancelled: nothing was written" in w.status, w.status
    assert w.session.labels_layer is None or not w.session.labels_layer.data.any()


def test_refine_a_threshold_labels_layer_then_undo(make_napari_viewer, npe2pm, qtbot, tmp_path):
    """Another tool's labels (skimage.measure.label of a dilated threshold) refined: the
    table lists each object, Accept replaces them by the discs with their ids kept, one
    undo on that layer brings the rough labels back."""
    from qtpy.QtCore import Qt
    from scipy import ndimage
    from skimage.measure import label

    img = _discs()
    tifffile.imwrite(tmp_path / "discs.tif", img)
    rough = label(ndimage.binary_dilation(img > 100, iterations=4)).astype(np.int32)
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    layer = viewer.open(str(tmp_path / "discs.tif"))[0]
    wait_until_ready_on(qtbot, viewer, w, layer)
    theirs = viewer.add_labels(rough.copy(), name="threshold")
    w.tabs.setCurrentIndex(1)
    panel = w.segment_all
    assert panel.layer_combo.currentText() == "threshold"
    qtbot.mouseClick(panel.refine_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.table.rowCount() == 4, timeout=60_000)
    assert "4 object(s), 4 confident" in w.status, w.status
    assert panel.ticked() == [1, 2, 3, 4]
    np.testing.assert_array_equal(theirs.data, rough)  # nothing written before Accept
    panel.table.item(3, 0).setCheckState(Qt.CheckState.Unchecked)  # keep the 4th as it was
    w.session.layers_changed.emit()  # the panel refreshes (a layer added elsewhere...)
    assert panel.ticked() == [1, 2, 3]  # ...and the user's choice stays
    qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    yy, xx = np.ogrid[:120, :200]
    for (r, c) in CENTRES[:3]:
        i = rough[r, c]
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 11**2
        got = theirs.data == i
        assert (got & disc).sum() / (got | disc).sum() >= 0.85  # the disc, same id
    r, c = CENTRES[3]
    np.testing.assert_array_equal(theirs.data == rough[r, c], rough == rough[r, c])
    assert panel.table.rowCount() == 0 and "3 object(s) replaced" in w.status
    theirs.undo()
    np.testing.assert_array_equal(theirs.data, rough)
