"""Lazy views of napari layer data: read only what is indexed (no Qt, no napari, no model).

napari layers may hold numpy arrays, memory-mapped arrays, dask arrays or zarr arrays. The
engine reads slices and windows with ``np.asarray(view[rows, cols])``; a plain
``data[z]`` would read the whole slice of a zarr array at once (zarr indexes eagerly). A
:class:`SubArray` fixes some axes to an index without reading anything, so that
``SubArray(data, {0: z})[r0:r1, c0:c1]`` reads exactly one window of slice ``z``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SubArray", "stack_view"]


class SubArray:
    """``data`` with some axes fixed to one index each, read lazily.

    Parameters
    ----------
    data : array-like
        numpy, ``numpy.memmap``, dask or zarr (anything with ``shape``, ``dtype`` and
        ``__getitem__``).
    fixed : dict of int -> int
        Axis -> index. The remaining axes keep their order.

    Indexing with integers only (fewer than ``ndim`` of them) gives another, narrower
    :class:`SubArray` (still nothing read); any other index reads
    ``data[full index]`` (a numpy view for numpy data, a lazy array for dask: callers
    apply ``np.asarray``).
    """

    def __init__(self, data, fixed: dict):
        if isinstance(data, SubArray):  # flatten nested views
            base = dict(data.fixed)
            free = data.free_axes
            fixed = {free[a]: int(i) for a, i in fixed.items()}
            base.update(fixed)
            data, fixed = data.data, base
        self.data = data
        n = len(data.shape)
        self.fixed = {}
        for a, i in fixed.items():
            a = int(a) % n
            size = int(data.shape[a])
            i = int(i)
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of range for axis {a} of size {size}")
            self.fixed[a] = i % size
        self.free_axes = [a for a in range(n) if a not in self.fixed]
        self.shape = tuple(int(data.shape[a]) for a in self.free_axes)
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    @property
    def chunks(self):
        """The chunks of the free axes, for chunked data (dask, zarr) only: numpy data has
        no such attribute, so samplers can tell chunked data from arrays in memory."""
        chunks = getattr(self.data, "chunks", None)
        if chunks is None:
            raise AttributeError("chunks")
        return tuple(chunks[a] for a in self.free_axes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def __len__(self) -> int:
        return self.shape[0]

    def _expand(self, index) -> tuple:
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            k = next(j for j, i in enumerate(index) if i is Ellipsis)
            fill = self.ndim - (len(index) - 1)
            index = index[:k] + (slice(None),) * fill + index[k + 1:]
        if len(index) > self.ndim:
            raise IndexError(f"too many indices ({len(index)}) for a {self.ndim}D view")
        return index + (slice(None),) * (self.ndim - len(index))

    def __getitem__(self, index):
        raw = index if isinstance(index, tuple) else (index,)
        if raw and all(isinstance(i, (int, np.integer)) for i in raw) and len(raw) < self.ndim:
            return SubArray(self, dict(enumerate(int(i) for i in raw)))
        index = self._expand(index)
        full, it = [], iter(index)
        for a in range(len(self.data.shape)):
            full.append(self.fixed[a] if a in self.fixed else next(it))
        return self.data[tuple(full)]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self[(slice(None),) * self.ndim])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SubArray({type(self.data).__name__}{tuple(self.data.shape)}, fixed={self.fixed})"


def stack_view(data, leading_key: tuple, stack_axis: int) -> SubArray:
    """The stack through ``leading_key`` along ``stack_axis``: every leading axis except
    ``stack_axis`` fixed to its index in ``leading_key``; shape ``(Z, Y, X[, C])``."""
    fixed = {a: i for a, i in enumerate(leading_key) if a != stack_axis}
    return SubArray(data, fixed)
