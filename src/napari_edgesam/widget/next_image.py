"""The next image of a folder, read and encoded ahead while the user works on the current one.

While the user annotates image ``i`` of the Folder tab, :class:`NextImage` reads image
``i + 1`` with napari's readers (:func:`read_layers`) and the embedding of the slice shown
first when it opens (:func:`first_slice`: the middle of each leading axis, where
:class:`~.dataset.FolderAnnotation` puts the sliders) is computed through the session's
:class:`~._prefetch.PrefetchController` (:meth:`NextImage.job`): only while the user is
idle, in the engine Prefetcher's low-priority thread, stopped at once by any click, slice
change or run. The embedding (and the split decoder's image part) lands in the embedding
cache under the key the session asks for after Next (same pixels, same stack-wide intensity
mapping), so after Next the encoder is not run and the first click needs only the decoder.
The pixels read are kept for the read after Next (:meth:`NextImage.take`).

Memory: at most one image beside the open one, and only one whose pixels (as napari's
reader returns them: a TIFF decoded in memory, an OME-Zarr lazily, only the chunks that the
first slice and the intensity sample touch) take at most :data:`MAX_BYTES`; larger images
are not read ahead. Not prefetched either: the "layer contrast limits" mapping (napari
chooses them when the layer is made), and images tiled by default (over 2048 pixels: their
tiles are encoded where the prompts fall).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from ._geometry import ImageGeometry

_log = logging.getLogger(__name__)

__all__ = ["MAX_BYTES", "NextImage", "NotPrefetched", "decoded_bytes", "first_slice",
           "read_layers"]

#: Images whose pixels (decoded) take more than this are not read ahead (bytes).
MAX_BYTES = 512 * 2**20


class NotPrefetched(Exception):
    """The next image is not read ahead (too large, tiled, or nothing napari shows)."""


def read_layers(path) -> list:
    """An image file or folder as napari's readers return it (any thread).

    Parameters
    ----------
    path : path-like
        A file, or a folder such as an OME-Zarr image (read by ``napari-ome-zarr``).

    Returns
    -------
    list of LayerData
        ``(data, kwargs, layer_type)`` tuples (napari's; ``data`` may be lazy, a list of
        levels for multiscale images).

    Raises
    ------
    InvalidInputError
        When no reader opens a folder (OME-Zarr needs ``napari-ome-zarr``).
    """
    from npe2 import read

    path = Path(path)
    try:
        return read([str(path)], stack=False)
    except ValueError as exc:  # no reader plugin for it: plain TIFF or numpy files still open
        if path.is_dir():
            from napari_edgesam.engine.errors import InvalidInputError

            raise InvalidInputError(
                f"{path.name}: no napari reader opens this folder (OME-Zarr images need "
                f"the napari-ome-zarr plugin: pip install napari-ome-zarr): {exc}") from exc
        if path.suffix.lower() == ".npy":
            return [(np.load(path, mmap_mode="r"), {}, "image")]
        import tifffile

        return [(tifffile.imread(path), {}, "image")]


def first_slice(geom: ImageGeometry) -> tuple[int, ...]:
    """Leading indices of the slice shown when an image of the folder opens: the middle of
    each leading axis (``(n - 1) // 2``, napari's centre step for an image opened into an
    empty viewer); ``()`` for a 2D image."""
    return tuple((int(n) - 1) // 2 for n in geom.leading_shape)


def _first_image(layers):
    """``(level-0 data, rgb)`` of the first Image layer ``viewer.add_image`` makes of
    reader output (channel 0 of a ``channel_axis`` split), without reading pixels; None
    when there is no image."""
    from napari.layers.image._image_utils import guess_multiscale, guess_rgb
    from napari.layers.utils.stack_utils import slice_from_axis

    for layer_data in layers:
        if (layer_data[2] if len(layer_data) > 2 else "image") != "image":
            continue
        data = layer_data[0]
        kwargs = dict(layer_data[1] or {}) if len(layer_data) > 1 else {}
        multiscale = kwargs.get("multiscale")
        if not multiscale:
            multiscale, data = guess_multiscale(data)
        levels = list(data) if multiscale else [data]
        axis = kwargs.get("channel_axis")
        if axis is not None:  # as napari's split_channels slices each level
            levels = [slice_from_axis(level, axis=axis, element=0) for level in levels]
        level0 = levels[0]
        rgb = kwargs.get("rgb")
        return level0, bool(guess_rgb(tuple(level0.shape)) if rgb is None else rgb)
    return None


def decoded_bytes(path) -> int:
    """The size of ``path``'s pixels once read (bytes): a TIFF's first series from its
    header, a folder (OME-Zarr, read lazily) 0, any other file its size on disk."""
    path = Path(path)
    if path.is_dir():
        return 0
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return int(tif.series[0].nbytes) if tif.series else 0
    return path.stat().st_size


def _stamp(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def _in_memory_bytes(layers) -> int:
    """Bytes of the numpy arrays in reader output (lazy arrays count 0)."""
    total = 0
    for layer_data in layers:
        data = layer_data[0]
        for level in (data if isinstance(data, (list, tuple)) else [data]):
            if isinstance(level, np.ndarray):
                total += level.nbytes
    return total


class NextImage:
    """Image ``index`` of a folder, read ahead for the prefetcher (thread-safe).

    Parameters
    ----------
    path : path-like
        The image file or folder.
    index : int
        Its position in the :class:`~.dataset.Dataset`.
    spec : tuple
        The session's mapping spec, ``("auto",)`` or ``("percentiles",)`` (see
        :meth:`~.model_input.ModelInput.mapping_spec`): the stack-wide mapping is chosen
        as the session will choose it.

    Attributes
    ----------
    failed : Exception or None
        Why reading it ahead failed or was not done (:class:`NotPrefetched`); it is then
        not tried again.
    """

    def __init__(self, path, index: int, spec: tuple):
        self.path = Path(path)
        self.index = int(index)
        self.spec = tuple(spec)
        self.failed: Exception | None = None
        self._lock = threading.Lock()
        self._layers = None
        self._slice = None
        self._mapping = None
        self._stamp = None

    @property
    def ready(self) -> bool:
        """Whether the image has been read and its first slice and mapping made."""
        return self._slice is not None

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the image's pixels in numpy arrays and its first slice
        (lazy arrays count 0)."""
        layers, sl = self._layers, self._slice
        return (_in_memory_bytes(layers) if layers else 0) + (0 if sl is None else sl.nbytes)

    def job(self) -> dict | None:
        """The prefetch job (see :func:`~._prefetch.plan_prefetch`): image and mapping are
        made lazily, in the prefetch thread. None once reading it ahead failed."""
        if self.failed is not None:
            return None
        return {"image": self._first_slice, "mapping": self._first_mapping, "rgb": None,
                "what": ("next image", self.path.name)}

    def take(self):
        """The reader output for the read after Next (GUI thread; never waits): the layer
        data when the image was read and the file has not changed since, else None. The
        pixels are handed over (this object no longer holds them)."""
        if not self._lock.acquire(blocking=False):
            return None  # being read right now: the Next read reads it again
        try:
            layers, self._layers = self._layers, None
            self._slice = self._mapping = None
            if layers is None:
                return None
            try:
                fresh = _stamp(self.path) == self._stamp
            except OSError:
                fresh = False
            return layers if fresh else None
        finally:
            self._lock.release()

    # -- in the prefetch thread -----------------------------------------------------------
    def _first_mapping(self):
        self._load()
        return self._mapping

    def _first_slice(self):
        self._load()
        return self._slice

    def _load(self) -> None:
        from napari_edgesam.engine.tiling import needs_tiling

        from .workers import choose_mapping

        with self._lock:
            if self.failed is not None:
                raise self.failed
            if self._slice is not None:
                return
            try:
                stamp = _stamp(self.path)
                size = decoded_bytes(self.path)
                if size > MAX_BYTES:
                    raise NotPrefetched(f"{self.path.name} is not read ahead: its pixels "
                                        f"take {size / 2**20:.0f} MiB (more than "
                                        f"{MAX_BYTES / 2**20:.0f} MiB)")
                layers = read_layers(self.path)
                first = _first_image(layers)
                if first is None:
                    raise NotPrefetched(f"{self.path.name} holds no image napari shows")
                level0, rgb = first
                geom = ImageGeometry(tuple(level0.shape), rgb=rgb)
                if needs_tiling(geom.spatial_shape):
                    raise NotPrefetched(f"{self.path.name} is tiled: its tiles are encoded "
                                        "where the prompts fall")
                key = geom.slice_key(first_slice(geom), 0)
                mapping = choose_mapping(level0, geom, key, self.spec, None)
                self._slice = geom.read_slice(level0, key)
                self._mapping = mapping
                self._layers, self._stamp = layers, stamp
            except Exception as exc:
                self.failed = exc
                raise
