"""Reading image TIFFs with their axes, and writing label/mask TIFFs atomically.

Axes letters follow tifffile: ``Y``/``X`` spatial, ``S`` samples (RGB), ``C`` channels,
``Z`` depth, ``T`` time, ``I``/``Q`` unknown sequence axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.errors import InvalidInputError
from ..engine.paths import atomic_write

__all__ = [
    "ImageStack",
    "LazyTiff",
    "TiffMetadata",
    "read_image",
    "rgb_axis",
    "select_plane",
    "stack_view",
    "write_tiff_atomic",
]

#: Axes that index slices of a stack.
STACK_AXES = "ZTIQ"


def rgb_axis(axes: str, shape) -> int | None:
    """Which axis of an image holds colour (RGB or RGBA), if any.

    The one rule used by ``segment`` (:func:`select_plane`), ``propagate``
    (:func:`stack_view`) and ``batch`` (:func:`napari_edgesam.workflows.axes.plan_axes`):
    the colour axis is used whole. An explicit channel (``--channel``) is handled by those
    callers before this rule and always wins over it.

    Parameters
    ----------
    axes : str
        One tifffile letter per axis: ``Y``/``X`` spatial, ``S`` samples, ``C`` channels,
        ``Z``/``T``/``I``/``Q`` stack axes (e.g. ``"YXS"``, ``"ZYXC"``, ``"CYX"``).
    shape : sequence of int
        The image's shape, one size per letter of ``axes``.

    Returns
    -------
    int or None
        Position in ``axes`` of the colour axis: the first ``S`` axis of size 3 or 4, else
        the last axis if it is a ``C`` axis of size 3 or 4; None when there is none. Other
        ``C``/``S`` axes of size > 1 are channel axes, on which a channel must be chosen.

    Raises
    ------
    ValueError
        ``axes`` and ``shape`` differ in length.
    """
    axes = str(axes).upper()
    shape = tuple(int(n) for n in shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match shape {shape}")
    for pos, (a, n) in enumerate(zip(axes, shape, strict=True)):
        if a == "S" and n in (3, 4):
            return pos
    if axes and axes[-1] == "C" and shape[-1] in (3, 4):
        return len(axes) - 1
    return None


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
    stack: ImageStack, *, slice_index: int | None = None, channel: int | None = None,
    lazy: bool = False,
) -> tuple[np.ndarray, str]:
    """Pick one 2D slice (grey or RGB) from an image by its axes.

    Parameters
    ----------
    stack : ImageStack
    slice_index : int, optional
        Index along the one stack axis (Z, T, I or Q) of size > 1.
    channel : int, optional
        Channel to use when there is a C or S axis; without it the colour axis of
        :func:`rgb_axis` (an ``S`` axis, or a last ``C`` axis, of size 3 or 4) is RGB.
    lazy : bool
        Return the plane as a view of ``stack.data`` (a memory-map view or a dask array,
        nothing read yet) instead of an in-memory array: for images read window by window
        (:func:`~napari_edgesam.workflows.tiff_windows.open_lazy`).

    Returns
    -------
    plane : ndarray or array-like, shape (Y, X) or (Y, X, 3|4)
        Row, column (and RGB sample) axes, in the file's pixels.
    description : str
        Which slice and channel were used, for messages.

    Raises
    ------
    InvalidInputError
        Ambiguous input: the message names the flag to use (``--slice``, ``--channel``).
    """
    data, axes = stack.data, stack.axes
    if 0 in data.shape:
        raise InvalidInputError(f"{stack.path.name} holds no pixels (shape {data.shape}, "
                                f"axes {axes})")
    index: list = []
    out_axes = ""
    what = []
    stack_axes = [a for a, n in zip(axes, data.shape, strict=True) if a in STACK_AXES and n > 1]
    if len(stack_axes) > 1:
        raise InvalidInputError(
            f"{stack.path.name} has several stack axes ({axes}, shape {data.shape}); "
            "only one of Z, T is supported here"
        )
    colour = rgb_axis(axes, data.shape)
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
            if channel is not None:
                if not 0 <= channel < n:
                    raise InvalidInputError(
                        f"--channel {channel} is outside 0..{n - 1} ({stack.path.name}, "
                        f"axes {axes})"
                    )
                index.append(channel)
                what.append(f"channel {channel}")
            elif n == 1:
                index.append(0)
            elif pos == colour:
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
    plane = data[tuple(index)]
    if not lazy:
        plane = np.asarray(plane)
    if out_axes.replace("S", "") == "XY":
        plane = np.swapaxes(plane, 0, 1)
    if "S" in out_axes and out_axes.index("S") != len(out_axes) - 1:
        plane = np.moveaxis(plane, out_axes.index("S"), -1)
    if plane.ndim not in (2, 3):  # pragma: no cover - defensive
        raise InvalidInputError(f"could not extract a 2D slice from axes {axes}")
    return plane, ", ".join(what) or "2D image"


def stack_view(image, channel: int | None = None):
    """A ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)`` view of an :class:`ImageStack`
    (memory-mapped data stays mapped).

    Without ``channel`` the colour axis of :func:`rgb_axis` is kept as RGB; other channel
    axes of size > 1 need ``channel``.

    Returns
    -------
    data : array-like
        Slice axis first, then Y, X, then RGB samples if any.
    axis_letter : str
        The file's stack axis (``"Z"``, ``"T"``, ...).
    """
    data, axes = image.data, image.axes
    shape = tuple(data.shape)
    name = image.path.name
    stack_axes = [a for a, n in zip(axes, shape, strict=True) if a in STACK_AXES and n > 1]
    if not stack_axes:
        raise InvalidInputError(
            f"{name} is not a stack (axes {axes}, shape {shape}); use 'segment' for 2D images")
    if len(stack_axes) > 1:
        raise InvalidInputError(
            f"{name} has several stack axes ({axes}, shape {shape}); propagate needs one "
            "(Z or T)")
    z_letter = stack_axes[0]
    colour = rgb_axis(axes, shape)
    index, kept = [], []
    for pos, (a, n) in enumerate(zip(axes, shape, strict=True)):
        if a in "YX" or (a == z_letter and n > 1):
            index.append(slice(None))
            kept.append(a)
        elif a in "CS":
            if channel is not None:
                if not 0 <= channel < n:
                    raise InvalidInputError(
                        f"--channel {channel} is outside 0..{n - 1} ({name}, axes {axes})")
                index.append(channel)
            elif n == 1:
                index.append(0)
            elif pos == colour:
                index.append(slice(None))
                kept.append("S")
            else:
                raise InvalidInputError(
                    f"{name} has {n} channels (axis {a}, axes {axes}); pass --channel C with "
                    f"C in 0..{n - 1}")
        elif n == 1:
            index.append(0)
        else:
            raise InvalidInputError(
                f"{name} has an axis {a!r} of size {n} that is not understood (axes {axes})")
    if channel is not None and not any(a in "CS" for a in axes):
        raise InvalidInputError(f"--channel given but {name} has no channel axis (axes {axes})")
    view = data[tuple(index)]
    order = [kept.index(a) for a in (z_letter, "Y", "X")]
    if "S" in kept:
        order.append(kept.index("S"))
    if order != list(range(len(order))):
        view = np.transpose(view, order)
    return view, z_letter


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
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, **kwargs))


# ---------------------------------------------------------------------------------------
# Lazy, plane-by-plane reading and metadata (used by batch processing)
# ---------------------------------------------------------------------------------------


@dataclass
class TiffMetadata:
    """Calibration metadata of a TIFF, as far as the file says.

    Attributes
    ----------
    resolution : ((int, int), (int, int)) or None
        Raw ``XResolution`` and ``YResolution`` tags (pixels per unit as rationals
        ``(numerator, denominator)``), x first as in the TIFF tags.
    resolution_unit : int or None
        Raw ``ResolutionUnit`` tag (1 none, 2 inch, 3 centimetre).
    imagej : dict
        ImageJ calibration entries present in the file (``spacing``, ``unit``,
        ``finterval``, ``xorigin``...).
    physical_size : dict
        OME ``PhysicalSizeX/Y/Z`` (and their ``...Unit``) and ``TimeIncrement`` (and unit),
        as in the OME-XML ``Pixels`` element.
    is_imagej, is_ome : bool
    """

    resolution: tuple | None = None
    resolution_unit: int | None = None
    imagej: dict | None = None
    physical_size: dict | None = None
    is_imagej: bool = False
    is_ome: bool = False

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "resolution": [list(r) for r in self.resolution] if self.resolution else None,
            "resolution_unit": self.resolution_unit,
            "imagej": dict(self.imagej or {}),
            "physical_size": dict(self.physical_size or {}),
            "is_imagej": self.is_imagej,
            "is_ome": self.is_ome,
        }


_IMAGEJ_CALIBRATION = ("spacing", "unit", "finterval", "fps", "xorigin", "yorigin", "zorigin",
                       "yunit", "zunit", "tunit")
_OME_SIZES = ("PhysicalSizeX", "PhysicalSizeXUnit", "PhysicalSizeY", "PhysicalSizeYUnit",
              "PhysicalSizeZ", "PhysicalSizeZUnit", "TimeIncrement", "TimeIncrementUnit")


def _read_metadata(tif) -> TiffMetadata:
    page = tif.pages[0]
    resolution = unit = None
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        resolution = (tuple(int(v) for v in xr), tuple(int(v) for v in yr))
    except (KeyError, TypeError, ValueError):
        resolution = None
    try:
        unit = int(page.tags["ResolutionUnit"].value)
    except (KeyError, TypeError, ValueError):
        unit = None
    imagej = {}
    if tif.is_imagej:
        for k, v in (tif.imagej_metadata or {}).items():
            if k in _IMAGEJ_CALIBRATION and isinstance(v, (int, float, str)):
                imagej[k] = v
    physical = {}
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        except ET.ParseError:
            pixels = None
        if pixels is not None:
            for k in _OME_SIZES:
                v = pixels.get(k)
                if v is None:
                    continue
                try:
                    physical[k] = float(v) if not k.endswith("Unit") else v
                except ValueError:
                    continue
    return TiffMetadata(resolution, unit, imagej, physical, bool(tif.is_imagej),
                        bool(tif.is_ome))


class LazyTiff:
    """The first image series of a TIFF, read lazily, one plane at a time.

    Uncompressed contiguous files are memory-mapped; others are read page by page (each
    TIFF page once per request), so a stack is never loaded whole. Works for plain TIFFs,
    ImageJ hyperstacks and OME-TIFF (axes from tifffile's metadata).

    Parameters
    ----------
    path : path

    Attributes
    ----------
    axes : str
        tifffile axes letters, one per axis of :attr:`shape` (e.g. ``"TZCYX"``, ``"YXS"``).
    shape : tuple of int
    dtype : numpy.dtype
    metadata : TiffMetadata
    is_rgb : bool
        The file's photometric interpretation is RGB (an ``S`` axis holds colour).
    lazy : str
        ``"memmap"`` or ``"pages"`` (``"array"`` when the file's layout forced a whole read).

    Raises
    ------
    InvalidInputError
        The file is missing or not a readable TIFF.

    Notes
    -----
    Use as a context manager (or call :meth:`close`): the file stays open in page mode.
    """

    def __init__(self, path):
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidInputError(f"input file not found: {self.path}")
        self._tif = None
        self._memmap = None
        self._array = None
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self.axes = series.axes
            self.shape = tuple(int(n) for n in series.shape)
            self.dtype = np.dtype(series.dtype)
            self.metadata = _read_metadata(self._tif)
            page0 = self._tif.pages[0]
            self.is_rgb = int(getattr(page0, "photometric", 1)) == 2
            self._pages = None
            self._page_ndim = 0
            if series.dataoffset is not None:
                try:
                    self._memmap = tifffile.memmap(self.path, series=0, mode="r")
                    if tuple(self._memmap.shape) != self.shape:
                        self._memmap = self._memmap.reshape(self.shape)
                except (ValueError, TypeError, OSError):
                    self._memmap = None
            if self._memmap is not None:
                self.lazy = "memmap"
            else:
                pshape = tuple(series.keyframe.shape)
                pages = series.pages
                n_lead = int(np.prod(self.shape[: len(self.shape) - len(pshape)], dtype=np.int64))
                if (self.shape[len(self.shape) - len(pshape):] == pshape and len(pages) == n_lead
                        and all(pg is not None for pg in pages)):
                    self._pages = pages
                    self._page_ndim = len(pshape)
                    self.lazy = "pages"
                else:  # an unusual layout: read it whole, once
                    self._array = series.asarray().reshape(self.shape)
                    self.lazy = "array"
            # Check that the first plane really decodes (a truncated file fails here).
            if int(np.prod(self.shape, dtype=np.int64)) == 0:
                raise ValueError(f"empty image of shape {self.shape}")
        except InvalidInputError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise InvalidInputError(f"cannot read {self.path} as TIFF: {exc}") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Close the file (planes already returned stay valid)."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        self._memmap = None

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def view(self, index: tuple) -> np.ndarray:
        """Like :meth:`read`, but memory-mapped files give a read-only *view* (nothing is
        read until its pixels are used, so a slice larger than memory can be worked on
        window by window); other files give an in-memory copy."""
        if self._memmap is not None:
            index = tuple(index)
            if len(index) != self.ndim:
                raise IndexError(f"index {index} has {len(index)} entries, image has "
                                 f"{self.ndim} axes")
            return self._memmap[index]
        return self.read(index)

    def read(self, index: tuple) -> np.ndarray:
        """Read a part of the image.

        Parameters
        ----------
        index : tuple
            One entry per axis; the axes before a page's own axes must be integers (one
            page), the page axes may be integers or slices.

        Returns
        -------
        ndarray
            An in-memory copy.

        Raises
        ------
        InvalidInputError
            When the page cannot be decoded (a corrupt or truncated file).
        """
        index = tuple(index)
        if len(index) != self.ndim:
            raise IndexError(f"index {index} has {len(index)} entries, image has {self.ndim} axes")
        try:
            if self._memmap is not None:
                return np.array(self._memmap[index])
            if self._array is not None:
                return np.array(self._array[index])
            n_lead = self.ndim - self._page_ndim
            lead, rest = index[:n_lead], index[n_lead:]
            if not all(isinstance(i, (int, np.integer)) for i in lead):
                raise IndexError("leading (non-page) axes must be indexed by integers")
            flat = int(np.ravel_multi_index(tuple(int(i) for i in lead), self.shape[:n_lead])) \
                if n_lead else 0
            page = self._pages[flat].asarray()
            return np.array(page.reshape(self.shape[n_lead:])[rest])
        except IndexError:
            raise
        except Exception as exc:
            raise InvalidInputError(f"cannot decode {self.path.name} at {index}: {exc}") from exc
