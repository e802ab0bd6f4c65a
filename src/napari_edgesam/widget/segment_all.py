"""*Segment all*: every object of the current slice (or of the whole stack, linked in 3D)
without clicks, committed as one undo step (no Qt widgets).

The automatic workflow (:func:`~napari_edgesam.workflows.automatic.segment_slice`,
:func:`~napari_edgesam.workflows.automatic.segment_stack`) runs in a worker with the
session's model and intensity mapping; its objects arrive in the target Labels layer with
new ids (after the layer's largest), painting only background unless the panel's "paint
only on background" is off, as ONE undo step (Ctrl+Z takes them all back). The user then
corrects by clicks as usual. The view is :mod:`._segment_all_panel`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SegmentAll", "segment_all_job"]


def segment_all_job(predictor, data, geom, keys, mapping, params, token):
    """Segment the slices ``keys`` of ``data`` (worker thread).

    Parameters
    ----------
    predictor : Predictor
    data : array-like
        The image layer's data (level 0 of a multiscale image).
    geom : ImageGeometry
    keys : list of tuple of int
        Slice keys into ``data`` (:meth:`ImageGeometry.slice_key`): one for the current
        slice, or every slice of the stack axis in order (then linked in 3D).
    mapping : IntensityMapping or None
        The session's mapping (None: chosen by the workflow).
    params : AutoParams
    token : CancelToken
        Cancelling stops the run between decoder calls.

    Returns
    -------
    (list of ndarray of uint32, shape (H, W), int) or None
        Object ids per slice (0 background, 1..n; linked ids across slices of a stack) and
        n, the largest id (found here, not on the GUI thread); None when cancelled.
    """
    from napari_edgesam.engine.errors import CancelledError
    from napari_edgesam.workflows.automatic import segment_slice, segment_stack

    try:
        if len(keys) == 1:
            plane = geom.read_slice(data, keys[0])
            res = segment_slice(predictor, plane, params=params, mapping=mapping,
                                cancel=token, rgb=geom.rgb)
            labels = [res.labels]
        else:
            res = segment_stack(predictor, _Planes(data, geom, keys), params=params,
                                mapping=mapping, rgb=geom.rgb, link=True, cancel=token)
            labels = [np.asarray(res.labels[i]) for i in range(len(keys))]
    except CancelledError:
        return None
    return labels, max((int(p.max()) for p in labels), default=0)


class _Planes:
    """The slices ``keys`` of ``data``, read one at a time."""

    def __init__(self, data, geom, keys):
        self.data, self.geom, self.keys = data, geom, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.geom.read_slice(self.data, self.keys[i])


class SegmentAll:
    """Runs *Segment all* for an :class:`~.session.AnnotationSession` and commits the
    result.

    Parameters
    ----------
    session : AnnotationSession
        Only its public API is used.
    on_change : callable, optional
        ``on_change()`` when :attr:`busy` changed.
    """

    def __init__(self, session, on_change=None):
        self.session = session
        self._on_change = on_change or (lambda: None)
        self.worker = None
        self._token = None
        self._job = None

    @property
    def busy(self) -> bool:
        """Whether a run is in progress."""
        return self.worker is not None

    def stack_keys(self) -> list | None:
        """The slice keys of the stack through the current slice (the one leading axis of
        size > 1 besides the channel axis), or None when the image is not a stack."""
        s = self.session
        geom = s.geometry
        if geom is None or s.lead is None:
            return None
        axes = [i for i, n in enumerate(geom.leading_shape)
                if n > 1 and i != geom.channel_axis]
        if len(axes) != 1:
            return None
        ax = axes[0]
        keys = []
        for z in range(geom.leading_shape[ax]):
            lead = list(s.lead)
            lead[ax] = z
            keys.append((tuple(lead), s.slice_key(tuple(lead))))
        return keys

    def start(self, params, whole_stack: bool = False):
        """Segment the current slice (or the whole stack) with ``params`` (AutoParams).

        Returns
        -------
        worker or None
            None when there is no image, model or slice yet, or a run is going on.
        """
        from napari_edgesam.engine.cancel import CancelToken

        s = self.session
        if self.busy or s.image_layer is None or s.predictor is None or s.lead is None:
            s.set_status("Segment all needs an image and a model (and no run going on).")
            return None
        if whole_stack:
            pairs = self.stack_keys()
            if pairs is None:
                s.set_status("Segment all: the image is not a stack; segmenting this slice.")
                pairs = [(tuple(s.lead), s.slice_key())]
        else:
            pairs = [(tuple(s.lead), s.slice_key())]
        layer = s.image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        s.prefetcher.activity()  # a prefetch in flight would take the cores from the run
        self._token = token = CancelToken()
        self._job = {"image": layer, "leads": [lead for lead, _ in pairs],
                     "geometry": s.geometry}
        where = s.slice_text() if len(pairs) == 1 else f"{len(pairs)} slices"
        s.set_status(f"Segment all: finding every object on {where}...")
        self.worker = s.start_worker(
            segment_all_job, s.predictor, data, s.geometry, [k for _, k in pairs],
            s.current_mapping, params, token, returned=self._on_done,
            finished=self._on_finished, desc=f"EdgeSAM: segmenting all objects on {where}")
        self._on_change()
        return self.worker

    def cancel(self) -> None:
        """Stop the run (nothing is written)."""
        if self._token is not None:
            self._token.cancel()
            self.session.set_status("Cancelling Segment all...")

    def _on_finished(self):
        self.worker = None
        self._token = None
        self._on_change()

    def _on_done(self, out):
        s = self.session
        job, self._job = self._job, None
        if out is None or job is None:
            s.set_status("Segment all cancelled: nothing was written.")
            return
        if s.image_layer is not job["image"] or s.geometry is not job["geometry"]:
            s.set_status("Segment all: the image changed during the run; nothing was written.")
            return
        labels, n = out
        if n == 0:
            s.set_status("Segment all found no object (try another object size).")
            return
        layer = s.ensure_labels_layer()
        if s.target.label_ids.next_id(layer) is None:
            s.set_status(f"Segment all: {n} object(s) found; waiting for the largest id of "
                         f"'{layer.name}' (a large layer is being scanned)...")
        # at once when the layer's next free id is known, else when its scan ends
        s.target.label_ids.when_known(
            layer, lambda first: self._write(job, labels, layer, n, int(first)))

    def _write(self, job, labels, layer, n: int, first: int) -> None:
        """Paint the objects into ``layer`` with ids ``first..first + n - 1``."""
        s = self.session
        if layer not in s.viewer.layers or s.image_layer is not job["image"]:
            s.set_status("Segment all: the image or its Labels layer went away; nothing was "
                         "written.")
            return
        edits = [(job["geometry"].labels_index(lead), plane)
                 for lead, plane in zip(job["leads"], labels, strict=True)]
        try:
            painted, objects = s.target.write_objects(layer, edits, int(first),
                                                      s.paint_background_only)
        except ValueError as exc:
            s.notify_error(exc)
            return
        s.prompt_recorder.forget(layer, range(int(first), int(first) + n))
        s.history_changed.emit()
        s.set_status(f"Segment all: {objects} object(s) ({painted} px) as labels "
                     f"{first}..{first + n - 1}. Ctrl+Z undoes them all.")
