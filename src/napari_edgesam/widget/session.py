"""The annotation session: what happens when the user clicks.

:class:`AnnotationSession` owns the interactive state (no Qt widgets; it talks to napari
layers and to workers): the image layer and its slice, the channel, the contrast mapping,
the model and its predictor, the embedding (:class:`~.encoding.SliceEncoder`; what it is
made of: :mod:`.model_input`), the prompts
(:mod:`.prompt_layers`), the preview (:mod:`.preview`), and the commit into Labels with
undo (:mod:`.commit`). Views (the dock's sections, the propagation and batch tabs) use its
public API and its psygnal events only.

A click: napari adds a point to the "EdgeSAM points" layer -> :meth:`request_predict`
gathers the slice's prompts (image data pixels) -> the decoder runs in a worker on the
slice's embedding (:mod:`.clicks`) -> the newest answer becomes the
:class:`~.preview.Preview` (older ones are dropped by a generation counter) ->
:meth:`commit` writes it as one undo step (:mod:`.commit`).
Coordinates: napari gives world coordinates; prompts are converted through each layer's
transform into the image layer's data pixels, ``(x, y)`` = (column, row).
"""

from __future__ import annotations

import logging

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QTimer

from napari_edgesam.engine.cancel import CancelToken

from . import messages, prompt_layers
from ._geometry import ImageGeometry, image_data
from ._prefetch import PrefetchController, plan_prefetch
from .clicks import ClickPath
from .commit import LabelsTarget, can_redo, can_undo
from .corrections import Corrections
from .encoding import SliceEncoder
from .model_input import MAPPING_MODES, ModelInput
from .preview import Preview, PreviewLayer
from .prompt_record import PromptRecorder

_log = logging.getLogger(__name__)

__all__ = ["MAPPING_MODES", "AnnotationSession"]

#: Image layer events after which the prompt and preview layers are realigned.
_TRANSFORM_EVENTS = ("scale", "translate", "rotate", "shear", "affine")


class AnnotationSession(ModelInput, ClickPath):
    """Interactive segmentation of one napari viewer's image layers.

    Parameters
    ----------
    viewer : napari.Viewer
    start_worker : callable
        ``start_worker(func, *args, returned=, errored=, finished=, desc=)`` (see
        :meth:`.workers.WorkerRunner.start`).
    timer_parent : QObject
        Owner of the session's debounce timers.
    actions : object
        What the prompt layers' keys call (``commit``, ``clear_prompts``, ``undo``, ...).
    """

    #: The status line's text changed.
    status_changed = Signal(str)
    #: The image layer, its geometry or the channel settings changed.
    image_changed = Signal()
    #: Layers were added, removed or reordered (choices of image and Labels layers).
    layers_changed = Signal()
    #: The model in use changed.
    model_changed = Signal(object)
    #: The target Labels layer's undo/redo state may have changed.
    history_changed = Signal()
    #: A layer was removed from the viewer (after the session let go of it).
    layer_removed = Signal(object)

    def __init__(self, viewer, start_worker, timer_parent, actions):
        self.viewer = viewer
        self.start_worker = start_worker
        self.actions = actions
        self.alive = True
        self.status = ""
        self.error_shown = False  # an error stays on the status line until the user acts
        self.model = None
        self.predictor = None
        self.use_optimized = False
        self.image_layer = None
        self.geometry: ImageGeometry | None = None
        self.lead: tuple | None = None  # leading index of the current slice
        self.channel = 0
        self.mapping_mode = "auto"
        self.use_tiles = False
        self.tile_size: int | None = None
        self.tile_halo: int | None = None
        self.paint_background_only = True
        self.pinned = False
        #: Whether an image opened while the panel is docked becomes its image (off while
        #: the batch tab adds its results, which then picks one).
        self.follow_new_images = True
        self.prompts = prompt_layers.PromptLayers(viewer, self, actions,
                                                  self._on_prompts_changed,
                                                  self._on_active_layer)
        self.preview_view = PreviewLayer(viewer)
        self.target = LabelsTarget(viewer, start_worker, self.history_changed.emit)
        #: The prompts of every object committed from clicks, per Labels layer.
        self.prompt_recorder = PromptRecorder()
        self.corrections = Corrections(self)  # select, re-segment, delete, merge, split
        self.encoder = SliceEncoder(self)
        #: Callables saying that other work of the panel runs (propagation, batch, model
        #: loading): prefetching waits for them too.
        self.busy_sources: list = []
        self.prefetcher = PrefetchController(
            timer_parent, self.prefetch_jobs,
            lambda: self.alive and not self.busy and not any(f() for f in self.busy_sources))
        #: ``overlay(image_layer, lead) -> (crop, offset) | None``: shown when there is no
        #: prompt preview (the propagation tab's pending result).
        self.overlay = None
        self._data_version = 0
        self._scrub_axis: int | None = None
        self._last_window = None
        # decoder state
        self.preview: Preview | None = None
        self.generation = 0
        self.shown_generation = 0
        self.last_decode_seconds: float | None = None
        self._decode_worker = None
        self._decode_pending = False
        self._decode_token = CancelToken()
        self._decode_window = None  # the tile the running decoder answers (tiled images)
        self._last_request = None
        self._commit_when_ready = False
        self._commit_prompts = None  # the prompts a pending commit (C while busy) is for
        self._drawing_box = False
        self._slice_timer = QTimer(timer_parent)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(15)
        self._slice_timer.timeout.connect(self.on_slice_changed)
        self._contrast_timer = QTimer(timer_parent)
        self._contrast_timer.setSingleShot(True)
        self._contrast_timer.setInterval(300)
        self._contrast_timer.timeout.connect(lambda: self.on_slice_changed(force=True))
        self._connections = (
            (viewer.layers.events.inserted, self._on_layer_inserted),
            (viewer.layers.events.removed, self._on_layer_removed),
            (viewer.layers.events.moved, self._on_layers_moved),
            (viewer.dims.events.current_step, self._on_dims_step),
            (viewer.dims.events.ndisplay, self._on_dims_step),
            (viewer.layers.selection.events.active, self._on_active_layer),
        )
        for emitter, cb in self._connections:
            emitter.connect(cb)

    # ------------------------------------------------------------------ state -------
    @property
    def busy(self) -> bool:
        """Whether the encoder or decoder runs, or a slice change is about to start one."""
        return (self.encoder.busy or self._decode_worker is not None
                or self._slice_timer.isActive() or self._contrast_timer.isActive())

    @property
    def embedding(self):
        """The current slice's :class:`~napari_edgesam.engine.slice_predictor.SlicePredictor`
        (an EmbeddedSlice, or a TiledPredictor for tiled images), None while computed."""
        return self.encoder.current()

    @property
    def points_layer(self):
        """The "EdgeSAM points" layer (clicks), or None."""
        return self.prompts.points

    @property
    def boxes_layer(self):
        """The "EdgeSAM box" layer, or None."""
        return self.prompts.boxes

    @property
    def tiled_predictor(self):
        """The current slice's TiledPredictor (tiled images), else None."""
        emb = self.embedding
        return emb if emb is not None and emb.tiled else None

    @property
    def current_mapping(self):
        """The intensity mapping of the current embedding."""
        return self.encoder.mapping

    @property
    def preview_is_current(self) -> bool:
        """Whether the preview answers the newest prompts."""
        return self.shown_generation == self.generation

    @property
    def preview_mask(self) -> np.ndarray | None:
        """The preview as a bool ``(H, W)`` slice, or None."""
        p = self.preview
        return None if p is None else p.full(self.geometry.spatial_shape)

    @property
    def preview_crop(self):
        """``(mask crop (bool), (row0, col0), bbox)`` of the preview, or None."""
        p = self.preview
        crop = None if p is None else p.crop()
        return None if crop is None else (crop, p.bbox[:2], p.bbox)

    @property
    def labels_layer(self):
        """The target Labels layer (None until the first commit when "new" is chosen)."""
        return self.target.layer

    def prompt_log(self, layer=None):
        """The prompt log of ``layer`` (default: the target Labels layer): the prompts of
        each object committed into it from clicks that is still there
        (:class:`~napari_edgesam.workflows.prompt_log.PromptLog`)."""
        from napari_edgesam.workflows.prompt_log import PromptLog

        layer = self.target.layer if layer is None else layer
        return PromptLog() if layer is None else self.prompt_recorder.log(layer)

    @property
    def can_undo(self) -> bool:
        """Whether the target Labels layer has an edit to undo."""
        return can_undo(self.target.layer)

    @property
    def can_redo(self) -> bool:
        """Whether the target Labels layer has an undone edit to redo."""
        return can_redo(self.target.layer)

    def own_layers(self) -> list:
        """The session's prompt and preview layers present in the viewer."""
        return [x for x in (self.preview_view.layer, self.boxes_layer, self.points_layer)
                if x is not None and x in self.viewer.layers]

    def image_layers(self) -> list:
        """The viewer's Image layers, in layer-list order."""
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image)]

    def labels_layers(self) -> list:
        """Labels layers the user may commit into (not the preview)."""
        from napari.layers import Labels

        own = self.own_layers()
        return [lay for lay in self.viewer.layers
                if isinstance(lay, Labels) and not any(lay is o for o in own)
                and lay.name != prompt_layers.PREVIEW_NAME]

    def set_status(self, text: str) -> None:
        """Set the status text and emit ``status_changed``."""
        self.status = text
        self.status_changed.emit(text)

    def notify_error(self, exc, prefix: str = "") -> None:
        """An error notification and the status line."""
        from napari.utils.notifications import show_error

        _log.debug("EdgeSAM error", exc_info=exc if isinstance(exc, BaseException) else None)
        msg = f"{prefix}{exc}"
        show_error(f"EdgeSAM: {msg}")
        self.set_status(f"Error: {msg}")
        self.error_shown = True
        self._commit_when_ready = False  # a pending commit is not made after an error

    def warn_later(self, message: str) -> None:
        """A warning after the current event, unless the session is closed meanwhile."""
        def show():
            if self.alive:
                from napari.utils.notifications import show_warning

                show_warning(message)
            else:
                _log.info("%s", message)

        QTimer.singleShot(0, show)

    # ------------------------------------------------------------------ model -------
    def set_model(self, model) -> None:
        """Use ``model`` (an EdgeSamModel; a variant is replaced by its ``source``);
        sessions open lazily in the encoder worker."""
        from napari_edgesam.engine import Predictor

        model = getattr(model, "source", None) or model
        self.error_shown = False
        self.model = model
        self.predictor = Predictor(self._runnable(model))
        self.prefetcher.set_predictor(self.predictor)
        self.encoder.reset()
        self.model_changed.emit(model)
        self.clear_preview()
        self.encoder.request()

    def set_optimized(self, value: bool) -> None:
        """Use the model's optimised variants that passed their check (reloads the model)."""
        self.use_optimized = bool(value)
        if self.model is not None:
            self.set_model(self.model)

    def _runnable(self, model):
        """``model``, or its variants that passed their agreement check when "optimised"
        is ticked (records are read only); says which in a notification."""
        if not self.use_optimized:
            return model
        from napari.utils.notifications import show_info

        from napari_edgesam.engine.optimize import optimized_or_original

        try:
            runnable, message = optimized_or_original(model)
        except Exception as exc:  # unreadable records: run the original
            self.notify_error(exc, "optimised variants not usable: ")
            return model
        show_info(f"EdgeSAM: {message}")
        return runnable

    # ------------------------------------------------------------------ layers ------
    def _on_layer_inserted(self, event):
        """An image opened while the panel is docked becomes its image unless pinned;
        clicks then go to the prompt layers again (napari makes the new layer active)."""
        from napari.layers import Image

        layer = event.value
        if isinstance(layer, Image) and self.follow_new_images and not self.pinned \
                and layer is not self.image_layer:
            self.set_image_layer(layer)
            QTimer.singleShot(0, self.take_clicks)
        self.layers_changed.emit()

    def take_clicks(self):
        """The points layer becomes the active one, with the prompt layers on top."""
        if not self.alive or self.points_layer not in self.viewer.layers:
            return
        layers = self.viewer.layers
        for x in self.own_layers():
            i = layers.index(x)
            if i != len(layers) - 1:
                layers.move(i, len(layers))
        layers.selection.active = self.points_layer
        self.update_status()

    def _on_layers_moved(self, event=None):
        self.layers_changed.emit()

    def _on_active_layer(self, event=None):
        self.update_status()

    def _on_layer_removed(self, event):
        layer = event.value
        self.prompts.forget(layer)
        if layer is self.image_layer:
            working = self.encoder.busy or self._decode_worker is not None
            self.encoder.cancel()  # stop now: the work holds the removed layer's data
            self._decode_token.cancel()
            self._disconnect_image(layer)
            self.image_layer = None
            self.geometry = None
            self.encoder.reset()
            self.preview = None
            if working:
                self.warn_later(
                    f"EdgeSAM: the image layer '{layer.name}' was removed while it was being "
                    "processed; its result is dropped and no layer was changed.")
        self.target.forget(layer)
        self.preview_view.forget(layer)
        if self.image_layer is None:
            images = self.image_layers()
            if images:
                self.set_image_layer(images[-1])
            else:
                self.image_changed.emit()
        self.layer_removed.emit(layer)
        self.layers_changed.emit()
        self.update_status()

    def set_labels_layer(self, layer) -> None:
        """Commit into ``layer`` (a Labels layer of the image's shape), or into a new
        layer made at the first commit when ``layer`` is None."""
        self.target.set_layer(layer, self.geometry)
        self.layers_changed.emit()
        self.history_changed.emit()

    def set_image_layer(self, layer) -> None:
        """Segment ``layer`` (a napari Image layer): 2D grey or RGB, stacks, time series.
        Each image keeps its own prompts while the user is on another one."""
        from napari.layers import Image

        from napari_edgesam.engine.tiling import needs_tiling

        if not isinstance(layer, Image):
            raise TypeError(f"EdgeSAM segments Image layers, not {type(layer).__name__}")
        data = image_data(layer)
        try:
            geom = ImageGeometry(tuple(data.shape), rgb=bool(layer.rgb))
        except ValueError as exc:
            self.notify_error(exc)
            return
        self.error_shown = False
        if self.image_layer is not None and self.image_layer is not layer:
            self.prompts.stash(self.image_layer)
            self._disconnect_image(self.image_layer)
        self.image_layer = layer
        self.geometry = geom
        self.channel = 0
        self._data_version = 0
        self.encoder.stack_mappings = {}
        self.encoder.reset()
        self._last_window = None
        self._scrub_axis = None
        self.use_tiles = needs_tiling(geom.spatial_shape)  # the user may switch either way
        layer.events.data.connect(self._on_image_data)
        layer.events.contrast_limits.connect(self._on_contrast)
        for name in _TRANSFORM_EVENTS:
            getattr(layer.events, name).connect(self._on_image_transform)
        if self.target.layer is not None:
            try:
                self.target.check(self.target.layer, geom)
            except ValueError:
                self.target.layer = None
        self.ensure_prompt_layers(reset=True)
        self.lead = self._current_lead()
        self.image_changed.emit()
        self.layers_changed.emit()
        self.history_changed.emit()
        self.clear_preview()
        self.encoder.request()
        self.prompts.restore(layer)
        self.update_status()

    def _disconnect_image(self, layer):
        for name, cb in (("data", self._on_image_data), ("contrast_limits", self._on_contrast),
                         *((t, self._on_image_transform) for t in _TRANSFORM_EVENTS)):
            try:
                getattr(layer.events, name).disconnect(cb)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                pass

    def ensure_prompt_layers(self, reset: bool = False) -> None:
        """Create (or realign) the points, box and preview layers for the image."""
        layer = self.image_layer
        if layer is None:
            return
        layers = self.viewer.layers
        keep = list(layers.selection)
        active = layers.selection.active
        created = self.preview_view.ensure(layer, self.geometry, self.crop_preview)
        created = self.prompts.ensure(layer, realign=reset) or created
        if reset:
            self.preview_view.align(layer, self.geometry, self.crop_preview)
            self.clear_prompt_data()
        if created:
            layers.selection.active = self.points_layer  # clicks go to the points layer
        elif active is not None and active in layers:
            layers.selection.active = active
            layers.selection.update([x for x in keep if x in layers])

    def _on_image_transform(self, event=None):
        layer = self.image_layer
        if layer is None:
            return
        self.prompts.realign(layer)
        self.preview_view.align(layer, self.geometry, self.crop_preview)
        self.on_slice_changed(force=True)

    def _on_image_data(self, event=None):
        layer = self.image_layer
        if layer is None:
            return
        data = image_data(layer)
        if tuple(data.shape) != self.geometry.shape:
            self.set_image_layer(layer)
            return
        self._data_version += 1
        self.encoder.stack_mappings = {}
        self.on_slice_changed(force=True)

    # ------------------------------------------------------------------ slices ------
    def _current_lead(self):
        if self.image_layer is None:
            return None
        pos = self.image_layer.world_to_data(self.viewer.dims.point)
        return self.geometry.leading_index(pos)

    def slice_key(self, lead=None):
        """Index of slice ``lead`` (default: the current one) into the image's data."""
        return self.geometry.slice_key(self.lead if lead is None else lead, self.channel)

    def view_problem(self) -> str | None:
        """Why the current view cannot be segmented (None when it can)."""
        return messages.view_problem(self.viewer, self.image_layer)

    def clicks_problem(self) -> str | None:
        """Why a click on the canvas does not add a point (another layer is active)."""
        return messages.clicks_problem(self.viewer, self.points_layer, self.boxes_layer)

    def _on_dims_step(self, event=None):
        self._slice_timer.start()

    def on_slice_changed(self, force: bool = False) -> None:
        """The slider, channel, mapping or transform changed: encode the slice now shown."""
        if not self.alive or self.image_layer is None:
            self.update_status()
            return
        lead = self._current_lead()
        if lead == self.lead and not force:
            self.update_status()
            return
        if lead is not None and self.lead is not None and len(lead) == len(self.lead):
            moved = [i for i, (a, b) in enumerate(zip(lead, self.lead, strict=True)) if a != b]
            if moved:
                self._scrub_axis = moved[0]  # prefetch along the axis the user moves on
        if lead != self.lead:
            self.encoder.retry_failed()  # a slice that failed is tried again on a revisit
        self.lead = lead
        self.error_shown = False
        self._last_window = None
        self.clear_preview()
        self.encoder.request()
        self.request_predict()

    def slice_text(self, lead=None) -> str:
        """``"slice 12"``, ``"slice 3, 7 channel 1"`` or ``"image"``, for messages."""
        return messages.slice_text(self.geometry, self.lead if lead is None else lead,
                                   self.channel)

    def go_to_slice(self, axis: int, index: int) -> None:
        """Move napari's slider of the image's leading ``axis`` to ``index`` (data)."""
        layer = self.image_layer
        if layer is None:
            return
        pos = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        pos = pos[-layer.ndim:].copy()
        pos[axis] = float(index)
        world = np.asarray(layer.data_to_world(pos), dtype=float)
        self.viewer.dims.set_point(self.viewer.dims.ndim - layer.ndim + axis, float(world[axis]))

    def _on_contrast(self, event=None):
        if self.mapping_mode == "contrast":
            self._contrast_timer.start()

    def prefetch_jobs(self) -> list:
        """What to encode while the user is idle: neighbouring slices along the axis the
        user last moved on, or the tiles nearest the last prompt's window."""
        if self.image_layer is None or self.model is None or self.view_problem() \
                or self.lead is None:
            return []
        emb = self.embedding
        if emb is None or self.current_mapping is None:
            return []
        return plan_prefetch(self.image_layer, self.geometry, self.lead, self.channel, emb,
                             self.current_mapping, self._scrub_axis, self._last_window)

    # ------------------------------------------------------------------ status ------
    def update_status(self) -> None:
        """The status line for the current state (kept while something runs, and an error
        until the user acts)."""
        if not self.alive or self.model is None or self.error_shown:
            return
        problem = self.view_problem()
        if problem:
            self.set_status(problem)
            return
        if self.encoder.busy:
            self.set_status(f"Encoding {self.slice_text()}...")
            return
        if text := self.corrections.status_line():  # the edit mode: what is selected, keys
            return self.set_status(text)
        problem = self.clicks_problem()
        if problem:
            self.set_status(problem)
            return
        if self.embedding is not None and self.preview is None:
            text = self.slice_text()
            where = "" if text == "image" else f" on {text}"
            self.set_status(f"Ready{where}: click on an object (model: "
                            f"{messages.model_label(self.model)}).")

    def close(self) -> None:
        """Stop all work and listening (the panel or the viewer is going away)."""
        if not self.alive:
            return
        self.alive = False
        for t in (self._slice_timer, self._contrast_timer):
            try:
                t.stop()
            except RuntimeError:  # pragma: no cover - already deleted with its parent
                pass
        self.prefetcher.close()
        self.target.close()
        self.encoder.cancel()
        self._decode_token.cancel()
        for emitter, cb in self._connections:
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self.image_layer is not None:
            self._disconnect_image(self.image_layer)
