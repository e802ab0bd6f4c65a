"""Next free label id of a Labels layer without scanning big layers on the GUI thread.

A small numpy Labels layer (up to :data:`SCAN_LIMIT` pixels, a few milliseconds) is scanned
with ``np.max`` when needed, which is exact (an undone commit frees its id again). A bigger
layer, or one holding a lazy array (dask, zarr, memory-mapped), is scanned once, block by
block, in a background worker; after that its maximum is kept up to date from the layer's
paint events (napari's brush, fill and our own commits), and rescanned when its data is
replaced. The tracked maximum is an upper bound (after an undo an id may be skipped), so
the id handed out is always free.
"""

from __future__ import annotations

import weakref

import numpy as np

__all__ = ["SCAN_LIMIT", "LabelIds"]

#: numpy layers with at most this many pixels are scanned directly (exact).
SCAN_LIMIT = 1 << 22


def _is_small_numpy(data) -> bool:
    return type(data) is np.ndarray and data.size <= SCAN_LIMIT


class LabelIds:
    """Per-layer maximum label value, for :meth:`next_id`.

    Parameters
    ----------
    start_worker : callable ``(func, *args, returned=..., errored=...)``
        Starts a background worker (the dock widget's ``start_worker``).
    """

    def __init__(self, start_worker):
        self.start_worker = start_worker
        self._known: dict = {}      # id(layer) -> int (maximum)
        self._scanning: dict = {}   # id(layer) -> CancelToken of its scan
        self._waiters: dict = {}    # id(layer) -> [callback(next_id or None)]
        self._layers: dict = {}     # id(layer) -> weakref(layer)

    # -- public ---------------------------------------------------------------------------
    def next_id(self, layer) -> int | None:
        """The next free label id, or None while a big layer is still being scanned (the
        scan is started if needed; see :meth:`when_known`)."""
        data = layer.data
        if _is_small_numpy(data):
            return (int(data.max()) if data.size else 0) + 1
        key = id(layer)
        if key in self._known:
            return self._known[key] + 1
        self.watch(layer)
        return None

    def when_known(self, layer, callback) -> None:
        """Call ``callback(next_id)`` once the layer's scan is done (at once when known)."""
        nid = self.next_id(layer)
        if nid is not None:
            callback(nid)
            return
        self._waiters.setdefault(id(layer), []).append(callback)

    def scanning(self, layer) -> bool:
        return id(layer) in self._scanning

    def set_new(self, layer, maximum: int = 0) -> None:
        """A layer whose content is known (e.g. just created with zeros)."""
        self.watch(layer, scan=False)
        self._known[id(layer)] = int(maximum)

    def note(self, layer, label_id: int) -> None:
        """``label_id`` was just painted into ``layer``."""
        key = id(layer)
        if key in self._known:
            self._known[key] = max(self._known[key], int(label_id))

    def watch(self, layer, scan: bool = True) -> None:
        """Follow ``layer``'s paint and data events; scan it in the background when big."""
        key = id(layer)
        if key not in self._layers:
            self._layers[key] = weakref.ref(layer)
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_data)
        if scan and not _is_small_numpy(layer.data) and key not in self._known:
            self._scan(layer)

    def forget(self, layer) -> None:
        key = id(layer)
        ctl = self._scanning.pop(key, None)
        if ctl is not None:
            ctl.cancel()
        self._known.pop(key, None)
        self._waiters.pop(key, None)
        if self._layers.pop(key, None) is not None:
            for ev, cb in ((layer.events.paint, self._on_paint),
                           (layer.events.data, self._on_data)):
                try:
                    ev.disconnect(cb)
                except (TypeError, ValueError, RuntimeError):
                    pass

    def close(self) -> None:
        for key, ref in list(self._layers.items()):
            layer = ref()
            if layer is not None:
                self.forget(layer)
        for ctl in self._scanning.values():
            ctl.cancel()
        self._scanning.clear()

    # -- internals ------------------------------------------------------------------------
    def _scan(self, layer) -> None:
        key = id(layer)
        if key in self._scanning:
            return
        from napari_edgesam.engine.cancel import CancelToken

        control = CancelToken()
        self._scanning[key] = control
        data = layer.data

        def done(value, key=key, control=control):
            if self._scanning.get(key) is not control:
                return
            self._scanning.pop(key, None)
            self._known[key] = max(int(value), self._known.get(key, 0))
            for cb in self._waiters.pop(key, []):
                cb(self._known[key] + 1)

        def failed(exc, key=key, control=control):
            if self._scanning.get(key) is control:
                self._scanning.pop(key, None)
            for cb in self._waiters.pop(key, []):
                cb(None)

        from .workers import max_label_job

        self.start_worker(max_label_job, data, control, returned=done, errored=failed)

    def _on_paint(self, event) -> None:
        layer = event.source
        key = id(layer)
        if key not in self._known:
            return
        best = self._known[key]
        for atom in event.value or ():
            value = getattr(atom, "new_value", None)  # napari's masked paint atoms
            if value is None and isinstance(atom, tuple) and len(atom) == 3:
                value = atom[2]  # (indices, old values, new value)
            if value is None:  # an unknown kind of edit: look again
                self._known.pop(key, None)
                self._scan(layer)
                return
            arr = np.asarray(value)
            if arr.size:
                best = max(best, int(arr.max()))
        self._known[key] = best

    def _on_data(self, event) -> None:
        layer = event.source
        key = id(layer)
        self._known.pop(key, None)
        ctl = self._scanning.pop(key, None)
        if ctl is not None:
            ctl.cancel()
        if not _is_small_numpy(layer.data):
            self._scan(layer)
