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
reader returns them: a TIFF, PNG, JPEG, BMP, GIF or ``.npy`` decoded in memory, an OME-Zarr
lazily, only the chunks that the first slice and the intensity sample touch) take at most
:data:`MAX_BYTES`. Both that size and the tiling rule are decided from the file's header
(:func:`image_header`: TIFF tags, Pillow's lazy ``Image.open``, the ``.npy`` header, the
OME-Zarr array metadata) *before* anything is decoded; larger or tiled images are not read
ahead, and a format whose size cannot be told without decoding is not either. Not
prefetched either: the "layer contrast limits" mapping (napari chooses them when the layer
is made), and images tiled by default (over 2048 pixels: their tiles are encoded where the
prompts fall).

Next pressed while the next image is still being read ahead: :meth:`NextImage.take` does
not wait (GUI thread); the read after Next (:func:`read_layers`, in the Folder tab's worker)
waits for that read to end and takes its pixels, so the image is read once and never held
twice. The prefetch job holds the :class:`NextImage` only weakly: once the Folder tab drops
it (Next, prefetch switched off) the prefetch thread keeps none of its pixels.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np

from ._geometry import ImageGeometry

_log = logging.getLogger(__name__)

__all__ = ["MAX_BYTES", "NextImage", "NotPrefetched", "first_slice", "image_header",
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

    Notes
    -----
    When Next came while this image was being read ahead (:meth:`NextImage.take` returned
    None), this waits for that read (in the calling thread, the Folder tab's worker) and
    returns its layer data instead of reading the file a second time.
    """
    nxt = _claim_handover()
    if nxt is not None and nxt.path == Path(path):
        layers = nxt._wait_take()
        if layers is not None:
            return layers
    del nxt
    return _read(path)


def _read(path) -> list:
    """:func:`read_layers` without the hand-over: napari's readers, now."""
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


#: Bytes per pixel of a Pillow mode once imageio has made it a numpy array (palette
#: images become RGB or RGBA: 4 counted; 32-bit integer PNGs may become uint16: 4 counted).
_PIL_BYTES = {"1": 1, "L": 1, "P": 4, "PA": 4, "LA": 2, "La": 2, "RGB": 3, "YCbCr": 3,
              "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4,
              "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Suffixes whose header Pillow reads without decoding.
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _pillow_header(path: Path) -> tuple[tuple[int, ...], int]:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)  # lazy: reads the header, decodes nothing
        except Image.DecompressionBombError as exc:
            raise NotPrefetched(f"{path.name} is not read ahead: {exc}") from exc
    with im:
        w, h = im.size
        frames = int(getattr(im, "n_frames", 1) or 1)
        per_pixel = _PIL_BYTES.get(im.mode, 4 * len(im.getbands()))
        bands = 4 if im.mode in ("P", "PA") else len(im.getbands())
    shape = ((frames,) if frames > 1 else ()) + (h, w) + ((bands,) if bands > 1 else ())
    return shape, frames * h * w * per_pixel


def _zarr_json(path: Path) -> dict | None:
    for name in ("zarr.json", ".zattrs", ".zarray"):
        f = path / name
        if f.is_file():
            with open(f, encoding="utf-8") as fh:
                return json.load(fh)
    return None


def _ome_zarr_shape(path: Path) -> tuple[int, ...] | None:
    """Level 0's shape from the OME-Zarr metadata (zarr v2 or v3), channel axis left out
    as napari-ome-zarr splits it; None when the layout is not a plain multiscale image."""
    try:
        group = _zarr_json(path) or {}
        attrs = group.get("attributes", group)
        ms = (attrs.get("ome", attrs).get("multiscales") or [None])[0]
        if not ms:
            return None
        level = path / ms["datasets"][0]["path"]
        meta = (json.loads((level / "zarr.json").read_text(encoding="utf-8"))
                if (level / "zarr.json").is_file()
                else json.loads((level / ".zarray").read_text(encoding="utf-8")))
        shape = [int(n) for n in meta["shape"]]
        axes = ms.get("axes") or []
        if len(axes) == len(shape):
            shape = [n for n, ax in zip(shape, axes, strict=True)
                     if not (isinstance(ax, dict) and (ax.get("type") == "channel"
                                                      or ax.get("name") == "c"))
                     and ax != "c"]
        return tuple(shape)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def image_header(path) -> tuple[tuple[int, ...] | None, int]:
    """Shape and decoded size of an image of the Folder tab, read from its header only
    (nothing is decoded).

    Parameters
    ----------
    path : path-like
        A TIFF (first series, as read), a PNG/JPEG/BMP/GIF (Pillow's lazy ``Image.open``:
        size, mode and frames), a ``.npy`` (its header), or an OME-Zarr folder (level 0's
        array metadata).

    Returns
    -------
    shape : tuple of int or None
        The array shape napari's reader gives (``(..., H, W[, C])``; an OME-Zarr's without
        its channel axis); None for a folder whose metadata is not a plain multiscale image.
    nbytes : int
        Bytes of the pixels once read (an upper bound for palette images); 0 for a folder
        (read lazily).

    Raises
    ------
    NotPrefetched
        A format whose size cannot be told without decoding, or a Pillow decompression bomb.
    """
    path = Path(path)
    if path.is_dir():
        return _ome_zarr_shape(path), 0
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return (), 0
            series = tif.series[0]
            return tuple(int(n) for n in series.shape), int(series.nbytes)
    if suffix == ".npy":
        arr = np.load(path, mmap_mode="r")  # the header; nothing read
        shape, nbytes = tuple(int(n) for n in arr.shape), int(arr.nbytes)
        del arr
        return shape, nbytes
    if suffix in _PIL_SUFFIXES:
        return _pillow_header(path)
    raise NotPrefetched(f"{path.name} is not read ahead: its size is not known before "
                        "decoding it")


def _check_header(path: Path) -> None:
    """Raise :class:`NotPrefetched` when ``path`` is over :data:`MAX_BYTES` decoded or
    tiled by default, from its header alone."""
    from napari.layers.image._image_utils import guess_rgb

    from napari_edgesam.engine.tiling import needs_tiling

    shape, size = image_header(path)
    if size > MAX_BYTES:
        raise NotPrefetched(f"{path.name} is not read ahead: its pixels take "
                            f"{size / 2**20:.0f} MiB (more than {MAX_BYTES / 2**20:.0f} MiB)")
    if shape is not None and len(shape) >= 2:
        geom = ImageGeometry(tuple(shape), rgb=bool(guess_rgb(tuple(shape))))
        if needs_tiling(geom.spatial_shape):
            raise NotPrefetched(f"{path.name} is tiled: its tiles are encoded where the "
                                "prompts fall")


#: The read-ahead asked for by Next while it was still reading (see :func:`read_layers`).
_handover: list = [None]
_handover_lock = threading.Lock()


def _hand_over(nxt) -> None:
    with _handover_lock:
        _handover[0] = nxt


def _claim_handover():
    with _handover_lock:
        nxt, _handover[0] = _handover[0], None
    return nxt


def _call(ref, name):
    """``getattr(ref(), name)()``, for a prefetch job that must not keep its NextImage."""
    obj = ref()
    if obj is None:
        raise NotPrefetched("the Folder tab no longer reads this image ahead")
    return getattr(obj, name)()


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
        #: Handed over (take() ran): a read that starts now must not hold pixels.
        self._taken = False
        #: Next came while it was being read: the read after Next takes the pixels.
        self._wanted = False

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
        made lazily, in the prefetch thread. The job refers to this object weakly (the
        engine's Prefetcher may keep a finished job a while: it must not keep the pixels).
        None once reading it ahead failed."""
        if self.failed is not None:
            return None
        ref = weakref.ref(self)
        return {"image": functools.partial(_call, ref, "_first_slice"),
                "mapping": functools.partial(_call, ref, "_first_mapping"), "rgb": None,
                "what": ("next image", self.path.name)}

    def take(self):
        """The reader output for the read after Next (GUI thread; never waits): the layer
        data when the image was read and the file has not changed since, else None. The
        pixels are handed over (this object no longer holds them). While the image is being
        read ahead it returns None at once and hands this object to the next
        :func:`read_layers` of the same path, which waits for that read (in its worker) and
        uses it: the image is read once, and no second copy is made beside it."""
        if not self._lock.acquire(blocking=False):
            self._wanted = True
            _hand_over(self)
            return None
        try:
            return self._hand()
        finally:
            self._lock.release()

    def _hand(self):
        """The body of :meth:`take` (``self._lock`` held)."""
        self._taken = True
        layers, self._layers = self._layers, None
        self._slice = self._mapping = None
        if layers is None:
            return None
        try:
            fresh = _stamp(self.path) == self._stamp
        except OSError:
            fresh = False
        return layers if fresh else None

    def _wait_take(self):
        """:meth:`take` after the read ahead in progress has ended (worker thread)."""
        with self._lock:
            return self._hand()

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
                if self._taken:
                    raise NotPrefetched(f"{self.path.name} was opened meanwhile")
                stamp = _stamp(self.path)
                _check_header(self.path)  # size and tiling, before anything is decoded
                layers = _read(self.path)
                held = _in_memory_bytes(layers)
                if held > MAX_BYTES:  # the header said less: drop them at once
                    del layers
                    raise NotPrefetched(f"{self.path.name} is not read ahead: its pixels "
                                        f"take {held / 2**20:.0f} MiB (more than "
                                        f"{MAX_BYTES / 2**20:.0f} MiB)")
                if self._wanted:  # Next came meanwhile: for the read after Next only
                    self._layers, self._stamp = layers, stamp
                    raise NotPrefetched(f"{self.path.name} is opened now")
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
                # the traceback kept in ``failed`` holds this frame: it must not hold pixels
                layers = first = level0 = None  # noqa: F841
                self.failed = exc
                raise
