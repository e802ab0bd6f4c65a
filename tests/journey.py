"""The journey harness: napari as a user meets it.

- the plugin is registered through npe2 (the test plugin manager, from the installed
  package's manifest), so the sample menu and the dock-widget command are the real ones;
- the viewer is shown (Xvfb) at a laptop's window size, and the panel is docked through
  napari's plugin-widget command, as ``napari -w napari-edgesam`` does;
- images are opened the way users open them (the sample menu's action, ``viewer.open`` as
  File > Open and drag and drop do, a script's ``add_image``);
- clicks and keys are real Qt events on the canvas; no layer is selected by hand.
"""

from __future__ import annotations

import numpy as np

TIMEOUT = 20_000


def dock_panel(make_napari_viewer, npe2pm, size=(1280, 800)):
    """A shown viewer of ``size`` with the EdgeSAM panel docked; returns (viewer, widget)."""
    npe2pm.register("napari")  # the builtin readers: File > Open, drag and drop
    npe2pm.register("napari-edgesam")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-edgesam", "EdgeSAM")
    widget = getattr(widget, "__wrapped__", widget)
    widget.prefetch_check.setChecked(False)  # deterministic encoder counts
    return viewer, widget


def menu_action(viewer, *path: str):
    """The QAction reached through the menu bar by ``path`` (titles without '&')."""
    menus = viewer.window._qt_window.menuBar().actions()
    action = None
    for title in path:
        found = [a for a in menus if a.text().replace("&", "") == title]
        assert found, f"no menu entry {title!r} among {[a.text() for a in menus]}"
        action = found[0]
        menus = action.menu().actions() if action.menu() is not None else []
    return action


def open_sample(viewer, sample_title: str):
    """File > Open Sample > EdgeSAM > ``sample_title``, by triggering the menu action."""
    menu_action(viewer, "File", "Open Sample", "EdgeSAM", sample_title).trigger()


def canvas_pos(viewer, layer, row, col):
    """Image data (row, col) of ``layer`` -> a Qt position on the canvas widget (the last
    two axes; the current slice)."""
    from qtpy.QtCore import QPoint

    canvas = viewer.window._qt_viewer.canvas
    pos = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim:].copy()
    data = np.asarray(layer.world_to_data(pos), dtype=float)
    data[-2:] = (row, col)
    world = layer.data_to_world(data)
    x, y = canvas.view.scene.transform.map([world[-1], world[-2]])[:2]
    dpr = canvas.native.devicePixelRatioF()
    return QPoint(int(round(x / dpr)), int(round(y / dpr)))


def click(qtbot, viewer, layer, row, col, right=False):
    """A real left (or right) click on the canvas at ``layer``'s data (row, col)."""
    from qtpy.QtCore import Qt

    native = viewer.window._qt_viewer.canvas.native
    button = Qt.MouseButton.RightButton if right else Qt.MouseButton.LeftButton
    qtbot.mouseClick(native, button, pos=canvas_pos(viewer, layer, row, col))


def _wait_until_ready(qtbot, viewer, widget, is_it):
    s = widget.session
    qtbot.waitUntil(lambda: is_it(s.image_layer) and s.embedding is not None
                    and not widget.busy, timeout=TIMEOUT)
    viewer.reset_view()
    qtbot.wait(50)


def wait_until_ready_on(qtbot, viewer, widget, layer):
    """Wait until ``layer`` is the panel's image and its slice is encoded; then frame it
    in the canvas (as a user looks at a newly opened image)."""
    _wait_until_ready(qtbot, viewer, widget, lambda shown: shown is layer)


def wait_until_shown(qtbot, viewer, widget, name):
    """:func:`wait_until_ready_on` the image the Folder tab opened as ``name`` (the file's
    stem: the tab makes the layer, so the test knows only its name)."""
    _wait_until_ready(qtbot, viewer, widget,
                      lambda shown: shown is not None and shown.name == name)


def open_folder(qtbot, make_napari_viewer, npe2pm, folder):
    """:func:`dock_panel` with the test-double model chosen, the Folder tab shown and
    ``folder`` chosen as its images folder (what the folder dialog returns); returns
    (viewer, widget). Wait for the first image with :func:`wait_until_shown`."""
    viewer, widget = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, widget)
    widget.tabs.setCurrentIndex(3)
    widget.folder.choose_images(str(folder))
    return viewer, widget


def choose_test_model(qtbot, widget):
    """Load the committed test-double pair as custom files (not EdgeSAM)."""
    from conftest import TEST_DECODER, TEST_ENCODER

    widget.model_picker.load_custom_model(str(TEST_ENCODER), str(TEST_DECODER))
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=TIMEOUT)
