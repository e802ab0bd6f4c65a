"""Where a batch's tasks run: the schedulers.

One concept: each scheduler runs :func:`~.task.process_file` for a list of input files and
reports each file's :class:`~.results.FileResult` as it finishes; all stop through the
run's :class:`~napari_edgesam.engine.cancel.CancelToken` (:mod:`.stopping`).

- :func:`run_local_processes` (the default): local worker processes
  (:class:`~napari_edgesam.workflows.worker_process.WorkerPool`, which never re-import the
  calling script), one file at a time each, files started in the order given;
- :func:`run_synchronous`: in this process, on dask's synchronous scheduler (debugging,
  small jobs, the napari widget);
- :func:`run_distributed`: on a dask.distributed cluster (a scheduler address or a
  ``distributed.Client``), the same tasks unchanged.

There is no thread scheduler (onnxruntime's own threads do the parallel work inside a
task).
"""

from __future__ import annotations

import contextlib
import uuid

from ...engine.errors import InvalidInputError
from .resume import sweep_leftovers
from .results import FileResult
from .stopping import poll, when_cancelled
from .task import process_file

__all__ = ["CANCEL_GRACE_S", "default_workers", "run_distributed", "run_local_processes",
           "run_synchronous"]

#: Seconds that running files get to stop at their next cancellation check before their
#: worker processes are terminated.
CANCEL_GRACE_S = 2.0


def default_workers(n_files: int) -> int:
    """Local worker processes: half the cores (each gets two onnxruntime threads), at least
    one, at most one per file."""
    from ...engine.session import default_num_threads

    return max(1, min(n_files, default_num_threads() // 2))


def run_synchronous(todo, out_dir, spec, params, overwrite, token, cancel, report,
                    slice_progress):
    """All files in this process, one after the other, on dask's synchronous scheduler.

    Parameters: as :func:`run_local_processes` (without ``workers``).
    """
    import dask
    from dask.callbacks import Callback

    tasks, keys = [], {}
    run = uuid.uuid4().hex[:8]
    stop = str(token.stop_file)
    for i, path in enumerate(todo):
        # dask's local scheduler runs independent tasks in descending key order: number the
        # keys backwards so that files are processed in the order given.
        key = f"napari-edgesam-batch-{run}-{len(todo) - 1 - i:07d}"
        keys[key] = i
        on_slices = None
        if slice_progress is not None:
            def on_slices(done, total, _name=str(path)):
                slice_progress(_name, done, total)
        tasks.append(dask.delayed(process_file, pure=False)(
            str(path), str(out_dir), spec, params, overwrite=overwrite, stop_file=stop,
            progress=on_slices, dask_key_name=key))

    def posttask(key, result, dsk, state, worker_id):
        if key in keys and isinstance(result, FileResult):
            report(keys[key], result)
        poll(token, cancel)

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks, scheduler="synchronous"))


def run_local_processes(todo, out_dir, spec, params, overwrite, token, cancel, report,
                        slice_progress, workers):
    """Files on local worker processes (:class:`~..worker_process.WorkerPool`), in the
    order given, at most ``workers`` at a time.

    On cancellation (or an interruption of this thread) no further file starts, running
    ones get :data:`CANCEL_GRACE_S` seconds to stop at their next check, then their
    processes are terminated; their files come back ``"cancelled"``.

    Parameters
    ----------
    todo : list of Path
        The input files to process, in order.
    out_dir : Path
        The existing output folder.
    spec : ModelSpec
    params : BatchParams
    overwrite : bool
        As :func:`~.task.process_file`'s.
    token : CancelToken
        The run's token, with its stop file (:func:`~.stopping.run_token`).
    cancel : callable returning bool, CancelToken or None
        The caller's hook, polled between files (:func:`~.stopping.poll`).
    report : callable(j, FileResult)
        Called in this thread once per file as it finishes, ``j`` its index in ``todo``.
    slice_progress : callable(input, done, total) or None
        Progress inside a file (from a listener thread of this process).
    workers : int
        Worker processes.

    Returns
    -------
    list of FileResult
        One per file of ``todo``, in its order.
    """
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from ..worker_process import WorkerPool, slice_reporter

    results: list[FileResult | None] = [None] * len(todo)
    running: dict = {}  # future -> index into todo
    terminated = False
    pool_broken = False

    def finish(j: int, res: FileResult):
        if results[j] is None:
            results[j] = res
            report(j, res)

    def on_message(kind, *payload):
        if kind == "slices" and slice_progress is not None and len(payload) == 3:
            j, done, total = payload
            if 0 <= j < len(todo) and results[j] is None:
                slice_progress(str(todo[j]), int(done), int(total))

    def outcome(fut, j: int) -> FileResult:
        if fut.cancelled():
            return FileResult(str(todo[j]), "cancelled")
        exc = fut.exception()
        if exc is None:
            return fut.result()
        if terminated or token.cancelled:
            return FileResult(str(todo[j]), "cancelled")
        return FileResult(str(todo[j]), "failed",
                          error=f"worker process ended unexpectedly (out of memory?): "
                                f"{type(exc).__name__}: {exc}")

    def collect(futures):
        nonlocal pool_broken
        for fut in futures:
            j = running.pop(fut)
            if not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool):
                pool_broken = True
            finish(j, outcome(fut, j))

    def stop_running(pool):
        """Give running files the grace period, then terminate their processes."""
        nonlocal terminated
        if running:
            done, _ = wait(list(running), timeout=CANCEL_GRACE_S)
            collect(done)
        if running:
            terminated = True
            pool.terminate()
            done, _ = wait(list(running), timeout=10)
            for fut in list(running):
                j = running.pop(fut)
                finish(j, outcome(fut, j) if fut in done else
                       FileResult(str(todo[j]), "cancelled"))
                sweep_leftovers(out_dir, todo[j], lock=True)

    next_j = 0
    stop = str(token.stop_file)
    with WorkerPool(workers, on_message=on_message) as pool:
        try:
            while next_j < len(todo) or running:
                while (not token.cancelled and not pool_broken and next_j < len(todo)
                       and len(running) < workers):
                    try:
                        fut = pool.submit(process_file, str(todo[next_j]), str(out_dir), spec,
                                          params, overwrite=overwrite, stop_file=stop,
                                          progress=slice_reporter(next_j))
                    except BrokenProcessPool:
                        pool_broken = True
                        break
                    running[fut] = next_j
                    next_j += 1
                if token.cancelled or pool_broken:
                    for j in range(next_j, len(todo)):  # never started
                        finish(j, FileResult(str(todo[j]), "cancelled") if token.cancelled
                               else FileResult(str(todo[j]), "failed",
                                               error="not started: the worker processes "
                                                     "ended unexpectedly"))
                    next_j = len(todo)
                    if token.cancelled:
                        stop_running(pool)
                        break
                if not running:
                    continue
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                collect(done)
                poll(token, cancel)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop everything of ours now
            token.cancel()
            for j in range(next_j, len(todo)):
                finish(j, FileResult(str(todo[j]), "cancelled"))
            next_j = len(todo)
            stop_running(pool)
            with contextlib.suppress(OSError):
                token.stop_file.unlink()
            raise
    return [r if r is not None else FileResult(str(todo[j]), "cancelled")
            for j, r in enumerate(results)]


def run_distributed(todo, out_dir, spec, params, overwrite, token, cancel, report,
                    scheduler):
    """Files on a dask.distributed cluster (per-file progress only).

    Parameters: as :func:`run_local_processes` (without ``slice_progress`` and
    ``workers``), and ``scheduler``, the scheduler's address or a ``distributed.Client``
    (left open). Cancelling the run cancels the cluster's futures not done yet; running
    tasks stop through the stop file (a shared file system).

    Raises
    ------
    InvalidInputError
        The scheduler cannot be reached.
    """
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    if own:
        try:
            client = Client(scheduler, set_as_default=False, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InvalidInputError(f"cannot reach the dask scheduler {scheduler!r}: "
                                    f"{exc}") from None
    else:
        client = scheduler
    try:
        run = uuid.uuid4().hex[:8]
        stop = str(token.stop_file)
        futures = [
            client.submit(process_file, str(p), str(out_dir), spec, params, overwrite=overwrite,
                          stop_file=stop, key=f"napari-edgesam-batch-{run}-{i}", pure=False)
            for i, p in enumerate(todo)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        cancelled_futures = []

        def cancel_futures():
            if not cancelled_futures:
                cancelled_futures.append(True)
                client.cancel([f for f in futures if not f.done()])

        results: list = [None] * len(todo)
        with when_cancelled(token, cancel_futures):
            for fut in as_completed(futures, loop=client.loop):
                i = index[fut.key]
                if fut.cancelled():
                    res = FileResult(str(todo[i]), "cancelled")
                else:
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker died (e.g. out of memory) on it
                        res = FileResult(str(todo[i]), "failed",
                                         error=f"worker error: {type(exc).__name__}: {exc}")
                results[i] = res
                report(i, res)
                if poll(token, cancel):
                    cancel_futures()
        return results
    finally:
        if own:
            client.close()
