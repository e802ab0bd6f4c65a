"""Journey: segment everything, then correct (issue 18). napari open, the panel docked, the
test-double model chosen (NOT EdgeSAM), a folder opened in the Folder tab, Segment all in
the All tab; then, with real clicks and keys on the canvas: a missed object added, one
object re-segmented (its id kept), one deleted, two merged, one split; each checked at
pixels, undone with Ctrl+Z and redone; Next and Previous bring the corrected labels back
from disk."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from journey import TIMEOUT, canvas_pos, click, open_folder, wait_until_shown

pytestmark = pytest.mark.gui

SHAPE = (120, 240)
#: name -> (centre, radius, brightness). Segment all finds A-F (D and E touch, each its
#: own object; E is dimmer, so that a click on it previews E alone) and misses G (small)
#: and H (dim).
DISCS = {"A": ((30, 40), 11, 200), "B": ((30, 100), 11, 200), "C": ((30, 160), 11, 200),
         "D": ((90, 40), 11, 200), "E": ((90, 62), 11, 130), "F": ((90, 130), 11, 200),
         "G": ((90, 200), 4, 200), "H": ((30, 215), 8, 90)}


def _image():
    img = np.full(SHAPE, 20, np.uint8)
    yy, xx = np.ogrid[:SHAPE[0], :SHAPE[1]]
    for (r, c), rad, value in DISCS.values():
        img[(yy - r) ** 2 + (xx - c) ** 2 <= rad**2] = value
    return img


def test_segment_all_then_correct_by_clicks_and_keys(make_napari_viewer, npe2pm, qtbot,
                                                     tmp_path):
    from qtpy.QtCore import Qt

    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "a.tif", _image())
    tifffile.imwrite(raw / "b.tif", _image()[::-1])
    viewer, w = open_folder(qtbot, make_napari_viewer, npe2pm, raw)
    s = w.session

    def wait_on(name):
        wait_until_shown(qtbot, viewer, w, name)

    wait_on("a")
    w.tabs.setCurrentIndex(1)
    w.segment_all.size_spin.setValue(22)
    qtbot.mouseClick(w.segment_all.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.segment_all.busy and "Segment all:" in w.status,
                    timeout=60_000)
    labels = s.labels_layer
    image = s.image_layer

    def at(name):
        (r, c), _, _ = DISCS[name]
        return int(labels.data[r, c])

    found = {k: at(k) for k in DISCS}
    assert found["G"] == found["H"] == 0 and len({found[k] for k in "ABCDEF"}) == 6
    canvas = viewer.window._qt_viewer.canvas.native

    def key(k, mods=Qt.KeyboardModifier.NoModifier):
        canvas.setFocus()  # the mouse is over the canvas (PanelShortcuts gives it focus)
        qtbot.keyClick(canvas, k, mods)
        qtbot.wait(20)

    def press(name, mods=Qt.KeyboardModifier.NoModifier, right=False, dc=0):
        (r, c), _, _ = DISCS[name]
        button = Qt.MouseButton.RightButton if right else Qt.MouseButton.LeftButton
        qtbot.mouseClick(canvas, button, mods, pos=canvas_pos(viewer, image, r, c + dc))
        qtbot.wait(20)

    def undo_redo(check_before, check_after):
        key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        check_before()
        key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier
            | Qt.KeyboardModifier.ShiftModifier)
        check_after()

    def preview_then(k):
        qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
        key(k)

    # 1. a missed object: a click and C (outside the edit mode a click adds a point)
    click(qtbot, viewer, image, *DISCS["G"][0])
    preview_then(Qt.Key.Key_C)
    assert at("G") == 7 and "Committed label 7" in w.status
    undo_redo(lambda: at("G") == 0 or pytest.fail("G"), lambda: None)
    assert at("G") == 7

    # 2. re-segment C: E, click it, R, Shift+drag a box over its left part, C: the id is
    # kept, its right edge is no longer in it
    key(Qt.Key.Key_E)
    assert s.corrections.selecting and "Edit mode" in w.status
    press("C")
    assert s.corrections.selected == [found["C"]] and len(s.points_layer.data) == 0
    key(Qt.Key.Key_R)
    assert "Re-segmenting label" in w.status
    (r, c), _, _ = DISCS["C"]
    shift = Qt.KeyboardModifier.ShiftModifier
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, shift,
                     canvas_pos(viewer, image, r + 14, c + 3))
    for rc in ((r + 5, c), (r - 5, c - 10)):
        qtbot.mouseMove(canvas, canvas_pos(viewer, image, *rc))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, shift,
                       canvas_pos(viewer, image, r - 14, c - 14))
    preview_then(Qt.Key.Key_C)
    edge = (r, c + 9)
    assert at("C") == found["C"] and labels.data[edge] == 0, w.status
    assert "Re-segmented label" in w.status
    undo_redo(lambda: labels.data[edge] == found["C"] or pytest.fail("C"), lambda: None)
    assert at("C") == found["C"] and labels.data[edge] == 0

    # 3. delete F: click it, Delete
    press("F")
    key(Qt.Key.Key_Delete)
    assert at("F") == 0 and "Deleted label" in w.status
    undo_redo(lambda: at("F") == found["F"] or pytest.fail("F"), lambda: None)
    assert at("F") == 0

    # 4. merge D and E: click, Shift+click, M: the lower id
    press("D")
    press("E", Qt.KeyboardModifier.ShiftModifier)
    assert sorted(s.corrections.selected) == sorted([found["D"], found["E"]])
    key(Qt.Key.Key_M)
    low = min(found["D"], found["E"])
    assert at("D") == at("E") == low
    undo_redo(lambda: (at("D"), at("E")) == (found["D"], found["E"]) or pytest.fail("DE"),
              lambda: None)
    assert at("D") == at("E") == low

    # 5. split the merged object: click it, Shift+M, click the part that becomes new, C
    press("D")
    key(Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    assert "Splitting label" in w.status
    press("E")
    preview_then(Qt.Key.Key_C)
    assert at("D") == low and at("E") == 8, w.status
    undo_redo(lambda: at("E") == low or pytest.fail("E"), lambda: None)
    assert at("E") == 8
    key(Qt.Key.Key_E)  # leave the edit mode: a click adds a point again
    assert not s.corrections.active and s.points_layer.mode == "add"
    corrected = labels.data.copy()

    # Next, then Previous: the corrected labels come back from disk
    key(Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    wait_on("b")
    saved = raw / "labels" / "a_labels.tif"
    qtbot.waitUntil(saved.is_file, timeout=TIMEOUT)
    np.testing.assert_array_equal(tifffile.imread(saved), corrected)
    key(Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    wait_on("a")
    qtbot.waitUntil(lambda: s.labels_layer is not None, timeout=TIMEOUT)
    np.testing.assert_array_equal(s.labels_layer.data, corrected)
