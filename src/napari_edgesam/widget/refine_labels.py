"""*Refine*: an existing Labels layer's objects on the current slice re-segmented with
EdgeSAM, reviewed in a table, accepted as ONE undo step (no Qt widgets).

Each object's box and deepest point prompt the current slice's embedding
(:func:`~napari_edgesam.workflows.refine.refine_slice`, in a worker); nothing is written until
the user accepts (all, or the objects ticked in the table: by default those whose new mask
scores at least ``min_score``). Accepted objects keep their ids; their old pixels outside
the new mask are cleared and the new mask takes only background or the object's own pixels
(:meth:`~.commit.LabelsTarget.replace_objects`). The view is :mod:`._segment_all_panel`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RefineLabels", "refine_job"]


def refine_job(slice_predictor, labels, token, min_score):
    """Refine every object of ``labels`` (worker thread; see
    :func:`~napari_edgesam.workflows.refine.refine_slice`). Returns the list of
    :class:`~napari_edgesam.workflows.refine.RefinedObject` (None when cancelled)."""
    from napari_edgesam.workflows.refine import refine_slice

    out = refine_slice(slice_predictor, labels, min_score=min_score, cancel=token)
    return None if token.cancelled else out


class RefineLabels:
    """Runs and commits *Refine* for an :class:`~.session.AnnotationSession`.

    Parameters
    ----------
    session : AnnotationSession
        Only its public API is used.
    on_change : callable, optional
        ``on_change()`` when :attr:`busy` or :attr:`pending` changed.
    """

    #: Objects whose new mask scores at least this are ticked for acceptance.
    MIN_SCORE = 0.8

    def __init__(self, session, on_change=None):
        self.session = session
        self._on_change = on_change or (lambda: None)
        self.worker = None
        self._token = None
        #: The refined objects waiting for review (list of RefinedObject) or None.
        self.pending = None
        self._where = None

    @property
    def busy(self) -> bool:
        """Whether a refinement is running."""
        return self.worker is not None

    def start(self, layer):
        """Refine the objects of Labels ``layer`` on the current slice.

        Returns
        -------
        worker or None
            None when the slice is not ready or ``layer`` does not fit the image.
        """
        from napari_edgesam.engine.cancel import CancelToken

        s = self.session
        if self.busy or layer is None:
            return None
        sp = s.embedding
        if sp is None or s.geometry is None or s.lead is None:
            s.set_status("Refine: wait until the slice is ready (or choose an image).")
            return None
        lead = s.geometry.labels_index(s.lead)
        if tuple(layer.data.shape) != tuple(s.geometry.labels_shape):
            s.set_status(f"Refine: '{layer.name}' (shape {tuple(layer.data.shape)}) does not "
                         f"fit the image '{s.image_layer.name}'.")
            return None
        labels = np.asarray(layer.data[lead] if lead else layer.data)
        if not labels.any():
            s.set_status(f"Refine: '{layer.name}' has no object on {s.slice_text()}.")
            return None
        self.pending, self._where = None, (layer, lead, s.image_layer, s.geometry)
        self._token = token = CancelToken()
        s.set_status(f"Refining the objects of '{layer.name}' on {s.slice_text()}...")
        self.worker = s.start_worker(refine_job, sp, labels, token, self.MIN_SCORE,
                                     returned=self._on_done, finished=self._on_finished,
                                     desc=f"EdgeSAM: refining '{layer.name}'")
        self._on_change()
        return self.worker

    def cancel(self) -> None:
        """Stop a running refinement (nothing is written)."""
        if self._token is not None:
            self._token.cancel()

    def _on_finished(self):
        self.worker = None
        self._token = None
        self._on_change()

    def _on_done(self, objects):
        s = self.session
        if objects is None:
            s.set_status("Refine cancelled: nothing was written.")
            return
        self.pending = objects
        n = sum(o.confident for o in objects)
        s.set_status(f"Refine: {len(objects)} object(s), {n} confident. Review the table, "
                     "then Accept or Discard.")
        self._on_change()

    def accept(self, labels=None) -> int:
        """Write the refined objects (``labels``: the ids to accept; default the confident
        ones) as one undo step of the refined layer; returns the pixels changed."""
        from .commit import LabelsTarget

        s = self.session
        if not self.pending or self._where is None:
            return 0
        layer, lead, image, geometry = self._where
        if layer not in s.viewer.layers or s.image_layer is not image:
            s.set_status("Refine: the layer or the image changed; nothing was written.")
            self.discard()
            return 0
        wanted = {o.label for o in self.pending if o.confident} if labels is None \
            else {int(v) for v in labels}
        chosen = [(o.label, o.old, o.new) for o in self.pending if o.label in wanted]
        changed = LabelsTarget.replace_objects(layer, lead, chosen)
        self.pending, self._where = None, None
        s.history_changed.emit()
        s.set_status(f"Refine: {len(chosen)} object(s) replaced in '{layer.name}' ({changed} "
                     "px changed). Ctrl+Z on that layer undoes it.")
        self._on_change()
        return changed

    def discard(self) -> None:
        """Drop the refined objects without writing anything."""
        self.pending, self._where = None, None
        self._on_change()
