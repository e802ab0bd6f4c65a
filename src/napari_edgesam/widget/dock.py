"""The "EdgeSAM" dock widget: interactive prompted segmentation in napari.

The widget is an adapter: the model, the intensity mapping, the embedding cache and the
mask post-processing all live in :mod:`napari_edgesam.engine`. The widget

- keeps prompt layers ("EdgeSAM points", "EdgeSAM box") and a preview layer
  ("EdgeSAM preview") aligned with the chosen image layer;
- encodes the current slice in a background worker as soon as the image, the slice, the
  contrast mapping or the model changes (napari ``thread_worker`` with a progress bar);
- runs the decoder in a background worker on every prompt change; the newest prompt state
  wins and results older than what is shown are dropped (a generation counter);
- commits the preview into the target Labels layer as a new object (next free label id),
  as ONE undoable step of that layer (``data_setitem`` inside ``block_history``);
- for images above 2048 pixels (or with "tiles" ticked) answers prompts through the engine's
  :class:`~napari_edgesam.engine.tiling.TiledPredictor`: only the window a prompt needs is
  read (lazily: numpy, memmap, dask, zarr; see :mod:`._lazy`) and encoded; the preview holds
  the mask's crop, a commit reads and writes the mask's bounding box only, and the next free
  label id of a big Labels layer comes from a background scan (:mod:`._labels`);
- while the user is idle, prefetches neighbouring slices / tiles (:mod:`._prefetch`, the
  engine's ``Prefetcher``), stopped at once by any click;
- holds two tabs: propagation through stacks and movies (:mod:`._propagation_panel`) and
  batch segmentation of files (:mod:`._batch_panel`).

The GUI thread never runs the model, hashing (model files, pixels) or mask resampling.

Public API (also used by the tests)::

    w = EdgeSamWidget(viewer)
    w.set_model(EdgeSamModel("enc.onnx", "dec.onnx"))   # or w.load_custom_model(enc, dec)
    w.set_image_layer(viewer.layers["nuclei"])
    w.add_point((z, y, x), positive=True)               # world coordinates, like a click
    w.set_box((y0, x0), (y1, x1))                       # world coordinates, any direction
    w.commit()                                          # -> label id (or None)
    w.undo(); w.redo(); w.clear_prompts()
    w.busy, w.status, w.preview_mask, w.labels_layer
    w.use_tiles, w.set_tile_geometry(tile, halo), w.tiled_predictor, w.prefetch_enabled
    w.propagate(); w.commit_propagation(); w.jump_to_weakest_slice()   # Shift+P/C/W
    w.propagation, w.batch                              # the tabs (see their modules)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from . import _prompts, workers
from ._geometry import ImageGeometry, commit_indices, rectangle_to_box
from ._labels import LabelIds
from ._prefetch import PrefetchController

_log = logging.getLogger(__name__)

__all__ = ["MAPPING_MODES", "EdgeSamWidget"]

#: Contrast mapping choices: key -> label in the combo box.
MAPPING_MODES = {
    "auto": "auto (8-bit as is, else stack percentiles)",
    "contrast": "layer contrast limits",
    "percentiles": "stack percentiles (0.5 - 99.8 %)",
}

NEW_LABELS = "new Labels layer"
#: Image layer events after which the prompt and preview layers are realigned.
_TRANSFORM_EVENTS = ("scale", "translate", "rotate", "shear", "affine")
CUSTOM_PICK = "custom files..."

HELP_TEXT = (
    "<b>Left click</b>: positive point &nbsp; <b>Right click</b> or <b>Ctrl/Alt+click</b>: "
    "negative point &nbsp; <b>Shift+drag</b>: box<br>"
    "<b>C</b> / <b>Enter</b>: commit as a new label &nbsp; <b>Esc</b> / <b>X</b>: clear "
    "prompts &nbsp; <b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b>: undo / redo<br>"
    "<b>Shift+P</b>: propagate through the stack &nbsp; <b>Shift+C</b>: commit the "
    "propagation &nbsp; <b>Shift+W</b>: weakest slice"
)


#: Neighbouring slices prefetched while the user is idle (offsets along the slider's axis).
PREFETCH_SLICES = (1, -1, 2, -2)
#: Tiles prefetched around the last prompt's window (nearest first).
PREFETCH_TILES = 4


def _is_tiled_predictor(obj) -> bool:
    return obj is not None and hasattr(obj, "windows_for") and hasattr(obj, "grid")


@dataclass(frozen=True)
class _Prompts:
    points: tuple  # ((x, y), ...)
    labels: tuple  # (1 | 0, ...)
    box: tuple | None  # (x0, y0, x1, y1)

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    @property
    def usable(self) -> bool:
        """The engine needs a box or at least one positive point."""
        return self.box is not None or any(v == 1 for v in self.labels)


# ---------------------------------------------------------------------------------------
# Work done in background threads (no napari, no Qt in here)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Preview:
    """The prompt preview shown on one slice.

    ``mask`` is uint8 0/1 (a bool view is taken where needed): slice-sized for small images
    (it then becomes the preview layer's data without a copy), else the crop placed at
    ``offset`` ``(row, col)``. ``bbox`` is the mask's half-open ``(row0, col0, row1, col1)``
    in slice pixels (None when empty); ``lead`` the slice's leading indices.
    """

    mask: np.ndarray
    offset: tuple
    bbox: tuple | None
    lead: tuple | None

    def crop(self) -> np.ndarray | None:
        """The mask on its bounding box, bool (a view), or None when empty."""
        if self.bbox is None:
            return None
        r0, c0, r1, c1 = self.bbox
        orow, ocol = self.offset
        return self.mask[r0 - orow:r1 - orow, c0 - ocol:c1 - ocol].view(bool)


def _encode_job(predictor, data, geom: ImageGeometry, key, spec, stack_mapping, control):
    """Read one slice, choose the intensity mapping and embed it (cache first).

    ``control`` is a dict shared with the GUI thread: setting ``control["cancel"]`` (and
    the ``terminate`` flag of ``control["run_options"]``) stops a stale encoder run early.
    Returns None when cancelled.
    """
    from napari_edgesam.engine.session import make_run_options

    run_options = make_run_options()
    control["run_options"] = run_options
    if control.get("cancel"):
        return None
    t0 = time.perf_counter()
    image = geom.read_slice(data, key)
    mapping = workers.choose_mapping(data, geom, key, spec, stack_mapping)
    if control.get("cancel"):
        return None
    run_options.terminate = bool(control.get("cancel"))
    try:
        embedding = predictor.embed(image, mapping, rgb=geom.rgb, run_options=run_options)
    except Exception:
        if control.get("cancel"):  # onnxruntime stopped the run on our request
            return None
        raise
    return embedding, mapping, time.perf_counter() - t0


def _decode_job(predictor, embedding, prompts: _Prompts):
    """Run the decoder; returns a :class:`~.workers.Decoded` with the whole-slice mask (uint8
    0/1, for the preview layer), its bounding box, the score and the time taken."""
    t0 = time.perf_counter()
    pred = predictor.predict(
        points=list(prompts.points) or None,
        labels=list(prompts.labels) or None,
        box=prompts.box,
        embedding=embedding,
    )
    from napari_edgesam.engine.transforms import mask_bbox

    mask = pred.mask
    bbox = mask_bbox(mask)
    return workers.Decoded(mask.view(np.uint8), (0, 0), bbox, pred.score,
                         time.perf_counter() - t0, area=pred.area)


def _load_model_job(model):
    """Open both sessions and hash the encoder (the model's cache identity)."""
    model.load()
    _ = model.identity
    return model


def _resolve_card_job(card):
    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.engine.models import resolve_model

    resolved = resolve_model(card)
    model = EdgeSamModel(resolved.encoder, resolved.decoder, name=resolved.name,
                         sha256=resolved.sha256)
    return _load_model_job(model)


def _download_job(card, progress_state):
    from napari_edgesam.engine import CancelledError, EdgeSamModel
    from napari_edgesam.engine.models import download_model

    def progress(filename, done, total):
        if progress_state.get("cancel"):
            raise CancelledError("download cancelled")
        progress_state.update(filename=filename, done=done, total=total)

    # The licence was shown and accepted in a dialog before the worker started.
    resolved = download_model(card, progress=progress, licence_notice=lambda text: None)
    model = EdgeSamModel(resolved.encoder, resolved.decoder, name=resolved.name,
                         sha256=resolved.sha256)
    return _load_model_job(model)


# ---------------------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------------------


class EdgeSamWidget(QWidget):
    """napari dock widget for interactive segmentation with EdgeSAM.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it in).
    model : EdgeSamModel, optional
        A model to use right away (otherwise: the default published model when its files are
        on this machine, else none until the user downloads one or picks custom files).
    """

    def __init__(self, napari_viewer, model=None, parent=None):
        super().__init__(parent)
        # npe2 hands plugins a PublicOnlyProxy of the viewer: every object reached through it
        # is a new proxy, so identity checks between layers (ours vs. those in events) and
        # speed suffer. The widget is trusted code using public API: unwrap it.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._alive = {"alive": True}
        alive = self._alive
        self._workers = workers.WorkerRunner(lambda: alive["alive"])
        # viewer.close() destroys the window and this widget without a closeEvent: stop
        # the running work then (children such as timers are deleted after this signal)
        self.destroyed.connect(lambda *_: self._shutdown())

        # model
        self._model = None
        self._predictor = None
        self._model_worker = None
        self._download_worker = None
        self._download_state: dict = {}
        # layers
        self._image_layer = None
        self._geometry: ImageGeometry | None = None
        self._labels_layer = None
        self._points_layer = None
        self._boxes_layer = None
        self._preview_layer = None
        self._lead: tuple | None = None  # leading index of the current slice
        self._data_version = 0
        self._stack_mappings: dict = {}
        # encoder state
        self._embedding = None
        self._embedding_key = None
        self._encode_worker = None
        self._encode_key = None
        self._encode_pending = False
        self._failed_key = None  # the slice whose encoding failed: not retried by itself
        self._drawing_box = False  # a box drag in progress: no prediction until release
        self._encode_control: dict = {}
        self.last_encode_seconds: float | None = None
        # decoder state
        self._decode_worker = None
        self._decode_pending = False
        self._generation = 0
        self._shown_generation = 0
        self._preview: _Preview | None = None
        self._commit_when_ready = False
        self._last_request: tuple | None = None  # (key, prompts, generation) last asked for
        self._shown_offset: tuple = (0, 0)
        self._decode_control: dict = {}
        self.last_decode_seconds: float | None = None
        self._updating_combos = False
        # large images (tiles), prefetching, label ids
        self._current_mapping = None
        self._last_window = None
        self._tile_size: int | None = None
        self._tile_halo: int | None = None
        self._scrub_axis: int | None = None
        self._label_ids = LabelIds(self.start_worker)
        self._stashed_prompts: dict = {}  # image unique_id -> its prompts, while away
        self._prefetch = PrefetchController(self)
        self.propagation = None
        self.batch = None

        self._build_ui()

        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(15)
        self._slice_timer.timeout.connect(self._on_slice_changed)
        self._contrast_timer = QTimer(self)
        self._contrast_timer.setSingleShot(True)
        self._contrast_timer.setInterval(300)
        self._contrast_timer.timeout.connect(self._on_contrast_settled)
        self._download_timer = QTimer(self)
        self._download_timer.setInterval(100)
        self._download_timer.timeout.connect(self._update_download_progress)

        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.events.moved.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_dims_step)
        self.viewer.dims.events.ndisplay.connect(self._on_dims_step)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)

        self._populate_models()
        self._refresh_layer_combos()
        if model is not None:
            self.set_model(model)
        else:
            self._load_default_model()
        if self._image_layer is None:
            self._pick_first_image()
        self._update_status()

    # ------------------------------------------------------------------ UI ----------
    def _build_ui(self):
        self.setObjectName("EdgeSamWidget")
        outer = QVBoxLayout(self)

        # model
        box = QGroupBox("Model")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Published EdgeSAM models, or your own encoder/decoder pair")
        self.model_combo.activated.connect(self._on_model_chosen)
        self.download_button = QPushButton("Download")
        self.download_button.setToolTip("Download the selected model (licence shown first)")
        self.download_button.clicked.connect(self._on_download_clicked)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.download_button)
        form.addRow("model", row)
        self.download_progress = QProgressBar()
        self.download_progress.setVisible(False)
        self.cancel_download_button = QPushButton("Cancel")
        self.cancel_download_button.setVisible(False)
        self.cancel_download_button.clicked.connect(self._cancel_download)
        prow = QHBoxLayout()
        prow.addWidget(self.download_progress, 1)
        prow.addWidget(self.cancel_download_button)
        form.addRow(prow)
        outer.addWidget(box)

        # image
        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        self.pin_check = QCheckBox("pin")
        self.pin_check.setToolTip(
            "Keep segmenting this image when you open another one (otherwise the image "
            "opened last becomes the panel's image; each image keeps its own prompts)."
        )
        irow = QHBoxLayout()
        irow.setContentsMargins(0, 0, 0, 0)
        irow.addWidget(self.image_combo, 1)
        irow.addWidget(self.pin_check)
        form.addRow("image", irow)
        crow = QHBoxLayout()
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "For multichannel data kept in one layer: the axis that holds the channels"
        )
        self.channel_axis_combo.currentIndexChanged.connect(self._on_channel_axis)
        self.channel_spin = QSpinBox()
        self.channel_spin.setToolTip("The channel the model sees")
        self.channel_spin.valueChanged.connect(self._on_channel)
        crow.addWidget(self.channel_axis_combo, 1)
        crow.addWidget(QLabel("channel"))
        crow.addWidget(self.channel_spin)
        self._channel_row = QWidget()
        self._channel_row.setLayout(crow)
        crow.setContentsMargins(0, 0, 0, 0)
        self._channel_label = QLabel("channel axis")
        form.addRow(self._channel_label, self._channel_row)
        self.mapping_combo = QComboBox()
        for key, text in MAPPING_MODES.items():
            self.mapping_combo.addItem(text, key)
        self.mapping_combo.setToolTip(
            "How intensities become the model's 8-bit RGB input. Stack percentiles are "
            "computed over the whole stack so that neighbouring slices look alike."
        )
        self.mapping_combo.currentIndexChanged.connect(self._on_mapping_mode)
        form.addRow("contrast", self.mapping_combo)
        orow = QHBoxLayout()
        orow.setContentsMargins(0, 0, 0, 0)
        self.tiles_check = QCheckBox("tiles")
        self.tiles_check.setToolTip(
            "Answer prompts from full-resolution tiles instead of the whole slice shrunk to "
            "1024 pixels: small objects in big images. On by default for images larger "
            "than 2048 pixels; only the tiles that prompts need are encoded."
        )
        self.tiles_check.toggled.connect(self._on_tiles_toggled)
        self.prefetch_check = QCheckBox("prefetch")
        self.prefetch_check.setChecked(True)
        self.prefetch_check.setToolTip(
            "While you are idle, encode the neighbouring slices (or the tiles around your "
            "last click) in the background; stopped at once when you click."
        )
        self.prefetch_check.toggled.connect(self._on_prefetch_toggled)
        self.optimized_check = QCheckBox("optimised")
        self.optimized_check.setToolTip(
            "Run the faster model variants made with 'napari-edgesam optimize' on your own "
            "images, only those whose masks agreed with the original model's there."
        )
        self.optimized_check.toggled.connect(self._on_optimized_toggled)
        orow.addWidget(self.tiles_check)
        orow.addWidget(self.prefetch_check)
        orow.addWidget(self.optimized_check)
        orow.addStretch(1)
        form.addRow("speed", orow)
        outer.addWidget(box)

        # output
        box = QGroupBox("Labels")
        form = QFormLayout(box)
        self.labels_combo = QComboBox()
        self.labels_combo.currentIndexChanged.connect(self._on_labels_combo)
        form.addRow("target", self.labels_combo)
        self.background_only_check = QCheckBox("paint only on background (keep existing labels)")
        self.background_only_check.setChecked(True)
        form.addRow(self.background_only_check)
        brow = QHBoxLayout()
        self.commit_button = QPushButton("Commit (C)")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear (Esc)")
        self.clear_button.clicked.connect(self.clear_prompts)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        for b in (self.commit_button, self.clear_button, self.undo_button, self.redo_button):
            brow.addWidget(b)
        form.addRow(brow)
        outer.addWidget(box)

        # propagation through stacks, batch segmentation of files
        from ._batch_panel import BatchPanel
        from ._propagation_panel import PropagationPanel

        self.tabs = QTabWidget()
        self.propagation = PropagationPanel(self)
        self.batch = BatchPanel(self)
        for panel, title in ((self.propagation, "Propagate (3D / time)"),
                             (self.batch, "Batch")):
            # a page scrolls rather than squeezing its rows when the window is short
            area = QScrollArea()
            area.setWidgetResizable(True)
            area.setFrameShape(QFrame.Shape.NoFrame)
            area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            area.setWidget(panel)
            self.tabs.addTab(area, title)
        outer.addWidget(self.tabs, 1)

        self.help_label = QLabel(HELP_TEXT)
        self.help_label.setWordWrap(True)
        self.help_label.setTextFormat(Qt.TextFormat.RichText)
        outer.addWidget(self.help_label)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.status_label)

    # ------------------------------------------------------------------ helpers -----
    def _ok(self) -> bool:
        """Whether the widget still exists (the viewer may have been closed)."""
        return self._alive["alive"]

    def start_worker(self, func, *args, returned=None, errored=None, finished=None,
                     desc=None, yielded=None, total=0):
        """Run ``func(*args)`` in a worker thread (see :meth:`.workers.WorkerRunner.start`);
        errors go to ``errored``, else to a notification."""
        return self._workers.start(func, *args, returned=returned,
                                   errored=errored or self._on_worker_error,
                                   finished=finished, desc=desc, yielded=yielded, total=total)

    def _on_worker_error(self, exc):
        self.notify_error(exc)

    def notify_error(self, exc, prefix: str = ""):
        from napari.utils.notifications import show_error

        msg = f"{prefix}{exc}" if not isinstance(exc, str) else f"{prefix}{exc}"
        _log.debug("EdgeSAM error", exc_info=exc if isinstance(exc, BaseException) else None)
        show_error(f"EdgeSAM: {msg}")
        self.set_status(f"Error: {msg}")

    def _viewer_open(self) -> bool:
        """False once the viewer's window is closed (napari removes all layers first)."""
        window = getattr(self.viewer, "window", None)
        return self._ok() and getattr(window, "_qt_window", None) is not None

    def _warn_later(self, message: str):
        """Show a warning after the current event, unless the viewer is closing meanwhile
        (closing a viewer removes its layers one by one: no point warning about that)."""
        alive = self._alive

        def show():
            if alive["alive"] and self._viewer_open():
                from napari.utils.notifications import show_warning

                show_warning(message)
            else:
                _log.info("%s", message)

        QTimer.singleShot(0, show)

    def set_status(self, text: str):
        self.status_label.setText(text)

    @property
    def status(self) -> str:
        """The status line's text."""
        return self.status_label.text()

    @property
    def busy(self) -> bool:
        """Whether a worker (model loading, download, encoding, decoding, propagation) is
        running or a slice change is about to start one. (Batch runs: :attr:`batch_busy`;
        background prefetching is never "busy".)"""
        return any(w is not None for w in (self._model_worker, self._download_worker,
                                           self._encode_worker, self._decode_worker)) or (
            self._slice_timer.isActive() or self._contrast_timer.isActive()
        ) or (self.propagation is not None and self.propagation.busy)

    @property
    def batch_busy(self) -> bool:
        """Whether the batch panel is running."""
        return self.batch is not None and self.batch.busy

    @property
    def use_tiles(self) -> bool:
        """Whether prompts are answered from tiles (see :mod:`napari_edgesam.engine.tiling`).
        Set automatically for images larger than 2048 pixels when the image is chosen."""
        return self.tiles_check.isChecked()

    @use_tiles.setter
    def use_tiles(self, value: bool):
        self.tiles_check.setChecked(bool(value))

    def set_tile_geometry(self, tile_size: int | None = None, halo: int | None = None):
        """Tile side and halo in image pixels (None: the engine's defaults, 1024 and 128)."""
        self._tile_size = None if tile_size is None else int(tile_size)
        self._tile_halo = None if halo is None else int(halo)
        if self.use_tiles:
            self._on_slice_changed(force=True)

    @property
    def tiled_predictor(self):
        """The current slice's :class:`~napari_edgesam.engine.tiling.TiledPredictor` (tiled
        images), else None."""
        emb = self.embedding
        return emb if _is_tiled_predictor(emb) else None

    @property
    def prefetch_enabled(self) -> bool:
        return self.prefetch_check.isChecked()

    @prefetch_enabled.setter
    def prefetch_enabled(self, value: bool):
        self.prefetch_check.setChecked(bool(value))

    @property
    def prefetcher(self):
        """The :class:`~._prefetch.PrefetchController` (its ``prefetcher`` is the engine's)."""
        return self._prefetch

    def _on_tiles_toggled(self, checked):
        if self._updating_combos or self._geometry is None:
            return
        self._align_preview()
        self._on_slice_changed(force=True)

    def _on_prefetch_toggled(self, checked):
        self._prefetch.enabled = bool(checked)

    @property
    def use_optimized(self) -> bool:
        """Whether the optimised variants that passed their agreement check are run (see
        :func:`napari_edgesam.engine.optimize.load_optimized`); :attr:`model` stays the
        original, :attr:`predictor` runs the variants."""
        return self.optimized_check.isChecked()

    @use_optimized.setter
    def use_optimized(self, value: bool):
        self.optimized_check.setChecked(bool(value))

    @property
    def predictor(self):
        """The :class:`~napari_edgesam.engine.Predictor` in use (None before a model)."""
        return self._predictor

    def _on_optimized_toggled(self, checked):
        if self._model is not None:
            self.set_model(self._model)

    def _prefetch_jobs(self) -> list:
        """What to encode while the user is idle: the neighbouring slices of the current one
        along the axis the user last moved on (stacks, movies), or the tiles nearest the last
        prompt's window (tiled images). Lazy reads (callables), the current mapping."""
        if (self._image_layer is None or self._model is None or self._view_problem()
                or self._lead is None):
            return []
        emb = self.embedding
        mapping = self._current_mapping
        if emb is None or mapping is None:
            return []
        geom = self._geometry
        if _is_tiled_predictor(emb):
            w = self._last_window
            if w is None:
                return []
            cx, cy = w.col0 + w.width / 2, w.row0 + w.height / 2
            tiles = [t for t in emb.grid.tiles_by_distance(cx, cy)
                     if t not in emb.encoded and t != w][:PREFETCH_TILES]
            return [{"image": (lambda t=t: emb.read(t)), "mapping": emb.mapping,
                     "rgb": emb.rgb, "tile": t.key(), "what": ("tile", t)} for t in tiles]
        axes = [i for i in range(len(geom.leading_shape)) if i != geom.channel_axis]
        if not axes:
            return []
        axis = self._scrub_axis if self._scrub_axis in axes else axes[0]
        layer = self._image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        n = geom.leading_shape[axis]
        jobs = []
        for dz in PREFETCH_SLICES:
            z = self._lead[axis] + dz
            if not 0 <= z < n:
                continue
            lead = list(self._lead)
            lead[axis] = z
            key = geom.slice_key(tuple(lead), self.channel)
            jobs.append({"image": (lambda k=key: geom.read_slice(data, k)), "mapping": mapping,
                         "rgb": geom.rgb, "what": ("slice", geom.labels_index(tuple(lead)))})
        return jobs

    def go_to_slice(self, axis: int, index: int):
        """Move napari's slider of the image's leading ``axis`` to ``index`` (data
        coordinates of the image layer)."""
        layer = self._image_layer
        if layer is None:
            return
        pos = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        pos = pos[-layer.ndim:].copy()
        pos[axis] = float(index)
        world = np.asarray(layer.data_to_world(pos), dtype=float)
        vaxis = self.viewer.dims.ndim - layer.ndim + axis
        self.viewer.dims.set_point(vaxis, float(world[axis]))

    @property
    def model(self):
        """The current :class:`~napari_edgesam.engine.EdgeSamModel` (or None)."""
        return self._model

    @property
    def image_layer(self):
        return self._image_layer

    @property
    def labels_layer(self):
        """The target Labels layer (None until the first commit when "new" is chosen)."""
        return self._labels_layer

    @property
    def points_layer(self):
        return self._points_layer

    @property
    def boxes_layer(self):
        return self._boxes_layer

    @property
    def preview_layer(self):
        return self._preview_layer

    @property
    def preview_mask(self) -> np.ndarray | None:
        """The current preview (``(H, W)`` bool on the current slice) or None."""
        p = self._preview
        if p is None:
            return None
        hw = self._geometry.spatial_shape
        if p.mask.shape == hw:
            return p.mask.astype(bool)
        full = np.zeros(hw, dtype=bool)  # tiled images keep only the mask's crop
        r0, c0 = p.offset
        full[r0:r0 + p.mask.shape[0], c0:c0 + p.mask.shape[1]] = p.mask.view(bool)
        return full

    @property
    def preview_crop(self):
        """``(mask crop (bool), (row0, col0), bbox)`` of the current preview, or None. Cheap
        for big images (no whole-slice array)."""
        p = self._preview
        crop = None if p is None else p.crop()
        return None if crop is None else (crop, p.bbox[:2], p.bbox)

    @property
    def embedding(self):
        """The embedding of the current slice (None while it is being computed); for tiled
        images the slice's :class:`~napari_edgesam.engine.tiling.TiledPredictor`."""
        return self._embedding if self._embedding_key == self._wanted_key() else None

    @property
    def paint_background_only(self) -> bool:
        return self.background_only_check.isChecked()

    @paint_background_only.setter
    def paint_background_only(self, value: bool):
        self.background_only_check.setChecked(bool(value))

    @property
    def mapping_mode(self) -> str:
        """``"auto"``, ``"contrast"`` (the layer's contrast limits) or ``"percentiles"``."""
        return self.mapping_combo.currentData()

    @mapping_mode.setter
    def mapping_mode(self, mode: str):
        i = self.mapping_combo.findData(mode)
        if i < 0:
            raise ValueError(f"unknown contrast mapping {mode!r}; one of {list(MAPPING_MODES)}")
        self.mapping_combo.setCurrentIndex(i)

    # ------------------------------------------------------------------ models ------
    def _populate_models(self):
        from napari_edgesam.engine.models import list_cards, model_status

        self._updating_combos = True
        try:
            current = self.model_combo.currentData()
            self.model_combo.clear()
            try:
                cards = list_cards()
            except Exception as exc:  # an invalid card file: still offer custom files
                self.notify_error(exc, "cannot read the model cards: ")
                cards = []
            for card in cards:
                try:
                    # size + memo only: never hash files on the GUI thread
                    state = model_status(card, verify=False).state
                except Exception:  # noqa: BLE001 - shown as unavailable
                    state = "missing"
                suffix = "" if state in ("verified", "present") else "  (not downloaded)"
                self.model_combo.addItem(card.display_name + suffix, ("card", card, state))
            if self._model is not None and not any(
                c.name == self._model.name for c in cards
            ):
                self.model_combo.addItem(self._model_label(self._model), ("model", self._model))
            self.model_combo.addItem(CUSTOM_PICK, ("pick", None))
            # select what is in use, else what was selected
            idx = -1
            for i in range(self.model_combo.count()):
                d = self.model_combo.itemData(i)
                if self._model is not None and (
                    (d[0] == "model" and d[1] is self._model)
                    or (d[0] == "card" and d[1].name == self._model.name)
                ):
                    idx = i
            if idx < 0 and current is not None:
                for i in range(self.model_combo.count()):
                    d = self.model_combo.itemData(i)
                    if d[0] == current[0] and d[0] == "card" and d[1].name == current[1].name:
                        idx = i
            self.model_combo.setCurrentIndex(max(idx, 0))
        finally:
            self._updating_combos = False
        self._update_download_button()

    @staticmethod
    def _model_label(model) -> str:
        name = model.name or "custom"
        if name == "custom" or name.startswith("custom"):
            return f"custom: {Path(model.encoder_path).name}"
        return f"{name}: {Path(model.encoder_path).name}"

    def _selected_model_item(self):
        return self.model_combo.currentData()

    def _update_download_button(self):
        d = self._selected_model_item()
        busy = self._download_worker is not None
        needs = d is not None and d[0] == "card" and d[2] not in ("verified", "present")
        self.download_button.setEnabled(bool(needs) and not busy)

    def _load_default_model(self):
        """Use the default published model when its files are here (verified in a worker)."""
        for i in range(self.model_combo.count()):
            d = self.model_combo.itemData(i)
            if d[0] == "card" and d[1].default and d[2] in ("verified", "present"):
                self.model_combo.setCurrentIndex(i)
                self._load_card(d[1])
                return

    def _on_model_chosen(self, index: int):
        if self._updating_combos:
            return
        d = self.model_combo.itemData(index)
        if d is None:
            return
        kind = d[0]
        if kind == "pick":
            enc, _ = QFileDialog.getOpenFileName(
                self, "EdgeSAM encoder (ONNX)", "", "ONNX files (*.onnx);;All files (*)"
            )
            if enc:
                dec, _ = QFileDialog.getOpenFileName(
                    self, "EdgeSAM decoder (ONNX)", str(Path(enc).parent),
                    "ONNX files (*.onnx);;All files (*)",
                )
                if dec:
                    self.load_custom_model(enc, dec)
                    return
            self._populate_models()  # back to what is in use
        elif kind == "card":
            if d[2] in ("verified", "present"):
                if self._model is None or self._model.name != d[1].name:
                    self._load_card(d[1])
            else:
                self.set_status(
                    f"{d[1].display_name} is not on this machine: press Download "
                    "(or choose custom files...)."
                )
        elif kind == "model":
            if d[1] is not self._model:
                self.set_model(d[1])
        self._update_download_button()

    def _load_card(self, card):
        self.set_status(f"Loading {card.display_name}...")
        self._model_worker = self.start_worker(
            _resolve_card_job, card,
            returned=self._on_model_loaded,
            errored=lambda exc: self._on_model_failed(exc),
            finished=self._on_model_worker_done,
            desc=f"EdgeSAM: checking {card.display_name}",
        )

    def load_custom_model(self, encoder, decoder):
        """Use an encoder/decoder pair of ONNX files (checked and loaded in a worker).

        The model is named after the encoder file ("custom: <file name>"); it is never
        presented as EdgeSAM.
        """
        from napari_edgesam.engine import EdgeSamModel

        model = EdgeSamModel(encoder, decoder, name=f"custom: {Path(encoder).name}")
        self.set_status(f"Loading {Path(encoder).name}...")
        self._model_worker = self.start_worker(
            _load_model_job, model,
            returned=self._on_model_loaded,
            errored=lambda exc: self._on_model_failed(exc),
            finished=self._on_model_worker_done,
            desc="EdgeSAM: loading model",
        )
        return self._model_worker

    def _on_model_loaded(self, model):
        self.set_model(model)

    def _on_model_failed(self, exc):
        self.notify_error(exc, "model not usable: ")
        self._populate_models()

    def _on_model_worker_done(self):
        self._model_worker = None
        self._update_status()

    def set_model(self, model):
        """Use ``model`` (an :class:`~napari_edgesam.engine.EdgeSamModel`) from now on.

        Its sessions are created lazily in the encoder worker; embeddings of the previous
        model stay in the cache (the model is part of the cache key).
        """
        from napari_edgesam.engine import Predictor

        model = getattr(model, "source", None) or model  # the original, if given a variant
        self._model = model
        self._predictor = Predictor(self._runnable(model))  # default memory + disk cache
        self._prefetch.set_predictor(self._predictor)
        self._embedding = None
        self._embedding_key = None
        self._populate_models()
        self._clear_preview()
        self._request_encode()

    def _runnable(self, model):
        """``model``, or its optimised variants when "optimised" is ticked (records are
        read only: cheap); says in the status line and notifications which are used."""
        if not self.use_optimized:
            return model
        from napari.utils.notifications import show_info

        from napari_edgesam.engine.optimize import load_optimized

        report: list = []
        try:
            optimized = load_optimized(model, report=report)
        except Exception as exc:  # unreadable records: run the original
            self.notify_error(exc, "optimised variants not usable: ")
            return model
        if optimized is model:
            why = "; ".join(f"{r.kind}: {r.status}" for r in report) or "none made"
            show_info(f"EdgeSAM: no optimised variant of {model.name} passed its check here "
                      f"({why}); running the original. Make them with 'napari-edgesam "
                      "optimize IMAGES' on a few of your images.")
            return model
        show_info(f"EdgeSAM: running {optimized.name} (optimised variants that agreed with "
                  "the original on your images).")
        return optimized

    # ------------------------------------------------------------------ download ----
    def _ask_licence(self, card) -> bool:
        """Show the licence summary with its link; True when the user accepts."""
        box = QMessageBox(self)
        box.setWindowTitle(f"{card.display_name}: licence")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(
            f"The {card.display_name} weights are licensed under the "
            f"<b>{card.licence_name}</b>: "
            f"<a href='{card.licence_url}'>{card.licence_url}</a>"
        )
        box.setInformativeText(card.licence_summary)
        accept = box.addButton("Accept and download", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is accept

    def _on_download_clicked(self):
        d = self._selected_model_item()
        if d is None or d[0] != "card":
            return
        self.download(d[1])

    def download(self, card):
        """Download a published model (after the licence dialog, the first time) in a worker,
        then use it."""
        from napari_edgesam.engine.models import licence_notice_shown

        if self._download_worker is not None:
            return None
        if not licence_notice_shown(card) and not self._ask_licence(card):
            self.set_status("Download cancelled (licence not accepted).")
            return None
        self._download_state = {"done": 0, "total": card.total_size, "filename": ""}
        self.download_progress.setRange(0, 1000)
        self.download_progress.setValue(0)
        self.download_progress.setVisible(True)
        self.cancel_download_button.setVisible(True)
        self.set_status(f"Downloading {card.display_name}...")
        self._download_worker = self.start_worker(
            _download_job, card, self._download_state,
            returned=self._on_model_loaded,
            errored=lambda exc: self.notify_error(exc, "download failed: "),
            finished=self._on_download_done,
            desc=f"EdgeSAM: downloading {card.display_name}",
        )
        self._download_timer.start()
        self._update_download_button()
        return self._download_worker

    def _update_download_progress(self):
        st = self._download_state
        total = st.get("total") or 0
        if total:
            self.download_progress.setValue(int(1000 * min(1.0, st.get("done", 0) / total)))
        if st.get("filename"):
            self.download_progress.setFormat(f"{st['filename']}: %p%")

    def _cancel_download(self):
        self._download_state["cancel"] = True

    def _on_download_done(self):
        self._download_worker = None
        self._download_timer.stop()
        self.download_progress.setVisible(False)
        self.cancel_download_button.setVisible(False)
        self._populate_models()
        self._update_status()

    # ------------------------------------------------------------------ layers ------
    def _own_layers(self):
        return [x for x in (self._points_layer, self._boxes_layer, self._preview_layer) if x]

    def _image_layers(self):
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image)]

    def _labels_layers(self):
        from napari.layers import Labels

        own = self._own_layers()
        return [lay for lay in self.viewer.layers
                if isinstance(lay, Labels) and not any(lay is o for o in own)
                and lay.name != _prompts.PREVIEW_NAME]

    def _refresh_layer_combos(self):
        self._updating_combos = True
        try:
            self.image_combo.clear()
            images = self._image_layers()
            for lay in images:
                self.image_combo.addItem(lay.name, lay)
            idx = next((i for i, lay in enumerate(images) if lay is self._image_layer), -1)
            self.image_combo.setCurrentIndex(idx)
            self.labels_combo.clear()
            self.labels_combo.addItem(NEW_LABELS, None)
            labels = self._labels_layers()
            for lay in labels:
                self.labels_combo.addItem(lay.name, lay)
            idx = next((i + 1 for i, lay in enumerate(labels) if lay is self._labels_layer), 0)
            self.labels_combo.setCurrentIndex(idx)
        finally:
            self._updating_combos = False

    def _pick_first_image(self):
        images = self._image_layers()
        if images:
            self.set_image_layer(images[-1])

    def _on_layer_inserted(self, event):
        """An image opened while the panel is docked (sample menu, File > Open, drag and
        drop, a script) becomes the panel's image unless one is pinned; clicks then go to
        the prompt layers again (napari makes the new layer the active one)."""
        from napari.layers import Image

        if not self._ok():
            return
        layer = event.value
        if isinstance(layer, Image) and not self.pinned and layer is not self._image_layer:
            self._refresh_layer_combos()
            self.set_image_layer(layer)
            QTimer.singleShot(0, self._take_clicks)
            return
        self._on_layers_changed()

    def _take_clicks(self):
        """Make the points layer the active one, with the prompt layers on top."""
        if not self._ok() or self._points_layer is None:
            return
        layers = self.viewer.layers
        own = [x for x in (self._preview_layer, self._boxes_layer, self._points_layer)
               if x is not None and x in layers]
        for x in own:
            i = layers.index(x)
            if i != len(layers) - 1:
                layers.move(i, len(layers))
        layers.selection.active = self._points_layer
        self._update_status()

    @property
    def pinned(self) -> bool:
        """Whether the panel stays on its image when another image is opened."""
        return self.pin_check.isChecked()

    @pinned.setter
    def pinned(self, value: bool):
        self.pin_check.setChecked(bool(value))

    def _on_active_layer(self, event=None):
        if self._ok():
            self._update_status()

    def _clicks_problem(self) -> str | None:
        """Why a click on the canvas does not add a point (another layer is active)."""
        active = self.viewer.layers.selection.active
        if active is None or self._points_layer is None:
            return None
        if active is self._points_layer:
            if self._points_layer.mode != "add":
                return (f"'{active.name}' is in {self._points_layer.mode} mode: press 2 "
                        "(add points) to click prompts again.")
            return None
        if active is self._boxes_layer:
            return None
        return (f"Clicks go to '{active.name}', selected in the layer list. To segment, "
                f"select '{self._points_layer.name}' in the layer list.")

    def _on_layers_changed(self, event=None):
        if not self._ok():
            return
        self._refresh_layer_combos()
        if self._image_layer is None:
            self._pick_first_image()

    def _on_layer_removed(self, event):
        if not self._ok():
            return
        layer = event.value
        self._stashed_prompts.pop(getattr(layer, "unique_id", None), None)
        if layer is self._image_layer:
            working = self._encode_worker is not None or self._decode_worker is not None
            self._disconnect_image(layer)
            self._image_layer = None
            self._geometry = None
            self._embedding = None
            self._embedding_key = None
            self._clear_preview()
            if working:
                self._warn_later(
                    f"EdgeSAM: the image layer '{layer.name}' was removed while it was being "
                    "processed; its result is dropped and no layer was changed."
                )
        if layer is self._labels_layer:
            self._labels_layer = None
        self._label_ids.forget(layer)
        if self.propagation is not None:
            self.propagation.on_layer_removed(layer)
        if layer is self._points_layer:
            self._points_layer = None
        if layer is self._boxes_layer:
            self._boxes_layer = None
        if layer is self._preview_layer:
            self._preview_layer = None
            self._preview = None
        self._refresh_layer_combos()
        if self._image_layer is None:
            self._pick_first_image()
        self._update_status()

    def _on_image_combo(self, index):
        if self._updating_combos or index < 0:
            return
        layer = self.image_combo.itemData(index)
        if layer is not None and layer is not self._image_layer:
            self.set_image_layer(layer)

    def _on_labels_combo(self, index):
        if self._updating_combos or index < 0:
            return
        layer = self.labels_combo.itemData(index)
        if layer is None:
            self._labels_layer = None
            return
        try:
            self._check_labels_layer(layer)
        except ValueError as exc:
            self.notify_error(exc)
            self._refresh_layer_combos()
            return
        self._labels_layer = layer
        self._label_ids.watch(layer)  # big layers: find the largest id in the background

    def _check_labels_layer(self, layer):
        if self._geometry is None:
            return
        want = self._geometry.labels_shape
        if tuple(layer.data.shape) != want:
            raise ValueError(
                f"the Labels layer '{layer.name}' has shape {tuple(layer.data.shape)}, but the "
                f"image needs {want}; choose another layer or '{NEW_LABELS}'"
            )

    def set_labels_layer(self, layer):
        """Commit into ``layer`` (a Labels layer of the image's shape), or into a new layer
        created at the first commit when ``layer`` is None."""
        if layer is not None:
            self._check_labels_layer(layer)
            self._label_ids.watch(layer)  # big layers: find the largest id in the background
        self._labels_layer = layer
        self._refresh_layer_combos()

    def _disconnect_image(self, layer):
        for name, cb in (("data", self._on_image_data), ("contrast_limits", self._on_contrast),
                         *((t, self._on_image_transform) for t in _TRANSFORM_EVENTS)):
            try:
                getattr(layer.events, name).disconnect(cb)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                pass

    def set_image_layer(self, layer):
        """Segment ``layer`` (a napari Image layer): 2D grey or RGB, stacks, time series."""
        from napari.layers import Image

        if not isinstance(layer, Image):
            raise TypeError(f"EdgeSAM segments Image layers, not {type(layer).__name__}")
        if self._image_layer is not None and self._image_layer is not layer:
            self._disconnect_image(self._image_layer)
        data = layer.data[0] if layer.multiscale else layer.data
        try:
            geom = ImageGeometry(tuple(data.shape), rgb=bool(layer.rgb))
        except ValueError as exc:
            self.notify_error(exc)
            return
        from napari_edgesam.engine.tiling import needs_tiling

        if self._image_layer is not None and self._image_layer is not layer:
            self._stash_prompts()
        self._image_layer = layer
        self._geometry = geom
        self._data_version = 0
        self._stack_mappings = {}
        self._embedding = None
        self._embedding_key = None
        self._current_mapping = None
        self._last_window = None
        self._scrub_axis = None
        self._updating_combos = True
        try:  # tiles by default for big slices (the user may switch them either way)
            self.tiles_check.setChecked(needs_tiling(geom.spatial_shape))
        finally:
            self._updating_combos = False
        layer.events.data.connect(self._on_image_data)
        layer.events.contrast_limits.connect(self._on_contrast)
        for name in _TRANSFORM_EVENTS:
            getattr(layer.events, name).connect(self._on_image_transform)
        if self._labels_layer is not None:
            try:
                self._check_labels_layer(self._labels_layer)
            except ValueError:
                self._labels_layer = None
        self._update_channel_controls()
        self._ensure_prompt_layers(reset=True)
        self._refresh_layer_combos()
        self._lead = self._current_lead()
        self._clear_preview()
        self._request_encode()
        self._restore_prompts(layer)
        self._update_status()

    def _stash_prompts(self):
        """Keep the current image's prompts for when the user comes back to it."""
        pts, shapes = self._points_layer, self._boxes_layer
        saved = {}
        if pts is not None and len(pts.data):
            saved["points"] = (np.array(pts.data), pts.features.copy())
        if shapes is not None and shapes.nshapes:
            saved["boxes"] = ([np.array(v) for v in shapes.data], list(shapes.shape_type))
        if saved:
            self._stashed_prompts[self._image_layer.unique_id] = saved
        else:
            self._stashed_prompts.pop(self._image_layer.unique_id, None)

    def _restore_prompts(self, layer):
        saved = self._stashed_prompts.pop(layer.unique_id, None)
        if not saved:
            return
        pts, shapes = self._points_layer, self._boxes_layer
        if "boxes" in saved and shapes is not None and shapes.ndim == layer.ndim:
            shapes.data = list(zip(*saved["boxes"], strict=True))
        if "points" in saved and pts is not None and pts.ndim == layer.ndim:
            data, features = saved["points"]
            pts.data = data
            pts.features = features

    def _update_channel_controls(self):
        geom = self._geometry
        self._updating_combos = True
        try:
            self.channel_axis_combo.clear()
            self.channel_axis_combo.addItem("none", None)
            if geom is not None:
                for ax, n in enumerate(geom.leading_shape):
                    self.channel_axis_combo.addItem(f"axis {ax} ({n})", ax)
                if geom.channel_axis is not None:
                    self.channel_axis_combo.setCurrentIndex(geom.channel_axis + 1)
            self.channel_spin.setRange(0, max(0, (geom.n_channels if geom else 1) - 1))
            self.channel_spin.setEnabled(geom is not None and geom.channel_axis is not None)
            has_axes = geom is not None and len(geom.leading_shape) > 0
            self._channel_row.setVisible(has_axes)
            self._channel_label.setVisible(has_axes)
        finally:
            self._updating_combos = False
        if self.propagation is not None:
            self.propagation.refresh_image()

    def set_channel_axis(self, axis: int | None, channel: int = 0):
        """Treat leading ``axis`` of the image as channels and feed ``channel`` to the model.

        The target Labels layer then has no channel axis.
        """
        if self._geometry is None:
            raise ValueError("no image layer")
        geom = ImageGeometry(self._geometry.shape, self._geometry.rgb, axis)
        if self._labels_layer is not None and geom.labels_shape != self._geometry.labels_shape:
            self._labels_layer = None
        self._geometry = geom
        self._stack_mappings = {}
        self._update_channel_controls()
        self._updating_combos = True
        self.channel_spin.setValue(int(channel))
        self._updating_combos = False
        self._refresh_layer_combos()
        self._on_slice_changed(force=True)
        if geom.channel_axis is not None and geom.channel_axis > 0:
            # napari lines layers up by their last axes: a Labels layer without this axis
            # would show its slices along the wrong sliders. Say so before anything is drawn.
            self._warn_later(
                f"EdgeSAM: channels on axis {geom.channel_axis} of "
                f"'{self._image_layer.name}' {geom.shape}: napari lines layers up by their "
                "last axes, so the Labels layer (which has no channel axis) will not line up "
                "with this image. Segmentation and the label data are correct, but for a "
                "correct display open the image with its channels split (for example "
                f"viewer.add_image(data, channel_axis={geom.channel_axis}) in napari's "
                "console) and pick one channel's layer."
            )

    def _on_channel_axis(self, index):
        if self._updating_combos or self._geometry is None:
            return
        self.set_channel_axis(self.channel_axis_combo.itemData(index), 0)

    def _on_channel(self, value):
        if self._updating_combos or self._geometry is None:
            return
        self._on_slice_changed(force=True)

    @property
    def channel(self) -> int:
        return int(self.channel_spin.value())

    def _ensure_prompt_layers(self, reset: bool = False):
        """Create (or realign) the points, box and preview layers for the image."""
        layer = self._image_layer
        if layer is None:
            return
        geom = self._geometry
        keep_selection = list(self.viewer.layers.selection)
        active = self.viewer.layers.selection.active
        created = False
        if self._preview_layer is None or self._preview_layer not in self.viewer.layers:
            # big (tiled) images: the preview holds crops, never a whole-slice array
            shape = (1, 1) if self._crop_preview() else geom.spatial_shape
            self._preview_layer = _prompts.make_preview_layer(layer, self.viewer, shape)
            self._shown_offset = (0, 0)
            created = True
        for attr, make, install in (
            ("_boxes_layer", _prompts.make_boxes_layer, _prompts.install_boxes_bindings),
            ("_points_layer", _prompts.make_points_layer, _prompts.install_points_bindings),
        ):
            cur = getattr(self, attr)
            if cur is not None and (cur not in self.viewer.layers or cur.ndim != layer.ndim):
                if cur in self.viewer.layers:
                    self.viewer.layers.remove(cur)
                cur = None
                setattr(self, attr, None)
            if cur is None:
                cur = make(layer, self.viewer)
                install(cur, self)
                if attr == "_points_layer":
                    cur.events.mode.connect(self._on_active_layer)
                    cur.events.data.connect(self._on_prompts_changed)
                    cur.events.features.connect(self._on_prompts_changed)
                else:
                    cur.events.data.connect(self._on_prompts_changed)
                setattr(self, attr, cur)
                created = True
            elif reset:
                _prompts.copy_transform(layer, cur)
        if reset:
            self._align_preview()
            self._clear_prompt_data()
        if created:
            # clicks go to the points layer
            self.viewer.layers.selection.active = self._points_layer
        elif active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
            self.viewer.layers.selection.update(
                [x for x in keep_selection if x in self.viewer.layers]
            )

    def _align_preview(self):
        layer, pv = self._image_layer, self._preview_layer
        if layer is None or pv is None:
            return
        nd = layer.ndim
        hw = self._geometry.spatial_shape
        _prompts.copy_transform(layer, pv, list(range(nd - 2, nd)))
        if self._crop_preview():
            if pv.data.shape == hw and hw != (1, 1):  # was showing whole slices
                pv.data = np.zeros((1, 1), dtype=np.uint8)
                self._shown_offset = (0, 0)
            self._place_preview(self._shown_offset)
        elif pv.data.shape != hw:
            pv.data = np.zeros(hw, dtype=np.uint8)

    def _on_image_transform(self, event=None):
        if not self._ok() or self._image_layer is None:
            return
        layer = self._image_layer
        for pl in (self._points_layer, self._boxes_layer):
            if pl is not None:
                _prompts.copy_transform(layer, pl)
        self._align_preview()
        self._on_slice_changed(force=True)

    def _on_image_data(self, event=None):
        if not self._ok() or self._image_layer is None:
            return
        layer = self._image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        if tuple(data.shape) != self._geometry.shape:
            self.set_image_layer(layer)
            return
        self._data_version += 1
        self._stack_mappings = {}
        self._on_slice_changed(force=True)

    # ------------------------------------------------------------------ slices ------
    def _current_lead(self):
        if self._image_layer is None:
            return None
        pos = self._image_layer.world_to_data(self.viewer.dims.point)
        return self._geometry.leading_index(pos)

    def _slice_key(self, lead=None):
        lead = self._lead if lead is None else lead
        return self._geometry.slice_key(lead, self.channel)

    def _view_problem(self) -> str | None:
        if self._image_layer is None:
            return "Add or choose an image layer."
        if self.viewer.dims.ndisplay != 2:
            return "EdgeSAM works in the 2D view: switch napari to 2D (Ctrl+Y)."
        nd = self.viewer.dims.ndim
        if list(self.viewer.dims.displayed) != [nd - 2, nd - 1]:
            return ("EdgeSAM segments the last two axes of the image: reset the axis order "
                    "(napari's 'transpose'/'roll' buttons changed it).")
        return None

    def _on_dims_step(self, event=None):
        if self._ok():
            self._slice_timer.start()

    def _on_slice_changed(self, force: bool = False):
        if not self._ok() or self._image_layer is None:
            self._update_status()
            return
        lead = self._current_lead()
        if lead == self._lead and not force:
            self._update_status()
            return
        if lead is not None and self._lead is not None and len(lead) == len(self._lead):
            moved = [i for i, (a, b) in enumerate(zip(lead, self._lead, strict=True)) if a != b]
            if moved:
                self._scrub_axis = moved[0]  # prefetch along the axis the user moves on
        self._lead = lead
        self._last_window = None
        self._clear_preview()
        self._request_encode()
        self._request_predict()

    def _slice_text(self, key=None) -> str:
        geom = self._geometry
        if geom is None:
            return ""
        lead = self._lead if key is None else key
        idx = geom.labels_index(lead) if lead is not None else ()
        parts = []
        if len(idx) == 1:
            parts.append(f"slice {idx[0]}")
        elif idx:
            parts.append("slice " + ", ".join(str(i) for i in idx))
        if geom.channel_axis is not None:
            parts.append(f"channel {self.channel}")
        return " ".join(parts) if parts else "image"

    # ------------------------------------------------------------------ contrast ----
    def _on_mapping_mode(self, index):
        if self._updating_combos:
            return
        self._on_slice_changed(force=True)

    def _on_contrast(self, event=None):
        if self._ok() and self.mapping_mode == "contrast":
            self._contrast_timer.start()

    def _on_contrast_settled(self):
        if self._ok():
            self._on_slice_changed(force=True)

    def _mapping_spec(self):
        mode = self.mapping_mode
        if mode == "contrast":
            lo, hi = (float(v) for v in self._image_layer.contrast_limits)
            return ("contrast", (lo, hi))
        return (mode,)

    # ------------------------------------------------------------------ encoder -----
    def _wanted_key(self):
        if self._image_layer is None or self._model is None or self._lead is None:
            return None
        return (self._image_layer.unique_id, self._data_version, self._slice_key(),
                self._mapping_spec(), id(self._model), self._tiled_key())

    def _tiled_key(self):
        """``(tile_size, halo)`` when the current image is answered through tiles, else
        None."""
        if self._geometry is None or not self.tiles_check.isChecked():
            return None
        return (self._tile_size, self._tile_halo)

    def _stack_mapping_key(self):
        spec = self._mapping_spec()
        if spec[0] == "contrast":
            return None
        ch = self.channel if self._geometry.channel_axis is not None else None
        return (self._image_layer.unique_id, self._data_version, self._geometry.channel_axis,
                ch, spec[0])

    def _request_encode(self):
        """Encode the current slice unless its embedding is here or on its way."""
        if self._image_layer is None or self._model is None:
            self._update_status()
            return
        problem = self._view_problem()
        if problem:
            self.set_status(problem)
            return
        key = self._wanted_key()
        if key == self._embedding_key and self._embedding is not None:
            return
        if key == self._failed_key:
            return  # it failed (the user was told); a new slice, mapping or model retries
        if self._encode_worker is not None:
            if self._encode_key != key:
                self._encode_pending = True
                self._cancel_encode()  # stale: stop it, the newest slice comes next
            return
        layer = self._image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        smk = self._stack_mapping_key()
        stack_mapping = self._stack_mappings.get(smk) if smk is not None else None
        self._encode_key = key
        self._encode_pending = False
        self._encode_control = control = {}
        self._prefetch.activity()  # the slice the user looks at comes first
        text = self._slice_text()
        tiled = self._tiled_key()
        if tiled is not None:
            # big image: no whole-slice embedding; tiles are encoded when prompts need them
            self.set_status(f"Preparing {text} (large image: tiles)...")
            job, args = workers.prepare_tiles_job, (*tiled, control)
            desc = f"EdgeSAM: preparing tiles of {text}"
        else:
            self.set_status(f"Encoding {text}...")
            job, args = _encode_job, (control,)
            desc = f"EdgeSAM: encoding {text}"
        self._encode_worker = self.start_worker(
            job, self._predictor, data, self._geometry, key[2], key[3], stack_mapping, *args,
            returned=lambda res, k=key, s=smk: self._on_encoded(k, s, res),
            errored=lambda exc, k=key: self._on_encode_failed(k, exc),
            finished=self._on_encode_done,
            desc=desc,
        )

    def _cancel_encode(self):
        """Ask the running encoder to stop (it returns None, the result is dropped)."""
        workers.cancel(self._encode_control)

    def _on_encoded(self, key, smk, result):
        if result is None:
            return  # cancelled
        embedding, mapping, seconds = result
        if smk is not None:
            self._stack_mappings[smk] = mapping
        if key != self._wanted_key():
            return  # the slice, image or mapping changed meanwhile: dropped
        self._embedding = embedding
        self._embedding_key = key
        self._current_mapping = mapping
        if not _is_tiled_predictor(embedding):
            self.last_encode_seconds = seconds
        self._update_status()
        self._request_predict()  # answers clicks made while encoding

    def _on_encode_failed(self, key, exc):
        self._failed_key = key
        if key == self._wanted_key():
            self.notify_error(exc, f"cannot encode {self._slice_text(key[2])}: ")

    def _on_encode_done(self):
        self._encode_worker = None
        self._encode_key = None
        self._prefetch.activity()  # idle from here: prefetch after a while
        if self._encode_pending or (
            self._wanted_key() is not None and self._embedding_key != self._wanted_key()
        ):
            self._encode_pending = False
            self._request_encode()
        self._update_status()

    # ------------------------------------------------------------------ prompts -----
    def _to_image_data(self, layer, coords) -> np.ndarray:
        """Data coordinates of ``layer`` -> data coordinates of the image layer."""
        world = layer.data_to_world(coords)
        return np.asarray(self._image_layer.world_to_data(world), dtype=float)

    def _gather_prompts(self) -> _Prompts:
        geom = self._geometry
        lead = self._lead
        points, labels = [], []
        pts = self._points_layer
        if pts is not None and len(pts.data):
            feats = pts.features
            kinds = (list(feats["prompt"]) if "prompt" in feats
                     else [_prompts.POSITIVE] * len(pts.data))
            for coord, kind in zip(pts.data, kinds, strict=False):
                d = self._to_image_data(pts, coord)
                if not geom.same_slice(geom.leading_index(d), lead):
                    continue
                r, c = d[-2], d[-1]
                if not geom.inside(r, c):
                    continue
                points.append((float(c), float(r)))
                labels.append(0 if kind == _prompts.NEGATIVE else 1)
        box = None
        shapes = self._boxes_layer
        if shapes is not None and shapes.nshapes:
            for verts in reversed(shapes.data):
                d = np.array([self._to_image_data(shapes, v) for v in verts])
                if not geom.same_slice(geom.leading_index(d[0]), lead):
                    continue
                box = rectangle_to_box(d[:, -2:], geom.spatial_shape)
                if box is not None:
                    break
        return _Prompts(tuple(points), tuple(labels), box)

    def _on_prompts_changed(self, event=None):
        if not self._ok() or self._drawing_box:
            return
        action = getattr(event, "action", None)
        if action is not None and str(action) in ("adding", "removing", "changing"):
            return  # the matching "added"/"removed"/"changed" follows
        prompts = None
        if self._last_request is not None and self._geometry is not None \
                and self._lead is not None:
            prompts = self._gather_prompts()
            if self._last_request == (self._wanted_key(), prompts, self._generation):
                return  # the same prompts again (napari sends "features", then "data")
        self._request_predict(prompts)

    def _request_predict(self, prompts: _Prompts | None = None):
        """Run the decoder on the newest prompt state (off the GUI thread); ``prompts``
        when the caller has just gathered them."""
        if self._image_layer is None or self._geometry is None or self._lead is None:
            return
        self._generation += 1
        gen = self._generation
        if prompts is None:
            prompts = self._gather_prompts()
        self._last_request = (self._wanted_key(), prompts, gen)
        self._prefetch.activity()  # a click needs the cores: stop any prefetch at once
        if prompts.empty:
            self._show_preview(None, gen)
            self._update_status()
            return
        if not prompts.usable:
            self._show_preview(None, gen)
            self.set_status("Only negative points: add a positive point or a box.")
            return
        if self._model is None:
            self._update_status()
            return
        emb = self.embedding
        if emb is None:
            self._request_encode()
            if self._encode_worker is not None:
                what = "the image" if self._tiled_key() else self._slice_text()
                self.set_status(
                    f"{'Preparing' if self._tiled_key() else 'Encoding'} {what}... your "
                    "prompts are answered when it is done."
                )
            return
        window = None
        if _is_tiled_predictor(emb):
            try:
                window = emb.windows_for(list(prompts.points) or None, prompts.box)
            except Exception as exc:  # noqa: BLE001 - a prompt the tiles cannot answer
                self.notify_error(exc)
                return
        if self._decode_worker is not None:
            self._decode_pending = True
            ctl = self._decode_control
            if window is not None and ctl.get("window") is not None and ctl["window"] != window:
                workers.cancel(ctl)  # a tile no longer needed by the newest prompts
            return
        self._decode_pending = False
        key = self._embedding_key
        if window is not None:
            self._decode_control = control = {"window": window}
            self._last_window = window
            if window not in emb.windows:
                self.set_status(
                    f"Encoding the tile at rows {window.row0}..{window.row1 - 1}, columns "
                    f"{window.col0}..{window.col1 - 1} of {self._slice_text()} (large image: "
                    "tiles are encoded when a prompt needs them)..."
                )
            self._decode_worker = self.start_worker(
                workers.tiled_decode_job, emb, prompts, control,
                returned=lambda res, g=gen, k=key: self._on_decoded(g, k, res),
                errored=self._on_worker_error,
                finished=self._on_decode_done,
            )
            return
        self._decode_control = {}
        self._decode_worker = self.start_worker(
            _decode_job, self._predictor, emb, prompts,
            returned=lambda res, g=gen, k=key: self._on_decoded(g, k, res),
            errored=self._on_worker_error,
            finished=self._on_decode_done,
        )

    def _on_decoded(self, gen, key, result):
        if result is None:
            return  # cancelled (a tile the newest prompts do not need)
        self.last_decode_seconds = result.seconds
        if key != self._embedding_key or key != self._wanted_key() or gen <= self._shown_generation:
            return  # stale: another slice, image or model, or older than what is shown
        self._show_preview(result.mask, gen, result.bbox, result.offset)
        area = result.area
        where = self._slice_text()
        if result.window is not None:
            where += f" (tile at rows {result.window.row0}.., columns {result.window.col0}..)"
        self.set_status(
            f"Preview on {where}: {area} px, stability {result.score:.2f}. "
            "C: commit, Esc: clear."
        )
        if self._commit_when_ready and gen == self._generation:
            self._commit_when_ready = False
            self.commit()

    def _on_decode_done(self):
        self._decode_worker = None
        self._decode_control = {}
        if self._decode_pending:
            self._decode_pending = False
            self._request_predict()
        self._prefetch.activity()

    def _show_preview(self, mask, gen, bbox=None, offset=(0, 0)):
        self._shown_generation = gen
        self._preview = None if mask is None else _Preview(mask, tuple(offset), bbox,
                                                           self._lead)
        self.render_preview()

    def render_preview(self):
        """Show the prompt preview (value 1, yellow) on the preview layer, else the pending
        propagation result on the current slice (value 2, cyan), else nothing."""
        geom = self._geometry
        if geom is None:
            return
        p = self._preview
        mask, offset, value = (None, (0, 0), 1) if p is None else (p.mask, p.offset, 1)
        if mask is None and self.propagation is not None and self._lead is not None:
            overlay = self.propagation.overlay(self._image_layer, self._lead)
            if overlay is not None:
                mask, offset = overlay
                value = 2
        pv = self._preview_layer
        if pv is None or pv not in self.viewer.layers:
            if mask is None:
                return
            self._ensure_prompt_layers()
            pv = self._preview_layer
        hw = geom.spatial_shape
        if self._crop_preview():
            # big images: the preview layer holds only the mask's crop, moved into place
            if mask is None:
                if pv.data.shape != (1, 1) or pv.data.any():
                    pv.data = np.zeros((1, 1), np.uint8)
                self._place_preview((0, 0))
                return
            data = mask.astype(np.uint8) * np.uint8(value) if value != 1 else mask
            self._place_preview(offset)
            pv.data = data
            return
        if mask is None:
            if pv.data.shape != hw or pv.data.any():
                pv.data = np.zeros(hw, dtype=np.uint8)
            return
        if value == 1 and mask.shape == hw:
            pv.data = mask
            return
        full = np.zeros(hw, dtype=np.uint8)
        r0, c0 = offset
        full[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]][mask.astype(bool)] = value
        pv.data = full

    def _crop_preview(self) -> bool:
        """Whether the preview layer holds crops (tiled images) instead of whole slices."""
        return bool(self._tiled_key())

    def _place_preview(self, offset):
        """Translate the (2D) preview layer so that its data starts at ``offset`` (row, col)
        of the image's slice."""
        layer, pv = self._image_layer, self._preview_layer
        if layer is None or pv is None:
            return
        self._shown_offset = tuple(offset)
        nd = layer.ndim
        kw = _prompts.transform_kwargs(layer, list(range(nd - 2, nd)))
        translate = tuple(float(t) + float(sc) * float(o)
                          for t, sc, o in zip(kw["translate"], kw["scale"], offset, strict=True))
        if tuple(pv.scale) != tuple(kw["scale"]):
            pv.scale = kw["scale"]
        if tuple(pv.translate) != translate:
            pv.translate = translate

    def _clear_preview(self):
        self._generation += 1
        self._commit_when_ready = False
        if self._geometry is not None:
            self._show_preview(None, self._generation)

    def add_point(self, position, positive: bool = True):
        """Add a click at ``position`` (world coordinates, as napari's mouse gives them)."""
        if self._points_layer is None or self._points_layer not in self.viewer.layers:
            self._ensure_prompt_layers()
        pts = self._points_layer
        kind = _prompts.POSITIVE if positive else _prompts.NEGATIVE
        if pts.feature_defaults["prompt"][0] != kind:
            pts.feature_defaults = {"prompt": kind}
        pts.add(np.asarray(pts.world_to_data(np.asarray(position, dtype=float)))[None])
        if kind != _prompts.POSITIVE:
            pts.feature_defaults = {"prompt": _prompts.POSITIVE}

    def set_box(self, corner_a, corner_b):
        """Set the box of the current slice from two opposite corners (world coordinates,
        any direction; for stacks give the full position or just ``(y, x)``)."""
        self._set_box_world(np.asarray(corner_a, float), np.asarray(corner_b, float), True)

    def _set_box_world(self, a, b, final: bool = True):
        if self._image_layer is None:
            return
        if self._boxes_layer is None or self._boxes_layer not in self.viewer.layers:
            self._ensure_prompt_layers()
        shapes = self._boxes_layer
        nd = shapes.ndim
        point = np.asarray(self.viewer.dims.point, dtype=float)[-nd:]

        def full(p):
            p = np.asarray(p, dtype=float)
            if len(p) >= nd:
                return p[-nd:]
            q = point.copy()
            q[nd - len(p):] = p
            return q

        da = np.asarray(shapes.world_to_data(full(a)), float)
        db = np.asarray(shapes.world_to_data(full(b)), float)
        lead = da[:-2]
        (r0, r1), (c0, c1) = sorted((da[-2], db[-2])), sorted((da[-1], db[-1]))
        rect = np.array([[*lead, r0, c0], [*lead, r0, c1], [*lead, r1, c1], [*lead, r1, c0]])
        others = self._other_slice_boxes(shapes)
        # While the box is being dragged only its outline follows the mouse; the decoder
        # runs once, on release (``final``).
        self._drawing_box = not final
        # (vertices, type) pairs: data and shape types change in one event
        shapes.data = [*others, (rect, "rectangle")]

    def _other_slice_boxes(self, shapes):
        geom = self._geometry
        out = []
        for verts, kind in zip(shapes.data, shapes.shape_type, strict=True):
            d = self._to_image_data(shapes, verts[0])
            if not geom.same_slice(geom.leading_index(d), self._lead):
                out.append((np.asarray(verts), kind))
        return out

    def _keep_newest_box(self):
        """Keep only the newest box of the current slice (one box per prompt set)."""
        if not self._ok():
            return
        shapes = self._boxes_layer
        if shapes is None or shapes.nshapes < 2:
            return
        geom = self._geometry
        on_slice = [i for i, v in enumerate(shapes.data)
                    if geom.same_slice(geom.leading_index(self._to_image_data(shapes, v[0])),
                                       self._lead)]
        if len(on_slice) > 1:
            shapes.selected_data = set(on_slice[:-1])
            shapes.remove_selected()

    def clear_prompts(self):
        """Remove all prompts (points and boxes) and the preview."""
        self._clear_prompt_data()
        self._clear_preview()
        self._update_status()

    def _clear_prompt_data(self):
        pts, shapes = self._points_layer, self._boxes_layer
        if pts is not None and len(pts.data):
            pts.data = np.zeros((0, pts.ndim))
        if shapes is not None and shapes.nshapes:
            shapes.data = []

    # ------------------------------------------------------------------ commit ------
    def _ensure_labels_layer(self):
        layer = self._labels_layer
        if layer is not None and layer in self.viewer.layers:
            return layer
        img = self._image_layer
        geom = self._geometry
        axes = geom.labels_axes
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_labels(
            np.zeros(geom.labels_shape, dtype=np.uint32),
            name=f"{img.name} EdgeSAM labels",
            **_prompts.transform_kwargs(img, axes),
        )
        # keep the labels below the prompt layers, and the clicks going to the points layer
        own = [x for x in (self._preview_layer, self._boxes_layer, self._points_layer)
               if x is not None and x in self.viewer.layers]
        if own:
            first = min(self.viewer.layers.index(x) for x in own)
            self.viewer.layers.move(self.viewer.layers.index(layer), first)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self._labels_layer = layer
        self._label_ids.set_new(layer, 0)
        self._refresh_layer_combos()
        return layer

    def commit(self):
        """Paint the preview into the target Labels layer as a new object.

        One undoable step in that layer (napari's own undo, Ctrl+Z, reverts it). With
        "paint only on background" (default) existing labels are kept.

        Returns
        -------
        int or None
            The new label id; None when there is nothing to commit or the preview for the
            newest prompts is still being computed (it is then committed when it arrives).
        """
        from napari.utils.notifications import show_info

        if self._image_layer is None:
            show_info("EdgeSAM: choose an image layer first.")
            return None
        if self._shown_generation != self._generation and (
            self._decode_worker is not None or self._encode_worker is not None
            or self._decode_pending
        ):
            self._commit_when_ready = True  # the preview for the newest prompts is coming
            self.set_status("Commit pending: waiting for the preview...")
            return None
        p = self._preview
        crop = None if p is None or p.lead is None else p.crop()
        if crop is None:
            show_info("EdgeSAM: nothing to commit (no preview); click on an object first.")
            return None
        layer = self._ensure_labels_layer()
        geom = self._geometry
        try:
            self._check_labels_layer(layer)
        except ValueError as exc:
            self.notify_error(exc)
            return None
        label_id = self._label_ids.next_id(layer)
        if label_id is None:  # a big Labels layer is still being scanned (background)
            self.set_status("Commit pending: looking for the next free label id in "
                             f"'{layer.name}' (a large layer)...")
            gen = self._shown_generation
            self._label_ids.when_known(
                layer, lambda nid, g=gen: self.commit() if nid and self._ok()
                and self._shown_generation == g else None)
            return None
        lead = p.lead
        lab_lead = geom.labels_index(lead)
        # only the mask's bounding box is looked at and written (cheap for big images)
        r0, c0, r1, c1 = p.bbox
        existing = (np.asarray(layer.data[(*lab_lead, slice(r0, r1), slice(c0, c1))])
                    if self.paint_background_only else None)
        indices = commit_indices(crop, lab_lead, existing, self.paint_background_only,
                                 offset=(r0, c0))
        if indices[0].size == 0:
            show_info("EdgeSAM: nothing to paint: the preview lies on existing labels "
                      "(untick 'paint only on background' to overwrite them).")
            return None
        dtype = layer.data.dtype
        if np.issubdtype(dtype, np.integer) and label_id > np.iinfo(dtype).max:
            self.notify_error(f"no free label id left in the {dtype} Labels layer")
            return None
        with layer.block_history():
            layer.data_setitem(indices, label_id)
        self._label_ids.note(layer, label_id)
        layer.selected_label = label_id
        self._clear_prompt_data()
        self._clear_preview()
        self.set_status(
            f"Committed label {label_id} ({indices[0].size} px) on {self._slice_text(lead)}. "
            "Ctrl+Z undoes it."
        )
        return label_id

    def undo(self):
        """Undo the last change of the target Labels layer (napari's own history)."""
        if self._labels_layer is not None:
            self._labels_layer.undo()

    def redo(self):
        """Redo the last undone change of the target Labels layer."""
        if self._labels_layer is not None:
            self._labels_layer.redo()

    # ------------------------------------------------------------------ panels ------
    def propagate(self):
        """Propagate the current object through the stack (Shift+P); see
        :class:`~._propagation_panel.PropagationPanel`."""
        return self.propagation.propagate()

    def commit_propagation(self):
        """Commit the pending propagation result as one undo step (Shift+C)."""
        return self.propagation.commit()

    def jump_to_weakest_slice(self):
        """Show the slice with the lowest score of the last propagation (Shift+W)."""
        return self.propagation.jump_to_weakest()

    # ------------------------------------------------------------------ status ------
    def _update_status(self):
        if not self._ok():
            return
        if self._download_worker is not None:
            return
        if self._model_worker is not None:
            return
        if self._model is None:
            if self.status.startswith("Error"):
                return  # keep the reason in view (download failed, bad model files...)
            self.set_status(
                "No model yet: select EdgeSAM-3x and press Download, or choose "
                "'custom files...' for your own encoder/decoder pair."
            )
            return
        problem = self._view_problem()
        if problem:
            self.set_status(problem)
            return
        if self._encode_worker is not None:
            self.set_status(f"Encoding {self._slice_text()}...")
            return
        problem = self._clicks_problem()
        if problem:
            self.set_status(problem)
            return
        if self.embedding is not None and self._preview is None:
            text = self._slice_text()
            where = "" if text == "image" else f" on {text}"
            self.set_status(
                f"Ready{where}: click on an object (model: {self._model_label(self._model)})."
            )

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self._shutdown()
        super().closeEvent(event)

    def _shutdown(self):
        """Stop listening to the viewer (the widget is going away)."""
        if not self._alive["alive"]:
            return
        self._alive["alive"] = False
        for t in (self._slice_timer, self._contrast_timer, self._download_timer):
            t.stop()
        self._prefetch.close()
        self._label_ids.close()
        for panel in (self.propagation, self.batch):
            if panel is not None:
                panel.shutdown()
        if self._download_state:
            self._download_state["cancel"] = True
        self._cancel_encode()
        workers.cancel(self._decode_control)
        self._workers.quit_all()
        for emitter, cb in (
            (self.viewer.layers.events.inserted, self._on_layer_inserted),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.viewer.layers.events.moved, self._on_layers_changed),
            (self.viewer.dims.events.current_step, self._on_dims_step),
            (self.viewer.dims.events.ndisplay, self._on_dims_step),
            (self.viewer.layers.selection.events.active, self._on_active_layer),
        ):
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._image_layer is not None:
            self._disconnect_image(self._image_layer)
