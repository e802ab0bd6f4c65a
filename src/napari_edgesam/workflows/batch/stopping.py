"""How a batch run is stopped: one :class:`~napari_edgesam.engine.cancel.CancelToken` per run.

One concept. A run's token (:func:`run_token`) has a stop file in the output folder; the
tasks (:func:`~.task.process_file`, in this process, in local worker processes or on
cluster workers that share the file system) each watch the same file through a token of
their own, so cancelling the run's token stops every running task at its next decoder
call, and the schedulers start no further file. What cancels it:

- the caller's ``cancel`` hook (the widget's Cancel: a callable returning True, or a
  CancelToken), polled about 5 times a second while the run goes on (:func:`cancellable`)
  and between files (:func:`poll`);
- an interruption of the run (Ctrl-C; the command line turns SIGTERM into one too):
  :func:`cancellable` cancels the token on the way out, so running tasks stop.

After a cancelled run that ended normally its stop file is removed; stop files of
interrupted runs are swept by a later run after an hour (:data:`STALE_STOP_S`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ...engine.cancel import CancelToken

__all__ = ["POLL_S", "STALE_STOP_S", "STOP_PREFIX", "cancellable", "poll", "run_token",
           "when_cancelled"]

#: Name prefix of stop files in the output folder.
STOP_PREFIX = ".napari-edgesam-stop-"
#: Seconds between two polls of the caller's hook (and of the token, :func:`when_cancelled`).
POLL_S = 0.2
#: Stop files older than this (seconds) are leftovers of interrupted runs.
STALE_STOP_S = 3600


def run_token(out_dir: Path, run_id: str) -> CancelToken:
    """The cancellation token of a new run, with its stop file in ``out_dir``; sweeps the
    stop files that interrupted runs left more than :data:`STALE_STOP_S` seconds ago.

    Parameters
    ----------
    out_dir : Path
        The (existing) output folder.
    run_id : str
        Identifies the run.

    Returns
    -------
    CancelToken
        ``token.stop_file`` is ``<out_dir>/.napari-edgesam-stop-<run_id>`` (not created
        until the token is cancelled); pass it to the tasks as their ``stop_file``.
    """
    for old in out_dir.glob(f"{STOP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_STOP_S:
                old.unlink()
    return CancelToken(stop_file=out_dir / f"{STOP_PREFIX}{run_id}")


def poll(token: CancelToken, cancel: Callable[[], bool] | CancelToken | None) -> bool:
    """Ask the caller's hook once; cancel ``token`` when it says stop.

    Parameters
    ----------
    token : CancelToken
        The run's token.
    cancel : callable returning bool, CancelToken or None
        The caller's hook. A hook that raises is ignored (a broken hook must not kill the
        run).

    Returns
    -------
    bool
        Whether the run is cancelled.
    """
    if not token.cancelled and cancel is not None:
        try:
            if cancel.cancelled if isinstance(cancel, CancelToken) else cancel():
                token.cancel()
        except Exception:  # noqa: BLE001 - a broken hook must not kill the run
            pass
    return token.cancelled


def _poller(stop: threading.Event, step: Callable[[], bool], name: str) -> threading.Thread:
    def loop():
        while not stop.wait(POLL_S):
            if step():
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def cancellable(token: CancelToken,
                cancel: Callable[[], bool] | CancelToken | None) -> Iterator[CancelToken]:
    """The block runs a batch that ``token`` stops.

    While the block runs, a thread polls ``cancel`` every :data:`POLL_S` seconds
    (:func:`poll`). An exception leaving the block (Ctrl-C, SIGTERM turned into
    KeyboardInterrupt) cancels the token first (creating the stop file, so running tasks
    stop) and is re-raised; after a cancelled block that ended normally the stop file is
    removed.

    Parameters
    ----------
    token : CancelToken
        The run's token (:func:`run_token`).
    cancel : callable returning bool, CancelToken or None
        The caller's hook.

    Yields
    ------
    CancelToken
        ``token``.
    """
    done = threading.Event()
    thread = None
    if cancel is not None:
        thread = _poller(done, lambda: poll(token, cancel), "edgesam-batch-cancel")
    try:
        yield token
    except BaseException:
        _join(done, thread)
        if not token.cancelled:  # interrupted: tell running tasks to stop
            token.cancel()
        raise
    _join(done, thread)
    if token.cancelled and token.stop_file is not None:
        with contextlib.suppress(OSError):
            token.stop_file.unlink()


def _join(done: threading.Event, thread: threading.Thread | None) -> None:
    done.set()
    if thread is not None:
        thread.join(timeout=2)


@contextlib.contextmanager
def when_cancelled(token: CancelToken, action: Callable[[], None]) -> Iterator[None]:
    """While the block runs, call ``action()`` once, soon after ``token`` is cancelled (a
    thread checks every :data:`POLL_S` seconds). Used to cancel a cluster's futures.

    Parameters
    ----------
    token : CancelToken
    action : callable
        Exceptions it raises are ignored.
    """
    def step() -> bool:
        if not token.cancelled:
            return False
        with contextlib.suppress(Exception):
            action()
        return True

    done = threading.Event()
    thread = _poller(done, step, "edgesam-batch-cancel-futures")
    try:
        yield
    finally:
        _join(done, thread)
