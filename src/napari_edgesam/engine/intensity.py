"""Intensity mapping: microscopy data -> the model's 0..255 RGB input.

EdgeSAM was trained on 8-bit RGB photographs. Microscopy data comes as uint8, uint16, other
integers or floats, grey or multichannel. :class:`IntensityMapping` is the explicit,
hashable linear map ``[low, high] -> [0, 255]`` (clipped) that turns one slice into the
``(H, W, 3)`` uint8 RGB image the model expects. Its :meth:`IntensityMapping.key` is part
of every embedding cache key.

For stacks the default limits come from robust percentiles over the *whole stack* (sampled),
never per slice, so that neighbouring slices look alike to the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "IntensityMapping",
    "as_model_image",
    "default_mapping",
    "mapping_from_percentiles",
    "stack_mapping",
    "MAPPING_MODES",
    "validate_image",
]

#: Percentiles used for robust contrast limits.
DEFAULT_PERCENTILES = (0.5, 99.8)
#: At most this many pixels are read to estimate stack-wide percentiles.
MAX_SAMPLES = 2_000_000


@dataclass(frozen=True)
class IntensityMapping:
    """A linear map of raw intensities onto the model's 0..255 scale.

    Parameters
    ----------
    low, high : tuple of float
        One value per channel of the image the mapping applies to: length 1 for grey images
        (the grey value is copied into R, G and B), length 3 for RGB. ``low`` maps to 0 and
        ``high`` to 255; values outside are clipped. NaN maps to 0.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self):
        low = tuple(float(v) for v in np.atleast_1d(self.low))
        high = tuple(float(v) for v in np.atleast_1d(self.high))
        if len(low) != len(high) or len(low) not in (1, 3):
            raise InvalidInputError(
                f"intensity limits need 1 (grey) or 3 (RGB) values each, got {low} and {high}"
            )
        if not all(np.isfinite(low) & np.isfinite(high)):
            raise InvalidInputError(f"intensity limits must be finite, got {low}..{high}")
        # A constant image gives low == high: widen so the map stays defined (all -> 0).
        high = tuple(h if h > lo else lo + 1.0 for lo, h in zip(low, high, strict=True))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_limits(cls, low: float, high: float, channels: int = 1) -> IntensityMapping:
        """The same contrast limits ``low -> 0``, ``high -> 255`` for every channel (for
        example the ``--contrast LOW,HIGH`` option or napari's contrast limits)."""
        return cls((float(low),) * channels, (float(high),) * channels)

    @classmethod
    def identity_uint8(cls, channels: int = 1) -> IntensityMapping:
        """The reference mapping for 8-bit data: 0 -> 0 and 255 -> 255, unchanged."""
        return cls((0.0,) * channels, (255.0,) * channels)

    @property
    def channels(self) -> int:
        """Number of channels (1 grey, 3 RGB) of the images this mapping applies to."""
        return len(self.low)

    def key(self) -> str:
        """A stable text identity, used in embedding cache keys."""
        lo = ",".join(f"{v:.9g}" for v in self.low)
        hi = ",".join(f"{v:.9g}" for v in self.high)
        return f"linear[{lo}|{hi}]"

    def apply(self, image: np.ndarray, *, expand: bool = True) -> np.ndarray:
        """Map one 2D slice to the model's RGB input.

        Parameters
        ----------
        image : ndarray, shape (H, W) or (H, W, 3)
            Grey (when ``channels == 1``) or RGB (when ``channels == 3``) pixels, any real dtype.
        expand : bool
            Copy grey values into three channels (default). With False a grey slice comes
            back as (H, W), which :func:`.transforms.preprocess` takes as three equal channels.

        Returns
        -------
        ndarray of uint8, shape (H, W, 3) (or (H, W) for grey with ``expand=False``)
            Values ``round(255 * clip((x - low) / (high - low), 0, 1))``; NaN gives 0.
            8- and 16-bit integers go through a lookup table computed with the same float32
            arithmetic, so the result is identical and about 3x cheaper.
        """
        image = np.asarray(image)
        expected_ndim = 2 if self.channels == 1 else 3
        if image.ndim != expected_ndim or (expected_ndim == 3 and image.shape[2] != 3):
            raise InvalidInputError(
                f"a {self.channels}-channel intensity mapping cannot apply to an image of "
                f"shape {image.shape}"
            )
        if image.dtype == np.uint8 and self.low == (0.0,) * self.channels and self.high == (
            255.0,
        ) * self.channels:
            out = image
        elif image.dtype.kind in "ui" and image.dtype.itemsize <= 2:
            codes = image.view(f"u{image.dtype.itemsize}")
            if self.channels == 1:
                out = _lookup_table(self, image.dtype.str, 0)[codes]
            else:
                out = np.empty(image.shape, np.uint8)
                for c in range(3):
                    out[..., c] = _lookup_table(self, image.dtype.str, c)[codes[..., c]]
        else:
            out = self._compute(image)
        if out.ndim == 2 and expand:
            out = np.repeat(out[:, :, None], 3, axis=2)
        return np.ascontiguousarray(out)

    def _compute(self, values: np.ndarray, channel: int | None = None) -> np.ndarray:
        """The mapping's arithmetic (float32), for any array of values."""
        low = np.asarray(self.low if channel is None else self.low[channel], dtype=np.float32)
        high = np.asarray(self.high if channel is None else self.high[channel], dtype=np.float32)
        scale = np.float32(255.0) / (high - low)
        x = (values.astype(np.float32, copy=False) - low) * scale
        # NaN -> 0, +inf -> 255, -inf -> 0; then round half up.
        np.nan_to_num(x, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(x, 0.0, 255.0, out=x)
        x += 0.5
        return x.astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _lookup_table(mapping: IntensityMapping, dtype: str, channel: int) -> np.ndarray:
    """uint8 value of every code of an 8/16-bit integer dtype, indexed by the code's
    unsigned bit pattern (so signed types index with ``image.view(unsigned)``)."""
    dt = np.dtype(dtype)
    codes = np.arange(2 ** (8 * dt.itemsize), dtype=f"u{dt.itemsize}").view(dt)
    return mapping._compute(codes, channel if mapping.channels == 3 else None)


def validate_image(image, *, rgb: bool | None = None) -> tuple[np.ndarray, bool]:
    """Check that ``image`` is one 2D slice the model can take, and say whether it is RGB.

    Parameters
    ----------
    image : array-like, shape (H, W), (H, W, 3) or (H, W, 4)
        Grey, RGB or RGBA (alpha is dropped) pixels of one slice, in (row, col) order.
    rgb : bool, optional
        Force the interpretation of a last axis of size 3 or 4. By default a last axis of size
        3 or 4 on a 3D array is colour.

    Returns
    -------
    image : ndarray, shape (H, W) or (H, W, 3)
    is_rgb : bool

    Raises
    ------
    InvalidInputError
        Wrong number of dimensions or channels, a non-numeric dtype, values beyond the
        float32 range, or a slice smaller than 2 x 2 pixels or so elongated that one side
        would vanish in the 1024 frame.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InvalidInputError(f"image dtype {image.dtype} is not a real number type")
    if image.ndim == 3 and image.shape[2] in (3, 4) and rgb is not False:
        image = image[:, :, :3]
        is_rgb = True
    elif image.ndim == 2 and not rgb:
        is_rgb = False
    elif image.ndim == 3:
        raise InvalidInputError(
            f"image of shape {image.shape}: a 2D slice must be (H, W) grey or (H, W, 3|4) "
            "RGB(A); pick one channel of multichannel data first"
        )
    else:
        raise InvalidInputError(
            f"image of shape {image.shape} ({image.ndim}D): expected one 2D slice, "
            "(H, W) grey or (H, W, 3|4) RGB(A); pick a slice of stacks first"
        )
    h, w = image.shape[:2]
    if h < 2 or w < 2:
        raise InvalidInputError(f"image of {h} x {w} pixels is too small (at least 2 x 2)")
    if np.issubdtype(image.dtype, np.floating) and image.dtype.itemsize > 4 and image.size:
        # the model's input is computed in float32: larger values would become inf/NaN
        peak = float(np.nanmax(np.abs(image))) if np.isfinite(image).any() else 0.0
        if peak > float(np.finfo(np.float32).max):
            raise InvalidInputError(
                f"image values reach {peak:.3g}, beyond the float32 range (3.4e38): rescale "
                "the image (or convert it to float32) first")
    from .transforms import resized_shape  # local: avoid an import cycle at module import

    if min(resized_shape(h, w)) < 1:
        raise InvalidInputError(
            f"image of {h} x {w} pixels is too elongated: its short side vanishes when the "
            "long side is scaled to 1024"
        )
    return image, is_rgb


def _sample(data, max_samples: int, rgb: bool) -> np.ndarray:
    """Evenly strided sample of a (..., H, W[, C]) array-like (numpy, dask, memmap)."""
    shape = data.shape
    if rgb and shape[-1] == 4:  # RGBA: alpha is not an intensity
        data = data[..., :3]
        shape = data.shape
    spatial = shape[-3:-1] if rgb else shape[-2:]
    lead = shape[: len(shape) - (3 if rgb else 2)]
    n_lead = int(np.prod(lead)) if lead else 1
    n_pix = int(np.prod(spatial))
    # Pick up to 16 slices of the leading axes, then stride within each slice.
    n_slices = min(n_lead, 16)
    per_slice = max(1, max_samples // n_slices)
    step = max(1, int(np.ceil(np.sqrt(n_pix / per_slice))))
    flat_idx = np.unique(np.linspace(0, n_lead - 1, n_slices).round().astype(int))
    parts = []
    for i in flat_idx:
        idx = np.unravel_index(i, lead) if lead else ()
        sl = data[idx] if lead else data
        part = sample_plane(sl, step)
        parts.append(part.reshape(-1, 3) if rgb else part.reshape(-1))
    return np.concatenate(parts)


#: Chunked (dask, zarr) slices are sampled from this many whole chunks at least (and at
#: most four times as many), evenly spread.
SAMPLE_CHUNKS = 16


def _chunk_edges(chunks, length: int) -> np.ndarray:
    """Chunk boundaries along one axis from zarr-style (an int) or dask-style (a tuple of
    sizes) chunks: ``[0, ..., length]``."""
    if isinstance(chunks, (int, np.integer)):
        return np.append(np.arange(0, length, int(chunks)), length)
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int)


def sample_plane(plane, step: int) -> np.ndarray:
    """About ``(H / step) * (W / step)`` pixels of one (H, W[, C]) slice.

    Arrays in memory and memmaps are strided (a memmap then touches only every
    ``step``-th row). Chunked arrays (anything with a ``chunks`` attribute: dask, zarr) read
    a whole chunk for any pixel in it, so striding would read the whole slice: they are
    sampled from :data:`SAMPLE_CHUNKS` to 4 x that many whole chunks spread evenly over
    the slice (strided inside each to the same total size).

    Parameters
    ----------
    plane : array-like, shape (H, W) or (H, W, C)
        numpy, memmap, dask, zarr or any array-like with ``shape`` and slicing.
    step : int
        Stride that sets the sample size.

    Returns
    -------
    ndarray
        ``(h, w)`` or ``(h, w, C)`` for strided samples, ``(N,)`` or ``(N, C)`` for chunks:
        callers flatten it.
    """
    h, w = plane.shape[:2]
    chunks = getattr(plane, "chunks", None)
    if chunks is None:
        return np.asarray(plane[::step, ::step])
    rows, cols = _chunk_edges(chunks[0], h), _chunk_edges(chunks[1], w)
    n_r, n_c = len(rows) - 1, len(cols) - 1
    target = -(-h // step) * -(-w // step)
    chunk_px = int(rows[1] - rows[0]) * int(cols[1] - cols[0])
    k = int(np.clip(-(-target // max(1, chunk_px)), SAMPLE_CHUNKS, 4 * SAMPLE_CHUNKS))
    if k >= n_r * n_c // 2:  # most chunks would be read anyway
        return np.asarray(plane[::step, ::step])
    g_r = min(n_r, int(np.ceil(np.sqrt(k * n_r / n_c))))
    g_c = min(n_c, -(-k // g_r))
    parts = []
    for i in np.unique(np.linspace(0, n_r - 1, g_r).round().astype(int)):
        for j in np.unique(np.linspace(0, n_c - 1, g_c).round().astype(int)):
            block = np.asarray(plane[rows[i]:rows[i + 1], cols[j]:cols[j + 1]])
            s = max(1, int(np.ceil(np.sqrt(block.shape[0] * block.shape[1] * g_r * g_c
                                           / max(1, target)))))
            sub = block[::s, ::s]
            parts.append(sub.reshape((-1,) + tuple(block.shape[2:])))
    return np.concatenate(parts)


def mapping_from_percentiles(
    data,
    *,
    rgb: bool = False,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_samples: int = MAX_SAMPLES,
) -> IntensityMapping:
    """Robust contrast limits from percentiles of a whole image or stack.

    Parameters
    ----------
    data : array-like, shape (..., H, W) or (..., H, W, 3)
        A slice or a whole stack (numpy, dask or memory-mapped); it is sampled (up to
        ``max_samples`` pixels from up to 16 evenly spaced slices), not read whole.
    rgb : bool
        Whether the last axis is RGB (limits per colour channel).
    percentiles : (float, float)
        Lower and upper percentile, in 0..100. NaN and inf are ignored.

    Returns
    -------
    IntensityMapping

    Raises
    ------
    InvalidInputError
        If the sample holds no finite value (an all-NaN image, say).
    """
    p_lo, p_hi = percentiles
    if not 0 <= p_lo < p_hi <= 100:
        raise InvalidInputError(f"percentiles must satisfy 0 <= low < high <= 100: {percentiles}")
    sample = _sample(data, max_samples, rgb).astype(np.float64, copy=False)
    cols = sample.T if rgb else sample[None]
    lows, highs = [], []
    for col in cols:
        finite = col[np.isfinite(col)]
        if finite.size == 0:
            raise InvalidInputError("the image contains no finite values (all NaN or inf)")
        lo, hi = np.percentile(finite, [p_lo, p_hi])
        lows.append(lo)
        highs.append(hi)
    return IntensityMapping(tuple(lows), tuple(highs))


def default_mapping(data, *, rgb: bool = False) -> IntensityMapping:
    """The mapping used when the caller gives none.

    uint8 data keeps the model's reference scale (identity, as in training); every other
    dtype gets stack-wide robust percentiles (:data:`DEFAULT_PERCENTILES`).

    Parameters
    ----------
    data : array-like, shape (..., H, W) or (..., H, W, 3)
        The whole stack (or slice) the mapping will be used for.
    rgb : bool
        Whether the last axis is RGB.
    """
    if np.dtype(data.dtype) == np.uint8:
        return IntensityMapping.identity_uint8(3 if rgb else 1)
    return mapping_from_percentiles(data, rgb=rgb)


#: The ways a stack's intensities become the model's 0..255 input (see :func:`stack_mapping`).
MAPPING_MODES = ("auto", "percentiles", "contrast")


def stack_mapping(stack, mode: str = "auto", *, rgb: bool = False,
                  limits: tuple[float, float] | None = None) -> IntensityMapping:
    """The one intensity-mapping policy: one mapping for every slice of a stack.

    Used by the widget, the command line, propagation and batch, so that the same stack
    gives the same model input everywhere.

    Parameters
    ----------
    stack : array-like, shape (..., H, W) or (..., H, W, 3)
        The whole stack (numpy, dask, zarr or memory-mapped; it is sampled, never read
        whole), or one slice.
    mode : {"auto", "percentiles", "contrast"}
        ``"auto"``: uint8 as is (as in training), other dtypes robust percentiles
        (:data:`DEFAULT_PERCENTILES`) of the whole stack; ``"percentiles"``: percentiles
        for every dtype; ``"contrast"``: ``limits`` (e.g. napari's contrast limits).
    rgb : bool
        Whether the last axis is RGB (3 channels).
    limits : (low, high), optional
        Needed for ``"contrast"``: raw values mapped to 0 and 255, for every channel.
    """
    if mode == "contrast":
        if limits is None:
            raise ValueError("the 'contrast' mapping needs limits (low, high)")
        return IntensityMapping.from_limits(*limits, channels=3 if rgb else 1)
    if mode == "auto":
        return default_mapping(stack, rgb=rgb)
    if mode == "percentiles":
        return mapping_from_percentiles(stack, rgb=rgb)
    raise ValueError(f"unknown mapping mode {mode!r}; one of {MAPPING_MODES}")


def mapping_for(image, is_rgb: bool, mapping: IntensityMapping | None = None) -> IntensityMapping:
    """``mapping`` checked against a validated slice, or :func:`default_mapping` of it.

    Raises
    ------
    InvalidInputError
        A grey mapping for an RGB slice or the reverse.
    """
    if mapping is None:
        return default_mapping(image, rgb=is_rgb)
    if mapping.channels != (3 if is_rgb else 1):
        raise InvalidInputError(
            f"intensity mapping has {mapping.channels} channel(s) but the image is "
            f"{'RGB' if is_rgb else 'grey'}"
        )
    return mapping


def as_model_image(
    image, mapping: IntensityMapping | None = None, *, rgb: bool | None = None,
    expand: bool = True,
) -> tuple[np.ndarray, IntensityMapping]:
    """Validate one slice and map it to the model's uint8 RGB input.

    Parameters
    ----------
    image : array-like, shape (H, W), (H, W, 3) or (H, W, 4)
    mapping : IntensityMapping, optional
        Defaults to :func:`default_mapping` of this slice alone; for stacks pass the
        stack-wide mapping so slices stay consistent.

    expand : bool
        See :meth:`IntensityMapping.apply` (False: grey slices stay (H, W)).

    Returns
    -------
    rgb_image : ndarray of uint8, shape (H, W, 3) (or (H, W), see ``expand``)
    mapping : IntensityMapping
        The mapping used.
    """
    image, is_rgb = validate_image(image, rgb=rgb)
    mapping = mapping_for(image, is_rgb, mapping)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise InvalidInputError("the image contains no finite values (all NaN or inf)")
    return mapping.apply(image, expand=expand), mapping
