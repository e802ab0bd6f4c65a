"""Axis planning: how the axes of an input image map to the axes of its label image.

One concept: :func:`plan_axes` decides, from a file's tifffile axes letters and shape, which
axes are the spatial ``Y``/``X``, which one is ``Z`` (slices linked into 3D objects), which
is ``T`` (frames segmented independently), which is the channel (one channel taken, or RGB
colour used whole), and so the axes (a subset of ``"TZYX"``, in that order) and shape of
the label image. :class:`AxisPlan` holds the decision and reads the 2D slices it names
(:meth:`AxisPlan.plane`, :class:`Planes`).

Used by batch (:func:`napari_edgesam.workflows.batch.process_file`); segment and propagate
may use it for the same rules. The colour rule itself is
:func:`~napari_edgesam.workflows.tiff_io.rgb_axis`.

Axes letters follow tifffile: ``Y``/``X`` spatial, ``S`` samples, ``C`` channels, ``Z``
depth, ``T`` time, ``I``/``Q`` unknown sequence axes. Slices are ``(row, col)`` arrays in the
file's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.errors import InvalidInputError
from .tiff_io import LazyTiff, rgb_axis

__all__ = ["AxisPlan", "Planes", "plan_axes"]


@dataclass(frozen=True)
class AxisPlan:
    """How the axes of one file are used.

    Attributes
    ----------
    axes : str
        The file's axes (tifffile letters), one per entry of ``shape``.
    shape : tuple of int
        The file's shape.
    y, x : int
        Positions (in ``axes``) of the spatial axes: rows and columns.
    z, t : int or None
        Positions of the axis linked in 3D and of the independent frame axis.
    channel_axis : int or None
        Position of the channel/sample axis (size > 1).
    channel : int or None
        The channel taken from it (None with ``rgb``).
    rgb : bool
        The channel axis holds RGB(A) colour, used whole.
    out_axes : str
        Axes of the label image: a subset of ``"TZYX"`` in that order (``"YX"`` at least).
    out_shape : tuple of int
        Shape of the label image, one size per letter of ``out_axes``
        (``(n_t, n_z, rows, cols)`` with the T and Z entries present only when the axes are).
    """

    axes: str
    shape: tuple
    y: int
    x: int
    z: int | None
    t: int | None
    channel_axis: int | None
    channel: int | None
    rgb: bool
    out_axes: str
    out_shape: tuple

    @property
    def n_z(self) -> int:
        """Slices along Z (1 without a Z axis)."""
        return self.shape[self.z] if self.z is not None else 1

    @property
    def n_t(self) -> int:
        """Frames along T (1 without a T axis)."""
        return self.shape[self.t] if self.t is not None else 1

    def index(self, t: int, z: int) -> tuple:
        """Index into the file's array of the slice at frame ``t``, depth ``z``.

        Parameters
        ----------
        t, z : int
            Frame and depth (0 when the file has no such axis).

        Returns
        -------
        tuple
            One entry per axis of the file: integers, and ``slice(None)`` for Y, X (and the
            colour axis with ``rgb``).
        """
        idx: list = [0] * len(self.shape)
        idx[self.y] = slice(None)
        idx[self.x] = slice(None)
        if self.channel_axis is not None:
            idx[self.channel_axis] = slice(None) if self.rgb else int(self.channel)
        if self.z is not None:
            idx[self.z] = int(z)
        if self.t is not None:
            idx[self.t] = int(t)
        return tuple(idx)

    def plane(self, reader: LazyTiff, t: int, z: int) -> np.ndarray:
        """One slice as ``(Y, X)`` or ``(Y, X, 3)`` (RGB, alpha dropped): a view of a
        memory-mapped file (read window by window by tiled segmentation), else a copy.

        Parameters
        ----------
        reader : LazyTiff
            The open file this plan was made for.
        t, z : int
            Frame and depth.

        Returns
        -------
        ndarray
            ``(rows, cols)`` or ``(rows, cols, 3)``, the file's dtype.
        """
        arr = reader.view(self.index(t, z))
        kept = sorted([self.y, self.x] + ([self.channel_axis] if self.rgb else []))
        order = [kept.index(self.y), kept.index(self.x)]
        if self.rgb:
            order.append(kept.index(self.channel_axis))
        arr = np.transpose(arr, order)
        return arr[..., :3] if self.rgb else arr


class Planes:
    """The slices of one frame ``t`` (or of all frames, ``t=None``), read on access.

    A sequence for :func:`~napari_edgesam.workflows.automatic.segment_stack` and
    :func:`~napari_edgesam.workflows.automatic.stack_statistics`: ``planes[i]`` is
    :meth:`AxisPlan.plane` of depth ``i`` of frame ``t`` (with ``t=None``: frame
    ``i // n_z``, depth ``i % n_z``).

    Parameters
    ----------
    reader : LazyTiff
    plan : AxisPlan
    t : int or None
    """

    def __init__(self, reader: LazyTiff, plan: AxisPlan, t: int | None):
        self.reader, self.plan, self.t = reader, plan, t

    def __len__(self) -> int:
        return self.plan.n_z * (self.plan.n_t if self.t is None else 1)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.t is None:
            t, z = divmod(int(i), self.plan.n_z)
        else:
            t, z = self.t, int(i)
        return self.plan.plane(self.reader, t, z)


def _find_axis(spec: str, axes: str, what: str) -> int:
    s = spec.strip()
    if s.lstrip("-").isdigit():
        i = int(s)
        if not -len(axes) <= i < len(axes):
            raise InvalidInputError(f"{what} {s} is outside the file's axes {axes!r}")
        return i % len(axes)
    matches = [i for i, a in enumerate(axes) if a == s.upper()]
    if len(matches) != 1:
        raise InvalidInputError(f"{what} {s!r} is not one of the file's axes {axes!r}")
    return matches[0]


def plan_axes(axes: str, shape, *, channel: int | None = None,
              z_axis: str | None = None, t_axis: str | None = None,
              name: str = "input") -> AxisPlan:
    """Decide how each axis of a file is used.

    Rules: ``z_axis``/``t_axis`` name an axis by letter (``"Q"``, ``"T"``...) or position
    (``"0"``, ``"-3"``); by default ``Z`` is Z, ``T`` is T, and a single other stack axis of
    size > 1 (e.g. ``Q`` of a TIFF without metadata) is Z. Without ``channel``, the channel
    axis is used whole as colour when it is the colour axis of
    :func:`~napari_edgesam.workflows.tiff_io.rgb_axis` (an ``S`` axis, or a last ``C``
    axis, of size 3 or 4); any other channel axis of size > 1 needs ``channel``.

    Parameters
    ----------
    axes : str
        tifffile axes letters of the file, e.g. ``"TZCYX"``, ``"YXS"``, ``"QYX"``.
    shape : sequence of int
        The file's shape, one size per letter.
    channel : int, optional
        Channel to take from a non-colour channel axis.
    z_axis, t_axis : str, optional
        Which axis is Z and which is T (letter or position as a string).
    name : str
        The file's name, for messages.

    Returns
    -------
    AxisPlan

    Raises
    ------
    InvalidInputError
        Ambiguous or unsupported axes; the message names the option to use
        (``--channel``, ``--z-axis``, ``--t-axis``).
    """
    shape = tuple(int(n) for n in shape)
    axes = str(axes).upper()
    if len(axes) != len(shape):
        raise InvalidInputError(f"{name}: axes {axes!r} do not match shape {shape}")
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise InvalidInputError(f"{name}: axes {axes!r} lack one Y and one X axis")
    y, x = axes.index("Y"), axes.index("X")
    z = _find_axis(z_axis, axes, "--z-axis") if z_axis is not None else None
    t = _find_axis(t_axis, axes, "--t-axis") if t_axis is not None else None
    for pos, what in ((z, "--z-axis"), (t, "--t-axis")):
        if pos is not None and pos in (y, x):
            raise InvalidInputError(f"{name}: {what} cannot be a spatial axis (Y or X)")
    if z is not None and z == t:
        raise InvalidInputError(f"{name}: the same axis cannot be both Z and T")
    # Channel axis: C or S of size > 1 not claimed as Z/T.
    chans = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1 and i not in (z, t)]
    if len(chans) > 1:
        raise InvalidInputError(f"{name}: two channel axes in {axes!r} (shape {shape}) are not "
                                "supported")
    channel_axis = chans[0] if chans else None
    rgb = False
    if channel_axis is not None:
        n = shape[channel_axis]
        if channel is not None:
            if not 0 <= channel < n:
                raise InvalidInputError(f"{name}: --channel {channel} is outside 0..{n - 1} "
                                        f"(axes {axes}, shape {shape})")
        elif rgb_axis(axes, shape) == channel_axis:
            rgb = True
        else:
            raise InvalidInputError(
                f"{name} has {n} channels (axis {axes[channel_axis]}, axes {axes}, shape "
                f"{shape}); pass --channel C with C in 0..{n - 1}"
            )
    elif channel not in (None, 0):
        raise InvalidInputError(f"{name} has no channel axis (axes {axes}); --channel "
                                f"{channel} cannot be used")
    claimed = {y, x, channel_axis, z, t}
    if z is None and "Z" in axes and axes.index("Z") not in claimed:
        z = axes.index("Z")
    if t is None and "T" in axes and axes.index("T") not in claimed | {z}:
        t = axes.index("T")
    claimed = {y, x, channel_axis, z, t}
    left = [i for i, n in enumerate(shape) if i not in claimed and n > 1]
    if left and z is None:
        z = left.pop(0)
    if left:
        a = axes[left[0]]
        raise InvalidInputError(
            f"{name}: axis {a!r} (size {shape[left[0]]}, axes {axes}) is not understood; say "
            f"which axis is Z (--z-axis) and which is T (--t-axis)"
        )
    out_axes, out_shape = "", []
    if t is not None:
        out_axes += "T"
        out_shape.append(shape[t])
    if z is not None:
        out_axes += "Z"
        out_shape.append(shape[z])
    out_axes += "YX"
    out_shape += [shape[y], shape[x]]
    return AxisPlan(axes, shape, y, x, z, t, channel_axis,
                    None if rgb else (channel if channel_axis is not None else None), rgb,
                    out_axes, tuple(out_shape))
