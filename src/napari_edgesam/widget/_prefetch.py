"""Prefetching for the dock widget: encode what the user is likely to need next, only while
the user is idle, and never in the way of a click.

The engine's :class:`~napari_edgesam.engine.prefetch.Prefetcher` does the encoding in a
low-priority thread, through the predictor's embedding cache, and stops an encoder run in
flight at once (onnxruntime's ``RunOptions.terminate``). This controller decides *when*:

- every user action that needs the model (a click, a box, a slice change, a propagation or a
  batch run) calls :meth:`PrefetchController.activity`: the run in flight is terminated and
  the queue dropped right away, so the click's own encoder/decoder run has the cores;
- after :data:`IDLE_MS` without activity, with no worker of the widget running, the widget's
  ``_prefetch_jobs()`` says what to encode: the neighbouring slices of the current one
  (stacks and movies), or the tiles around the last prompt (tiled images: nearest first,
  a few only; the rest of the image is never touched until used).

The "prefetch" checkbox of the panel turns it off.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QTimer

_log = logging.getLogger(__name__)

__all__ = ["IDLE_MS", "PrefetchController"]

#: Milliseconds without user activity before prefetching starts.
IDLE_MS = 700


class PrefetchController:
    """Owns the engine's :class:`Prefetcher` for the widget's current predictor."""

    def __init__(self, dock):
        self._dock = dock
        self._prefetcher = None
        self._predictor = None
        self._enabled = True
        self._timer = QTimer(dock)
        self._timer.setSingleShot(True)
        self._timer.setInterval(IDLE_MS)
        self._timer.timeout.connect(self._on_idle)
        #: Slices/tiles handed to the prefetcher (for tests and the status), newest last.
        self.requested: list = []

    # -- public ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        if not self._enabled:
            self._timer.stop()
            self.cancel()
        else:
            self._timer.start()

    @property
    def prefetcher(self):
        """The engine's Prefetcher (None before the first prefetch)."""
        return self._prefetcher

    def set_predictor(self, predictor) -> None:
        """Use ``predictor`` from now on (the old prefetcher is closed)."""
        if predictor is self._predictor:
            return
        self.close()
        self._predictor = predictor

    def activity(self) -> None:
        """The user needs the model now: stop prefetching at once; look again when idle."""
        if self._prefetcher is not None:
            self._prefetcher.cancel()
        if self._enabled:
            self._timer.start()

    def cancel(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()

    def close(self) -> None:
        self._timer.stop()
        if self._prefetcher is not None:
            pf, self._prefetcher = self._prefetcher, None
            pf.close(timeout=2.0)

    @property
    def busy(self) -> bool:
        pf = self._prefetcher
        return pf is not None and (pf.busy or pf.pending > 0)

    # -- internals ------------------------------------------------------------------------
    def _on_idle(self) -> None:
        dock = self._dock
        if not self._enabled or self._predictor is None or not dock._ok():
            return
        if dock.busy or dock.batch_busy:
            self._timer.start()  # not idle yet: look again later
            return
        try:
            jobs = dock._prefetch_jobs()
        except Exception:  # noqa: BLE001 - prefetching is optional; never disturb the user
            _log.debug("no prefetch", exc_info=True)
            return
        if not jobs:
            return
        from napari_edgesam.engine.prefetch import Prefetcher

        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._predictor)
        first = True
        for job in jobs:
            self._prefetcher.prefetch([job["image"]], job["mapping"], rgb=job["rgb"],
                                      tile=job.get("tile", "full"), replace=first)
            first = False
            self.requested.append(job.get("what"))
