"""Writing label images as TIFF files: ImageJ or OME, plain or tiled, atomically.

One concept: :func:`write_labels` writes a label image (``(..., Y, X)``, integer object ids,
0 background) under its final name only once complete
(:func:`~napari_edgesam.workflows.tiff_io.write_tiff_atomic`), with the calibration of the
image it was made from (:func:`~napari_edgesam.workflows.calibration.physical_sizes`), in
the format that can hold it:

- ImageJ hyperstack when the input was an ImageJ TIFF and the ids fit ``uint16`` (ImageJ
  cannot hold ``uint32``), else OME-TIFF;
- the whole array at once when it is small (:data:`IN_MEMORY_LABELS_BYTES`), page by page
  (one ``(Y, X)`` slice in memory at a time) from a memory-mapped array, and tile by tile
  (:data:`OUTPUT_TILE` pixels square, an OME-TIFF: ImageJ hyperstacks cannot be tiled) when
  one slice alone is larger than that bound.

Used by batch; segment and propagate may use it for the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import physical_sizes
from .tiff_io import TiffMetadata, write_tiff_atomic

__all__ = ["IN_MEMORY_LABELS_BYTES", "OUTPUT_TILE", "write_labels"]

#: Label arrays (and single slices) larger than this are written page by page (and tile by
#: tile), never converted whole in memory.
IN_MEMORY_LABELS_BYTES = 256 * 2**20
#: Tile side of label TIFFs whose slices are larger than ``IN_MEMORY_LABELS_BYTES``.
OUTPUT_TILE = 1024


def _padded(block: np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    """``block`` as ``dtype`` in the top-left corner of a ``size`` x ``size`` tile of 0."""
    tile = np.zeros((size, size), dtype)
    tile[:block.shape[0], :block.shape[1]] = block
    return tile


def write_labels(path, labels: np.ndarray, out_axes: str, dtype, meta: TiffMetadata) -> str:
    """Write a label image atomically, with its input's calibration.

    Parameters
    ----------
    path : path
        The label TIFF; replaced if it exists (never seen half-written: a temporary name,
        then a rename). Its folder must exist.
    labels : ndarray or numpy.memmap
        ``(..., Y, X)``: rows and columns in the input's own pixels, one leading axis per
        letter of ``out_axes`` before ``"YX"``; integer object ids (0 background), any
        integer dtype. A memory-mapped array is read one slice (or one tile) at a time.
    out_axes : str
        The array's axes, a subset of ``"TZYX"`` in that order (e.g. ``"ZYX"``,
        :attr:`~napari_edgesam.workflows.axes.AxisPlan.out_axes`).
    dtype : numpy.dtype
        The file's dtype (``uint8``, ``uint16`` or ``uint32``, large enough for the ids,
        e.g. :func:`~napari_edgesam.workflows.automatic.label_dtype`).
    meta : TiffMetadata
        The input's metadata: its resolution tags are copied, its ImageJ or OME
        calibration recorded; an ImageJ input gives an ImageJ output when possible.

    Returns
    -------
    str
        The format written: ``"imagej"`` or ``"ome"``.

    Raises
    ------
    OSError
        The file cannot be written (permissions, full disk).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    kwargs: dict = {"compression": "zlib", "software": "napari-edgesam"}
    if meta.resolution:
        kwargs["resolution"] = tuple(tuple(r) for r in meta.resolution)
        if meta.resolution_unit is not None:
            kwargs["resolutionunit"] = meta.resolution_unit
    if meta.is_imagej and dtype == np.uint16:
        fmt = "imagej"
        kwargs["imagej"] = True
        kwargs["metadata"] = {"axes": out_axes, **(meta.imagej or {})}
    else:
        fmt = "ome"
        kwargs["ome"] = True
        kwargs["metadata"] = {"axes": out_axes, **physical_sizes(meta)}
    lead = labels.shape[:-2]
    h, w = labels.shape[-2:]
    if labels.dtype == dtype and not isinstance(labels, np.memmap):
        data = labels
    elif labels.nbytes <= IN_MEMORY_LABELS_BYTES:
        data = np.asarray(labels, dtype=dtype)
    elif h * w * dtype.itemsize <= IN_MEMORY_LABELS_BYTES:  # page by page from the memmap
        data = (np.asarray(labels[i], dtype=dtype) for i in np.ndindex(*lead))
        kwargs.update(shape=labels.shape, dtype=dtype)
    else:  # slices larger than that: a tiled TIFF, written tile by tile
        t = OUTPUT_TILE
        data = (_padded(labels[i][r:r + t, c:c + t], t, dtype)
                for i in np.ndindex(*lead) for r in range(0, h, t) for c in range(0, w, t))
        kwargs.update(shape=labels.shape, dtype=dtype, tile=(t, t))
        if fmt == "imagej":  # ImageJ hyperstacks cannot be tiled
            fmt = "ome"
            kwargs.pop("imagej")
            kwargs.update(ome=True, metadata={"axes": out_axes, **physical_sizes(meta)})
    write_tiff_atomic(path, data, overwrite=True, **kwargs)
    return fmt
