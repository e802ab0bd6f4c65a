"""Propagate objects through a stack slice by slice (3D z-stacks and 2D+t movies).

The user annotates an object on one or more slices (a mask, or clicks and/or a box); the
workflow walks up and down the stack from each annotated slice, deriving the next slice's
prompts from the mask found on the previous one, and stops where the object ends.

Frames and conventions
----------------------
- The *stack* is any array-like (numpy, ``numpy.memmap``, dask, zarr) of shape
  ``(Z, Y, X)`` or ``(Z, Y, X, C)`` with the slice axis at position ``axis`` (default 0).
  Slices are read one at a time, never the whole stack (except for sampling the stack-wide
  intensity mapping). For a 2D+t movie the slice axis is time: ``(T, Y, X)``, same machinery.
- Slice indices (``z``) are indices along the slice axis, 0-based.
- Masks are ``bool`` arrays of shape ``(Y, X)`` indexed ``[row, col]``; 3D results are
  ``(Z, Y, X)`` with the slice axis first whatever ``axis`` was.
- Prompt points are ``(x, y) = (col, row)`` in slice pixels; boxes ``(x0, y0, x1, y1)``.

How one step works (see ``docs/propagation.md`` for the measurements behind the defaults):
from the previous slice's mask ``M`` the next slice gets a box prompt (the bounding box of
``M`` grown by a margin) plus positive clicks at the deepest points of ``M`` (maxima of its
distance transform) and negative clicks on neighbouring objects of the same run that reach
into the box. The predicted mask keeps only the parts that touch ``M`` grown by the margin.
The step is accepted unless a stop rule fires (:class:`PropagationSettings`).

Embeddings are computed lazily, once per slice for all objects of a run, through the
predictor's :class:`~napari_edgesam.engine.cache.EmbeddingCache`; one stack-wide intensity
mapping is used for every slice.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..engine.errors import InvalidInputError
from ..engine.intensity import IntensityMapping, stack_mapping
from ..engine.slice_predictor import EmbeddedSlice
from ..engine.transforms import MaskCrop

_log = logging.getLogger(__name__)

__all__ = [
    "REJECTING_REASONS",
    "STOP_REASONS",
    "ChainEnd",
    "ObjectResult",
    "PropagationResult",
    "PropagationRun",
    "PropagationSettings",
    "PropagationStep",
    "Propagator",
    "SliceAnnotation",
    "SliceRecord",
    "SliceSource",
    "derive_prompts",
    "propagate",
]

#: Why a chain of propagated slices ended.
STOP_REASONS = (
    "vanished",             # the predicted mask is (almost) empty
    "low score",            # stability score below ``min_score`` (or undefined)
    "overlap collapsed",    # too little overlap with the previous slice's mask
    "area jump",            # the area grew too much from one slice to the next
    "z-limit",              # reached the user's z-range end (inside the stack)
    "stack end",            # reached the first or last slice of the stack
    "cancelled",            # the user cancelled the run
    "met other annotation", # reached another annotated slice of the same object
    "unusable slice",       # the model cannot take the slice (no finite values, say)
)

#: Reasons that reject the slice where they fire (its mask is not kept).
REJECTING_REASONS = frozenset({"vanished", "low score", "overlap collapsed", "area jump",
                               "unusable slice"})

ProgressCallback = Callable[[int, int, "int | None"], None]


# ---------------------------------------------------------------------------------------
# Inputs and settings
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceAnnotation:
    """What the user gave for one object on one slice: a mask, or prompts.

    Parameters
    ----------
    z : int
        Slice index along the slice axis.
    mask : ndarray of bool, shape (Y, X), or MaskCrop, optional
        The object's mask on this slice (used as is, no prediction).
    points : array-like, shape (N, 2), optional
        Clicks as ``(x, y) = (col, row)`` in slice pixels.
    labels : array-like, shape (N,), optional
        1 positive (default), 0 negative.
    box : array-like, shape (4,), optional
        ``(x0, y0, x1, y1)`` in slice pixels, ``x0 <= x1``, ``y0 <= y1``.

    Give either ``mask`` or prompts (points and/or a box), not both.
    """

    z: int
    mask: np.ndarray | None = field(default=None, repr=False)
    points: object = None
    labels: object = None
    box: object = None

    def __post_init__(self):
        object.__setattr__(self, "z", int(self.z))
        has_prompt = self.points is not None or self.box is not None
        if self.mask is not None and has_prompt:
            raise InvalidInputError(f"slice {self.z}: give a mask or prompts, not both")
        if self.mask is None and not has_prompt:
            raise InvalidInputError(f"slice {self.z}: an annotation needs a mask, points or a box")
        if self.mask is not None and not isinstance(self.mask, MaskCrop):
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise InvalidInputError(f"slice {self.z}: a mask must be 2D (Y, X), got {m.shape}")
            object.__setattr__(self, "mask", m.astype(bool, copy=False))

    @property
    def is_mask(self) -> bool:
        return self.mask is not None


@dataclass(frozen=True)
class PropagationSettings:
    """Stop rules and prompt derivation of a propagation run.

    Stop rules (checked in this order on every propagated slice; the first that fires rejects
    the slice and ends that direction):

    Attributes
    ----------
    min_area : int
        ``'vanished'`` when the mask has fewer pixels than this. Default 4.
    min_score : float
        ``'low score'`` when the stability score of the chosen mask is below this (or NaN).
        Default 0.70.
    min_overlap : float
        ``'overlap collapsed'`` when ``|M_new & M_prev| / min(|M_new|, |M_prev|)`` (the
        overlap coefficient: 1 when one mask contains the other, so an object shrinking
        towards its end is not penalised) falls below this. Default 0.5. Lower it for
        2D+t movies of fast-moving objects.
    max_growth : float
        ``'area jump'`` when ``area_new > max_growth * area_prev + growth_slack``.
        Default 1.8.
    growth_slack : int
        Pixels of growth always allowed (small objects change area fast). Default 30.

    Prompt derivation:

    box_margin : float
        Box prompt = bounding box of the previous mask grown on every side by
        ``max(box_margin * max(height, width), box_margin_px)``. Default 0.05 (larger
        margins let masks creep outwards slice by slice; see ``docs/propagation.md``).
        ``box_margin < 0`` disables the box (clicks only).
    box_margin_px : float
        Minimum margin in pixels. Default 3.
    positive_points : int
        Number of positive clicks at the deepest points of the previous mask (0 for none).
        Default 1.
    click_min_depth : float
        With a box, give a positive click only where the previous mask is at least this many
        pixels deep (distance to its edge): on thin or tiny cross-sections (an object's last
        slices) a click adds nothing the box does not say and can outweigh it. Without a box
        the deepest point is always clicked. Default 5.
    neighbour_negatives : bool
        Add a negative click at the deepest point of any *other* object of the run whose
        mask on the previous slice reaches into this object's box. Default True.
    keep_connected : bool
        Keep only the parts of the predicted mask that touch the previous mask grown by the
        box margin (drops pieces of other structures caught in the box). Default True.
    gap_fill : {"best", "middle"}
        Between two annotated slices of one object both ends propagate across the whole gap;
        per slice keep the candidate with the better stability score (``"best"``) or the one
        from the nearer annotated slice (``"middle"``). Default ``"best"``.
    memo_slices : int
        Embeddings a run keeps in its own memory for slices it visits twice (gaps, several
        objects), on top of the predictor's cache. Default 16 (16 x 4 MiB).
    """

    min_area: int = 4
    min_score: float = 0.70
    min_overlap: float = 0.5
    max_growth: float = 1.8
    growth_slack: int = 30
    box_margin: float = 0.05
    box_margin_px: float = 3.0
    positive_points: int = 1
    click_min_depth: float = 5.0
    neighbour_negatives: bool = True
    keep_connected: bool = True
    gap_fill: str = "best"
    memo_slices: int = 16

    def __post_init__(self):
        if self.gap_fill not in ("best", "middle"):
            raise InvalidInputError(f"gap_fill must be 'best' or 'middle', got {self.gap_fill!r}")
        if self.positive_points < 0:
            raise InvalidInputError("positive_points must be >= 0")
        if self.box_margin < 0 and self.positive_points == 0:
            raise InvalidInputError("with no box (box_margin < 0) positive_points must be >= 1")
        if not self.max_growth > 0:
            raise InvalidInputError("max_growth must be > 0")


# ---------------------------------------------------------------------------------------
# Records and results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceRecord:
    """What happened to one object on one slice.

    Attributes
    ----------
    object_id : hashable
    z : int
    source : {"annotation", "propagated"}
    origin : int
        The annotated slice this mask descends from (``z`` itself for annotations).
    direction : int
        +1 propagated upwards (increasing z), -1 downwards, 0 an annotated slice.
    accepted : bool
        False for the slice where a stop rule fired (its mask is not kept).
    score : float
        Stability score of the mask used (NaN for a mask annotation).
    area : int
        Pixels of the predicted mask (before rejection).
    iou_prev : float
        IoU with the previous slice's mask in the propagation direction (NaN for annotations).
    overlap_prev : float
        Overlap coefficient with the previous slice's mask (NaN for annotations).
    reason : str or None
        The stop reason when ``accepted`` is False.
    alternative_score : float
        In a gap filled from both ends, the score of the candidate not chosen (else NaN).
    """

    object_id: object
    z: int
    source: str
    origin: int
    direction: int
    accepted: bool
    score: float
    area: int
    iou_prev: float = math.nan
    overlap_prev: float = math.nan
    reason: str | None = None
    alternative_score: float = math.nan


@dataclass(frozen=True)
class ChainEnd:
    """How one direction of propagation from an annotated slice ended.

    Attributes
    ----------
    object_id : hashable
    start : int
        The annotated slice the chain started from.
    direction : int
        +1 upwards (increasing z), -1 downwards.
    last : int
        Last slice whose mask the chain accepted (``start`` when none).
    reason : str
        One of :data:`STOP_REASONS`.
    at : int or None
        The slice where the stop happened: the rejected slice for a rejecting reason, the
        other annotated slice for ``'met other annotation'``, else None.
    """

    object_id: object
    start: int
    direction: int
    last: int
    reason: str
    at: int | None = None


@dataclass
class ObjectResult:
    """One object's masks (stored cropped per slice) and records.

    Attributes
    ----------
    object_id : hashable
    annotations : dict of int -> SliceAnnotation
    records : dict of int -> SliceRecord
        Per slice: the record of the mask kept, or of the rejected slice where a chain
        stopped.
    ends : list of ChainEnd
    """

    object_id: object
    shape: tuple[int, int, int]
    annotations: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    ends: list = field(default_factory=list)
    _masks: dict = field(default_factory=dict, repr=False)

    # -- masks --------------------------------------------------------------------------
    def _set(self, z: int, mask: MaskCrop | np.ndarray | None) -> None:
        if mask is not None and not isinstance(mask, MaskCrop):
            mask = MaskCrop(mask)
        if mask is None or not mask.area:
            self._masks.pop(z, None)
            return
        self._masks[z] = (mask.row0, mask.col0, mask.crop)

    def slice_crop(self, z: int) -> MaskCrop | None:
        """The mask on slice ``z`` as a :class:`MaskCrop` (no slice-sized array), or None."""
        entry = self._masks.get(int(z))
        if entry is None:
            return None
        r0, c0, crop = entry
        return MaskCrop(crop, r0, c0, self.shape[1:])

    def slice_mask(self, z: int) -> np.ndarray | None:
        """The mask on slice ``z``: bool ``(Y, X)``, or None where the object is absent."""
        entry = self._masks.get(int(z))
        if entry is None:
            return None
        r0, c0, crop = entry
        out = np.zeros(self.shape[1:], dtype=bool)
        out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    @property
    def slices(self) -> list[int]:
        """Sorted slice indices where the object has a mask."""
        return sorted(self._masks)

    @property
    def extent(self) -> tuple[int, int] | None:
        """``(first, last)`` slice with a mask, or None."""
        s = self.slices
        return (s[0], s[-1]) if s else None

    def mask(self) -> np.ndarray:
        """The 3D mask: bool ``(Z, Y, X)``, slice axis first."""
        out = np.zeros(self.shape, dtype=bool)
        for z, (r0, c0, crop) in self._masks.items():
            out[z, r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    def area(self, z: int) -> int:
        entry = self._masks.get(int(z))
        return int(np.count_nonzero(entry[2])) if entry else 0

    def copy(self) -> ObjectResult:
        return ObjectResult(self.object_id, self.shape, dict(self.annotations),
                            dict(self.records), list(self.ends), dict(self._masks))


@dataclass
class PropagationResult:
    """The outcome of a run: one :class:`ObjectResult` per object.

    Attributes
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)`` of the stack, slice axis first.
    z_range : (int, int)
        Inclusive slice range the run was limited to.
    objects : dict
        ``object_id -> ObjectResult``, in the order given.
    cancelled : bool
        True when the run was cancelled; every mask present is still a complete, accepted
        slice, and the chains that were cut short end with reason ``'cancelled'``.
    mapping : IntensityMapping
        The stack-wide intensity mapping used for every slice.
    stats : dict
        ``embeddings`` (slices embedded), ``encoded`` (of which computed by the encoder, i.e.
        not found in the run's memo or the predictor's cache), ``decoder_calls``.
    """

    shape: tuple[int, int, int]
    z_range: tuple[int, int]
    objects: dict
    mapping: IntensityMapping
    cancelled: bool = False
    stats: dict = field(default_factory=dict)
    settings: PropagationSettings = field(default_factory=PropagationSettings)

    def mask(self, object_id) -> np.ndarray:
        """Bool ``(Z, Y, X)`` mask of one object."""
        return self.objects[object_id].mask()

    def labels(self, dtype=np.uint32) -> np.ndarray:
        """All objects as one label image ``(Z, Y, X)``.

        Integer object ids are used as labels; other ids get 1, 2, ... in order. Where
        objects overlap the later object wins.
        """
        out = np.zeros(self.shape, dtype=dtype)
        for i, (oid, obj) in enumerate(self.objects.items(), start=1):
            value = oid if isinstance(oid, (int, np.integer)) and not isinstance(oid, bool) else i
            for z, (r0, c0, crop) in obj._masks.items():
                view = out[z, r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
                view[crop] = value
        return out

    def summary(self) -> str:
        """Human-readable lines: extent and stop reasons per object."""
        lines = []
        for oid, obj in self.objects.items():
            ext = obj.extent
            span = f"slices {ext[0]}..{ext[1]} ({len(obj.slices)})" if ext else "no slice"
            ends = "; ".join(
                f"{'up' if e.direction > 0 else 'down'} from {e.start}: {e.reason}"
                + (f" at {e.at}" if e.at is not None else "")
                for e in sorted(obj.ends, key=lambda e: (e.start, e.direction))
            )
            lines.append(f"object {oid}: {span}; {ends}")
        if self.cancelled:
            lines.append("(cancelled: partial result)")
        return "\n".join(lines)


@dataclass(frozen=True)
class PropagationStep:
    """Progress of a run after one slice (what :meth:`PropagationRun.__iter__` yields).

    Attributes
    ----------
    done, total : int
        Slices processed so far and an upper bound of the slices the run may process (chains
        that stop early make ``done`` jump to ``total`` at the end).
    z : int
        The slice just processed.
    updates : tuple of (object_id, SliceRecord, MaskCrop or None)
        Candidate masks found on this slice (crops; ``np.asarray`` gives bool ``(Y, X)``;
        None when rejected). In a gap filled from both ends the final choice is made at the
        end of the run.
    """

    done: int
    total: int
    z: int
    updates: tuple = ()


# ---------------------------------------------------------------------------------------
# Reading slices
# ---------------------------------------------------------------------------------------
class SliceSource:
    """Reads single 2D slices from a stack, lazily.

    Parameters
    ----------
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C), slice axis at ``axis``
        numpy, memmap, dask or zarr; after removing the slice axis the remaining axes must be
        ``(Y, X)`` or ``(Y, X, C)``.
    axis : int
        Position of the slice axis (Z, or T for a 2D+t movie).
    channel : int, optional
        Channel to use when there is a C axis. Without it a C axis of 3 or 4 is RGB(A).
    """

    def __init__(self, stack, axis: int = 0, channel: int | None = None):
        if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
            stack = np.asarray(stack)
        ndim = len(stack.shape)
        if ndim not in (3, 4):
            raise InvalidInputError(
                f"a stack must be (Z, Y, X) or (Z, Y, X, C); got shape {tuple(stack.shape)}"
            )
        if not -ndim <= axis < ndim:
            raise InvalidInputError(f"axis {axis} is out of range for shape {tuple(stack.shape)}")
        self.stack = stack
        self.axis = axis % ndim
        self.ndim = ndim
        rest = [n for i, n in enumerate(stack.shape) if i != self.axis]
        self.n = int(stack.shape[self.axis])
        self.height, self.width = int(rest[0]), int(rest[1])
        self.channel = channel
        self.rgb = False
        if ndim == 4:
            c = int(rest[2])
            if channel is not None:
                if not 0 <= channel < c:
                    raise InvalidInputError(f"channel {channel} is outside 0..{c - 1}")
            elif c in (3, 4):
                self.rgb = True
            elif c == 1:
                self.channel = 0
            else:
                raise InvalidInputError(
                    f"the stack has {c} channels (last axis); pick one with channel=C"
                )
        elif channel is not None:
            raise InvalidInputError("channel given but the stack has no channel axis")
        if self.n < 1:
            raise InvalidInputError("the stack has no slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return (self.n, self.height, self.width)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, z: int) -> np.ndarray:
        """Slice ``z``: ``(Y, X)`` or ``(Y, X, 3)`` for RGB(A), as numpy."""
        if not 0 <= z < self.n:
            raise IndexError(z)
        index = [slice(None)] * self.ndim
        index[self.axis] = int(z)
        plane = self.stack[tuple(index)]
        if self.ndim == 4:
            plane = plane[..., self.channel] if self.channel is not None else plane[..., :3]
        return np.asarray(plane)

    def lazy(self, z: int) -> _LazyPlane:
        """Slice ``z`` as a lazy array-like: only the windows indexed are read (for tiles)."""
        if not 0 <= z < self.n:
            raise IndexError(z)
        return _LazyPlane(self, int(z))

    def sampling_view(self):
        """The stack with the slice axis first and the channel chosen (for percentiles)."""
        data = self.stack
        if self.axis != 0:
            data = np.moveaxis(data, self.axis, 0)
        if self.ndim == 4:
            data = data[..., self.channel] if self.channel is not None else data[..., :3]
        return data

    def default_mapping(self) -> IntensityMapping:
        """One mapping for the whole stack (the ``"auto"`` policy of
        :func:`~napari_edgesam.engine.intensity.stack_mapping` on the whole stack)."""
        return stack_mapping(self.sampling_view(), "auto", rgb=self.rgb)


class _LazyPlane:
    """One slice of a :class:`SliceSource` that reads only the ``[rows, cols]`` windows it is
    indexed with: shape ``(Y, X)`` or ``(Y, X, 3)``."""

    def __init__(self, source: SliceSource, z: int):
        self.source, self.z = source, z
        self.shape = (source.height, source.width) + ((3,) if source.rgb else ())
        self.ndim = len(self.shape)
        self.dtype = source.stack.dtype

    def __getitem__(self, idx):
        rows, cols = idx[:2] if isinstance(idx, tuple) else (idx, slice(None))
        src = self.source
        index = [slice(None)] * src.ndim
        index[src.axis] = self.z
        spatial = [i for i in range(src.ndim) if i != src.axis][:2]
        index[spatial[0]], index[spatial[1]] = rows, cols
        plane = src.stack[tuple(index)]
        if src.ndim == 4:
            plane = plane[..., src.channel] if src.channel is not None else plane[..., :3]
        return np.asarray(plane)


# ---------------------------------------------------------------------------------------
# Prompt derivation
# ---------------------------------------------------------------------------------------
def _ndi():
    """scipy.ndimage, imported on first use (keeps ``import`` and CLI start-up cheap)."""
    from scipy import ndimage

    return ndimage


def _margin(mask_shape_hw: tuple[int, int], settings: PropagationSettings) -> float:
    h, w = mask_shape_hw
    return max(settings.box_margin * max(h, w), settings.box_margin_px)


def _as_crop(mask) -> MaskCrop:
    return mask if isinstance(mask, MaskCrop) else MaskCrop(mask)


def _last_pixels(mask: MaskCrop) -> tuple[int, int, int, int] | None:
    """``(first_row, last_row, first_col, last_col)`` of a mask, inclusive (pixel centres:
    what box corners are made of); None when empty."""
    bb = mask.bbox
    return None if bb is None else (bb[0], bb[2] - 1, bb[1], bb[3] - 1)


def _deep_points(mask: np.ndarray, n: int, min_depth: float = 0.0) -> list[tuple[float, float]]:
    """Up to ``n`` points deep inside ``mask`` as ``(x, y)``: the distance-transform maximum,
    then maxima farthest from the points already chosen (spread over the object). Points
    less than ``min_depth`` pixels from the mask's edge are not returned."""
    if n <= 0:
        return []
    bb = _last_pixels(MaskCrop(mask))
    if bb is None:
        return []
    r0, r1, c0, c1 = bb
    crop = np.pad(mask[r0:r1 + 1, c0:c1 + 1], 1)
    dist = _ndi().distance_transform_edt(crop)
    points = []
    score = dist.copy()
    for _ in range(n):
        idx = int(np.argmax(score))
        if score.flat[idx] <= 0 or dist.flat[idx] < min_depth:
            break
        r, c = np.unravel_index(idx, score.shape)
        points.append((float(c - 1 + c0), float(r - 1 + r0)))
        if len(points) == n:
            break
        # Prefer deep points far from those chosen: weight depth by distance to them.
        yy, xx = np.mgrid[: score.shape[0], : score.shape[1]]
        d = np.sqrt((yy - r) ** 2 + (xx - c) ** 2)
        reach = max(2.0 * float(dist.max()), 1.0)
        score = score * np.clip(d / reach, 0.0, 1.0)
        score[dist < 0.5 * dist.max()] = 0
    return points


def derive_prompts(
    prev_mask: np.ndarray,
    settings: PropagationSettings = PropagationSettings(),
    neighbour_masks: Sequence[np.ndarray] = (),
) -> dict:
    """Prompts for the next slice from the previous slice's mask.

    Parameters
    ----------
    prev_mask : ndarray of bool, shape (Y, X), or MaskCrop
        Non-empty mask of the object on the previous slice.
    settings : PropagationSettings
    neighbour_masks : sequence of (ndarray of bool, shape (Y, X), or MaskCrop)
        Masks of other objects on the previous slice (for negative clicks).

    Returns
    -------
    dict
        ``points`` (ndarray (N, 2) as ``(x, y)`` slice pixels, or None), ``labels``
        (ndarray (N,) of 0/1, or None), ``box`` (``(x0, y0, x1, y1)`` or None) and
        ``margin`` (float, pixels), ready for :meth:`Predictor.predict`.
    """
    prev = _as_crop(prev_mask)
    h, w = prev.shape
    bb = _last_pixels(prev)
    if bb is None:
        raise InvalidInputError("cannot derive prompts from an empty mask")
    r0, r1, c0, c1 = bb
    margin = _margin((r1 - r0 + 1, c1 - c0 + 1), settings)
    box = None
    if settings.box_margin >= 0:
        box = (
            max(0.0, c0 - margin), max(0.0, r0 - margin),
            min(w - 1.0, c1 + margin), min(h - 1.0, r1 + margin),
        )
    # Without a box the clicks are the only prompt: always give at least the deepest point.
    min_depth = settings.click_min_depth if box is not None else 0.0
    pts = [(x + prev.col0, y + prev.row0, 1)
           for x, y in _deep_points(prev.crop, settings.positive_points, min_depth)]
    if settings.neighbour_negatives and neighbour_masks:
        bx0, by0, bx1, by1 = box if box is not None else (
            c0 - margin, r0 - margin, c1 + margin, r1 + margin)
        ys0, ys1 = int(max(0, math.floor(by0))), int(min(h, math.ceil(by1) + 1))
        xs0, xs1 = int(max(0, math.floor(bx0))), int(min(w, math.ceil(bx1) + 1))
        own = prev.window(ys0, xs0, ys1, xs1)
        for other in neighbour_masks:
            # the neighbour inside this object's box, outside the object (window only)
            inter = _as_crop(other).window(ys0, xs0, ys1, xs1) & ~own
            if inter.sum() < max(settings.min_area, 4):
                continue
            for x, y in _deep_points(inter, 1):
                pts.append((x + xs0, y + ys0, 0))
    if pts:
        points = np.array([(x, y) for x, y, _ in pts], dtype=np.float64)
        labels = np.array([lab for _, _, lab in pts], dtype=np.int64)
        if box is None and not (labels == 1).any():
            points = labels = None
    else:
        points = labels = None
    return {"points": points, "labels": labels, "box": box, "margin": margin}


def _overlaps(new: MaskCrop, prev: MaskCrop) -> tuple[float, float]:
    """``(IoU, intersection over the smaller area)`` of two masks of one slice."""
    inter = 0
    a, b = new.bbox, prev.bbox
    if a is not None and b is not None:
        win = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
        if win[2] > win[0] and win[3] > win[1]:
            inter = int(np.count_nonzero(new.window(*win) & prev.window(*win)))
    a, b = new.area, prev.area
    union = a + b - inter
    iou = inter / union if union else math.nan
    small = min(a, b)
    overlap = inter / small if small else 0.0
    return float(iou), float(overlap)


def _keep_touching(mask: MaskCrop, prev: MaskCrop, margin: float) -> MaskCrop:
    """Keep the connected parts of ``mask`` that touch ``prev`` grown by ``margin`` px."""
    lab, n = _ndi().label(mask.crop)
    if n <= 1:
        return mask
    r0, r1, c0, c1 = _last_pixels(prev)
    m = int(math.ceil(margin))
    h, w = mask.shape
    ys0, ys1 = max(0, r0 - m), min(h, r1 + m + 1)
    xs0, xs1 = max(0, c0 - m), min(w, c1 + m + 1)
    # Distance from prev within a window (outside the window is farther than the margin),
    # looked at where the window meets the mask's crop.
    grown = _ndi().distance_transform_edt(~prev.window(ys0, xs0, ys1, xs1)) <= margin
    mr0, mc0, mr1, mc1 = mask.bbox
    ir0, ic0, ir1, ic1 = max(ys0, mr0), max(xs0, mc0), min(ys1, mr1), min(xs1, mc1)
    keep = np.zeros(0, lab.dtype)
    if ir1 > ir0 and ic1 > ic0:
        sub = lab[ir0 - mr0:ir1 - mr0, ic0 - mc0:ic1 - mc0]
        keep = np.unique(sub[grown[ir0 - ys0:ir1 - ys0, ic0 - xs0:ic1 - xs0]])
        keep = keep[keep > 0]
    return MaskCrop(np.isin(lab, keep), mr0, mc0, mask.shape)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
@dataclass
class _Chain:
    object_id: object
    start: int
    direction: int
    bound: int              # last slice it may visit (inclusive)
    bound_reason: str       # reason when it reaches past ``bound``
    gap: bool               # between two annotated slices
    prev_mask: MaskCrop | None = None
    last: int = 0
    next_z: int = 0
    active: bool = True
    end: ChainEnd | None = None
    candidates: dict = field(default_factory=dict)  # z -> (record, mask)

    def __post_init__(self):
        self.last = self.start
        self.next_z = self.start + self.direction

    def finish(self, reason: str, at: int | None = None) -> None:
        self.active = False
        self.end = ChainEnd(self.object_id, self.start, self.direction, self.last, reason, at)


@dataclass
class _ObjectPlan:
    object_id: object
    annotations: dict            # all annotations of the object after the run
    evaluate: list               # annotation slices to compute now
    known: dict                  # annotation slice -> mask known from a previous result
    chains: list
    clear: tuple[int, int] | None = None  # slice range to clear in the base result
    drop_ends: Callable | None = None


class _Embeddings:
    """Lazy per-slice :class:`~..engine.slice_predictor.SlicePredictor` s (a whole-slice
    embedding, or tiles for large slices): the run's small LRU memo, then the predictor
    (and its cache). Counts what the encoder really computed."""

    def __init__(self, predictor, source: SliceSource, mapping: IntensityMapping,
                 memo_slices: int, tiles: bool = False, tile_size: int | None = None):
        self.predictor = predictor
        self.source = source
        self.mapping = mapping
        self.tiles = tiles
        self.tile_size = tile_size
        self.tiled: list = []  # the TiledPredictors made, for the statistics
        self.memo: OrderedDict[int, object] = OrderedDict()
        self.memo_slices = max(0, int(memo_slices))
        self.embeddings = 0
        self.encoded = 0
        #: onnxruntime RunOptions passed to every encoder run (``terminate`` stops it).
        self.run_options = None

    def get(self, z: int):
        emb = self.memo.get(z)
        if emb is not None:
            self.memo.move_to_end(z)
            return emb
        if self.tiles:
            # Large slices: full-resolution windows around the object, encoded when a
            # prediction needs them (the object's tiles only), read lazily from the stack.
            from ..engine.tiling import TiledPredictor

            emb = TiledPredictor(self.predictor, self.source.lazy(z), self.mapping,
                                 tile_size=self.tile_size, rgb=self.source.rgb)
            self.tiled.append(emb)
        else:
            emb = self._embed(z)
        if self.memo_slices:
            self.memo[z] = emb
            while len(self.memo) > self.memo_slices:
                self.memo.popitem(last=False)
        return emb

    def counts(self) -> tuple[int, int]:
        """``(embeddings used, embeddings the encoder computed)``."""
        if self.tiles:
            return (sum(len(t.windows) for t in self.tiled),
                    sum(len(t.encoded) for t in self.tiled))
        return self.embeddings, self.encoded

    def _embed(self, z: int):
        cache = self.predictor.cache
        before = cache.stats["misses"] if cache is not None and hasattr(cache, "stats") else None
        emb = self.predictor.embed(self.source[z], self.mapping, rgb=self.source.rgb,
                                   run_options=self.run_options)
        self.embeddings += 1
        if cache is None:
            self.encoded += 1
        elif before is not None:
            self.encoded += int(cache.stats["misses"] > before)
        return EmbeddedSlice(self.predictor, emb)


@dataclass(frozen=True)
class _Predicted:
    """A prediction as the run works with it: the mask as a crop, and the score."""

    mask: MaskCrop
    score: float


class PropagationRun:
    """One propagation run, iterable slice by slice.

    Iterating yields a :class:`PropagationStep` after every processed slice, so that a GUI
    worker (e.g. napari's ``thread_worker``) can report progress and preview masks, and
    abort by simply stopping the iteration (``close()``): the result is then the partial,
    consistent result of the slices done so far. :meth:`result` can be called at any time.

    Create runs with :meth:`Propagator.start` or :meth:`Propagator.start_repropagation`.
    """

    def __init__(self, propagator: Propagator, plans: list, z_range: tuple[int, int],
                 base: PropagationResult | None):
        self._p = propagator
        self._plans = plans
        self.z_range = z_range
        self._base = base
        self._emb = _Embeddings(propagator.predictor, propagator.source, propagator.mapping,
                                propagator.settings.memo_slices, propagator.tiled,
                                propagator.tile_size)
        from ..engine.cancel import CancelToken

        #: Cancelled by :meth:`cancel`; it terminates a running encoder.
        self.token = CancelToken()
        self._emb.run_options = self.token.run_options()
        self._decoder_calls = 0
        #: Slices the model could not take, with the reason (their chains ended there).
        self.unusable: dict[int, str] = {}
        self._annot_masks: dict = {}   # (object_id, z) -> (record, mask)
        self._cancelled = False
        self._finished = False
        self._started = False
        self._seeded = False
        self._result: PropagationResult | None = None
        self.total = self._count_total()
        self.done = 0

    # -- public -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PropagationStep]:
        if self._started:
            raise RuntimeError("a PropagationRun can be iterated only once")
        self._started = True
        try:
            yield from self._steps()
        except GeneratorExit:
            self._cancel()
            raise
        except Exception:
            if not self._cancelled:
                raise
            self._cancel()  # cancel() terminated an encoder run: keep the slices done
        finally:
            if not self._finished:
                self._cancel()

    def cancel(self) -> None:
        """Stop the run: an encoder run in progress is terminated, and the run ends before
        the next slice (also: stop iterating, or ``close()``). Thread-safe."""
        self._cancelled = True
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> PropagationResult:
        """The result so far: complete once iteration has finished; before that a consistent
        snapshot of the slices done (after :meth:`cancel` the unfinished directions end with
        ``'cancelled'``, so a GUI can commit it at once without waiting for the worker)."""
        if self._result is not None and self._finished:
            return self._result
        return self._build_result()

    def run(self, progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None) -> PropagationResult:
        """Run to the end (or until ``should_cancel()`` returns True) and return the result.

        Parameters
        ----------
        progress : callable ``(done, total, z)``, optional
            Called after every slice; ``z`` is the slice just processed (None in the final
            call, where ``done == total``).
        should_cancel : callable ``() -> bool``, optional
            Polled before every slice (before its embedding is computed).
        """
        self._should_cancel = should_cancel
        gen = iter(self)
        try:
            for step in gen:
                if progress is not None:
                    progress(step.done, step.total, step.z)
        finally:
            gen.close()
        if progress is not None:
            progress(self.total, self.total, None)
        return self.result()

    # -- internals ----------------------------------------------------------------------
    _should_cancel: Callable[[], bool] | None = None

    def _count_total(self) -> int:
        zs_up, zs_down, ann = set(), set(), set()
        for plan in self._plans:
            ann.update(z for z in plan.evaluate if not plan.annotations[z].is_mask)
            for ch in plan.chains:
                rng = (range(ch.start + 1, ch.bound + 1) if ch.direction > 0
                       else range(ch.bound, ch.start))
                (zs_up if ch.direction > 0 else zs_down).update(rng)
        return len(ann) + len(zs_up) + len(zs_down)

    def _check_cancel(self) -> bool:
        if not self._cancelled and self._should_cancel is not None and self._should_cancel():
            self._cancelled = True
        return self._cancelled

    def _cancel(self) -> None:
        for plan in self._plans:
            for ch in plan.chains:
                if ch.active:
                    self._cancelled = True
                    ch.finish("cancelled")
        if not self._seeded:
            self._cancelled = True
        self._finished = True
        self._result = self._build_result()

    def _predict(self, sp, **prompts) -> _Predicted:
        """One mask from the slice's :class:`~..engine.slice_predictor.SlicePredictor`
        (whole-slice embedding or tiles: the same call)."""
        self._decoder_calls += 1
        r = sp.predict_slice(points=prompts.get("points"), labels=prompts.get("labels"),
                             box=prompts.get("box"), run_options=self._emb.run_options)
        return _Predicted(r.mask, r.score)

    def _steps(self) -> Iterator[PropagationStep]:
        settings = self._p.settings
        # 1. Annotated slices (ascending z, one embedding per slice for all objects).
        by_z: dict[int, list] = {}
        for plan in self._plans:
            for z in plan.evaluate:
                by_z.setdefault(z, []).append(plan)
        for z in sorted(by_z):
            updates = []
            needs_model = any(not p.annotations[z].is_mask for p in by_z[z])
            if needs_model and self._check_cancel():
                break
            emb = self._emb.get(z) if needs_model else None
            for plan in by_z[z]:
                ann = plan.annotations[z]
                if ann.is_mask:
                    mask, score = _as_crop(ann.mask), math.nan
                else:
                    pred = self._predict(emb, points=ann.points, labels=ann.labels, box=ann.box)
                    mask, score = pred.mask, pred.score
                rec = SliceRecord(plan.object_id, z, "annotation", z, 0, True, score, mask.area)
                self._annot_masks[(plan.object_id, z)] = (rec, mask)
                updates.append((plan.object_id, rec, mask))
            if needs_model:
                self.done += 1
                yield PropagationStep(self.done, self.total, z, tuple(updates))
        if self._cancelled:
            self._cancel()
            return
        # Seed the chains with their starting masks.
        self._seeded = True
        for plan in self._plans:
            for ch in plan.chains:
                if (plan.object_id, ch.start) in self._annot_masks:
                    mask = self._annot_masks[(plan.object_id, ch.start)][1]
                else:
                    mask = plan.known.get(ch.start)
                ch.last = ch.start
                ch.next_z = ch.start + ch.direction
                if mask is None or mask.area < settings.min_area:
                    ch.finish("vanished", ch.start)
                    continue
                ch.prev_mask = mask
                if (ch.direction > 0 and ch.next_z > ch.bound) or (
                        ch.direction < 0 and ch.next_z < ch.bound):
                    ch.finish(ch.bound_reason, ch.bound + ch.direction
                              if ch.bound_reason == "met other annotation" else None)
        # 2. Up sweep, then 3. down sweep.
        chains = [ch for plan in self._plans for ch in plan.chains]
        lo, hi = self.z_range
        for direction, order in ((+1, range(lo, hi + 1)), (-1, range(hi, lo - 1, -1))):
            for z in order:
                todo = [ch for ch in chains
                        if ch.active and ch.direction == direction and ch.next_z == z]
                if not todo:
                    continue
                if self._check_cancel():
                    self._cancel()
                    return
                try:
                    emb = self._emb.get(z)
                except InvalidInputError as exc:  # this slice only: its chains end here
                    self.unusable[z] = str(exc)
                    _log.warning("propagation: slice %d cannot be used (%s); the chains "
                                 "reaching it end there", z, exc)
                    updates = [self._unusable(ch, z) for ch in todo]
                    self.done += 1
                    yield PropagationStep(self.done, self.total, z, tuple(updates))
                    continue
                updates = []
                for ch in todo:
                    neighbours = []
                    if settings.neighbour_negatives:
                        neighbours = self._neighbour_masks(ch, z - direction)
                    rec, mask = self._step(ch, z, emb, neighbours)
                    updates.append((ch.object_id, rec, mask))
                self.done += 1
                yield PropagationStep(self.done, self.total, z, tuple(updates))
        self._finished = True
        self._result = self._build_result()

    def _unusable(self, ch: _Chain, z: int) -> tuple:
        """End ``ch`` at slice ``z``, which the model cannot take (the rest of the run goes
        on); returns the step's update."""
        rec = SliceRecord(ch.object_id, z, "propagated", ch.start, ch.direction, False,
                          math.nan, 0, reason="unusable slice")
        ch.candidates[z] = (rec, None)
        ch.finish("unusable slice", z)
        return ch.object_id, rec, None

    def _neighbour_masks(self, chain: _Chain, z: int) -> list:
        """Masks of the run's other objects on slice ``z`` (annotations or candidates)."""
        out = []
        for plan in self._plans:
            if plan.object_id == chain.object_id:
                continue
            found = None
            if (plan.object_id, z) in self._annot_masks:
                found = self._annot_masks[(plan.object_id, z)][1]
            else:
                for ch in plan.chains:
                    cand = ch.candidates.get(z)
                    if cand is not None and cand[1] is not None:
                        found = cand[1]
                        break
            if found is not None:
                out.append(found)
        return out

    def _step(self, ch: _Chain, z: int, emb, neighbours) -> tuple[SliceRecord, MaskCrop | None]:
        s = self._p.settings
        prompts = derive_prompts(ch.prev_mask, s, neighbours)
        margin = prompts.pop("margin")
        pred = self._predict(emb, **prompts)
        mask = pred.mask
        if s.keep_connected and mask.any():
            mask = _keep_touching(mask, ch.prev_mask, margin)
        area = mask.area
        prev_area = ch.prev_mask.area
        iou, overlap = _overlaps(mask, ch.prev_mask)
        score = float(pred.score)
        reason = None
        if area < s.min_area:
            reason = "vanished"
        elif not score >= s.min_score:
            reason = "low score"
        elif overlap < s.min_overlap:
            reason = "overlap collapsed"
        elif area > s.max_growth * prev_area + s.growth_slack:
            reason = "area jump"
        rec = SliceRecord(ch.object_id, z, "propagated", ch.start, ch.direction,
                          reason is None, score, area, iou, overlap, reason)
        if reason is not None:
            ch.candidates[z] = (rec, None)
            ch.finish(reason, z)
            return rec, None
        ch.candidates[z] = (rec, mask)
        ch.prev_mask = mask
        ch.last = z
        ch.next_z = z + ch.direction
        if (ch.direction > 0 and ch.next_z > ch.bound) or (
                ch.direction < 0 and ch.next_z < ch.bound):
            ch.finish(ch.bound_reason,
                      ch.next_z if ch.bound_reason == "met other annotation" else None)
        return rec, mask

    def _build_result(self) -> PropagationResult:
        p = self._p
        gap_fill = p.settings.gap_fill
        if self._base is not None:
            objects = {oid: obj.copy() for oid, obj in self._base.objects.items()}
        else:
            objects = {}
        for plan in self._plans:
            obj = objects.get(plan.object_id)
            if obj is None:
                obj = objects[plan.object_id] = ObjectResult(plan.object_id, p.source.shape)
            if plan.clear is not None:
                lo, hi = plan.clear
                for z in list(obj.records):
                    if lo <= z <= hi:
                        obj.records.pop(z)
                        obj._set(z, None)
                if plan.drop_ends is not None:
                    obj.ends = [e for e in obj.ends if not plan.drop_ends(e)]
            obj.annotations = dict(plan.annotations)
            for z in plan.evaluate:
                if (plan.object_id, z) in self._annot_masks:
                    rec, mask = self._annot_masks[(plan.object_id, z)]
                    obj.records[z] = rec
                    obj._set(z, mask)
            # Candidates from chains: gap slices may have two.
            cands: dict[int, list] = {}
            for ch in plan.chains:
                for z, (rec, mask) in ch.candidates.items():
                    cands.setdefault(z, []).append((rec, mask))
                if ch.end is not None:
                    obj.ends.append(ch.end)
                elif self._cancelled:  # a snapshot after cancel(), before the run stopped
                    obj.ends.append(ChainEnd(ch.object_id, ch.start, ch.direction, ch.last,
                                             "cancelled"))
            for z, items in cands.items():
                accepted = [(r, m) for r, m in items if r.accepted]
                if not accepted:
                    rec, _ = items[0]
                    if z not in obj.records:
                        obj.records[z] = rec
                    continue
                if len(accepted) == 1:
                    obj.records[z], mask = accepted[0]
                    obj._set(z, mask)
                    continue
                if gap_fill == "best":
                    key = (lambda rm: (-_nan_low(rm[0].score), abs(rm[0].z - rm[0].origin),
                                       rm[0].origin))
                else:
                    key = (lambda rm: (abs(rm[0].z - rm[0].origin), -_nan_low(rm[0].score),
                                       rm[0].origin))
                accepted.sort(key=key)
                (rec, mask), (alt, _) = accepted[0], accepted[1]
                obj.records[z] = replace(rec, alternative_score=alt.score)
                obj._set(z, mask)
            obj.records = dict(sorted(obj.records.items()))
        embeddings, encoded = self._emb.counts()
        stats = {"embeddings": embeddings, "encoded": encoded,
                 "decoder_calls": self._decoder_calls}
        return PropagationResult(
            shape=p.source.shape, z_range=self.z_range, objects=objects, mapping=p.mapping,
            cancelled=self._cancelled, stats=stats, settings=p.settings,
        )


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


# ---------------------------------------------------------------------------------------
# The propagator (one stack, one predictor, one mapping, many runs)
# ---------------------------------------------------------------------------------------
def _as_annotations(object_id, value) -> list[SliceAnnotation]:
    if isinstance(value, SliceAnnotation):
        value = [value]
    anns = list(value)
    if not anns:
        raise InvalidInputError(f"object {object_id}: no annotated slice")
    for a in anns:
        if not isinstance(a, SliceAnnotation):
            raise InvalidInputError(
                f"object {object_id}: annotations must be SliceAnnotation, got {type(a).__name__}")
    zs = [a.z for a in anns]
    if len(set(zs)) != len(zs):
        raise InvalidInputError(f"object {object_id}: two annotations on the same slice")
    return sorted(anns, key=lambda a: a.z)


class Propagator:
    """Propagation over one stack with one predictor; reusable for many runs.

    Parameters
    ----------
    predictor : Predictor
        Its cache (``Predictor(model, cache=...)``) stores the embeddings: a second run over
        the same stack with the same mapping re-encodes nothing.
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C) (slice axis at ``axis``)
        See :class:`SliceSource`.
    axis : int
        Slice axis: Z for a z-stack, T for a 2D+t movie. Default 0.
    channel : int, optional
        Channel of a ``(Z, Y, X, C)`` stack (a C of 3 or 4 is RGB(A) otherwise).
    mapping : IntensityMapping, optional
        One mapping for every slice; default the ``"auto"`` :func:`stack_mapping` of the
        whole stack (uint8 as is, else 0.5-99.8 percentiles sampled over the stack).
    settings : PropagationSettings, optional
    tiles : {"auto", "on", "off"}
        Predict on full-resolution windows around the object (:mod:`napari_edgesam.engine.
        tiling`) instead of whole slices shrunk to 1024 pixels; ``"auto"``: for slices over
        2048 pixels. Only the tiles the object occupies are read and encoded.
    tile_size : int, optional
        Tile side in pixels (default 1024).

    Examples
    --------
    >>> prop = Propagator(predictor, stack)                                  # doctest: +SKIP
    >>> res = prop.run({1: SliceAnnotation(30, points=[(120, 80)])})          # doctest: +SKIP
    >>> res.mask(1).shape == stack.shape                                     # doctest: +SKIP
    True
    """

    def __init__(self, predictor, stack, *, axis: int = 0, channel: int | None = None,
                 mapping: IntensityMapping | None = None,
                 settings: PropagationSettings | None = None,
                 tiles: str = "auto", tile_size: int | None = None):
        from ..engine.tiling import needs_tiling

        self.predictor = predictor
        self.source = SliceSource(stack, axis=axis, channel=channel)
        self.settings = settings or PropagationSettings()
        if tiles not in ("auto", "on", "off"):
            raise InvalidInputError(f"tiles must be 'auto', 'on' or 'off', got {tiles!r}")
        self.tiled = tiles == "on" or (
            tiles == "auto" and needs_tiling((self.source.height, self.source.width)))
        self.tile_size = tile_size
        self.mapping = mapping if mapping is not None else self.source.default_mapping()

    # -- helpers ------------------------------------------------------------------------
    def _z_range(self, z_range) -> tuple[int, int]:
        n = self.source.n
        if z_range is None:
            return 0, n - 1
        lo, hi = (int(v) for v in z_range)
        if lo > hi:
            lo, hi = hi, lo
        if lo < 0 or hi > n - 1:
            raise InvalidInputError(f"z-range {lo}..{hi} is outside the stack's 0..{n - 1}")
        return lo, hi

    def _outward_reason(self, bound: int) -> str:
        return "stack end" if bound in (0, self.source.n - 1) else "z-limit"

    def _chains(self, oid, zs: list[int], z_range, only_around: int | None = None) -> list:
        lo, hi = z_range
        chains = []
        segs = []
        if only_around is None:
            segs.append((None, zs[0]))
            segs.extend(zip(zs[:-1], zs[1:], strict=True))
            segs.append((zs[-1], None))
        else:
            i = zs.index(only_around)
            segs.append((zs[i - 1] if i > 0 else None, only_around))
            segs.append((only_around, zs[i + 1] if i + 1 < len(zs) else None))
        for a, b in segs:
            if a is None:
                chains.append(_Chain(oid, b, -1, lo, self._outward_reason(lo), False))
            elif b is None:
                chains.append(_Chain(oid, a, +1, hi, self._outward_reason(hi), False))
            elif b - a > 1:
                chains.append(_Chain(oid, a, +1, b - 1, "met other annotation", True))
                chains.append(_Chain(oid, b, -1, a + 1, "met other annotation", True))
            else:  # adjacent annotated slices: nothing between them
                chains.append(_Chain(oid, a, +1, a, "met other annotation", True))
                chains.append(_Chain(oid, b, -1, b, "met other annotation", True))
        return chains

    def _check_annotations(self, oid, anns, z_range):
        lo, hi = z_range
        for a in anns:
            if not lo <= a.z <= hi:
                raise InvalidInputError(
                    f"object {oid}: annotated slice {a.z} is outside the z-range {lo}..{hi}")
            if a.is_mask and a.mask.shape != self.source.shape[1:]:
                raise InvalidInputError(
                    f"object {oid}: the mask on slice {a.z} has shape {a.mask.shape}; the "
                    f"slices are {self.source.shape[1:]} (Y, X)")

    # -- runs ---------------------------------------------------------------------------
    def start(self, objects, *, z_range=None) -> PropagationRun:
        """Prepare a run (nothing is computed until it is iterated or :meth:`run`).

        Parameters
        ----------
        objects : mapping or sequence
            ``{object_id: annotations}`` where annotations is a :class:`SliceAnnotation` or
            a list of them (one per slice); a sequence gives ids 1, 2, ...
        z_range : (int, int), optional
            Inclusive slice limits; default the whole stack.
        """
        zr = self._z_range(z_range)
        if not isinstance(objects, Mapping):
            objects = {i: v for i, v in enumerate(objects, start=1)}
        if not objects:
            raise InvalidInputError("no object to propagate")
        plans = []
        for oid, value in objects.items():
            anns = _as_annotations(oid, value)
            self._check_annotations(oid, anns, zr)
            zs = [a.z for a in anns]
            plans.append(_ObjectPlan(oid, {a.z: a for a in anns}, zs, {},
                                     self._chains(oid, zs, zr)))
        return PropagationRun(self, plans, zr, None)

    def run(self, objects, *, z_range=None, progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None) -> PropagationResult:
        """Propagate ``objects`` through the stack; see :meth:`start` and
        :meth:`PropagationRun.run`."""
        return self.start(objects, z_range=z_range).run(progress, should_cancel)

    def start_repropagation(self, previous: PropagationResult, object_id,
                            annotation: SliceAnnotation) -> PropagationRun:
        """Prepare a run that applies one corrected slice to a previous result.

        Only the slices between the annotated slices on either side of ``annotation.z``
        (or the z-range ends where there is none) are recomputed, only for ``object_id``;
        everything else is copied from ``previous``.

        Parameters
        ----------
        previous : PropagationResult
            A result of this propagator (same stack and mapping).
        object_id : hashable
            The object corrected (a new id adds an object).
        annotation : SliceAnnotation
            The corrected slice: a mask (e.g. the user's edited labels) or new prompts.
        """
        if previous.shape != self.source.shape:
            raise InvalidInputError("the previous result is for a stack of another shape")
        zr = previous.z_range
        self._check_annotations(object_id, [annotation], zr)
        obj = previous.objects.get(object_id)
        anns = dict(obj.annotations) if obj is not None else {}
        anns[annotation.z] = annotation
        zs = sorted(anns)
        z = annotation.z
        i = zs.index(z)
        below = zs[i - 1] if i > 0 else None
        above = zs[i + 1] if i + 1 < len(zs) else None
        clear = ((below + 1) if below is not None else zr[0],
                 (above - 1) if above is not None else zr[1])
        known = {}
        for nz in (below, above):
            if nz is not None and obj is not None:
                known[nz] = obj.slice_crop(nz)

        def drop(e: ChainEnd, below=below, above=above, z=z) -> bool:
            # The chains whose slices lie in the cleared range: those leaving the annotated
            # slices on either side towards z (gap or outward), and any from z itself.
            return ((e.start == z) or (below is not None and e.start == below and e.direction > 0)
                    or (above is not None and e.start == above and e.direction < 0))

        plan = _ObjectPlan(object_id, dict(sorted(anns.items())), [z], known,
                           self._chains(object_id, zs, zr, only_around=z), clear, drop)
        return PropagationRun(self, [plan], zr, previous)

    def repropagate(self, previous: PropagationResult, object_id, annotation: SliceAnnotation,
                    *, progress: ProgressCallback | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> PropagationResult:
        """Apply one corrected slice and recompute only the affected range; see
        :meth:`start_repropagation`."""
        return self.start_repropagation(previous, object_id, annotation).run(
            progress, should_cancel)


def propagate(predictor, stack, objects, *, axis: int = 0, channel: int | None = None,
              mapping: IntensityMapping | None = None, z_range=None,
              settings: PropagationSettings | None = None,
              progress: ProgressCallback | None = None,
              should_cancel: Callable[[], bool] | None = None,
              tiles: str = "auto", tile_size: int | None = None) -> PropagationResult:
    """Propagate objects through a stack in one call.

    Parameters
    ----------
    predictor : Predictor
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C)
        Slice axis at ``axis`` (0 by default; time for 2D+t).
    objects : mapping or sequence
        ``{object_id: SliceAnnotation or [SliceAnnotation, ...]}``.
    axis, channel, mapping, settings, tiles, tile_size
        See :class:`Propagator`.
    z_range : (int, int), optional
        Inclusive slice limits.
    progress : callable ``(done, total, z)``, optional
    should_cancel : callable ``() -> bool``, optional

    Returns
    -------
    PropagationResult
        ``result.mask(object_id)`` is bool ``(Z, Y, X)`` (slice axis first).
    """
    prop = Propagator(predictor, stack, axis=axis, channel=channel, mapping=mapping,
                      settings=settings, tiles=tiles, tile_size=tile_size)
    return prop.run(objects, z_range=z_range, progress=progress, should_cancel=should_cancel)
