"""PanelShortcuts in a real napari window: the panel's keys whatever has Qt focus.

A plain panel (a table, a line edit and a button) is docked in napari; the actions are
counters. Keys are sent to whatever ``QApplication.focusWidget()`` is, as a keyboard does,
and pass through Qt's shortcut map (``QTest.keyClick`` sends the ShortcutOverride first).
"""

from __future__ import annotations

import gc
from collections import Counter

import numpy as np
import pytest
from qtpy.QtCore import QObject, QPoint, QPointF, Qt
from qtpy.QtGui import QEnterEvent
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_edgesam.widget.shortcuts import PanelShortcuts, is_text_input, key_sequences

#: The panel's keys (as the dock's KEYS) -> action names.
KEYS = {
    "c": "commit",
    "Enter": "commit",
    "Escape": "clear",
    "x": "clear",
    "Control-z": "undo",
    "Control-Shift-z": "redo",
    "Shift-p": "propagate",
    "Shift-c": "commit_propagation",
    "Shift-w": "weakest",
}
SHIFT = Qt.KeyboardModifier.ShiftModifier
CTRL = Qt.KeyboardModifier.ControlModifier


class Panel(QWidget):
    """A stand-in for the EdgeSAM panel: a propagation-like table, a field, a button."""

    def __init__(self):
        super().__init__()
        lay = QVBoxLayout(self)
        self.table = QTableWidget(4, 2)  # as the propagation table: rows, not editable
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        for r in range(4):
            for c in range(2):
                self.table.setItem(r, c, QTableWidgetItem(f"{r},{c}"))
        self.field = QLineEdit()
        self.spin = QSpinBox()
        self.button = QPushButton("Commit")
        for w in (self.table, self.field, self.spin, self.button):
            lay.addWidget(w)


@pytest.fixture
def setup(make_napari_viewer, qtbot):
    """A shown viewer with an image and a prompt Points layer, the panel docked, the
    shortcuts installed and counters as actions; returns a namespace."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((4, 64, 64), dtype=np.uint8))
    points = viewer.add_points(ndim=3, name="prompts")
    panel = Panel()
    viewer.window.add_dock_widget(panel, name="EdgeSAM", area="right")
    counts = Counter()
    actions = {key: (lambda name=name: counts.update([name])) for key, name in KEYS.items()}

    class NS:
        pass

    ns = NS()
    ns.viewer, ns.points, ns.panel, ns.counts, ns.actions = viewer, points, panel, counts, actions
    ns.canvas = viewer.window._qt_viewer.canvas.native
    ns.enabled = True
    ns.shortcuts = PanelShortcuts(viewer, panel, actions, enabled=lambda: ns.enabled)
    win = viewer.window._qt_window
    win.activateWindow()
    win.raise_()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    qtbot.waitExposed(ns.canvas)
    yield ns


def bind_layer_keys(ns):
    """What the dock does today: the same actions bound on the prompt layer."""
    for key, fn in ns.actions.items():
        ns.points.bind_key(key, lambda layer, fn=fn: fn(), overwrite=True)
    ns.viewer.layers.selection.active = ns.points


def click_row(qtbot, table, row=1):
    rect = table.visualItemRect(table.item(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def enter_canvas(qtbot, ns):
    """The mouse goes over the panel, then onto the canvas (a real move, then an explicit
    Enter event in case the platform sends none)."""
    qtbot.mouseMove(ns.panel.table.viewport(), QPoint(5, 5))
    qtbot.mouseMove(ns.canvas, ns.canvas.rect().center())
    QApplication.processEvents()
    local = QPointF(ns.canvas.rect().center())
    QApplication.sendEvent(ns.canvas, QEnterEvent(local, local, QPointF(ns.canvas.mapToGlobal(
        ns.canvas.rect().center()))))
    QApplication.processEvents()


def press(qtbot, key, modifier=Qt.KeyboardModifier.NoModifier):
    """A key press on whatever has focus, as from the keyboard."""
    widget = QApplication.focusWidget()
    assert widget is not None
    qtbot.keyClick(widget, key, modifier)
    QApplication.processEvents()


def test_key_sequences():
    assert [s.toString() for s in key_sequences("Enter")] == ["Return", "Enter"]
    assert key_sequences("Control-Shift-z")[0] == key_sequences("Control-Shift-Z")[0]
    assert key_sequences("Shift-w")[0].toString() == "Shift+W"
    assert key_sequences("Escape")[0].toString() == "Esc"
    with pytest.raises(ValueError):
        key_sequences("Hyper-q")


def test_table_focus_keys_fire_once(setup, qtbot):
    """(a) After a click on a table row, Shift+W / Shift+P / c reach the actions, once."""
    ns = setup
    click_row(qtbot, ns.panel.table)
    assert QApplication.focusWidget() is ns.panel.table
    press(qtbot, Qt.Key.Key_W, SHIFT)
    assert ns.counts == {"weakest": 1}
    press(qtbot, Qt.Key.Key_P, SHIFT)
    press(qtbot, Qt.Key.Key_C, SHIFT)
    press(qtbot, Qt.Key.Key_C)
    press(qtbot, Qt.Key.Key_Return)
    press(qtbot, Qt.Key.Key_X)
    press(qtbot, Qt.Key.Key_Escape)
    assert ns.counts == {"weakest": 1, "propagate": 1, "commit_propagation": 1,
                         "commit": 2, "clear": 2}
    assert QApplication.focusWidget() is ns.panel.table  # the keys did not move focus
    # enabled() False: nothing fires.
    ns.enabled = False
    press(qtbot, Qt.Key.Key_W, SHIFT)
    assert ns.counts["weakest"] == 1
    # A focused button of the panel: the keys work there too.
    ns.enabled = True
    ns.panel.button.setFocus()
    press(qtbot, Qt.Key.Key_W, SHIFT)
    assert ns.counts["weakest"] == 2


def test_mouse_entering_canvas_focuses_it(setup, qtbot):
    """(b) Focus in the table, mouse onto the canvas: the canvas takes focus and napari's
    dispatch (the prompt layer's bindings, as the dock keeps them) fires each key once."""
    ns = setup
    bind_layer_keys(ns)
    click_row(qtbot, ns.panel.table)
    assert QApplication.focusWidget() is ns.panel.table
    enter_canvas(qtbot, ns)
    assert QApplication.focusWidget() is ns.canvas
    press(qtbot, Qt.Key.Key_W, SHIFT)
    assert ns.counts == {"weakest": 1}
    press(qtbot, Qt.Key.Key_P, SHIFT)
    press(qtbot, Qt.Key.Key_C)
    assert ns.counts == {"weakest": 1, "propagate": 1, "commit": 1}
    # enabled() False: the canvas does not take focus.
    click_row(qtbot, ns.panel.table)
    ns.enabled = False
    enter_canvas(qtbot, ns)
    assert QApplication.focusWidget() is ns.panel.table


def test_text_fields_keep_their_keys(setup, qtbot):
    """(c) Typed into the panel's line edit or spin box, c / x / Enter / Escape / Ctrl+Z
    are text editing, not actions; the mouse entering the canvas leaves focus in the field.
    The same keys from the table do fire (the shortcuts exist)."""
    ns = setup
    bind_layer_keys(ns)
    field = ns.panel.field
    qtbot.mouseClick(field, Qt.MouseButton.LeftButton)
    assert QApplication.focusWidget() is field
    for key, mod in [(Qt.Key.Key_C, Qt.KeyboardModifier.NoModifier),
                     (Qt.Key.Key_X, Qt.KeyboardModifier.NoModifier),
                     (Qt.Key.Key_W, SHIFT), (Qt.Key.Key_P, SHIFT)]:
        press(qtbot, key, mod)
    assert field.text().lower() == "cxwp"  # QTest sends Shift+W as the text "w"
    press(qtbot, Qt.Key.Key_Z, CTRL)  # the field's own undo
    assert field.text().lower() != "cxwp"
    returned = []
    field.returnPressed.connect(lambda: returned.append(True))
    press(qtbot, Qt.Key.Key_Return)
    press(qtbot, Qt.Key.Key_Escape)
    assert returned == [True]
    assert ns.counts == {}
    # The mouse entering the canvas does not take focus from the field.
    enter_canvas(qtbot, ns)
    assert QApplication.focusWidget() is field
    press(qtbot, Qt.Key.Key_C)
    assert field.text().endswith("c") and ns.counts == {}
    # Nor from the spin box.
    ns.panel.spin.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is ns.panel.spin)
    ns.panel.spin.lineEdit().selectAll()
    press(qtbot, Qt.Key.Key_7)
    press(qtbot, Qt.Key.Key_Return)
    enter_canvas(qtbot, ns)
    assert QApplication.focusWidget() is ns.panel.spin
    assert ns.panel.spin.value() == 7 and ns.counts == {}
    # A cell editor of a table is a text field too.
    item = ns.panel.table.item(2, 1)
    ns.panel.table.editItem(item)
    qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit)
                    and QApplication.focusWidget() is not field)
    editor = QApplication.focusWidget()
    editor.selectAll()
    press(qtbot, Qt.Key.Key_C)
    press(qtbot, Qt.Key.Key_X)
    assert editor.text() == "cx" and ns.counts == {}
    press(qtbot, Qt.Key.Key_Return)  # the editor commits the cell, not the panel
    assert item.text() == "cx" and ns.counts == {}
    # From the table the same key is the action.
    click_row(qtbot, ns.panel.table)
    assert QApplication.focusWidget() is ns.panel.table
    press(qtbot, Qt.Key.Key_C)
    assert ns.counts == {"commit": 1}


def test_undo_fires_once(setup, qtbot):
    """(d) Ctrl+Z / Ctrl+Shift+Z fire undo / redo once per press, from the table and from
    the canvas with the layer bindings still in place."""
    ns = setup
    bind_layer_keys(ns)
    click_row(qtbot, ns.panel.table)
    press(qtbot, Qt.Key.Key_Z, CTRL)
    assert ns.counts == {"undo": 1}
    press(qtbot, Qt.Key.Key_Z, CTRL | SHIFT)
    assert ns.counts == {"undo": 1, "redo": 1}
    enter_canvas(qtbot, ns)
    assert QApplication.focusWidget() is ns.canvas
    press(qtbot, Qt.Key.Key_Z, CTRL)
    assert ns.counts == {"undo": 2, "redo": 1}
    press(qtbot, Qt.Key.Key_Z, CTRL | SHIFT)
    assert ns.counts == {"undo": 2, "redo": 2}


def test_close_and_viewer_close(setup, qtbot):
    """close() removes shortcuts and the canvas filter; a closed viewer gives no errors;
    the shortcuts need no reference to be kept (they live as long as the panel)."""
    ns = setup
    click_row(qtbot, ns.panel.table)
    ns.shortcuts = None
    gc.collect()
    press(qtbot, Qt.Key.Key_W, SHIFT)
    assert ns.counts == {"weakest": 1}  # still installed without a Python reference
    (sc,) = [f.owner for f in ns.panel.findChildren(QObject)
             if isinstance(getattr(f, "owner", None), PanelShortcuts)]
    assert isinstance(sc, PanelShortcuts)
    sc.close()
    sc.close()
    press(qtbot, Qt.Key.Key_W, SHIFT)
    enter_canvas(qtbot, ns)
    assert ns.counts == {"weakest": 1}
    assert QApplication.focusWidget() is ns.panel.table
    # A second installation, then the viewer closes under it.
    PanelShortcuts(ns.viewer, ns.panel, ns.actions)
    ns.viewer.close()
    QApplication.processEvents()
    other = QLineEdit()
    qtbot.addWidget(other)
    other.show()
    other.setFocus()
    QApplication.processEvents()
    assert not is_text_input(None)

