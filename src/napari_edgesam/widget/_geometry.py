"""Pure numpy helpers of the napari adapter: no Qt, no napari, no model.

Conventions
-----------
- napari data coordinates are ``(..., row, col)``; the engine's points are
  ``(x, y) = (col, row)`` in the pixels of one 2D slice, and boxes ``(x0, y0, x1, y1)``.
- An image layer's *leading* axes are all axes except the last two spatial ones (and except
  the RGB axis of colour layers). One of the leading axes may be a *channel axis*: the slice
  fed to the model then takes a fixed channel, and the target Labels layer drops that axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ImageGeometry",
    "image_data",
    "commit_indices",
    "normalise_box",
    "rectangle_to_box",
]


def image_data(layer):
    """The array the panel segments for a napari Image ``layer``: its data, or the full
    resolution level of a multiscale layer (never read whole here: it may be lazy)."""
    return layer.data[0] if layer.multiscale else layer.data


@dataclass(frozen=True)
class ImageGeometry:
    """Shape bookkeeping of one image layer.

    Parameters
    ----------
    shape : tuple of int
        ``layer.data.shape`` (including the RGB axis for colour layers).
    rgb : bool
        Whether the last axis is colour (napari's ``layer.rgb``).
    channel_axis : int or None
        A leading axis holding channels (never a spatial axis), or None.
    """

    shape: tuple[int, ...]
    rgb: bool = False
    channel_axis: int | None = None

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if self.ndim < 2:
            raise ValueError(f"an image layer needs at least 2 dimensions, got shape {shape}")
        ca = self.channel_axis
        if ca is not None:
            if ca < 0:
                ca += self.ndim
            if not 0 <= ca < self.ndim - 2:
                raise ValueError(
                    f"channel axis {self.channel_axis} is not a leading axis of a "
                    f"{self.ndim}D image (spatial axes are the last two)"
                )
            object.__setattr__(self, "channel_axis", ca)

    @property
    def ndim(self) -> int:
        """Number of layer dimensions (napari's ``layer.ndim``: without the RGB axis)."""
        return len(self.shape) - (1 if self.rgb else 0)

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one slice."""
        return self.shape[self.ndim - 2], self.shape[self.ndim - 1]

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Sizes of the leading axes (channel axis included)."""
        return self.shape[: self.ndim - 2]

    @property
    def n_channels(self) -> int:
        """Size of the channel axis (1 without one)."""
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of a matching Labels layer: the image's, without RGB and channel axes."""
        return tuple(s for i, s in enumerate(self.shape[: self.ndim]) if i != self.channel_axis)

    @property
    def labels_axes(self) -> list[int]:
        """Which image axes the Labels layer keeps (to copy scale and translate)."""
        return [i for i in range(self.ndim) if i != self.channel_axis]

    def leading_index(self, data_position) -> tuple[int, ...]:
        """The leading-axis indices of a position in image data coordinates (rounded,
        clipped to the image); the channel axis keeps the position's index too."""
        pos = np.asarray(data_position, dtype=float).reshape(-1)
        if len(pos) < self.ndim:
            pos = np.concatenate([np.zeros(self.ndim - len(pos)), pos])
        pos = pos[-self.ndim:]
        out = []
        for p, n in zip(pos[: self.ndim - 2], self.leading_shape, strict=True):
            i = int(np.floor(p + 0.5)) if np.isfinite(p) else 0
            out.append(min(max(i, 0), n - 1))
        return tuple(out)

    def slice_key(self, leading: tuple[int, ...], channel: int = 0) -> tuple[int, ...]:
        """Leading indices of the slice the model sees: the channel axis set to ``channel``."""
        if self.channel_axis is None:
            return tuple(leading)
        key = list(leading)
        key[self.channel_axis] = int(channel)
        return tuple(key)

    def labels_index(self, leading: tuple[int, ...]) -> tuple[int, ...]:
        """Leading indices in the Labels layer (the channel axis dropped)."""
        return tuple(v for i, v in enumerate(leading) if i != self.channel_axis)

    def same_slice(self, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
        """Whether two leading indices name the same slice, ignoring the channel axis."""
        return self.labels_index(a) == self.labels_index(b)

    def read_slice(self, data, key: tuple[int, ...]) -> np.ndarray:
        """Read one 2D slice (``(H, W)`` or ``(H, W, 3|4)``) as a numpy array.

        Works for numpy, dask, zarr and memory-mapped arrays (only the slice is read).
        """
        sl = data[tuple(key)] if key else data
        return np.asarray(sl)

    def inside(self, row: float, col: float) -> bool:
        """Whether a data position lies on the slice (pixel edges included)."""
        h, w = self.spatial_shape
        return -0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5


def normalise_box(row_a, col_a, row_b, col_b, shape) -> tuple[float, float, float, float] | None:
    """Two opposite corners (any order, data coordinates) to an engine box.

    Parameters
    ----------
    row_a, col_a, row_b, col_b : float
        The corners in image data coordinates ``(row, col)``, in any direction.
    shape : (int, int)
        ``(H, W)`` of the slice.

    Returns
    -------
    (x0, y0, x1, y1) or None
        ``x0 <= x1`` and ``y0 <= y1``, clipped to the image (``-0.5 .. W - 0.5`` and
        ``-0.5 .. H - 0.5``); None when the box does not overlap the image or has no area.
    """
    h, w = shape
    y0, y1 = sorted((float(row_a), float(row_b)))
    x0, x1 = sorted((float(col_a), float(col_b)))
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    if x1 < -0.5 or y1 < -0.5 or x0 > w - 0.5 or y0 > h - 0.5:
        return None
    x0, x1 = (min(max(v, -0.5), w - 0.5) for v in (x0, x1))
    y0, y1 = (min(max(v, -0.5), h - 0.5) for v in (y0, y1))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def rectangle_to_box(vertices_rc: np.ndarray, shape) -> tuple[float, float, float, float] | None:
    """The axis-aligned bounding box of a rectangle's vertices (``(K, 2)`` as ``(row, col)``),
    normalised and clipped with :func:`normalise_box`."""
    v = np.asarray(vertices_rc, dtype=float).reshape(-1, 2)
    if len(v) == 0:
        return None
    (r0, c0), (r1, c1) = v.min(axis=0), v.max(axis=0)
    return normalise_box(r0, c0, r1, c1, shape)


def commit_indices(
    mask: np.ndarray,
    labels_leading: tuple[int, ...],
    existing_slice: np.ndarray | None = None,
    only_background: bool = True,
    offset: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, ...]:
    """Fancy indices into the Labels layer for the pixels of ``mask`` on one slice.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W) (or a crop, see ``offset``)
    labels_leading : tuple of int
        The slice's leading indices in the Labels layer.
    existing_slice : ndarray, same shape as ``mask``, optional
        The Labels layer's current values on that slice (needed with ``only_background``).
    only_background : bool
        Keep only pixels whose current label is 0.
    offset : (int, int)
        Row and column of ``mask[0, 0]`` in the slice (when ``mask`` and
        ``existing_slice`` are a crop, e.g. the mask's bounding box).

    Returns
    -------
    tuple of ndarray of intp
        One array per Labels axis, all of the same length.
    """
    mask = np.asarray(mask, dtype=bool)
    if only_background and existing_slice is not None:
        mask = mask & (np.asarray(existing_slice) == 0)
    rows, cols = np.nonzero(mask)
    lead = tuple(np.full(rows.shape, i, dtype=np.intp) for i in labels_leading)
    return lead + ((rows + offset[0]).astype(np.intp), (cols + offset[1]).astype(np.intp))
