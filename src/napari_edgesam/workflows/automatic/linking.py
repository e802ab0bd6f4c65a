"""3D linking: instances of neighbouring slices that overlap get one id.

:func:`link_ids` matches the local ids of a slice to the global ids of the slice before by
mask IoU, reading both in row blocks (memmaps of slices larger than memory);
:func:`link_labels` applies the mapping; :func:`label_dtype` picks the smallest label dtype.
Slices are ``(H, W)`` label images indexed ``(row, col)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_dtype", "link_ids", "link_labels"]


#: Row blocks of about this many pixels are what linking holds in memory at a time.
_BLOCK_PIXELS = 1 << 22


def _row_blocks(shape) -> list[slice]:
    """Row slices covering an ``(H, W)`` slice, about :data:`_BLOCK_PIXELS` pixels each."""
    h, w = int(shape[0]), int(shape[1])
    step = max(1, _BLOCK_PIXELS // max(1, w))
    return [slice(r, min(h, r + step)) for r in range(0, h, step)]


def link_ids(previous: np.ndarray | None, current: np.ndarray, *, min_iou: float,
             next_id: int, n_current: int | None = None) -> tuple[np.ndarray, int]:
    """The global id of each local id of ``current`` (see :func:`link_labels`).

    Reads both slices in row blocks, so memmaps of slices larger than memory can be linked.

    Parameters
    ----------
    previous : ndarray of int, shape (H, W), or None
        The slice before, in global ids ``< next_id``.
    current : ndarray of int, shape (H, W)
        Local ids 1..n (0 background).
    n_current : int, optional
        ``n`` (default: the maximum of ``current``).

    Returns
    -------
    mapping : ndarray of uint32, shape (n + 1,)
        ``mapping[local]`` is the global id (``mapping[0] == 0``).
    next_id : int
    """
    blocks = _row_blocks(current.shape)
    if n_current is None:
        n_current = max((int(np.max(current[b], initial=0)) for b in blocks), default=0)
    n_cur = int(n_current)
    mapping = np.zeros(n_cur + 1, dtype=np.uint32)
    if previous is not None and n_cur > 0:
        n_prev = int(next_id)
        keys, counts = [], []
        area_c = np.zeros(n_cur + 1, np.int64)
        area_p = np.zeros(n_prev + 1, np.int64)
        for b in blocks:
            prev = np.asarray(previous[b]).astype(np.int64, copy=False)
            cur = np.asarray(current[b]).astype(np.int64, copy=False)
            area_c += np.bincount(cur.ravel(), minlength=n_cur + 1)[:n_cur + 1]
            area_p += np.bincount(prev.ravel(), minlength=n_prev + 1)[:n_prev + 1]
            both = (prev > 0) & (cur > 0)
            if both.any():
                k, c = np.unique(prev[both] * (n_cur + 1) + cur[both], return_counts=True)
                keys.append(k)
                counts.append(c)
        if keys:
            k = np.concatenate(keys)
            pairs, inv = np.unique(k, return_inverse=True)
            inter = np.bincount(inv.ravel(), weights=np.concatenate(counts))
            pid, cid = pairs // (n_cur + 1), pairs % (n_cur + 1)
            ious = inter / (area_p[pid] + area_c[cid] - inter)
            order = np.lexsort((cid, pid, -ious))
            used_p: set[int] = set()
            for j in order:
                if ious[j] < min_iou:
                    break
                q, r = int(pid[j]), int(cid[j])
                if q in used_p or mapping[r]:
                    continue
                mapping[r] = q
                used_p.add(q)
    for r in range(1, n_cur + 1):
        if not mapping[r]:
            mapping[r] = next_id
            next_id += 1
    return mapping, next_id


def link_labels(previous: np.ndarray | None, current: np.ndarray, *, min_iou: float,
                next_id: int) -> tuple[np.ndarray, int]:
    """Give the instances of one slice the ids of the overlapping instances of the slice before.

    Pairs are matched one-to-one, greedily by decreasing IoU (ties by ids), when their IoU
    is at least ``min_iou``; unmatched instances get new ids ``next_id, next_id + 1, ...``
    in the order of their local ids.

    Parameters
    ----------
    previous : ndarray of int, shape (H, W), or None
        The slice before, already in global ids (None for the first slice).
    current : ndarray of int, shape (H, W)
        This slice with local ids 1..n (0 background).
    min_iou : float
    next_id : int
        First unused global id.

    Returns
    -------
    linked : ndarray of uint32, shape (H, W)
    next_id : int
        First unused global id after this slice.
    """
    current = np.asarray(current)
    mapping, next_id = link_ids(previous, current, min_iou=min_iou, next_id=next_id)
    return mapping[current], next_id


def label_dtype(n_objects: int) -> np.dtype:
    """The label dtype for ids ``0..n_objects``: uint16 when they fit, else uint32.

    Parameters
    ----------
    n_objects : int
        Largest id to store.

    Returns
    -------
    numpy.dtype
    """
    return np.dtype(np.uint16) if n_objects <= np.iinfo(np.uint16).max else np.dtype(np.uint32)
