"""Per-slice records of a propagation run: :class:`SliceRecord` (what happened to one object
on one slice), :class:`ChainEnd` (how one direction ended) and :class:`PropagationStep` (the
progress a run yields after every slice)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ChainEnd", "PropagationStep", "SliceRecord"]


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
        One of :data:`~.stop_rules.STOP_REASONS`.
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

