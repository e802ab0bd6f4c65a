"""The batch driver: :func:`run_batch`, from a list of inputs to a summary.

One concept: the run as a whole. It checks and collects the inputs (:mod:`.files`), skips
those already done with the same parameters (:mod:`.resume`), hands the rest to a scheduler
(:mod:`.schedulers`) under the run's cancellation token (:mod:`.stopping`), logs and
reports every file as it finishes (:mod:`.results`), and returns a
:class:`~.results.BatchSummary`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ...engine.cancel import CancelToken
from ...engine.errors import InvalidInputError
from .files import collect_inputs, output_paths
from .model import ModelSpec
from .params import BatchParams
from .results import BatchSummary, FileResult, append_log
from .resume import conflict_error, existing_state, params_fingerprint
from .schedulers import default_workers, run_distributed, run_local_processes, run_synchronous
from .stopping import cancellable, run_token

__all__ = ["run_batch"]


def run_batch(inputs, out_dir, model, params: BatchParams | None = None, *,
              overwrite: bool = False, scheduler=None, workers: int | None = None,
              progress: Callable[[FileResult, int, int], None] | None = None,
              cancel: Callable[[], bool] | CancelToken | None = None,
              slice_progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Segment many TIFF files automatically; resumable; on dask.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        Files, folders and glob patterns (see :func:`~.files.collect_inputs`).
    out_dir : path
        Output folder (created if missing). Gets ``<stem>_labels.tif`` and
        ``<stem>_labels.json`` per input and a run log ``napari-edgesam-batch.log.jsonl``.
    model : EdgeSamModel or ModelSpec
        Only its file paths travel to the workers.
    params : BatchParams, optional
    overwrite : bool
        Recompute every input, replacing existing outputs (default: skip inputs already
        done with the same parameters; refuse to replace outputs of other parameters).
    scheduler : None, "synchronous", "processes", str address or distributed.Client
        None/"processes": local worker processes (:mod:`..worker_process`: they never
        re-import the calling script, so a script without an ``if __name__ ==
        "__main__"`` guard works); "synchronous": in this process, on dask's synchronous
        scheduler; an address such as ``"tcp://10.0.0.5:8786"``: that dask.distributed
        cluster (needs the ``distributed`` package); a Client: its cluster (left open).
    workers : int, optional
        Local worker processes (default :func:`~.schedulers.default_workers`); ignored on
        a cluster.
    progress : callable(result, done, total), optional
        Called in the calling thread once per input, as it finishes (skipped inputs first).
    cancel : callable returning bool, or CancelToken, optional
        Polled about 5 times a second; when it returns True (a token: when it is cancelled),
        the run's own token is cancelled (:mod:`.stopping`): running tasks stop at the next
        decoder call, queued ones do nothing, and their inputs come back ``"cancelled"``.
        Local worker processes that have not stopped
        :data:`~.schedulers.CANCEL_GRACE_S` seconds later are terminated. Finished outputs
        stay valid; a rerun resumes.
    slice_progress : callable(input, done, total), optional
        Progress inside a file: ``input`` as in ``FileResult.input``, slices segmented so
        far and in all; first called with ``done=0`` when the file is opened. Called in
        the calling thread (``"synchronous"``) or in a listener thread of this process
        (worker processes); not called for files running on a dask.distributed cluster
        (per-file ``progress`` only there). Messages may arrive late: ignore them for an
        input whose ``progress`` has been reported.

    Returns
    -------
    BatchSummary
        ``summary.ok`` is True when every input has a valid output.

    Raises
    ------
    InvalidInputError
        No inputs, missing inputs, two inputs that would write the same output, an output
        folder that is an input folder.
    ModelNotAvailableError
        Model files missing.
    """
    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a folder")
    for item in inputs:  # an input folder as the output folder (also through links)
        p = Path(str(item)).expanduser()
        if p.is_dir() and out_dir.exists() and os.path.samefile(p, out_dir):
            raise InvalidInputError(
                f"the output folder {out_dir} is an input folder: choose another output "
                "folder (inputs are never overwritten)")
    files = collect_inputs(inputs, exclude_dir=out_dir)
    if not files:
        raise InvalidInputError("no input TIFF files found")
    by_output: dict[Path, Path] = {}
    for f in files:
        o = output_paths(f, out_dir)[0]
        if o in by_output:
            raise InvalidInputError(f"{by_output[o]} and {f} would both write {o.name}; "
                                    "process them into different output folders")
        by_output[o] = f
    params = params or BatchParams()
    spec = model if isinstance(model, ModelSpec) else ModelSpec.from_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]

    total = len(files)
    results: list[FileResult | None] = [None] * total
    done_count = 0

    def report(i: int, res: FileResult):
        nonlocal done_count
        results[i] = res
        done_count += 1
        append_log(out_dir, run_id, res)
        if progress is not None:
            progress(res, done_count, total)

    params_fp = params_fingerprint(params, spec)
    todo_idx = []
    for i, f in enumerate(files):
        if overwrite:
            todo_idx.append(i)
            continue
        state, _ = existing_state(f, out_dir, params_fp)
        o_tif, o_json = output_paths(f, out_dir)
        if state == "done":
            report(i, FileResult(str(f), "skipped", str(o_tif), str(o_json)))
        elif state == "conflict":
            report(i, FileResult(str(f), "failed", error=conflict_error(o_json)))
        else:
            todo_idx.append(i)

    cancelled = False
    if todo_idx:
        todo = [files[i] for i in todo_idx]

        def report_todo(j: int, res: FileResult):
            report(todo_idx[j], res)

        with cancellable(run_token(out_dir, run_id), cancel) as token:
            if scheduler == "synchronous":
                out = run_synchronous(todo, out_dir, spec, params, overwrite, token, cancel,
                                      report_todo, slice_progress)
            elif scheduler is None or scheduler == "processes":
                n_workers = min(len(todo), workers or default_workers(len(todo)))
                local_spec = spec
                if spec.num_threads is None:
                    from ...engine.session import default_num_threads

                    local_spec = spec.with_threads(max(1, default_num_threads() // n_workers))
                out = run_local_processes(todo, out_dir, local_spec, params, overwrite, token,
                                          cancel, report_todo, slice_progress, n_workers)
            else:
                out = run_distributed(todo, out_dir, spec, params, overwrite, token, cancel,
                                      report_todo, scheduler)
            cancelled = token.cancelled
        for j, res in enumerate(out):  # anything the callbacks did not see
            if results[todo_idx[j]] is None:
                report(todo_idx[j], res)
    final = [r if r is not None else FileResult(str(files[i]), "cancelled")
             for i, r in enumerate(results)]
    return BatchSummary(final, out_dir, time.perf_counter() - t0,
                        cancelled or any(r.status == "cancelled" for r in final))
