"""Following one edit through a napari Labels layer's undo and redo (no Qt, no imports).

napari 0.9 has no public history API or event. A step of a Labels layer's history is a
list of "atoms" (one per ``data_setitem``); undo moves the step from the private
``_undo_history`` queue to ``_redo_history`` and redo back, rebuilding the list but
keeping the atoms themselves. So one atom, taken right after the edit
(:func:`last_step`), names the step for good, and :func:`step_state` says where it is.
The prompt log uses it: a correction's change of the log counts while its step is
applied (:mod:`.prompt_record`), followed by a :class:`StepWatch` also once the step has
left both queues. ``tests/test_corrections.py`` pins the queues.
"""

from __future__ import annotations

__all__ = ["StepWatch", "last_step", "step_state"]


def last_step(layer):
    """A token naming the newest step of ``layer``'s undo history (None when empty): one
    of the step's atoms, found again by identity after any number of undos and redos."""
    history = getattr(layer, "_undo_history", None)
    return history[-1][0] if history and history[-1] else None


def step_state(layer, token) -> str | None:
    """Where the step named by ``token`` (:func:`last_step`) is now.

    Returns
    -------
    str or None
        ``"applied"`` (in the undo queue), ``"undone"`` (in the redo queue), or None when
        it is in neither (its undo was dropped by a newer edit, it fell off napari's
        100-step history, or napari reset the history).
    """
    for name, state in (("_undo_history", "applied"), ("_redo_history", "undone")):
        for item in getattr(layer, name, ()):
            if any(atom is token for atom in item):
                return state
    return None


def _holds(item, atom) -> bool:
    return any(a is atom for a in item)


class StepWatch:
    """Whether one step of a Labels layer's history is applied, followed from one
    :meth:`observe` to the next, also after the step has left both of napari's queues.

    A step leaves both queues for good in three ways: undone, then its redo dropped by a
    new edit; fallen off the oldest end of the undo history (napari keeps 100 steps); or
    the history reset (napari makes new queues, e.g. when the layer stops being editable).
    Undo is last in, first out, so the step seen just above this one in the undo queue
    tells the first two apart: while that step is still in the undo queue this one cannot
    have been undone (it fell off: applied); when it is gone too, or this step was the
    newest, this one was undone. A reset keeps the state last seen. The answer is right
    when the layer is observed after each new step (the prompt recorder observes on the
    layer's paint event, which napari emits for every step, even on a hidden layer, where
    an undo emits nothing).

    Parameters
    ----------
    layer : napari.layers.Labels
    token : object
        One atom of the step (:func:`last_step`, taken right after the edit).

    Attributes
    ----------
    applied : bool
        The state last observed.
    """

    def __init__(self, layer, token):
        self.token = token
        self.applied = True
        self._queue = None  # the undo queue seen last (a new one: the history was reset)
        self._above = None  # an atom of the step above this one, when last seen applied
        self._final = False  # in neither queue: it can never come back
        self.observe(layer)

    def observe(self, layer) -> bool:
        """Read where the step is in ``layer``'s history now; returns :attr:`applied`."""
        undo = getattr(layer, "_undo_history", None)
        if self._final or undo is None:
            return self.applied
        if self._queue is not None and undo is not self._queue:
            self._final = True  # a reset: the history is gone, the state kept
            return self.applied
        self._queue = undo
        for i, item in enumerate(undo):
            if _holds(item, self.token):
                self.applied = True
                self._above = undo[i + 1][0] if i + 1 < len(undo) and undo[i + 1] else None
                return True
        if any(_holds(item, self.token) for item in getattr(layer, "_redo_history", ())):
            self.applied = False
            return False
        self._final = True
        self.applied = self.applied and self._above is not None and any(
            _holds(item, self._above) for item in undo)
        return self.applied
