"""Prefetching for the dock widget: encode what the user is likely to need next, only while
the user is idle, and never in the way of a click.

The engine's :class:`~napari_edgesam.engine.prefetch.Prefetcher` does the encoding in a
low-priority thread, through the predictor's embedding cache, and stops an encoder run in
flight at once (onnxruntime's ``RunOptions.terminate``). This controller decides *when*:

- every user action that needs the model (a click, a box, a slice change, a propagation or a
  batch run) calls :meth:`PrefetchController.activity`: the run in flight is terminated and
  the queue dropped right away, so the click's own encoder/decoder run has the cores;
- after :data:`IDLE_MS` without activity, with no worker of the panel running,
  :func:`plan_prefetch` says what to encode: the neighbouring slices of the current one
  (stacks and movies), or the tiles around the last prompt (tiled images: nearest first,
  a few only; the rest of the image is never touched until used).

The "prefetch" checkbox of the panel turns that off. Other parts of the panel add their
own wishes with :meth:`PrefetchController.add_source` (the Folder tab: the next image's
first slice, :mod:`.next_image`); they are planned after the current image's, under the
same rules (idle only, stopped by any activity), each switched by its own checkbox.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QTimer

from ._geometry import image_data

_log = logging.getLogger(__name__)

__all__ = ["IDLE_MS", "PREFETCH_SLICES", "PREFETCH_TILES", "PrefetchController",
           "plan_prefetch"]

#: Milliseconds without user activity before prefetching starts.
IDLE_MS = 700
#: Neighbouring slices prefetched while the user is idle (offsets along the slider's axis).
PREFETCH_SLICES = (1, -1, 2, -2)
#: Tiles prefetched around the last prompt's window (nearest first).
PREFETCH_TILES = 4


def plan_prefetch(layer, geom, lead, channel, embedding, mapping, axis, last_window) -> list:
    """Encoder jobs for the engine's Prefetcher: lazy reads (callables) with ``mapping``.

    Parameters
    ----------
    layer : napari Image layer
    geom : ImageGeometry
    lead : tuple of int
        The current slice's leading indices (image data).
    channel : int
    embedding : Embedding or TiledPredictor
        The current slice's; for a TiledPredictor, tiles nearest ``last_window`` (the last
        prompt's window) are planned, else the slices next to ``lead`` along ``axis``
        (the axis the user last moved on; None: the first leading axis).
    mapping : IntensityMapping
    """
    if embedding.tiled:
        w = last_window
        if w is None:
            return []
        cx, cy = w.col0 + w.width / 2, w.row0 + w.height / 2
        tiles = [t for t in embedding.grid.tiles_by_distance(cx, cy)
                 if t not in embedding.encoded and t != w][:PREFETCH_TILES]
        return [{"image": (lambda t=t: embedding.read(t)), "mapping": embedding.mapping,
                 "rgb": embedding.rgb, "tile": t.key(), "what": ("tile", t)} for t in tiles]
    axes = [i for i in range(len(geom.leading_shape)) if i != geom.channel_axis]
    if not axes:
        return []
    axis = axis if axis in axes else axes[0]
    data = image_data(layer)
    n = geom.leading_shape[axis]
    jobs = []
    for dz in PREFETCH_SLICES:
        z = lead[axis] + dz
        if not 0 <= z < n:
            continue
        near = list(lead)
        near[axis] = z
        key = geom.slice_key(tuple(near), channel)
        jobs.append({"image": (lambda k=key: geom.read_slice(data, k)), "mapping": mapping,
                     "rgb": geom.rgb, "what": ("slice", geom.labels_index(tuple(near)))})
    return jobs


class PrefetchController:
    """Owns the engine's :class:`Prefetcher` for the panel's current predictor.

    Parameters
    ----------
    parent : QObject
        Owner of the idle timer.
    jobs : callable
        ``jobs() -> list`` of what to encode now (see :func:`plan_prefetch`).
    idle : callable
        ``idle() -> bool``: whether the panel runs nothing (else prefetching waits).
    """

    def __init__(self, parent, jobs, idle):
        self._jobs = jobs
        self._idle = idle
        self._prefetcher = None
        self._predictor = None
        self._enabled = True
        self._sources: list = []
        self._timer = QTimer(parent)
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
            self.cancel()
        self._restart()

    def add_source(self, jobs) -> None:
        """Also plan ``jobs()`` when the user is idle, after the current image's own jobs,
        whether or not :attr:`enabled` (the source has its own switch: it returns ``[]``
        when off).

        Parameters
        ----------
        jobs : callable
            ``jobs() -> list`` of job dicts as :func:`plan_prefetch` makes them; a job's
            ``"mapping"`` may be a zero-argument callable (computed in the prefetch thread,
            see :meth:`~napari_edgesam.engine.prefetch.Prefetcher.prefetch`).
        """
        self._sources.append(jobs)
        self._restart()

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
        self._restart()

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
    def _restart(self) -> None:
        """Look again after :data:`IDLE_MS` when anything may be prefetched."""
        if self._enabled or self._sources:
            self._timer.start()
        else:
            self._timer.stop()

    def _on_idle(self) -> None:
        if not (self._enabled or self._sources) or self._predictor is None:
            return
        if not self._idle():
            self._timer.start()  # not idle yet: look again later
            return
        jobs = []
        for plan in ([self._jobs] if self._enabled else []) + self._sources:
            try:
                jobs += plan()
            except Exception:  # noqa: BLE001 - prefetching is optional; never disturb the user
                _log.debug("no prefetch", exc_info=True)
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
