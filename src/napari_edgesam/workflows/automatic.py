"""Automatic instance segmentation without clicks: seeds -> decoder per seed -> labels.

EdgeSAM's decoder takes one prompt set per call (tens of milliseconds with the published
model), so a dense point grid like segment-anything's automatic mask generator costs about a
minute per slice. The default here places *seeds by detection* instead: local maxima of the
smoothed image inside the foreground, at most one per expected object radius, so the decoder
runs about once per object. A regular grid stays available (``seeds="grid"``).

Pipeline for one 2D slice (:func:`segment_slice`):

1. Map the slice to the model's 0..255 scale (:class:`~napari_edgesam.engine.IntensityMapping`,
   stack-wide for stacks) and embed it once (:meth:`Predictor.embed`).
2. Seeds (:func:`detect_seeds` or :func:`grid_seeds`), as ``(x, y) = (column, row)`` pixels.
3. One :meth:`Predictor.predict` per seed (one positive click), all sharing the embedding.
   A mask that also covers seeds lying farther than ``0.75 * object_size`` away (probably
   other objects) is predicted once more with those seeds as negative clicks. A seed already
   covered by an accepted mask whose seed lies within that distance (a second seed of the
   same object) is skipped.
4. Per mask: keep the connected component under the seed, fill small holes, then filter by
   stability score, area and foreground fraction.
5. Overlaps (:func:`resolve_overlaps`): non-maximum suppression on mask IoU in score order,
   then painting in score order with no overlaps; a mask left with too little of itself is
   dropped. Instance ids are 1..n in painting order.

For stacks (:func:`segment_stack`) every slice is segmented in 2D and instances are linked
between neighbouring slices by mask IoU (:func:`link_labels`), streaming, so that each 3D
object carries one id. Propagation-based linking (prompting slice ``z + 1`` with slice ``z``'s
objects, :mod:`napari_edgesam.workflows.propagation`) can replace :func:`link_labels`; the
IoU linking needs nothing but the per-slice labels.

Frames: images are indexed ``(row, col)``; seeds and clicks are ``(x, y) = (col, row)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..engine.errors import CancelledError, InvalidInputError
from ..engine.intensity import (
    IntensityMapping,
    sample_plane,
    stack_mapping,
    validate_image,
)
from ..engine.tiling import needs_tiling
from ..engine.transforms import mask_bbox

__all__ = [
    "AutoParams",
    "Candidate",
    "SliceSegmentation",
    "StackSegmentation",
    "detect_seeds",
    "detection_factor",
    "foreground_threshold",
    "grid_seeds",
    "label_dtype",
    "link_ids",
    "link_labels",
    "resolve_overlaps",
    "segment_slice",
    "segment_stack",
    "stack_statistics",
]


@dataclass(frozen=True)
class AutoParams:
    """Parameters of automatic segmentation (all JSON-serialisable, see :meth:`to_dict`).

    Attributes
    ----------
    object_size : float
        Expected object diameter in pixels of the input slice. Sets the smoothing and the
        spacing of detected seeds, the default grid spacing and the default area limits.
    seeds : {"detect", "grid"}
        ``"detect"``: local maxima of the smoothed image in the foreground (about one decoder
        call per object). ``"grid"``: a regular grid of ``grid_spacing`` pixels.
    grid_spacing : float or None
        Grid step in pixels (default ``object_size / 2``).
    polarity : {"bright", "dark"}
        Objects brighter (fluorescence) or darker (bright field) than the background.
    threshold : float or None
        Foreground threshold on the model's 0..255 scale (after the intensity mapping).
        Default: Otsu's threshold, computed over the whole stack when segmenting a stack.
    min_stability : float
        Masks with a lower stability score (``count(logit > 1) / count(logit > -1)``) are
        dropped; NaN scores are always dropped.
    min_area, max_area : int or None
        Area limits in pixels; defaults ``0.1 * A`` (at least 4) and ``10 * A`` with
        ``A = pi * object_size**2 / 4``.
    min_foreground : float
        Minimum fraction of a mask's pixels that must be foreground (0 disables the check).
    nms_iou : float
        A mask whose IoU with a better-scored kept mask exceeds this is suppressed.
    min_kept_fraction : float
        When painting, a mask that keeps less than this fraction of its pixels (the rest
        being taken by better masks) is dropped.
    split_merged : bool
        Re-predict masks covering distant seeds with those seeds as negative clicks.
    seed_component : bool
        Keep only the connected component of a mask that contains its seed.
    max_seeds : int
        At most this many seeds per slice (the brightest first for detection); per tile
        when the slice is tiled.
    link_iou : float
        Stacks: minimum IoU between instances of neighbouring slices to give them one id.
    tiles : {"auto", "on", "off"}
        Segment large slices tile by tile at full resolution (``"auto"``: slices larger
        than :data:`~napari_edgesam.engine.tiling.TILING_THRESHOLD` on a side), reading
        them window by window; see :func:`segment_slice`.
    tile_size : int or None
        Tile side in pixels (default :data:`~napari_edgesam.engine.tiling.DEFAULT_TILE_SIZE`).
    """

    object_size: float = 30.0
    seeds: str = "detect"
    grid_spacing: float | None = None
    polarity: str = "bright"
    threshold: float | None = None
    min_stability: float = 0.85
    min_area: int | None = None
    max_area: int | None = None
    min_foreground: float = 0.5
    nms_iou: float = 0.5
    min_kept_fraction: float = 0.5
    split_merged: bool = True
    seed_component: bool = True
    max_seeds: int = 2000
    link_iou: float = 0.3
    tiles: str = "auto"
    tile_size: int | None = None

    def __post_init__(self):
        if not (np.isfinite(self.object_size) and self.object_size >= 2):
            raise InvalidInputError(f"object size must be at least 2 pixels, got {self.object_size}")
        if self.seeds not in ("detect", "grid"):
            raise InvalidInputError(f"seeds must be 'detect' or 'grid', got {self.seeds!r}")
        if self.polarity not in ("bright", "dark"):
            raise InvalidInputError(f"polarity must be 'bright' or 'dark', got {self.polarity!r}")
        if self.grid_spacing is not None and not self.grid_spacing >= 1:
            raise InvalidInputError(f"grid spacing must be >= 1 pixel, got {self.grid_spacing}")
        for name in ("min_stability", "min_foreground", "nms_iou", "min_kept_fraction",
                     "link_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInputError(f"{name} must be in 0..1, got {v}")
        if self.max_seeds < 1:
            raise InvalidInputError(f"max_seeds must be >= 1, got {self.max_seeds}")
        if self.tiles not in ("auto", "on", "off"):
            raise InvalidInputError(f"tiles must be 'auto', 'on' or 'off', got {self.tiles!r}")
        if self.tile_size is not None and self.tile_size < 64:
            raise InvalidInputError(f"tile size must be at least 64 pixels, got {self.tile_size}")
        lo, hi = self.area_limits
        if hi < lo:
            raise InvalidInputError(f"max_area {hi} is below min_area {lo}")

    @property
    def expected_area(self) -> float:
        """Area in pixels of a disc of diameter ``object_size``."""
        return math.pi * self.object_size**2 / 4.0

    @property
    def area_limits(self) -> tuple[int, int]:
        """``(min_area, max_area)`` in pixels, defaults filled in."""
        lo = self.min_area if self.min_area is not None else max(4, int(0.1 * self.expected_area))
        hi = self.max_area if self.max_area is not None else int(math.ceil(10 * self.expected_area))
        return int(lo), int(hi)

    def to_dict(self) -> dict:
        """All parameters as a JSON-serialisable dict (defaults filled in as given)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AutoParams:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        return cls(**data)


@dataclass
class Candidate:
    """One predicted object mask, stored as a crop.

    Attributes
    ----------
    bbox : (int, int, int, int)
        ``(row0, col0, row1, col1)``, half-open, in the slice frame.
    mask : ndarray of bool, shape (row1 - row0, col1 - col0)
    score : float
        Stability score.
    seed : (float, float)
        ``(x, y)`` of the seed that produced it.
    index : int
        Seed order (ties are broken by it, so results are deterministic).
    """

    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    seed: tuple[float, float]
    index: int
    area: int = field(init=False)

    def __post_init__(self):
        self.area = int(np.count_nonzero(self.mask))


@dataclass
class SliceSegmentation:
    """Result of :func:`segment_slice`.

    Attributes
    ----------
    labels : ndarray of uint32, shape (H, W)
        0 background, instances 1..n.
    scores : ndarray of float32, shape (n,)
        Stability score of instance ``i + 1``.
    seeds : ndarray of float64, shape (N, 2)
        All seeds tried, ``(x, y) = (col, row)``.
    n_candidates : int
        Masks that passed the per-mask filters (before overlap resolution).
    decoder_calls : int
    seconds : float
    """

    labels: np.ndarray
    scores: np.ndarray
    seeds: np.ndarray
    n_candidates: int
    decoder_calls: int
    seconds: float

    @property
    def n_objects(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class StackSegmentation:
    """Result of :func:`segment_stack`.

    Attributes
    ----------
    labels : ndarray (or memmap) of uint32, shape (Z, H, W)
        Ids are consistent across slices (one id per linked 3D object), 1..n_objects.
    n_objects : int
    per_slice : list of int
        Instances found in each slice (before linking).
    mapping : IntensityMapping
    threshold : float
        Foreground threshold used (0..255 scale, of the polarity-adjusted signal).
    decoder_calls : int
    seconds : float
    """

    labels: np.ndarray
    n_objects: int
    per_slice: list
    mapping: IntensityMapping
    threshold: float
    decoder_calls: int
    seconds: float


# ---------------------------------------------------------------------------------------
# Intensity helpers
# ---------------------------------------------------------------------------------------


def _signal(mapped: np.ndarray, polarity: str) -> np.ndarray:
    """Grey float32 (H, W) on 0..255 from the mapped uint8 image ((H, W) grey or (H, W, 3)
    RGB, averaged); dark objects are inverted so that objects are always bright."""
    grey = mapped.astype(np.float32) if mapped.ndim == 2 else \
        mapped.astype(np.float32).mean(axis=-1)
    if polarity == "dark":
        grey = 255.0 - grey
    return grey


def _smooth(grey: np.ndarray, object_size: float) -> np.ndarray:
    from scipy import ndimage as ndi

    sigma = max(1.0, object_size / 8.0)
    return ndi.gaussian_filter(grey, sigma, mode="nearest")


def detection_factor(shape: tuple[int, int], object_size: float) -> int:
    """Block size for seed detection: keeps >= 12 pixels per object diameter and no more
    than about 1024 pixels along the long side (1 for small slices)."""
    return int(max(1, min(object_size // 12, max(shape) // 1024)))


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


# ---------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Masks and overlaps
# ---------------------------------------------------------------------------------------


def _postprocess(mask: np.ndarray, seed_rc: tuple[int, int], params: AutoParams):
    """Crop a full-frame mask; keep the seed's component; fill small holes.

    Returns ``(bbox, crop)`` or None when nothing is left (or the seed is not covered).
    """
    from scipy import ndimage as ndi

    box = mask_bbox(mask)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    crop = mask[r0:r1, c0:c1]
    min_area, max_area = params.area_limits
    if np.count_nonzero(crop) < min_area:  # its components are smaller still
        return None
    sr, sc = seed_rc
    if params.seed_component:
        if not (r0 <= sr < r1 and c0 <= sc < c1) or not crop[sr - r0, sc - c0]:
            return None
        lab, n = ndi.label(crop)
        if n > 1:
            crop = lab == lab[sr - r0, sc - c0]
            sub = mask_bbox(crop)
            crop = crop[sub[0]:sub[2], sub[1]:sub[3]]
            r0, c0 = r0 + sub[0], c0 + sub[1]
    if np.count_nonzero(crop) > max_area:  # filling holes only adds pixels
        return None
    if min_area > 0:
        crop = _fill_small_holes(crop, min_area)
    return (r0, c0, r0 + crop.shape[0], c0 + crop.shape[1]), crop


def _fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill holes (background components not touching the crop border) below ``max_hole``
    pixels."""
    from scipy import ndimage as ndi

    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    if not holes.any():
        return mask
    lab, n = ndi.label(holes)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < max_hole
    small[0] = False
    return mask | small[lab]


def _values_at(mask: np.ndarray, off_r: int, off_c: int, rows: np.ndarray,
               cols: np.ndarray) -> np.ndarray:
    """``mask`` (a crop at ``(off_r, off_c)`` of the slice) at slice pixels ``(rows, cols)``;
    False outside the crop."""
    r, c = rows - off_r, cols - off_c
    ok = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
    out = np.zeros(rows.shape, bool)
    out[ok] = mask[r[ok], c[ok]]
    return out


class _BoxIndex:
    """Which boxes lie near a point or a box: a hash of ``cell`` x ``cell`` pixel cells.

    Replaces slice-sized "owner" maps and all-pairs comparisons, so memory grows with the
    number of objects, not with the slice. Boxes are ``(row0, col0, row1, col1)``, half-open.
    """

    def __init__(self, cell: int = 256):
        self.cell = int(cell)
        self._cells: dict[tuple[int, int], list[int]] = {}

    def _span(self, bbox):
        r0, c0, r1, c1 = bbox
        k = self.cell
        return range(r0 // k, (max(r1, r0 + 1) - 1) // k + 1), \
            range(c0 // k, (max(c1, c0 + 1) - 1) // k + 1)

    def add(self, key: int, bbox) -> None:
        """Record box ``bbox`` under ``key`` (keys are added in increasing order)."""
        rows, cols = self._span(bbox)
        for i in rows:
            for j in cols:
                self._cells.setdefault((i, j), []).append(key)

    def at(self, row: int, col: int) -> list[int]:
        """Keys (in the order added) of boxes whose cells include pixel ``(row, col)``."""
        return self._cells.get((row // self.cell, col // self.cell), [])

    def near(self, bbox) -> set[int]:
        """Keys of boxes sharing a cell with ``bbox``."""
        rows, cols = self._span(bbox)
        found: set[int] = set()
        for i in rows:
            for j in cols:
                found.update(self._cells.get((i, j), ()))
        return found


def _mask_iou(a: Candidate, b: Candidate) -> float:
    ar0, ac0, ar1, ac1 = a.bbox
    br0, bc0, br1, bc1 = b.bbox
    r0, c0, r1, c1 = max(ar0, br0), max(ac0, bc0), min(ar1, br1), min(ac1, bc1)
    if r0 >= r1 or c0 >= c1:
        return 0.0
    inter = np.count_nonzero(
        a.mask[r0 - ar0:r1 - ar0, c0 - ac0:c1 - ac0] & b.mask[r0 - br0:r1 - br0, c0 - bc0:c1 - bc0]
    )
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def resolve_overlaps(candidates: list[Candidate], shape: tuple[int, int], *,
                     nms_iou: float = 0.5, min_kept_fraction: float = 0.5,
                     min_area: int = 1, out: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression on mask IoU, then painting without overlaps.

    Candidates are taken in order of decreasing score (then increasing area, then seed
    order). A candidate whose IoU with an already kept one exceeds ``nms_iou`` is dropped;
    kept ones are painted in the same order onto pixels not yet taken. A candidate left with
    fewer than ``max(min_area, min_kept_fraction * area)`` free pixels is dropped.

    Parameters
    ----------
    candidates : list of Candidate
    shape : (int, int)
        ``(H, W)`` of the slice.
    out : ndarray of uint32, shape (H, W), optional
        Where to paint (for example a slice of a disk memmap); it is zeroed first. Only the
        candidates' boxes are touched after that, so a memmap is never loaded whole.

    Returns
    -------
    labels : ndarray of uint32, shape (H, W)
        0 background, 1..n in painting order (``out`` when given).
    scores : ndarray of float32, shape (n,)
    """
    order = sorted(candidates, key=lambda c: (-c.score, c.area, c.index))
    kept: list[Candidate] = []
    index = _BoxIndex()
    for cand in order:
        if all(_mask_iou(cand, kept[k]) <= nms_iou for k in index.near(cand.bbox)):
            index.add(len(kept), cand.bbox)
            kept.append(cand)
    if out is None:
        labels = np.zeros(shape, dtype=np.uint32)
    else:
        if tuple(out.shape) != tuple(shape):
            raise InvalidInputError(f"out has shape {out.shape}, expected {tuple(shape)}")
        labels = out
        labels[...] = 0
    scores = []
    for cand in kept:
        r0, c0, r1, c1 = cand.bbox
        window = np.asarray(labels[r0:r1, c0:c1])
        free = cand.mask & (window == 0)
        n_free = int(np.count_nonzero(free))
        if n_free < max(min_area, min_kept_fraction * cand.area) or n_free == 0:
            continue
        scores.append(cand.score)
        window[free] = len(scores)
        labels[r0:r1, c0:c1] = window
    return labels, np.asarray(scores, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# One slice
# ---------------------------------------------------------------------------------------


def _check_cancel(cancel) -> None:
    if cancel is not None and cancel():
        raise CancelledError("automatic segmentation cancelled")


def _detect(signal: np.ndarray, params: AutoParams, threshold: float, *,
            factor: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Detected seeds of one grey signal image (see :func:`detect_seeds`).

    Detection needs about 12 pixels per object and no more than the model's own 1024
    frame: big images are detected on a block-averaged copy (much faster at 4096^2).

    Returns
    -------
    seeds : ndarray of float64, shape (N, 2)
        ``(x, y)`` in pixels of ``signal``.
    smoothed : ndarray of float32
        The (block-averaged) signal smoothed at ``object_size / 8``.
    factor : int
        The block size used.
    """
    h, w = signal.shape
    if factor is None:
        factor = detection_factor((h, w), params.object_size)
    small = _downscale(signal, factor)
    smoothed = _smooth(small, params.object_size / factor)
    seeds = detect_seeds(small, object_size=params.object_size / factor, threshold=threshold,
                         max_seeds=params.max_seeds, smoothed=smoothed)
    seeds = seeds * factor + (factor - 1) / 2.0
    return np.minimum(seeds, [w - 1, h - 1]), smoothed, factor


def _collect_candidates(seeds: np.ndarray, run, foreground_crop, params: AutoParams,
                        shape: tuple[int, int], cancel) -> tuple[list[Candidate], int]:
    """Steps 3-4 of the module docstring: one decoder call per seed, then the filters.

    Parameters
    ----------
    seeds : ndarray, shape (N, 2)
        ``(x, y)`` pixels of the slice, in the order they are tried.
    run : callable(points, labels) -> (mask, row0, col0, score)
        Predicts one mask crop and its ``(row, col)`` offset in the slice.
    foreground_crop : callable(row0, col0, row1, col1) -> ndarray of bool
        The foreground of a half-open box of the slice.
    shape : (int, int)
        ``(H, W)`` of the slice.

    Returns
    -------
    candidates : list of Candidate
    decoder_calls : int
    """
    h, w = shape
    min_area, max_area = params.area_limits
    far = 0.75 * params.object_size
    candidates: list[Candidate] = []
    covered = _BoxIndex()  # which accepted candidate first covers a pixel
    rows = np.clip(np.round(seeds[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(seeds[:, 0]).astype(int), 0, w - 1)
    calls = 0
    for i, (x, y) in enumerate(seeds):
        _check_cancel(cancel)
        owner = next((k for k in covered.at(rows[i], cols[i])
                      if _values_at(candidates[k].mask, *candidates[k].bbox[:2],
                                    rows[i:i + 1], cols[i:i + 1])[0]), None)
        if owner is not None and math.hypot(x - candidates[owner].seed[0],
                                            y - candidates[owner].seed[1]) <= far:
            continue  # a second seed of an object already found: its mask would be a duplicate
        mask, off_r, off_c, score = run([(x, y)], [1])
        calls += 1
        if params.split_merged and len(seeds) > 1:
            dist = np.hypot(seeds[:, 0] - x, seeds[:, 1] - y)
            inside = _values_at(mask, off_r, off_c, rows, cols) & (dist > far)
            if inside.any():
                others = seeds[inside][np.argsort(dist[inside], kind="stable")][:8]
                refined = run([(x, y), *map(tuple, others)], [1] + [0] * len(others))
                calls += 1
                if np.isfinite(refined[3]) and refined[3] >= params.min_stability:
                    mask, off_r, off_c, score = refined
        if not (np.isfinite(score) and score >= params.min_stability):
            continue
        seed_rc = (min(h - 1, max(0, int(round(y)))) - off_r,
                   min(w - 1, max(0, int(round(x)))) - off_c)
        if not (0 <= seed_rc[0] < mask.shape[0] and 0 <= seed_rc[1] < mask.shape[1]):
            continue
        post = _postprocess(mask, seed_rc, params)
        if post is None:
            continue
        (r0, c0, r1, c1), crop = post
        r0, r1, c0, c1 = r0 + off_r, r1 + off_r, c0 + off_c, c1 + off_c
        area = int(np.count_nonzero(crop))
        if not min_area <= area <= max_area:
            continue
        if params.min_foreground > 0:
            fg = np.count_nonzero(crop & foreground_crop(r0, c0, r1, c1)) / max(area, 1)
            if fg < params.min_foreground:
                continue
        covered.add(len(candidates), (r0, c0, r1, c1))
        candidates.append(Candidate((r0, c0, r1, c1), crop, float(score), (float(x), float(y)), i))
    return candidates, calls


def _slice_result(candidates, seeds, calls, params: AutoParams, shape, out,
                  t0: float) -> SliceSegmentation:
    """Step 5 (overlaps and painting) and the result of :func:`segment_slice`."""
    labels, scores = resolve_overlaps(candidates, shape, nms_iou=params.nms_iou,
                                      min_kept_fraction=params.min_kept_fraction,
                                      min_area=params.area_limits[0], out=out)
    return SliceSegmentation(labels, scores, seeds, len(candidates), calls,
                             time.perf_counter() - t0)


def segment_slice(predictor, image, *, params: AutoParams | None = None,
                  mapping: IntensityMapping | None = None, threshold: float | None = None,
                  embedding=None, cancel: Callable[[], bool] | None = None,
                  rgb: bool | None = None, out: np.ndarray | None = None) -> SliceSegmentation:
    """Segment all objects of one 2D slice without clicks.

    Slices larger than :data:`~napari_edgesam.engine.tiling.TILING_THRESHOLD` (or any, with
    ``params.tiles == "on"``) are segmented tile by tile at full resolution: the slice is
    then only ever read window by window (a memory-mapped TIFF, a dask or zarr array may be
    larger than memory) and the labels are painted into ``out`` box by box.

    Parameters
    ----------
    predictor : Predictor
        Its cache is used for the embedding (pass ``cache=None`` to the predictor to skip it).
    image : array-like, shape (H, W) or (H, W, 3|4)
        One slice, ``(row, col)`` order, any real dtype. numpy, memmap, dask or zarr; when
        tiled, read through ``image[r0:r1, c0:c1]`` windows only.
    params : AutoParams, optional
    mapping : IntensityMapping, optional
        The intensity mapping (stack-wide for slices of a stack). Default: identity for
        uint8, else robust percentiles of this slice (strided samples when tiled).
    threshold : float, optional
        Foreground threshold on the 0..255 polarity-adjusted scale (stack-wide for stacks).
        Default: ``params.threshold``, else Otsu's threshold of this slice.
    embedding : Embedding, optional
        Precomputed embedding of this slice (with this mapping; not used when tiled).
    cancel : callable returning bool, optional
        Polled between decoder calls; when it returns True, :class:`CancelledError` is raised.
    rgb : bool, optional
        Force the reading of a last axis of size 3 or 4 (default: colour).
    out : ndarray of uint32, shape (H, W), optional
        Where to write the labels (zeroed first), e.g. a slice of a disk memmap.

    Returns
    -------
    SliceSegmentation
        ``labels`` is ``out`` when given.
    """
    t0 = time.perf_counter()
    params = params or AutoParams()
    shape = tuple(image.shape)
    tiled = params.tiles == "on" or (params.tiles == "auto" and len(shape) >= 2
                                     and needs_tiling(shape[:2]))
    if tiled:
        return _segment_slice_tiled(predictor, image, params=params, mapping=mapping,
                                    threshold=threshold, cancel=cancel, rgb=rgb, out=out,
                                    t0=t0)
    image, is_rgb = validate_image(image, rgb=rgb)
    if mapping is None:
        mapping = stack_mapping(image, "auto", rgb=is_rgb)
    signal = _signal(mapping.apply(image, expand=False), params.polarity)
    if threshold is None:
        threshold = params.threshold if params.threshold is not None else \
            foreground_threshold(signal)
    h, w = signal.shape
    if params.seeds == "detect":
        seeds, smoothed, factor = _detect(signal, params, threshold)
    else:
        factor = detection_factor((h, w), params.object_size)
        smoothed = _smooth(_downscale(signal, factor), params.object_size / factor)
        seeds = grid_seeds((h, w), params.grid_spacing or params.object_size / 2.0,
                           params.max_seeds)
    del signal
    foreground = smoothed > threshold
    if factor > 1:
        foreground = np.repeat(np.repeat(foreground, factor, 0), factor, 1)[:h, :w]
    candidates: list[Candidate] = []
    calls = 0
    if len(seeds):
        _check_cancel(cancel)
        if embedding is None:
            embedding = predictor.embed(image, mapping, rgb=is_rgb)

        def run(points, labels):
            r = predictor.predict(points=points, labels=labels, embedding=embedding)
            return r.mask, 0, 0, r.score

        candidates, calls = _collect_candidates(
            seeds, run, lambda r0, c0, r1, c1: foreground[r0:r1, c0:c1], params, (h, w),
            cancel)
    return _slice_result(candidates, seeds, calls, params, (h, w), out, t0)


def _segment_slice_tiled(predictor, image, *, params: AutoParams, mapping, threshold,
                         cancel, rgb, out, t0) -> SliceSegmentation:
    """:func:`segment_slice` on tiles, reading ``image`` one window at a time.

    Pass 1 detects seeds tile by tile: each tile detects in the pixels it owns (see
    :meth:`TileGrid.tile_indices`) plus a margin of two object sizes, so objects on a tile
    border are seen whole and found once. Pass 2 runs the decoder per seed, tile by tile,
    through :class:`TiledPredictor` (which re-centres windows on objects that reach a tile's
    side). The foreground test reads a small window around each mask. Nothing slice-sized is
    allocated except ``out`` (when not given).
    """
    from ..engine.tiling import TiledPredictor, Window

    validate_image(np.asarray(image[:2, :2]), rgb=rgb)  # dtype and axes, without a read
    tp = TiledPredictor(predictor, image, mapping, tile_size=params.tile_size, rgb=rgb)
    mapping, is_rgb, grid = tp.mapping, tp.rgb, tp.grid
    h, w = tp.image_shape
    if threshold is None:
        threshold = params.threshold if params.threshold is not None else \
            stack_statistics([image], params=params, mapping=mapping, rgb=is_rgb)[1]

    def signal_of(win: Window) -> np.ndarray:
        return _signal(mapping.apply(tp.read(win), expand=False), params.polarity)

    def clipped(r0, c0, r1, c1) -> Window:
        r0, c0, r1, c1 = max(0, r0), max(0, c0), min(h, r1), min(w, c1)
        return Window(r0, c0, r1 - r0, c1 - c0)

    if params.seeds == "detect":
        margin = int(math.ceil(2 * params.object_size)) + 4
        found = []
        for tile in grid.tiles:
            _check_cancel(cancel)
            own = grid.owned(tile)
            block = clipped(own.row0 - margin, own.col0 - margin, own.row1 + margin,
                            own.col1 + margin)
            seeds, _, _ = _detect(signal_of(block), params, threshold)
            seeds = seeds + [block.col0, block.row0]
            r = np.floor(seeds[:, 1] + 0.5)
            c = np.floor(seeds[:, 0] + 0.5)
            found.append(seeds[(r >= own.row0) & (r < own.row1)
                               & (c >= own.col0) & (c < own.col1)])
        seeds = np.concatenate(found) if found else np.zeros((0, 2))
    else:
        seeds = grid_seeds((h, w), params.grid_spacing or params.object_size / 2.0,
                           params.max_seeds)
    # Seeds tile by tile (stable within a tile): each tile's embedding is used while it is
    # at hand instead of being evicted and fetched again from the cache.
    seeds = seeds[np.argsort(grid.tile_indices(seeds), kind="stable")] if len(seeds) else seeds
    pad = int(math.ceil(4 * max(1.0, params.object_size / 8.0))) + 1

    def foreground_crop(r0, c0, r1, c1):
        win = clipped(r0 - pad, c0 - pad, r1 + pad, c1 + pad)
        fg = _smooth(signal_of(win), params.object_size) > threshold
        return fg[r0 - win.row0:r1 - win.row0, c0 - win.col0:c1 - win.col0]

    def run(points, labels):
        r = tp.predict(points=points, labels=labels)
        return r.mask, r.window.row0, r.window.col0, r.score

    candidates, calls = _collect_candidates(seeds, run, foreground_crop, params, (h, w),
                                            cancel)
    return _slice_result(candidates, seeds, calls, params, (h, w), out, t0)


# ---------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------


#: Row blocks of about this many pixels are what linking holds in memory at a time.
_BLOCK_PIXELS = 1 << 22


def _row_blocks(shape) -> list[slice]:
    h, w = int(shape[0]), int(shape[1])
    step = max(1, _BLOCK_PIXELS // max(1, w))
    return [slice(r, min(h, r + step)) for r in range(0, h, step)]


def link_ids(previous: np.ndarray | None, current: np.ndarray, *, min_iou: float,
             next_id: int, n_current: int | None = None) -> tuple[np.ndarray, int]:
    """The global id of each local id of ``current`` (see :func:`link_labels`).

    Reads both slices in row blocks, so memmaps of slices larger than memory can be linked.

    Parameters
    ----------
    previous : ndarray of int, shape (H, W), or None
        The slice before, in global ids ``< next_id``.
    current : ndarray of int, shape (H, W)
        Local ids 1..n (0 background).
    n_current : int, optional
        ``n`` (default: the maximum of ``current``).

    Returns
    -------
    mapping : ndarray of uint32, shape (n + 1,)
        ``mapping[local]`` is the global id (``mapping[0] == 0``).
    next_id : int
    """
    blocks = _row_blocks(current.shape)
    if n_current is None:
        n_current = max((int(np.max(current[b], initial=0)) for b in blocks), default=0)
    n_cur = int(n_current)
    mapping = np.zeros(n_cur + 1, dtype=np.uint32)
    if previous is not None and n_cur > 0:
        n_prev = int(next_id)
        keys, counts = [], []
        area_c = np.zeros(n_cur + 1, np.int64)
        area_p = np.zeros(n_prev + 1, np.int64)
        for b in blocks:
            prev = np.asarray(previous[b]).astype(np.int64, copy=False)
            cur = np.asarray(current[b]).astype(np.int64, copy=False)
            area_c += np.bincount(cur.ravel(), minlength=n_cur + 1)[:n_cur + 1]
            area_p += np.bincount(prev.ravel(), minlength=n_prev + 1)[:n_prev + 1]
            both = (prev > 0) & (cur > 0)
            if both.any():
                k, c = np.unique(prev[both] * (n_cur + 1) + cur[both], return_counts=True)
                keys.append(k)
                counts.append(c)
        if keys:
            k = np.concatenate(keys)
            pairs, inv = np.unique(k, return_inverse=True)
            inter = np.bincount(inv.ravel(), weights=np.concatenate(counts))
            pid, cid = pairs // (n_cur + 1), pairs % (n_cur + 1)
            ious = inter / (area_p[pid] + area_c[cid] - inter)
            order = np.lexsort((cid, pid, -ious))
            used_p: set[int] = set()
            for j in order:
                if ious[j] < min_iou:
                    break
                q, r = int(pid[j]), int(cid[j])
                if q in used_p or mapping[r]:
                    continue
                mapping[r] = q
                used_p.add(q)
    for r in range(1, n_cur + 1):
        if not mapping[r]:
            mapping[r] = next_id
            next_id += 1
    return mapping, next_id


def link_labels(previous: np.ndarray | None, current: np.ndarray, *, min_iou: float,
                next_id: int) -> tuple[np.ndarray, int]:
    """Give the instances of one slice the ids of the overlapping instances of the slice before.

    Pairs are matched one-to-one, greedily by decreasing IoU (ties by ids), when their IoU
    is at least ``min_iou``; unmatched instances get new ids ``next_id, next_id + 1, ...``
    in the order of their local ids.

    Parameters
    ----------
    previous : ndarray of int, shape (H, W), or None
        The slice before, already in global ids (None for the first slice).
    current : ndarray of int, shape (H, W)
        This slice with local ids 1..n (0 background).
    min_iou : float
    next_id : int
        First unused global id.

    Returns
    -------
    linked : ndarray of uint32, shape (H, W)
    next_id : int
        First unused global id after this slice.
    """
    current = np.asarray(current)
    mapping, next_id = link_ids(previous, current, min_iou=min_iou, next_id=next_id)
    return mapping[current], next_id


def label_dtype(n_objects: int) -> np.dtype:
    """uint16 when the ids fit, else uint32."""
    return np.dtype(np.uint16) if n_objects <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def segment_stack(predictor, planes, *, params: AutoParams | None = None,
                  mapping: IntensityMapping | None = None, threshold: float | None = None,
                  rgb: bool = False, link: bool = True, out: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> StackSegmentation:
    """Segment every slice of a stack and link instances into 3D objects.

    Parameters
    ----------
    predictor : Predictor
    planes : sequence of array-like
        ``len(planes)`` slices; ``planes[z]`` has shape (H, W) (or (H, W, 3) with ``rgb``).
        Read one at a time (a numpy array, a memmap, a dask array or any lazy sequence).
    params : AutoParams, optional
    mapping : IntensityMapping, optional
        Default: stack-wide (see :func:`stack_statistics`).
    threshold : float, optional
        Default: ``params.threshold`` or stack-wide Otsu.
    rgb : bool
    link : bool
        Link instances of neighbouring slices by IoU (``params.link_iou``); False numbers
        instances of every slice independently from 1 (e.g. time frames).
    out : ndarray of uint32, shape (Z, H, W), optional
        Where to write the labels (e.g. a disk memmap for big stacks); each slice is
        painted and linked in place, so a memmap is never loaded whole.
    progress : callable(done, total), optional
        Called after each slice.
    cancel : callable returning bool, optional

    Returns
    -------
    StackSegmentation
    """
    t0 = time.perf_counter()
    params = params or AutoParams()
    n = len(planes)
    if mapping is None or (threshold is None and params.threshold is None):
        mapping, stack_thr = stack_statistics(planes, params=params, mapping=mapping, rgb=rgb)
        if threshold is None:
            threshold = stack_thr
    elif threshold is None:
        threshold = float(params.threshold)
    prev = None
    next_id = 1
    per_slice = []
    calls = 0
    n_max = 0
    for z in range(n):
        _check_cancel(cancel)
        plane = planes[z]  # not read here: large slices are read tile by tile
        if out is None:
            out = np.zeros((n, *tuple(plane.shape)[:2]), dtype=np.uint32)
        res = segment_slice(predictor, plane, params=params, mapping=mapping,
                            threshold=threshold, cancel=cancel, rgb=rgb, out=out[z])
        calls += res.decoder_calls
        per_slice.append(res.n_objects)
        if link:
            ids, next_id = link_ids(prev, out[z], min_iou=params.link_iou, next_id=next_id,
                                    n_current=res.n_objects)
            for b in _row_blocks(out.shape[1:]):  # in place, a block at a time
                out[z, b] = ids[out[z, b]]
            prev = out[z]
            n_max = next_id - 1
        else:
            n_max = max(n_max, res.n_objects)
        if progress is not None:
            progress(z + 1, n)
    if out is None:
        out = np.zeros((0, 0, 0), np.uint32)
    return StackSegmentation(out, n_max, per_slice, mapping, float(threshold), calls,
                             time.perf_counter() - t0)
