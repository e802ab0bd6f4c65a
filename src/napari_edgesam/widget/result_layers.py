"""A finished batch file as layer data (no Qt; runs in a worker thread).

:func:`read_pair` reads one finished file: its input image (memory-mapped when the file
allows, contrast limits from a sample) and its label image, both with the files' physical
pixel sizes as scale, as ``[(data, kwargs, layer_type), ...]``;
:func:`~.workers.load_batch_results_job` runs it for every file and
:class:`~.batch_results.ResultsLoader` adds the layers to the viewer.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["display_range", "read_pair", "squeezed"]



def display_range(data) -> list[float]:
    """Contrast limits of an image from a strided sample of at most about a million pixels
    (what napari would compute, without reading all of a large file).

    Parameters
    ----------
    data : array-like

    Returns
    -------
    list of float
        ``[min, max]``, with ``max > min``.
    """
    import numpy as np

    shape = data.shape
    step = max(1, int(np.ceil((int(np.prod(shape, dtype=np.int64)) / 1e6) ** (1 / len(shape)))))
    sample = np.asarray(data[tuple(slice(None, None, step) for _ in shape)])
    lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample))
    return [lo, hi if hi > lo else lo + 1.0]


def _scale(axes: str, sizes: dict) -> list[float]:
    return [float(sizes.get(a, 1.0)) for a in axes]


def squeezed(data, axes: str):
    """``data`` without its axes of size 1 other than Y and X (a view, never a copy), so
    that an image and its labels line up axis for axis from the right, as napari shows
    them.

    Parameters
    ----------
    data : array-like
    axes : str
        One letter per axis of ``data``.

    Returns
    -------
    (array-like, str)
        The data and its remaining axes.
    """
    index = tuple(0 if n == 1 and a not in "YX" else slice(None)
                  for a, n in zip(axes, data.shape))
    kept = "".join(a for a, n in zip(axes, data.shape) if n != 1 or a in "YX")
    return (data[index] if any(i == 0 for i in index) else data), kept


def read_pair(res, visible: bool) -> list:
    """The layers of one finished file: the input's image layer(s) then its labels.

    Both get the physical pixel sizes as scale (the input's calibration for both, so that
    the labels lie exactly over their image). Runs in a worker thread: the input stays
    memory-mapped when the file allows, contrast limits are computed here from a sample.

    Parameters
    ----------
    res : FileResult
        A file with status ``"done"`` or ``"skipped"``.
    visible : bool
        Whether the layers are shown.

    Returns
    -------
    list of (data, dict, str)
        ``(data, kwargs, layer_type)`` per layer; the input is left out when it cannot be
        read.
    """
    import numpy as np
    import tifffile

    from napari_edgesam.workflows.calibration import pixel_sizes
    from napari_edgesam.workflows.tiff_io import LazyTiff, read_image, rgb_axis

    layers = []
    sizes = None
    stem = Path(res.input).stem
    try:
        img = read_image(res.input)
        with LazyTiff(res.input) as lazy:
            sizes = pixel_sizes(lazy.metadata)
    except Exception:  # noqa: BLE001 - the labels are still worth showing
        img = None
    if img is not None:
        data, axes = squeezed(img.data, img.axes)
        kwargs = {"name": stem, "visible": visible}
        rgb = rgb_axis(axes, data.shape)
        channel = next((i for i, a in enumerate(axes) if a in "CS" and i != rgb), None)
        if rgb is not None:
            data = np.moveaxis(data, rgb, -1)
            axes = axes[:rgb] + axes[rgb + 1:]
            kwargs["rgb"] = True
            kwargs["scale"] = _scale(axes, sizes)
        elif channel is not None:
            lead = (slice(None),) * channel
            kwargs["channel_axis"] = channel
            kwargs["name"] = [f"{stem} ch{i}" for i in range(data.shape[channel])]
            kwargs["contrast_limits"] = [display_range(data[(*lead, i)])
                                         for i in range(data.shape[channel])]
            kwargs["scale"] = _scale(axes[:channel] + axes[channel + 1:], sizes)
        else:
            kwargs["contrast_limits"] = display_range(data)
            kwargs["scale"] = _scale(axes, sizes)
        layers.append((data, kwargs, "image"))
    with tifffile.TiffFile(res.output) as tif:  # compressed: read whole (labels are small)
        series = tif.series[0]
        labels, labels_axes = squeezed(series.asarray(), series.axes)
    if sizes is None:
        with LazyTiff(res.output) as lab:
            sizes = pixel_sizes(lab.metadata)
    layers.append((labels, {"name": Path(res.output).stem, "visible": visible,
                            "scale": _scale(labels_axes, sizes)}, "labels"))
    return layers
