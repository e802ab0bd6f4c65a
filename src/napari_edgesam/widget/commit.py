"""How a mask reaches a napari Labels layer: the one commit path, with undo.

Clicks (one slice) and propagation (many slices) both commit through
:meth:`LabelsTarget.write`; *Segment all*, *Refine* and the corrections (:mod:`.corrections`:
re-segment, delete, merge, split on one slice) have their own methods, each ONE step too:
every pixel of one commit is written inside one ``block_history()`` with ``data_setitem``,
so napari's own undo (Ctrl+Z, or the panel's Undo) reverts exactly one commit. Only the
masks' bounding boxes are read and written, so commits stay cheap on big images.

napari 0.9 has no public history API or event: :func:`can_undo` / :func:`can_redo` read
the Labels layer's private undo and redo queues (``_undo_history``, ``_redo_history``), as
:mod:`.history` does to follow one step; ``tests/test_commit.py`` and
``tests/test_corrections.py`` pin them so that a napari change is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import prompt_layers
from ._geometry import commit_indices
from ._labels import LabelIds

__all__ = ["SliceEdit", "LabelsTarget", "can_undo", "can_redo"]


@dataclass(frozen=True)
class SliceEdit:
    """What one commit does on one slice of the Labels layer.

    Attributes
    ----------
    lead : tuple of int
        The slice's leading indices in the Labels layer.
    paint : (ndarray of bool, (int, int)) or None
        A mask crop and its ``(row, col)`` offset in the slice: pixels to give the label.
    erase : (ndarray of bool, (int, int)) or None
        A window (crop shape and offset): pixels there that hold the label and are not in
        ``paint`` are cleared (re-propagating a committed object).
    """

    lead: tuple
    paint: tuple | None = None
    erase: tuple | None = None


def can_undo(layer) -> bool:
    """Whether napari's undo of the Labels ``layer`` has a step to revert."""
    return layer is not None and bool(getattr(layer, "_undo_history", ()))


def can_redo(layer) -> bool:
    """Whether napari's redo of the Labels ``layer`` has a step to bring back."""
    return layer is not None and bool(getattr(layer, "_redo_history", ()))


def _check_id(dtype, label_id: int) -> None:
    """Raise ValueError when ``label_id`` does not fit a Labels layer of ``dtype``."""
    if np.issubdtype(dtype, np.integer) and label_id > np.iinfo(dtype).max:
        raise ValueError(f"no free label id left in the {dtype} Labels layer")


def _plane(layer, lead) -> np.ndarray:
    """Slice ``lead`` (leading indices) of the Labels layer's data, as numpy ``(H, W)``."""
    return np.asarray(layer.data[tuple(lead)] if lead else layer.data)


class LabelsTarget:
    """The Labels layer the panel commits into, and its label ids.

    Parameters
    ----------
    viewer : napari.Viewer
    start_worker : callable
        Starts background work (big layers' label scans, see :class:`._labels.LabelIds`).
    on_change : callable, optional
        Called when the target layer, or its data, changed (undo/redo state).
    """

    def __init__(self, viewer, start_worker, on_change=None):
        self.viewer = viewer
        self._layer = None
        self._on_change = on_change or (lambda: None)
        self.label_ids = LabelIds(start_worker)

    @property
    def layer(self):
        """The napari Labels layer written to, or None."""
        return self._layer

    @layer.setter
    def layer(self, layer):
        old, self._layer = self._layer, layer
        if old is layer:
            return
        for lay, how in ((old, "disconnect"), (layer, "connect")):
            if lay is None:
                continue
            for ev in (lay.events.set_data, lay.events.paint):
                try:
                    getattr(ev, how)(self._changed)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._on_change()

    def _changed(self, event=None):
        self._on_change()

    def close(self) -> None:
        """Forget the layer and stop following its label ids."""
        self.layer = None
        self.label_ids.close()

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer."""
        if layer is self._layer:
            self.layer = None
        self.label_ids.forget(layer)

    @staticmethod
    def check(layer, geometry) -> None:
        """Raise ValueError unless ``layer`` has the Labels shape ``geometry`` needs."""
        want = geometry.labels_shape
        if tuple(layer.data.shape) != want:
            raise ValueError(
                f"the Labels layer '{layer.name}' has shape {tuple(layer.data.shape)}, but "
                f"the image needs {want}; choose another layer or a new one"
            )

    def set_layer(self, layer, geometry=None) -> None:
        """Commit into ``layer`` (checked against ``geometry``), or into a new layer made at
        the first commit when ``layer`` is None."""
        if layer is not None:
            if geometry is not None:
                self.check(layer, geometry)
            self.label_ids.watch(layer)  # big layers: the largest id, in the background
        self.layer = layer

    def ensure(self, image_layer, geometry, above=()) -> object:
        """The target layer; a new ``"<image> EdgeSAM labels"`` layer over ``image_layer``
        when there is none (placed below the layers in ``above``; the active layer kept)."""
        layer = self.layer
        if layer is not None and layer in self.viewer.layers:
            return layer
        layers = self.viewer.layers
        active = layers.selection.active
        layer = self.viewer.add_labels(
            np.zeros(geometry.labels_shape, dtype=np.uint32),
            name=f"{image_layer.name} EdgeSAM labels",
            **prompt_layers.transform_kwargs(image_layer, geometry.labels_axes),
        )
        own = [x for x in above if x is not None and x in layers]
        if own:
            layers.move(layers.index(layer), min(layers.index(x) for x in own))
        if active is not None and active in layers:
            layers.selection.active = active
        self.layer = layer
        self.label_ids.set_new(layer, 0)
        return layer

    def write(self, layer, label_id: int, edits, background_only: bool) -> tuple[int, int]:
        """Apply ``edits`` (:class:`SliceEdit`) with ``label_id`` as ONE undo step.

        With ``background_only`` painted pixels keep other labels. Returns
        ``(painted, erased)`` pixel counts; nothing is recorded when both are 0.

        Raises
        ------
        ValueError
            ``label_id`` does not fit the layer's dtype.
        """
        from napari_edgesam.engine.transforms import MaskCrop

        _check_id(layer.data.dtype, label_id)
        painted = erased = 0
        with layer.block_history():
            for e in edits:
                if e.erase is not None:
                    crop, (r0, c0) = e.erase
                    h, w = crop.shape
                    cur = np.asarray(layer.data[(*e.lead, slice(r0, r0 + h),
                                                 slice(c0, c0 + w))])
                    gone = cur == label_id
                    if e.paint is not None:
                        gone &= ~MaskCrop(e.paint[0], *e.paint[1]).window(r0, c0, r0 + h,
                                                                          c0 + w)
                    idx = commit_indices(gone, e.lead, only_background=False, offset=(r0, c0))
                    if idx[0].size:
                        layer.data_setitem(idx, 0, refresh=False)
                        erased += idx[0].size
                if e.paint is None:
                    continue
                crop, (r0, c0) = e.paint
                h, w = crop.shape
                cur = np.asarray(layer.data[(*e.lead, slice(r0, r0 + h), slice(c0, c0 + w))])
                idx = commit_indices(crop & (cur != label_id), e.lead, cur, background_only,
                                     offset=(r0, c0))
                if idx[0].size:
                    layer.data_setitem(idx, label_id, refresh=False)
                    painted += idx[0].size
        layer.refresh()
        if painted:
            self.label_ids.note(layer, label_id)
            layer.selected_label = int(label_id)
        return painted, erased

    def write_objects(self, layer, edits, first_id: int,
                      background_only: bool) -> tuple[int, int]:
        """Paint many objects at once as ONE undo step (*Segment all*).

        Parameters
        ----------
        layer : napari.layers.Labels
        edits : list of (tuple of int, ndarray of int)
            ``(lead, ids)`` per slice: the slice's leading indices in ``layer`` and its
            object ids, shape ``(H, W)`` (0 background, 1..n; the same id on several slices
            is one 3D object).
        first_id : int
            The id object 1 gets in ``layer`` (object k gets ``first_id + k - 1``).
        background_only : bool
            Paint only pixels whose label is 0.

        Returns
        -------
        (int, int)
            Pixels painted and objects that got at least one pixel.

        Raises
        ------
        ValueError
            The largest new id does not fit the layer's dtype.
        """
        top = max((int(ids.max()) for _, ids in edits), default=0)
        dtype = layer.data.dtype
        if top and np.issubdtype(dtype, np.integer) and \
                first_id + top - 1 > np.iinfo(dtype).max:
            raise ValueError(f"{top} new objects do not fit the {dtype} Labels layer")
        painted, seen = 0, set()
        with layer.block_history():
            for lead, ids in edits:
                rows, cols = np.nonzero(ids)
                if not rows.size:
                    continue
                r0, c0 = rows.min(), cols.min()
                window = np.asarray(layer.data[(*lead, slice(r0, rows.max() + 1),
                                                slice(c0, cols.max() + 1))])
                keep = window[rows - r0, cols - c0] == 0 if background_only else \
                    np.ones(rows.size, bool)
                rows, cols = rows[keep], cols[keep]
                values = ids[rows, cols].astype(np.int64) + (first_id - 1)
                if rows.size:
                    idx = tuple(np.full(rows.shape, i, np.intp) for i in lead) + (rows, cols)
                    layer.data_setitem(idx, values.astype(dtype), refresh=False)
                    painted += int(rows.size)
                    seen.update(np.unique(values).tolist())
        layer.refresh()
        if seen:
            self.label_ids.note(layer, max(seen))
        return painted, len(seen)

    @staticmethod
    def replace_objects(layer, lead, objects, background_only: bool = True) -> int:
        """Replace objects of one slice by new masks, keeping their ids, as ONE undo step
        (refining existing labels).

        Parameters
        ----------
        layer : napari.layers.Labels
            Any Labels layer (not only the target).
        lead : tuple of int
            The slice's leading indices in ``layer``.
        objects : iterable of (int, MaskCrop, MaskCrop)
            ``(label, old, new)``: the object's pixels before and its new mask (slice
            pixels). Old pixels outside the new mask are cleared; the new mask is painted
            where the layer holds 0 or this label (neighbours are never taken), or
            everywhere with ``background_only`` False (re-segmenting an object with
            "paint only on background" unticked).
        background_only : bool

        Returns
        -------
        int
            Pixels changed.
        """
        changed = 0
        with layer.block_history():
            for label, old, new in objects:
                for crop, value in ((old, 0), (new, label)):
                    if not crop.area:
                        continue
                    h, w = crop.crop.shape
                    r0, c0 = crop.row0, crop.col0
                    cur = np.asarray(layer.data[(*lead, slice(r0, r0 + h),
                                                 slice(c0, c0 + w))])
                    if value == 0:
                        keep = new.window(r0, c0, r0 + h, c0 + w)
                        where = crop.crop & (cur == label) & ~keep
                    elif background_only:
                        where = crop.crop & ((cur == 0) | (cur == label))
                    else:
                        where = crop.crop & (cur != label)
                    idx = commit_indices(where, lead, only_background=False,
                                         offset=(r0, c0))
                    if idx[0].size:
                        layer.data_setitem(idx, value, refresh=False)
                        changed += int(idx[0].size)
        layer.refresh()
        return changed

    @staticmethod
    def relabel(layer, lead, labels, value: int) -> int:
        """Give ``value`` to every pixel of one slice whose label is in ``labels``, as ONE
        undo step (delete: ``value`` 0; merge: the id kept).

        Parameters
        ----------
        layer : napari.layers.Labels
        lead : tuple of int
            The slice's leading indices in ``layer`` (other slices are not touched).
        labels : iterable of int
        value : int

        Returns
        -------
        int
            Pixels changed (0: nothing recorded).
        """
        plane = _plane(layer, lead)
        return LabelsTarget._set(layer, lead, np.isin(plane, [int(v) for v in labels
                                                             if int(v) != value]), value)

    @staticmethod
    def split_object(layer, lead, label: int, part, value: int) -> int:
        """Give ``value`` to the pixels of object ``label`` that lie in ``part``, as ONE
        undo step (splitting an object: ``value`` is a new id).

        Parameters
        ----------
        layer : napari.layers.Labels
        lead : tuple of int
            The slice's leading indices in ``layer``.
        label : int
        part : MaskCrop
            The part's mask in slice pixels ``(row, col)``; pixels of other labels or of
            the background in it are not changed.
        value : int

        Returns
        -------
        int
            Pixels changed.

        Raises
        ------
        ValueError
            ``value`` does not fit the layer's dtype.
        """
        _check_id(layer.data.dtype, value)
        if not part.area:
            return 0
        h, w = part.crop.shape
        r0, c0 = part.row0, part.col0
        window = np.asarray(layer.data[(*lead, slice(r0, r0 + h), slice(c0, c0 + w))])
        return LabelsTarget._set(layer, lead, part.crop & (window == label), value,
                                 offset=(r0, c0))

    @staticmethod
    def _set(layer, lead, mask, value, offset=(0, 0)) -> int:
        """``data_setitem`` of the slice pixels of ``mask`` (a crop at ``offset``) inside
        one history step."""
        idx = commit_indices(mask, lead, only_background=False, offset=offset)
        if not idx[0].size:
            return 0
        with layer.block_history():
            layer.data_setitem(idx, value, refresh=False)
        layer.refresh()
        return int(idx[0].size)

    def undo(self) -> bool:
        """Undo the target layer's last change; True when there was one."""
        if not can_undo(self.layer):
            return False
        self.layer.undo()
        return True

    def redo(self) -> bool:
        """Redo the target layer's last undone change; True when there was one."""
        if not can_redo(self.layer):
            return False
        self.layer.redo()
        return True
