"""TIFF images larger than memory, window by window.

Reading: :func:`open_lazy` opens any TIFF as a lazy array (memory-mapped when the file is
contiguous and uncompressed, else a dask array over the file's own tiles or strips through
tifffile's zarr store), so a window costs the tiles it touches, and a sparse file's missing
tiles cost nothing. Writing: :func:`write_mask_tiled` writes a mask known as a crop of a much
larger image (a :class:`~napari_edgesam.engine.mask_crop.MaskCrop`) into a compressed, tiled
TIFF tile by tile, so memory is bounded by the crop plus one tile, never the whole image.

Used by ``napari-edgesam segment`` on tiled (large) images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.errors import InvalidInputError
from .tiff_io import ImageStack, write_tiff_atomic

#: Side of the dask chunks over a zarr-read image (pixels): large enough that a chunk
#: costs little bookkeeping, small enough that one is cheap to decode (a 2048² uint8
#: chunk is 4 MiB). A 100000² image has 2,401 of them.
CHUNK = 2048

#: Side of the tiles of written masks (pixels; a multiple of 16 as TIFF requires).
WRITE_TILE = 256


@dataclass
class LazyImage:
    """An open TIFF whose pixels are read only where indexed (a context manager).

    Attributes
    ----------
    stack : ImageStack
        ``stack.data`` is a read-only memory map or a dask array (axes ``stack.axes``,
        tifffile letters); nothing has been decoded yet.
    mode : str
        ``"memmap"`` or ``"tiles"`` (chunks decoded on demand through tifffile's zarr store).
    """

    stack: ImageStack
    mode: str
    _tif: object = field(default=None, repr=False)

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (arrays already computed from it stay valid)."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None


def _resolution(page) -> tuple | None:
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
        return yres[1] / yres[0], xres[1] / xres[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None


def open_lazy(path) -> LazyImage:
    """Open the first image series of a TIFF without reading its pixels.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    LazyImage
        Close it (or use it in a ``with`` block) when done; indexing ``.stack.data`` decodes
        only the tiles or strips the index touches (e.g. ``data[r0:r1, c0:c1]`` of a
        ``(Y, X)`` image, row/column pixels).

    Raises
    ------
    InvalidInputError
        The file is missing, not a readable TIFF, or holds no pixels.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file not found: {path}")
    tif = None
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        axes, shape = series.axes, tuple(int(n) for n in series.shape)
        if 0 in shape:
            raise InvalidInputError(f"{path.name} holds no pixels (shape {shape}, axes {axes})")
        resolution = _resolution(tif.pages[0])
        data, mode = None, "tiles"
        if series.dataoffset is not None:  # contiguous and uncompressed: map it
            try:
                data = tifffile.memmap(path, series=0, mode="r")
                data = data.reshape(shape) if tuple(data.shape) != shape else data
                mode = "memmap"
            except (ValueError, TypeError, OSError):
                data = None
        if data is None:
            data = _dask_over_tiles(tif, shape)
    except InvalidInputError:
        if tif is not None:
            tif.close()
        raise
    except Exception as exc:
        if tif is not None:
            tif.close()
        raise InvalidInputError(f"cannot read {path} as TIFF: {exc}") from exc
    if mode == "memmap":  # the map keeps its own handle
        tif.close()
        tif = None
    stack = ImageStack(data=data, axes=axes, path=path, resolution=resolution)
    return LazyImage(stack=stack, mode=mode, _tif=tif)


def _dask_over_tiles(tif, shape: tuple[int, ...]):
    """A dask array over the file's zarr store (chunks of :data:`CHUNK` pixels along the
    last two image axes, one along the others)."""
    import dask.array as da
    import zarr

    z = zarr.open(tif.aszarr(series=0, level=0), mode="r")
    if tuple(z.shape) != shape:  # pragma: no cover - tifffile keeps the series' shape
        raise InvalidInputError(f"unexpected zarr shape {z.shape} for a series of {shape}")
    chunks = [1] * len(shape)
    # The image plane is the last two axes, or the two before a trailing sample axis.
    samples = len(shape) >= 3 and shape[-1] in (3, 4)
    y_axis = len(shape) - (3 if samples else 2)
    for ax in range(y_axis, len(shape)):
        chunks[ax] = CHUNK if ax in (y_axis, y_axis + 1) else shape[ax]
    return da.from_zarr(z, chunks=tuple(min(c, n) for c, n in zip(chunks, shape, strict=True)))


def write_mask_tiled(path, mask: np.ndarray, offset: tuple[int, int],
                     shape: tuple[int, int], *, overwrite: bool = False,
                     tile: int = WRITE_TILE) -> Path:
    """Write a binary mask, known as a crop of a large image, as a uint8 0/1 tiled TIFF.

    Tiles are written in order, each built from the crop where they meet it and zeros
    elsewhere, so memory stays bounded by the crop plus one tile whatever ``shape`` is; the
    file is zlib-compressed (an all-zero tile takes a few bytes). The write is atomic and
    durable (:func:`~napari_edgesam.workflows.tiff_io.write_tiff_atomic`).

    Parameters
    ----------
    path : path-like
        Output TIFF.
    mask : ndarray of bool, shape (h, w)
        The crop.
    offset : (int, int)
        ``(row, col)`` of the crop's top-left pixel in the whole image (original pixels).
    shape : (int, int)
        ``(H, W)`` of the whole image.
    overwrite : bool
        Replace an existing ``path`` (else :class:`InvalidInputError`).
    tile : int
        Tile side (a multiple of 16).

    Returns
    -------
    Path
    """
    if tile % 16:
        raise ValueError(f"tile side {tile} is not a multiple of 16")
    mask = np.asarray(mask, dtype=bool)
    r0, c0 = (int(v) for v in offset)
    h, w = (int(v) for v in shape)
    r1, c1 = r0 + mask.shape[0], c0 + mask.shape[1]
    if r0 < 0 or c0 < 0 or r1 > h or c1 > w:
        raise ValueError(f"crop rows {r0}..{r1}, cols {c0}..{c1} outside a {h} x {w} image")
    zeros = np.zeros((tile, tile), np.uint8)

    def tiles():
        for tr in range(0, h, tile):
            for tc in range(0, w, tile):
                ir0, ir1 = max(tr, r0), min(tr + tile, r1)
                ic0, ic1 = max(tc, c0), min(tc + tile, c1)
                if ir0 >= ir1 or ic0 >= ic1:
                    yield zeros
                    continue
                out = np.zeros((tile, tile), np.uint8)
                out[ir0 - tr:ir1 - tr, ic0 - tc:ic1 - tc] = mask[ir0 - r0:ir1 - r0,
                                                                 ic0 - c0:ic1 - c0]
                yield out

    return write_tiff_atomic(path, tiles(), overwrite=overwrite, shape=(h, w),
                             dtype=np.uint8, tile=(tile, tile), compression="zlib")
