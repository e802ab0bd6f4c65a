"""The "All" tab of the dock widget: every object of the slice (or the stack) at once, then
corrections by clicks; and an existing Labels layer refined with EdgeSAM. A thin view over
:class:`.segment_all.SegmentAll` and :class:`.refine_labels.RefineLabels`."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .refine_labels import RefineLabels
from .segment_all import SegmentAll

#: Columns of the refine table.
COLUMNS = ("id", "old", "new", "IoU", "score")


class SegmentAllPanel(QWidget):
    """Object size, scope (this slice / the whole stack), Run and Cancel.

    Parameters
    ----------
    dock : EdgeSamWidget
        Only its ``session`` is used.
    """

    def __init__(self, dock):
        super().__init__()
        self.controller = SegmentAll(dock.session, self._sync)
        self.session = dock.session
        lay = QVBoxLayout(self)
        intro = QLabel("Find every object without clicks, then correct by clicking: the "
                       "result is one undo step in the target Labels layer.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        form = QFormLayout()
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(3.0, 2000.0)
        self.size_spin.setValue(30.0)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Typical object diameter in image pixels")
        form.addRow("object size", self.size_spin)
        self.stack_check = QCheckBox("whole stack (linked in 3D)")
        self.stack_check.setToolTip("Every slice of the stack, objects linked between "
                                    "slices; else only the slice shown")
        form.addRow(self.stack_check)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Segment all")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)

        intro = QLabel("Refine the objects of a Labels layer (another tool's, or a "
                       "threshold's) on this slice: each one's box and centre prompt "
                       "EdgeSAM; review, then accept as one undo step.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        self.refiner = RefineLabels(dock.session, self._sync)
        self._shown = None  # the refine proposal shown in the table
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Labels layer whose objects are refined (in place, "
                                    "ids kept)")
        self.refine_button = QPushButton("Refine")
        self.refine_button.clicked.connect(lambda: self.refine())
        rrow = QHBoxLayout()
        rrow.addWidget(self.layer_combo, 1)
        rrow.addWidget(self.refine_button)
        lay.addLayout(rrow)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(160)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)  # no sideways scroll
        header.setMinimumSectionSize(20)
        lay.addWidget(self.table, 1)
        arow = QHBoxLayout()
        self.accept_button = QPushButton("Accept ticked")
        self.accept_button.setToolTip("Replace the ticked objects (ticked: score >= "
                                      f"{RefineLabels.MIN_SCORE}) by their refined masks")
        self.accept_button.clicked.connect(lambda: self.accept())
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(self.refiner.discard)
        arow.addWidget(self.accept_button)
        arow.addWidget(self.discard_button)
        lay.addLayout(arow)
        self.session.image_changed.connect(lambda *_: self._sync())
        self.session.layers_changed.connect(lambda *_: self._sync_layers())
        self._sync_layers()
        self._sync()

    def _sync_layers(self):
        from napari.layers import Labels

        current = self.layer_combo.currentData()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in self.session.viewer.layers:
            if isinstance(layer, Labels) and not layer.name.startswith("EdgeSAM"):
                self.layer_combo.addItem(layer.name, layer)
        if current is not None:
            index = self.layer_combo.findData(current)
            if index >= 0:
                self.layer_combo.setCurrentIndex(index)
        self.layer_combo.blockSignals(False)

    def refine(self, layer=None):
        """Refine the objects of ``layer`` (default: the one chosen) on the current slice;
        returns the worker or None."""
        return self.refiner.start(layer if layer is not None else
                                  self.layer_combo.currentData())

    def ticked(self) -> list[int]:
        """The ids ticked in the table."""
        out = []
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(int(item.text()))
        return out

    def accept(self) -> int:
        """Accept the ticked objects; returns the pixels changed."""
        return self.refiner.accept(self.ticked())

    @property
    def busy(self) -> bool:
        """Whether a run (segment all or refine) is in progress."""
        return self.controller.busy or self.refiner.busy

    def cancel(self):
        """Stop the running *Segment all* or *Refine* (nothing is written)."""
        self.controller.cancel()
        self.refiner.cancel()

    def run(self):
        """Start *Segment all* with the tab's settings; returns the worker or None."""
        from napari_edgesam.workflows.automatic import AutoParams

        params = AutoParams(object_size=float(self.size_spin.value()))
        return self.controller.start(params, whole_stack=self.stack_check.isChecked())

    def _sync(self):
        busy = self.controller.busy
        self.run_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy or self.refiner.busy)
        self.stack_check.setEnabled(self.controller.stack_keys() is not None)
        pending = self.refiner.pending or []
        self.refine_button.setEnabled(not self.refiner.busy)
        self.accept_button.setEnabled(bool(pending))
        self.discard_button.setEnabled(bool(pending))
        if self.refiner.pending is self._shown:  # the user's ticks stay as they are
            return
        self._shown = self.refiner.pending
        self.table.setRowCount(len(pending))
        for row, o in enumerate(pending):
            cells = (str(o.label), str(o.old_area), str(o.new_area), f"{o.iou:.2f}",
                     f"{o.score:.2f}")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    item.setCheckState(Qt.CheckState.Checked if o.confident
                                       else Qt.CheckState.Unchecked)
                self.table.setItem(row, col, item)
