"""The prompt log of each Labels layer, kept as the user commits (no Qt widgets).

Every commit from clicks records its prompts (:class:`~napari_edgesam.workflows.prompt_log.
LoggedObject`: slice key in the image data, clicks and box in slice pixels, mapping, tiles,
painting mode) for the Labels layer it went into. Undo and redo are napari's own, on the
layer, so the recorder does not follow them step by step: :meth:`PromptRecorder.log` keeps
only the entries whose label is still on its slice of the layer, and of two entries with
the same label (an id used again after an undo) the later one. Saving writes the labels and
the log beside them (:func:`save_labels_and_log`).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from napari_edgesam.workflows.prompt_log import (
    LoggedObject,
    ModelRecord,
    PromptLog,
    log_path_for,
)

__all__ = ["PromptRecorder", "present", "save_labels_and_log"]


class PromptRecorder:
    """Committed objects' prompts, per Labels layer (layers are held weakly)."""

    def __init__(self):
        self._entries = weakref.WeakKeyDictionary()

    def record(self, layer, obj: LoggedObject, labels_index: tuple[int, ...], model,
               image_layer, channel_axis: int | None = None) -> None:
        """Remember that ``obj`` was committed into ``layer``.

        Parameters
        ----------
        layer : napari.layers.Labels
        obj : LoggedObject
            Its key indexes ``image_layer``'s data (level 0 of a multiscale image).
        labels_index : tuple of int
            The same slice's leading indices in ``layer`` (the image's channel axis left
            out).
        model : EdgeSamModel
            The model that made the mask (its files' SHA-256 are recorded once per layer).
        image_layer : napari.layers.Image
        channel_axis : int, optional
            The image's leading axis holding channels (left out of the labels).
        """
        entries = self._entries.setdefault(layer, {"objects": [], "model": None, "image": {}})
        if entries["model"] is None or entries["model"].name != model.name:
            entries["model"] = ModelRecord.of(model)
        data = image_layer.data[0] if image_layer.multiscale else image_layer.data
        entries["image"] = {"name": image_layer.name, "shape": [int(n) for n in data.shape],
                            "dtype": str(data.dtype), "channel_axis": channel_axis}
        entries["objects"].append((obj, tuple(int(i) for i in labels_index)))

    def adopt(self, layer, log: PromptLog) -> None:
        """Continue the log saved with ``layer``'s labels (reopened from disk), so that
        saving it again keeps the objects committed in an earlier visit."""
        ca = log.image.get("channel_axis")
        objects = [(o, tuple(k for i, k in enumerate(o.key) if i != ca)) for o in log.objects]
        self._entries[layer] = {"objects": objects, "model": log.model,
                                "image": dict(log.image)}

    def forget(self, layer, labels) -> None:
        """Drop the entries of ``labels`` (ids now painted by something else than clicks,
        e.g. *Segment all* reusing an undone id)."""
        entries = self._entries.get(layer)
        if entries is not None:
            gone = {int(v) for v in labels}
            entries["objects"] = [e for e in entries["objects"] if e[0].label not in gone]

    def candidates(self, layer) -> tuple[PromptLog, list]:
        """The latest entry of each label committed into ``layer``, unchecked (cheap: no
        pixel is read), and each one's slice index in the layer; :func:`present` keeps
        those whose label is still there (in a worker, on a snapshot)."""
        entries = self._entries.get(layer)
        if entries is None:
            return PromptLog(), []
        last: dict[int, int] = {}
        for i, (obj, _) in enumerate(entries["objects"]):
            last[obj.label] = i
        chosen = [e for i, e in enumerate(entries["objects"]) if last[e[0].label] == i]
        return (PromptLog(model=entries["model"], image=dict(entries["image"]),
                          objects=[obj for obj, _ in chosen]),
                [index for _, index in chosen])

    def log(self, layer) -> PromptLog:
        """The log of ``layer`` as it stands: entries whose label is on its slice.

        Returns
        -------
        PromptLog
            Empty (no model) when nothing was committed into ``layer`` from clicks.
        """
        log, indices = self.candidates(layer)
        return present(log, indices, layer.data)


def present(log: PromptLog, indices, labels) -> PromptLog:
    """``log`` without the objects whose label is no longer on their slice of ``labels``.

    Parameters
    ----------
    log : PromptLog
    indices : list of tuple of int
        Each object's slice index in ``labels`` (:meth:`PromptRecorder.candidates`).
    labels : array-like of int, shape (*lead, H, W)
        The Labels layer's data, or a snapshot of it.
    """
    kept = [obj for obj, index in zip(log.objects, indices, strict=True)
            if np.any(np.asarray(labels[index] if index else labels) == obj.label)]
    return PromptLog(model=log.model, image=dict(log.image), objects=kept)


def save_labels_and_log(path, labels: np.ndarray, log: PromptLog) -> tuple[Path, Path]:
    """Write a label image and its prompt log beside it (both atomically and durably).

    Parameters
    ----------
    path : path-like
        The label TIFF (replaced if it exists: the caller asked the user).
    labels : ndarray of int, shape (*lead, H, W)
        A snapshot of the Labels layer's data (data coordinates).
    log : PromptLog
        Written as ``<name>.prompts.json`` (also when it has no object, so that a log saved
        earlier beside ``path`` never outlives the labels it described).

    Returns
    -------
    (Path, Path)
        The label image and the log.
    """
    from napari_edgesam.workflows.tiff_io import write_tiff_atomic

    path = Path(path)
    axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim, "Q" * (labels.ndim - 2) + "YX")
    write_tiff_atomic(path, np.asarray(labels), overwrite=True, compression="zlib",
                      photometric="minisblack", metadata={"axes": axes})
    return path, log.save(log_path_for(path))
