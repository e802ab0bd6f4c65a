"""A propagation run of the dock widget, without Qt: what it is about
(:class:`RunContext`, :class:`RunRequest`), its steps (:class:`RunStep`,
:class:`RunProgress`) and its result (:class:`Outcome`); its two worker jobs are in
:mod:`.workers`.

An adapter around :mod:`napari_edgesam.workflows.propagation` (no model logic here):
:func:`~.workers.propagation_prepare_job` chooses the intensity mapping (it may sample
the whole stack) and plans
the :class:`~napari_edgesam.workflows.propagation.PropagationRun`, whose slice count is then
known; :func:`~.workers.propagation_steps_job` iterates it and yields one
:class:`RunStep` per decided slice.
:mod:`.propagation_controller` runs them; :mod:`._propagation_panel` is the tab.

Coordinates: ``z`` is the index along the stack axis of the image's data; a *lead* is the
tuple of leading (non-spatial) indices of the image's data (see
:class:`._geometry.ImageGeometry`); mask crops are ``(bool (h, w) array, (row0, col0))`` in
the slice's data pixels, ``(row0, col0)`` the crop's top-left pixel.

All reading, prediction and mask cropping happen in the workers; the GUI thread only writes
the (small) crops into the preview and, at commit, the object's pixels into the Labels layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._geometry import ImageGeometry

__all__ = ["RunContext", "RunRequest", "RunStep", "RunProgress", "Outcome"]


@dataclass
class RunContext:
    """What a run is about (fixed when it starts).

    Attributes
    ----------
    image_layer : napari.layers.Image
    geom : ImageGeometry
        The image's geometry when the run started.
    axis : int
        The image's leading axis the stack runs along.
    lead : tuple of int
        The leading index (image data) of the annotated slice.
    key : tuple
        The annotated slice's index into the image data (channel axis set to the channel).
    object_id : int
        The engine's object id.
    source_label : int or None
        The label the object came from (source "label"), else None.
    labels_layer : napari.layers.Labels or None
        The Labels layer of ``source_label``.
    mapping : IntensityMapping or None
        The intensity mapping of the run (set once the run is prepared).
    """

    image_layer: object
    geom: ImageGeometry
    axis: int
    lead: tuple
    key: tuple
    object_id: int
    source_label: int | None
    labels_layer: object
    mapping: object = None

    def same_stack(self, layer, lead) -> bool:
        """Whether ``lead`` (a leading index of ``layer``'s data) lies in this run's stack."""
        if layer is not self.image_layer or lead is None or len(lead) != len(self.lead):
            return False
        ca = self.geom.channel_axis
        return all(a == b for i, (a, b) in enumerate(zip(lead, self.lead, strict=True))
                   if i != self.axis and i != ca)

    def labels_lead(self, z: int) -> tuple:
        """The leading index, in the Labels layer's data, of slice ``z`` of the stack."""
        lead = list(self.lead)
        lead[self.axis] = int(z)
        return self.geom.labels_index(tuple(lead))


@dataclass(frozen=True)
class RunRequest:
    """What the tab asks for (its widgets' values when Propagate is pressed).

    Attributes
    ----------
    source : {"preview", "label"}
        The current preview / prompts, or a label of the target Labels layer.
    label : int
        The label to propagate (source "label").
    axis : int or None
        The image's leading axis of the stack (None: the image has no stack).
    z_range : (int, int)
        Inclusive slice limits along ``axis``, low first.
    settings : PropagationSettings
    """

    source: str
    label: int
    axis: int | None
    z_range: tuple
    settings: object


@dataclass(frozen=True)
class RunStep:
    """What :func:`~.workers.propagation_steps_job` yields after each slice.

    Attributes
    ----------
    done, total : int
        Slices decided so far (the given seed mask's slice included) and an upper bound of
        the slices the run may decide (directions may stop early).
    z : int
        The slice just decided (index along the stack axis).
    live : dict
        ``{z: (bool (h, w) crop, (row0, col0))}``: the object's kept mask on ``z`` (empty
        when rejected or empty).
    """

    done: int
    total: int
    z: int
    live: dict


@dataclass(frozen=True)
class RunProgress:
    """The tab's progress bar: ``state`` is ``"idle"`` (hidden), ``"preparing"`` (busy),
    ``"running"`` (``done`` of at most ``total`` slices), ``"done"`` or ``"cancelled"``
    (``done`` slices decided, the number the status line gives)."""

    state: str = "idle"
    done: int = 0
    total: int = 0


@dataclass
class Outcome:
    """A propagation result, pending (not written yet) or committed.

    Attributes
    ----------
    ctx : RunContext
    result : PropagationResult
    crops : dict
        ``{z: (bool (h, w) crop, (row0, col0))}``: the object's mask on each slice with it.
    replace_label : int or None
        The committed object this result replaces (a re-propagation), else None.
    previous_crops : dict
        The replaced object's crops (same form as ``crops``).
    changed : list of int
        Slices whose mask differs from ``previous_crops``.
    label_id : int or None
        Set at commit.
    layer : napari.layers.Labels or None
        Set at commit.
    """

    ctx: RunContext
    result: object
    crops: dict
    replace_label: int | None = None
    previous_crops: dict = field(default_factory=dict)
    changed: list = field(default_factory=list)
    label_id: int | None = None
    layer: object = None

    @property
    def records(self) -> list:
        """The object's ``SliceRecord`` s, sorted by slice."""
        obj = self.result.objects.get(self.ctx.object_id)
        return [] if obj is None else [obj.records[z] for z in sorted(obj.records)]

    def summary(self) -> str:
        """The result in one line: extent, why each direction stopped, embeddings."""
        result = self.result
        obj = result.objects.get(self.ctx.object_id)
        ends = "; ".join(
            f"{'up' if e.direction > 0 else 'down'}: {e.reason}"
            + (f" at {e.at}" if e.at is not None else "")
            for e in sorted(obj.ends, key=lambda e: (e.start, e.direction))) if obj else ""
        state = "Cancelled: partial result, " if result.cancelled else ""
        stats = result.stats
        return (f"{state}{self.span()}. Stopped {ends}. {stats.get('embeddings', 0)} slices "
                f"embedded ({stats.get('encoded', 0)} encoded now).")

    def span(self) -> str:
        """``"slices 3..11 (9 with the object)"`` or ``"no slice"``."""
        obj = self.result.objects.get(self.ctx.object_id)
        ext = None if obj is None else obj.extent
        if not ext:
            return "no slice"
        return f"slices {ext[0]}..{ext[1]} ({len(obj.slices)} with the object)"
