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
The step is accepted unless a stop rule fires (:func:`~.stop_rules.stop_reason`).

Embeddings are computed lazily, once per slice for all objects of a run, through the
predictor's :class:`~napari_edgesam.engine.cache.EmbeddingCache`; one stack-wide intensity
mapping is used for every slice.

Modules (one concept each; everything public is re-exported here)
-----------------------------------------------------------------
- :mod:`.settings`: :class:`PropagationSettings`;
- :mod:`.annotation`: :class:`SliceAnnotation`;
- :mod:`.records`: :class:`SliceRecord`, :class:`ChainEnd`, :class:`PropagationStep`;
- :mod:`.result`: :class:`ObjectResult`, :class:`PropagationResult`;
- :mod:`.slice_source`: :class:`SliceSource` (reading slices lazily);
- :mod:`.prompts`: :func:`derive_prompts` (the next slice's prompts from the previous mask);
- :mod:`.stop_rules`: :func:`stop_reason` and the bounds, :data:`STOP_REASONS`,
  :data:`REJECTING_REASONS`;
- :mod:`.embeddings`: the run's lazy per-slice embeddings;
- :mod:`.run`: :class:`PropagationRun` (steps slice by slice);
- :mod:`.planner`: :class:`Propagator` (plans runs) and :func:`propagate`.
"""

from __future__ import annotations

from .annotation import SliceAnnotation
from .planner import Propagator, propagate
from .prompts import derive_prompts
from .records import ChainEnd, PropagationStep, SliceRecord
from .result import ObjectResult, PropagationResult
from .run import ProgressCallback, PropagationRun
from .settings import PropagationSettings
from .slice_source import SliceSource
from .stop_rules import REJECTING_REASONS, STOP_REASONS, PredictedMask, stop_reason

__all__ = [
    "REJECTING_REASONS",
    "STOP_REASONS",
    "ChainEnd",
    "ObjectResult",
    "PredictedMask",
    "ProgressCallback",
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
    "stop_reason",
]
