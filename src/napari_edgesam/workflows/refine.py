"""Refining existing labels with EdgeSAM: another tool's objects used as prompts.

Labels from Cellpose, StarDist, a threshold or an earlier annotation are often close but
rough. Each object of a label slice is prompted with its bounding box and a positive click
at its deepest point (the pixel farthest from its border); the model's mask is the proposed
new object, with a table to review (old area, new area, IoU with the old mask, score) before
anything is written. Frames: ``(row, col)`` pixels of the slice; prompts ``(x, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.mask_crop import MaskCrop, mask_iou

__all__ = ["RefinedObject", "object_prompts", "refine_slice"]


@dataclass(frozen=True)
class RefinedObject:
    """One object of a label slice and its refined mask.

    Attributes
    ----------
    label : int
        The object's id (kept by the refinement).
    old : MaskCrop
        The object's pixels in the label slice.
    new : MaskCrop
        The model's mask for it.
    score : float
        Stability score of ``new``.
    iou : float
        IoU of ``new`` with ``old``.
    confident : bool
        ``score >= min_score`` (the default choice when reviewing).
    """

    label: int
    old: MaskCrop
    new: MaskCrop
    score: float
    iou: float
    confident: bool

    @property
    def old_area(self) -> int:
        """Pixels of the object before refinement."""
        return self.old.area

    @property
    def new_area(self) -> int:
        """Pixels of the refined mask."""
        return self.new.area


def object_prompts(mask: np.ndarray, offset: tuple[int, int] = (0, 0)):
    """The prompts for one object: its box and a click at its deepest point.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The object on its bounding crop.
    offset : (int, int)
        ``(row, col)`` of the crop in the slice.

    Returns
    -------
    point : (float, float)
        ``(x, y)`` of the pixel farthest from the object's border (slice pixels).
    box : (float, float, float, float)
        ``(x0, y0, x1, y1)``: the object's bounding box, corners on its outermost pixels.

    Examples
    --------
    A 3 x 3 square whose crop starts at row 10, column 20:

    >>> import numpy as np
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> object_prompts(m, (10, 20))
    ((22.0, 12.0), (21.0, 11.0, 23.0, 13.0))
    """
    from .propagation.prompts import _deep_points

    (x, y), = _deep_points(mask, 1)  # the distance transform's first maximum
    rows, cols = np.nonzero(mask)
    r0, c0 = offset
    point = (x + c0, y + r0)
    box = (float(cols.min() + c0), float(rows.min() + r0), float(cols.max() + c0),
           float(rows.max() + r0))
    return point, box


def refine_slice(slice_predictor, labels: np.ndarray, *, min_score: float = 0.8,
                 ids=None, cancel=None) -> list[RefinedObject]:
    """Refine every object of one label slice.

    Parameters
    ----------
    slice_predictor : SlicePredictor
        The image slice the labels belong to, ready to answer prompts
        (:class:`~napari_edgesam.engine.slice_predictor.EmbeddedSlice` or tiles).
    labels : ndarray of int, shape (H, W)
        Object ids (0 background), the slice's ``(row, col)`` pixels.
    min_score : float
        Objects whose new mask scores at least this are marked ``confident``.
    ids : iterable of int, optional
        Only these objects (default: all).
    cancel : CancelToken, optional
        Checked between objects; when cancelled the objects done so far are returned.

    Returns
    -------
    list of RefinedObject
        In increasing id order.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    shape = labels.shape
    wanted = None if ids is None else {int(i) for i in ids}
    # ids renumbered 1..n first: find_objects makes one entry per id up to the largest
    values, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(shape)
    if values[0] != 0:  # no background: ids start at 1 all the same
        compact = compact + 1
        values = np.concatenate([[0], values])
    out = []
    for index, sl in enumerate(ndimage.find_objects(compact)):
        label = int(values[index + 1])
        if sl is None or (wanted is not None and label not in wanted):
            continue
        if cancel is not None and cancel.cancelled:
            break
        old_crop = compact[sl] == index + 1
        offset = (sl[0].start, sl[1].start)
        point, box = object_prompts(old_crop, offset)
        pred = slice_predictor.predict_slice(points=[point], labels=[1], box=box)
        old = MaskCrop(old_crop, *offset, shape)
        new = pred.mask
        iou = mask_iou(old, new, empty=1.0)
        out.append(RefinedObject(label, old, new, float(pred.score), float(iou),
                                 bool(pred.score >= min_score)))
    return out
