"""Prompt derivation: the next slice's prompts from the previous slice's mask
(:func:`derive_prompts`: a box grown from its bounding box, clicks at its deepest points,
negative clicks on neighbouring objects), :func:`keep_touching`, which trims the
predicted mask to the parts that touch the previous mask grown by the same margin, and
:func:`deepest_point`, the distance transform's maximum found from a coarse transform
(the deepest point of a large mask, exactly, at a fraction of the full transform's cost).

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

__all__ = ["as_crop", "deepest_point", "derive_prompts", "keep_touching"]


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


#: :func:`deepest_point` works on masks of at least this many pixels (padded crop; smaller
#: ones get the full transform, which is cheap there), through a mask this many times
#: coarser per axis; masks it finds no deeper than :data:`SHALLOW_DEPTH` pixels are searched
#: ring by ring instead.
COARSE_MIN_PIXELS = 192 * 192
COARSE_FACTOR = 4
SHALLOW_DEPTH = 8.5


def deepest_point(padded: np.ndarray,
                  factor: int = COARSE_FACTOR) -> tuple[int, int, float] | None:
    """The first maximum, in row-major order, of the Euclidean distance transform of a mask,
    without computing the transform at full resolution.

    Exactly what ``d = scipy.ndimage.distance_transform_edt(padded); i = argmax(d)`` gives
    (the same pixel, ties included, and the same float64 depth), for masks of
    :data:`COARSE_MIN_PIXELS` pixels or more:

    1. the transform of a ``factor``-times coarser mask (a block is inside when all its
       pixels are) bounds every pixel's depth ``d(p)`` by ``factor * D(block) +- 2r``, where
       ``r = (factor - 1) / sqrt(2)`` is the farthest a pixel centre lies from its block's
       centre (a block outside the coarse mask holds a background pixel, so its pixels
       are at most ``2r`` deep);
    2. deep masks: only pixels whose upper bound reaches the largest lower bound can hold
       the maximum; their exact depths are their distances to the nearest background pixel
       that touches the mask (a nearest background pixel always does), found with a k-d
       tree among those within reach, and compared as integer squared distances;
    3. shallow masks (every pixel at most :data:`SHALLOW_DEPTH` deep by the bound: random
       weights' fine-grained masks): every inside pixel looks for background at the integer
       offsets of each squared distance in turn (1, 2, 4, 5, 8, ...); the pixels still
       without background when the last ones find it are the deepest.

    Parameters
    ----------
    padded : ndarray of bool, shape (H, W)
        A mask whose outer rows and columns are all False (a crop padded by one pixel),
        indexed ``[row, col]``.
    factor : int
        Block size of the coarse mask.

    Returns
    -------
    (int, int, float) or None
        ``(row, col, depth)`` in ``padded``'s pixels; None when the mask is small, or deep
        and thin in the coarse mask (no coarse block deep enough to bound the others): the
        caller computes the transform then.
    """
    h, w = padded.shape
    if h * w < COARSE_MIN_PIXELS or not padded.any():
        return None
    f = int(factor)
    hc, wc = -(-h // f), -(-w // f)
    # Zeros added beyond the zero border are never nearer to an inside pixel than the
    # border itself (or its projection on it), so they change no depth.
    ext = np.zeros((hc * f, wc * f), bool)
    ext[:h, :w] = padded
    rows_in = np.logical_and.reduce([ext[i::f] for i in range(f)])
    coarse = np.logical_and.reduce([rows_in[:, j::f] for j in range(f)])
    dc = _ndi().distance_transform_edt(coarse)
    dmax = float(dc.max())
    reach = 2 * (f - 1) / math.sqrt(2)  # 2r, in fine pixels
    if f * dmax - reach > reach:  # blocks outside the coarse mask cannot hold the maximum
        return _deep_from_candidates(padded, ext, dc, f, reach)
    if f * dmax + reach <= SHALLOW_DEPTH:
        return _deep_by_rings(padded, f * dmax + reach)
    return None


def _deep_from_candidates(padded, ext, dc, f: int, reach: float):
    """Step 2 of :func:`deepest_point`."""
    h, w = padded.shape
    dmax = float(dc.max())
    # Blocks whose upper bound reaches the best lower bound; their inside pixels.
    br, bc = np.nonzero(f * dc + reach >= f * dmax - reach - 1e-9)
    off = np.arange(f)
    rows = (br[:, None, None] * f + off[None, :, None]).repeat(f, 2).ravel()
    cols = (bc[:, None, None] * f + off[None, None, :]).repeat(f, 1).ravel()
    inside = ext[rows, cols]
    rows, cols = rows[inside], cols[inside]
    # Background pixels touching the mask, within reach of every candidate.
    far = int(math.ceil(f * dmax + reach)) + 1
    y0, y1 = max(0, int(rows.min()) - far), min(h, int(rows.max()) + far + 1)
    x0, x1 = max(0, int(cols.min()) - far), min(w, int(cols.max()) + far + 1)
    win = padded[y0:y1, x0:x1]
    grown = np.zeros_like(win)
    grown[1:] |= win[:-1]
    grown[:-1] |= win[1:]
    grown[:, 1:] |= win[:, :-1]
    grown[:, :-1] |= win[:, 1:]
    by, bx = np.nonzero(grown & ~win)
    edge = np.column_stack((by + y0, bx + x0))
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(edge).query(np.column_stack((rows, cols)))
    d2 = (rows - edge[nearest, 0]) ** 2 + (cols - edge[nearest, 1]) ** 2
    best = d2 == d2.max()
    i = np.flatnonzero(best)[np.argmin((rows * w + cols)[best])]  # first in row-major order
    return int(rows[i]), int(cols[i]), float(np.sqrt(np.float64(d2[i])))


def _ring_offsets(bound: float) -> list[tuple[int, list[tuple[int, int]]]]:
    """``[(d2, [(dy, dx), ...]), ...]``: the integer offsets with ``0 < dy^2 + dx^2 = d2 <=
    bound^2``, grouped by ``d2``, ascending."""
    m = int(math.floor(bound))
    groups: dict = {}
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            d2 = dy * dy + dx * dx
            if 0 < d2 <= bound * bound + 1e-9:
                groups.setdefault(d2, []).append((dy, dx))
    return sorted(groups.items())


def _deep_by_rings(padded, bound: float):
    """Step 3 of :func:`deepest_point` (every depth is at most ``bound``)."""
    m = max(1, int(math.floor(bound)))
    big = np.pad(padded, m)  # more zeros beyond the border: no depth changes
    # Squared distance 1 on whole arrays: the pixels whose four neighbours are inside.
    core = big.copy()
    core[1:-1, 1:-1] &= big[:-2, 1:-1] & big[2:, 1:-1] & big[1:-1, :-2] & big[1:-1, 2:]
    if not core.any():
        rows, cols = np.nonzero(big)
        return int(rows[0]) - m, int(cols[0]) - m, 1.0
    rows, cols = np.nonzero(core)  # row-major
    for d2, offsets in _ring_offsets(bound)[1:]:
        hit = np.zeros(len(rows), bool)
        for dy, dx in offsets:
            hit |= ~big[rows + dy, cols + dx]
        if hit.all():  # the last pixels to find background are the deepest
            return int(rows[0]) - m, int(cols[0]) - m, float(np.sqrt(np.float64(d2)))
        rows, cols = rows[~hit], cols[~hit]
    raise AssertionError("a pixel deeper than its bound")  # pragma: no cover


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
    if n == 1:  # the default: only the deepest point, found without the full transform
        found = deepest_point(crop)
        if found is not None:
            r, c, depth = found
            return [] if depth < min_depth else [(float(c - 1 + c0), float(r - 1 + r0))]
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

