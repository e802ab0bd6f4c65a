"""The "Propagate" tab of the dock widget: one object through a z-stack or a movie.

The view of a :class:`~.propagation_controller.PropagationController` (the run, its outcome and
its commit live there, without Qt):

- the object is the current preview (or the prompts) on the slice you look at, or a label
  already committed in the target Labels layer;
- the stack runs along one leading axis of the image (default: the first one that is not
  the channel axis; for a 2D+t movie ``(T, Y, X)`` that is time); every other leading axis
  stays at the position shown;
- a progress bar counts the slices decided, during the run ``done / at most total`` (as
  napari's activity panel), afterwards the slices done, the number the status line gives;
- a per-slice table (slice, status, score, area, note) jumps to a slice when clicked;
  *Weakest slice* shows the kept slice with the lowest score; after correcting a slice (new
  clicks, or napari's brush on a committed label) *Re-propagate from this slice* recomputes
  only the slices it affects;
- when an action does nothing (Shift+P with nothing to propagate, ...) the reason is shown
  in the tab, on the dock's status line and as a notification.
"""

from __future__ import annotations

import math
from dataclasses import fields

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .propagation_controller import PropagationController
from .propagation_run import Outcome, RunProgress, RunRequest
from .section import Section

__all__ = ["PropagationPanel", "SOURCES", "TABLE_COLUMNS", "record_row"]

#: Where the object to propagate comes from: key -> combo box text.
SOURCES = {
    "preview": "current preview / prompts",
    "label": "label of the target Labels layer",
}
TABLE_COLUMNS = ("slice", "status", "score", "area", "note")
#: The progress bar's text by :attr:`RunProgress.state` (``%v`` done, ``%m`` the maximum).
PROGRESS_FORMATS = {
    "idle": "",
    "preparing": "preparing...",
    "running": "%v / %m slices",
    "done": "%v slices done",
    "cancelled": "cancelled after %v slices",
}


def _settings_defaults() -> dict:
    """The workflow's own defaults (never restated here)."""
    from napari_edgesam.workflows.propagation import PropagationSettings

    return {f.name: f.default for f in fields(PropagationSettings)}


def record_row(rec) -> tuple[str, str, str, str, str]:
    """The table's texts for one record.

    Parameters
    ----------
    rec : SliceRecord
        One slice of a propagation result.

    Returns
    -------
    tuple of str
        Slice index, status (``"annotated"``, ``"kept"``, ``"stopped"``), score (3
        decimals, ``"-"`` when undefined), area in pixels, note (direction and origin, or
        the stop reason).
    """
    if rec.source == "annotation":
        status, note = "annotated", ""
    elif rec.accepted:
        status = "kept"
        note = f"{'up' if rec.direction > 0 else 'down'} from {rec.origin}"
    else:
        status, note = "stopped", rec.reason or ""
    score = "-" if math.isnan(rec.score) else f"{rec.score:.3f}"
    return str(rec.z), status, score, str(rec.area), note


def _threshold_spin(lo: float, hi: float, step: float, value: float, tip: str):
    sp = QDoubleSpinBox()
    sp.setRange(lo, hi)
    sp.setSingleStep(step)
    sp.setDecimals(2)
    sp.setValue(value)
    sp.setToolTip(tip)
    return sp


class PropagationPanel(QWidget):
    """Propagate one object through the stack of the dock widget's image.

    Parameters
    ----------
    dock : EdgeSamWidget
        Used through its public API (``session``, ``viewer``, ``start_worker``,
        ``notify_error``, ``set_status``, ``prefetcher``).

    Public API (tests, scripts)::

        panel = widget.propagation
        panel.source = "preview" | "label"; panel.label = 3
        panel.stack_axis = 0; panel.set_z_range(5, 40)
        panel.min_score, panel.min_overlap, panel.max_growth   # the thresholds
        panel.propagate()            # starts the worker (Shift+P)
        panel.cancel()               # stops at once (partial result kept)
        panel.commit()               # one undo step -> label id (Shift+C)
        panel.discard()
        panel.repropagate()          # after correcting the current slice
        panel.jump_to_weakest()      # -> slice index (Shift+W)
        panel.busy, panel.pending, panel.result, panel.records, panel.message
        panel.controller             # the PropagationController (no Qt)
    """

    def __init__(self, dock):
        super().__init__(dock)
        self._dock = dock
        self.controller = c = PropagationController(dock)
        self._image_key = None
        self._row_z: list = []
        self._build_ui()
        c.progress_changed.connect(self._show_progress)
        c.outcome_changed.connect(self._on_outcome)
        c.state_changed.connect(self._update_buttons)
        c.message_changed.connect(self._show_message)
        dock.session.model_changed.connect(self._on_model_changed)
        self.refresh_image()

    # -- UI -------------------------------------------------------------------------------
    def _build_ui(self):
        top = QVBoxLayout(self)
        top.setContentsMargins(4, 4, 4, 4)
        self.note_label = QLabel("")
        self.note_label.setWordWrap(True)
        top.addWidget(self.note_label)
        self._body = QWidget()  # disabled for images without a stack axis
        top.addWidget(self._body, 1)
        outer = QVBoxLayout(self._body)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addLayout(self._build_form())
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip("Follow the object up and down the stack (Shift+P)")
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button = QPushButton("Commit")
        self.commit_button.setToolTip("Write the result into the Labels layer as one undo "
                                      "step (Shift+C)")
        self.commit_button.clicked.connect(self.commit)
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(self.discard)
        for pair in ((self.propagate_button, self.cancel_button),
                     (self.commit_button, self.discard_button)):
            brow = QHBoxLayout()
            for b in pair:
                brow.addWidget(b)
            outer.addLayout(brow)
        self.message_label = QLabel("")  # why the last action did nothing
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setVisible(False)
        outer.addWidget(self.message_label)
        self.progress = QProgressBar()
        self._show_progress(RunProgress())  # hidden until the first run
        outer.addWidget(self.progress)
        outer.addWidget(self._build_table(), 1)  # the table gets the room
        rrow = QHBoxLayout()
        self.weakest_button = QPushButton("Weakest slice")
        self.weakest_button.setToolTip("Show the slice with the lowest score (Shift+W)")
        self.weakest_button.clicked.connect(self.jump_to_weakest)
        self.repropagate_button = QPushButton("Re-propagate")
        self.repropagate_button.setToolTip(
            "Re-propagate from this slice: after correcting the object on the slice you look "
            "at (new clicks, or napari's brush on the committed label), recompute only the "
            "slices this affects"
        )
        self.repropagate_button.clicked.connect(self.repropagate)
        rrow.addWidget(self.weakest_button)
        rrow.addWidget(self.repropagate_button)
        outer.addLayout(rrow)
        from superqt import QElidingLabel

        # two lines at most, elided: the table keeps the room; the whole text in the tooltip
        self.summary_label = QElidingLabel("")
        self.summary_label.setWordWrap(True)
        line = self.fontMetrics().lineSpacing()
        self.summary_label.setFixedHeight(2 * line + 4)
        self.summary_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        outer.addWidget(self.summary_label)
        self._on_source()
        self._update_buttons()

    def _build_form(self) -> QFormLayout:
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.source_combo = QComboBox()
        for key, text in SOURCES.items():
            self.source_combo.addItem(text, key)
        self.source_combo.setToolTip(
            "The object on the slice you look at: the yellow preview of your clicks, or a "
            "label already in the target Labels layer"
        )
        self.source_combo.currentIndexChanged.connect(self._on_source)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 2**31 - 1)
        self.label_spin.setToolTip("The label to propagate (default: the layer's selected label)")
        row = QHBoxLayout()
        row.addWidget(self.source_combo, 1)
        row.addWidget(self.label_spin)
        form.addRow("object", row)
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip(
            "The axis the stack runs along: z for a z-stack, t for a 2D+t movie. Other "
            "axes stay where the sliders are."
        )
        self.axis_combo.currentIndexChanged.connect(self._on_axis)
        form.addRow("along", self.axis_combo)
        self.z_from = QSpinBox()
        self.z_to = QSpinBox()
        for sp in (self.z_from, self.z_to):
            sp.setToolTip("z-limits: propagation never goes beyond them (inclusive)")
        zrow = QHBoxLayout()
        zrow.addWidget(self.z_from)
        zrow.addWidget(QLabel("to"))
        zrow.addWidget(self.z_to)
        zrow.addStretch(1)
        form.addRow("slices", zrow)
        defaults = _settings_defaults()
        self.min_score_spin = _threshold_spin(
            0.0, 1.0, 0.05, defaults["min_score"],
            "Stop where the mask's stability score falls below this")
        self.min_overlap_spin = _threshold_spin(
            0.0, 1.0, 0.05, defaults["min_overlap"],
            "Stop where the mask overlaps the previous slice's by less than this (overlap "
            "coefficient); lower it for fast-moving objects in movies")
        self.max_growth_spin = _threshold_spin(
            1.0, 100.0, 0.1, defaults["max_growth"],
            "Stop where the area grows more than this factor from one slice to the next")
        # the stop rules fold away (folded by default): the result table gets the room
        rules = QWidget()
        rform = QFormLayout(rules)
        rform.setContentsMargins(0, 0, 0, 0)
        rform.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        for text, sp in (("min score", self.min_score_spin),
                         ("min overlap", self.min_overlap_spin),
                         ("max growth", self.max_growth_spin)):
            label = QLabel(text)
            label.setToolTip(sp.toolTip())
            rform.addRow(label, sp)
        self.rules_section = Section("stop rules", rules, expanded=False)
        self.rules_section.setToolTip("Where a propagation stops: score, overlap with the "
                                      "previous slice, area growth")
        form.addRow(self.rules_section)
        return form

    def _build_table(self) -> QTableWidget:
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(160)
        self.table.setToolTip("Click a row to show that slice")
        self.table.cellClicked.connect(self._on_row_clicked)
        return self.table

    # -- properties -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a run is being prepared or runs."""
        return self.controller.busy

    @property
    def pending(self) -> bool:
        """Whether a result waits to be committed (or discarded)."""
        return self.controller.pending

    @property
    def result(self):
        """The shown ``PropagationResult`` (pending, else the last committed), or None."""
        return self.controller.result

    @property
    def records(self) -> list:
        """The shown result's per-slice records (``SliceRecord``), sorted by slice."""
        return self.controller.records

    @property
    def message(self) -> str:
        """Why the last action did nothing (shown in the tab), or ``""``."""
        return self.controller.message

    @property
    def last_label(self) -> int | None:
        """The label id of the last commit."""
        return self.controller.last_label

    @property
    def source(self) -> str:
        return self.source_combo.currentData()

    @source.setter
    def source(self, value: str):
        i = self.source_combo.findData(value)
        if i < 0:
            raise ValueError(f"unknown source {value!r}; one of {list(SOURCES)}")
        self.source_combo.setCurrentIndex(i)

    @property
    def label(self) -> int:
        return int(self.label_spin.value())

    @label.setter
    def label(self, value: int):
        self.label_spin.setValue(int(value))

    @property
    def stack_axis(self) -> int | None:
        """The image's leading axis the stack runs along (None: the image has no stack)."""
        return self.axis_combo.currentData()

    @stack_axis.setter
    def stack_axis(self, axis: int):
        i = self.axis_combo.findData(int(axis))
        if i < 0:
            raise ValueError(f"axis {axis} is not a stack axis of the image")
        self.axis_combo.setCurrentIndex(i)

    @property
    def z_range(self) -> tuple[int, int]:
        """Inclusive slice limits along :attr:`stack_axis`, low first."""
        lo, hi = self.z_from.value(), self.z_to.value()
        return (lo, hi) if lo <= hi else (hi, lo)

    def set_z_range(self, lo: int, hi: int):
        self.z_from.setValue(int(lo))
        self.z_to.setValue(int(hi))

    @property
    def min_score(self) -> float:
        return float(self.min_score_spin.value())

    @min_score.setter
    def min_score(self, v: float):
        self.min_score_spin.setValue(float(v))

    @property
    def min_overlap(self) -> float:
        return float(self.min_overlap_spin.value())

    @min_overlap.setter
    def min_overlap(self, v: float):
        self.min_overlap_spin.setValue(float(v))

    @property
    def max_growth(self) -> float:
        return float(self.max_growth_spin.value())

    @max_growth.setter
    def max_growth(self, v: float):
        self.max_growth_spin.setValue(float(v))

    def settings(self):
        """The run's :class:`PropagationSettings`: the workflow's defaults except the
        thresholds set in the panel."""
        from napari_edgesam.workflows.propagation import PropagationSettings

        return PropagationSettings(min_score=self.min_score, min_overlap=self.min_overlap,
                                   max_growth=self.max_growth)

    # -- image changes --------------------------------------------------------------------
    def refresh_image(self):
        """Update the axis choice and z-limits for the dock's image (and channel axis)."""
        s = self._dock.session
        geom = s.geometry
        layer = s.image_layer
        axes = [] if geom is None else [
            i for i in range(len(geom.leading_shape)) if i != geom.channel_axis]
        key = None if layer is None else (layer.unique_id, geom.shape, geom.channel_axis)
        if key == self._image_key and self.axis_combo.count() == len(axes):
            return
        self._image_key = key
        current = self.axis_combo.currentData()
        self.axis_combo.blockSignals(True)
        self.axis_combo.clear()
        for i in axes:
            self.axis_combo.addItem(f"axis {i} ({geom.shape[i]} slices)", i)
        idx = self.axis_combo.findData(current) if current is not None else -1
        self.axis_combo.setCurrentIndex(max(idx, 0) if axes else -1)
        self.axis_combo.blockSignals(False)
        self._on_axis(reset=True)
        if not axes:
            self.note_label.setText(
                "Propagation needs a stack: an image with a z or t axis (3D, 2D+t).")
            self.note_label.setVisible(True)
        else:  # the how-to goes into the tooltip: the result table gets the room
            self.note_label.setVisible(False)
        self.setToolTip(
            "Propagate the object you see on this slice (its preview, or a committed label) "
            "up and down the stack; check the result, then commit it.")
        self._update_buttons()

    def _on_axis(self, *_, reset: bool = True):
        geom = self._dock.session.geometry
        axis = self.axis_combo.currentData()
        n = 1 if geom is None or axis is None else geom.shape[axis]
        for sp in (self.z_from, self.z_to):
            sp.setRange(0, max(0, n - 1))
        if reset:
            self.set_z_range(0, n - 1)

    def _on_source(self, *_):
        is_label = self.source == "label"
        self.label_spin.setVisible(is_label)
        layer = self._dock.session.labels_layer
        if is_label and layer is not None and layer.selected_label > 0:
            self.label_spin.setValue(int(layer.selected_label))

    def _show_message(self, text: str):
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))  # no empty line taking the table's room

    def _on_model_changed(self, *_):
        self.controller.reset_progress()  # the last run's count belongs to the old model

    def _update_buttons(self):
        c = self.controller
        running = c.busy
        has_stack = self.axis_combo.count() > 0
        self._body.setEnabled(has_stack or c.pending or c.committed is not None)
        self.propagate_button.setEnabled(has_stack and not running)
        self.cancel_button.setEnabled(running)
        self.commit_button.setEnabled(c.pending and not running)
        self.discard_button.setEnabled(c.pending and not running)
        self.weakest_button.setEnabled(bool(c.records))
        self.repropagate_button.setEnabled(
            not running and (c.pending or c.committed is not None))

    def _show_progress(self, p: RunProgress):
        bar = self.progress
        bar.setFormat(PROGRESS_FORMATS[p.state])
        if p.state == "preparing":
            bar.setRange(0, 0)  # busy indicator: the slice count is not known yet
        elif p.state == "running":
            bar.setRange(0, max(1, p.total))
        else:  # idle, done, cancelled: the maximum is what was done
            bar.setRange(0, max(1, p.done))
        bar.setValue(p.done)
        bar.setVisible(p.state != "idle")
        if p.state == "preparing":
            self.summary_label.setText("")  # a new run: the last summary no longer applies

    # -- actions --------------------------------------------------------------------------
    def propagate(self):
        """Start propagating the object on the current slice (Shift+P). Returns the worker,
        or None when nothing could start (the reason is shown)."""
        return self.controller.propagate(RunRequest(
            self.source, self.label, self.stack_axis, self.z_range, self.settings()))

    def repropagate(self):
        """Apply a correction made on the current slice and recompute only the slices it
        affects (see :meth:`.propagation_controller.PropagationController.repropagate`)."""
        return self.controller.repropagate(self.settings())

    def cancel(self):
        """Stop the run at once; the partial (consistent) result is kept as pending."""
        self.controller.cancel()

    def commit(self):
        """Write the pending result into the Labels layer as ONE undo step (Shift+C);
        returns the label id, or None."""
        return self.controller.commit()

    def discard(self):
        """Drop the pending result (nothing was written) and reset the progress bar."""
        self.controller.discard()

    def overlay(self, image_layer, lead):
        """``(bool crop, (row0, col0))`` of the running or pending result on slice ``lead``
        of ``image_layer``, or None (the session's ``overlay``)."""
        return self.controller.overlay(image_layer, lead)

    def on_layer_removed(self, layer):
        self.controller.on_layer_removed(layer)

    # -- read-out -------------------------------------------------------------------------
    def _on_outcome(self):
        out = self.controller.shown
        self._fill_table(out)
        text = "" if out is None else out.summary()
        self.summary_label.setText(text)
        self.summary_label.setToolTip(text)

    def _fill_table(self, out: Outcome | None):
        self.table.setRowCount(0)
        self._row_z = []
        recs = [] if out is None else out.records
        self.table.setRowCount(len(recs))
        for row, rec in enumerate(recs):
            for col, text in enumerate(record_row(rec)):
                item = QTableWidgetItem(text)
                if col in (0, 2, 3):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(row, col, item)
            self._row_z.append(rec.z)
        self._update_buttons()

    def _on_row_clicked(self, row, _col=0):
        if self.controller.shown is None or not 0 <= row < len(self._row_z):
            return
        self.go_to(self._row_z[row])

    def go_to(self, z: int):
        """Show slice ``z`` of the shown result's stack (and select its table row)."""
        out = self.controller.shown
        if out is None:
            return
        if z in self._row_z:
            self.table.selectRow(self._row_z.index(z))
        s = self._dock.session
        if s.image_layer is out.ctx.image_layer:
            s.go_to_slice(out.ctx.axis, z)

    def weakest_slice(self) -> int | None:
        """The kept propagated slice with the lowest score (None without one)."""
        return self.controller.weakest_slice()

    def jump_to_weakest(self):
        """Show the weakest slice (Shift+W); returns its index or None."""
        z = self.weakest_slice()
        if z is None:
            self.controller.refuse("no propagated slice to show (propagate first).")
            return None
        self.go_to(z)
        rec = next(r for r in self.records if r.z == z)
        self._dock.set_status(
            f"Weakest slice: {z} (score {rec.score:.3f}). Correct it with clicks and press "
            "'Re-propagate from this slice'.")
        return z

    def shutdown(self):
        """Stop a running propagation and stop listening (the dock is going away)."""
        try:
            self._dock.session.model_changed.disconnect(self._on_model_changed)
        except (TypeError, ValueError, RuntimeError):
            pass
        self.controller.shutdown()
