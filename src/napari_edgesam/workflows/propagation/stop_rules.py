"""The stop rules: when a direction of propagation ends, and why.

Every reason a chain of propagated slices can end is decided here (the run only asks):

- :func:`stop_reason`: the *rejecting* rules on one propagated slice, from the previous
  slice's mask and the prediction (``'vanished'``, ``'low score'``, ``'overlap collapsed'``,
  ``'area jump'``, in that order);
- :func:`seed_reason`: a chain whose starting (annotated) mask is empty ends at once
  (``'vanished'``);
- :func:`outward_reason` and :func:`bound_end`: the *bounds*, which end a chain without
  rejecting anything (``'stack end'``, ``'z-limit'``, ``'met other annotation'``).

Two reasons come from outside the masks and are set by the run itself: ``'cancelled'``
(the run was cancelled) and ``'unusable slice'`` (the model cannot take the slice, e.g. no
finite values; that slice is rejected).

Masks are bool ``(Y, X)`` arrays of one slice indexed ``[row, col]``, or
:class:`~napari_edgesam.engine.transforms.MaskCrop` s of them; slice indices ``z`` are along
the slice axis, from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...engine.mask_crop import MaskCrop, mask_iou, overlap_coefficient
from .settings import PropagationSettings

__all__ = [
    "REJECTING_REASONS",
    "STOP_REASONS",
    "PredictedMask",
    "bound_end",
    "outward_reason",
    "overlaps",
    "seed_reason",
    "stop_reason",
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


@dataclass(frozen=True)
class PredictedMask:
    """A prediction on one slice as the stop rules see it.

    Attributes
    ----------
    mask : MaskCrop or ndarray of bool, shape (Y, X)
        The predicted mask (after :func:`~.prompts.keep_touching`), slice pixels
        ``[row, col]``.
    score : float
        Its stability score (NaN when undefined).
    """

    mask: MaskCrop
    score: float


def _crop(mask) -> MaskCrop:
    return mask if isinstance(mask, MaskCrop) else MaskCrop(np.asarray(mask, dtype=bool))


def overlaps(new, prev) -> tuple[float, float]:
    """``(IoU, overlap coefficient)`` of two masks of one slice (the shared
    :func:`~napari_edgesam.engine.mask_crop.mask_iou` and
    :func:`~napari_edgesam.engine.mask_crop.overlap_coefficient`).

    Parameters
    ----------
    new, prev : MaskCrop or ndarray of bool, shape (Y, X)
        Two masks of the same slice (same ``(Y, X)``).

    Returns
    -------
    iou : float
        ``|new & prev| / |new | prev|``; NaN when both are empty.
    overlap : float
        ``|new & prev| / min(|new|, |prev|)``; 0.0 when either is empty.
    """
    return mask_iou(new, prev, empty=math.nan), overlap_coefficient(new, prev)


def stop_reason(previous, predicted: PredictedMask, settings: PropagationSettings, *,
                overlap: float | None = None) -> str | None:
    """Whether a propagated slice is rejected, and why (a pure function).

    The rules are checked in this order; the first that fires is the reason (so a slice that
    both scores low and jumps in area stops for ``'low score'``). With ``A = |predicted|``,
    ``P = |previous|`` (pixels), ``s`` the score and ``settings`` abbreviated:

    1. ``'vanished'``: ``A < min_area``;
    2. ``'low score'``: ``not s >= min_score`` (also when ``s`` is NaN);
    3. ``'overlap collapsed'``: ``|predicted & previous| / min(A, P) < min_overlap`` (the
       overlap coefficient, 0 when either mask is empty: 1 when one mask contains the other,
       so an object shrinking towards its end is not penalised);
    4. ``'area jump'``: ``A > max_growth * P + growth_slack``.

    Parameters
    ----------
    previous : MaskCrop or ndarray of bool, shape (Y, X)
        The object's accepted mask on the previous slice of the chain.
    predicted : PredictedMask
        The (trimmed) prediction on this slice, same ``(Y, X)``, and its score.
    settings : PropagationSettings
        ``min_area``, ``min_score``, ``min_overlap``, ``max_growth``, ``growth_slack``.
    overlap : float, optional
        The overlap coefficient of the two masks when the caller has already computed it
        (:func:`overlaps`; the run records it); computed here otherwise.

    Returns
    -------
    str or None
        One of ``'vanished'``, ``'low score'``, ``'overlap collapsed'``, ``'area jump'``
        (all in :data:`REJECTING_REASONS`), or None when the slice is accepted.

    Examples
    --------
    A 10 x 10 square followed by one four times its area on the next slice:

    >>> import numpy as np
    >>> from napari_edgesam.workflows.propagation import PropagationSettings
    >>> prev = np.zeros((64, 64), bool); prev[10:20, 10:20] = True
    >>> grown = np.zeros((64, 64), bool); grown[10:30, 10:30] = True
    >>> settings = PropagationSettings()
    >>> stop_reason(prev, PredictedMask(prev, 0.95), settings) is None
    True
    >>> stop_reason(prev, PredictedMask(grown, 0.95), settings)
    'area jump'
    >>> stop_reason(prev, PredictedMask(grown, 0.2), settings)  # the earlier rule wins
    'low score'
    """
    new, prev = _crop(predicted.mask), _crop(previous)
    area = new.area
    score = float(predicted.score)
    if area < settings.min_area:
        return "vanished"
    if not score >= settings.min_score:
        return "low score"
    if overlap is None:
        overlap = overlaps(new, prev)[1]
    if overlap < settings.min_overlap:
        return "overlap collapsed"
    if area > settings.max_growth * prev.area + settings.growth_slack:
        return "area jump"
    return None


def seed_reason(mask, settings: PropagationSettings) -> str | None:
    """Why a chain cannot start from its annotated slice's mask: ``'vanished'`` when the
    mask is missing (None) or has fewer than ``settings.min_area`` pixels, else None.

    Parameters
    ----------
    mask : MaskCrop or ndarray of bool, shape (Y, X), or None
    settings : PropagationSettings
    """
    if mask is None or _crop(mask).area < settings.min_area:
        return "vanished"
    return None


def outward_reason(bound: int, n_slices: int) -> str:
    """The reason a chain walking out of the annotated slices ends at slice ``bound``:
    ``'stack end'`` when ``bound`` is the first or last slice of a stack of ``n_slices``,
    else ``'z-limit'`` (the user's z-range ends inside the stack).

    (Chains filling the gap between two annotated slices end with
    ``'met other annotation'``.)
    """
    return "stack end" if bound in (0, n_slices - 1) else "z-limit"


def bound_end(next_z: int, direction: int, bound: int,
              bound_reason: str) -> tuple[str, int | None] | None:
    """Whether a chain about to visit ``next_z`` has passed its last slice ``bound``.

    Parameters
    ----------
    next_z : int
        The slice the chain would visit next.
    direction : int
        +1 (increasing z) or -1.
    bound : int
        The last slice the chain may visit (inclusive).
    bound_reason : str
        ``'stack end'``, ``'z-limit'`` (from :func:`outward_reason`) or
        ``'met other annotation'``.

    Returns
    -------
    (str, int or None) or None
        None while ``next_z`` is within the bound; else ``(bound_reason, at)`` where ``at``
        is ``next_z`` (the other annotated slice) for ``'met other annotation'``, else None.
    """
    if (direction > 0 and next_z > bound) or (direction < 0 and next_z < bound):
        return bound_reason, (next_z if bound_reason == "met other annotation" else None)
    return None
