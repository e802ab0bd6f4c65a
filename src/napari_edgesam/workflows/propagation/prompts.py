"""Prompt derivation: the next slice's prompts from the previous slice's mask
(:func:`derive_prompts`: a box grown from its bounding box, clicks at its deepest points,
negative clicks on neighbouring objects), and :func:`keep_touching`, which trims the
predicted mask to the parts that touch the previous mask grown by the same margin.

All masks are bool ``(Y, X)`` slices indexed ``[row, col]`` (or
:class:`~napari_edgesam.engine.transforms.MaskCrop` s of them); points are
``(x, y) = (col, row)`` and boxes ``(x0, y0, x1, y1)`` in slice pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...engine.errors import InvalidInputError
from ...engine.transforms import MaskCrop
from .settings import PropagationSettings

__all__ = ["as_crop", "derive_prompts", "keep_touching"]


def _ndi():
    """scipy.ndimage, imported on first use (keeps ``import`` and CLI start-up cheap)."""
    from scipy import ndimage

    return ndimage


def _margin(mask_shape_hw: tuple[int, int], settings: PropagationSettings) -> float:
    h, w = mask_shape_hw
    return max(settings.box_margin * max(h, w), settings.box_margin_px)


def as_crop(mask) -> MaskCrop:
    """``mask`` as a :class:`MaskCrop` (bool ``(Y, X)`` arrays are cropped; crops pass)."""
    return mask if isinstance(mask, MaskCrop) else MaskCrop(mask)


def _last_pixels(mask: MaskCrop) -> tuple[int, int, int, int] | None:
    """``(first_row, last_row, first_col, last_col)`` of a mask, inclusive (pixel centres:
    what box corners are made of); None when empty."""
    bb = mask.bbox
    return None if bb is None else (bb[0], bb[2] - 1, bb[1], bb[3] - 1)


def _deep_points(mask: np.ndarray, n: int, min_depth: float = 0.0) -> list[tuple[float, float]]:
    """Up to ``n`` points deep inside ``mask`` as ``(x, y)``: the distance-transform maximum,
    then maxima farthest from the points already chosen (spread over the object). Points
    less than ``min_depth`` pixels from the mask's edge are not returned."""
    if n <= 0:
        return []
    bb = _last_pixels(MaskCrop(mask))
    if bb is None:
        return []
    r0, r1, c0, c1 = bb
    crop = np.pad(mask[r0:r1 + 1, c0:c1 + 1], 1)
    dist = _ndi().distance_transform_edt(crop)
    points = []
    score = dist.copy()
    for _ in range(n):
        idx = int(np.argmax(score))
        if score.flat[idx] <= 0 or dist.flat[idx] < min_depth:
            break
        r, c = np.unravel_index(idx, score.shape)
        points.append((float(c - 1 + c0), float(r - 1 + r0)))
        if len(points) == n:
            break
        # Prefer deep points far from those chosen: weight depth by distance to them.
        yy, xx = np.mgrid[: score.shape[0], : score.shape[1]]
        d = np.sqrt((yy - r) ** 2 + (xx - c) ** 2)
        reach = max(2.0 * float(dist.max()), 1.0)
        score = score * np.clip(d / reach, 0.0, 1.0)
        score[dist < 0.5 * dist.max()] = 0
    return points


def derive_prompts(
    prev_mask: np.ndarray,
    settings: PropagationSettings = PropagationSettings(),
    neighbour_masks: Sequence[np.ndarray] = (),
) -> dict:
    """Prompts for the next slice from the previous slice's mask.

    Parameters
    ----------
    prev_mask : ndarray of bool, shape (Y, X), or MaskCrop
        Non-empty mask of the object on the previous slice.
    settings : PropagationSettings
    neighbour_masks : sequence of (ndarray of bool, shape (Y, X), or MaskCrop)
        Masks of other objects on the previous slice (for negative clicks).

    Returns
    -------
    dict
        ``points`` (ndarray (N, 2) as ``(x, y)`` slice pixels, or None), ``labels``
        (ndarray (N,) of 0/1, or None), ``box`` (``(x0, y0, x1, y1)`` or None) and
        ``margin`` (float, pixels), ready for :meth:`Predictor.predict`.
    """
    prev = as_crop(prev_mask)
    h, w = prev.shape
    bb = _last_pixels(prev)
    if bb is None:
        raise InvalidInputError("cannot derive prompts from an empty mask")
    r0, r1, c0, c1 = bb
    margin = _margin((r1 - r0 + 1, c1 - c0 + 1), settings)
    box = None
    if settings.box_margin >= 0:
        box = (
            max(0.0, c0 - margin), max(0.0, r0 - margin),
            min(w - 1.0, c1 + margin), min(h - 1.0, r1 + margin),
        )
    # Without a box the clicks are the only prompt: always give at least the deepest point.
    min_depth = settings.click_min_depth if box is not None else 0.0
    pts = [(x + prev.col0, y + prev.row0, 1)
           for x, y in _deep_points(prev.crop, settings.positive_points, min_depth)]
    if settings.neighbour_negatives and neighbour_masks:
        bx0, by0, bx1, by1 = box if box is not None else (
            c0 - margin, r0 - margin, c1 + margin, r1 + margin)
        ys0, ys1 = int(max(0, math.floor(by0))), int(min(h, math.ceil(by1) + 1))
        xs0, xs1 = int(max(0, math.floor(bx0))), int(min(w, math.ceil(bx1) + 1))
        own = prev.window(ys0, xs0, ys1, xs1)
        for other in neighbour_masks:
            # the neighbour inside this object's box, outside the object (window only)
            inter = as_crop(other).window(ys0, xs0, ys1, xs1) & ~own
            if inter.sum() < max(settings.min_area, 4):
                continue
            for x, y in _deep_points(inter, 1):
                pts.append((x + xs0, y + ys0, 0))
    if pts:
        points = np.array([(x, y) for x, y, _ in pts], dtype=np.float64)
        labels = np.array([lab for _, _, lab in pts], dtype=np.int64)
        if box is None and not (labels == 1).any():
            points = labels = None
    else:
        points = labels = None
    return {"points": points, "labels": labels, "box": box, "margin": margin}



def keep_touching(mask: MaskCrop, prev: MaskCrop, margin: float) -> MaskCrop:
    """Keep the connected parts of ``mask`` that touch ``prev`` grown by ``margin`` px.

    Parameters
    ----------
    mask : MaskCrop
        The predicted mask on the new slice (slice ``(Y, X)`` frame, ``[row, col]``).
    prev : MaskCrop
        Non-empty mask of the object on the previous slice, same slice shape.
    margin : float
        Pixels by which ``prev`` is grown (the box margin of :func:`derive_prompts`).

    Returns
    -------
    MaskCrop
        ``mask`` itself when it has at most one connected part, else the parts touching.
    """
    lab, n = _ndi().label(mask.crop)
    if n <= 1:
        return mask
    r0, r1, c0, c1 = _last_pixels(prev)
    m = int(math.ceil(margin))
    h, w = mask.shape
    ys0, ys1 = max(0, r0 - m), min(h, r1 + m + 1)
    xs0, xs1 = max(0, c0 - m), min(w, c1 + m + 1)
    # Distance from prev within a window (outside the window is farther than the margin),
    # looked at where the window meets the mask's crop.
    grown = _ndi().distance_transform_edt(~prev.window(ys0, xs0, ys1, xs1)) <= margin
    mr0, mc0, mr1, mc1 = mask.bbox
    ir0, ic0, ir1, ic1 = max(ys0, mr0), max(xs0, mc0), min(ys1, mr1), min(xs1, mc1)
    keep = np.zeros(0, lab.dtype)
    if ir1 > ir0 and ic1 > ic0:
        sub = lab[ir0 - mr0:ir1 - mr0, ic0 - mc0:ic1 - mc0]
        keep = np.unique(sub[grown[ir0 - ys0:ir1 - ys0, ic0 - xs0:ic1 - xs0]])
        keep = keep[keep > 0]
    return MaskCrop(np.isin(lab, keep), mr0, mc0, mask.shape)

