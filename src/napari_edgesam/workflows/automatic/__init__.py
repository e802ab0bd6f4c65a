"""Automatic instance segmentation without clicks: seeds -> decoder per seed -> labels.

EdgeSAM's decoder takes one prompt set per call (tens of milliseconds with the published
model), so a dense point grid like segment-anything's automatic mask generator costs about a
minute per slice. The default here places *seeds by detection* instead: local maxima of the
smoothed image inside the foreground, at most one per expected object radius, so the decoder
runs about once per object. A regular grid stays available (``seeds="grid"``).

Pipeline for one 2D slice (:func:`segment_slice`, module :mod:`.driver`):

1. Map the slice to the model's 0..255 scale (:class:`~napari_edgesam.engine.IntensityMapping`,
   stack-wide for stacks) and embed it once (:meth:`Predictor.embed`); the polarity-adjusted
   signal and its foreground threshold come from :mod:`.foreground`.
2. Seeds (:func:`detect_seeds` or :func:`grid_seeds`, module :mod:`.seeds`), as
   ``(x, y) = (column, row)`` pixels; slices larger than the model's frame are detected on a
   block-averaged copy as coarse as the object size allows (:func:`seed_factor`).
3. One decoder run per seed (one positive click), all sharing the embedding (module
   :mod:`.prompting`); the mask stays as low-res logits until a filter needs pixels, and is
   upsampled only inside its box (module :mod:`.lowres`). A mask that also covers seeds
   lying farther than ``0.75 * object_size`` away (probably other objects) is predicted once
   more with those seeds as negative clicks. A seed already covered by an accepted mask
   whose seed lies within that distance (a second seed of the same object) is skipped.
4. Per mask: keep the connected component under the seed, fill small holes, then filter by
   stability score, area and foreground fraction (also :mod:`.prompting`).
5. Overlaps (:func:`resolve_overlaps`, module :mod:`.overlaps`): non-maximum suppression on
   mask IoU in score order, then painting in score order with no overlaps; a mask left with
   too little of itself is dropped. Instance ids are 1..n in painting order.

For stacks (:func:`segment_stack`) every slice is segmented in 2D and instances are linked
between neighbouring slices by mask IoU (:func:`link_labels`, module :mod:`.linking`),
streaming, so that each 3D object carries one id. Propagation-based linking (prompting slice
``z + 1`` with slice ``z``'s objects, :mod:`napari_edgesam.workflows.propagation`) can
replace :func:`link_labels`; the IoU linking needs nothing but the per-slice labels.

All parameters are one :class:`AutoParams` (module :mod:`.params`).

Frames: images are indexed ``(row, col)``; seeds and clicks are ``(x, y) = (col, row)``.

This package re-exports the public names of its modules, so
``from napari_edgesam.workflows.automatic import segment_stack`` is the import to use.
"""

from __future__ import annotations

from .driver import SliceSegmentation, StackSegmentation, segment_slice, segment_stack
from .foreground import foreground_threshold, stack_statistics
from .linking import label_dtype, link_ids, link_labels
from .overlaps import Candidate, resolve_overlaps
from .params import AutoParams
from .seeds import detect_seeds, detection_factor, grid_seeds, seed_factor

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
    "seed_factor",
    "segment_stack",
    "stack_statistics",
]
