"""Batch automatic segmentation of TIFF files, resumable, locally or on dask.

One label TIFF (plus a JSON sidecar) per input TIFF, in an output folder. The unit of work
is one input file: a task reads its file lazily (memory-mapped or page by page), segments
every slice with :mod:`..automatic` (instances linked in 3D along Z), and writes its
outputs atomically (temporary name, then rename). A failed file never stops the others.

The package, one concept per module:

- :mod:`.params`: :class:`BatchParams`, the options of a run;
- :mod:`.model`: :class:`ModelSpec` (a model as file paths, what travels to the workers)
  and :func:`predictor_for` (each worker process's session, built once);
- :mod:`.files`: :func:`collect_inputs` and :func:`output_paths` (which files are read and
  written);
- :mod:`.resume`: how a rerun resumes (sidecars, fingerprints, the label TIFF's SHA-256,
  output locks, leftovers of killed runs);
- :mod:`.task`: :func:`process_file`, the per-file task;
- :mod:`.schedulers`: where tasks run (local worker processes, dask's synchronous
  scheduler, a dask.distributed cluster);
- :mod:`.stopping`: how a run stops (one
  :class:`~napari_edgesam.engine.cancel.CancelToken` with a stop file);
- :mod:`.results`: :class:`FileResult`, :class:`BatchSummary`, the run log;
- :mod:`.driver`: :func:`run_batch`.

Axis planning (:func:`plan_axes`) lives in :mod:`napari_edgesam.workflows.axes`, label-TIFF
writing in :mod:`napari_edgesam.workflows.labels_tiff` and calibration
(:func:`pixel_sizes`) in :mod:`napari_edgesam.workflows.calibration`; they are re-exported
here for the callers of this package. The constants re-exported here (``CANCEL_GRACE_S``,
``IN_MEMORY_LABELS_BYTES``...) are copies for reading: to change one, set it in the module
that defines it.

Frames: label images are ``(..., Y, X)`` arrays; seeds and clicks are ``(x, y) = (col, row)``.
"""

from __future__ import annotations

from ..axes import AxisPlan, plan_axes
from ..calibration import pixel_sizes
from ..labels_tiff import IN_MEMORY_LABELS_BYTES, OUTPUT_TILE
from .driver import run_batch
from .files import OUTPUT_SUFFIX, TIFF_SUFFIXES, collect_inputs, output_paths
from .model import ModelSpec, predictor_for
from .params import BatchParams
from .results import LOG_NAME, BatchSummary, FileResult
from .resume import SIDECAR_FORMAT
from .schedulers import CANCEL_GRACE_S, default_workers
from .task import process_file

__all__ = [
    "AxisPlan",
    "BatchParams",
    "BatchSummary",
    "CANCEL_GRACE_S",
    "FileResult",
    "IN_MEMORY_LABELS_BYTES",
    "LOG_NAME",
    "ModelSpec",
    "OUTPUT_SUFFIX",
    "OUTPUT_TILE",
    "SIDECAR_FORMAT",
    "TIFF_SUFFIXES",
    "collect_inputs",
    "default_workers",
    "output_paths",
    "pixel_sizes",
    "plan_axes",
    "predictor_for",
    "process_file",
    "run_batch",
]
