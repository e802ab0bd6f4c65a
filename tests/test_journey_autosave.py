"""Journey (issue 18): the viewer process is killed mid-annotation and the labels come back
from the autosave.

A child process runs real napari on the test's X display: the panel docked through
napari's plugin command, the image opened with ``viewer.open`` (File > Open), three objects
committed with real Qt clicks and the C key on the canvas; once the autosave has written
them, the child is killed with SIGKILL (no clean-up runs). Then, in this process, napari
is opened, the panel docked, the same file opened: a notification offers Restore and
Discard; pressing its Restore button gives the same labels at the same pixels, in one undo
step that Ctrl+Z takes back. Test double (not EdgeSAM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from journey import TIMEOUT, dock_panel

pytestmark = [pytest.mark.gui, pytest.mark.slow]

CENTRES = [(30, 40), (70, 110), (40, 130)]

CHILD = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path

    import numpy as np
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    cfg = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, cfg["tests"])
    from journey import canvas_pos

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-edgesam", "EdgeSAM")
    widget = getattr(widget, "__wrapped__", widget)
    widget.prefetch_check.setChecked(False)
    widget.autosave.idle_ms = 300
    app = QApplication.instance()

    def wait(cond, seconds, what):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            if cond():
                return
            time.sleep(0.01)
        raise SystemExit(f"timed out waiting for {what}; status: {widget.status}")

    def pump(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    widget.model_picker.load_custom_model(cfg["encoder"], cfg["decoder"])
    wait(lambda: widget.model is not None and not widget.busy, 60, "the model")
    (image,) = viewer.open(cfg["image"], plugin="napari")
    s = widget.session
    wait(lambda: s.image_layer is image and s.embedding is not None and not widget.busy,
         60, "the embedding")
    viewer.reset_view()
    pump(0.1)  # the view drawn
    canvas = viewer.window._qt_viewer.canvas.native
    for i, (row, col) in enumerate(cfg["centres"]):
        QTest.mouseClick(canvas, Qt.MouseButton.LeftButton,
                         pos=canvas_pos(viewer, image, row, col))
        wait(lambda: not widget.busy and s.preview_mask is not None
             and s.preview_is_current, 30, f"the preview of object {i + 1}")
        canvas.setFocus()
        QTest.keyClick(canvas, Qt.Key.Key_C)
        wait(lambda: f"Committed label {i + 1}" in widget.status, 30, f"commit {i + 1}")
    labels = s.labels_layer
    np.save(cfg["painted"], np.asarray(labels.data))
    tracker = widget.autosave.tracker(labels)

    def written():
        info = tracker.store.info()
        return (info is not None and info.objects == len(cfg["centres"])
                and not tracker.pending() and not tracker.writing)

    wait(written, 30, "the autosave")
    Path(cfg["ready"]).write_text(str(tracker.store.folder))
    pump(600)  # the user goes on annotating... until killed
''')


def _discs(shape=(100, 160)):
    img = np.full(shape, 10, np.uint8)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for (r, c), value in zip(CENTRES, (220, 150, 80), strict=True):  # one brightness each
        img[(yy - r) ** 2 + (xx - c) ** 2 <= 11**2] = value
    return img


def test_a_killed_viewer_is_restored_from_its_autosave(make_napari_viewer, npe2pm, qtbot,
                                                      tmp_path):
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QPushButton

    image_path = tmp_path / "cells.tif"
    tifffile.imwrite(image_path, _discs())
    cfg = {"tests": str(Path(__file__).parent), "encoder": str(TEST_ENCODER),
           "decoder": str(TEST_DECODER), "image": str(image_path), "centres": CENTRES,
           "painted": str(tmp_path / "painted.npy"), "ready": str(tmp_path / "ready.txt")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ)  # DISPLAY from pytest-xvfb; this test's cache and config dirs
    assert env.get("DISPLAY"), "no X display for the child's napari window"
    env["NAPARI_CONFIG"] = str(tmp_path / "napari_settings.yaml")
    env.pop("QT_QPA_PLATFORM", None)
    ready = Path(cfg["ready"])
    log = tmp_path / "child.log"
    with open(log, "w") as fh:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cfg.json")],
                                 env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not ready.exists() and child.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), f"the child never autosaved:\n{log.read_text()}"
            os.kill(child.pid, signal.SIGKILL)  # a crash: nothing is cleaned up
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    painted = np.load(cfg["painted"])
    assert sorted(np.unique(painted)) == [0, 1, 2, 3]
    assert Path(ready.read_text(), "manifest.json").is_file()

    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    (image,) = viewer.open(str(image_path), plugin="napari")  # File > Open
    qtbot.waitUntil(lambda: w.autosave.offer is not None, timeout=TIMEOUT)
    assert "cells" in w.autosave.offer.message
    canvas = viewer.window._qt_viewer.canvas.native

    def restore_button():
        for note in canvas.findChildren(NapariQtNotification):
            for b in note.findChildren(QPushButton):
                if b.text() == "Restore" and b.isVisible():
                    return b
        return None

    qtbot.waitUntil(lambda: restore_button() is not None, timeout=TIMEOUT)
    texts = [b.text() for n in canvas.findChildren(NapariQtNotification)
             for b in n.findChildren(QPushButton)]
    assert "Discard" in texts
    assert w.session.labels_layer is None  # nothing restored before the user says so
    qtbot.mouseClick(restore_button(), Qt.MouseButton.LeftButton)
    s = w.session
    qtbot.waitUntil(lambda: s.labels_layer is not None
                    and np.array_equal(s.labels_layer.data, painted), timeout=TIMEOUT)
    assert [o.label for o in s.prompt_log().objects] == [1, 2, 3]  # the log re-adopted
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not s.labels_layer.data.any(), timeout=TIMEOUT)
