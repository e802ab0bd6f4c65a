"""The planner: :class:`Propagator` (one stack, one predictor, one mapping, many runs)
checks the annotations, lays out the chains (one per direction from each annotated slice,
bounded by the z-range, the stack and the other annotated slices) and returns a
:class:`~.run.PropagationRun`; :func:`propagate` does it all in one call.

Slice indices ``z`` are along the slice axis, from 0; results have the slice axis first,
``(Z, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ...engine.cancel import CancelToken
from ...engine.errors import InvalidInputError
from ...engine.intensity import IntensityMapping
from .annotation import SliceAnnotation
from .records import ChainEnd
from .result import PropagationResult
from .run import Chain, ObjectPlan, ProgressCallback, PropagationRun
from .settings import PropagationSettings
from .slice_source import SliceSource
from .stop_rules import outward_reason

__all__ = ["Propagator", "propagate"]


def _as_annotations(object_id, value) -> list[SliceAnnotation]:
    if isinstance(value, SliceAnnotation):
        value = [value]
    anns = list(value)
    if not anns:
        raise InvalidInputError(f"object {object_id}: no annotated slice")
    for a in anns:
        if not isinstance(a, SliceAnnotation):
            raise InvalidInputError(
                f"object {object_id}: annotations must be SliceAnnotation, got {type(a).__name__}")
    zs = [a.z for a in anns]
    if len(set(zs)) != len(zs):
        raise InvalidInputError(f"object {object_id}: two annotations on the same slice")
    return sorted(anns, key=lambda a: a.z)


class Propagator:
    """Propagation over one stack with one predictor; reusable for many runs.

    Parameters
    ----------
    predictor : Predictor
        Its cache (``Predictor(model, cache=...)``) stores the embeddings: a second run over
        the same stack with the same mapping re-encodes nothing.
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C) (slice axis at ``axis``)
        See :class:`SliceSource`.
    axis : int
        Slice axis: Z for a z-stack, T for a 2D+t movie. Default 0.
    channel : int, optional
        Channel of a ``(Z, Y, X, C)`` stack (a C of 3 or 4 is RGB(A) otherwise).
    mapping : IntensityMapping, optional
        One mapping for every slice; default the ``"auto"`` :func:`stack_mapping` of the
        whole stack (uint8 as is, else 0.5-99.8 percentiles sampled over the stack).
    settings : PropagationSettings, optional
    tiles : {"auto", "on", "off"}
        Predict on full-resolution windows around the object (:mod:`napari_edgesam.engine.
        tiling`) instead of whole slices shrunk to 1024 pixels; ``"auto"``: for slices over
        2048 pixels. Only the tiles the object occupies are read and encoded.
    tile_size : int, optional
        Tile side in pixels (default 1024).

    Examples
    --------
    >>> prop = Propagator(predictor, stack)                                  # doctest: +SKIP
    >>> res = prop.run({1: SliceAnnotation(30, points=[(120, 80)])})          # doctest: +SKIP
    >>> res.mask(1).shape == stack.shape                                     # doctest: +SKIP
    True
    """

    def __init__(self, predictor, stack, *, axis: int = 0, channel: int | None = None,
                 mapping: IntensityMapping | None = None,
                 settings: PropagationSettings | None = None,
                 tiles: str = "auto", tile_size: int | None = None):
        from ...engine.tiling import needs_tiling

        self.predictor = predictor
        self.source = SliceSource(stack, axis=axis, channel=channel)
        self.settings = settings or PropagationSettings()
        if tiles not in ("auto", "on", "off"):
            raise InvalidInputError(f"tiles must be 'auto', 'on' or 'off', got {tiles!r}")
        self.tiled = tiles == "on" or (
            tiles == "auto" and needs_tiling((self.source.height, self.source.width)))
        self.tile_size = tile_size
        self.mapping = mapping if mapping is not None else self.source.default_mapping()

    # -- helpers ------------------------------------------------------------------------
    def _z_range(self, z_range) -> tuple[int, int]:
        n = self.source.n
        if z_range is None:
            return 0, n - 1
        lo, hi = (int(v) for v in z_range)
        if lo > hi:
            lo, hi = hi, lo
        if lo < 0 or hi > n - 1:
            raise InvalidInputError(f"z-range {lo}..{hi} is outside the stack's 0..{n - 1}")
        return lo, hi

    def _chains(self, oid, zs: list[int], z_range, only_around: int | None = None) -> list:
        lo, hi = z_range
        chains = []
        segs = []
        if only_around is None:
            segs.append((None, zs[0]))
            segs.extend(zip(zs[:-1], zs[1:], strict=True))
            segs.append((zs[-1], None))
        else:
            i = zs.index(only_around)
            segs.append((zs[i - 1] if i > 0 else None, only_around))
            segs.append((only_around, zs[i + 1] if i + 1 < len(zs) else None))
        for a, b in segs:
            if a is None:
                chains.append(Chain(oid, b, -1, lo, outward_reason(lo, self.source.n), False))
            elif b is None:
                chains.append(Chain(oid, a, +1, hi, outward_reason(hi, self.source.n), False))
            elif b - a > 1:
                chains.append(Chain(oid, a, +1, b - 1, "met other annotation", True))
                chains.append(Chain(oid, b, -1, a + 1, "met other annotation", True))
            else:  # adjacent annotated slices: nothing between them
                chains.append(Chain(oid, a, +1, a, "met other annotation", True))
                chains.append(Chain(oid, b, -1, b, "met other annotation", True))
        return chains

    def _check_annotations(self, oid, anns, z_range):
        lo, hi = z_range
        for a in anns:
            if not lo <= a.z <= hi:
                raise InvalidInputError(
                    f"object {oid}: annotated slice {a.z} is outside the z-range {lo}..{hi}")
            if a.is_mask and a.mask.shape != self.source.shape[1:]:
                raise InvalidInputError(
                    f"object {oid}: the mask on slice {a.z} has shape {a.mask.shape}; the "
                    f"slices are {self.source.shape[1:]} (Y, X)")

    # -- runs ---------------------------------------------------------------------------
    def start(self, objects, *, z_range=None,
              token: CancelToken | None = None) -> PropagationRun:
        """Prepare a run (nothing is computed until it is iterated or :meth:`run`).

        Parameters
        ----------
        objects : mapping or sequence
            ``{object_id: annotations}`` where annotations is a :class:`SliceAnnotation` or
            a list of them (one per slice); a sequence gives ids 1, 2, ...
        z_range : (int, int), optional
            Inclusive slice limits; default the whole stack.
        token : CancelToken, optional
            The run's cancellation (:attr:`PropagationRun.token`); a new one by default.
        """
        zr = self._z_range(z_range)
        if not isinstance(objects, Mapping):
            objects = {i: v for i, v in enumerate(objects, start=1)}
        if not objects:
            raise InvalidInputError("no object to propagate")
        plans = []
        for oid, value in objects.items():
            anns = _as_annotations(oid, value)
            self._check_annotations(oid, anns, zr)
            zs = [a.z for a in anns]
            plans.append(ObjectPlan(oid, {a.z: a for a in anns}, zs, {},
                                    self._chains(oid, zs, zr)))
        return PropagationRun(self, plans, zr, None, token)

    def run(self, objects, *, z_range=None, progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None,
            token: CancelToken | None = None) -> PropagationResult:
        """Propagate ``objects`` through the stack; see :meth:`start` and
        :meth:`PropagationRun.run`."""
        return self.start(objects, z_range=z_range, token=token).run(progress, should_cancel)

    def start_repropagation(self, previous: PropagationResult, object_id,
                            annotation: SliceAnnotation,
                            token: CancelToken | None = None) -> PropagationRun:
        """Prepare a run that applies one corrected slice to a previous result.

        Only the slices between the annotated slices on either side of ``annotation.z``
        (or the z-range ends where there is none) are recomputed, only for ``object_id``;
        everything else is copied from ``previous``.

        Parameters
        ----------
        previous : PropagationResult
            A result of this propagator (same stack and mapping).
        object_id : hashable
            The object corrected (a new id adds an object).
        annotation : SliceAnnotation
            The corrected slice: a mask (e.g. the user's edited labels) or new prompts.
        token : CancelToken, optional
            The run's cancellation (:attr:`PropagationRun.token`); a new one by default.
        """
        if previous.shape != self.source.shape:
            raise InvalidInputError("the previous result is for a stack of another shape")
        zr = previous.z_range
        self._check_annotations(object_id, [annotation], zr)
        obj = previous.objects.get(object_id)
        anns = dict(obj.annotations) if obj is not None else {}
        anns[annotation.z] = annotation
        zs = sorted(anns)
        z = annotation.z
        i = zs.index(z)
        below = zs[i - 1] if i > 0 else None
        above = zs[i + 1] if i + 1 < len(zs) else None
        clear = ((below + 1) if below is not None else zr[0],
                 (above - 1) if above is not None else zr[1])
        known = {}
        for nz in (below, above):
            if nz is not None and obj is not None:
                known[nz] = obj.slice_crop(nz)

        def drop(e: ChainEnd, below=below, above=above, z=z) -> bool:
            # The chains whose slices lie in the cleared range: those leaving the annotated
            # slices on either side towards z (gap or outward), and any from z itself.
            return ((e.start == z) or (below is not None and e.start == below and e.direction > 0)
                    or (above is not None and e.start == above and e.direction < 0))

        plan = ObjectPlan(object_id, dict(sorted(anns.items())), [z], known,
                          self._chains(object_id, zs, zr, only_around=z), clear, drop)
        return PropagationRun(self, [plan], zr, previous, token)

    def repropagate(self, previous: PropagationResult, object_id, annotation: SliceAnnotation,
                    *, progress: ProgressCallback | None = None,
                    should_cancel: Callable[[], bool] | None = None,
                    token: CancelToken | None = None) -> PropagationResult:
        """Apply one corrected slice and recompute only the affected range; see
        :meth:`start_repropagation`."""
        return self.start_repropagation(previous, object_id, annotation, token).run(
            progress, should_cancel)


def propagate(predictor, stack, objects, *, axis: int = 0, channel: int | None = None,
              mapping: IntensityMapping | None = None, z_range=None,
              settings: PropagationSettings | None = None,
              progress: ProgressCallback | None = None,
              should_cancel: Callable[[], bool] | None = None,
              tiles: str = "auto", tile_size: int | None = None,
              token: CancelToken | None = None) -> PropagationResult:
    """Propagate objects through a stack in one call.

    Parameters
    ----------
    predictor : Predictor
    stack : array-like, shape (Z, Y, X) or (Z, Y, X, C)
        Slice axis at ``axis`` (0 by default; time for 2D+t).
    objects : mapping or sequence
        ``{object_id: SliceAnnotation or [SliceAnnotation, ...]}``.
    axis, channel, mapping, settings, tiles, tile_size
        See :class:`Propagator`.
    z_range : (int, int), optional
        Inclusive slice limits.
    progress : callable ``(done, total, z)``, optional
    should_cancel : callable ``() -> bool``, optional
    token : CancelToken, optional
        Cancels the run (as :meth:`PropagationRun.cancel`); see :meth:`Propagator.start`.

    Returns
    -------
    PropagationResult
        ``result.mask(object_id)`` is bool ``(Z, Y, X)`` (slice axis first).
    """
    prop = Propagator(predictor, stack, axis=axis, channel=channel, mapping=mapping,
                      settings=settings, tiles=tiles, tile_size=tile_size)
    return prop.run(objects, z_range=z_range, progress=progress, should_cancel=should_cancel,
                    token=token)
