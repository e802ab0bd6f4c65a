"""Journey: annotate a folder image by image (issue 18): choose the folder, commit on the
first image, Next (its labels and prompt log saved), come back (labels restored), the done
count follows. Real napari, panel docked first, real clicks and keys. Test double (not
EdgeSAM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from journey import TIMEOUT, click, open_folder, wait_until_shown

pytestmark = pytest.mark.gui


def _disc(centre, shape=(100, 140)):
    img = np.full(shape, 20, np.uint8)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    img[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 14**2] = 200
    return img


def test_a_folder_annotated_image_by_image(make_napari_viewer, npe2pm, qtbot, tmp_path,
                                           monkeypatch):
    from qtpy.QtCore import Qt

    raw = tmp_path / "raw"
    raw.mkdir()
    centres = {"a": (40, 50), "b": (60, 90), "c": (30, 100)}
    for name, centre in centres.items():
        tifffile.imwrite(raw / f"{name}.tif", _disc(centre))
    viewer, w = open_folder(qtbot, make_napari_viewer, npe2pm, raw)
    panel = w.folder
    s = w.session

    def wait_on(name):
        wait_until_shown(qtbot, viewer, w, name)

    wait_on("a")
    assert "1 of 3 (0 done)" in panel.where_label.text()
    assert not panel.previous_button.isEnabled() and panel.next_button.isEnabled()
    canvas = viewer.window._qt_viewer.canvas.native
    click(qtbot, viewer, s.image_layer, *centres["a"])
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    canvas.setFocus()  # the mouse is over the canvas (PanelShortcuts gives it focus)
    qtbot.wait(50)
    qtbot.keyClick(canvas, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: "Committed label 1" in w.status, timeout=TIMEOUT)
    painted = s.labels_layer.data.copy()
    # the commit is autosaved (2 s after the last edit)...
    tracker = w.autosave.tracker(s.labels_layer)
    qtbot.waitUntil(lambda: tracker.store.info() is not None and not tracker.pending(),
                    timeout=TIMEOUT)
    autosaved = tracker.store.folder
    assert autosaved.is_dir()
    # (the save on leaving the image is held until its labels layer left the viewer: the
    # order in which the save ends after the layer is gone, made sure, not left to timing)
    import threading

    from napari_edgesam.widget import workers

    leaving, left = s.labels_layer, threading.Event()
    viewer.layers.events.removed.connect(
        lambda e: left.set() if e.value is leaving else None)
    real_save = workers.save_labels_job

    def save_once_removed(*args):
        assert left.wait(TIMEOUT / 1000), "the left image's labels layer was not removed"
        return real_save(*args)

    monkeypatch.setattr(workers, "save_labels_job", save_once_removed)

    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)  # Next
    wait_on("b")
    saved = raw / "labels" / "a_labels.tif"
    qtbot.waitUntil(saved.is_file, timeout=TIMEOUT)
    # ... and that autosave is discarded once the labels are saved on leaving the image
    qtbot.waitUntil(lambda: not autosaved.exists(), timeout=TIMEOUT)
    monkeypatch.undo()
    np.testing.assert_array_equal(tifffile.imread(saved), painted)
    log = json.loads((raw / "labels" / "a_labels.prompts.json").read_text())
    assert [o["label"] for o in log["objects"]] == [1]
    names = [ly.name for ly in viewer.layers if type(ly).__name__ in ("Image", "Labels")
             and not ly.name.startswith("EdgeSAM")]
    assert names == ["b"], names  # the previous image and its labels were closed
    qtbot.waitUntil(lambda: "2 of 3 (1 done)" in panel.where_label.text(), timeout=TIMEOUT)
    assert panel.list.item(0).text().startswith("\u2713")

    qtbot.mouseClick(panel.previous_button, Qt.MouseButton.LeftButton)  # back to a
    wait_on("a")
    qtbot.waitUntil(lambda: s.labels_layer is not None, timeout=TIMEOUT)
    np.testing.assert_array_equal(s.labels_layer.data, painted)  # restored, the target
    np.testing.assert_array_equal(np.asarray(s.labels_layer.data) > 0, painted > 0)
    # an image without annotation leaves no empty labels file behind
    assert not (raw / "labels" / "b_labels.tif").exists()

    # leaving a again keeps its prompt log (the log saved before is continued), and an edit
    # made while the next image is being read is saved too
    panel.controller.next()
    s.labels_layer.data[5, 5] = 9  # before the next image arrives
    wait_on("b")
    qtbot.waitUntil(lambda: tifffile.imread(saved)[5, 5] == 9, timeout=TIMEOUT)
    log = json.loads((raw / "labels" / "a_labels.prompts.json").read_text())
    assert [o["label"] for o in log["objects"]] == [1]
