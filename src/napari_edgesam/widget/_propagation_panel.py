"""The "Propagate" tab of the dock widget: one object through a z-stack or a movie.

An adapter around :mod:`napari_edgesam.workflows.propagation` (no model logic here):

- the object is the current preview (or the prompts) on the slice you look at, or a label
  already committed in the target Labels layer;
- the stack runs along one leading axis of the image (default: the first one that is not
  the channel axis; for a 2D+t movie ``(T, Y, X)`` that is time); every other leading axis
  stays at the position shown;
- the run is a :class:`~napari_edgesam.workflows.propagation.PropagationRun` iterated in a
  napari generator worker: one progress step per slice, cancellable at any slice;
- the result is shown on the preview layer (cyan) slice by slice before anything is written;
  *Commit* writes the whole run into the Labels layer as ONE undo step;
- a per-slice table (slice, status, score, area, note) jumps to a slice when clicked;
  *Weakest slice* shows the kept slice with the lowest score; after correcting a slice (new
  clicks, or napari's brush on a committed label) *Re-propagate from this slice* recomputes
  only the slices it affects.

All reading, prediction and mask cropping happen in the worker; the GUI thread only writes
the (small) crops into the preview and, at commit, the object's pixels into the Labels layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
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
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._geometry import ImageGeometry
from .workers import choose_mapping
from ._lazy import stack_view

__all__ = ["PropagationPanel", "SOURCES", "TABLE_COLUMNS"]

#: Where the object to propagate comes from: key -> combo box text.
SOURCES = {
    "preview": "current preview / prompts",
    "label": "label of the target Labels layer",
}
TABLE_COLUMNS = ("slice", "status", "score", "area", "note")


def _settings_defaults() -> dict:
    """The workflow's own defaults (never restated here)."""
    from napari_edgesam.workflows.propagation import PropagationSettings

    return {f.name: f.default for f in fields(PropagationSettings)}


@dataclass
class _Context:
    """What a run is about (fixed when it starts)."""

    image_layer: object
    geom: ImageGeometry
    axis: int                 # image axis of the stack
    lead: tuple               # leading index (image axes) when the run started
    key: tuple                # slice key (channel axis set to the channel)
    object_id: int            # the engine's object id
    source_label: int | None  # the label the object came from
    labels_layer: object      # the Labels layer of the source label (else None)
    mapping: object = None    # the intensity mapping used (set by the worker)

    def same_stack(self, layer, lead) -> bool:
        """Whether ``lead`` (a leading index of ``layer``) lies in this run's stack."""
        if layer is not self.image_layer or lead is None or len(lead) != len(self.lead):
            return False
        ca = self.geom.channel_axis
        return all(a == b for i, (a, b) in enumerate(zip(lead, self.lead, strict=True))
                   if i != self.axis and i != ca)

    def labels_lead(self, z: int) -> tuple:
        lead = list(self.lead)
        lead[self.axis] = int(z)
        return self.geom.labels_index(tuple(lead))


@dataclass
class _Outcome:
    """A propagation result, pending (not written yet) or committed."""

    ctx: _Context
    result: object                       # PropagationResult
    crops: dict                          # z -> (bool crop, (row0, col0))
    replace_label: int | None = None     # a committed object this result replaces
    previous_crops: dict = field(default_factory=dict)
    changed: list = field(default_factory=list)  # slices that differ from previous_crops
    label_id: int | None = None          # set at commit
    layer: object = None                 # set at commit

    @property
    def records(self) -> list:
        obj = self.result.objects.get(self.ctx.object_id)
        return [] if obj is None else [obj.records[z] for z in sorted(obj.records)]


# ---------------------------------------------------------------------------------------
# Worker (no Qt, no napari)
# ---------------------------------------------------------------------------------------
def _propagation_job(prepare, oid, previous_crops, control):
    """Generator run in a napari worker: yields ``(done, total, z, {z: crop})`` per slice and
    returns ``(result, crops, changed)``."""
    run = prepare()
    control["run"] = run
    if control.get("cancel"):
        run.cancel()
    for step in run:
        live = {}
        for obj_id, rec, mask in step.updates:
            if obj_id == oid and mask is not None and rec.accepted and mask.area:
                live[step.z] = (mask.crop, mask.offset)  # an engine MaskCrop
        yield step.done, step.total, step.z, live
    result = run.result()
    obj = result.objects.get(oid)
    crops = {}
    if obj is not None:
        for z in obj.slices:  # slices with a (non-empty) mask
            m = obj.slice_crop(z)
            crops[z] = (m.crop, m.offset)
    changed = []
    if previous_crops is not None:
        for z in sorted(set(crops) | set(previous_crops)):
            a, b = crops.get(z), previous_crops.get(z)
            if a is None or b is None or a[1] != b[1] or a[0].shape != b[0].shape \
                    or not np.array_equal(a[0], b[0]):
                changed.append(z)
    return result, crops, changed


# ---------------------------------------------------------------------------------------
# The panel
# ---------------------------------------------------------------------------------------
class PropagationPanel(QWidget):
    """Propagate one object through the stack of the dock widget's image.

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
        panel.busy, panel.pending, panel.result, panel.records
    """

    def __init__(self, dock):
        super().__init__(dock)
        self._dock = dock
        self._worker = None
        self._control: dict = {}
        self._run_ctx: _Context | None = None
        self._run_kind: tuple | None = None
        self._live: dict = {}
        self._pending: _Outcome | None = None
        self._committed: _Outcome | None = None
        self._shown: _Outcome | None = None
        self._dropped = False
        self._image_key = None
        self.last_label: int | None = None
        self._row_z: list = []
        self._build_ui()
        self.refresh_image()

    # -- UI -------------------------------------------------------------------------------
    def _build_ui(self):
        top = QVBoxLayout(self)
        top.setContentsMargins(4, 4, 4, 4)
        self.note_label = QLabel("")
        self.note_label.setWordWrap(True)
        top.addWidget(self.note_label)
        self._body = QWidget()  # disabled for images without a stack axis
        top.addWidget(self._body)
        outer = QVBoxLayout(self._body)
        outer.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
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
        self.min_score_spin = QDoubleSpinBox()
        self.min_score_spin.setRange(0.0, 1.0)
        self.min_score_spin.setSingleStep(0.05)
        self.min_score_spin.setDecimals(2)
        self.min_score_spin.setValue(defaults["min_score"])
        self.min_score_spin.setToolTip("Stop where the mask's stability score falls below this")
        self.min_overlap_spin = QDoubleSpinBox()
        self.min_overlap_spin.setRange(0.0, 1.0)
        self.min_overlap_spin.setSingleStep(0.05)
        self.min_overlap_spin.setDecimals(2)
        self.min_overlap_spin.setValue(defaults["min_overlap"])
        self.min_overlap_spin.setToolTip(
            "Stop where the mask overlaps the previous slice's by less than this (overlap "
            "coefficient); lower it for fast-moving objects in movies"
        )
        self.max_growth_spin = QDoubleSpinBox()
        self.max_growth_spin.setRange(1.0, 100.0)
        self.max_growth_spin.setSingleStep(0.1)
        self.max_growth_spin.setDecimals(2)
        self.max_growth_spin.setValue(defaults["max_growth"])
        self.max_growth_spin.setToolTip("Stop where the area grows more than this factor "
                                        "from one slice to the next")
        for text, sp in (("min score", self.min_score_spin),
                         ("min overlap", self.min_overlap_spin),
                         ("max growth", self.max_growth_spin)):
            label = QLabel(text)
            label.setToolTip(sp.toolTip())
            form.addRow(label, sp)
        outer.addLayout(form)

        self.propagate_button = QPushButton("Propagate (Shift+P)")
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button = QPushButton("Commit (Shift+C)")
        self.commit_button.clicked.connect(self.commit)
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(self.discard)
        for pair in ((self.propagate_button, self.cancel_button),
                     (self.commit_button, self.discard_button)):
            brow = QHBoxLayout()
            for b in pair:
                brow.addWidget(b)
            outer.addLayout(brow)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m slices")
        self.progress.setVisible(False)  # shown from the first run on
        outer.addWidget(self.progress)

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
        outer.addWidget(self.table)
        rrow = QHBoxLayout()
        self.weakest_button = QPushButton("Weakest slice (Shift+W)")
        self.weakest_button.clicked.connect(self.jump_to_weakest)
        self.repropagate_button = QPushButton("Re-propagate from this slice")
        self.repropagate_button.setToolTip(
            "After correcting the object on the slice you look at (new clicks, or napari's "
            "brush on the committed label): recompute only the slices this affects"
        )
        self.repropagate_button.clicked.connect(self.repropagate)
        rrow.addWidget(self.weakest_button)
        rrow.addWidget(self.repropagate_button)
        outer.addLayout(rrow)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.summary_label)
        top.addStretch(1)
        self._on_source()
        self._update_buttons()

    # -- properties -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def pending(self) -> bool:
        """Whether a result waits to be committed (or discarded)."""
        return self._pending is not None

    @property
    def result(self):
        """The shown :class:`PropagationResult` (pending, else the last committed), or None."""
        out = self._shown
        return None if out is None else out.result

    @property
    def records(self) -> list:
        """The shown result's per-slice records (``SliceRecord``), sorted by slice."""
        return [] if self._shown is None else self._shown.records

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
        return self.axis_combo.currentData()

    @stack_axis.setter
    def stack_axis(self, axis: int):
        i = self.axis_combo.findData(int(axis))
        if i < 0:
            raise ValueError(f"axis {axis} is not a stack axis of the image")
        self.axis_combo.setCurrentIndex(i)

    @property
    def z_range(self) -> tuple[int, int]:
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
        dock = self._dock
        geom = dock.session.geometry
        layer = dock.session.image_layer
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
        else:
            self.note_label.setText(
                "Propagate the object you see on this slice (its preview, or a committed "
                "label) up and down the stack; check the result, then commit it.")
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

    def _update_buttons(self):
        running = self._worker is not None
        has_stack = self.axis_combo.count() > 0
        self._body.setEnabled(has_stack or self._pending is not None
                              or self._committed is not None)
        self.propagate_button.setEnabled(has_stack and not running)
        self.cancel_button.setEnabled(running)
        self.commit_button.setEnabled(self._pending is not None and not running)
        self.discard_button.setEnabled(self._pending is not None and not running)
        self.weakest_button.setEnabled(bool(self.records))
        self.repropagate_button.setEnabled(
            not running and (self._pending is not None or self._committed is not None))

    # -- start a run ----------------------------------------------------------------------
    def _check_ready(self) -> str | None:
        dock = self._dock
        if self._worker is not None:
            return "a propagation is running: wait for it or cancel it"
        if dock.session.image_layer is None or dock.session.geometry is None:
            return "choose an image layer first"
        if self.stack_axis is None:
            return "propagation needs a stack (an image with a z or t axis)"
        if dock.session.model is None:
            return "no model yet"
        problem = dock.session.view_problem()
        if problem:
            return problem
        return None

    def _current_prompt_annotation(self):
        """``("mask", crop, offset)`` from the dock's up-to-date preview on this slice,
        ``("prompts", points, labels, box)`` from its prompts, or None."""
        dock = self._dock
        crop = dock.session.preview_crop
        if (crop is not None and dock.session.preview.lead == dock.session.lead
                and dock.session.preview_is_current):
            return ("mask", crop[0].copy(), crop[1])
        prompts = dock.session.gather_prompts()
        if prompts.usable:
            return ("prompts", prompts.points, prompts.labels, prompts.box)
        return None

    def propagate(self):
        """Start propagating the object on the current slice (Shift+P). Returns the worker,
        or None when nothing could start (the reason is shown)."""
        from napari.utils.notifications import show_info

        problem = self._check_ready()
        if problem:
            show_info(f"EdgeSAM: {problem}.")
            self._dock.set_status(f"Propagation: {problem}.")
            return None
        dock = self._dock
        geom = dock.session.geometry
        axis = self.stack_axis
        lead = dock.session.lead
        z = lead[axis]
        lo, hi = self.z_range
        if not lo <= z <= hi:
            show_info(f"EdgeSAM: the slice you look at ({z}) is outside the slice limits "
                      f"{lo}..{hi}.")
            return None
        source_label, labels_layer = None, None
        if self.source == "label":
            labels_layer = dock.session.labels_layer
            if labels_layer is None:
                show_info("EdgeSAM: choose the Labels layer that holds the label (target).")
                return None
            source_label = self.label
            ann = ("label", labels_layer, source_label)
        else:
            ann = self._current_prompt_annotation()
            if ann is None:
                show_info("EdgeSAM: click on an object first (its preview is what is "
                          "propagated), or choose a committed label.")
                return None
        oid = source_label if source_label is not None else 1
        ctx = _Context(dock.session.image_layer, geom, axis, tuple(lead), dock.session.slice_key(),
                       oid, source_label, labels_layer)
        self._pending = None
        if ann[0] != "label":  # the object now lives in the propagation (cyan overlay)
            dock.session.clear_prompt_data()
            dock.session.clear_preview()
        return self._launch(ctx, ann, previous=None, kind=("new", None))

    def repropagate(self):
        """Apply a correction made on the current slice and recompute only the slices it
        affects. The correction is the current preview (new clicks), else (after a commit)
        the label as it now is on this slice in the Labels layer (napari's brush; an empty
        slice means "the object ends here")."""
        from napari.utils.notifications import show_info

        base = self._pending or self._committed
        if base is None:
            show_info("EdgeSAM: propagate an object first.")
            return None
        problem = self._check_ready()
        if problem:
            show_info(f"EdgeSAM: {problem}.")
            return None
        dock = self._dock
        ctx = base.ctx
        lead = dock.session.lead
        if not ctx.same_stack(dock.session.image_layer, lead):
            show_info("EdgeSAM: go to a slice of the propagated stack first.")
            return None
        z = lead[ctx.axis]
        zlo, zhi = base.result.z_range
        if not zlo <= z <= zhi:
            show_info(f"EdgeSAM: slice {z} is outside the run's slice limits {zlo}..{zhi}.")
            return None
        ann = self._current_prompt_annotation()
        if ann is None:
            if base is self._committed and base.layer is not None \
                    and base.layer in dock.viewer.layers:
                ann = ("label", base.layer, base.label_id)
            else:
                show_info("EdgeSAM: correct the object on this slice first (click on it).")
                return None
        # the corrected slice is the one you look at (other axes as in the first run)
        ctx = _Context(ctx.image_layer, ctx.geom, ctx.axis, tuple(lead), dock.session.slice_key(),
                       ctx.object_id, ctx.source_label, ctx.labels_layer, ctx.mapping)
        if base is self._committed:
            kind = ("replace", base)
        else:
            kind = ("new", None)
            ctx.labels_layer = base.ctx.labels_layer
        dock.session.clear_prompt_data()  # the correction is used up
        dock.session.clear_preview()
        return self._launch(ctx, ann, previous=base, kind=kind)

    def _launch(self, ctx: _Context, ann, previous: _Outcome | None, kind):
        from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation

        dock = self._dock
        geom = ctx.geom
        layer = ctx.image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        predictor = dock.session.predictor
        spec = dock.session.mapping_spec()
        smk = dock.session.stack_mapping_key()
        known = ctx.mapping
        if known is None:
            known = dock.session.stack_mappings.get(smk) if smk is not None else None
        if known is None and dock.session.embedding is not None and spec[0] != "contrast":
            known = dock.session.current_mapping
        settings = self.settings()
        z_range = self.z_range if previous is None else None
        key, axis, hw = ctx.key, ctx.axis, geom.spatial_shape
        z = ctx.lead[axis]
        prev_result = None if previous is None else previous.result
        oid = ctx.object_id

        def prepare():  # runs in the worker thread
            from napari_edgesam.engine.transforms import MaskCrop

            mapping = choose_mapping(data, geom, key, spec, known)
            ctx.mapping = mapping
            stack = stack_view(data, key, axis)
            prop = Propagator(predictor, stack, axis=0, mapping=mapping, settings=settings)
            if ann[0] == "mask":
                annotation = SliceAnnotation(z, mask=MaskCrop(ann[1], *ann[2], hw))
            elif ann[0] == "prompts":
                _, points, labels, box = ann
                annotation = SliceAnnotation(z, points=list(points) or None,
                                             labels=list(labels) or None, box=box)
            else:
                _, lab_layer, value = ann
                plane = np.asarray(lab_layer.data[ctx.labels_lead(z)])
                mask = plane == value
                if prev_result is None and not mask.any():
                    from napari_edgesam.engine import InvalidInputError

                    raise InvalidInputError(
                        f"label {value} is not on slice {z} of '{lab_layer.name}'")
                annotation = SliceAnnotation(z, mask=mask)
            if prev_result is None:
                return prop.start({oid: annotation}, z_range=z_range)
            return prop.start_repropagation(prev_result, oid, annotation)

        previous_crops = kind[1].crops if kind[0] == "replace" else None
        self._control = control = {}
        self._run_ctx = ctx
        self._run_kind = kind
        self._live = {}
        self._dropped = False
        dock.prefetcher.activity()  # propagation needs the cores
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        what = "Re-propagating" if previous is not None else "Propagating"
        dock.set_status(f"{what} from slice {z}...")
        self.summary_label.setText("")
        self._worker = dock.start_worker(
            _propagation_job, prepare, oid, previous_crops, control,
            yielded=self._on_step,
            returned=self._on_done,
            errored=self._on_error,
            finished=self._on_finished,
            desc=f"EdgeSAM: {what.lower()} through the stack",
        )
        self._update_buttons()
        return self._worker

    # -- worker callbacks -----------------------------------------------------------------
    def _on_step(self, step):
        done, total, z, live = step
        self._done = done
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, total))
        self._live.update(live)
        if self._control.get("cancel"):
            return
        self._dock.set_status(f"Propagating: slice {z} ({done} of at most {total})...")
        if z in live:
            self._dock.session.render_preview()

    def _on_done(self, out):
        result, crops, changed = out
        ctx, kind = self._run_ctx, self._run_kind
        if self._dropped or ctx is None:
            return
        outcome = _Outcome(ctx, result, crops)
        if kind[0] == "replace":
            base = kind[1]
            outcome.replace_label = base.label_id
            outcome.previous_crops = base.crops
            outcome.changed = changed
            outcome.layer = base.layer
        self._pending = outcome
        self._shown = outcome
        self._fill_table(outcome)
        obj = result.objects.get(ctx.object_id)
        ext = None if obj is None else obj.extent
        span = f"slices {ext[0]}..{ext[1]} ({len(obj.slices)} with the object)" if ext \
            else "no slice"
        state = "Cancelled: partial result, " if result.cancelled else ""
        stats = result.stats
        ends = "; ".join(
            f"{'up' if e.direction > 0 else 'down'}: {e.reason}"
            + (f" at {e.at}" if e.at is not None else "")
            for e in sorted(obj.ends, key=lambda e: (e.start, e.direction))) if obj else ""
        self.summary_label.setText(
            f"{state}{span}. Stopped {ends}. {stats.get('embeddings', 0)} slices embedded "
            f"({stats.get('encoded', 0)} encoded now).")
        self._dock.set_status(
            f"Propagation {'cancelled' if result.cancelled else 'done'}: {span}. The cyan "
            "overlay shows it slice by slice: Shift+C commits it, Discard drops it.")
        self._dock.session.render_preview()

    def _on_error(self, exc):
        self._dock.notify_error(exc, "propagation failed: ")

    def _on_finished(self):
        self._worker = None
        self._control = {}
        self._live = {}
        done = getattr(self, "_done", 0)  # directions stop early: the total was a bound
        self.progress.setRange(0, max(1, done))
        self.progress.setValue(done)
        self._done = 0
        self._update_buttons()
        self._dock.session.render_preview()
        self._dock.prefetcher.activity()

    def cancel(self):
        """Stop the run at once (a running encoder is terminated); the partial (consistent)
        result is kept as pending, nothing is written."""
        control = self._control
        if self._worker is None or not control:
            return
        control["cancel"] = True
        run = control.get("run")
        if run is not None:
            run.cancel()
        self._dock.set_status("Cancelling the propagation...")

    # -- preview --------------------------------------------------------------------------
    def overlay(self, image_layer, lead):
        """``(crop, (row0, col0))`` of the pending or running result on slice ``lead`` of
        ``image_layer``, or None."""
        if self._worker is not None and self._run_ctx is not None:
            ctx, crops = self._run_ctx, self._live
        elif self._pending is not None:
            ctx, crops = self._pending.ctx, self._pending.crops
        else:
            return None
        if not ctx.same_stack(image_layer, lead):
            return None
        return crops.get(lead[ctx.axis])

    def discard(self):
        """Drop the pending result (nothing was written)."""
        if self._pending is None:
            return
        if self._shown is self._pending:
            self._shown = self._committed
            self._fill_table(self._shown)
        self._pending = None
        self._update_buttons()
        self._dock.session.render_preview()
        self._dock.set_status("Propagation result discarded; no layer was changed.")

    # -- commit ---------------------------------------------------------------------------
    def _target_layer(self, out: _Outcome):
        dock = self._dock
        ctx = out.ctx
        layers = dock.viewer.layers
        for cand in (out.layer, ctx.labels_layer):
            if cand is not None and cand in layers:
                return cand
        if ctx.source_label is None and out.replace_label is None:
            t = dock.session.labels_layer
            if t is not None and t in layers and tuple(t.data.shape) == ctx.geom.labels_shape:
                return t
        if dock.session.image_layer is ctx.image_layer:
            return dock.session.ensure_labels_layer()
        return None

    def commit(self):
        """Write the pending result into the Labels layer as ONE undo step (Shift+C).

        A new object gets the next free label id; a propagated label keeps its id; a
        re-propagated committed object replaces its old pixels on the slices that changed.
        With "paint only on background" other labels are never overwritten. Returns the
        label id, or None.
        """
        from napari.utils.notifications import show_info

        out = self._pending
        dock = self._dock
        if out is None:
            show_info("EdgeSAM: no propagation result to commit.")
            return None
        if self._worker is not None:
            show_info("EdgeSAM: a propagation is running: wait for it or cancel it.")
            return None
        ctx = out.ctx
        if ctx.image_layer not in dock.viewer.layers:
            dock.notify_error("the propagated image layer is gone; nothing to commit")
            self._pending = None
            return None
        layer = self._target_layer(out)
        if layer is None:
            dock.notify_error("no Labels layer to commit into: choose the image again")
            return None
        if tuple(layer.data.shape) != ctx.geom.labels_shape:
            dock.notify_error(f"the Labels layer '{layer.name}' does not match the image")
            return None
        label_id = out.replace_label
        if label_id is None and layer is ctx.labels_layer:
            label_id = ctx.source_label
        if label_id is None:
            label_id = dock.session.target.label_ids.next_id(layer)
            if label_id is None:
                dock.set_status("Commit pending: looking for the next free label id in "
                                 f"'{layer.name}' (a large layer)...")
                dock.session.target.label_ids.when_known(
                    layer, lambda nid, o=out: self.commit() if nid and self._pending is o
                    else None)
                return None
        try:
            painted, erased = self._write(layer, out, int(label_id))
        except ValueError as exc:  # no free label id left in the layer's dtype
            dock.notify_error(exc)
            return None
        if painted == 0 and erased == 0:
            show_info("EdgeSAM: nothing to paint: the result lies on other labels (untick "
                      "'paint only on background' to overwrite them).")
            return None
        out.label_id = int(label_id)
        out.layer = layer
        self._committed = out
        self._shown = out
        self._pending = None
        self.last_label = int(label_id)
        self._update_buttons()
        dock.session.render_preview()
        slices = sorted(out.crops)
        span = f"slices {slices[0]}..{slices[-1]}" if slices else "no slice"
        dock.set_status(
            f"Committed label {label_id} ({painted} px painted"
            + (f", {erased} px cleared" if erased else "")
            + f", {span}) as one step: Ctrl+Z undoes it.")
        return int(label_id)

    def _write(self, layer, out: _Outcome, label_id: int) -> tuple[int, int]:
        """All slices through the session's one commit path: one undo step. Reads and
        writes only the crops' windows."""
        from .commit import SliceEdit

        ctx = out.ctx
        replacing = out.replace_label is not None
        slices = list(out.changed) if replacing else sorted(out.crops)
        edits = [SliceEdit(ctx.labels_lead(z), paint=out.crops.get(z),
                           erase=out.previous_crops.get(z) if replacing else None)
                 for z in slices]
        return self._dock.session.commit_edits(layer, label_id, edits)

    # -- read-out -------------------------------------------------------------------------
    def _fill_table(self, out: _Outcome | None):
        self.table.setRowCount(0)
        self._row_z = []
        if out is None:
            self._update_buttons()
            return
        recs = out.records
        self.table.setRowCount(len(recs))
        for row, rec in enumerate(recs):
            if rec.source == "annotation":
                status, note = "annotated", ""
            elif rec.accepted:
                status = "kept"
                note = f"{'up' if rec.direction > 0 else 'down'} from {rec.origin}"
            else:
                status, note = "stopped", rec.reason or ""
            score = "-" if math.isnan(rec.score) else f"{rec.score:.3f}"
            for col, text in enumerate((str(rec.z), status, score, str(rec.area), note)):
                item = QTableWidgetItem(text)
                if col in (0, 2, 3):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(row, col, item)
            self._row_z.append(rec.z)
        self._update_buttons()

    def _on_row_clicked(self, row, _col=0):
        if self._shown is None or not 0 <= row < len(self._row_z):
            return
        self.go_to(self._row_z[row])

    def go_to(self, z: int):
        """Show slice ``z`` of the shown result's stack (and select its table row)."""
        out = self._shown
        if out is None:
            return
        if z in self._row_z:
            self.table.selectRow(self._row_z.index(z))
        if self._dock.session.image_layer is out.ctx.image_layer:
            self._dock.session.go_to_slice(out.ctx.axis, z)

    def weakest_slice(self) -> int | None:
        """The kept propagated slice with the lowest score (None without one)."""
        cands = [r for r in self.records
                 if r.accepted and r.source == "propagated" and not math.isnan(r.score)]
        if not cands:
            return None
        return min(cands, key=lambda r: (r.score, r.z)).z

    def jump_to_weakest(self):
        """Show the weakest slice (Shift+W); returns its index or None."""
        z = self.weakest_slice()
        if z is None:
            from napari.utils.notifications import show_info

            show_info("EdgeSAM: no propagated slice to show (propagate first).")
            return None
        self.go_to(z)
        rec = next(r for r in self.records if r.z == z)
        self._dock.set_status(
            f"Weakest slice: {z} (score {rec.score:.3f}). Correct it with clicks and press "
            "'Re-propagate from this slice'.")
        return z

    # -- layers ---------------------------------------------------------------------------
    def on_layer_removed(self, layer):
        dock = self._dock
        running = self._worker is not None
        for out, what in ((self._run_ctx if running else None, "run"),
                          (self._pending.ctx if self._pending else None, "pending")):
            if out is None:
                continue
            if layer is out.image_layer:
                if what == "run":
                    self._dropped = True
                    self.cancel()
                self._pending = None
                self._shown = self._committed if self._committed and \
                    self._committed.ctx.image_layer is not layer else None
                self._fill_table(self._shown)
                dock.session.warn_later(
                    f"EdgeSAM: the image layer '{layer.name}' was removed during "
                    "propagation; the result is dropped and no layer was changed.")
                break
            if layer is out.labels_layer:
                out.labels_layer = None
                out.source_label = None
                dock.session.warn_later(
                    f"EdgeSAM: the Labels layer '{layer.name}' was removed during "
                    "propagation; the result will be committed as a new object into "
                    "the target Labels layer.")
                break
        if self._committed is not None and (layer is self._committed.layer
                                            or layer is self._committed.ctx.image_layer):
            if self._shown is self._committed:
                self._shown = self._pending
                self._fill_table(self._shown)
            self._committed = None
        self._update_buttons()

    def shutdown(self):
        self._dropped = True
        if self._worker is not None:
            self.cancel()
