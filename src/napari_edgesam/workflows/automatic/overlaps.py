"""Overlaps between candidate masks: non-maximum suppression on mask IoU, then painting.

A :class:`Candidate` is one predicted object mask kept as a crop of the slice;
:func:`resolve_overlaps` turns a list of them into a label image with no overlaps
(``(row, col)`` order, pixels of the slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...engine.errors import InvalidInputError
from ...engine.mask_crop import MaskCrop, mask_iou
from .box_index import _BoxIndex

__all__ = ["Candidate", "resolve_overlaps"]


@dataclass
class Candidate:
    """One predicted object mask, stored as a crop.

    Attributes
    ----------
    bbox : (int, int, int, int)
        ``(row0, col0, row1, col1)``, half-open, in the slice frame.
    mask : ndarray of bool, shape (row1 - row0, col1 - col0)
    score : float
        Stability score.
    seed : (float, float)
        ``(x, y)`` of the seed that produced it.
    index : int
        Seed order (ties are broken by it, so results are deterministic).
    """

    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    seed: tuple[float, float]
    index: int
    area: int = field(init=False)

    def __post_init__(self):
        self.area = int(np.count_nonzero(self.mask))


def resolve_overlaps(candidates: list[Candidate], shape: tuple[int, int], *,
                     nms_iou: float = 0.5, min_kept_fraction: float = 0.5,
                     min_area: int = 1, out: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression on mask IoU (:func:`~napari_edgesam.engine.mask_crop.mask_iou`),
    then painting without overlaps.

    Candidates are taken in order of decreasing score (then increasing area, then seed
    order). A candidate whose IoU with an already kept one exceeds ``nms_iou`` is dropped;
    kept ones are painted in the same order onto pixels not yet taken. A candidate left with
    fewer than ``max(min_area, min_kept_fraction * area)`` free pixels is dropped.

    Parameters
    ----------
    candidates : list of Candidate
    shape : (int, int)
        ``(H, W)`` of the slice.
    out : ndarray of uint32, shape (H, W), optional
        Where to paint (for example a slice of a disk memmap); it is zeroed first. Only the
        candidates' boxes are touched after that, so a memmap is never loaded whole.

    Returns
    -------
    labels : ndarray of uint32, shape (H, W)
        0 background, 1..n in painting order (``out`` when given).
    scores : ndarray of float32, shape (n,)
    """
    order = sorted(candidates, key=lambda c: (-c.score, c.area, c.index))
    kept: list[Candidate] = []
    kept_crops: list[MaskCrop] = []  # kept[k] as a MaskCrop of the slice, for mask_iou
    index = _BoxIndex()
    for cand in order:
        crop = MaskCrop(cand.mask, cand.bbox[0], cand.bbox[1], shape)
        if all(mask_iou(crop, kept_crops[k]) <= nms_iou for k in index.near(cand.bbox)):
            index.add(len(kept), cand.bbox)
            kept.append(cand)
            kept_crops.append(crop)
    if out is None:
        labels = np.zeros(shape, dtype=np.uint32)
    else:
        if tuple(out.shape) != tuple(shape):
            raise InvalidInputError(f"out has shape {out.shape}, expected {tuple(shape)}")
        labels = out
        labels[...] = 0
    scores = []
    for cand in kept:
        r0, c0, r1, c1 = cand.bbox
        window = np.asarray(labels[r0:r1, c0:c1])
        free = cand.mask & (window == 0)
        n_free = int(np.count_nonzero(free))
        if n_free < max(min_area, min_kept_fraction * cand.area) or n_free == 0:
            continue
        scores.append(cand.score)
        window[free] = len(scores)
        labels[r0:r1, c0:c1] = window
    return labels, np.asarray(scores, dtype=np.float32)
