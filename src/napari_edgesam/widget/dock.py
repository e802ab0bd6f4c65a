"""The "EdgeSAM" dock widget: layout and wiring.

The panel is a view over an :class:`~.session.AnnotationSession` (the interactive state:
image, slice, model, embedding, prompts, preview, commits; see :mod:`.session`,
:mod:`.clicks` for what a click does and :mod:`.commit` for how a mask reaches Labels with
undo). Sections: the model (:mod:`.model_picker`), the image and contrast, the target
Labels layer with Commit / Clear / Undo / Redo, and two tabs, propagation through stacks
(:mod:`._propagation_panel`) and batch segmentation of files (:mod:`._batch_panel`).
Work runs in worker threads (:mod:`.workers`); the GUI thread never runs the model.

Designed for a 1280 x 800 window: narrow, the sections collapse, the key help is behind
the "?" button, and the status line is one elided line (the full text in its tooltip).

Public API (also used by the tests)::

    w = EdgeSamWidget(viewer)
    w.session                      # the AnnotationSession: set_model, set_image_layer,
                                   # add_point, set_box, preview_mask, labels_layer, ...
    w.commit(); w.undo(); w.redo(); w.clear_prompts()
    w.propagate(); w.commit_propagation(); w.jump_to_weakest_slice()   # Shift+P/C/W
    w.busy, w.status, w.model_picker, w.propagation, w.batch
    w.autosave                     # AutosaveController: autosave_now(), offer, restore
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import workers
from .section import Section
from .session import MAPPING_MODES, AnnotationSession

__all__ = ["HELP_TEXT", "NEW_LABELS", "EdgeSamWidget"]

NEW_LABELS = "new Labels layer"

HELP_TEXT = (
    "<b>Left click</b>: positive point<br><b>Right click</b> or <b>Ctrl/Alt+click</b>: "
    "negative point<br><b>Shift+drag</b>: box<br>"
    "<b>C</b> / <b>Enter</b>: commit as a new label<br><b>Esc</b> / <b>X</b>: clear "
    "prompts<br><b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b>: undo / redo<br>"
    "<b>Shift+P</b>: propagate through the stack<br><b>Shift+C</b>: commit the "
    "propagation<br><b>Shift+W</b>: weakest slice<br>"
    "<b>Shift+N</b> / <b>Shift+B</b>: next / previous image of the folder<br>"
    "<b>E</b>: edit mode (click: select an object, Shift+click: more; <b>Del</b>: delete, "
    "<b>M</b>: merge, <b>R</b>: re-segment, <b>Shift+M</b>: split, <b>Esc</b>: cancel)<br>"
    "Keys work with the mouse over the image or this panel."
)


def _compact(panel: QWidget) -> None:
    """Let buttons shrink to their text and combo boxes below their longest entry, so the
    panel stays narrow (full texts stay in the entries and tooltips)."""
    for button in panel.findChildren(QPushButton):
        button.setSizePolicy(QSizePolicy.Policy.Preferred, button.sizePolicy().verticalPolicy())
    for combo in panel.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(min(combo.minimumContentsLength() or 6, 8))


def _combo() -> QComboBox:
    """A combo box that never widens the panel for its longest entry."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(8)
    return combo


class EdgeSamWidget(QWidget):
    """napari dock widget for interactive segmentation with EdgeSAM.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it in).
    model : EdgeSamModel, optional
        A model to use right away (otherwise the one used last, or the default published
        model when its files are on this machine).
    """

    def __init__(self, napari_viewer, model=None, parent=None):
        super().__init__(parent)
        from ._batch_panel import BatchPanel
        from ._folder_panel import FolderPanel
        from ._propagation_panel import PropagationPanel
        from ._segment_all_panel import SegmentAllPanel
        from .model_picker import ModelPicker

        # npe2 hands plugins a PublicOnlyProxy of the viewer; identity checks between
        # layers need the real objects. The widget is trusted code using public API.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        alive = self._alive = {"alive": True}
        self._workers = workers.WorkerRunner(lambda: alive["alive"])
        self._starting = 0  # start_worker calls in progress
        self.session = s = AnnotationSession(self.viewer, self.start_worker, self, self)
        self.model_picker = ModelPicker(self.start_worker, s.notify_error)
        self.propagation = PropagationPanel(self)
        self.batch = BatchPanel(self)
        self.segment_all = SegmentAllPanel(self)
        self.folder = FolderPanel(self)
        s.overlay = self.propagation.overlay
        s.busy_sources += [lambda: self.propagation.busy, lambda: self.batch.busy,
                           lambda: self.segment_all.busy, lambda: self.folder.busy,
                           lambda: self.model_picker.busy]
        # a worker being started is not idle yet (napari's progress bar processes events
        # while it is made, before the caller holds its worker): no prefetch then
        s.busy_sources.append(lambda: self._starting > 0)
        self._build_ui()
        self._syncing = False
        s.status_changed.connect(self._show_status)
        s.image_changed.connect(self._sync_image)
        s.layers_changed.connect(self._sync_layers)
        s.model_changed.connect(self.model_picker.show_model)
        s.history_changed.connect(self._sync_history)
        s.layer_removed.connect(self.propagation.on_layer_removed)
        self.model_picker.model_loaded.connect(s.set_model)
        self.model_picker.status_changed.connect(self._on_picker_status)
        # viewer.close() destroys the window and this widget without a closeEvent: stop
        # the running work then (children such as timers are deleted after this signal)
        self.destroyed.connect(lambda *_: self._shutdown())
        from .prompt_layers import CORRECTION_KEYS, KEYS
        from .shortcuts import PanelShortcuts

        # keys with the mouse over the canvas or the panel, whatever has Qt focus (Delete
        # and Backspace of the corrections only over the canvas: napari's in the panel)
        keys = {k: getattr(self, m) for k, m in KEYS.items()}
        keys.update({k: getattr(s.corrections, m) for k, m in CORRECTION_KEYS.items()
                     if m != "delete"})
        self.shortcuts = PanelShortcuts(self.viewer, self, keys,
                                        enabled=lambda: s.image_layer is not None)
        from .autosave import AutosaveController

        # autosave of the target Labels layers, and the restore offer on reopening
        self.autosave = AutosaveController(s, self, self.start_worker,
                                           lambda: self.folder.controller)
        if model is not None:
            s.set_model(model)
        else:
            self.model_picker.restore_last()
        images = s.image_layers()
        if images:
            s.set_image_layer(images[-1])
        self._sync_image()
        self._sync_layers()
        self._sync_history()
        if s.model is None and not self.model_picker.busy and not self.status:
            self._show_status("No model yet: select EdgeSAM-3x and press Download, or "
                              "choose 'custom files...' for your own encoder/decoder pair.")

    #: The panel's width in a new window: napari's canvas keeps half of a 1280-px window
    #: beside napari's own docks (layer controls and list) and this panel.
    WIDTH = 260

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(self.WIDTH, super().sizeHint().height())

    # ------------------------------------------------------------------ layout ------
    def _build_ui(self):
        self.setObjectName("EdgeSamWidget")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.setSpacing(2)
        self.model_section = Section("Model", self.model_picker)
        outer.addWidget(self.model_section)

        page = QWidget()
        form = self._form(page)
        self.image_combo = _combo()
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        self.image_combo.setMinimumContentsLength(5)
        self.pin_check = QCheckBox("pin")
        self.pin_check.setToolTip(
            "Keep segmenting this image when you open another one (otherwise the image "
            "opened last becomes the panel's image; each image keeps its own prompts).")
        self.pin_check.toggled.connect(lambda v: setattr(self.session, "pinned", bool(v)))
        form.addRow("image", self._row(self.image_combo, self.pin_check))
        self.channel_axis_combo = _combo()
        self.channel_axis_combo.setToolTip(
            "For multichannel data kept in one layer: the axis that holds the channels")
        self.channel_axis_combo.currentIndexChanged.connect(self._on_channel_axis)
        self.channel_spin = QSpinBox()
        self.channel_spin.setToolTip("The channel the model sees")
        self.channel_spin.valueChanged.connect(self._on_channel)
        self._channel_row = self._row(self.channel_axis_combo, QLabel("ch"),
                                      self.channel_spin)
        self._channel_label = QLabel("channels")
        form.addRow(self._channel_label, self._channel_row)
        self.mapping_combo = _combo()
        for key, text in MAPPING_MODES.items():
            self.mapping_combo.addItem(text, key)
        self.mapping_combo.setToolTip(
            "How intensities become the model's 8-bit RGB input. Stack percentiles are "
            "computed over the whole stack so that neighbouring slices look alike.")
        self.mapping_combo.currentIndexChanged.connect(
            lambda i: self._guarded(self.session.set_mapping_mode,
                                    self.mapping_combo.itemData(i)))
        form.addRow("contrast", self.mapping_combo)
        self.tiles_check = QCheckBox("tiles")
        self.tiles_check.setToolTip(
            "Answer prompts from full-resolution tiles instead of the whole slice shrunk to "
            "1024 pixels: small objects in big images. On by default for images larger "
            "than 2048 pixels; only the tiles that prompts need are encoded.")
        self.tiles_check.toggled.connect(lambda v: self._guarded(self.session.set_tiles, v))
        self.prefetch_check = QCheckBox("prefetch")
        self.prefetch_check.setChecked(True)
        self.prefetch_check.setToolTip(
            "While you are idle, encode the neighbouring slices (or the tiles around your "
            "last click) in the background; stopped at once when you click.")
        self.prefetch_check.toggled.connect(
            lambda v: setattr(self.session.prefetcher, "enabled", bool(v)))
        self.optimized_check = QCheckBox("optimised")
        self.optimized_check.setToolTip(
            "Run the faster model variants made with 'napari-edgesam optimize' on your own "
            "images, only those whose masks agreed with the original model's there.")
        self.optimized_check.toggled.connect(self.session.set_optimized)
        form.addRow(self._row(self.tiles_check, self.prefetch_check, self.optimized_check,
                              stretch=True))  # speed options (each says what in its tooltip)
        self.image_section = Section("Image", page)
        outer.addWidget(self.image_section)

        page = QWidget()
        form = self._form(page)
        self.labels_combo = _combo()
        self.labels_combo.currentIndexChanged.connect(self._on_labels_combo)
        self.save_button = QPushButton("Save...")
        self.save_button.setToolTip("Save the target Labels layer as a TIFF and, beside it, "
                                    "the prompts of every committed object "
                                    "(<name>.prompts.json, for 'napari-edgesam replay')")
        self.save_button.clicked.connect(lambda: self.save_labels())
        form.addRow("target", self._row(self.labels_combo, self.save_button,
                                        first_stretch=True))
        self.background_only_check = QCheckBox("paint only on background")
        self.background_only_check.setToolTip("Keep existing labels: commits fill only "
                                              "unlabelled pixels.")
        self.background_only_check.setChecked(True)
        self.background_only_check.toggled.connect(
            lambda v: setattr(self.session, "paint_background_only", bool(v)))
        # corrections (widget/corrections.py): the edit mode's toggle, E over the canvas
        self.edit_button = QToolButton()  # as tall as the check box: the tabs keep room
        self.edit_button.setText("Edit (E)")
        self.edit_button.setCheckable(True)
        self.edit_button.setToolTip(
            "Edit mode: a click selects an object of the target Labels layer (Shift+click: "
            "more); Del deletes, M merges, R re-segments, Shift+M splits (see ?)")
        self.edit_button.clicked.connect(lambda: self.session.corrections.toggle())
        self.session.corrections.changed.connect(
            lambda: self.edit_button.setChecked(self.session.corrections.active))
        form.addRow(self._row(self.background_only_check, self.edit_button,
                              first_stretch=True))
        self.commit_button = QPushButton("Commit (C)")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove the prompts and the preview (Esc)")
        self.clear_button.clicked.connect(self.clear_prompts)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change of the target Labels layer (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.setToolTip("Redo (Ctrl+Shift+Z)")
        self.redo_button.clicked.connect(self.redo)
        form.addRow(self._row(self.commit_button, self.clear_button, self.undo_button,
                              self.redo_button))

        self.labels_section = Section("Labels", page)
        outer.addWidget(self.labels_section)

        self.tabs = QTabWidget()
        for panel, title in ((self.propagation, "Propagate"), (self.segment_all, "All"),
                             (self.batch, "Batch"), (self.folder, "Folder")):
            area = QScrollArea()  # a page scrolls rather than squeezing its rows
            area.setWidgetResizable(True)
            area.setFrameShape(QFrame.Shape.NoFrame)
            area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            area.setWidget(panel)
            self.tabs.addTab(area, title)
        self.tabs.setTabToolTip(0, "Propagate an object through a 3D stack or a movie")
        self.tabs.setTabToolTip(1, "Segment every object of the slice or stack, then "
                                   "correct by clicks")
        self.tabs.setTabToolTip(2, "Segment whole TIFF files without clicks")
        self.tabs.setTabToolTip(3, "Annotate a folder image by image (Shift+N, Shift+B)")
        outer.addWidget(self.tabs, 1)

        from superqt import QElidingLabel

        self.status_label = QElidingLabel("")
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored,
                                        QSizePolicy.Policy.Preferred)
        self.help_button = QToolButton()
        self.help_button.setText("?")
        self.help_button.setToolTip(HELP_TEXT)
        self.help_button.clicked.connect(self._show_help)
        outer.addWidget(self._row(self.status_label, self.help_button, first_stretch=True))
        _compact(self)

    @staticmethod
    def _form(page) -> QFormLayout:
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        return form

    @staticmethod
    def _row(*widgets, stretch=False, first_stretch=False) -> QWidget:
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        for i, w in enumerate(widgets):
            lay.addWidget(w, 1 if (first_stretch and i == 0) or (
                i == 0 and isinstance(w, QComboBox)) else 0)
        if stretch:
            lay.addStretch(1)
        return row

    def _show_help(self):
        from qtpy.QtWidgets import QToolTip

        QToolTip.showText(self.help_button.mapToGlobal(self.help_button.rect().center()),
                          HELP_TEXT, self.help_button)

    # ------------------------------------------------------------------ helpers -----
    def start_worker(self, func, *args, returned=None, errored=None, finished=None,
                     desc=None, yielded=None, total=0):
        """Run ``func(*args)`` in a worker thread (see :meth:`.workers.WorkerRunner.start`);
        errors go to ``errored``, else to a notification."""
        self._starting += 1
        try:
            return self._workers.start(func, *args, returned=returned,
                                       errored=errored or self.notify_error, finished=finished,
                                       desc=desc, yielded=yielded, total=total)
        finally:
            self._starting -= 1

    def notify_error(self, exc, prefix: str = ""):
        """An error notification, and the status line."""
        self.session.notify_error(exc, prefix)

    def set_status(self, text: str):
        """Show ``text`` in the status line (through the session)."""
        self.session.set_status(text)

    def _show_status(self, text: str):
        self.status_label.setText(text)
        self.status_label.setToolTip(text)

    def _on_picker_status(self, text: str):
        if self.session.model is None or self.model_picker.busy:
            self._show_status(text)

    @property
    def status(self) -> str:
        """The status line's full text."""
        return self.status_label.text()

    @property
    def prefetcher(self):
        """The session's :class:`~._prefetch.PrefetchController`."""
        return self.session.prefetcher

    @property
    def model(self):
        """The session's loaded model, or None."""
        return self.session.model

    @property
    def busy(self) -> bool:
        """Whether the panel works (model, encoder, decoder, propagation; not batch runs
        and not background prefetching)."""
        return self.session.busy or self.model_picker.busy or self.propagation.busy

    def _guarded(self, func, *args):
        if not self._syncing:
            func(*args)

    # ------------------------------------------------------------------ sync --------
    def _sync_layers(self):
        """Image and Labels choices from the viewer's layers."""
        s = self.session
        self._syncing = True
        try:
            for combo, layers, current, extra in (
                    (self.image_combo, s.image_layers(), s.image_layer, None),
                    (self.labels_combo, s.labels_layers(), s.labels_layer, NEW_LABELS)):
                combo.clear()
                if extra:
                    combo.addItem(extra, None)
                for lay in layers:
                    combo.addItem(lay.name, lay)
                idx = next((i for i in range(combo.count())
                            if combo.itemData(i) is current and current is not None),
                           0 if extra else -1)
                combo.setCurrentIndex(idx)
        finally:
            self._syncing = False

    def _sync_image(self):
        """Channel controls and the tiles box for the session's image."""
        s = self.session
        geom = s.geometry
        self._syncing = True
        try:
            self.channel_axis_combo.clear()
            self.channel_axis_combo.addItem("none", None)
            if geom is not None:
                for ax, n in enumerate(geom.leading_shape):
                    self.channel_axis_combo.addItem(f"axis {ax} ({n})", ax)
                if geom.channel_axis is not None:
                    self.channel_axis_combo.setCurrentIndex(geom.channel_axis + 1)
            self.channel_spin.setRange(0, max(0, (geom.n_channels if geom else 1) - 1))
            self.channel_spin.setValue(s.channel)
            self.channel_spin.setEnabled(geom is not None and geom.channel_axis is not None)
            has_axes = geom is not None and len(geom.leading_shape) > 0
            self._channel_row.setVisible(has_axes)
            self._channel_label.setVisible(has_axes)
            self.tiles_check.setChecked(s.use_tiles)
        finally:
            self._syncing = False
        self.propagation.refresh_image()

    def _sync_history(self):
        self.undo_button.setEnabled(self.session.can_undo)
        self.redo_button.setEnabled(self.session.can_redo)

    def _on_image_combo(self, index):
        layer = self.image_combo.itemData(index) if index >= 0 else None
        if not self._syncing and layer is not None and layer is not self.session.image_layer:
            self.session.set_image_layer(layer)

    def _on_labels_combo(self, index):
        if self._syncing or index < 0:
            return
        try:
            self.session.set_labels_layer(self.labels_combo.itemData(index))
        except ValueError as exc:
            self.notify_error(exc)
            self._sync_layers()

    def _on_channel_axis(self, index):
        if not self._syncing and self.session.geometry is not None:
            self.session.set_channel_axis(self.channel_axis_combo.itemData(index), 0)

    def _on_channel(self, value):
        if not self._syncing and self.session.geometry is not None:
            self.session.set_channel(value)

    # ------------------------------------------------------------------ actions -----
    def commit(self):
        """Commit the preview as a new label (C, Enter); returns its id or None."""
        return self.session.commit()

    def clear_prompts(self):
        """Remove the prompts and the preview (Esc, X)."""
        self.session.clear_prompts()

    def undo(self):
        """Undo the last change of the target Labels layer (Ctrl+Z)."""
        self.session.undo()

    def redo(self):
        """Redo the last undone change of the target Labels layer (Ctrl+Shift+Z)."""
        self.session.redo()

    def save_labels(self, path=None):
        """Save the target Labels layer and its prompt log beside it (in a worker).

        Parameters
        ----------
        path : path-like, optional
            The label TIFF; asked for with a file dialog when omitted.

        Returns
        -------
        worker or None
            None when there is nothing to save or the dialog was cancelled.
        """
        from pathlib import Path

        import numpy as np
        from qtpy.QtWidgets import QFileDialog

        from .workers import save_labels_job

        layer = self.session.target.layer
        if layer is None:
            self.set_status("Nothing to save: no target Labels layer yet (commit an object "
                            "first).")
            return None
        if path is None:
            image = self.session.image_layer
            src = getattr(getattr(image, "source", None), "path", None)
            if src:  # beside the image, named as the Folder tab names labels
                from .dataset import labels_name

                suggested = Path(src).parent / labels_name(src)
            else:
                suggested = Path.home() / f"{layer.name}.tif"
            path, _ = QFileDialog.getSaveFileName(self, "Save labels (and their prompts)",
                                                  str(suggested), "TIFF files (*.tif *.tiff)")
            if not path:
                return None
        log, indices = self.session.prompt_recorder.candidates(layer)
        labels = np.array(layer.data[0] if layer.multiscale else layer.data)  # a snapshot
        mark = self.autosave.save_started(layer)  # edits after it keep the autosave
        self.set_status(f"Saving '{layer.name}'...")

        def saved(out):
            self.set_status(f"Saved {Path(out[0]).name} and {Path(out[1]).name} "
                            f"({out[2]} object(s) with their prompts).")
            self.autosave.saved(mark)  # its autosave is no longer needed (if not edited)

        return self.start_worker(save_labels_job, path, labels, log, indices,
                                 desc="EdgeSAM: saving labels", returned=saved)

    def next_image(self):
        """Save this image's labels and open the next image of the folder (Shift+N)."""
        return self.folder.controller.next()

    def previous_image(self):
        """Save this image's labels and open the previous image of the folder (Shift+B)."""
        return self.folder.controller.previous()

    def propagate(self):
        """Propagate the current object through the stack (Shift+P)."""
        return self.propagation.propagate()

    def commit_propagation(self):
        """Commit the pending propagation result as one undo step (Shift+C)."""
        return self.propagation.commit()

    def jump_to_weakest_slice(self):
        """Show the slice with the lowest score of the last propagation (Shift+W)."""
        return self.propagation.jump_to_weakest()

    # ------------------------------------------------------------------ closing -----
    def closeEvent(self, event):  # noqa: N802 - Qt API
        self._shutdown()
        super().closeEvent(event)

    def _shutdown(self):
        """Stop all work and listening (the widget or the viewer is going away)."""
        if not self._alive["alive"]:
            return
        self._alive["alive"] = False
        self.autosave.close()  # writes the last changes (napari is closing)
        self.session.close()
        self.shortcuts.close()
        self.model_picker.shutdown()
        for panel in (self.propagation, self.batch):
            panel.shutdown()
        self._workers.quit_all()
