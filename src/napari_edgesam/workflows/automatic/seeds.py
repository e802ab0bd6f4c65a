"""Seeds of automatic segmentation: where the decoder is prompted, one positive click each.

:func:`detect_seeds` places about one seed per object (maxima of the foreground's distance
map, plus intensity maxima), :func:`grid_seeds` a regular grid. Large slices are detected on a
block-averaged copy (:func:`detection_factor`). Seeds are ``(x, y) = (col, row)`` in pixels
of the slice (fractional values allowed), as the predictor's clicks are.
"""

from __future__ import annotations

import math

import numpy as np

from .foreground import _smooth
from .params import AutoParams

__all__ = ["detect_seeds", "detection_factor", "grid_seeds", "seed_factor"]


def detection_factor(shape: tuple[int, int], object_size: float) -> int:
    """Block size for seed detection: keeps >= 12 pixels per object diameter and no more
    than about 1024 pixels along the long side (1 for small slices).

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the slice, pixels.
    object_size : float
        Expected object diameter, pixels of the slice.

    Returns
    -------
    int
        Side of the square blocks averaged before detection (>= 1).
    """
    return int(max(1, min(object_size // 12, max(shape) // 1024)))


def seed_factor(shape: tuple[int, int], object_size: float) -> int:
    """Block size for seed detection on a whole slice: :func:`detection_factor` for slices
    that fit the model's 1024 frame; on larger slices as coarse as the object size allows
    (>= 12 pixels per object diameter), since the model itself sees them at 1024.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the slice, pixels.
    object_size : float
        Expected object diameter, pixels of the slice.

    Returns
    -------
    int
        Side of the square blocks averaged before detection (>= 1).
    """
    if max(shape) <= 1024:
        return detection_factor(shape, object_size)
    return int(max(1, object_size // 12))


def _block_signal(mapped: np.ndarray, factor: int, polarity: str) -> np.ndarray:
    """``_downscale(_signal(mapped, polarity), factor)`` bit for bit, faster for grey
    images: the block sums of the uint8 image are exact integers (so is the float32 mean's
    sum), and the one float32 division is the mean's.

    Parameters
    ----------
    mapped : ndarray of uint8, shape (H, W) or (H, W, 3)
        The model's 0..255 image (after the intensity mapping).
    factor : int
    polarity : {"bright", "dark"}

    Returns
    -------
    ndarray of float32, shape (ceil(H / factor), ceil(W / factor))
    """
    from .foreground import _signal

    if mapped.ndim != 2 or mapped.dtype != np.uint8 or factor <= 1 or factor > 256:
        return _downscale(_signal(mapped, polarity), factor)
    h, w = mapped.shape
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        mapped = np.pad(mapped, ((0, ph), (0, pw)), mode="edge")
    hh, ww = mapped.shape
    sums = mapped.reshape(hh // factor, factor, ww // factor, factor).sum(
        axis=(1, 3), dtype=np.int32)
    if polarity == "dark":
        sums = factor * factor * 255 - sums
    return sums.astype(np.float32) / np.float32(factor * factor)


def _downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (edges padded by repetition); the image itself for 1."""
    if factor <= 1:
        return image
    h, w = image.shape
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="edge")
    hh, ww = image.shape
    return image.reshape(hh // factor, factor, ww // factor, factor).mean(axis=(1, 3),
                                                                        dtype=np.float32)


def detect_seeds(signal: np.ndarray, *, object_size: float, threshold: float,
                 max_seeds: int = 2000, smoothed: np.ndarray | None = None) -> np.ndarray:
    """Seeds at object centres: shape maxima of the foreground, plus intensity maxima.

    Two detectors, merged:

    1. maxima of the Euclidean distance to the background of the foreground mask (the
       classic watershed seeds: one per round object, even for objects of different
       brightness that touch through a neck);
    2. maxima of the signal smoothed at ``object_size / 6`` inside the foreground (objects
       that touch without a neck but have brighter centres), kept only when farther than
       ``object_size / 2`` from every seed of the first kind.

    Maxima lower than ``object_size / 8`` in the distance map (specks) are ignored, and seeds
    of one kind are at least ``object_size / 4`` apart.

    Parameters
    ----------
    signal : ndarray of float, shape (H, W)
        Polarity-adjusted grey image on the 0..255 scale (objects bright).
    object_size : float
        Expected object diameter in pixels.
    threshold : float
        Foreground threshold on the signal smoothed at ``object_size / 8`` (``inf``: no
        foreground, no seeds).
    max_seeds : int
        At most this many seeds (distance-map seeds first, each kind best first).
    smoothed : ndarray, shape (H, W), optional
        The signal smoothed at ``object_size / 8`` (:func:`_smooth`), if already computed.

    Returns
    -------
    ndarray of float64, shape (N, 2)
        ``(x, y) = (col, row)`` pixel coordinates.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    if not np.isfinite(threshold):
        return np.zeros((0, 2))
    signal = np.asarray(signal, np.float32)
    if smoothed is None:
        smoothed = _smooth(signal, object_size)
    foreground = smoothed > threshold
    if not foreground.any():
        return np.zeros((0, 2))
    min_distance = max(1, int(round(object_size / 4.0)))
    fg_labels = foreground.astype(np.uint8)

    def peaks_of(image, threshold_abs):
        pk = peak_local_max(image, min_distance=min_distance, labels=fg_labels,
                            threshold_abs=threshold_abs, exclude_border=False,
                            num_peaks=int(max_seeds))
        if len(pk) == 0:
            return np.zeros((0, 2), int)
        order = np.lexsort((pk[:, 1], pk[:, 0], -image[pk[:, 0], pk[:, 1]]))
        return pk[order]

    # 1. Shape: distance to the background (padded so objects at the border count whole).
    dist = ndi.distance_transform_edt(np.pad(foreground, 1, mode="edge"))[1:-1, 1:-1]
    dist = ndi.gaussian_filter(dist.astype(np.float32), 1.0)
    shape_peaks = peaks_of(dist, max(1.0, object_size / 8.0))
    # 2. Intensity maxima far from every shape seed.
    blob = ndi.gaussian_filter(signal, max(1.0, object_size / 6.0), mode="nearest")
    int_peaks = peaks_of(blob, None)
    if len(int_peaks) and len(shape_peaks):
        d = np.hypot(int_peaks[:, None, 0] - shape_peaks[None, :, 0],
                     int_peaks[:, None, 1] - shape_peaks[None, :, 1]).min(axis=1)
        int_peaks = int_peaks[d > object_size / 2.0]
    peaks = np.concatenate([shape_peaks, int_peaks])[:max_seeds]
    return peaks[:, ::-1].astype(np.float64)


def grid_seeds(shape: tuple[int, int], spacing: float, max_seeds: int | None = None) -> np.ndarray:
    """A regular grid of seeds, centred in the image.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)``.
    spacing : float
        Step in pixels (made larger if needed to stay within ``max_seeds``).

    Returns
    -------
    ndarray of float64, shape (N, 2)
        ``(x, y) = (col, row)``, row-major order.
    """
    h, w = shape
    if max_seeds is not None:
        spacing = max(spacing, math.sqrt(h * w / max(1, max_seeds)))
    ny, nx = max(1, int(h // spacing)), max(1, int(w // spacing))
    while max_seeds is not None and nx * ny > max_seeds:
        spacing *= 1.05
        ny, nx = max(1, int(h // spacing)), max(1, int(w // spacing))
    ys = (np.arange(ny) + 0.5) * (h / ny) - 0.5
    xs = (np.arange(nx) + 0.5) * (w / nx) - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _detect(signal: np.ndarray | None, params: AutoParams, threshold: float, *,
            factor: int | None = None, small: np.ndarray | None = None,
            shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Detected seeds of one grey signal image (see :func:`detect_seeds`).

    Detection needs about 12 pixels per object and no more than the model's own 1024
    frame: big images are detected on a block-averaged copy (much faster at 4096^2).
    ``small`` (with ``factor`` and the slice's ``shape``) is that copy when already made
    (:func:`_block_signal`); ``signal`` is then not used.

    Returns
    -------
    seeds : ndarray of float64, shape (N, 2)
        ``(x, y)`` in pixels of ``signal``.
    smoothed : ndarray of float32
        The (block-averaged) signal smoothed at ``object_size / 8``.
    factor : int
        The block size used.
    """
    h, w = signal.shape if small is None else shape
    if factor is None:
        factor = detection_factor((h, w), params.object_size)
    if small is None:
        small = _downscale(signal, factor)
    smoothed = _smooth(small, params.object_size / factor)
    seeds = detect_seeds(small, object_size=params.object_size / factor, threshold=threshold,
                         max_seeds=params.max_seeds, smoothed=smoothed)
    seeds = seeds * factor + (factor - 1) / 2.0
    return np.minimum(seeds, [w - 1, h - 1]), smoothed, factor
