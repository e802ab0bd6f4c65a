"""Local worker processes of batch runs: how they start and what each one runs first.

One concept: :class:`WorkerPool`, a :class:`concurrent.futures.ProcessPoolExecutor` whose
processes never depend on how the parent was started, and :func:`worker_main`, the entry
point the pool runs first in every worker process (its ``initializer``).

Why: multiprocessing's ``spawn`` and ``forkserver`` start methods re-import the parent's
main module in every child (``multiprocessing.spawn.get_preparation_data`` records
``init_main_from_path`` or ``init_main_from_name`` and the child's ``spawn.prepare`` runs
``_fixup_main_from_path`` / ``_fixup_main_from_name``, executing the script again as
``__mp_main__``). A script that starts napari without an ``if __name__ == "__main__":``
guard would open a second viewer in every worker and the run would never start. ``fork``
avoids that but copies a GUI process with its threads (unsafe). So:

- Start method: ``forkserver`` where it exists (Linux, macOS), else ``spawn`` (Windows).
  The fork server preloads this project's batch module (never ``__main__``), so workers
  start with numpy, onnxruntime and the batch code already imported.
- The main module is never re-imported in a worker: our processes (and only ours, whatever
  thread starts them) are launched with the main-module entries removed from the
  preparation data. This is done by a wrapper around ``spawn.get_preparation_data`` that
  acts only while one of :class:`WorkerPool`'s processes is being launched (a thread-local
  flag set by the pool's process class), so other users of multiprocessing in the same
  process are unaffected. Tasks sent to the workers must therefore be importable by module
  name (ours is :func:`napari_edgesam.workflows.batch.task.process_file`, pickled by that
  path).
- :func:`worker_main` runs first in every worker: it ignores SIGINT (Ctrl-C in a terminal
  reaches the whole process group; the parent decides how a run stops), keeps the message
  queue to the parent (per-slice progress, :func:`post`), announces its pid, and watches a
  pipe whose only write end the parent holds: when the parent dies (even by SIGKILL) the
  operating system closes it and the worker exits at once, so no orphaned worker finishes
  files that nobody waits for.

Stopping: :meth:`WorkerPool.terminate` ends the worker processes at once (used when they do
not stop at their next cancellation check); outputs are written atomically by the tasks, so
a killed worker leaves at most temporary files, never a half-written output.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import context as _mp_context
from multiprocessing import spawn as _mp_spawn

__all__ = ["PRELOAD", "WorkerPool", "post", "slice_reporter", "start_method", "worker_main"]

#: Modules the fork server imports once, so that forked workers start with them loaded.
PRELOAD = ["napari_edgesam.workflows.batch.task"]


def start_method() -> str:
    """The start method of worker processes: ``"forkserver"`` where available (Linux,
    macOS), else ``"spawn"`` (Windows)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# ---------------------------------------------------------------------------------------
# Never re-import the parent's main module in a worker
# ---------------------------------------------------------------------------------------

_launching = threading.local()
_hook_lock = threading.Lock()
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _install_preparation_hook() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` (once per process) so that,
    while :func:`_without_main` is active in the calling thread, the data sent to a new
    process does not tell it to import the parent's main module."""
    with _hook_lock:
        current = _mp_spawn.get_preparation_data
        if getattr(current, "_napari_edgesam_hook", False):
            return

        @functools.wraps(current)
        def get_preparation_data(name, _original=current):
            data = _original(name)
            if getattr(_launching, "active", 0):
                for key in _MAIN_KEYS:
                    data.pop(key, None)
            return data

        get_preparation_data._napari_edgesam_hook = True
        _mp_spawn.get_preparation_data = get_preparation_data


@contextlib.contextmanager
def _without_main():
    """Processes launched by this thread inside the block do not import ``__main__``."""
    _install_preparation_hook()
    _launching.active = getattr(_launching, "active", 0) + 1
    try:
        yield
    finally:
        _launching.active -= 1


class _SpawnWorker(_mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _without_main():
            return _mp_context.SpawnProcess._Popen(process_obj)


class _SpawnContext(_mp_context.SpawnContext):
    Process = _SpawnWorker


_CONTEXTS: dict = {"spawn": _SpawnContext}

if sys.platform != "win32":

    class _ForkServerWorker(_mp_context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj):
            with _without_main():
                return _mp_context.ForkServerProcess._Popen(process_obj)

    class _ForkServerContext(_mp_context.ForkServerContext):
        Process = _ForkServerWorker

    _CONTEXTS["forkserver"] = _ForkServerContext


# ---------------------------------------------------------------------------------------
# In the worker
# ---------------------------------------------------------------------------------------

_messages = None


def worker_main(messages, lifeline=None) -> None:
    """Entry point run first in every worker process (the pool's ``initializer``).

    Parameters
    ----------
    messages : multiprocessing.Queue
        Messages to the parent (``(kind, *payload)`` tuples, see :func:`post`).
    lifeline : multiprocessing.connection.Connection, optional
        The read end of a pipe whose only write end the parent holds: when the parent
        dies (even by SIGKILL) or closes the pool, the operating system closes that end,
        the read here ends and the worker exits at once (no orphaned workers finishing
        files nobody waits for). Portable: pipes close with their owner on Linux, macOS
        and Windows.
    """
    global _messages
    _messages = messages
    if lifeline is not None:
        threading.Thread(target=_watch_parent, args=(lifeline,), name="edgesam-lifeline",
                         daemon=True).start()
    # Progress messages are not worth waiting for when the worker exits.
    with contextlib.suppress(Exception):
        messages.cancel_join_thread()
    with contextlib.suppress(ValueError, OSError):  # only possible in the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    post("started", os.getpid())


def _watch_parent(lifeline) -> None:
    """Exit this worker when the parent's end of ``lifeline`` closes."""
    try:
        while True:
            lifeline.recv()  # nothing is ever sent: this returns only by EOF
    except (EOFError, OSError):
        pass
    os._exit(1)  # not sys.exit: a running task must not keep the process alive


def post(kind: str, *payload) -> None:
    """Send a message to the parent's :class:`WorkerPool` (nothing outside a worker).

    Parameters
    ----------
    kind : str
        ``"started"`` (payload: pid) or ``"slices"`` (payload: task index, slices done,
        slices in the file).
    *payload
        Picklable values.
    """
    if _messages is None:
        return
    with contextlib.suppress(Exception):  # progress must never fail a task
        _messages.put((kind, *payload))


def slice_reporter(index: int) -> Callable[[int, int], None]:
    """A picklable ``progress(done, total)`` for the task ``index``: in a worker it posts
    ``("slices", index, done, total)`` to the parent.

    Parameters
    ----------
    index : int
        The task's number, as the parent knows it.
    """
    return functools.partial(post, "slices", int(index))


# ---------------------------------------------------------------------------------------
# In the parent
# ---------------------------------------------------------------------------------------


class WorkerPool:
    """Worker processes for local batch runs (a ProcessPoolExecutor started safely).

    Parameters
    ----------
    workers : int
        Number of worker processes (started on demand, at most this many).
    on_message : callable(kind, *payload), optional
        Called in a listener thread of this process for every message a worker posts
        (:func:`post`): ``("started", pid)``, ``("slices", index, done, total)``.

    Notes
    -----
    Use as a context manager: leaving it cancels tasks not started and waits for running
    ones (call :meth:`terminate` first to end them at once).
    """

    def __init__(self, workers: int, on_message: Callable | None = None):
        method = start_method()
        ctx = _CONTEXTS[method]()
        if method == "forkserver":
            # Global to this process, used when the fork server (one per process) starts.
            ctx.set_forkserver_preload(list(PRELOAD))
        self.start_method = method
        self.on_message = on_message
        #: pids of the worker processes that have started.
        self.pids: set[int] = set()
        self._messages = ctx.Queue()
        # workers exit when this process dies: they watch the read end of this pipe
        lifeline_read, self._lifeline = ctx.Pipe(duplex=False)
        self._pool = ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx,
                                         initializer=worker_main,
                                         initargs=(self._messages, lifeline_read))
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="edgesam-batch-messages",
                                           daemon=True)
        self._listener.start()

    def _listen(self):
        while not self._stop.is_set():
            try:
                item = self._messages.get(timeout=0.1)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):  # closed, or a killed writer's half
                return
            except Exception:  # noqa: BLE001 - an unreadable message is skipped
                continue
            if not isinstance(item, tuple) or not item:
                continue
            if item[0] == "started" and len(item) > 1:
                self.pids.add(int(item[1]))
            if self.on_message is not None:
                with contextlib.suppress(Exception):  # a broken callback must not stop us
                    self.on_message(*item)

    def submit(self, fn, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` in a worker process (``fn`` importable by name).

        Parameters
        ----------
        fn : callable
            A module-level function.
        *args, **kwargs
            Picklable arguments.

        Returns
        -------
        concurrent.futures.Future
        """
        return self._pool.submit(fn, *args, **kwargs)

    def _processes(self) -> list:
        procs = dict(getattr(self._pool, "_processes", None) or {})
        for p in multiprocessing.active_children():
            if p.pid in self.pids:
                procs[p.pid] = p
        return [p for p in procs.values() if p is not None]

    def terminate(self, timeout: float = 2.0) -> int:
        """End the worker processes now (SIGTERM, then SIGKILL after ``timeout``); their
        tasks' futures fail with ``BrokenProcessPool``.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the processes to exit after SIGTERM.

        Returns
        -------
        int
            Number of processes that were still alive.
        """
        procs = [p for p in self._processes() if p.is_alive()]
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(timeout)
            if p.is_alive():
                with contextlib.suppress(Exception):
                    p.kill()
                    p.join(timeout)
        return len(procs)

    def close(self, *, wait: bool = True) -> None:
        """Cancel tasks not started, stop the workers (waiting for running tasks when
        ``wait``) and the listener.

        Parameters
        ----------
        wait : bool
            Wait for running tasks and for the processes to exit.
        """
        try:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        finally:
            with contextlib.suppress(OSError):
                self._lifeline.close()  # any worker still there exits now
            self._stop.set()
            self._listener.join(timeout=1.0)
            with contextlib.suppress(Exception):
                self._messages.close()
                self._messages.join_thread()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
