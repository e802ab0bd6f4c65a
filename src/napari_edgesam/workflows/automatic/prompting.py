"""Prompting: one decoder prediction per seed, and the filters each predicted mask must pass.

Steps 3 and 4 of :mod:`napari_edgesam.workflows.automatic`: a seed is one positive click;
a mask that also covers distant seeds is predicted again with them as negative clicks; the
mask keeps the component under its seed, small holes are filled, and stability, area and
foreground filters decide whether it becomes a :class:`~.overlaps.Candidate`. The decoder
itself is behind a callable, so whole-slice and tiled prediction share this code. With a
batched decoder (``run_batch``), the seeds' first predictions are decoded ahead, up to
``batch_size`` seeds per run: the seeds not yet covered by an accepted object, in order; each
is then taken through the same sequential filters as before (a seed covered meanwhile is
skipped as before, its prediction unused), so the objects are those of one run per seed.
The refinements with negative clicks depend only on each seed's own first mask, so they are
decoded ahead too, after the batch's first predictions (prompt sets of one length per run).
Seeds are ``(x, y) = (col, row)``; masks and boxes ``(row, col)``, in pixels of the slice.
"""

from __future__ import annotations

import math

import numpy as np

from ...engine.cancel import CancelToken
from ...engine.errors import CancelledError
from ...engine.transforms import mask_bbox
from .box_index import _BoxIndex
from .overlaps import Candidate
from .params import AutoParams


def _check_cancel(cancel) -> None:
    """Raise :class:`CancelledError` when ``cancel`` says so: a
    :class:`~napari_edgesam.engine.cancel.CancelToken` that is cancelled, or a callable
    returning True."""
    if cancel is None:
        return
    if cancel.cancelled if isinstance(cancel, CancelToken) else cancel():
        raise CancelledError("automatic segmentation cancelled")


def _values_at(mask: np.ndarray, off_r: int, off_c: int, rows: np.ndarray,
               cols: np.ndarray) -> np.ndarray:
    """``mask`` (a crop at ``(off_r, off_c)`` of the slice) at slice pixels ``(rows, cols)``;
    False outside the crop."""
    r, c = rows - off_r, cols - off_c
    ok = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
    out = np.zeros(rows.shape, bool)
    out[ok] = mask[r[ok], c[ok]]
    return out


def _postprocess(mask: np.ndarray, seed_rc: tuple[int, int], params: AutoParams):
    """Crop a full-frame mask; keep the seed's component; fill small holes.

    Returns ``(bbox, crop)`` or None when nothing is left (or the seed is not covered).
    """
    from scipy import ndimage as ndi

    box = mask_bbox(mask)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    crop = mask[r0:r1, c0:c1]
    min_area, max_area = params.area_limits
    if np.count_nonzero(crop) < min_area:  # its components are smaller still
        return None
    sr, sc = seed_rc
    if params.seed_component:
        if not (r0 <= sr < r1 and c0 <= sc < c1) or not crop[sr - r0, sc - c0]:
            return None
        lab, n = ndi.label(crop)
        if n > 1:
            crop = lab == lab[sr - r0, sc - c0]
            sub = mask_bbox(crop)
            crop = crop[sub[0]:sub[2], sub[1]:sub[3]]
            r0, c0 = r0 + sub[0], c0 + sub[1]
    if np.count_nonzero(crop) > max_area:  # filling holes only adds pixels
        return None
    if min_area > 0:
        crop = _fill_small_holes(crop, min_area)
    return (r0, c0, r0 + crop.shape[0], c0 + crop.shape[1]), crop


def _fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill holes (background components not touching the crop border) below ``max_hole``
    pixels."""
    from scipy import ndimage as ndi

    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    if not holes.any():
        return mask
    lab, n = ndi.label(holes)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < max_hole
    small[0] = False
    return mask | small[lab]


def _collect_candidates(seeds: np.ndarray, run, foreground_crop, params: AutoParams,
                        shape: tuple[int, int], cancel, run_batch=None,
                        batch_size: int = 16) -> tuple[list[Candidate], int]:
    """Steps 3-4 of the module docstring: one decoder prediction per seed, then the filters.

    Parameters
    ----------
    seeds : ndarray, shape (N, 2)
        ``(x, y)`` pixels of the slice, in the order they are tried.
    run : callable(points, labels) -> LowResMask or FullMask
        Predicts one mask (:mod:`.lowres`): its score, its values at seed pixels and its
        window are asked for only as the filters need them, so rejected masks are not
        upsampled (or only at a few pixels).
    foreground_crop : callable(row0, col0, row1, col1) -> ndarray of bool
        The foreground of a half-open box of the slice.
    shape : (int, int)
        ``(H, W)`` of the slice.
    run_batch : callable(list of (points, labels)) -> list of LowResMask, optional
        Predicts several single-click prompts at once (one batched decoder run); the seeds'
        first predictions then come from it, ``batch_size`` at a time.

    Returns
    -------
    candidates : list of Candidate
    decoder_calls : int
        Prompt sets whose prediction was used (as with one run per seed).
    """
    h, w = shape
    min_area, max_area = params.area_limits
    far = 0.75 * params.object_size
    candidates: list[Candidate] = []
    covered = _BoxIndex()  # which accepted candidate first covers a pixel
    rows = np.clip(np.round(seeds[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(seeds[:, 0]).astype(int), 0, w - 1)
    calls = 0
    ahead: dict[int, object] = {}  # seed index -> its first prediction, decoded in a batch
    # seed index -> its refined prediction, or None when its first mask needs none
    refined_ahead: dict[int, object] = {}

    def duplicate(i: int) -> bool:
        """Seed ``i`` is a second seed of an object already found (its mask would be a
        duplicate)."""
        x, y = seeds[i]
        owner = next((k for k in covered.at(rows[i], cols[i])
                      if _values_at(candidates[k].mask, *candidates[k].bbox[:2],
                                    rows[i:i + 1], cols[i:i + 1])[0]), None)
        return owner is not None and math.hypot(x - candidates[owner].seed[0],
                                                y - candidates[owner].seed[1]) <= far

    def refinement(i: int, pred):
        """The prompt predicting seed ``i`` again with the distant seeds its first mask
        covers as negative clicks, or None when it covers none."""
        if not (params.split_merged and len(seeds) > 1):
            return None
        x, y = seeds[i]
        dist = np.hypot(seeds[:, 0] - x, seeds[:, 1] - y)
        far_ones = dist > far
        inside = np.zeros(len(seeds), bool)
        if far_ones.any():
            inside[far_ones] = pred.values_at(rows[far_ones], cols[far_ones])
        if not inside.any():
            return None
        others = seeds[inside][np.argsort(dist[inside], kind="stable")][:8]
        return [(x, y), *map(tuple, others)], [1] + [0] * len(others)

    for i, (x, y) in enumerate(seeds):
        _check_cancel(cancel)
        if duplicate(i):
            ahead.pop(i, None)
            refined_ahead.pop(i, None)
            continue
        if run_batch is not None and i not in ahead:
            batch = [i]
            for j in range(i + 1, len(seeds)):
                if len(batch) >= batch_size:
                    break
                if not duplicate(j):
                    batch.append(j)
            preds = run_batch([([tuple(seeds[j])], [1]) for j in batch])
            ahead.update(zip(batch, preds, strict=True))
            # the refinements depend only on each seed's own first mask: decoded together
            # too (prompt sets of one length per run)
            again = {j: refinement(j, ahead[j]) for j in batch}
            refined_ahead.update(dict.fromkeys(batch))
            todo = [j for j in batch if again[j] is not None]
            if todo:
                refined_ahead.update(zip(todo, run_batch([again[j] for j in todo]),
                                         strict=True))
        pred = ahead.pop(i) if run_batch is not None else run([(x, y)], [1])
        calls += 1
        if i in refined_ahead:  # decided in the batch: not looked at again
            refined = refined_ahead.pop(i)
        else:
            prompt = refinement(i, pred)
            refined = None if prompt is None else run(*prompt)
        if refined is not None:
            calls += 1
            if np.isfinite(refined.score) and refined.score >= params.min_stability:
                pred = refined
        score = pred.score
        if not (np.isfinite(score) and score >= params.min_stability):
            continue  # decided on the low-res logits: never upsampled
        f_r0, f_c0, f_r1, f_c1 = pred.frame
        sr = min(h - 1, max(0, int(round(y))))
        sc = min(w - 1, max(0, int(round(x))))
        if not (f_r0 <= sr < f_r1 and f_c0 <= sc < f_c1):
            continue
        if params.seed_component and not pred.values_at(np.array([sr]), np.array([sc]))[0]:
            continue  # _postprocess would drop it: the seed is not covered
        mask, off_r, off_c = pred.window()
        post = _postprocess(mask, (sr - off_r, sc - off_c), params)
        if post is None:
            continue
        (r0, c0, r1, c1), crop = post
        r0, r1, c0, c1 = r0 + off_r, r1 + off_r, c0 + off_c, c1 + off_c
        area = int(np.count_nonzero(crop))
        if not min_area <= area <= max_area:
            continue
        if params.min_foreground > 0:
            fg = np.count_nonzero(crop & foreground_crop(r0, c0, r1, c1)) / max(area, 1)
            if fg < params.min_foreground:
                continue
        covered.add(len(candidates), (r0, c0, r1, c1))
        candidates.append(Candidate((r0, c0, r1, c1), crop, float(score), (float(x), float(y)), i))
    return candidates, calls
