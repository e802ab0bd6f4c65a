"""The panel on ordinary screens: napari opened at 1280x800 and 1024x768 (not maximised),
the panel docked as ``napari -w napari-edgesam`` does, an image opened, a click made.

The canvas keeps at least half the window's width at 1280x800 and 40 % at 1024x768 (napari's
own left docks take about 300 px); no widget of the panel overlaps a sibling; the main
buttons are shown whole; the status line is one line, its full text in the tooltip."""

from __future__ import annotations

import pytest
from journey import TIMEOUT, choose_test_model, dock_panel, open_sample
from qtpy.QtCore import QRect
from qtpy.QtWidgets import QAbstractButton, QComboBox, QWidget

pytestmark = pytest.mark.gui


def _visible_children(widget):
    return [c for c in widget.findChildren(QWidget) if c.parent() is widget and c.isVisible()]


def _overlaps(panel) -> list:
    """Pairs of visible sibling widgets (same parent, both in a layout) that overlap."""
    found = []
    for parent in [panel, *panel.findChildren(QWidget)]:
        if not parent.isVisible() or parent.layout() is None:
            continue
        kids = [c for c in _visible_children(parent) if parent.layout().indexOf(c) >= 0]
        for i, a in enumerate(kids):
            for b in kids[i + 1:]:
                inter = a.geometry().intersected(b.geometry())
                if inter.width() > 1 and inter.height() > 1:
                    found.append((a, b))
    return found


def _shown_whole(widget) -> bool:
    """The widget is visible and not clipped by a parent (inside every ancestor)."""
    if not widget.isVisible():
        return False
    rect = QRect(widget.mapTo(widget.window(), widget.rect().topLeft()), widget.size())
    p = widget.parentWidget()
    while p is not None and p is not widget.window():
        prect = QRect(p.mapTo(widget.window(), p.rect().topLeft()), p.size())
        if not prect.contains(rect):
            return False
        p = p.parentWidget()
    return True


@pytest.mark.parametrize(("size", "share"), [((1280, 800), 0.5), ((1024, 768), 0.4)])
def test_panel_fits_an_ordinary_window(make_napari_viewer, npe2pm, qtbot, size, share):
    viewer, w = dock_panel(make_napari_viewer, npe2pm, size=size)
    choose_test_model(qtbot, w)
    open_sample(viewer, "Coins (2D)")
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    w.session.add_point((141, 163))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None,
                    timeout=TIMEOUT)
    qtbot.wait(100)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == size
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= share * size[0], (canvas.width(), w.width())
    assert canvas.height() >= 0.5 * size[1]
    assert not _overlaps(w), [(a.objectName() or type(a).__name__,
                               b.objectName() or type(b).__name__) for a, b in _overlaps(w)]
    for button in (w.commit_button, w.clear_button, w.undo_button, w.redo_button,
                   w.model_picker.model_combo, w.image_combo, w.help_button):
        assert _shown_whole(button), button.text() if isinstance(button, QAbstractButton) \
            else type(button).__name__
    # no row is squeezed: every control of the sections gets its minimum size
    for section in (w.model_section, w.image_section, w.labels_section):
        for ctl in section.findChildren((QAbstractButton, QComboBox)):
            if ctl.isVisible():
                hint = ctl.minimumSizeHint()
                assert ctl.height() >= hint.height() - 1, type(ctl).__name__
                assert ctl.width() >= hint.width() - 1, type(ctl).__name__
    # every control of the open tab is reachable (inside the tab's scroll area, which
    # scrolls vertically only)
    page = w.tabs.currentWidget()
    for ctl in w.propagation.findChildren((QAbstractButton, QComboBox)):
        if ctl.isVisible():
            assert ctl.width() >= ctl.minimumSizeHint().width() - 1, type(ctl).__name__
    assert page.horizontalScrollBar().maximum() == 0
    w.tabs.setCurrentIndex(2)  # Batch: not clipped either
    qtbot.wait(50)
    assert w.tabs.currentWidget().horizontalScrollBar().maximum() == 0
    w.tabs.currentWidget().ensureWidgetVisible(w.batch.cancel_button)  # scrolls there
    qtbot.wait(20)
    assert _shown_whole(w.batch.cancel_button)
    w.tabs.setCurrentIndex(1)  # Segment all: not clipped either
    qtbot.wait(50)
    assert w.tabs.currentWidget().horizontalScrollBar().maximum() == 0
    assert _shown_whole(w.segment_all.run_button) and _shown_whole(w.segment_all.cancel_button)
    w.tabs.setCurrentIndex(0)
    # the status line is one line; the full text in its tooltip
    long = "Error: " + "a long reason that goes on and on " * 10
    w.session.set_status(long)
    assert w.status == long and w.status_label.toolTip() == long
    assert w.status_label.height() <= 2 * w.status_label.fontMetrics().height()


@pytest.mark.parametrize(("size", "rows"), [((1366, 768), 4), ((1600, 1000), 7)])
def test_the_propagation_table_gets_the_room(make_napari_viewer, npe2pm, qtbot, size, rows):
    """With a stack and a propagation result, the table shows at least ``rows`` rows without
    scrolling the tab (it stretches with the window)."""
    import numpy as np

    viewer, w = dock_panel(make_napari_viewer, npe2pm, size=size)
    choose_test_model(qtbot, w)
    zz, yy, xx = np.ogrid[:14, :56, :64]
    truth = ((zz - 7) / 4.6) ** 2 + ((yy - 28) / 13) ** 2 + ((xx - 30) / 15) ** 2 <= 1
    stack = np.full(truth.shape, 100, np.uint16)
    stack[truth] = 420
    viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 7)
    qtbot.waitUntil(lambda: w.session.embedding is not None and not w.busy, timeout=TIMEOUT)
    w.session.add_point((7, 28, 30))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None,
                    timeout=TIMEOUT)
    w.propagate()
    qtbot.waitUntil(lambda: w.propagation.pending and not w.busy, timeout=TIMEOUT)
    table = w.propagation.table
    assert table.rowCount() >= rows
    qtbot.wait(50)
    row_h = table.rowHeight(0)
    page = w.tabs.currentWidget()
    page.ensureWidgetVisible(table)
    qtbot.wait(20)
    assert table.viewport().height() >= rows * row_h, (table.viewport().height(), row_h)
