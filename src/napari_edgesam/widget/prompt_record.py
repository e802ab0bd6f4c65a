"""The prompt log of each Labels layer, kept as the user commits (no Qt widgets).

Every commit from clicks records its prompts (:class:`~napari_edgesam.workflows.prompt_log.
LoggedObject`: slice key in the image data, clicks and box in slice pixels, mapping, tiles,
painting mode) for the Labels layer it went into. Undo and redo are napari's own, on the
layer, so the recorder does not follow commits step by step: :meth:`PromptRecorder.log`
keeps only the entries whose label is still on its slice of the layer, and of two commits
with the same label (an id used again after an undo) the later one. Corrections
(re-segment, merge, split) change the log with their undo step and are followed through
napari's undo and redo queues (see :class:`PromptRecorder`). Saving writes the labels and
the log beside them (:func:`save_labels_and_log`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_edgesam.workflows.prompt_log import (
    LoggedObject,
    ModelRecord,
    PromptLog,
    log_path_for,
)

from .history import StepWatch

__all__ = ["PromptRecorder", "present", "save_labels_and_log"]


@dataclass(eq=False)
class _Step:
    """One change of a layer's log, in the order made.

    ``kind``: ``"commit"`` (new objects; earlier entries of their labels are superseded),
    ``"replace"`` (a re-segmented object: its entries on ``index`` replaced), ``"relabel"``
    (merged objects: entries of ``labels`` on ``index`` get ``into``, and so does a split
    entry's ``within`` among them), ``"forget"`` (``labels`` dropped). A step with a
    ``token`` (:func:`.history.last_step`) counts only while napari's undo history holds it
    applied, followed by ``watch`` (:class:`.history.StepWatch`); ``applied`` is its last
    seen state.
    """

    kind: str
    entries: list = field(default_factory=list)
    labels: frozenset = frozenset()
    index: tuple | None = None
    into: int = 0
    token: object = None
    applied: bool = True
    watch: object = None


class PromptRecorder:
    """Committed objects' prompts, per Labels layer (layers are held weakly).

    Corrections (:mod:`.corrections`) change the log with their napari undo step: a
    re-segmented object's entries on its slice are replaced by the new prompts, merged
    objects' entries all take the id kept (so the merged object keeps every prompt that
    made a part of it, each painted at its place in the log on replay), a split's new id
    gets its own entry; a deleted object drops out because its label is gone. Undoing a
    correction (Ctrl+Z, the panel's Undo or napari's own) takes its log change back, redo
    brings it back: the recorder follows the step in the layer's undo and redo queues
    (:class:`.history.StepWatch`), observing them on the layer's paint and data events, on
    :meth:`observe` (the session's ``history_changed``: the panel's Undo and Redo) and
    whenever the log is asked for, so an undo that emitted nothing (a hidden layer) is
    still seen after a new edit dropped its redo.
    """

    def __init__(self):
        self._entries = weakref.WeakKeyDictionary()

    def _layer_entries(self, layer, model=None, image_layer=None,
                       channel_axis: int | None = None) -> dict:
        entries = self._entries.setdefault(layer, {"steps": [], "model": None, "image": {},
                                                   "watched": False})
        if model is not None and (entries["model"] is None
                                  or entries["model"].name != model.name):
            entries["model"] = ModelRecord.of(model)
        if image_layer is not None:
            data = image_layer.data[0] if image_layer.multiscale else image_layer.data
            entries["image"] = {"name": image_layer.name,
                                "shape": [int(n) for n in data.shape],
                                "dtype": str(data.dtype), "channel_axis": channel_axis}
        return entries

    def record(self, layer, obj: LoggedObject, labels_index: tuple[int, ...], model,
               image_layer, channel_axis: int | None = None, *, token=None,
               replace: bool = False) -> None:
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
        token : object, optional
            The napari undo step that painted it (:func:`.history.last_step`, corrections):
            the entry counts while that step is applied.
        replace : bool
            ``obj`` replaces the entries of its label on that slice (a re-segmented
            object); otherwise it supersedes every earlier entry of its label (a new id).
        """
        entries = self._layer_entries(layer, model, image_layer, channel_axis)
        index = tuple(int(i) for i in labels_index)
        self._add(layer, entries, _Step("replace" if replace else "commit",
                                        [(obj, index)], frozenset({int(obj.label)}),
                                        index, token=token))

    def merge(self, layer, labels_index: tuple[int, ...], labels, into: int, token) -> None:
        """Objects ``labels`` of one slice were merged into ``into`` by the undo step
        ``token``: their entries on that slice take the id ``into``."""
        entries = self._layer_entries(layer)
        self._add(layer, entries, _Step("relabel", labels=frozenset(int(v) for v in labels),
                                        index=tuple(int(i) for i in labels_index),
                                        into=int(into), token=token))

    def split(self, layer, label: int, within: int, token) -> None:
        """The entry just recorded for ``label`` (with the undo step ``token``) is a part
        split off object ``within``: replay gives ``label`` only to pixels of ``within``
        (:attr:`~napari_edgesam.workflows.prompt_log.LoggedObject.within`), as the split
        did. Nothing happens when that entry was not recorded (no prompts)."""
        entries = self._entries.get(layer)
        step = entries["steps"][-1] if entries and entries["steps"] else None
        if step is None or step.token is not token or step.kind != "commit":
            return
        step.entries = [(replace(o, within=int(within)) if o.label == int(label) else o, i)
                        for o, i in step.entries]

    def _add(self, layer, entries: dict, step: _Step) -> None:
        entries["steps"].append(step)
        if step.token is not None:
            step.watch = StepWatch(layer, step.token)
        if step.token is not None and not entries["watched"]:
            entries["watched"] = True
            for ev in (layer.events.paint, layer.events.set_data):
                ev.connect(self._on_layer_event)

    def _on_layer_event(self, event=None) -> None:
        layer = getattr(event, "source", None)
        if layer is not None and layer in self._entries:
            self._observe(layer)

    def _observe(self, layer) -> None:
        """Read where each correction's step is in napari's history (in neither queue:
        dropped from redo by a new edit = undone, fallen off the oldest end of the undo
        history = applied; :class:`.history.StepWatch`)."""
        for step in self._entries[layer]["steps"]:
            if step.watch is not None:
                step.applied = step.watch.observe(layer)

    def observe(self, layer=None) -> None:
        """Follow the corrections' steps of ``layer`` (default: every layer with a log)
        through napari's history now: call it after an undo or redo that the layer may not
        have announced (connected to the session's ``history_changed``)."""
        for lay in [layer] if layer is not None else list(self._entries.keys()):
            if lay in self._entries:
                self._observe(lay)

    def adopt(self, layer, log: PromptLog) -> None:
        """Continue the log saved with ``layer``'s labels (reopened from disk), so that
        saving it again keeps the objects committed in an earlier visit."""
        ca = log.image.get("channel_axis")
        objects = [(o, tuple(k for i, k in enumerate(o.key) if i != ca)) for o in log.objects]
        self._entries[layer] = {"steps": [_Step("commit", objects)], "model": log.model,
                                "image": dict(log.image), "watched": False}

    def forget(self, layer, labels) -> None:
        """Drop the entries of ``labels`` (ids now painted by something else than clicks,
        e.g. *Segment all* reusing an undone id)."""
        entries = self._entries.get(layer)
        if entries is not None:
            entries["steps"].append(_Step("forget", labels=frozenset(int(v) for v in labels)))

    def candidates(self, layer) -> tuple[PromptLog, list]:
        """The entries of ``layer``'s log as its applied steps leave them, unchecked (cheap:
        no pixel is read), and each one's slice index in the layer; :func:`present` keeps
        those whose label is still there (in a worker, on a snapshot)."""
        entries = self._entries.get(layer)
        if entries is None:
            return PromptLog(), []
        self._observe(layer)
        cur: list = []
        for step in entries["steps"]:
            if step.token is not None and not step.applied:
                continue
            if step.kind == "commit":
                new = {o.label for o, _ in step.entries}
                cur = [e for e in cur if e[0].label not in new] + list(step.entries)
            elif step.kind == "forget":
                cur = [e for e in cur if e[0].label not in step.labels]
            elif step.kind == "replace":
                cur = [e for e in cur if not (e[1] == step.index and e[0].label in step.labels)]
                cur += step.entries
            else:  # relabel (a split entry's parent too: replay finds it under ``into``)
                cur = [(_relabel(o, step.labels, step.into), i) if i == step.index else (o, i)
                       for o, i in cur]
        return (PromptLog(model=entries["model"], image=dict(entries["image"]),
                          objects=[obj for obj, _ in cur]),
                [index for _, index in cur])

    def log(self, layer) -> PromptLog:
        """The log of ``layer`` as it stands: entries whose label is on its slice.

        Returns
        -------
        PromptLog
            Empty (no model) when nothing was committed into ``layer`` from clicks.
        """
        log, indices = self.candidates(layer)
        return present(log, indices, layer.data)


def _relabel(obj: LoggedObject, labels: frozenset, into: int) -> LoggedObject:
    # a split's parent merged after the split: replay finds its pixels under ``into`` (with
    # those of the objects merged with it, which the split's mask should not reach)
    label = into if obj.label in labels else obj.label
    within = into if obj.within in labels else obj.within
    if (label, within) == (obj.label, obj.within):
        return obj
    return replace(obj, label=label, within=within)


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
