"""Journey: the user clicks and commits objects, undoes one, saves the labels with their
prompts, and 'napari-edgesam replay' re-creates the same labels (issue 18, prompt log).
Real napari, panel docked first, image opened by the user, real canvas clicks and keys.
Test double (not EdgeSAM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from journey import TIMEOUT, choose_test_model, click, dock_panel, wait_until_ready_on

pytestmark = pytest.mark.gui


def _three_discs():
    """Three discs of distinct brightness (the test double segments pixels about as bright
    as the clicked one, so each click gives one disc)."""
    img = np.full((120, 200), 10, np.uint8)
    yy, xx = np.ogrid[:120, :200]
    img[(yy - 40) ** 2 + (xx - 50) ** 2 <= 15**2] = 220
    img[(yy - 80) ** 2 + (xx - 140) ** 2 <= 12**2] = 150
    img[(yy - 30) ** 2 + (xx - 160) ** 2 <= 10**2] = 80
    return img


def test_commits_are_saved_with_their_prompts_and_replay_gives_the_same_labels(
        make_napari_viewer, npe2pm, qtbot, tmp_path, monkeypatch, capsys):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFileDialog

    from napari_edgesam.cli.main import main

    tifffile.imwrite(tmp_path / "cells.tif", _three_discs())
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    layer = viewer.open(str(tmp_path / "cells.tif"))[0]
    wait_until_ready_on(qtbot, viewer, w, layer)
    canvas = viewer.window._qt_viewer.canvas.native

    def commit_click(row, col, wanted_id):
        click(qtbot, viewer, layer, row, col)
        qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None,
                        timeout=TIMEOUT)
        canvas.setFocus()  # what the mouse entering the canvas does (PanelShortcuts)
        qtbot.wait(50)
        qtbot.keyClick(canvas, Qt.Key.Key_C)
        qtbot.waitUntil(lambda: f"Committed label {wanted_id}" in w.status, timeout=TIMEOUT)

    commit_click(40, 50, 1)
    commit_click(80, 140, 2)
    commit_click(30, 160, 3)
    labels = w.session.labels_layer
    qtbot.mouseClick(w.undo_button, Qt.MouseButton.LeftButton)  # the third one goes
    assert set(np.unique(labels.data)) == {0, 1, 2}

    out = tmp_path / "cells_labels.tif"
    suggested = []  # the dialog opens beside the image, named as the Folder tab names labels
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(
        lambda *a, **k: (suggested.append(a[2]), (str(out), "TIFF files (*.tif *.tiff)"))[1]))
    qtbot.mouseClick(w.save_button, Qt.MouseButton.LeftButton)
    assert suggested == [str(tmp_path / "cells_labels.tif")]
    qtbot.waitUntil(lambda: "Saved cells_labels.tif" in w.status, timeout=TIMEOUT)
    assert "2 object(s)" in w.status
    np.testing.assert_array_equal(tifffile.imread(out), labels.data)
    log = json.loads((tmp_path / "cells_labels.prompts.json").read_text())
    assert [o["label"] for o in log["objects"]] == [1, 2]  # the undone one is not there
    (x, y), = log["objects"][0]["points"]  # the click, in the image's pixels (x = column)
    assert abs(x - 50) < 1 and abs(y - 40) < 1 and log["objects"][0]["key"] == []
    assert log["model"]["name"].startswith("custom")

    code = main(["replay", str(tmp_path / "cells_labels.prompts.json"),
                 str(tmp_path / "cells.tif"), "-o", str(tmp_path / "again.tif"),
                 "--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again.tif"), labels.data)
    assert "the log's model exactly" in stdout and "min IoU 1.000 over 2" in stdout
