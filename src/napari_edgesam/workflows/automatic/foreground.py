"""The foreground signal of automatic segmentation and its threshold.

The model's 0..255 image (after the :class:`~napari_edgesam.engine.IntensityMapping`) is
turned into a grey *signal* in which objects are bright whatever their polarity; pixels whose
smoothed signal exceeds a threshold (Otsu's by default, stack-wide for stacks) are foreground.
Seeds (:mod:`.seeds`) are looked for in the foreground, and masks (:mod:`.prompting`) must
lie mostly in it. Images are indexed ``(row, col)`` in pixels of the input slice.
"""

from __future__ import annotations

import math

import numpy as np

from ...engine.errors import InvalidInputError
from ...engine.intensity import IntensityMapping, sample_plane, stack_mapping
from .params import AutoParams

__all__ = ["foreground_threshold", "stack_statistics"]


def _signal(mapped: np.ndarray, polarity: str) -> np.ndarray:
    """Grey float32 (H, W) on 0..255 from the mapped uint8 image ((H, W) grey or (H, W, 3)
    RGB, averaged); dark objects are inverted so that objects are always bright."""
    grey = mapped.astype(np.float32) if mapped.ndim == 2 else \
        mapped.astype(np.float32).mean(axis=-1)
    if polarity == "dark":
        grey = 255.0 - grey
    return grey


def _smooth(grey: np.ndarray, object_size: float) -> np.ndarray:
    """Gaussian smoothing at ``object_size / 8`` (at least 1 pixel) of a (H, W) signal;
    the foreground is where this exceeds the threshold."""
    from scipy import ndimage as ndi

    sigma = max(1.0, object_size / 8.0)
    return ndi.gaussian_filter(grey, sigma, mode="nearest")


def foreground_threshold(signal: np.ndarray) -> float:
    """Otsu's threshold of a polarity-adjusted signal sample (0..255 scale).

    Parameters
    ----------
    signal : ndarray of float, any shape
        Values of :func:`_signal` (objects bright), e.g. strided samples of many slices.

    Returns
    -------
    float
        ``inf`` when the sample is constant (nothing is foreground).
    """
    from skimage.filters import threshold_otsu

    values = np.asarray(signal, dtype=np.float32).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0 or float(values.max()) - float(values.min()) < 1e-6:
        return float("inf")
    return float(threshold_otsu(values))


def stack_statistics(planes, *, params: AutoParams, mapping: IntensityMapping | None = None,
                     rgb: bool = False, max_planes: int = 16,
                     max_pixels_per_plane: int = 250_000) -> tuple[IntensityMapping, float]:
    """Stack-wide intensity mapping and foreground threshold, from a sample of slices.

    Parameters
    ----------
    planes : sequence of array-like
        ``planes[i]`` is slice ``i``, shape (H, W) or (H, W, 3); read lazily, only up to
        ``max_planes`` evenly spaced slices are read, each subsampled by striding.
    params : AutoParams
        ``params.threshold`` (when given) and ``params.polarity`` are honoured.
    mapping : IntensityMapping, optional
        Given mapping (e.g. from explicit contrast limits); default: identity for uint8,
        else robust percentiles over the sample (the ``"auto"`` policy of
        :func:`~napari_edgesam.engine.intensity.stack_mapping`).
    rgb : bool
        Whether slices are RGB ``(H, W, 3)``.

    Returns
    -------
    mapping : IntensityMapping
    threshold : float
        On the 0..255 scale of the polarity-adjusted signal.
    """
    n = len(planes)
    if n == 0:
        raise InvalidInputError("empty stack")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_planes)).round().astype(int))
    samples = []
    for i in idx:
        p = planes[int(i)]  # strided before it is read: lazy planes stay lazy
        h, w = p.shape[:2]
        step = max(1, int(math.ceil(math.sqrt(h * w / max_pixels_per_plane))))
        sample = sample_plane(p, step)  # strides, or whole chunks of dask/zarr slices
        # one row of pixels, (1, N) or (1, N, 3): a 2D image for the mapping and signal
        samples.append(np.ascontiguousarray(sample[..., :3].reshape(1, -1, 3) if rgb
                                            else sample.reshape(1, -1)))
    if mapping is None:  # the engine's one policy ("auto"), on the samples
        flat = [s.reshape(-1, 3) if rgb else s.reshape(-1) for s in samples]
        stacked = np.concatenate(flat)
        data = stacked.reshape(1, -1, 3) if rgb else stacked.reshape(1, -1)
        mapping = stack_mapping(data, "auto", rgb=rgb)
    if params.threshold is not None:
        return mapping, float(params.threshold)
    sig = [_signal(mapping.apply(s, expand=False), params.polarity).reshape(-1)
           for s in samples]
    return mapping, foreground_threshold(np.concatenate(sig))
