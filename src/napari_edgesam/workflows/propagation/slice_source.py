"""Reading a stack one slice at a time: :class:`SliceSource` (any array-like ``(Z, Y, X)`` or
``(Z, Y, X, C)`` with the slice axis anywhere, one 2D slice at a time, lazily windowed for
tiles) and its stack-wide intensity mapping."""

from __future__ import annotations

import numpy as np

from ...engine.errors import InvalidInputError
from ...engine.intensity import IntensityMapping, stack_mapping

__all__ = ["SliceSource"]


class SliceSource:
    """Reads single 2D slices from a stack, lazily.

    Parameters
    ----------
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C), slice axis at ``axis``
        numpy, memmap, dask or zarr; after removing the slice axis the remaining axes must be
        ``(Y, X)`` or ``(Y, X, C)``.
    axis : int
        Position of the slice axis (Z, or T for a 2D+t movie).
    channel : int, optional
        Channel to use when there is a C axis. Without it a C axis of 3 or 4 is RGB(A).
    """

    def __init__(self, stack, axis: int = 0, channel: int | None = None):
        if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
            stack = np.asarray(stack)
        ndim = len(stack.shape)
        if ndim not in (3, 4):
            raise InvalidInputError(
                f"a stack must be (Z, Y, X) or (Z, Y, X, C); got shape {tuple(stack.shape)}"
            )
        if not -ndim <= axis < ndim:
            raise InvalidInputError(f"axis {axis} is out of range for shape {tuple(stack.shape)}")
        self.stack = stack
        self.axis = axis % ndim
        self.ndim = ndim
        rest = [n for i, n in enumerate(stack.shape) if i != self.axis]
        self.n = int(stack.shape[self.axis])
        self.height, self.width = int(rest[0]), int(rest[1])
        self.channel = channel
        self.rgb = False
        if ndim == 4:
            c = int(rest[2])
            if channel is not None:
                if not 0 <= channel < c:
                    raise InvalidInputError(f"channel {channel} is outside 0..{c - 1}")
            elif c in (3, 4):
                self.rgb = True
            elif c == 1:
                self.channel = 0
            else:
                raise InvalidInputError(
                    f"the stack has {c} channels (last axis); pick one with channel=C"
                )
        elif channel is not None:
            raise InvalidInputError("channel given but the stack has no channel axis")
        if self.n < 1:
            raise InvalidInputError("the stack has no slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return (self.n, self.height, self.width)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, z: int) -> np.ndarray:
        """Slice ``z``: ``(Y, X)`` or ``(Y, X, 3)`` for RGB(A), as numpy."""
        if not 0 <= z < self.n:
            raise IndexError(z)
        index = [slice(None)] * self.ndim
        index[self.axis] = int(z)
        plane = self.stack[tuple(index)]
        if self.ndim == 4:
            plane = plane[..., self.channel] if self.channel is not None else plane[..., :3]
        return np.asarray(plane)

    def lazy(self, z: int) -> _LazyPlane:
        """Slice ``z`` as a lazy array-like: only the windows indexed are read (for tiles)."""
        if not 0 <= z < self.n:
            raise IndexError(z)
        return _LazyPlane(self, int(z))

    def sampling_view(self):
        """The stack with the slice axis first and the channel chosen (for percentiles)."""
        data = self.stack
        if self.axis != 0:
            data = np.moveaxis(data, self.axis, 0)
        if self.ndim == 4:
            data = data[..., self.channel] if self.channel is not None else data[..., :3]
        return data

    def default_mapping(self) -> IntensityMapping:
        """One mapping for the whole stack (the ``"auto"`` policy of
        :func:`~napari_edgesam.engine.intensity.stack_mapping` on the whole stack)."""
        return stack_mapping(self.sampling_view(), "auto", rgb=self.rgb)


class _LazyPlane:
    """One slice of a :class:`SliceSource` that reads only the ``[rows, cols]`` windows it is
    indexed with: shape ``(Y, X)`` or ``(Y, X, 3)``."""

    def __init__(self, source: SliceSource, z: int):
        self.source, self.z = source, z
        self.shape = (source.height, source.width) + ((3,) if source.rgb else ())
        self.ndim = len(self.shape)
        self.dtype = source.stack.dtype

    def __getitem__(self, idx):
        rows, cols = idx[:2] if isinstance(idx, tuple) else (idx, slice(None))
        src = self.source
        index = [slice(None)] * src.ndim
        index[src.axis] = self.z
        spatial = [i for i in range(src.ndim) if i != src.axis][:2]
        index[spatial[0]], index[spatial[1]] = rows, cols
        plane = src.stack[tuple(index)]
        if src.ndim == 4:
            plane = plane[..., src.channel] if src.channel is not None else plane[..., :3]
        return np.asarray(plane)

