"""Keyboard shortcuts of the EdgeSAM panel that do not depend on where Qt's focus is.

napari dispatches a layer's ``bind_key`` bindings only while its canvas has Qt focus, and
napari does not give the canvas focus when the mouse enters it: after a click in the
panel (a row of the propagation table, a button) the panel's keys went to the panel
widget and did nothing until the canvas was clicked, which also added a point.

:class:`PanelShortcuts` closes both gaps:

* **Mouse over the canvas.** An event filter on the canvas' native Qt widget gives it focus
  when the mouse enters it, so napari's key dispatch (the prompt layers' ``bind_key``
  bindings) receives the keys. Focus is never taken from a text input (line edit, text
  edit, spin box, editable combo box, anything accepting input-method text), nor from
  napari's console, nor while a popup or modal dialog is open.
* **Focus inside the panel.** One :class:`~qtpy.QtWidgets.QShortcut` per key sequence with
  ``Qt.WidgetWithChildrenShortcut`` context on the panel calls the action when focus is on
  the panel or any widget in it (the table, a button, a check box). The shortcuts are
  disabled while focus is on a text input, so ``c``, ``x``, Enter, Escape, Ctrl+Z... typed
  into a field of the panel arrive in the field. napari's dock widget passes the key
  presses its contents ignore on to the viewer's key dispatch
  (``QtViewerDockWidget.keyPressEvent``), and a line edit ignores Return and Escape: an
  event filter on the panel stops those of the panel's keys, so Enter in a field does not
  reach the layer bindings (it did before).

No key press ever fires an action twice: the panel's shortcuts are in context only while
focus is inside the panel, where the canvas receives no keys, and a shortcut consumes the
key press it matches (napari's dock widget never sees it); while the canvas has focus only
napari's bindings run. The layer bindings therefore stay in place (they are what handles
keys over the canvas). Keys of the panel's non-text widgets that are not panel keys still
go on to napari as before (Delete, 1-6 for layer modes...).

Public API::

    shortcuts = PanelShortcuts(viewer, panel, {"Shift-w": panel.jump_to_weakest_slice, ...},
                               enabled=lambda: panel.session is not None)
    shortcuts.close()   # optional: also done when the panel is destroyed

Key strings are napari's (``"c"``, ``"Enter"``, ``"Escape"``, ``"Control-Shift-z"``,
``"Shift-p"``; ``Control`` is Cmd on macOS, as in napari).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from functools import partial

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QAbstractItemView,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QShortcut,
    QTextEdit,
    QWidget,
)

__all__ = ["PanelShortcuts", "is_text_input", "key_sequences"]

#: napari modifier names -> QKeySequence modifier names (napari's "Control" is Ctrl, i.e.
#: Cmd on macOS, like Qt's "Ctrl").
_MODIFIERS = {
    "control": "Ctrl",
    "ctrl": "Ctrl",
    "shift": "Shift",
    "alt": "Alt",
    "option": "Alt",
    "meta": "Meta",
    "super": "Meta",
}
#: Modifiers that are part of a shortcut (not the keypad flag).
_MODIFIER_MASK = (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
                  | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.MetaModifier)
#: napari key names whose Qt names differ; Enter means both Return and keypad Enter, as
#: in napari (vispy maps both keys to "Enter").
_KEY_NAMES = {
    "enter": ("Return", "Enter"),
    "return": ("Return", "Enter"),
    "escape": ("Esc",),
    "esc": ("Esc",),
    "delete": ("Del",),
    "backspace": ("Backspace",),
    "space": ("Space",),
    "tab": ("Tab",),
    "up": ("Up",),
    "down": ("Down",),
    "left": ("Left",),
    "right": ("Right",),
    "pageup": ("PgUp",),
    "pagedown": ("PgDown",),
    "home": ("Home",),
    "end": ("End",),
}


def key_sequences(key: str) -> list[QKeySequence]:
    """The Qt key sequences of a napari key string.

    Parameters
    ----------
    key : str
        A napari key binding, modifiers and key joined by ``-``: ``"c"``, ``"Enter"``,
        ``"Control-Shift-z"``.

    Returns
    -------
    list of QKeySequence
        One sequence, or two for ``"Enter"`` (Return and keypad Enter).

    Raises
    ------
    ValueError
        If the string is empty or Qt does not know the key.
    """
    parts = key.split("-")
    if len(parts) > 1 and parts[-1] == "":  # "Control--": the key is "-"
        parts = [*parts[:-2], "-"]
    *mods, name = parts
    if not name:
        raise ValueError(f"no key in {key!r}")
    qt_mods = []
    for m in mods:
        if m.lower() not in _MODIFIERS:
            raise ValueError(f"unknown modifier {m!r} in {key!r}")
        qt_mods.append(_MODIFIERS[m.lower()])
    names = _KEY_NAMES.get(name.lower(), (name.upper() if len(name) == 1 else name,))
    out = []
    for n in names:
        seq = QKeySequence("+".join([*qt_mods, n]))
        if seq.isEmpty():
            raise ValueError(f"Qt does not know the key {key!r}")
        out.append(seq)
    return out


def is_text_input(widget: QWidget | None) -> bool:
    """Whether keys typed on ``widget`` are text for it (never to be taken by a shortcut).

    Parameters
    ----------
    widget : QWidget or None
        Usually :meth:`QApplication.focusWidget`.

    Returns
    -------
    bool
        True for an editable line edit, text edit, plain text edit, spin box or combo box,
        and any other widget that accepts input-method text except item views (a table,
        a list: their cell editors are line edits); False for None.
    """
    if widget is None:
        return False
    try:
        if isinstance(widget, (QLineEdit, QTextEdit, QPlainTextEdit, QAbstractSpinBox)):
            return not widget.isReadOnly()
        if isinstance(widget, QComboBox):
            return widget.isEditable()
        if isinstance(widget, QAbstractItemView):
            # Views enable input methods for keyboard search and editors; their cell
            # editor, when one is open, is a line edit (or spin box) with focus.
            return False
        return bool(widget.testAttribute(Qt.WidgetAttribute.WA_InputMethodEnabled))
    except RuntimeError:  # the C++ widget is gone
        return False


def _event_sequence(event) -> str:
    """The key sequence text (``"Shift+W"``) of a key event, keypad flag left out."""
    mods = event.modifiers() & _MODIFIER_MASK
    try:
        from qtpy.QtCore import QKeyCombination  # Qt 6
    except ImportError:  # Qt 5
        return QKeySequence(int(mods) | int(event.key())).toString()
    return QKeySequence(QKeyCombination(mods, Qt.Key(event.key()))).toString()


def _alive(obj) -> bool:
    """Whether the C++ object behind a Qt wrapper still exists."""
    if obj is None:
        return False
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


class _Filter(QObject):
    """Event filter on the canvas' native widget and on the panel.

    On the canvas: gives it focus when the mouse enters (never consumes the event). On the
    panel: stops the panel's keys that a text input ignored (a line edit ignores Return
    and Escape) before napari's dock widget forwards them to the viewer's key dispatch.
    A child of the panel, so it lives as long as the panel and keeps its
    :class:`PanelShortcuts` alive; Qt drops it from the watched widgets when either goes.
    """

    def __init__(self, owner: PanelShortcuts, parent: QObject):
        super().__init__(parent)
        self.owner = owner

    def eventFilter(self, obj, event):  # noqa: N802 (Qt override)
        """Dispatch Enter events of the canvas and key presses reaching the panel."""
        owner = self.owner
        if owner is None:
            return False
        try:
            etype = event.type()
            if etype == QEvent.Type.Enter:
                if obj is owner._canvas():
                    owner._on_canvas_enter()
            elif etype == QEvent.Type.KeyPress and obj is owner._panel():
                return owner._swallow_text_key(event)
        except RuntimeError:  # widgets deleted while the window closes
            pass
        return False


class PanelShortcuts:
    """The panel's keys, whether focus is on the canvas, in the panel or elsewhere.

    Installs (1) an event filter that gives napari's canvas focus when the mouse enters it
    (unless a text input or the console has focus), so napari's key dispatch and the
    prompt layers' ``bind_key`` bindings receive the keys with the mouse over the canvas,
    (2) ``Qt.WidgetWithChildrenShortcut`` shortcuts on ``panel`` that call ``actions``
    while focus is in the panel, except on a text input of the panel, and (3) an event
    filter on ``panel`` that keeps the panel's keys ignored by one of its text inputs
    (Return, Escape in a line edit) from napari's dock widget, which would pass them on to
    the layer bindings.

    The object keeps itself alive as long as ``panel`` (there is no need to hold a
    reference) and removes everything when the panel is destroyed; :meth:`close` removes
    it earlier. Nothing fails after the viewer's window is closed.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose canvas gets focus on mouse entry. A viewer without a Qt window
        (a bare ``ViewerModel``) gets the panel shortcuts only.
    panel : QWidget
        The dock widget; the shortcuts are active while focus is on it or inside it.
    actions : mapping of str to callable
        napari key string (``"c"``, ``"Enter"``, ``"Escape"``, ``"Control-z"``,
        ``"Shift-w"``...) -> callable without arguments. Its result is ignored.
    enabled : callable, optional
        Called at each key press and mouse entry; while it returns False the panel keys do
        nothing and the canvas does not take focus (for a panel without an image).

    Raises
    ------
    ValueError
        If a key string is not understood or two key strings give the same Qt sequence.

    Notes
    -----
    Keys typed while the canvas has focus are napari's to dispatch: keep the layer
    bindings (``layer.bind_key``) for the same keys. They are never both called for one
    key press: the panel's shortcuts are in context only with focus inside the panel,
    where the canvas gets no key events, and a shortcut consumes the key it matches.
    Shortcuts do not auto-repeat (napari's ``bind_key`` bindings ignore auto-repeat too).
    While ``enabled()`` is False a panel key pressed on a non-text widget of the panel is
    still taken by its shortcut (and does nothing).
    """

    def __init__(
        self,
        viewer,
        panel: QWidget,
        actions: Mapping[str, Callable[[], object]],
        enabled: Callable[[], bool] = lambda: True,
    ):
        self._actions = dict(actions)
        self._enabled = enabled
        self._panel_ref = weakref.ref(panel)
        self._closed = False
        # All keys checked before anything is installed.
        seen: dict[str, str] = {}
        sequences: list[tuple[str, QKeySequence]] = []
        for key in self._actions:
            for seq in key_sequences(key):
                text = seq.toString()
                if text in seen:
                    raise ValueError(f"{key!r} and {seen[text]!r} are both {text}")
                seen[text] = key
                sequences.append((key, seq))
        self._sequences = set(seen)
        self._shortcuts: list[QShortcut] = []
        for key, seq in sequences:
            sc = QShortcut(seq, panel)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.setAutoRepeat(False)
            sc.activated.connect(partial(self._fire, key))
            self._shortcuts.append(sc)

        self._filter = _Filter(self, panel)
        panel.installEventFilter(self._filter)
        # The canvas' native widget, held weakly (it belongs to the viewer's window).
        self._canvas_ref = None
        qt_viewer = _qt_viewer(viewer)
        if qt_viewer is not None:
            native = qt_viewer.canvas.native
            self._canvas_ref = weakref.ref(native)
            native.installEventFilter(self._filter)
            # Never create napari's console dock here: only look at one already made.
            self._qt_viewer_ref = weakref.ref(qt_viewer)
        else:
            self._qt_viewer_ref = None

        app = QApplication.instance()
        self._app_ref = weakref.ref(app)
        app.focusChanged.connect(self._on_focus_changed)
        panel.destroyed.connect(self._on_panel_destroyed)
        self._on_focus_changed(None, QApplication.focusWidget())

    # -- state -------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """The napari key strings handled, in the order given."""
        return list(self._actions)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the panel was destroyed)."""
        return self._closed

    def close(self) -> None:
        """Remove the shortcuts and the canvas filter; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        app = self._app_ref()
        if app is not None:
            try:
                app.focusChanged.disconnect(self._on_focus_changed)
            except (RuntimeError, TypeError):
                pass
        filt = self._filter
        if _alive(filt):
            filt.owner = None
            for widget in (self._canvas(), self._panel()):
                if _alive(widget):
                    widget.removeEventFilter(filt)
            filt.deleteLater()
        for sc in self._shortcuts:
            if _alive(sc):
                sc.setEnabled(False)
                sc.setParent(None)
                sc.deleteLater()
        self._shortcuts = []
        self._filter = None

    # -- callbacks ---------------------------------------------------------------------

    def _on_panel_destroyed(self, *_):
        # The shortcuts and the filter went with the panel; only the app connection is left.
        self._shortcuts = []
        self._filter = None
        self.close()

    def _canvas(self) -> QWidget | None:
        return self._canvas_ref() if self._canvas_ref is not None else None

    def _panel(self) -> QWidget | None:
        return self._panel_ref()

    def _swallow_text_key(self, event) -> bool:
        """Whether to stop a key press that reached the panel unhandled: one of the panel's
        keys, ignored by the text input that has focus (napari's dock widget would pass
        it on to the viewer's key bindings, so Enter in a field would commit)."""
        if self._closed or not is_text_input(QApplication.focusWidget()):
            return False
        if _event_sequence(event) not in self._sequences:
            return False
        event.accept()
        return True

    def _is_enabled(self) -> bool:
        return not self._closed and bool(self._enabled())

    def _on_focus_changed(self, _old, new) -> None:
        """Shortcuts on while focus is not on a text input (their context does the rest)."""
        if self._closed:
            return
        on = not is_text_input(new)
        for sc in self._shortcuts:
            try:
                if sc.isEnabled() != on:
                    sc.setEnabled(on)
            except RuntimeError:  # the panel (and its shortcuts) are being destroyed
                return

    def _fire(self, key: str) -> None:
        if not self._is_enabled() or is_text_input(QApplication.focusWidget()):
            return
        self._actions[key]()

    def _protects_focus(self, widget: QWidget | None) -> bool:
        """Whether ``widget`` keeps focus when the mouse enters the canvas."""
        if widget is None or not _alive(widget):
            return False
        if is_text_input(widget):
            return True
        qt_viewer = self._qt_viewer_ref() if self._qt_viewer_ref is not None else None
        console_dock = getattr(qt_viewer, "_dockConsole", None) if _alive(qt_viewer) else None
        return _alive(console_dock) and (
            widget is console_dock or console_dock.isAncestorOf(widget))

    def _on_canvas_enter(self) -> None:
        canvas = self._canvas()
        if not _alive(canvas) or not self._is_enabled():
            return
        if QApplication.activePopupWidget() is not None:
            return
        if QApplication.activeModalWidget() is not None:
            return
        if not canvas.isVisible() or canvas.focusPolicy() == Qt.FocusPolicy.NoFocus:
            return
        focus = QApplication.focusWidget()
        window_focus = canvas.window().focusWidget()
        if focus is canvas or (focus is None and window_focus is canvas):
            return
        if self._protects_focus(focus) or self._protects_focus(window_focus):
            return
        canvas.setFocus(Qt.FocusReason.MouseFocusReason)


def _qt_viewer(viewer):
    """napari's QtViewer of ``viewer``, or None without a Qt window."""
    window = getattr(viewer, "window", None)
    qt_viewer = getattr(window, "_qt_viewer", None)
    if qt_viewer is None or getattr(getattr(qt_viewer, "canvas", None), "native", None) is None:
        return None
    return qt_viewer
