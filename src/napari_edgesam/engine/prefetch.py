"""Background encoding of slices the user is likely to visit next, that never gets in the way.

:class:`Prefetcher` encodes queued slices (for example the neighbours of the current slice
of a stack) one at a time in a background thread, through the predictor's embedding cache,
so that moving to a neighbouring slice finds its embedding ready. It must never make a click
slower, so:

- :meth:`Prefetcher.cancel` stops the encoder run in flight at once and drops the queue:
  each slice is encoded under its own :class:`~.cancel.CancelToken`, whose
  :meth:`~.cancel.CancelToken.run_options` onnxruntime checks between graph nodes (a run
  stops within one node, a few milliseconds to a few tens of milliseconds for EdgeSAM's
  encoder); a terminated run stores nothing in the cache;
- :meth:`Prefetcher.paused` is the context manager to wrap interactive work in: it stops
  the run in flight, keeps the worker idle while the block runs and then resumes the queue
  (the interrupted slice first);
- the worker thread lowers its own scheduling priority where the platform allows it (Linux:
  ``setpriority`` on the thread; onnxruntime's intra-op worker threads keep theirs, which
  is why cancelling, not priority, is what protects the click).

While the encoder runs on one queued slice, the next queued slice is read, mapped and
resized in a second background thread of the same lowered priority
(:class:`~.pipeline.SlicePipeline`), so the next encoder run starts at once.

A slice's intensity mapping may be lazy too (a zero-argument callable): the stack-wide
mapping of an image not read yet (the next image of a folder) is then computed in the
worker thread, right before the slice; such a slice is not prepared ahead.

The widget (owned elsewhere) calls :meth:`Prefetcher.prefetch` when the user is idle and
:meth:`Prefetcher.paused` (or :meth:`Prefetcher.cancel`) around a click.

Examples
--------
>>> prefetcher = Prefetcher(predictor)                               # doctest: +SKIP
>>> prefetcher.prefetch([stack[z - 1], stack[z + 1]], mapping)       # doctest: +SKIP
>>> with prefetcher.paused():                                        # doctest: +SKIP
...     result = predictor.predict(points=[(x, y)])
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass

from .cancel import CancelToken
from .pipeline import Ahead, SlicePipeline

_log = logging.getLogger(__name__)

__all__ = ["Prefetcher"]


@dataclass(eq=False)  # jobs are compared by identity (the pipeline's tags)
class _Job:
    image: object  # ndarray or a zero-argument callable returning one (lazy reads)
    mapping: object  # IntensityMapping, None or a zero-argument callable returning one
    rgb: bool | None
    tile: str


def _lower_thread_priority(nice: int) -> None:
    """Lower the calling thread's priority (Linux only; elsewhere nothing happens)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:  # pragma: no cover - permissions, exotic kernels
        _log.debug("cannot lower the prefetch thread's priority: %s", exc)


class Prefetcher:
    """Encode queued slices in a background thread, cancellable at once.

    Parameters
    ----------
    predictor : Predictor
        Its :meth:`~napari_edgesam.engine.predictor.Predictor.embed` is called with
        ``run_options`` so the run can be terminated; embeddings land in its cache (a
        predictor without a cache makes prefetching pointless).
    nice : int
        How much to lower the worker thread's priority (Linux; 0 leaves it).
    on_done : callable, optional
        ``on_done(embedding)`` after each slice encoded (in the worker thread).

    Attributes
    ----------
    stats : dict
        Counters: ``done`` (encoded or found in the cache), ``cancelled`` (runs terminated),
        ``failed``, ``dropped`` (queued slices discarded by :meth:`cancel` or a new
        :meth:`prefetch` before they started).
    """

    def __init__(self, predictor, *, nice: int = 10, on_done=None):
        self.predictor = predictor
        self.nice = int(nice)
        self.on_done = on_done
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        #: The CancelToken of the slice being encoded (None when idle) and the
        #: onnxruntime RunOptions of its run (``_run_options.terminate`` once cancelled).
        self._token: CancelToken | None = None
        self._run_options = None
        self._current: _Job | None = None
        self._requeue = False
        self._paused = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pipeline = SlicePipeline(predictor,
                                       initializer=lambda: _lower_thread_priority(self.nice))
        self.stats = {"done": 0, "cancelled": 0, "failed": 0, "dropped": 0}

    # -- public API -----------------------------------------------------------------------
    def prefetch(self, images, mapping=None, *, rgb: bool | None = None, tile: str = "full",
                 replace: bool = True) -> None:
        """Queue slices for background encoding.

        Parameters
        ----------
        images : iterable
            Slices, each an array ``(H, W)``/``(H, W, 3)`` or a zero-argument callable that
            returns one (read lazily in the worker thread, e.g. from a dask or memory-mapped
            stack).
        mapping : IntensityMapping or callable, optional
            The stack-wide intensity mapping (the same one the interactive predictor uses,
            so the cache keys match), or a zero-argument callable returning it, called in
            the worker thread before the slice is read (for an image that is read there
            too); an error it raises counts as a failed slice.
        rgb : bool, optional
        tile : str
            See :meth:`Predictor.embed`.
        replace : bool
            Replace what is still queued (default: the newest wish wins; the run in flight
            continues) instead of appending.
        """
        jobs = [_Job(im, mapping, rgb, tile) for im in images]
        with self._cond:
            if self._closed:
                raise RuntimeError("this Prefetcher is closed")
            if replace:
                self.stats["dropped"] += len(self._queue)
                self._queue.clear()
            self._queue.extend(jobs)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="edgesam-prefetch",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self) -> bool:
        """Stop the encoder run in flight now and drop the queue.

        Returns
        -------
        bool
            Whether a run was in flight (it stops within one graph node and stores
            nothing).
        """
        with self._cond:
            self.stats["dropped"] += len(self._queue)
            self._queue.clear()
            return self._terminate_locked(requeue=False)

    @contextlib.contextmanager
    def paused(self):
        """Context manager for interactive work: the run in flight is stopped at once and
        no prefetch runs inside the block; afterwards the queue resumes, starting with the
        slice that was interrupted."""
        with self._cond:
            self._paused += 1
            self._terminate_locked(requeue=True)
        try:
            yield self
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (or paused with an empty run).

        Returns
        -------
        bool
            True when idle, False on timeout.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._current is None and (not self._queue or self._paused),
                timeout)

    @property
    def busy(self) -> bool:
        """Whether a slice is being encoded right now."""
        return self._current is not None

    @property
    def pending(self) -> int:
        """Number of queued slices not started yet."""
        return len(self._queue)

    def close(self, timeout: float | None = 5.0) -> None:
        """Cancel everything and stop the worker thread."""
        with self._cond:
            self._closed = True
            self.stats["dropped"] += len(self._queue)
            self._queue.clear()
            self._terminate_locked(requeue=False)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._pipeline.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- worker ---------------------------------------------------------------------------
    def _terminate_locked(self, requeue: bool) -> bool:
        """Cancel the token of the run in flight (if any); ``requeue`` puts its slice back
        at the head of the queue once the run has stopped."""
        if self._token is None:
            return False
        self._requeue = requeue
        self._token.cancel()
        return True

    def _work(self) -> None:
        _lower_thread_priority(self.nice)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._queue and not self._paused))
                if self._closed:
                    return
                job = self._queue.popleft()
                nxt = self._queue[0] if self._queue else None
                token = CancelToken()
                run_options = token.run_options()
                self._token, self._run_options = token, run_options
                self._current, self._requeue = job, False
            try:
                if callable(job.mapping):  # lazy: computed here, once (kept if requeued)
                    job.mapping = job.mapping()
                ahead = (None if nxt is None or callable(nxt.mapping) else
                         Ahead(nxt, nxt.image, nxt.mapping, nxt.rgb, nxt.tile))
                emb = self._pipeline.embed(job.image, job.mapping, rgb=job.rgb,
                                           run_options=run_options, tile=job.tile, tag=job,
                                           ahead=ahead)
            except Exception as exc:  # noqa: BLE001 - a terminated run raises onnxruntime's Fail
                with self._cond:
                    if token.cancelled:
                        self.stats["cancelled"] += 1
                        if self._requeue and not self._closed:
                            self._queue.appendleft(job)
                    else:
                        self.stats["failed"] += 1
                        _log.warning("prefetching a slice failed: %s", exc)
            else:
                with self._cond:
                    self.stats["done"] += 1
                if self.on_done is not None:
                    try:
                        self.on_done(emb)
                    except Exception:  # noqa: BLE001
                        _log.exception("prefetch on_done callback failed")
            finally:
                with self._cond:
                    self._token = self._run_options = None
                    self._current = None
                    self._cond.notify_all()
