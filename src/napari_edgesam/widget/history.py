"""Following one edit through a napari Labels layer's undo and redo (no Qt, no imports).

napari 0.9 has no public history API or event. A step of a Labels layer's history is a
list of "atoms" (one per ``data_setitem``); undo moves the step from the private
``_undo_history`` queue to ``_redo_history`` and redo back, rebuilding the list but
keeping the atoms themselves. So one atom, taken right after the edit
(:func:`last_step`), names the step for good, and :func:`step_state` says where it is.
The prompt log uses it: a correction's change of the log counts while its step is
applied (:mod:`.prompt_record`). ``tests/test_corrections.py`` pins the queues.
"""

from __future__ import annotations

__all__ = ["last_step", "step_state"]


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
        100-step history, or the layer's data was replaced).
    """
    for name, state in (("_undo_history", "applied"), ("_redo_history", "undone")):
        for item in getattr(layer, name, ()):
            if any(atom is token for atom in item):
                return state
    return None
