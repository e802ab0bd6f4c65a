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

When an image is opened (``viewer.open``, the sample menu, the Folder tab) and an autosave
of it exists that is newer than its saved labels (the Folder tab's labels file) and differs
from them, a napari notification offers **Restore** (the labels into the target Labels
layer as one undo step, or a new Labels layer; the prompt log adopted) and **Discard**.
A normal save (the panel's *Save...*) discards the layer's autosaves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer

from napari_edgesam.workflows import autosave as store_mod
from napari_edgesam.workflows.autosave import AutosaveError, AutosaveStore

_log = logging.getLogger(__name__)

__all__ = ["AutosaveController", "atom_box", "find_job", "image_identity_of",
           "restore_job", "write_job"]


# ------------------------------------------------------------------ jobs (workers) -----
def write_job(store: AutosaveStore, changed: dict, log, source):
    """Write changed chunks (and the log; the whole labels when ``source`` is given) into
    ``store`` (see :meth:`~napari_edgesam.workflows.autosave.AutosaveStore.write`);
    returns its WriteReport."""
    return store.write(changed, log=log, source=source)


def find_job(identity: dict, labels_path):
    """The newest autosave of an image worth offering, or None (worker thread).

    Autosaves older than the image's saved labels (``labels_path``, the Folder tab's
    labels file), or holding the same labels, are discarded; so are older autosaves of
    the same Labels layer name.
    """
    found = store_mod.list_autosaves(identity)
    if not found:
        return None
    best = found[0]
    if labels_path is not None and Path(labels_path).is_file():
        if Path(labels_path).stat().st_mtime >= best.written:
            store_mod.discard_autosaves(identity)
            return None
        try:
            import tifffile

            saved = tifffile.imread(labels_path)
            labels, _log_ = AutosaveStore.open(best.folder).read()
            if saved.shape == labels.shape and np.array_equal(saved, labels):
                store_mod.discard_autosaves(identity)
                return None
        except (OSError, ValueError, AutosaveError):
            pass
    store_mod.discard_autosaves(identity, labels_name=best.labels_name, keep=[best.folder])
    return best


def restore_job(folder, target):
    """Read an autosave and compare it with ``target`` (the Labels layer's data, shape
    ``(*lead, H, W)``), chunk by chunk (worker thread).

    Returns
    -------
    (list, PromptLog or None, int)
        The edits ``(index, values)``: ``index`` a tuple of int arrays into the layer
        (data coordinates), ``values`` the restored labels there; the prompt log; the
        largest label restored.
    """
    labels, log = AutosaveStore.open(folder).read()
    if tuple(target.shape) != labels.shape:
        raise AutosaveError(f"the autosave's labels have shape {labels.shape}, the layer "
                            f"{tuple(target.shape)}")
    edits = []
    for key in store_mod.chunk_keys(labels.shape):
        index = store_mod.chunk_index(labels.shape, key)
        new = labels[index]
        cur = np.asarray(target[index])
        rows, cols = np.nonzero(cur != new)
        if rows.size:
            lead = index[:-2]
            r0, c0 = index[-2].start, index[-1].start
            idx = tuple(np.full(rows.shape, i, np.intp) for i in lead) + (rows + r0,
                                                                           cols + c0)
            edits.append((idx, new[rows, cols]))
    return edits, log, int(labels.max()) if labels.size else 0


# ------------------------------------------------------------------ helpers ------------
def image_identity_of(layer, folder=None) -> dict | None:
    """:func:`~napari_edgesam.workflows.autosave.image_identity` of a napari Image layer:
    its source file (``viewer.open``, drag and drop), its sample name (File > Open
    Sample), or the Folder tab's file for the image it opened (``folder``: the
    :class:`~.dataset.FolderAnnotation`). None for an array added by a script."""
    data = layer.data[0] if layer.multiscale else layer.data
    src = getattr(layer, "source", None)
    path = getattr(src, "path", None)
    sample = getattr(src, "sample", None)
    where = _folder_item(layer, folder)
    if where is not None:
        path = where[0]
    return store_mod.image_identity(shape=data.shape, dtype=data.dtype, path=path,
                                    sample=sample)


def _folder_item(layer, folder):
    """``(image path, labels path)`` of the Folder tab's image shown in ``layer``."""
    if folder is None or folder.dataset is None or folder.index < 0:
        return None
    if not any(x is layer for x in folder.image_layers):
        return None
    return folder.dataset.items[folder.index], folder.dataset.labels_path(folder.index)


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

    def __init__(self, layer, identity):
        self.layer = layer
        self.identity = identity
        self.store = AutosaveStore.create(identity, layer.name, layer.data.shape,
                                          layer.data.dtype)
        self.dirty: set = set()
        self.complete = False  # whether the store holds the layer's whole labels
        self.known = self._items()
        self.since: float | None = None  # first change not written yet
        self.writing = False
        self.again = False
        self.warned = False
        self.discard_after = False

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
        self.session = session
        self.viewer = session.viewer
        self.start_worker = start_worker
        self._folder = folder or (lambda: None)
        #: Idle time before an autosave (ms), and the longest wait after a first change.
        self.idle_ms = 2000
        self.max_delay_s = 30.0
        #: Chunk bytes copied on the GUI thread per autosave (4 uint32 chunks, a few ms);
        #: more changed chunks go in the autosaves that follow at once.
        self.copy_budget = 4 << 20
        #: Seconds the GUI thread spent in the last autosave, and its worker's report.
        self.last_gui_seconds: float | None = None
        self.last_report = None
        #: The last restore offer shown (a napari Notification with its actions).
        self.offer = None
        self.enabled = True
        self._trackers: dict[int, _Tracker] = {}
        self._untracked: set[int] = set()
        self._offered: set = set()
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

    # ------------------------------------------------------------------ following ---
    def tracker(self, layer) -> _Tracker | None:
        """The state kept for ``layer`` (None when it is not followed)."""
        return self._trackers.get(id(layer))

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
                identity = image_identity_of(image, self._folder())
            except (AttributeError, TypeError, ValueError):
                identity = None
        if identity is None:
            self._untracked.add(id(layer))
            return
        tracker = self._trackers[id(layer)] = _Tracker(layer, identity)
        layer.events.paint.connect(self._on_layer_event)
        layer.events.set_data.connect(self._on_layer_event)
        layer.events.data.connect(self._on_layer_data)

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
            started.append((tracker, job))
        for tracker, (changed, log, source) in started:
            tracker.writing = True
            self.start_worker(write_job, tracker.store, changed, log, source,
                              returned=lambda rep, t=tracker, c=changed, s=source:
                              self._written(t, rep, c, s),
                              errored=lambda exc, t=tracker, c=changed, s=source:
                              self._failed(t, exc, c, s))
        self.last_gui_seconds = time.perf_counter() - t0
        return len(started)

    def _prepare(self, tracker: _Tracker):
        """The GUI-thread part: the log's entries and copies of the changed chunks."""
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
            if budget <= 0:
                break
        tracker.dirty.difference_update(changed)
        if tracker.dirty:
            tracker.since = time.monotonic()
        return changed, log, None

    def _written(self, tracker: _Tracker, report, changed, source):
        tracker.writing = False
        self.last_report = report
        if source is not None:
            tracker.complete = True
        if tracker.warned:
            tracker.warned = False
            self.session.set_status(f"Autosave of '{tracker.layer.name}' works again.")
        self._after_write(tracker)

    def _failed(self, tracker: _Tracker, exc, changed, source):
        tracker.writing = False
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
        self._after_write(tracker, retry=False)

    def _after_write(self, tracker: _Tracker, retry: bool = True):
        if tracker.discard_after:
            tracker.discard_after = False
            self._restart_store(tracker)
        if id(tracker.layer) not in self._trackers:
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

    def saved(self, layer) -> None:
        """``layer``'s labels were saved normally: its autosaves are discarded (the next
        change starts a new one)."""
        tracker = self._trackers.get(id(layer))
        if tracker is None:
            return
        if tracker.writing:
            tracker.discard_after = True
        else:
            self._restart_store(tracker)

    def _retire(self, tracker: _Tracker, discard: bool = False):
        self._trackers.pop(id(tracker.layer), None)
        for ev, cb in ((tracker.layer.events.paint, self._on_layer_event),
                       (tracker.layer.events.set_data, self._on_layer_event),
                       (tracker.layer.events.data, self._on_layer_data)):
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
            QTimer.singleShot(0, lambda layer=event.value: self.check(layer))

    def check(self, layer):
        """Look for an autosave of the image ``layer`` (in a worker) and offer it."""
        if not self.enabled or layer not in self.viewer.layers:
            return None
        folder = self._folder()
        identity = image_identity_of(layer, folder)
        if identity is None:
            return None
        where = _folder_item(layer, folder)
        return self.start_worker(find_job, identity, where[1] if where else None,
                                 returned=lambda info, lay=layer: self._offer(lay, info),
                                 errored=lambda exc: _log.info("autosave lookup: %s", exc))

    def _offer(self, layer, info):
        if info is None or info.folder in self._offered or layer not in self.viewer.layers:
            return
        self._offered.add(info.folder)
        from napari.utils.notifications import (
            Notification,
            NotificationSeverity,
            notification_manager,
        )

        when = time.strftime("%H:%M:%S %d %b", time.localtime(info.written))
        message = (f"EdgeSAM: '{layer.name}' has labels autosaved at {when} "
                   f"('{info.labels_name}', {info.objects} object(s) with prompts) that "
                   "were not saved. Restore them?")
        self.offer = Notification(
            message, NotificationSeverity.INFO,
            actions=[("Restore", lambda *_: self.restore(layer, info)),
                     ("Discard", lambda *_: self.discard(info))])
        notification_manager.dispatch(self.offer)
        self.session.set_status(f"An autosave of '{layer.name}' can be restored "
                                "(see the notification).")

    def discard(self, info) -> None:
        """Delete the autosaves of the image ``info`` (an AutosaveInfo) describes."""
        self.start_worker(store_mod.discard_autosaves, info.identity,
                          errored=lambda exc: _log.info("autosave discard: %s", exc))
        self.session.set_status("Autosave discarded.")

    def restore(self, image_layer, info):
        """Put the autosave ``info`` into the target Labels layer of ``image_layer`` (a new
        Labels layer when there is none of its shape) as one undo step, and adopt its
        prompt log; returns the worker."""
        from .prompt_layers import transform_kwargs

        s = self.session
        layer = s.target.layer
        if s.image_layer is not image_layer or layer is None or \
                tuple(layer.data.shape) != info.shape or layer not in self.viewer.layers:
            layer = self.viewer.add_labels(np.zeros(info.shape, np.dtype(info.dtype)),
                                           name=info.labels_name,
                                           **transform_kwargs(image_layer))
            if s.image_layer is image_layer:
                s.set_labels_layer(layer)
        s.set_status(f"Restoring the autosave of '{image_layer.name}'...")
        return self.start_worker(
            restore_job, info.folder, layer.data,
            returned=lambda out, lay=layer: self._restored(lay, info, *out),
            errored=lambda exc: s.notify_error(exc, "autosave not restored: "),
            desc="EdgeSAM: restoring the autosave")

    def _restored(self, layer, info, edits, log, top):
        s = self.session
        if layer not in self.viewer.layers:
            return
        with layer.block_history():
            for idx, values in edits:
                layer.data_setitem(idx, values, refresh=False)
        layer.refresh()
        if log is not None and log.objects:
            s.prompt_recorder.adopt(layer, log)
        if top:
            layer.selected_label = top + 1
        tracker = self._trackers.get(id(layer))
        if tracker is None:
            self._sync()
            tracker = self._trackers.get(id(layer))
        if tracker is not None:  # go on in the restored store (the next write: whole)
            tracker.store.discard()
            tracker.store = AutosaveStore.open(info.folder)
            tracker.complete = False
            tracker.dirty.clear()
            tracker.known = tracker._items()
        else:
            store_mod.discard_autosaves(info.identity)
        s.set_status(f"Restored the autosave of '{info.labels_name}' "
                     f"({sum(len(v) for _, v in edits)} pixels; Ctrl+Z takes it back).")

    # ------------------------------------------------------------------ closing -----
    def close(self, flush: bool = True) -> None:
        """Stop following (the panel closes). With ``flush`` the changes of complete
        stores are written now, on this thread (napari is closing: no worker runs)."""
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
            tracker.scan()
            if flush and tracker.complete and tracker.dirty and not tracker.writing:
                try:
                    changed, log, _ = self._prepare(tracker)
                    tracker.store.write(changed, log=log)
                except (AutosaveError, RuntimeError) as exc:
                    _log.warning("autosave at closing failed: %s", exc)
            self._retire(tracker)
