"""Correcting committed objects on the slice shown: select, re-segment, delete, merge and
split (no Qt widgets).

The gestures (docs/user-guide.md, "Correcting objects"):

- **E** (or the panel's *Edit (E)* button) turns the *edit mode* on and off. In it a left
  click on the canvas selects the object under the cursor in the target Labels layer
  (a click on the background deselects); **Shift** or **Ctrl** + click adds an object to
  the selection or removes it. No point is added: the "EdgeSAM points" layer is in
  napari's pan/zoom mode (a drag still pans). The selected objects are outlined in white
  on the preview layer, and the status line names them and the keys that apply.
- **Delete** / **Backspace** (mouse over the image): delete the selected objects.
  Outside the edit mode they keep napari's meaning (delete the selected points).
- **M**: merge the selected objects into the lowest of their ids.
- **R** (one object selected): re-segment it. Clicks are prompts again, as outside the
  mode; **C** / Enter replaces the object's pixels by the preview, its id kept (other
  objects are painted over only with "paint only on background" unticked).
- **Shift+M** (one object selected): split it. Click the part that becomes a new object;
  **C** gives the preview's pixels that lie inside the object a new id.
- **Escape**: cancel a re-segment or split (back to selecting), else deselect.

Each correction is ONE undo step of the Labels layer (:class:`.commit.LabelsTarget`) and
changes the prompt log with that step (:class:`.prompt_record.PromptRecorder`: undoing
the correction undoes its log change). A split's new id is logged with the object it came
from (``within``), so that replay gives it only that object's pixels, as the split did.
Corrections act on the slice shown, in the Labels layer's data pixels ``(row, col)`` of
that slice: a 2D image, or one slice of a stack (a 3D object's pixels on other slices are
not changed). Outside the edit mode nothing changes: a left click adds a point.
"""

from __future__ import annotations

import numpy as np
from psygnal import Signal

from .commit import LabelsTarget, _plane
from .history import last_step

__all__ = ["SELECTED_VALUE", "Corrections"]

#: Value of the selection outline on the preview layer (1 is the preview, 2 a pending
#: propagation result); its colour is :data:`.prompt_layers.SELECTION_COLOUR`.
SELECTED_VALUE = 3

_KINDS = {"resegment": "Re-segmenting", "split": "Splitting"}


def outline(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner outline of each object of ``ids``.

    Parameters
    ----------
    ids : ndarray of int, shape (h, w)
        Object ids (0: none), in slice pixels ``(row, col)``.
    width : int
        Thickness in pixels (at least 1).

    Returns
    -------
    ndarray of bool, shape (h, w)
        Pixels of an object within ``width`` of a pixel of another value (or of the edge of
        ``ids``).
    """
    inside = ids != 0
    padded = np.pad(ids, 1)
    edge = inside & ((padded[:-2, 1:-1] != ids) | (padded[2:, 1:-1] != ids)
                     | (padded[1:-1, :-2] != ids) | (padded[1:-1, 2:] != ids))
    for _ in range(max(1, int(width)) - 1):
        p = np.pad(edge, 1)
        edge = edge | (inside & (p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]))
    return edge


class Corrections:
    """The correction state of an :class:`~.session.AnnotationSession`: the mode and the
    selected objects, and the gestures acting on them (see the module docstring).

    Parameters
    ----------
    session : AnnotationSession
        Its public API is used (target Labels layer, slice, prompts, preview, status).

    Attributes
    ----------
    mode : str
        ``"off"`` (clicks are prompts), ``"select"`` (clicks select objects),
        ``"resegment"`` or ``"split"`` (clicks are prompts for the selected object).
    selected : list of int
        The selected label ids, in the order clicked.
    """

    #: The mode or the selection changed (the panel's Edit button follows it).
    changed = Signal()

    def __init__(self, session):
        self.session = session
        self.mode = "off"
        self.selected: list[int] = []
        self._where = None    # (Labels layer, its slice's leading indices) of the selection
        self._points = None   # the points layer this put in pan/zoom mode
        self._outline = None  # cached (edge crop (bool), (row0, col0))
        session.history_changed.connect(self._on_labels_changed)
        session.image_changed.connect(self._on_image_changed)

    # ------------------------------------------------------------------ state -------
    @property
    def active(self) -> bool:
        """Whether the edit mode is on (selecting, re-segmenting or splitting)."""
        return self.mode != "off"

    @property
    def selecting(self) -> bool:
        """Whether a left click on the canvas selects an object."""
        return self.mode == "select"

    @property
    def pending(self) -> tuple[str, int] | None:
        """``("resegment" | "split", label)`` while the next commit corrects that object."""
        if self.mode in _KINDS and len(self.selected) == 1:
            return self.mode, self.selected[0]
        return None

    def _here(self):
        """``(target Labels layer, leading indices of the slice shown)``, or None."""
        s = self.session
        layer = s.target.layer
        if layer is None or layer not in s.viewer.layers or s.geometry is None \
                or s.lead is None:
            return None
        return layer, tuple(s.geometry.labels_index(s.lead))

    def _still_here(self) -> bool:
        """Whether the selection was made on the slice and layer shown (else it is
        dropped, and a re-segment or split waiting for clicks goes back to selecting)."""
        here, where = self._here(), self._where
        ok = here is not None and where is not None and here[0] is where[0] \
            and here[1] == where[1]
        if not ok and self.selected:
            self.selected, self._outline = [], None
            if self.mode in _KINDS:
                self.mode = "select"
                self._points_mode("pan_zoom")
        return ok

    def _points_mode(self, mode: str) -> None:
        pts = self.session.points_layer
        if pts is not None and pts in self.session.viewer.layers and pts.mode != mode:
            self._points = pts
            pts.mode = mode  # napari's mode event -> the session's status

    def _changed(self, status: str | None = None) -> None:
        """Redraw the outline, say what applies (or ``status``), tell the panel."""
        s = self.session
        self._outline = None
        s.render_preview()
        text = status or self.status_line()
        if text:
            s.set_status(text)
        else:
            s.update_status()
        self.changed.emit()

    def _on_labels_changed(self) -> None:
        # the panel's undo/redo: on a hidden layer napari emits nothing the log could see
        self.session.prompt_recorder.observe()
        self._outline = None
        if self.selected:
            self.session.render_preview()

    def _on_image_changed(self) -> None:
        self.selected, self._where, self._outline = [], None, None
        if self.mode in _KINDS:
            self.mode = "select"

    # ------------------------------------------------------------------ mode --------
    def toggle(self) -> None:
        """Turn the edit mode on or off (E)."""
        if self.active:
            self.stop()
        else:
            self.start()

    def start(self) -> None:
        """Edit mode on: clicks select objects of the target Labels layer."""
        s = self.session
        if s.image_layer is None:
            s.set_status("Edit mode needs an image.")
            return
        self.mode = "select"
        # the points layer is switched to pan/zoom below: what stop() switched back to "add"
        # must not read as the user's choice of another mode (status_line) meanwhile
        self._points = None
        s.take_clicks()  # the points layer active (its callback sees the clicks)
        self._points_mode("pan_zoom")
        self._changed()

    def stop(self) -> None:
        """Edit mode off: clicks add points again; the selection is dropped."""
        self.mode, self.selected, self._where = "off", [], None
        self._points_mode("add")
        self._changed()

    def cancel(self) -> None:
        """Escape: a re-segment or split goes back to selecting, else deselect."""
        if self.mode in _KINDS:
            self.mode = "select"
            self._points_mode("pan_zoom")
            self._changed()
        elif self.selected:
            self.selected = []
            self._changed()

    # ------------------------------------------------------------------ selecting ---
    def select_at(self, position, add: bool = False) -> int:
        """Select the object under ``position`` (world coordinates, as napari's mouse
        gives them) on the slice shown; ``add`` adds it to the selection or removes it.

        Returns
        -------
        int
            The label id there (0: background, or outside the layer).
        """
        s = self.session
        here = self._here()
        if here is None:
            s.set_status("Edit mode: no target Labels layer yet (commit an object or "
                         "Segment all first).")
            return 0
        layer, lead = here
        pos = np.asarray(layer.world_to_data(np.asarray(position, dtype=float)), dtype=float)
        r, c = (int(np.floor(v + 0.5)) for v in pos[-2:])
        h, w = layer.data.shape[-2:]
        label = int(np.asarray(layer.data[(*lead, r, c)])) if 0 <= r < h and 0 <= c < w \
            else 0
        self.select(label, add=add)
        return label

    def select(self, label: int, add: bool = False) -> None:
        """Select object ``label`` of the slice shown (0: nothing); ``add`` toggles it in
        the selection instead of replacing it."""
        self._still_here()
        self._where = self._here()
        label = int(label)
        if add:
            if label in self.selected:
                self.selected.remove(label)
            elif label:
                self.selected.append(label)
        else:
            self.selected = [label] if label else []
        if label and self._where is not None:
            self._where[0].selected_label = label  # napari's label control shows it
        self._changed()

    # ------------------------------------------------------------------ gestures ----
    def _ready(self, what: str, count: str) -> tuple | None:
        """``(layer, lead)`` when the selection can be corrected; else says why."""
        s = self.session
        ok = {"one": len(self.selected) == 1, "some": len(self.selected) >= 1,
              "two": len(self.selected) >= 2}[count]
        if not self.active:
            s.set_status(f"{what}: press E (edit mode) and click the object(s) first.")
            return None
        if not self._still_here() or not ok:
            need = {"one": "one object", "some": "an object",
                    "two": "two or more objects (Shift+click)"}[count]
            s.set_status(f"{what}: select {need} first (click in edit mode).")
            return None
        return self._where

    def delete(self) -> int:
        """Delete the selected objects on the slice shown, as one undo step (Delete,
        Backspace). Outside the edit mode: napari's Delete (the selected points).

        Returns
        -------
        int
            Pixels cleared.
        """
        s = self.session
        if self.mode != "select":
            pts = s.points_layer
            if pts is not None and pts.selected_data:
                pts.remove_selected()
            return 0
        where = self._ready("Delete", "some")
        if where is None:
            return 0
        layer, lead = where
        gone = sorted(self.selected)
        n = LabelsTarget.relabel(layer, lead, gone, 0)
        self.selected = []
        s.history_changed.emit()
        self._changed(f"Deleted {_names(gone)} ({n} px) on {s.slice_text()}. Ctrl+Z brings "
                      f"{'it' if len(gone) == 1 else 'them'} back.")
        return n

    def merge(self) -> int | None:
        """Merge the selected objects into the lowest id, as one undo step (M); their
        prompt-log entries all take that id.

        Returns
        -------
        int or None
            The id kept; None when fewer than two objects are selected.
        """
        s = self.session
        where = self._ready("Merge", "two")
        if where is None:
            return None
        layer, lead = where
        labels = sorted(self.selected)
        into = labels[0]
        n = LabelsTarget.relabel(layer, lead, labels, into)
        if n:
            s.prompt_recorder.merge(layer, lead, labels, into, last_step(layer))
        self.selected = [into]
        s.history_changed.emit()
        self._changed(f"Merged {_names(labels)} into label {into} ({n} px) on "
                      f"{s.slice_text()}. Ctrl+Z undoes it.")
        return into

    def resegment(self) -> None:
        """Re-segment the selected object with new clicks (R): the next commit replaces
        its pixels on this slice, its id kept. When the prompt log has the clicks and box
        that made the object on this slice, they are put back on the prompt layers (the
        newest entry's), so that the object is edited from its own prompts."""
        self._begin("resegment", "Re-segment")
        if self.mode == "resegment":
            self.load_logged_prompts()

    def load_logged_prompts(self) -> int:
        """Put the prompt log's newest entry for the selected object on this slice back on
        the points and box layers (its decoder run follows as for clicks).

        The log holds ``(x, y)`` image pixels of the slice (original frame); they are placed
        at the viewer's current position on the leading axes.

        Returns
        -------
        int
            The number of prompts put back (points plus box), 0 when the log has none.
        """
        s = self.session
        layer, image = s.labels_layer, s.image_layer
        if len(self.selected) != 1 or layer is None or image is None or s.lead is None:
            return 0
        label, lead = self.selected[0], tuple(s.lead)
        log, _ = s.prompt_recorder.candidates(layer)
        entries = [o for o in log.objects if o.label == label and tuple(o.key) == lead]
        if not entries:
            return 0
        obj = entries[-1]
        here = np.asarray(image.world_to_data(s.viewer.dims.point), dtype=float)

        def world(x, y):
            d = here.copy()
            d[-2], d[-1] = y, x
            return np.asarray(image.data_to_world(d), dtype=float)

        if obj.box is not None:
            x0, y0, x1, y1 = obj.box
            s.set_box(world(x0, y0), world(x1, y1))
        for (x, y), v in zip(obj.points, obj.point_labels, strict=True):
            s.add_point(world(x, y), positive=v == 1)
        n = len(obj.points) + (obj.box is not None)
        more = f" (the newest of {len(entries)} entries)" if len(entries) > 1 else ""
        self._changed(f"Re-segment label {label}: its {n} logged prompt(s){more} are back; "
                      "edit them and press C (its id is kept), Esc cancels.")
        return n

    def split(self) -> None:
        """Split the selected object (Shift+M): the next commit gives the part of it
        under the preview a new id."""
        self._begin("split", "Split")

    def _begin(self, kind: str, what: str) -> None:
        if self._ready(what, "one") is None:
            return
        s = self.session
        self.mode = kind
        self._points_mode("add")
        s.clear_prompt_data()  # new clicks
        s.clear_preview()
        self._changed()

    def commit_preview(self, layer, lead, crop, offset, new_id: int) -> int | None:
        """Write the preview as the pending correction, as one undo step (called by the
        commit, C / Enter).

        Parameters
        ----------
        layer : napari.layers.Labels
            The target layer.
        lead : tuple of int
            The preview's slice, leading indices in the image data.
        crop : ndarray of bool, shape (h, w)
            The preview on its bounding box.
        offset : (int, int)
            ``(row, col)`` of ``crop[0, 0]`` in the slice.
        new_id : int
            The next free id (the split's new object).

        Returns
        -------
        int or None
            The re-segmented object's id or the split's new id; None when nothing
            changed.
        """
        from napari_edgesam.engine.mask_crop import MaskCrop

        s = self.session
        kind, label = self.pending
        index = tuple(s.geometry.labels_index(lead))
        where = self._where
        if where is None or where[0] is not layer or where[1] != index:
            s.set_status(f"Not committed: label {label} was selected on another slice or "
                         "layer; select it again.")
            return None
        shape = tuple(layer.data.shape[-2:])
        part = MaskCrop(crop, *offset, shape=shape)
        if kind == "resegment":
            plane = _plane(layer, index)
            old = MaskCrop(plane == label, shape=shape)
            n = LabelsTarget.replace_objects(layer, index, [(label, old, part)],
                                             s.paint_background_only)
            text = (f"Re-segmented label {label} ({n} px changed) on "
                    f"{s.slice_text(lead)}, its id kept. Ctrl+Z undoes it.")
            done, selected = label, [label]
        else:
            try:
                n = LabelsTarget.split_object(layer, index, label, part, int(new_id))
            except ValueError as exc:
                s.notify_error(exc)
                return None
            text = (f"Split label {label}: {n} px of it are label {new_id} now. Ctrl+Z "
                    "undoes it.")
            done, selected = int(new_id), [label, int(new_id)]
        if n == 0:
            s.set_status(f"{_KINDS[kind]} label {label}: nothing would change (the preview "
                         "is its pixels, or misses it). Click again, or Esc to cancel.")
            return None
        # split: replayed on the pixels of the object it came from only (``within``), as
        # split_object gave the new id only to them (its preview may cover neighbours)
        token = last_step(layer)
        s.record_prompts(layer, done, lead, token=token, replace=kind == "resegment",
                         background_only=None if kind == "resegment" else False)
        if kind == "split":
            s.prompt_recorder.split(layer, done, label, token)
            s.target.label_ids.note(layer, done)
        self.mode, self.selected = "select", selected
        self._points_mode("pan_zoom")  # first: the status read while clearing sees it
        s.clear_prompt_data()
        s.clear_preview()
        s.history_changed.emit()
        self._changed(text)
        return done

    # ------------------------------------------------------------------ view --------
    def commit_hint(self) -> str:
        """What C does now, for the preview's status line."""
        p = self.pending
        if p is None:
            return "C: commit"
        return f"C: {'replace' if p[0] == 'resegment' else 'split'} label {p[1]}"

    def status_line(self) -> str | None:
        """The status line in the edit mode (None outside it, or when clicks go to another
        layer: the session says so). Leaves the edit mode when the user switched the
        points layer to another napari mode (2: add points)."""
        if not self.active:
            return None
        s = self.session
        pts = s.points_layer
        if pts is None or s.viewer.layers.selection.active is not pts:
            return None
        if self.mode == "select" and pts.mode != "pan_zoom":
            if pts is self._points:  # the user chose another mode: clicks add points
                self.mode, self.selected, self._where = "off", [], None
                self._outline = None
                s.render_preview()
                self.changed.emit()
                return None
            self._points_mode("pan_zoom")  # a new points layer (another image)
        self._still_here()
        sel = self.selected
        if self.mode in _KINDS:
            if self.mode == "resegment":
                return (f"Re-segmenting label {sel[0]}: click the object (right click: not "
                        "it), C replaces it with its id kept, Esc: cancel.")
            return (f"Splitting label {sel[0]}: click the part that becomes a new object, C "
                    "gives it a new id, Esc: cancel.")
        if not sel:
            return ("Edit mode: click an object to select it (Shift+click: several). "
                    "E: leave.")
        if len(sel) == 1:
            return (f"Edit: label {sel[0]} selected. Del: delete, R: re-segment, Shift+M: "
                    "split, Shift+click: select more, Esc: deselect, E: leave.")
        return (f"Edit: {_names(sel)} selected. M: merge into {min(sel)}, Del: delete, "
                "Esc: deselect, E: leave.")

    def overlay(self, mask, offset, value):
        """The preview layer's content with the selected objects outlined.

        Parameters
        ----------
        mask : ndarray (uint8 or bool) or None
            What the preview layer would show (a slice, or a crop at ``offset``).
        offset : (int, int)
            ``(row, col)`` of ``mask[0, 0]`` in the slice.
        value : int
            The value ``mask`` is drawn with.

        Returns
        -------
        (mask, offset, value)
            Unchanged without a selection on the slice shown; else a uint8 array holding
            ``value`` on the mask and :data:`SELECTED_VALUE` on the outline, drawn with
            value 1 (the whole slice, or the crop covering both with cropped previews).
        """
        if not self.selected or not self._still_here():
            return mask, offset, value
        edge, (er, ec) = self._edges()
        if not edge.any():
            return mask, offset, value
        s = self.session
        boxes = [(er, ec, er + edge.shape[0], ec + edge.shape[1])]
        if mask is not None:
            boxes.append((offset[0], offset[1], offset[0] + mask.shape[0],
                          offset[1] + mask.shape[1]))
        if s.crop_preview:
            r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            r1, c1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        else:
            (r0, c0), (r1, c1) = (0, 0), s.geometry.spatial_shape
        out = np.zeros((r1 - r0, c1 - c0), np.uint8)
        if mask is not None:
            mr, mc = offset[0] - r0, offset[1] - c0
            out[mr:mr + mask.shape[0], mc:mc + mask.shape[1]][np.asarray(mask) > 0] = value
        out[er - r0:er - r0 + edge.shape[0], ec - c0:ec - c0 + edge.shape[1]][edge] = \
            SELECTED_VALUE
        return out, (r0, c0), 1

    def _edges(self):
        """The selection's outline on its bounding box (cached until the labels or the
        selection change)."""
        if self._outline is None:
            layer, lead = self._where
            plane = _plane(layer, lead)
            sel = np.isin(plane, self.selected)
            rows, cols = np.nonzero(sel)
            if not rows.size:
                self._outline = (np.zeros((0, 0), bool), (0, 0))
            else:
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                ids = np.where(sel[r0:r1, c0:c1], plane[r0:r1, c0:c1], 0)
                width = max(2, int(np.ceil(max(plane.shape) / 150)))  # seen when zoomed out
                self._outline = (outline(ids, width), (int(r0), int(c0)))
        return self._outline


def _names(labels) -> str:
    labels = list(labels)
    if len(labels) == 1:
        return f"label {labels[0]}"
    return "labels " + ", ".join(str(v) for v in labels)
