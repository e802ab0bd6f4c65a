"""Reading image TIFFs with their axes, and writing label/mask TIFFs atomically.

Axes letters follow tifffile: ``Y``/``X`` spatial, ``S`` samples (RGB), ``C`` channels,
``Z`` depth, ``T`` time, ``I``/``Q`` unknown sequence axes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.errors import InvalidInputError

__all__ = ["ImageStack", "read_image", "select_plane", "write_tiff_atomic"]

#: Axes that index slices of a stack.
STACK_AXES = "ZTIQ"


@dataclass
class ImageStack:
    """An image read from disk with its axes.

    Attributes
    ----------
    data : array-like
        Pixels (numpy or memory-mapped), axes as in ``axes``.
    axes : str
        One tifffile letter per axis of ``data``, e.g. ``"ZYX"``, ``"YXS"``, ``"ZCYX"``.
    path : Path
    resolution : tuple or None
        ``(y, x)`` pixel size when the file says, else None.
    """

    data: object
    axes: str
    path: Path
    resolution: tuple | None = None


def read_image(path) -> ImageStack:
    """Open a TIFF (memory-mapped when possible) and read its axes.

    Raises
    ------
    InvalidInputError
        The file is missing or not a readable TIFF.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            shape = series.shape
            data = None
            if series.dataoffset is not None:  # contiguous, uncompressed: map, don't read
                try:
                    data = tifffile.memmap(path, mode="r")
                except (ValueError, TypeError, OSError):
                    data = None
            if data is None:
                data = series.asarray()
            resolution = None
            page = tif.pages[0]
            try:
                xres = page.tags["XResolution"].value
                yres = page.tags["YResolution"].value
                resolution = (yres[1] / yres[0], xres[1] / xres[0])
            except (KeyError, ZeroDivisionError, TypeError, IndexError):
                resolution = None
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"cannot read {path} as TIFF: {exc}") from exc
    data = np.asarray(data) if not hasattr(data, "shape") else data
    if tuple(data.shape) != tuple(shape):
        data = data.reshape(shape)
    if len(axes) != data.ndim:  # pragma: no cover - defensive
        axes = "Q" * (data.ndim - 2) + "YX"
    return ImageStack(data=data, axes=axes, path=path, resolution=resolution)


def select_plane(
    stack: ImageStack, *, slice_index: int | None = None, channel: int | None = None
) -> tuple[np.ndarray, str]:
    """Pick one 2D slice (grey or RGB) from an image by its axes.

    Parameters
    ----------
    stack : ImageStack
    slice_index : int, optional
        Index along the one stack axis (Z, T, I or Q) of size > 1.
    channel : int, optional
        Channel to use when there is a C or S axis; without it a 3- or 4-sample ``S`` axis
        (or a last ``C`` axis of size 3 or 4) is RGB.

    Returns
    -------
    plane : ndarray, shape (Y, X) or (Y, X, 3|4)
    description : str
        Which slice and channel were used, for messages.

    Raises
    ------
    InvalidInputError
        Ambiguous input: the message names the flag to use (``--slice``, ``--channel``).
    """
    data, axes = stack.data, stack.axes
    index: list = []
    out_axes = ""
    what = []
    stack_axes = [a for a, n in zip(axes, data.shape, strict=True) if a in STACK_AXES and n > 1]
    if len(stack_axes) > 1:
        raise InvalidInputError(
            f"{stack.path.name} has several stack axes ({axes}, shape {data.shape}); "
            "only one of Z, T is supported here"
        )
    for pos, (a, n) in enumerate(zip(axes, data.shape, strict=True)):
        if a in "YX":
            index.append(slice(None))
            out_axes += a
        elif a in STACK_AXES:
            if n == 1:
                index.append(0)
            elif slice_index is None:
                raise InvalidInputError(
                    f"{stack.path.name} is a stack of {n} slices along {a} (axes {axes}); "
                    f"pass --slice Z with Z in 0..{n - 1}"
                )
            elif not 0 <= slice_index < n:
                raise InvalidInputError(
                    f"--slice {slice_index} is outside 0..{n - 1} ({stack.path.name}, axes {axes})"
                )
            else:
                index.append(slice_index)
                what.append(f"{a}={slice_index}")
        elif a in "CS":
            is_last = pos == len(axes) - 1
            if channel is not None:
                if not 0 <= channel < n:
                    raise InvalidInputError(
                        f"--channel {channel} is outside 0..{n - 1} ({stack.path.name}, axes {axes})"
                    )
                index.append(channel)
                what.append(f"channel {channel}")
            elif n == 1:
                index.append(0)
            elif (a == "S" or is_last) and n in (3, 4):
                index.append(slice(None))
                out_axes += "S"
                what.append("RGB")
            else:
                raise InvalidInputError(
                    f"{stack.path.name} has {n} channels (axis {a}, axes {axes}); "
                    f"pass --channel C with C in 0..{n - 1}"
                )
        else:
            if n == 1:
                index.append(0)
            else:
                raise InvalidInputError(
                    f"{stack.path.name} has an axis {a!r} of size {n} that is not understood "
                    f"(axes {axes}, shape {data.shape})"
                )
    plane = np.asarray(data[tuple(index)])
    if out_axes.replace("S", "") == "XY":
        plane = np.swapaxes(plane, 0, 1)
    if "S" in out_axes and out_axes.index("S") != len(out_axes) - 1:
        plane = np.moveaxis(plane, out_axes.index("S"), -1)
    if plane.ndim not in (2, 3):  # pragma: no cover - defensive
        raise InvalidInputError(f"could not extract a 2D slice from axes {axes}")
    return plane, ", ".join(what) or "2D image"


def write_tiff_atomic(path, data: np.ndarray, *, overwrite: bool = False, **kwargs) -> Path:
    """Write ``data`` to a TIFF under a temporary name, then rename it into place.

    A killed process never leaves a half-written file under ``path``.

    Parameters
    ----------
    path : path
    data : ndarray
    overwrite : bool
        Refuse (InvalidInputError) to replace an existing file unless True.
    **kwargs
        Passed to :func:`tifffile.imwrite` (e.g. ``compression``, ``resolution``).
    """
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InvalidInputError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
