"""Masks kept as the crop of their bounding box, and how two masks overlap.

- :func:`mask_bbox`: the bounding box of a bool mask's True pixels.
- :func:`bbox_intersection`: the common part of two half-open boxes.
- :class:`MaskCrop`: a bool mask of one ``(H, W)`` slice stored as its bounding-box crop.
- :func:`mask_intersection`, :func:`mask_iou`, :func:`overlap_coefficient`: how much two
  masks of the same slice overlap, computed on the overlap of their bounding boxes (never
  on slice-sized arrays for crops).

All boxes are ``(row0, col0, row1, col1)``, half-open, in ``(row, col)`` pixels of the
slice (the *original frame* of :mod:`.transforms`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MaskCrop",
    "bbox_intersection",
    "mask_bbox",
    "mask_intersection",
    "mask_iou",
    "overlap_coefficient",
]

#: A half-open box ``(row0, col0, row1, col1)`` in ``(row, col)`` pixels.
Box = tuple[int, int, int, int]


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Bounding box of a boolean mask's True pixels.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)

    Returns
    -------
    (row0, col0, row1, col1) or None
        Half-open (``mask[row0:row1, col0:col1]`` is the crop), in the mask's own pixels;
        None when the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def bbox_intersection(a: Box | None, b: Box | None) -> Box | None:
    """The common part of two half-open boxes.

    Parameters
    ----------
    a, b : (row0, col0, row1, col1) or None
        Half-open boxes in the same frame; None stands for an empty box.

    Returns
    -------
    (row0, col0, row1, col1) or None
        The intersection, half-open; None when the boxes do not overlap (touching edges do
        not overlap) or either is None.
    """
    if a is None or b is None:
        return None
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, c0, r1, c1


class MaskCrop:
    """A bool mask of one ``(H, W)`` slice, kept as the crop of its bounding box.

    Large slices (a 10000 x 10000 tile scan) make slice-sized masks cost 100 MB each; a crop
    costs what the object covers. ``np.asarray(crop)`` still gives the slice-sized mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The mask inside a window of the slice (trimmed here to its bounding box).
    row0, col0 : int
        Where ``mask[0, 0]`` lies in the slice, ``(row, col)`` pixels.
    shape : (int, int)
        ``(H, W)`` of the slice.

    Attributes
    ----------
    crop : ndarray of bool, shape (r1 - r0, c1 - c0)
        Tight (its first and last rows and columns hold True pixels); ``(0, 0)`` if empty.
    row0, col0 : int
        Offset of ``crop`` in the slice.
    shape : (int, int)
    area : int
        True pixels.
    """

    __slots__ = ("area", "col0", "crop", "row0", "shape")

    def __init__(self, mask, row0: int = 0, col0: int = 0, shape=None):
        mask = np.asarray(mask, dtype=bool)
        self.shape = tuple(int(n) for n in (mask.shape if shape is None else shape))
        bb = mask_bbox(mask) if mask.size else None
        if bb is None:
            self.crop, self.row0, self.col0, self.area = np.zeros((0, 0), bool), 0, 0, 0
            return
        r0, c0, r1, c1 = bb
        self.crop = np.ascontiguousarray(mask[r0:r1, c0:c1])
        self.row0, self.col0 = int(row0) + r0, int(col0) + c0
        self.area = int(np.count_nonzero(self.crop))

    @property
    def bbox(self) -> Box | None:
        """``(row0, col0, row1, col1)`` in the slice, half-open; None when empty."""
        if not self.area:
            return None
        return (self.row0, self.col0, self.row0 + self.crop.shape[0],
                self.col0 + self.crop.shape[1])

    @property
    def offset(self) -> tuple[int, int]:
        """``(row, col)`` of the crop's first pixel in the slice."""
        return self.row0, self.col0

    def any(self) -> bool:
        """Whether the mask has at least one pixel."""
        return self.area > 0

    def window(self, row0: int, col0: int, row1: int, col1: int) -> np.ndarray:
        """The mask on the half-open window ``[row0:row1, col0:col1]`` of the slice: bool
        ``(row1 - row0, col1 - col0)``, False outside the crop."""
        out = np.zeros((max(0, row1 - row0), max(0, col1 - col0)), bool)
        bb = self.bbox
        if bb is None:
            return out
        r0, c0 = max(row0, bb[0]), max(col0, bb[1])
        r1, c1 = min(row1, bb[2]), min(col1, bb[3])
        if r1 > r0 and c1 > c0:
            out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = \
                self.crop[r0 - bb[0]:r1 - bb[0], c0 - bb[1]:c1 - bb[1]]
        return out

    def full(self) -> np.ndarray:
        """The slice-sized mask, bool ``(H, W)`` (allocates H x W bytes)."""
        return self.window(0, 0, *self.shape)

    def __array__(self, dtype=None, copy=None):
        full = self.full()
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"MaskCrop(area={self.area}, bbox={self.bbox}, shape={self.shape})"


def _as_pair(a, b) -> tuple[MaskCrop, MaskCrop] | tuple[np.ndarray, np.ndarray]:
    """Two MaskCrops, or two bool arrays, of the same slice shape (ValueError otherwise).

    A bool array paired with a MaskCrop is taken as the slice-sized mask and wrapped in a
    MaskCrop of its bounding box.
    """
    a_crop, b_crop = isinstance(a, MaskCrop), isinstance(b, MaskCrop)
    if not a_crop and not b_crop:
        a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        if a.shape != b.shape:
            raise ValueError(f"masks of different shapes: {a.shape} and {b.shape}")
        return a, b
    if not a_crop:
        a = MaskCrop(a)
    if not b_crop:
        b = MaskCrop(b)
    if a.shape != b.shape:
        raise ValueError(f"masks of slices of different shapes: {a.shape} and {b.shape}")
    return a, b


def _counts(a, b) -> tuple[int, int, int]:
    """``(|a & b|, |a|, |b|)`` in pixels, see :func:`mask_iou` for the arguments."""
    a, b = _as_pair(a, b)
    if isinstance(a, np.ndarray):
        return (int(np.count_nonzero(a & b)), int(np.count_nonzero(a)),
                int(np.count_nonzero(b)))
    win = bbox_intersection(a.bbox, b.bbox)
    inter = 0
    if win is not None:
        r0, c0, r1, c1 = win
        inter = int(np.count_nonzero(
            a.crop[r0 - a.row0:r1 - a.row0, c0 - a.col0:c1 - a.col0]
            & b.crop[r0 - b.row0:r1 - b.row0, c0 - b.col0:c1 - b.col0]))
    return inter, a.area, b.area


def mask_intersection(a, b) -> int:
    """Pixels that are True in both masks (``|a & b|``); arguments as for :func:`mask_iou`."""
    return _counts(a, b)[0]


def mask_iou(a, b, *, empty: float = 0.0) -> float:
    """Intersection over union of two masks of the same slice.

    Parameters
    ----------
    a, b : MaskCrop, or ndarray of bool of shape (H, W)
        Two masks of one ``(H, W)`` slice: two :class:`MaskCrop` (their offsets may differ;
        only the overlap of their bounding boxes is looked at, nothing slice-sized is
        allocated), or two bool arrays of the same shape (compared pixel by pixel). A bool
        array paired with a MaskCrop is taken as the slice-sized mask.
    empty : float, keyword-only
        The value returned when the union is empty (both masks empty), where IoU is 0 / 0.
        Callers choose their convention: ``1.0`` (two empty masks agree perfectly, as the
        optimised/plain agreement check counts them), ``0.0`` (the default: nothing to
        match, as non-maximum suppression counts them) or ``math.nan`` (undefined, as
        propagation's stop rules count them).

    Returns
    -------
    float
        ``|a & b| / |a | b|`` in [0, 1], or ``empty``.

    Raises
    ------
    ValueError
        The masks belong to slices of different shapes.

    Examples
    --------
    Two 2 x 2 squares of a 10 x 10 slice, the second one column to the right:

    >>> import numpy as np
    >>> square = np.ones((2, 2), bool)
    >>> a = MaskCrop(square, row0=3, col0=3, shape=(10, 10))
    >>> b = MaskCrop(square, row0=3, col0=4, shape=(10, 10))
    >>> round(mask_iou(a, b), 4)  # 2 shared pixels of 6
    0.3333
    >>> mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool), empty=1.0)
    1.0
    """
    inter, area_a, area_b = _counts(a, b)
    union = area_a + area_b - inter
    return float(inter / union) if union else float(empty)


def overlap_coefficient(a, b, *, empty: float = 0.0) -> float:
    """Intersection over the smaller mask's area (Szymkiewicz-Simpson coefficient).

    1.0 when one mask lies inside the other, whatever their sizes.

    Parameters
    ----------
    a, b : MaskCrop, or ndarray of bool of shape (H, W)
        As for :func:`mask_iou`.
    empty : float, keyword-only
        The value returned when either mask is empty (the smaller area is 0); default 0.0.

    Returns
    -------
    float
        ``|a & b| / min(|a|, |b|)`` in [0, 1], or ``empty``.
    """
    inter, area_a, area_b = _counts(a, b)
    small = min(area_a, area_b)
    return float(inter / small) if small else float(empty)
