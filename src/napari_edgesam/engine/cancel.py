"""One way to stop work: :class:`CancelToken`.

Work is stopped at three depths, and one token covers them all:

- between steps (a slice, a tile, a file): the worker asks :attr:`CancelToken.cancelled`
  (or calls :meth:`CancelToken.check`, which raises :class:`~.errors.CancelledError`);
- inside an onnxruntime run: every run started with :meth:`CancelToken.run_options` is
  terminated by :meth:`CancelToken.cancel` (onnxruntime checks between graph nodes, so an
  encoder run stops within milliseconds; it then raises and stores nothing);
- in other processes: with a ``stop_file``, :meth:`CancelToken.cancel` creates the file
  and :attr:`CancelToken.cancelled` is also true when it exists (batch workers on a
  cluster share a filesystem, not memory).

Cancelling is idempotent and thread-safe; a token is never reset (make a new one).
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from .errors import CancelledError

__all__ = ["CancelToken"]


class CancelToken:
    """A cancellation flag shared by the code that asks and the code that works.

    Parameters
    ----------
    stop_file : path, optional
        A file whose existence also means "cancelled" (created by :meth:`cancel`).

    Examples
    --------
    >>> token = CancelToken()
    >>> token.cancelled
    False
    >>> token.cancel()
    >>> token.cancelled
    True
    >>> token.check()
    Traceback (most recent call last):
    ...
    napari_edgesam.engine.errors.CancelledError: cancelled
    """

    def __init__(self, stop_file=None):
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._runs: weakref.WeakSet = weakref.WeakSet()
        self.stop_file = None if stop_file is None else Path(stop_file)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called (here, or through the stop file)."""
        if self._flag.is_set():
            return True
        if self.stop_file is not None and self.stop_file.exists():
            self._flag.set()
            return True
        return False

    def cancel(self) -> None:
        """Cancel: set the flag, terminate the onnxruntime runs started with
        :meth:`run_options`, and create the stop file (if any)."""
        self._flag.set()
        with self._lock:
            runs = list(self._runs)
        for ro in runs:
            ro.terminate = True
        if self.stop_file is not None:
            try:
                self.stop_file.parent.mkdir(parents=True, exist_ok=True)
                self.stop_file.touch()
            except OSError:  # the flag still stops this process's work
                pass

    def check(self) -> None:
        """Raise :class:`~.errors.CancelledError` when cancelled."""
        if self.cancelled:
            raise CancelledError("cancelled")

    def run_options(self):
        """A new ``onnxruntime.RunOptions`` that :meth:`cancel` terminates (already
        terminated when the token is cancelled). Pass it to one run; make one per run."""
        from .session import make_run_options

        ro = make_run_options()
        with self._lock:
            self._runs.add(ro)
        if self.cancelled:
            ro.terminate = True
        return ro
