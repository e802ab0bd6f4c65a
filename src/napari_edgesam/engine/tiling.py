"""Tiled embeddings for large images: small objects in big images segment well.

EdgeSAM sees every image at 1024 pixels on its longest side, so a 6000 x 6000 scan is shrunk
about 6x and small nuclei vanish. Here the image is covered by overlapping tiles of (by
default) 1024 x 1024 *original* pixels, each encoded at full resolution and cached like any
embedding (the cache key includes the tile geometry). Only the tiles a prompt needs are ever
read and encoded.

Frames: windows and tiles are given in original pixels as ``(row0, col0, height, width)``;
prompts are ``(x, y) = (col, row)`` in original pixels of the whole image, as everywhere in
the engine; masks come back as a crop plus its ``(row, col)`` offset in the whole image.

A click is answered from the tile whose *central region* (the tile minus its halo, except
at the image border) holds it; a box, or clicks spread over several tiles, from a window
around them. A mask that touches a window side inside the image would be cut at the seam: the
window is then re-centred on the object (a new, cached embedding) so the object is whole.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import contract
from .errors import CacheBoundError, InvalidInputError
from .intensity import IntensityMapping, default_mapping
from .predictor import Embedding, Prediction, Predictor, without_decoder_part
from .transforms import mask_bbox

__all__ = [
    "DEFAULT_HALO",
    "DEFAULT_TILE_SIZE",
    "TILING_THRESHOLD",
    "TileGrid",
    "TiledPrediction",
    "TiledPredictor",
    "Window",
    "check_cache_bound",
    "needs_tiling",
]

#: Default tile side in original pixels: the model's native resolution, so no resampling.
DEFAULT_TILE_SIZE = contract.IMAGE_SIZE
#: Default overlap kept on each inner side of a tile (objects up to ~2 x halo fit whole).
DEFAULT_HALO = 128
#: Images whose longest side exceeds this are tiled by default (a 2x shrink at most otherwise).
TILING_THRESHOLD = 2048


def needs_tiling(shape, threshold: int = TILING_THRESHOLD) -> bool:
    """Whether an image of ``shape`` ``(H, W[, C])`` is tiled by default."""
    return max(int(shape[0]), int(shape[1])) > threshold


@dataclass(frozen=True)
class Window:
    """A rectangle of the image in original pixels: rows ``row0 .. row0 + height``,
    columns ``col0 .. col0 + width`` (half-open)."""

    row0: int
    col0: int
    height: int
    width: int

    @property
    def row1(self) -> int:
        """One past the window's last row (whole-image pixels)."""
        return self.row0 + self.height

    @property
    def col1(self) -> int:
        """One past the window's last column (whole-image pixels)."""
        return self.col0 + self.width

    def key(self) -> str:
        """Tile geometry, for embedding cache keys."""
        return f"window[{self.row0},{self.col0},{self.height},{self.width}]"

    def contains_xy(self, x: float, y: float) -> bool:
        """Whether the point ``(x, y) = (col, row)`` (original pixels) lies inside."""
        return self.col0 - 0.5 <= x <= self.col1 - 0.5 and self.row0 - 0.5 <= y <= self.row1 - 0.5


def _starts(length: int, tile: int, halo: int) -> list[int]:
    """Evenly spread tile starts along one axis so that central regions cover it."""
    if length <= tile:
        return [0]
    stride = tile - 2 * halo
    if stride <= 0:
        raise InvalidInputError(f"halo {halo} is too large for tile size {tile}")
    n = 1 + math.ceil((length - tile) / stride)
    return [int(round(v)) for v in np.linspace(0, length - tile, n)]


class TileGrid:
    """Overlapping tiles covering an image.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)`` in original pixels.
    tile_size : int, optional
        Tile side in original pixels (default :data:`DEFAULT_TILE_SIZE`, or the image side
        when smaller).
    halo : int, optional
        Overlap on each inner side (default :data:`DEFAULT_HALO`, at most a quarter tile).
    """

    def __init__(self, image_shape, tile_size: int | None = None, halo: int | None = None):
        self.height, self.width = int(image_shape[0]), int(image_shape[1])
        self.tile_size = int(tile_size or DEFAULT_TILE_SIZE)
        if self.tile_size < 64:
            raise InvalidInputError(f"tile size {self.tile_size} is too small (at least 64)")
        self.halo = int(DEFAULT_HALO if halo is None else halo)
        self.halo = max(0, min(self.halo, self.tile_size // 4))
        th, tw = min(self.tile_size, self.height), min(self.tile_size, self.width)
        self.row_starts = _starts(self.height, th, self.halo)
        self.col_starts = _starts(self.width, tw, self.halo)
        self.tiles = [Window(r, c, th, tw) for r in self.row_starts for c in self.col_starts]

    def __len__(self) -> int:
        return len(self.tiles)

    def central(self, tile: Window) -> Window:
        """The tile minus its halo on sides that are not at the image border."""
        top = 0 if tile.row0 == 0 else self.halo
        left = 0 if tile.col0 == 0 else self.halo
        bottom = 0 if tile.row1 >= self.height else self.halo
        right = 0 if tile.col1 >= self.width else self.halo
        return Window(tile.row0 + top, tile.col0 + left, tile.height - top - bottom,
                      tile.width - left - right)

    def _cuts(self, starts: list[int], size: int, length: int) -> np.ndarray:
        """Pixel edges between neighbouring tiles' owned regions along one axis: the
        midpoints between their centres (integers, so cells are whole pixels)."""
        centres = np.asarray(starts, float) + min(self.tile_size, length) / 2.0
        return np.floor((centres[:-1] + centres[1:]) / 2.0).astype(int)

    def tile_indices(self, xy) -> np.ndarray:
        """Index into :attr:`tiles` of the tile that *owns* each point.

        Every pixel is owned by exactly one tile: the one whose centre is nearest (ties to the
        earlier tile). The owned region lies inside the tile's central region, so a point is
        always answered from a tile that sees at least ``halo`` pixels around it.

        Parameters
        ----------
        xy : array-like, shape (N, 2)
            ``(x, y) = (col, row)`` in original pixels.

        Returns
        -------
        ndarray of int, shape (N,)
        """
        xy = np.asarray(xy, float).reshape(-1, 2)
        rows = np.floor(xy[:, 1] + 0.5).astype(int)
        cols = np.floor(xy[:, 0] + 0.5).astype(int)
        ri = np.searchsorted(self._cuts(self.row_starts, self.tile_size, self.height), rows,
                             side="right")
        ci = np.searchsorted(self._cuts(self.col_starts, self.tile_size, self.width), cols,
                             side="right")
        return ri * len(self.col_starts) + ci

    def owned(self, tile: Window) -> Window:
        """The pixels that ``tile`` owns (see :meth:`tile_indices`); the owned regions of
        all tiles partition the image."""
        k = self.tiles.index(tile)
        i, j = divmod(k, len(self.col_starts))
        rcuts = [0, *self._cuts(self.row_starts, self.tile_size, self.height), self.height]
        ccuts = [0, *self._cuts(self.col_starts, self.tile_size, self.width), self.width]
        return Window(int(rcuts[i]), int(ccuts[j]), int(rcuts[i + 1] - rcuts[i]),
                      int(ccuts[j + 1] - ccuts[j]))

    def tile_for_point(self, x: float, y: float) -> Window:
        """The tile that owns ``(x, y)`` (see :meth:`tile_indices`): its central region
        holds the point and, of those tiles, its centre is nearest."""
        w = self.width
        h = self.height
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise InvalidInputError(f"point ({x}, {y}) is outside the {w} x {h} image")
        return self.tiles[int(self.tile_indices([(x, y)])[0])]

    def cache_bytes(self, itemsize: int = 4) -> int:
        """Bytes that the embeddings of all tiles take in a cache storing ``itemsize``-byte
        floats (4: the disk cache stores float32 embeddings exactly)."""
        return len(self.tiles) * int(np.prod(contract.EMBEDDING_SHAPE)) * int(itemsize)

    def tiles_by_distance(self, x: float, y: float) -> list[Window]:
        """All tiles, nearest centre to ``(x, y)`` first (order for background encoding)."""
        return sorted(self.tiles, key=lambda t: (t.col0 + t.width / 2 - x) ** 2
                      + (t.row0 + t.height / 2 - y) ** 2)

    def window_around(self, row0: float, col0: float, row1: float, col1: float,
                      margin: int | None = None) -> Window:
        """A window holding the rectangle (original pixels, half-open) plus ``margin``,
        at least one tile in size where the image allows, clipped to the image. Larger
        rectangles give larger windows (encoded downscaled)."""
        margin = self.halo if margin is None else margin
        h = max(self.tile_size, int(math.ceil(row1 - row0)) + 2 * margin)
        w = max(self.tile_size, int(math.ceil(col1 - col0)) + 2 * margin)
        h, w = min(h, self.height), min(w, self.width)
        cy, cx = (row0 + row1) / 2, (col0 + col1) / 2
        r = int(round(min(max(cy - h / 2, 0), self.height - h)))
        c = int(round(min(max(cx - w / 2, 0), self.width - w)))
        return Window(r, c, h, w)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def check_cache_bound(grid: TileGrid, cache) -> None:
    """Refuse an image whose tile embeddings cannot all be kept by the disk cache.

    An image larger than memory is fine (it is read window by window), but every tile's
    embedding is meant to be computed once and then found in the cache. When they cannot
    all fit under the disk cache's bound, the cache would evict tiles the user comes back
    to and re-encode them again and again; that is refused up front with a message saying
    what to change.

    Parameters
    ----------
    grid : TileGrid
    cache : EmbeddingCache or None
        Nothing is checked without a cache or with a memory-only one.

    Raises
    ------
    CacheBoundError
    """
    if cache is None or getattr(cache, "disk_dir", None) is None:
        return
    bound = int(getattr(cache, "disk_bytes", 0) or 0)
    if bound <= 0:
        return
    dtype = getattr(cache, "disk_dtype", None)
    need = grid.cache_bytes(np.dtype(dtype).itemsize if dtype is not None else 4)
    if need <= bound:
        return
    from . import paths

    raise CacheBoundError(
        f"this {grid.width} x {grid.height} image needs {len(grid.tiles)} tiles of "
        f"{grid.tile_size} px, whose embeddings take {_size(need)} in the disk cache: more "
        f"than its bound of {_size(bound)}. Raise \"cache_disk_bytes\" in "
        f"{paths.settings_path()} (to at least {need}), use larger tiles (fewer, each "
        "seen at lower resolution), or work on a crop of the image."
    )


@dataclass(frozen=True)
class TiledPrediction:
    """A mask predicted on a large image, kept as a crop.

    Attributes
    ----------
    mask : ndarray of bool, shape (h, w)
        The mask inside ``window`` (original pixels).
    window : Window
        Where ``mask`` lies in the whole image.
    score : float
        Stability score of the chosen mask.
    prediction : Prediction
        The underlying prediction in the window's frame.
    image_shape : (int, int)
        ``(H, W)`` of the whole image.
    """

    mask: np.ndarray
    window: Window
    score: float
    prediction: Prediction
    image_shape: tuple[int, int]

    @property
    def offset(self) -> tuple[int, int]:
        """``(row, col)`` of the crop's top-left pixel in the whole image."""
        return self.window.row0, self.window.col0

    @property
    def area(self) -> int:
        """Number of pixels in the mask."""
        return int(np.count_nonzero(self.mask))

    def full_mask(self) -> np.ndarray:
        """The mask in the whole image's frame, ``(H, W)`` bool (allocates H x W bytes)."""
        out = np.zeros(self.image_shape, dtype=bool)
        w = self.window
        out[w.row0:w.row1, w.col0:w.col1] = self.mask
        return out

    def bbox(self) -> tuple[int, int, int, int] | None:
        """``(row0, col0, row1, col1)`` (half-open, whole-image pixels) of the mask, or None."""
        bb = mask_bbox(self.mask)
        if bb is None:
            return None
        w = self.window
        return bb[0] + w.row0, bb[1] + w.col0, bb[2] + w.row0, bb[3] + w.col0


class TiledPredictor:
    """Prompted prediction on an image too large to see at 1024 pixels, tile by tile.

    Parameters
    ----------
    predictor : Predictor
        Its model and embedding cache are used for every tile.
    image : array-like, shape (H, W) or (H, W, 3|4)
        The whole slice, original frame. numpy, memory-mapped, dask or zarr: only the
        windows that prompts need are read (``np.asarray(image[r0:r1, c0:c1])``).
    mapping : IntensityMapping, optional
        One mapping for all tiles (default: robust percentiles sampled over the whole image,
        or the identity for uint8), so tiles look alike to the model.
    tile_size, halo : int, optional
        See :class:`TileGrid`.
    rgb : bool, optional
        Whether a last axis of size 3/4 is colour (default: yes).
    max_recentre : int
        How often a window may be re-centred on an object that touches its inner side
        (each costs one more encoder run; 0 disables seam handling).
    check_bound : bool
        Refuse an image whose tile embeddings would not all fit under the disk cache's
        bound (default). Pass False for one-shot use that encodes only the windows a few
        prompts need (``napari-edgesam segment``), where the whole grid never is.

    Raises
    ------
    CacheBoundError
        With ``check_bound``, the embeddings of all tiles would not fit under the disk
        cache's bound (see :func:`check_cache_bound`).
    """

    #: Window embeddings kept here (4 MiB each); older ones come back through the cache.
    MEMO_WINDOWS = 16

    def __init__(self, predictor: Predictor, image, mapping: IntensityMapping | None = None,
                 *, tile_size: int | None = None, halo: int | None = None,
                 rgb: bool | None = None, max_recentre: int = 2, check_bound: bool = True):
        shape = tuple(image.shape)
        if len(shape) not in (2, 3):
            raise InvalidInputError(f"image of shape {shape}: expected (H, W) or (H, W, 3|4)")
        self.rgb = len(shape) == 3 and shape[2] in (3, 4) and rgb is not False
        if len(shape) == 3 and not self.rgb:
            raise InvalidInputError(f"image of shape {shape}: pick one channel first")
        self.predictor = predictor
        self.max_recentre = int(max_recentre)
        self.image = image
        self.image_shape = (int(shape[0]), int(shape[1]))
        if min(self.image_shape) < 2:  # say it of the image, not of one of its tiles
            h, w = self.image_shape
            raise InvalidInputError(f"image of {h} x {w} pixels is too small (at least 2 x 2)")
        self.grid = TileGrid(self.image_shape, tile_size, halo)
        if check_bound:
            check_cache_bound(self.grid, getattr(predictor, "cache", None))
        self.mapping = mapping if mapping is not None else self._default_mapping()
        self._embeddings: OrderedDict[Window, Embedding] = OrderedDict()
        #: Windows whose embedding this object used so far (in order).
        self.windows: list[Window] = []
        #: Of those, the windows the encoder really ran for (not found in the cache).
        self.encoded: list[Window] = []

    def _default_mapping(self) -> IntensityMapping:
        data = self.image
        if self.rgb and data.shape[2] == 4:
            data = data[:, :, :3]
        return default_mapping(data, rgb=self.rgb)

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window``, shape (h, w) or (h, w, 3)."""
        data = self.image[window.row0:window.row1, window.col0:window.col1]
        data = np.asarray(data)
        if self.rgb:
            data = data[:, :, :3]
        return data

    def embedding(self, window: Window, **kwargs) -> Embedding:
        """Embedding of one window (memoised here, and through the predictor's cache).

        With a split decoder the window's decoder image part comes with it (see
        :meth:`.predictor.Predictor.with_decoder_part`); the memo keeps embeddings without
        theirs (4 MiB each, not 14), a memo hit takes it from the cache's store of parts.
        """
        emb = self._embeddings.get(window)
        if emb is not None:
            self._embeddings.move_to_end(window)
            attach = getattr(self.predictor, "with_decoder_part", None)
            if attach is not None:
                emb = attach(emb, run_options=kwargs.get("run_options"))
        else:
            emb = self.predictor.embed(self.read(window), self.mapping, rgb=self.rgb,
                                       tile=window.key(), **kwargs)
            self._embeddings[window] = without_decoder_part(emb)
            while len(self._embeddings) > self.MEMO_WINDOWS:  # the rest live in the cache
                self._embeddings.popitem(last=False)
            self.windows.append(window)
            if not emb.cached:
                self.encoded.append(window)
        return emb

    def windows_for(self, points=None, box=None) -> Window:
        """The window that answers a prompt (see the module docstring)."""
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, float).reshape(-1, 2)
        h, w = self.image_shape
        for x, y in pts:
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                raise InvalidInputError(
                    f"point (x={x:g}, y={y:g}) lies outside the {w} x {h} (width x height) image"
                )
        if box is None and len(pts):
            tile = self.grid.tile_for_point(*pts[0])
            central = self.grid.central(tile)
            if all(central.contains_xy(x, y) for x, y in pts):
                return tile
        rects = [(y, x, y + 1, x + 1) for x, y in pts]
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            rects.append((y0, x0, y1 + 1, x1 + 1))
        if not rects:
            raise InvalidInputError("no prompt: give at least one point or a box")
        r0 = min(r[0] for r in rects)
        c0 = min(r[1] for r in rects)
        r1 = max(r[2] for r in rects)
        c1 = max(r[3] for r in rects)
        return self.grid.window_around(r0, c0, r1, c1)

    #: A :class:`~.slice_predictor.SlicePredictor` answering from tiles.
    tiled = True

    def predict_slice(self, points=None, labels=None, box=None, *, run_options=None):
        """:meth:`predict` as a :class:`~.slice_predictor.SlicePrediction` (the
        :class:`~.slice_predictor.SlicePredictor` interface): the mask as a crop of the
        whole image, and the window that answered."""
        from .slice_predictor import SlicePrediction
        from .transforms import MaskCrop

        r = self.predict(points=points, labels=labels, box=box, run_options=run_options)
        w = r.window
        return SlicePrediction(MaskCrop(r.mask, w.row0, w.col0, r.image_shape),
                               float(r.score), w)

    def predict(self, points=None, labels=None, box=None, *,
                run_options=None) -> TiledPrediction:
        """Predict one mask; prompts in whole-image original pixels, ``(x, y) = (col, row)``.

        ``run_options`` (see :func:`.session.make_run_options`) is passed to every window
        encoding this needs, re-centred windows included, so the whole call can be stopped.

        Returns
        -------
        TiledPrediction
            The mask as a crop of the window that produced it. Objects that reach a window's
            inner side are re-predicted on a window centred on them (up to
            ``max_recentre`` times), so no object is cut at a tile seam.
        """
        window = self.windows_for(points, box)
        seen = set()
        for _ in range(self.max_recentre + 1):
            seen.add(window)
            result = self._predict_in(window, points, labels, box, run_options)
            touching = self._touches_inner_side(result, window)
            if not touching:
                break
            b = result.bbox()
            wider = self.grid.window_around(b[0], b[1], b[2], b[3])
            if wider in seen:
                break
            window = wider
        return result

    def _predict_in(self, window: Window, points, labels, box,
                    run_options=None) -> TiledPrediction:
        emb = self.embedding(window, run_options=run_options)
        shift = np.array([window.col0, window.row0], dtype=float)
        pts = None if points is None else np.asarray(points, float).reshape(-1, 2) - shift
        if pts is not None:  # clicks outside the window can't be used there; keep the rest
            inside = [window.contains_xy(x + shift[0], y + shift[1]) for x, y in pts]
            labs = (np.ones(len(pts)) if labels is None else np.asarray(labels, float))
            pts, labs = pts[inside], labs[np.asarray(inside, bool)]
        else:
            labs = None
        b = None
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            b = (max(x0 - shift[0], 0), max(y0 - shift[1], 0),
                 min(x1 - shift[0], window.width - 1), min(y1 - shift[1], window.height - 1))
        pred = self.predictor.predict(points=pts if pts is not None and len(pts) else None,
                                      labels=labs if pts is not None and len(pts) else None,
                                      box=b, embedding=emb)
        return TiledPrediction(pred.mask, window, pred.score, pred, self.image_shape)

    def _touches_inner_side(self, result: TiledPrediction, window: Window) -> bool:
        m = result.mask
        if not m.any():
            return False
        h, w = self.image_shape
        return bool(
            (window.row0 > 0 and m[0].any())
            or (window.col0 > 0 and m[:, 0].any())
            or (window.row1 < h and m[-1].any())
            or (window.col1 < w and m[:, -1].any())
        )
