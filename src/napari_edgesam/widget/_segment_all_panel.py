"""The "Segment all" tab of the dock widget: every object of the slice (or the stack) at
once, then corrections by clicks. A thin view over :class:`.segment_all.SegmentAll`."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .segment_all import SegmentAll


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
        self.cancel_button.clicked.connect(self.controller.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        lay.addStretch(1)
        self.session.image_changed.connect(lambda *_: self._sync())
        self._sync()

    @property
    def busy(self) -> bool:
        """Whether a run is in progress."""
        return self.controller.busy

    def run(self):
        """Start *Segment all* with the tab's settings; returns the worker or None."""
        from napari_edgesam.workflows.automatic import AutoParams

        params = AutoParams(object_size=float(self.size_spin.value()))
        return self.controller.start(params, whole_stack=self.stack_check.isChecked())

    def _sync(self):
        busy = self.controller.busy
        self.run_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.stack_check.setEnabled(self.controller.stack_keys() is not None)
