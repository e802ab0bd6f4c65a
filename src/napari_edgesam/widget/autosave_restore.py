"""The restore offer of an autosave (no Qt widgets): found when an image is opened, shown
as a napari notification with **Restore** and **Discard**, restored as one undo step.

Used by :class:`~.autosave.AutosaveController`: when an image is opened (``viewer.open``,
the sample menu, the Folder tab) and an autosave of it exists that is newer than its saved
labels (the Folder tab's labels file) and differs from them, :class:`RestoreOffer` offers
it. Restore puts the labels into the target Labels layer of that image (or a new Labels
layer) and adopts the prompt log; the controller then goes on writing into that store.
When the image was closed before Restore was pressed, nothing is restored and the autosave
is kept (offered again when the image is reopened).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from napari_edgesam.workflows import autosave as store_mod
from napari_edgesam.workflows.autosave import AutosaveError, AutosaveStore

from ._geometry import commit_indices

_log = logging.getLogger(__name__)

__all__ = ["RestoreOffer", "find_job", "image_identity_of", "restore_job"]


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


def find_job(identity: dict, labels_path):
    """The newest autosave of an image worth offering, or None (worker thread).

    When the newest autosave is older than the image's saved labels (``labels_path``, the
    Folder tab's labels file), or holds the same labels, the autosaves of its Labels layer
    name are discarded (those of other Labels layers of the image are kept) and None is
    returned; else the older autosaves of the same name are discarded.
    """
    found = store_mod.list_autosaves(identity)
    if not found:
        return None
    best = found[0]
    name = best.labels_name
    if labels_path is not None and Path(labels_path).is_file():
        if Path(labels_path).stat().st_mtime >= best.written:
            store_mod.discard_autosaves(identity, labels_name=name)
            return None
        try:
            import tifffile

            saved = tifffile.imread(labels_path)
            labels, _log_ = AutosaveStore.open(best.folder).read()
            if saved.shape == labels.shape and np.array_equal(saved, labels):
                store_mod.discard_autosaves(identity, labels_name=name)
                return None
        except (OSError, ValueError, AutosaveError):
            pass
    store_mod.discard_autosaves(identity, labels_name=name, keep=[best.folder])
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
        differ = cur != new
        idx = commit_indices(differ, index[:-2], only_background=False,
                             offset=(index[-2].start, index[-1].start))
        if idx[0].size:
            edits.append((idx, new[differ]))
    return edits, log, int(labels.max()) if labels.size else 0


class RestoreOffer:
    """Finds an opened image's autosave, offers it, restores or discards it.

    Parameters
    ----------
    controller : AutosaveController
        Its ``session``, ``start_worker``, ``folder()``, ``enabled`` and
        :meth:`~.autosave.AutosaveController.continue_in` are used.
    """

    def __init__(self, controller):
        self.controller = controller
        self.session = controller.session
        self.viewer = controller.viewer
        #: The last restore offer shown (a napari Notification with its actions).
        self.offer = None
        self._offered: set = set()

    def check(self, layer):
        """Look for an autosave of the image ``layer`` (in a worker) and offer it."""
        c = self.controller
        if not c.enabled or layer not in self.viewer.layers:
            return None
        folder = c.folder()
        identity = image_identity_of(layer, folder)
        if identity is None:
            return None
        where = _folder_item(layer, folder)
        return c.start_worker(find_job, identity, where[1] if where else None,
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

        when = time.strftime("%H:%M", time.localtime(info.written))
        day = time.strftime("%d %b", time.localtime(info.written))
        # napari's toast shows the first line, elided: the question and the time come first
        message = (f"Restore unsaved labels of '{layer.name}' (autosaved {when})?\n"
                   f"EdgeSAM autosaved the Labels layer '{info.labels_name}' of this image at "
                   f"{when} on {day}, with {info.objects} object(s) and their prompts, and "
                   "they were not saved. Restore puts them back (Ctrl+Z undoes it); Discard "
                   "deletes the autosave.")
        self.offer = Notification(
            message, NotificationSeverity.INFO,
            actions=[("Restore", lambda *_: self.restore(layer, info)),
                     ("Discard", lambda *_: self.discard(info))])
        notification_manager.dispatch(self.offer)
        self.session.set_status(f"An autosave of '{layer.name}' can be restored "
                                "(see the notification).")

    def discard(self, info) -> None:
        """Delete the autosaves of the image ``info`` (an AutosaveInfo) describes."""
        self.controller.start_worker(store_mod.discard_autosaves, info.identity,
                                     errored=lambda exc: _log.info("autosave discard: %s",
                                                                   exc))
        self.session.set_status("Autosave discarded.")

    def restore(self, image_layer, info):
        """Put the autosave ``info`` into the target Labels layer of ``image_layer`` (a new
        Labels layer when there is none of its shape) as one undo step, and adopt its
        prompt log; returns the worker. When ``image_layer`` is no longer open nothing
        changes and the autosave is kept (offered again when the image is reopened)."""
        from .prompt_layers import transform_kwargs

        s = self.session
        if image_layer not in self.viewer.layers:
            self._offered.discard(info.folder)
            s.set_status(f"'{image_layer.name}' is no longer open: its autosave is kept, "
                         "open the image again to restore it.")
            return None
        layer = s.target.layer
        if s.image_layer is not image_layer or layer is None or \
                tuple(layer.data.shape) != info.shape or layer not in self.viewer.layers:
            layer = self.viewer.add_labels(np.zeros(info.shape, np.dtype(info.dtype)),
                                           name=info.labels_name,
                                           **transform_kwargs(image_layer))
            if s.image_layer is image_layer:
                s.set_labels_layer(layer)
        s.set_status(f"Restoring the autosave of '{image_layer.name}'...")
        return self.controller.start_worker(
            restore_job, info.folder, layer.data,
            returned=lambda out, lay=layer: self._restored(lay, info, *out),
            errored=lambda exc: s.notify_error(exc, "autosave not restored: "),
            desc="EdgeSAM: restoring the autosave")

    def _restored(self, layer, info, edits, log, top):
        s = self.session
        if layer not in self.viewer.layers:  # closed meanwhile: the autosave stays
            self._offered.discard(info.folder)
            return
        with layer.block_history():
            for idx, values in edits:
                layer.data_setitem(idx, values, refresh=False)
        layer.refresh()
        if log is not None and log.objects:
            s.prompt_recorder.adopt(layer, log)
        if top:
            layer.selected_label = top + 1
        self.controller.continue_in(layer, info)
        s.set_status(f"Restored the autosave of '{info.labels_name}' "
                     f"({sum(len(v) for _, v in edits)} pixels; Ctrl+Z takes it back).")
