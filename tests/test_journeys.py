"""Journeys in the user's order: napari open with the panel docked, a model chosen, THEN
an image opened (sample menu, viewer.open, add_image), then real clicks on the canvas."""

from __future__ import annotations

import numpy as np
import pytest
from journey import (
    TIMEOUT,
    choose_test_model,
    click,
    dock_panel,
    open_sample,
    wait_until_ready_on,
)

from napari_edgesam.engine import Predictor

pytestmark = pytest.mark.gui


def _expected(model, image, points, labels):
    pred = Predictor(model, cache=None)
    pred.set_image(image)
    return pred.predict(points=points, labels=labels).mask


def _wait_preview(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)


@pytest.mark.parametrize("route", ["sample menu", "viewer.open", "add_image"])
def test_first_click_after_opening_an_image_adds_a_point_and_a_preview(
        make_napari_viewer, npe2pm, qtbot, tmp_path, route):
    import tifffile
    from skimage import data as skdata

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    coins = skdata.coins()
    if route == "sample menu":
        open_sample(viewer, "Coins (2D)")
    elif route == "viewer.open":  # File > Open and drag and drop end here
        path = tmp_path / "coins.tif"
        tifffile.imwrite(path, coins)
        viewer.open(str(path))
    else:
        viewer.add_image(coins, name="coins")
    layer = viewer.layers[[type(x).__name__ for x in viewer.layers].index("Image")]
    wait_until_ready_on(qtbot, viewer, w, layer)
    assert "Ready" in w.status, w.status

    click(qtbot, viewer, layer, 141, 163)  # a coin of the second row
    _wait_preview(qtbot, w)
    assert list(w.session.points_layer.features["prompt"]) == ["positive"]
    pts = w.session.points_layer
    r, c = np.asarray(layer.world_to_data(pts.data_to_world(pts.data[0])))
    assert abs(r - 141) < 1.5 and abs(c - 163) < 1.5
    want = _expected(w.model, coins, [(c, r)], [1])
    np.testing.assert_array_equal(w.session.preview_mask, want)
    assert want[141, 163] and want.sum() < coins.size / 2  # around the click, not all


def test_a_second_image_gets_its_own_prompts_and_the_first_keeps_them(
        make_napari_viewer, npe2pm, qtbot, tmp_path):
    from conftest import disc_image

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    img_a, truth_a = disc_image((120, 160), (50, 60), 18)
    img_b, truth_b = disc_image((120, 160), (80, 110), 14)
    a = viewer.add_image(img_a, name="a")
    s = w.session
    wait_until_ready_on(qtbot, viewer, w, a)
    click(qtbot, viewer, a, 50, 60)
    _wait_preview(qtbot, w)
    np.testing.assert_array_equal(s.preview_mask, _expected(w.model, img_a, [(60, 50)], [1]))

    b = viewer.add_image(img_b, name="b")
    qtbot.waitUntil(lambda: s.image_layer is b and s.embedding is not None and not w.busy,
                    timeout=TIMEOUT)
    assert len(s.points_layer.data) == 0 and s.preview_mask is None  # its own, empty
    click(qtbot, viewer, b, 80, 110)
    _wait_preview(qtbot, w)
    want_b = _expected(w.model, img_b, [(110, 80)], [1])
    np.testing.assert_array_equal(w.session.preview_mask, want_b)  # computed on b, not on a
    assert w.commit() == 1
    np.testing.assert_array_equal(w.session.labels_layer.data > 0, want_b)
    assert w.session.labels_layer.data.shape == img_b.shape

    # back to a: its prompt and preview are there again
    w.image_combo.setCurrentIndex(w.image_combo.findText("a"))
    qtbot.waitUntil(lambda: s.image_layer is a and not w.busy and s.preview_mask is not None,
                    timeout=TIMEOUT)
    assert len(w.session.points_layer.data) == 1
    np.testing.assert_array_equal(s.preview_mask, _expected(w.model, img_a, [(60, 50)], [1]))

    # pinned: a new image does not take the panel
    w.pin_check.setChecked(True)
    viewer.add_image(img_b, name="c")
    qtbot.wait(100)
    assert w.session.image_layer is a


def test_the_panel_says_why_clicks_do_nothing_when_another_layer_is_selected(
        make_napari_viewer, npe2pm, qtbot):
    from conftest import disc_image

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    img = viewer.add_image(disc_image((80, 80), (40, 40), 12)[0], name="img")
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    shapes = viewer.add_shapes(name="my drawing")  # the user picks another tool on purpose
    assert viewer.layers.selection.active is shapes
    assert "Clicks go to 'my drawing'" in w.status
    assert "EdgeSAM points" in w.status
    viewer.layers.selection.active = w.session.points_layer
    assert "Ready" in w.status
    assert img is w.session.image_layer


def _stack():
    """A (14, 56, 64) uint16 stack with an ellipsoid on slices ~3..11 (centre slice 7)."""
    zz, yy, xx = np.ogrid[:14, :56, :64]
    truth = ((zz - 7) / 4.6) ** 2 + ((yy - 28) / 13) ** 2 + ((xx - 30) / 15) ** 2 <= 1
    img = np.full(truth.shape, 100, np.uint16)
    img[truth] = 420
    return img, truth


def test_keys_work_with_the_mouse_over_the_canvas_after_focus_went_to_the_table(
        make_napari_viewer, npe2pm, qtbot):
    """Shift+P and Shift+W reach the panel when focus is in the propagation table (as the
    guide says to click a row), sent to whatever widget has focus, not to the canvas."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    stack, truth = _stack()
    layer = viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 7)
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    viewer.reset_view()
    viewer.window._qt_window.activateWindow()
    qtbot.wait(50)
    click(qtbot, viewer, layer, 28, 30)
    _wait_preview(qtbot, w)

    panel = w.propagation
    w.tabs.setCurrentIndex(0)
    table = panel.table
    table.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is table, timeout=TIMEOUT)
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_P, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: panel.pending and not w.busy, timeout=TIMEOUT)
    assert table.rowCount() > 3
    table.selectRow(1)
    table.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is table, timeout=TIMEOUT)
    weakest = panel.weakest_slice()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_W, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: w.session.lead == (weakest,), timeout=TIMEOUT)
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: w.session.labels_layer is not None
                    and w.session.labels_layer.data.any(), timeout=TIMEOUT)
    np.testing.assert_array_equal(w.session.labels_layer.data > 0,
                                  panel.result.mask(next(iter(panel.result.objects))))


def test_undo_and_redo_follow_the_labels_history(make_napari_viewer, npe2pm, qtbot):
    from conftest import disc_image
    from qtpy.QtCore import Qt

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    img = viewer.add_image(disc_image((80, 90), (40, 45), 14)[0], name="img")
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    viewer.reset_view()
    qtbot.wait(50)
    assert not w.undo_button.isEnabled() and not w.redo_button.isEnabled()
    click(qtbot, viewer, img, 40, 45)
    _wait_preview(qtbot, w)
    qtbot.mouseClick(w.commit_button, Qt.MouseButton.LeftButton)
    labels = w.session.labels_layer
    assert labels.data.max() == 1 and "Committed label 1" in w.status
    assert w.undo_button.isEnabled() and not w.redo_button.isEnabled()

    qtbot.mouseClick(w.undo_button, Qt.MouseButton.LeftButton)
    assert not labels.data.any()
    assert "Committed" not in w.status and "Undid" in w.status
    assert not w.undo_button.isEnabled() and w.redo_button.isEnabled()
    qtbot.mouseClick(w.redo_button, Qt.MouseButton.LeftButton)
    assert labels.data.max() == 1 and "Redid" in w.status
    assert w.undo_button.isEnabled() and not w.redo_button.isEnabled()
    labels.undo()  # napari's own undo (Ctrl+Z on the Labels layer): the buttons follow
    qtbot.wait(20)
    assert not w.undo_button.isEnabled() and w.redo_button.isEnabled()


def test_work_shows_in_the_activity_panel_not_in_the_terminal(
        make_napari_viewer, npe2pm, qtbot, capfd):
    from conftest import SlowModel, disc_image
    from napari.utils import progress

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    w.session.set_model(SlowModel(1.0))
    viewer.add_image(disc_image((64, 64), (30, 30), 10)[0], name="disc")
    qtbot.waitUntil(lambda: any("EdgeSAM: encoding" in p.desc
                                for p in progress._all_instances), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not any("EdgeSAM" in p.desc for p in progress._all_instances),
                    timeout=TIMEOUT)
    err = capfd.readouterr().err
    assert "it/s]" not in err and "EdgeSAM: encoding" not in err, err[-500:]
