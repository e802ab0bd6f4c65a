"""Autosave of the annotation state, and restore after a crash (no Qt widgets).

:class:`AutosaveController` follows the session's target Labels layer (each one the panel
committed into, keyed by its image: :func:`image_identity_of`) and writes its labels and
prompt log into an :class:`~napari_edgesam.workflows.autosave.AutosaveStore` in the
background, after ``idle_ms`` without a change (a QTimer restarted by each change; at the
latest ``max_delay_s`` after the first unsaved change, so long sessions of continuous
clicking are saved too).

Changes are found cheaply on the GUI thread: napari 0.9 emits ``paint`` with the history
item when an edit is committed to the undo history (commits, brush strokes, fills), but
undo and redo only write the data and refresh (``set_data``, and nothing at all for a
hidden layer). So the controller reads the layer's undo and redo queues on ``paint``,
``set_data`` and a 1 s poll: every item it has not seen (a new edit, or an item moved by
undo/redo, which napari re-creates as a new list) marks the chunks its atoms' bounding
boxes touch. Replacing the data (``data`` event) makes the next write a full one. Direct
writes into ``layer.data`` without napari's history are not seen.

One autosave copies only the changed chunks on the GUI thread (at most ``copy_budget``
bytes per autosave, the rest follows in the next one) and writes them in a worker. The
first write of a store (a new layer, after a save, after replaced data) reads the whole
layer in the worker, skipping chunks of 0; a chunk edited during that read is written again
by the next autosave.

When an image is opened, an autosave of it may be offered for restore (see
:mod:`.autosave_restore`). A normal save (the panel's *Save...*, the Folder tab's save on
leaving an image) marks when its snapshot is taken (:meth:`AutosaveController.save_started`)
and, once written (:meth:`AutosaveController.saved`), discards the layer's autosaves if
nothing was edited since the mark, else keeps the autosave and writes it whole again.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_edgesam.workflows import autosave as store_mod
from napari_edgesam.workflows.autosave import AutosaveError, AutosaveStore

from .autosave_restore import image_identity_of

_log = logging.getLogger(__name__)

__all__ = ["AutosaveController", "SaveMark", "atom_box", "write_job"]


# ------------------------------------------------------------------ jobs (workers) -----
class _Gate:
    """Orders one store's writes: a write in a worker runs under :attr:`lock`, and none
    runs once :attr:`closed` (set at closing, after the write in flight ended)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.closed = False


def write_job(store: AutosaveStore, changed: dict, log, source, gate=None):
    """Write changed chunks (and the log; the whole labels when ``source`` is given) into
    ``store`` (see :meth:`~napari_edgesam.workflows.autosave.AutosaveStore.write`);
    returns its WriteReport, or None when ``gate`` was closed first (the controller
    closed and wrote the changes itself)."""
    if gate is None:
        return store.write(changed, log=log, source=source)
    with gate.lock:
        if gate.closed:
            return None
        return store.write(changed, log=log, source=source)


class SaveMark:
    """A normal save of a followed Labels layer that started (see
    :meth:`AutosaveController.save_started`): the layer's tracker and how many edits it
    had noticed when the saved snapshot was taken."""

    def __init__(self, tracker, edits: int):
        self.tracker = tracker
        self.edits = edits


# ------------------------------------------------------------------ helpers ------------
def atom_box(atom, ndim: int):
    """The bounding box ``[(start, stop)] * ndim`` (data coordinates) of one napari Labels
    history atom: a ``_MaskedPaintAtom`` (its ``slice_key``) or the ``(indices, old, new)``
    tuple of ``data_setitem``; None when it changed nothing or is of an unknown kind."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        return [(s.start or 0, s.stop if s.stop is not None else 1 << 62)
                for s in key][-ndim:]
    if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
        idx = atom[0]
        if len(idx) != ndim or not np.size(idx[0]):
            return None
        return [(int(np.min(a)), int(np.max(a)) + 1) for a in idx]
    return None


class _Tracker:
    """One followed Labels layer: its store, changed chunks, what its history held."""

    def __init__(self, layer, identity, store=None):
        self.layer = layer
        self.identity = identity
        self.store = store or AutosaveStore.create(identity, layer.name, layer.data.shape,
                                                   layer.data.dtype)
        self.dirty: set = set()
        self.complete = False  # whether the store holds the layer's whole labels
        self.known = self._items()
        self.since: float | None = None  # first change not written yet
        self.edits = 0  # changes noticed (new history items, replaced data)
        self.data_gen = 0  # times the layer's data was replaced
        self.writing = False
        self.inflight = None  # (changed, source) of the write in a worker
        self.gate = _Gate()
        self.again = False
        self.warned = False
        self.discard_after: SaveMark | None = None  # a save written during a write

    def _items(self) -> dict:
        lay = self.layer
        items = list(getattr(lay, "_undo_history", ())) + list(getattr(lay, "_redo_history",
                                                                       ()))
        return {id(it): it for it in items}

    def scan(self) -> bool:
        """Mark the chunks of history items not seen before; True when there were any."""
        items = self._items()
        new = [it for i, it in items.items() if i not in self.known]
        self.known = items
        if not new:
            return False
        self.edits += 1
        shape = tuple(self.layer.data.shape)
        for item in new:
            for atom in item:
                box = atom_box(atom, len(shape))
                if box is None:
                    if not isinstance(atom, tuple) or len(atom) != 3:
                        self.complete = False  # an unknown edit: write everything
                    continue
                self.dirty |= store_mod.chunks_in_box(shape, box, self.store.tile)
        return True

    def pending(self) -> bool:
        return bool(self.dirty) or (self.since is not None and not self.complete)


class AutosaveController:
    """Autosave of the target Labels layers of one panel, and the restore offer.

    Parameters
    ----------
    session : AnnotationSession
        Only its public API is used (``target``, ``image_layer``, ``prompt_recorder``,
        ``history_changed``, ``layers_changed``, ``set_labels_layer``).
    timer_parent : QObject
        Owner of the timers.
    start_worker : callable
        The panel's ``start_worker``.
    folder : callable, optional
        ``folder() -> FolderAnnotation``: the Folder tab, to know its images' files.
    """

    def __init__(self, session, timer_parent, start_worker, folder=None):
        from .autosave_restore import RestoreOffer

        self.session = session
        self.viewer = session.viewer
        self.start_worker = start_worker
        #: ``folder() -> FolderAnnotation or None``: the Folder tab.
        self.folder = folder or (lambda: None)
        #: Idle time before an autosave (ms), and the longest wait after a first change.
        self.idle_ms = 2000
        self.max_delay_s = 30.0
        #: Chunk bytes copied on the GUI thread per autosave (4 uint32 chunks, a few ms);
        #: more changed chunks go in the autosaves that follow at once.
        self.copy_budget = 4 << 20
        #: Seconds the GUI thread spent in the last autosave, and its worker's report.
        self.last_gui_seconds: float | None = None
        self.last_report = None
        self.enabled = True
        #: The restore offer (:class:`~.autosave_restore.RestoreOffer`).
        self.restoring = RestoreOffer(self)
        self._trackers: dict[int, _Tracker] = {}
        self._untracked: set[int] = set()
        self._timer = QTimer(timer_parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.autosave_now)
        self._poll = QTimer(timer_parent)
        self._poll.setInterval(1000)
        self._poll.timeout.connect(self._scan_all)
        self._poll.start()
        self._connections = ((session.history_changed, self._sync),
                             (session.layers_changed, self._sync),
                             (self.viewer.layers.events.inserted, self._on_inserted),
                             (self.viewer.layers.events.removed, self._on_removed))
        for emitter, cb in self._connections:
            emitter.connect(cb)
        self._sync()

    @property
    def offer(self):
        """The last restore offer shown (a napari Notification with its actions)."""
        return self.restoring.offer

    # ------------------------------------------------------------------ following ---
    def tracker(self, layer) -> _Tracker | None:
        """The state kept for ``layer`` (None when it is not followed)."""
        return self._trackers.get(id(layer))

    def _live(self, tracker: _Tracker) -> bool:
        return self._trackers.get(id(tracker.layer)) is tracker

    def _sync(self, *_):
        """Follow the session's target layer (called on its history and layer events)."""
        layer = self.session.target.layer
        if layer is None or id(layer) in self._untracked:
            return
        tracker = self._trackers.get(id(layer))
        if tracker is not None:
            if tracker.scan():
                self._changed(tracker)
            return
        image = self.session.image_layer
        identity = None
        if image is not None and not layer.multiscale:
            try:
                identity = image_identity_of(image, self.folder())
            except (AttributeError, TypeError, ValueError):
                identity = None
        if identity is None:
            self._untracked.add(id(layer))
            return
        self._follow(layer, identity)

    def _follow(self, layer, identity, store=None) -> _Tracker:
        tracker = self._trackers[id(layer)] = _Tracker(layer, identity, store)
        for ev, cb in self._layer_events(layer):
            ev.connect(cb)
        return tracker

    def _layer_events(self, layer) -> tuple:
        """The ``(emitter, callback)`` pairs that follow a layer's edits."""
        return ((layer.events.paint, self._on_layer_event),
                (layer.events.set_data, self._on_layer_event),
                (layer.events.data, self._on_layer_data))

    def continue_in(self, layer, info) -> None:
        """Go on autosaving ``layer`` (a Labels layer just restored from the autosave
        ``info``, an AutosaveInfo) into that autosave's store, followed from now on even
        when it is not the session's target; its next write is a whole one."""
        tracker = self._trackers.get(id(layer))
        if tracker is None:
            self._sync()
            tracker = self._trackers.get(id(layer))
        store = AutosaveStore.open(info.folder)
        if tracker is None:
            self._untracked.discard(id(layer))
            tracker = self._follow(layer, info.identity, store)
        elif tracker.store.folder != store.folder:
            if not tracker.writing:  # else discarded once its write ended
                tracker.store.discard()
            tracker.store = store
        tracker.complete = False
        tracker.dirty.clear()
        tracker.known = tracker._items()

    def _on_layer_event(self, event=None):
        tracker = self._trackers.get(id(getattr(event, "source", None)))
        if tracker is not None and tracker.scan():
            self._changed(tracker)

    def _on_layer_data(self, event=None):
        layer = getattr(event, "source", None)
        tracker = self._trackers.get(id(layer))
        if tracker is None:
            return
        if tuple(layer.data.shape) != tracker.store.shape or \
                np.dtype(layer.data.dtype) != tracker.store.dtype:
            self._retire(tracker, discard=True)
            self._untracked.discard(id(layer))
            self._sync()
            return
        tracker.known = tracker._items()
        tracker.complete = False
        tracker.dirty.clear()
        tracker.edits += 1
        tracker.data_gen += 1  # a full write in flight reads the data replaced
        self._changed(tracker)

    def _scan_all(self):
        for tracker in list(self._trackers.values()):
            if tracker.scan():
                self._changed(tracker)

    def _changed(self, tracker: _Tracker):
        now = time.monotonic()
        if tracker.since is None:
            tracker.since = now
        first = min(t.since for t in self._trackers.values() if t.since is not None)
        if self._timer.isActive() and now - first >= self.max_delay_s:
            return  # changes kept coming: the running timer writes them anyway
        self._timer.start(self.idle_ms)

    # ------------------------------------------------------------------ writing -----
    def autosave_now(self) -> int:
        """Start the autosave of every followed layer with unsaved changes; returns how
        many writes were started. The GUI-thread part (reading the history, copying the
        changed chunks, starting the worker) is timed in :attr:`last_gui_seconds`."""
        if not self.enabled:
            return 0
        t0 = time.perf_counter()
        started = []
        for tracker in list(self._trackers.values()):
            tracker.scan()
            if not tracker.pending():
                continue
            if tracker.writing:
                tracker.again = True
                continue
            job = self._prepare(tracker)
            started.append((tracker, job, tracker.data_gen))
        for tracker, (changed, log, source), gen in started:
            tracker.writing = True
            tracker.inflight = (changed, source)
            self.start_worker(write_job, tracker.store, changed, log, source, tracker.gate,
                              returned=lambda rep, t=tracker, s=source, g=gen,
                              st=tracker.store: self._written(t, rep, s, g, st),
                              errored=lambda exc, t=tracker, c=changed, s=source,
                              st=tracker.store: self._failed(t, exc, c, s, st))
        self.last_gui_seconds = time.perf_counter() - t0
        return len(started)

    def _prepare(self, tracker: _Tracker, everything: bool = False):
        """The GUI-thread part: the log's entries and copies of the changed chunks (at
        most :attr:`copy_budget` bytes, unless ``everything``)."""
        layer = tracker.layer
        log, _indices = self.session.prompt_recorder.candidates(layer)
        tracker.since = None
        if not tracker.complete:  # a full write: the worker reads the layer
            tracker.dirty.clear()
            return {}, log, layer.data
        changed, budget = {}, self.copy_budget
        shape = tracker.store.shape
        for key in sorted(tracker.dirty):
            index = store_mod.chunk_index(shape, key, tracker.store.tile)
            block = np.array(layer.data[index])
            changed[key] = block
            budget -= block.nbytes
            if budget <= 0 and not everything:
                break
        tracker.dirty.difference_update(changed)
        if tracker.dirty:
            tracker.since = time.monotonic()
        return changed, log, None

    def _written(self, tracker: _Tracker, report, source, gen, store):
        tracker.writing = False
        tracker.inflight = None
        if report is not None:
            self.last_report = report
        if source is not None and report is not None and gen == tracker.data_gen:
            tracker.complete = True  # (data replaced meanwhile: the next write is whole)
        if tracker.warned:
            tracker.warned = False
            self.session.set_status(f"Autosave of '{tracker.layer.name}' works again.")
        self._after_write(tracker, store)

    def _failed(self, tracker: _Tracker, exc, changed, source, store):
        tracker.writing = False
        tracker.inflight = None
        tracker.dirty.update(changed)  # nothing is lost: written at the next change
        if source is not None:
            tracker.complete = False
        if tracker.since is None:
            tracker.since = time.monotonic()
        if not tracker.warned:
            tracker.warned = True
            from napari.utils.notifications import show_warning

            show_warning(f"EdgeSAM: autosave of '{tracker.layer.name}' failed: {exc}. Your "
                         "labels in napari are unchanged; it is tried again at your next "
                         "edit (Save... writes them elsewhere).")
        self._after_write(tracker, store, retry=False)

    def _after_write(self, tracker: _Tracker, store, retry: bool = True):
        live = self._live(tracker)
        if store is not tracker.store:  # replaced while it was written (a restore)
            store.discard()
        if tracker.discard_after is not None:
            mark, tracker.discard_after = tracker.discard_after, None
            self.saved(mark)
        if not live:
            tracker.store.close()
            return
        if retry and (tracker.again or tracker.dirty):
            tracker.again = False
            self._timer.start(0 if tracker.dirty else self.idle_ms)

    def _restart_store(self, tracker: _Tracker):
        tracker.store.discard()
        store_mod.discard_autosaves(tracker.identity, labels_name=tracker.layer.name)
        tracker.store = AutosaveStore.create(tracker.identity, tracker.layer.name,
                                             tracker.store.shape, tracker.store.dtype)
        tracker.complete = False
        tracker.dirty.clear()
        tracker.since = None  # nothing left unsaved: no new autosave until an edit

    # ------------------------------------------------------------------ saving ------
    def save_started(self, layer) -> SaveMark | None:
        """A normal save of ``layer``'s labels starts: call this when its snapshot is
        taken (GUI thread) and give the mark to :meth:`saved` once the file is written.
        None when ``layer`` is not followed."""
        tracker = self._trackers.get(id(layer))
        if tracker is None:
            return None
        if tracker.scan():  # edits made before the snapshot are in the saved file
            self._changed(tracker)
        return SaveMark(tracker, tracker.edits)

    def saved(self, mark: SaveMark | None) -> None:
        """The save of :meth:`save_started`'s ``mark`` was written. When nothing was edited
        since its snapshot the layer's autosaves are discarded (also when the layer was
        closed meanwhile); else the autosave is kept and written whole again, so that it
        is newer than the saved file and holds the edits the file lacks."""
        if mark is None:
            return
        tracker = mark.tracker
        live = self._live(tracker)
        if live and tracker.scan():
            self._changed(tracker)
        if tracker.edits != mark.edits:
            if live:
                tracker.complete = False
                self._changed(tracker)
            return
        if tracker.writing:
            tracker.discard_after = mark  # decided again once the write ended
        elif live:
            self._restart_store(tracker)
        else:
            tracker.store.discard()

    def _retire(self, tracker: _Tracker, discard: bool = False):
        if self._live(tracker):
            self._trackers.pop(id(tracker.layer), None)
        for ev, cb in self._layer_events(tracker.layer):
            try:
                ev.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        if not tracker.writing:
            tracker.store.discard() if discard else tracker.store.close()

    def _on_removed(self, event):
        layer = event.value
        self._untracked.discard(id(layer))
        tracker = self._trackers.get(id(layer))
        if tracker is not None:  # its unsaved last seconds go with it
            self._retire(tracker)

    # ------------------------------------------------------------------ restoring ---
    def _on_inserted(self, event):
        from napari.layers import Image

        if isinstance(event.value, Image):  # once the opener (the Folder tab) is done
            QTimer.singleShot(0, lambda layer=event.value: self.restoring.check(layer))

    def restore(self, image_layer, info):
        """Restore the autosave ``info`` into ``image_layer``'s labels (see
        :meth:`~.autosave_restore.RestoreOffer.restore`); returns the worker or None."""
        return self.restoring.restore(image_layer, info)

    # ------------------------------------------------------------------ closing -----
    def close(self, flush: bool = True) -> None:
        """Stop following (the panel closes). With ``flush`` every change not yet in an
        autosave is written now, on this thread, after any write in flight ended (napari
        is closing: no worker may run later); a write still queued then does nothing."""
        self.enabled = False
        for t in (self._timer, self._poll):
            try:
                t.stop()
            except RuntimeError:  # pragma: no cover - deleted with its parent
                pass
        for emitter, cb in self._connections:
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        for tracker in list(self._trackers.values()):
            with tracker.gate.lock:  # waits for the write in flight
                tracker.gate.closed = True
            try:
                if flush:
                    self._flush(tracker)
            except (AutosaveError, RuntimeError) as exc:
                _log.warning("autosave at closing failed: %s", exc)
            tracker.writing = False
            self._retire(tracker)

    def _flush(self, tracker: _Tracker) -> None:
        """Write all of ``tracker``'s changes (no budget; the layer whole when the store
        is not complete), redoing a write whose worker's result is not known."""
        tracker.scan()
        if tracker.writing and tracker.inflight is not None:
            changed, source = tracker.inflight
            tracker.dirty.update(changed)
            if source is not None:
                tracker.complete = False
            if tracker.dirty or not tracker.complete:
                tracker.since = tracker.since or time.monotonic()
            if tracker.discard_after is not None:
                mark, tracker.discard_after = tracker.discard_after, None
                if mark.edits == tracker.edits:
                    self._restart_store(tracker)
                else:
                    tracker.complete = False
        if not tracker.pending():
            return
        changed, log, source = self._prepare(tracker, everything=True)
        tracker.store.write(changed, log=log, source=source)
        tracker.complete = True
