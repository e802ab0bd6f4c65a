"""The unit of work of a batch: one input file segmented into its label TIFF and sidecar.

One concept: :func:`process_file`, the task every scheduler runs (in this process, in a
local worker process or on a dask.distributed worker). It reads its file lazily
(memory-mapped or page by page, :class:`~napari_edgesam.workflows.tiff_io.LazyTiff`), maps
its axes (:func:`~napari_edgesam.workflows.axes.plan_axes`), segments every slice with
:mod:`..automatic` (instances linked in 3D along Z), keeps a label volume larger than
:data:`IN_MEMORY_LABELS_BYTES` in a scratch memmap on disk, and writes its outputs
atomically (:func:`~napari_edgesam.workflows.labels_tiff.write_labels`, then the sidecar,
:func:`.resume.write_sidecar`). A failed file never raises: it comes back as a
``"failed"`` :class:`~.results.FileResult`.

Worker processes import this function by its module path
(``napari_edgesam.workflows.batch.task.process_file``): keep it at module level.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...engine.cancel import CancelToken
from ...engine.errors import CancelledError, EdgeSamError, ModelError
from ..automatic import label_dtype, segment_stack, stack_statistics
from ..axes import Planes, plan_axes
from ..labels_tiff import IN_MEMORY_LABELS_BYTES, write_labels
from ..tiff_io import LazyTiff
from .files import output_paths
from .lookahead import LookAhead
from .model import ModelSpec, batch_decoder_for_spec, predictor_for
from .params import BatchParams
from .results import FileResult, now, worker_name
from .resume import (
    conflict_error,
    existing_state,
    input_identity,
    output_lock,
    params_fingerprint,
    scratch_path,
    sweep_leftovers,
    write_sidecar,
)

__all__ = ["IN_MEMORY_LABELS_BYTES", "process_file"]


def process_file(path, out_dir, model: ModelSpec, params: BatchParams, *,
                 overwrite: bool = False, stop_file: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> FileResult:
    """Segment one input file and write its label TIFF and sidecar (the unit of work).

    Runs in whatever process dask chooses. Never raises for a bad input: failures come back
    as ``FileResult(status="failed", error=...)``.

    Parameters
    ----------
    path : path
        Input TIFF (never modified).
    out_dir : path
        Existing output folder.
    model : ModelSpec
    params : BatchParams
    overwrite : bool
        Process even if a matching output exists; replace outputs of other parameters.
    stop_file : str, optional
        Cooperative cancellation: when this file exists the task stops between decoder
        calls and returns ``status="cancelled"`` without writing anything.
    progress : callable(done, total), optional
        Slices of this file segmented so far and in all (``total`` is all frames times all
        depths); called once with ``done=0`` when the file is opened, then after every
        slice, in the process running the task.

    Returns
    -------
    FileResult
    """
    t0 = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    worker = worker_name()
    out_tif, out_json = output_paths(path, out_dir)
    token = CancelToken(stop_file=stop_file) if stop_file else CancelToken()

    def result(status, **kw):
        return FileResult(str(path), status, seconds=time.perf_counter() - t0, worker=worker,
                          **kw)

    scratch = None
    # Whoever holds <output>.lock owns the output's temporary files: another run writing
    # the same output (two runs on one folder) is refused; leftovers of a killed run (its
    # lock died with it) are swept.
    lock = output_lock(out_tif)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not lock.acquire(wait=False):
            return result("failed", error=f"another run is writing {out_tif.name} now")
    except OSError as exc:
        return result("failed", error=f"cannot write to {out_dir}: {exc.strerror or exc}")
    try:
        sweep_leftovers(out_dir, path)
        if token.cancelled:
            return result("cancelled")
        params_fp = params_fingerprint(params, model)
        state, _ = existing_state(path, out_dir, params_fp)
        if not overwrite:  # checked again here: another run may have finished it meanwhile
            if state == "done":
                return FileResult(str(path), "skipped", str(out_tif), str(out_json),
                                  worker=worker)
            if state == "conflict":
                return result("failed", error=conflict_error(out_json))
        started = now()
        identity = input_identity(path)
        predictor = predictor_for(model)
        batch_decoder = batch_decoder_for_spec(model)  # None for the original model
        with LazyTiff(path) as reader:
            plan = plan_axes(reader.axes, reader.shape,
                             channel=params.channel, z_axis=params.z_axis,
                             t_axis=params.t_axis, name=path.name)
            auto = params.automatic
            mapping = None
            if params.contrast is not None:
                from ...engine.intensity import stack_mapping

                mapping = stack_mapping(None, "contrast", rgb=plan.rgb,
                                        limits=params.contrast)
            mapping, threshold = stack_statistics(Planes(reader, plan, None), params=auto,
                                                  mapping=mapping, rgb=plan.rgb)
            n_t, n_z = plan.n_t, plan.n_z
            h, w = plan.shape[plan.y], plan.shape[plan.x]
            nbytes = n_t * n_z * h * w * 4
            if nbytes > IN_MEMORY_LABELS_BYTES:
                scratch = scratch_path(out_tif)
                buf = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint32,
                                                shape=(n_t, n_z, h, w))
            else:
                buf = np.zeros((n_t, n_z, h, w), np.uint32)
            n_objects = 0
            calls = 0
            n_slices = n_t * n_z
            if progress is not None:
                progress(0, n_slices)
            for t in range(n_t):
                # The next plane is read, mapped and resized while the encoder runs.
                with LookAhead(predictor, Planes(reader, plan, t)) as ahead:
                    res = segment_stack(
                        ahead.predictor, ahead.planes, params=auto, mapping=mapping,
                        threshold=threshold, rgb=plan.rgb, link=True, out=buf[t],
                        cancel=token, batch_decoder=batch_decoder,
                        progress=(None if progress is None else
                                  lambda done, _n, t=t: progress(t * n_z + done, n_slices)))
                n_objects = max(n_objects, res.n_objects)
                calls += res.decoder_calls
            meta = reader.metadata
            in_axes, in_shape, in_dtype = reader.axes, reader.shape, str(reader.dtype)
        labels = buf.reshape(plan.out_shape)
        dtype = label_dtype(n_objects)
        fmt = write_labels(out_tif, labels, plan.out_axes, dtype, meta)
        if scratch is not None:
            del buf, labels
        seconds = time.perf_counter() - t0
        write_sidecar(
            out_json, out_tif, params=params, model=model, input_path=path,
            identity=identity,
            input_info={"axes": in_axes, "shape": list(in_shape), "dtype": in_dtype,
                        "metadata": meta.to_dict()},
            details={
                "axes_used": {
                    "z": in_axes[plan.z] if plan.z is not None else None,
                    "t": in_axes[plan.t] if plan.t is not None else None,
                    "channel": (in_axes[plan.channel_axis] if plan.channel_axis is not None
                                else None),
                    "channel_index": plan.channel,
                    "rgb": plan.rgb,
                },
                "intensity_mapping": {"low": list(mapping.low), "high": list(mapping.high)},
                "foreground_threshold": threshold if math.isfinite(threshold) else None,
            },
            output={"path": out_tif.name, "axes": plan.out_axes, "shape": list(plan.out_shape),
                    "dtype": dtype.name, "format": fmt, "n_objects": int(n_objects)},
            run={"started": started, "finished": now(), "seconds": round(seconds, 3),
                 "slices": n_t * n_z, "decoder_calls": calls, "worker": worker},
        )
        return result("done", output=str(out_tif), sidecar=str(out_json),
                      n_objects=int(n_objects), slices=n_t * n_z)
    except CancelledError:
        return result("cancelled")
    except ModelError as exc:
        return result("failed", error=f"model not available: {exc}")
    except EdgeSamError as exc:
        return result("failed", error=str(exc))
    except MemoryError:
        return result("failed", error="out of memory")
    except Exception as exc:  # a broken input must never stop the batch
        return result("failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        if scratch is not None:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
        lock.release()
