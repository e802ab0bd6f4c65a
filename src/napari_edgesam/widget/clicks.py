"""What happens when the user clicks: prompts -> decoder (in a worker) -> preview -> commit.

:class:`ClickPath` is the part of :class:`~.session.AnnotationSession` that answers
prompts; it uses the session's state (image, geometry, slice, encoder, layers).

- napari adds the click to the "EdgeSAM points" layer (or a box to "EdgeSAM box");
  :meth:`ClickPath.request_predict` gathers the slice's prompts (image data pixels,
  ``(x, y)`` = (column, row)) and runs the decoder in a worker on the slice's embedding
  (a tiled slice: the window the prompts need, encoded on demand);
- only the newest prompts are answered: every request raises a generation counter, and a
  result older than what is shown is dropped; a request made while the decoder runs waits
  for it (one run at a time), a tile no longer needed is cancelled;
- the answer becomes the :class:`~.preview.Preview` (yellow), and :meth:`ClickPath.commit`
  paints it into the target Labels layer as one undo step (:mod:`.commit`); while an
  object is being re-segmented or split (:mod:`.corrections`) the commit corrects that
  object instead of adding a new one.
"""

from __future__ import annotations

import numpy as np

from napari_edgesam.engine.cancel import CancelToken

from . import prompt_layers, workers
from .commit import SliceEdit
from .preview import Preview

__all__ = ["ClickPath"]


class ClickPath:
    """Prompts, decoder runs, the preview and commits of an annotation session."""

    # ------------------------------------------------------------------ prompts -----
    def gather_prompts(self) -> prompt_layers.Prompts:
        """The prompts on the current slice, in the image's data pixels."""
        return prompt_layers.gather(self.points_layer, self.boxes_layer, self.image_layer,
                                    self.geometry, self.lead)

    def add_point(self, position, positive: bool = True) -> None:
        """Add a click at ``position`` (world coordinates, as napari's mouse gives them)."""
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            self.ensure_prompt_layers()
        pts = self.points_layer
        kind = prompt_layers.POSITIVE if positive else prompt_layers.NEGATIVE
        if pts.feature_defaults["prompt"][0] != kind:
            pts.feature_defaults = {"prompt": kind}
        pts.add(np.asarray(pts.world_to_data(np.asarray(position, dtype=float)))[None])
        if kind != prompt_layers.POSITIVE:
            pts.feature_defaults = {"prompt": prompt_layers.POSITIVE}

    def set_box(self, corner_a, corner_b) -> None:
        """The box of the current slice from two opposite corners (world coordinates, any
        direction; for stacks the full position or just ``(y, x)``)."""
        self.draw_box(np.asarray(corner_a, float), np.asarray(corner_b, float), True)

    def draw_box(self, a, b, final: bool = True) -> None:
        """Draw the slice's box from world corners ``a`` to ``b``; while it is dragged
        (``final`` False) only the outline follows the mouse, the decoder runs on release."""
        if self.image_layer is None:
            return
        if self.boxes_layer is None or self.boxes_layer not in self.viewer.layers:
            self.ensure_prompt_layers()
        shapes = self.boxes_layer
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
        here = set(prompt_layers.on_slice(shapes, self.image_layer, self.geometry, self.lead))
        others = [(np.asarray(v), k) for i, (v, k) in
                  enumerate(zip(shapes.data, shapes.shape_type, strict=True)) if i not in here]
        self._drawing_box = not final
        shapes.data = [*others, (rect, "rectangle")]  # data and types in one event

    def keep_newest_box(self) -> None:
        """Keep only the newest box of the current slice (one box per prompt set)."""
        shapes = self.boxes_layer
        if not self.alive or shapes is None or shapes.nshapes < 2:
            return
        here = prompt_layers.on_slice(shapes, self.image_layer, self.geometry, self.lead)
        if len(here) > 1:
            shapes.selected_data = set(here[:-1])
            shapes.remove_selected()

    def clear_prompts(self) -> None:
        """Remove all prompts (points and boxes) and the preview; a correction waiting for
        clicks is cancelled, or else the selected objects are deselected (Escape)."""
        self.corrections.cancel()
        self.clear_prompt_data()
        self.clear_preview()
        self.update_status()

    def clear_prompt_data(self) -> None:
        """Empty the prompt layers (the preview is cleared by the prompt events)."""
        self.prompts.clear()

    def _on_prompts_changed(self, event=None):
        if not self.alive or self._drawing_box:
            return
        action = getattr(event, "action", None)
        if action is not None and str(action) in ("adding", "removing", "changing"):
            return  # the matching "added"/"removed"/"changed" follows
        prompts = None
        if self._last_request is not None and self.geometry is not None \
                and self.lead is not None:
            prompts = self.gather_prompts()
            if self._last_request == (self.wanted_key(), prompts, self.generation):
                return  # the same prompts again (napari sends "features", then "data")
        self.request_predict(prompts)

    # ------------------------------------------------------------------ decoder -----
    def request_predict(self, prompts=None) -> None:
        """Answer the newest prompt state (off the GUI thread); ``prompts`` when the caller
        has just gathered them."""
        if self.image_layer is None or self.geometry is None or self.lead is None:
            return
        self.generation += 1
        self.error_shown = False
        gen = self.generation
        if prompts is None:
            prompts = self.gather_prompts()
        self._last_request = (self.wanted_key(), prompts, gen)
        self.prefetcher.activity()  # a click needs the cores: stop any prefetch at once
        if prompts.empty:
            self._show_preview(None, gen)
            self.update_status()
            return
        if not prompts.usable:
            self._show_preview(None, gen)
            self.set_status("Only negative points: add a positive point or a box.")
            return
        if self.model is None:
            return
        emb = self.embedding
        if emb is None:
            self.encoder.request()
            if self.encoder.busy:
                tiled = self.tiled_key() is not None
                what = "the image" if tiled else self.slice_text()
                self.set_status(f"{'Preparing' if tiled else 'Encoding'} {what}... your "
                                "prompts are answered when it is done.")
            return
        window = None
        if emb.tiled:
            try:
                window = emb.windows_for(list(prompts.points) or None, prompts.box)
            except Exception as exc:  # noqa: BLE001 - a prompt the tiles cannot answer
                self.notify_error(exc)
                return
        if self._decode_worker is not None:
            self._decode_pending = True
            running = self._decode_window
            if window is not None and running is not None and running != window:
                self._decode_token.cancel()  # a tile no longer needed by the newest prompts
            return
        self._decode_pending = False
        key = self.encoder.key
        done = dict(returned=lambda res, g=gen, k=key: self._on_decoded(g, k, res),
                    errored=self.notify_error, finished=self._on_decode_done)
        self._decode_token = token = CancelToken()
        self._decode_window = window
        if window is not None:
            self._last_window = window
            if window not in emb.windows:
                self.set_status(
                    f"Encoding the tile at rows {window.row0}..{window.row1 - 1}, columns "
                    f"{window.col0}..{window.col1 - 1} of {self.slice_text()} (large image: "
                    "tiles are encoded when a prompt needs them)...")
        self._decode_worker = self.start_worker(workers.decode_job, emb, prompts, token,
                                                **done)

    def _on_decoded(self, gen, key, result):
        if result is None:
            return  # cancelled (a tile the newest prompts do not need)
        self.last_decode_seconds = result.seconds
        if key != self.encoder.key or key != self.wanted_key() or gen <= self.shown_generation:
            return  # stale: another slice, image or model, or older than what is shown
        self._show_preview(result.mask, gen, result.bbox, result.offset)
        where = self.slice_text()
        if result.window is not None:
            where += f" (tile at rows {result.window.row0}.., columns {result.window.col0}..)"
        self.set_status(f"Preview on {where}: {result.area} px, stability "
                        f"{result.score:.2f}. {self.corrections.commit_hint()}, Esc: clear.")
        if self._commit_when_ready and gen == self.generation:
            self._commit_when_ready = False
            if self._last_request is not None and self._last_request[1] == \
                    self._commit_prompts:
                self.commit()  # the answer to the prompts C was pressed for
            else:
                self.set_status("Commit not made: the prompts changed after C; press C "
                                "again to commit the preview you see.")

    def _on_decode_done(self):
        self._decode_worker = None
        self._decode_window = None
        if not self.alive:
            return
        if self._decode_pending:
            self._decode_pending = False
            self.request_predict()
        self.prefetcher.activity()

    # ------------------------------------------------------------------ preview -----
    def _show_preview(self, mask, gen, bbox=None, offset=(0, 0)):
        self.shown_generation = gen
        self.preview = None if mask is None else Preview(mask, tuple(offset), bbox, self.lead)
        self.render_preview()

    def clear_preview(self) -> None:
        """Drop the preview (and any answer still coming for older prompts)."""
        self.generation += 1
        self._commit_when_ready = False
        if self.geometry is not None:
            self._show_preview(None, self.generation)

    def render_preview(self) -> None:
        """Show the prompt preview, else the pending propagation result on the current
        slice (:attr:`overlay`), else nothing."""
        geom = self.geometry
        if geom is None:
            return
        p = self.preview
        mask, offset, value = (None, (0, 0), 1) if p is None else (p.mask, p.offset, 1)
        if mask is None and self.overlay is not None and self.lead is not None:
            shown = self.overlay(self.image_layer, self.lead)
            if shown is not None:
                (mask, offset), value = shown, 2
        mask, offset, value = self.corrections.overlay(mask, offset, value)
        view = self.preview_view
        if not view.exists():
            if mask is None:
                return
            self.ensure_prompt_layers()
        view.show(self.image_layer, geom, self.crop_preview, mask, offset, value)

    # ------------------------------------------------------------------ commit ------
    def ensure_labels_layer(self):
        """The target Labels layer, made over the image (below the prompt layers) when
        there is none."""
        layer = self.target.ensure(self.image_layer, self.geometry, above=self.own_layers())
        self.layers_changed.emit()
        return layer

    def commit_edits(self, layer, label_id: int, edits) -> tuple[int, int]:
        """Write ``edits`` (:class:`~.commit.SliceEdit`) into ``layer`` as one undo step
        (the one commit path, :meth:`.commit.LabelsTarget.write`), honouring "paint only on
        background"; returns ``(painted, erased)`` pixel counts."""
        out = self.target.write(layer, int(label_id), edits, self.paint_background_only)
        self.history_changed.emit()
        return out

    def commit(self):
        """Paint the preview into the target Labels layer as a new object, as ONE undoable
        step of that layer. With "paint only on background" (default) existing labels are
        kept.

        Returns
        -------
        int or None
            The new label id; None when there is nothing to commit or the preview for the
            newest prompts is still being computed (it is then committed when it arrives).
        """
        from napari.utils.notifications import show_info

        if self.image_layer is None:
            show_info("EdgeSAM: choose an image layer first.")
            return None
        if not self.preview_is_current and (
                self._decode_worker is not None or self.encoder.busy or self._decode_pending):
            self._commit_when_ready = True  # the preview for the newest prompts is coming
            self._commit_prompts = None if self._last_request is None \
                else self._last_request[1]
            self.set_status("Commit pending: waiting for the preview...")
            return None
        p = self.preview
        crop = None if p is None or p.lead is None else p.crop()
        if crop is None:
            show_info("EdgeSAM: nothing to commit (no preview); click on an object first.")
            return None
        layer = self.ensure_labels_layer()
        try:
            self.target.check(layer, self.geometry)
        except ValueError as exc:
            self.notify_error(exc)
            return None
        label_id = self.target.label_ids.next_id(layer)
        if label_id is None:  # a big Labels layer is still being scanned (background)
            self.set_status("Commit pending: looking for the next free label id in "
                            f"'{layer.name}' (a large layer)...")
            gen = self.shown_generation
            self.target.label_ids.when_known(
                layer, lambda nid, g=gen: self.commit() if nid and self.alive
                and self.shown_generation == g else None)
            return None
        if self.corrections.pending is not None:  # re-segment or split the selected object
            return self.corrections.commit_preview(layer, p.lead, crop, p.bbox[:2], label_id)
        edit = SliceEdit(self.geometry.labels_index(p.lead), paint=(crop, p.bbox[:2]))
        try:
            painted, _ = self.commit_edits(layer, label_id, [edit])
        except ValueError as exc:
            self.notify_error(exc)
            return None
        if painted == 0:
            show_info("EdgeSAM: nothing to paint: the preview lies on existing labels "
                      "(untick 'paint only on background' to overwrite them).")
            return None
        self.record_prompts(layer, label_id, p.lead)
        self.clear_prompt_data()
        self.clear_preview()
        self.set_status(f"Committed label {label_id} ({painted} px) on "
                        f"{self.slice_text(p.lead)}. Ctrl+Z undoes it.")
        return label_id

    def record_prompts(self, layer, label_id: int, lead, *, token=None, replace=False,
                       background_only: bool | None = None) -> None:
        """Add the prompts of the preview just committed as ``label_id`` to ``layer``'s
        prompt log (:class:`~.prompt_record.PromptRecorder`).

        Parameters
        ----------
        layer : napari.layers.Labels
        label_id : int
        lead : tuple of int
            The slice's leading indices in the image data.
        token : object, optional
            The correction's undo step (:func:`.history.last_step`).
        replace : bool
            The entry replaces the label's entries on that slice (re-segmented object).
        background_only : bool, optional
            The painting mode logged (default: the panel's "paint only on background").
        """
        from napari_edgesam.workflows.prompt_log import LoggedObject

        prompts = None if self._last_request is None else self._last_request[1]
        mapping = self.current_mapping
        if prompts is None or prompts.empty or mapping is None or self.model is None:
            return
        if background_only is None:
            background_only = self.paint_background_only
        obj = LoggedObject(
            int(label_id), tuple(int(k) for k in self.slice_key(lead)),
            points=tuple((float(x), float(y)) for x, y in prompts.points),
            point_labels=tuple(int(v) for v in prompts.labels),
            box=None if prompts.box is None else tuple(float(v) for v in prompts.box),
            low=mapping.low, high=mapping.high, rgb=bool(self.geometry.rgb),
            tiles=self._tiles_used(), background_only=bool(background_only))
        self.prompt_recorder.record(layer, obj, self.geometry.labels_index(lead), self.model,
                                    self.image_layer, self.geometry.channel_axis,
                                    token=token, replace=replace)

    def _tiles_used(self):
        """``(tile_size, halo)`` of the grid that answered (engine defaults resolved), or
        None for a whole-slice embedding."""
        emb = self.embedding
        if emb is None or not emb.tiled:
            return None
        return int(emb.grid.tile_size), int(emb.grid.halo)

    def undo(self) -> None:
        """Undo the last change of the target Labels layer (napari's own history)."""
        layer = self.target.layer
        if self.target.undo():
            more = " (more to undo)" if self.can_undo else ""
            self.set_status(f"Undid the last change of '{layer.name}'{more}. "
                            "Ctrl+Shift+Z or Redo brings it back.")
        else:
            self.set_status("Nothing to undo.")
        self.history_changed.emit()

    def redo(self) -> None:
        """Redo the last undone change of the target Labels layer."""
        layer = self.target.layer
        if self.target.redo():
            self.set_status(f"Redid the last undone change of '{layer.name}'. Ctrl+Z "
                            "undoes it again.")
        else:
            self.set_status("Nothing to redo.")
        self.history_changed.emit()
