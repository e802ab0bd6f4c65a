"""The run: :class:`PropagationRun` steps one prepared propagation slice by slice (the up
sweep, then the down sweep), asks :mod:`.stop_rules` where each direction ends, and builds
the :class:`~.result.PropagationResult` (at the end, or as a consistent snapshot at any
time). Runs are planned by :class:`~.planner.Propagator`, whose :class:`ObjectPlan` s and
:class:`Chain` s (one per direction from each annotated slice) are defined here.

Slice indices ``z`` are along the slice axis, from 0; masks are
:class:`~napari_edgesam.engine.transforms.MaskCrop` s of ``(Y, X)`` slices.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ...engine.cancel import CancelToken
from ...engine.errors import InvalidInputError
from ...engine.transforms import MaskCrop
from .embeddings import EMBEDDING_BYTES, SliceEmbeddings
from .prompts import as_crop, derive_prompts, keep_touching
from .records import ChainEnd, PropagationStep, SliceRecord
from .result import ObjectResult, PropagationResult
from .stop_rules import PredictedMask, bound_end, overlaps, seed_reason, stop_reason

if TYPE_CHECKING:  # the planner makes runs: imported for the annotations only
    from .planner import Propagator

_log = logging.getLogger("napari_edgesam.workflows.propagation")

__all__ = ["Chain", "ObjectPlan", "ProgressCallback", "PropagationRun"]

#: ``progress(done, total, z)``: slices done, an upper bound of the run's slices, the slice
#: just processed (None in the final call).
ProgressCallback = Callable[[int, int, "int | None"], None]


@dataclass
class Chain:
    """One direction of propagation from one annotated slice of one object (mutable: the
    run advances it).

    Attributes
    ----------
    object_id : hashable
    start : int
        The annotated slice it starts from.
    direction : int
        +1 (increasing z) or -1.
    bound : int
        The last slice it may visit (inclusive).
    bound_reason : str
        Its end when it passes ``bound`` (:func:`~.stop_rules.bound_end`).
    gap : bool
        Whether it fills the gap between two annotated slices.
    prev_mask : MaskCrop or None
        The last accepted mask (``(Y, X)`` slice frame).
    last, next_z : int
        The last slice accepted and the next to visit.
    active : bool
    end : ChainEnd or None
        Set by :meth:`finish`.
    candidates : dict
        ``z -> (SliceRecord, MaskCrop or None)``: what it found on each slice.
    """

    object_id: object
    start: int
    direction: int
    bound: int              # last slice it may visit (inclusive)
    bound_reason: str       # reason when it reaches past ``bound``
    gap: bool               # between two annotated slices
    prev_mask: MaskCrop | None = None
    last: int = 0
    next_z: int = 0
    active: bool = True
    end: ChainEnd | None = None
    candidates: dict = field(default_factory=dict)  # z -> (record, mask)

    def __post_init__(self):
        self.last = self.start
        self.next_z = self.start + self.direction

    def finish(self, reason: str, at: int | None = None) -> None:
        """End the chain with ``reason`` (one of :data:`~.stop_rules.STOP_REASONS`) at
        slice ``at`` (see :class:`~.records.ChainEnd`)."""
        self.active = False
        self.end = ChainEnd(self.object_id, self.start, self.direction, self.last, reason, at)


@dataclass
class ObjectPlan:
    """What a run does for one object (made by :class:`~.planner.Propagator`).

    Attributes
    ----------
    object_id : hashable
    annotations : dict
        ``z -> SliceAnnotation``: all annotations of the object after the run.
    evaluate : list of int
        Annotated slices to compute now.
    known : dict
        ``z -> MaskCrop or None``: annotated slices' masks known from a previous result.
    chains : list of Chain
    clear : (int, int) or None
        Inclusive slice range to clear in the base result (a re-propagation).
    drop_ends : callable ``(ChainEnd) -> bool`` or None
        Which of the base result's chain ends to drop.
    """

    object_id: object
    annotations: dict            # all annotations of the object after the run
    evaluate: list               # annotation slices to compute now
    known: dict                  # annotation slice -> mask known from a previous result
    chains: list
    clear: tuple[int, int] | None = None  # slice range to clear in the base result
    drop_ends: Callable | None = None


class PropagationRun:
    """One propagation run, iterable slice by slice.

    Iterating yields a :class:`PropagationStep` after every processed slice, so that a GUI
    worker (e.g. napari's ``thread_worker``) can report progress and preview masks, and
    abort by simply stopping the iteration (``close()``): the result is then the partial,
    consistent result of the slices done so far. :meth:`result` can be called at any time.

    Create runs with :meth:`Propagator.start` or :meth:`Propagator.start_repropagation`.

    Parameters
    ----------
    propagator : Propagator
        The stack, predictor, mapping and settings.
    plans : list of ObjectPlan
    z_range : (int, int)
        Inclusive slice limits.
    base : PropagationResult or None
        The result a re-propagation starts from.
    token : CancelToken, optional
        The run's cancellation (:attr:`token`); a new one by default. Cancelling it (here,
        through :meth:`cancel`, or through its stop file) stops the run like :meth:`cancel`.
    """

    def __init__(self, propagator: Propagator, plans: list, z_range: tuple[int, int],
                 base: PropagationResult | None, token: CancelToken | None = None):
        self._p = propagator
        self._plans = plans
        self.z_range = z_range
        self._base = base
        self._emb = SliceEmbeddings(propagator.predictor, propagator.source,
                                    propagator.mapping, propagator.settings.memo_slices,
                                    propagator.tiled, propagator.tile_size)
        #: The run's one cancellation flag: cancelled by :meth:`cancel`, by ``should_cancel``
        #: and when the iteration stops early; it terminates a running encoder.
        self.token = token if token is not None else CancelToken()
        self._emb.run_options = self.token.run_options()
        self._decoder_calls = 0
        #: Slices the model could not take, with the reason (their chains ended there).
        self.unusable: dict[int, str] = {}
        self._annot_masks: dict = {}   # (object_id, z) -> (record, mask)
        self._finished = False
        self._started = False
        self._seeded = False
        self._result: PropagationResult | None = None
        self.total = self._count_total()
        self.done = 0

    # -- public -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PropagationStep]:
        if self._started:
            raise RuntimeError("a PropagationRun can be iterated only once")
        self._started = True
        with self._memory_scope():
            try:
                yield from self._steps()
            except GeneratorExit:
                self._cancel()
                raise
            except Exception:
                if not self.token.cancelled:
                    raise
                self._cancel()  # cancel() terminated an encoder run: keep the slices done
            finally:
                if not self._finished:
                    self._cancel()
                self._emb.close()

    def cancel(self) -> None:
        """Stop the run: an encoder run in progress is terminated, and the run ends before
        the next slice (also: stop iterating, or ``close()``). Thread-safe."""
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled (its :attr:`token` is)."""
        return self.token.cancelled

    def result(self) -> PropagationResult:
        """The result so far: complete once iteration has finished; before that a consistent
        snapshot of the slices done (after :meth:`cancel` the unfinished directions end with
        ``'cancelled'``, so a GUI can commit it at once without waiting for the worker)."""
        if self._result is not None and self._finished:
            return self._result
        return self._build_result()

    def run(self, progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None) -> PropagationResult:
        """Run to the end (or until ``should_cancel()`` returns True) and return the result.

        Parameters
        ----------
        progress : callable ``(done, total, z)``, optional
            Called after every slice; ``z`` is the slice just processed (None in the final
            call, where ``done == total``).
        should_cancel : callable ``() -> bool``, optional
            Polled before every slice (before its embedding is computed).
        """
        self._should_cancel = should_cancel
        gen = iter(self)
        try:
            for step in gen:
                if progress is not None:
                    progress(step.done, step.total, step.z)
        finally:
            gen.close()
        if progress is not None:
            progress(self.total, self.total, None)
        return self.result()

    # -- internals ----------------------------------------------------------------------
    _should_cancel: Callable[[], bool] | None = None

    def _count_total(self) -> int:
        zs_up, zs_down, ann = set(), set(), set()
        for plan in self._plans:
            ann.update(z for z in plan.evaluate if not plan.annotations[z].is_mask)
            for ch in plan.chains:
                rng = (range(ch.start + 1, ch.bound + 1) if ch.direction > 0
                       else range(ch.bound, ch.start))
                (zs_up if ch.direction > 0 else zs_down).update(rng)
        return len(ann) + len(zs_up) + len(zs_down)

    def _memory_scope(self):
        """The cache's :meth:`~napari_edgesam.engine.cache.EmbeddingCache.run_scope` for
        this run's whole-slice embeddings: they stay in memory while they fit the run's
        bound (a share of the available memory), disk entries are written in the
        background and flushed at the end, and the bound comes back afterwards."""
        cache = getattr(self._p.predictor, "cache", None)
        if self._p.tiled or not hasattr(cache, "run_scope"):
            return contextlib.nullcontext()
        return cache.run_scope(self.total * EMBEDDING_BYTES)

    def _next_slice(self, chains: list, z: int, direction: int) -> int | None:
        """The slice the run will most likely ask for after ``z`` (prepared ahead while
        the encoder runs on ``z``): the next one of this sweep while a chain working on
        ``z`` may go on, else the next chain's slice in this sweep, else the first slice
        of the down sweep."""
        n = z + direction
        if any(ch.active and ch.direction == direction and ch.next_z == z
               and (ch.bound - n) * direction >= 0 for ch in chains):
            return n
        later = [ch.next_z for ch in chains if ch.active and ch.direction == direction
                 and (ch.next_z - z) * direction > 0]
        if later:
            return min(later) if direction > 0 else max(later)
        downs = [ch.next_z for ch in chains if ch.active and ch.direction < 0]
        return max(downs) if direction > 0 and downs else None

    def _check_cancel(self) -> bool:
        if (not self.token.cancelled and self._should_cancel is not None
                and self._should_cancel()):
            self.token.cancel()
        return self.token.cancelled

    def _cancel(self) -> None:
        for plan in self._plans:
            for ch in plan.chains:
                if ch.active:
                    self.token.cancel()
                    ch.finish("cancelled")
        if not self._seeded:
            self.token.cancel()
        self._finished = True
        self._result = self._build_result()

    def _predict(self, sp, **prompts) -> PredictedMask:
        """One mask from the slice's :class:`~..engine.slice_predictor.SlicePredictor`
        (whole-slice embedding or tiles: the same call)."""
        self._decoder_calls += 1
        r = sp.predict_slice(points=prompts.get("points"), labels=prompts.get("labels"),
                             box=prompts.get("box"), run_options=self._emb.run_options)
        return PredictedMask(r.mask, r.score)

    def _steps(self) -> Iterator[PropagationStep]:
        settings = self._p.settings
        # 1. Annotated slices (ascending z, one embedding per slice for all objects).
        by_z: dict[int, list] = {}
        for plan in self._plans:
            for z in plan.evaluate:
                by_z.setdefault(z, []).append(plan)
        first_up = min((ch.next_z for plan in self._plans for ch in plan.chains
                        if ch.direction > 0), default=None)  # the up sweep's first slice
        model_zs = [z for z in sorted(by_z)
                    if any(not p.annotations[z].is_mask for p in by_z[z])]
        for z in sorted(by_z):
            updates = []
            needs_model = z in model_zs
            if needs_model and self._check_cancel():
                break
            later = [y for y in model_zs if y > z] or [first_up]
            emb = self._emb.get(z, later[0]) if needs_model else None
            for plan in by_z[z]:
                ann = plan.annotations[z]
                if ann.is_mask:
                    mask, score = as_crop(ann.mask), math.nan
                else:
                    pred = self._predict(emb, points=ann.points, labels=ann.labels, box=ann.box)
                    mask, score = pred.mask, pred.score
                rec = SliceRecord(plan.object_id, z, "annotation", z, 0, True, score, mask.area)
                self._annot_masks[(plan.object_id, z)] = (rec, mask)
                updates.append((plan.object_id, rec, mask))
            if needs_model:
                self.done += 1
                yield PropagationStep(self.done, self.total, z, tuple(updates))
        if self.token.cancelled:
            self._cancel()
            return
        # Seed the chains with their starting masks.
        self._seeded = True
        for plan in self._plans:
            for ch in plan.chains:
                if (plan.object_id, ch.start) in self._annot_masks:
                    mask = self._annot_masks[(plan.object_id, ch.start)][1]
                else:
                    mask = plan.known.get(ch.start)
                ch.last = ch.start
                ch.next_z = ch.start + ch.direction
                reason = seed_reason(mask, settings)
                if reason is not None:
                    ch.finish(reason, ch.start)
                    continue
                ch.prev_mask = mask
                end = bound_end(ch.next_z, ch.direction, ch.bound, ch.bound_reason)
                if end is not None:
                    ch.finish(*end)
        # 2. Up sweep, then 3. down sweep.
        chains = [ch for plan in self._plans for ch in plan.chains]
        lo, hi = self.z_range
        for direction, order in ((+1, range(lo, hi + 1)), (-1, range(hi, lo - 1, -1))):
            for z in order:
                todo = [ch for ch in chains
                        if ch.active and ch.direction == direction and ch.next_z == z]
                if not todo:
                    continue
                if self._check_cancel():
                    self._cancel()
                    return
                try:
                    emb = self._emb.get(z, self._next_slice(chains, z, direction))
                except InvalidInputError as exc:  # this slice only: its chains end here
                    self.unusable[z] = str(exc)
                    _log.warning("propagation: slice %d cannot be used (%s); the chains "
                                 "reaching it end there", z, exc)
                    updates = [self._unusable(ch, z) for ch in todo]
                    self.done += 1
                    yield PropagationStep(self.done, self.total, z, tuple(updates))
                    continue
                updates = []
                for ch in todo:
                    neighbours = []
                    if settings.neighbour_negatives:
                        neighbours = self._neighbour_masks(ch, z - direction)
                    rec, mask = self._step(ch, z, emb, neighbours)
                    updates.append((ch.object_id, rec, mask))
                self.done += 1
                yield PropagationStep(self.done, self.total, z, tuple(updates))
        self._finished = True
        self._result = self._build_result()

    def _unusable(self, ch: Chain, z: int) -> tuple:
        """End ``ch`` at slice ``z``, which the model cannot take (the rest of the run goes
        on); returns the step's update."""
        rec = SliceRecord(ch.object_id, z, "propagated", ch.start, ch.direction, False,
                          math.nan, 0, reason="unusable slice")
        ch.candidates[z] = (rec, None)
        ch.finish("unusable slice", z)
        return ch.object_id, rec, None

    def _neighbour_masks(self, chain: Chain, z: int) -> list:
        """Masks of the run's other objects on slice ``z`` (annotations or candidates)."""
        out = []
        for plan in self._plans:
            if plan.object_id == chain.object_id:
                continue
            found = None
            if (plan.object_id, z) in self._annot_masks:
                found = self._annot_masks[(plan.object_id, z)][1]
            else:
                for ch in plan.chains:
                    cand = ch.candidates.get(z)
                    if cand is not None and cand[1] is not None:
                        found = cand[1]
                        break
            if found is not None:
                out.append(found)
        return out

    def _step(self, ch: Chain, z: int, emb, neighbours) -> tuple[SliceRecord, MaskCrop | None]:
        s = self._p.settings
        prompts = derive_prompts(ch.prev_mask, s, neighbours)
        margin = prompts.pop("margin")
        pred = self._predict(emb, **prompts)
        mask = pred.mask
        if s.keep_connected and mask.any():
            mask = keep_touching(mask, ch.prev_mask, margin)
        score = float(pred.score)
        iou, overlap = overlaps(mask, ch.prev_mask)
        reason = stop_reason(ch.prev_mask, PredictedMask(mask, score), s, overlap=overlap)
        rec = SliceRecord(ch.object_id, z, "propagated", ch.start, ch.direction,
                          reason is None, score, mask.area, iou, overlap, reason)
        if reason is not None:
            ch.candidates[z] = (rec, None)
            ch.finish(reason, z)
            return rec, None
        ch.candidates[z] = (rec, mask)
        ch.prev_mask = mask
        ch.last = z
        ch.next_z = z + ch.direction
        end = bound_end(ch.next_z, ch.direction, ch.bound, ch.bound_reason)
        if end is not None:
            ch.finish(*end)
        return rec, mask

    def _build_result(self) -> PropagationResult:
        p = self._p
        gap_fill = p.settings.gap_fill
        if self._base is not None:
            objects = {oid: obj.copy() for oid, obj in self._base.objects.items()}
        else:
            objects = {}
        for plan in self._plans:
            obj = objects.get(plan.object_id)
            if obj is None:
                obj = objects[plan.object_id] = ObjectResult(plan.object_id, p.source.shape)
            if plan.clear is not None:
                lo, hi = plan.clear
                for z in list(obj.records):
                    if lo <= z <= hi:
                        obj.records.pop(z)
                        obj._set(z, None)
                if plan.drop_ends is not None:
                    obj.ends = [e for e in obj.ends if not plan.drop_ends(e)]
            obj.annotations = dict(plan.annotations)
            for z in plan.evaluate:
                if (plan.object_id, z) in self._annot_masks:
                    rec, mask = self._annot_masks[(plan.object_id, z)]
                    obj.records[z] = rec
                    obj._set(z, mask)
            # Candidates from chains: gap slices may have two.
            cands: dict[int, list] = {}
            for ch in plan.chains:
                for z, (rec, mask) in ch.candidates.items():
                    cands.setdefault(z, []).append((rec, mask))
                if ch.end is not None:
                    obj.ends.append(ch.end)
                elif self.token.cancelled:  # a snapshot after cancel(), before the run stopped
                    obj.ends.append(ChainEnd(ch.object_id, ch.start, ch.direction, ch.last,
                                             "cancelled"))
            for z, items in cands.items():
                accepted = [(r, m) for r, m in items if r.accepted]
                if not accepted:
                    rec, _ = items[0]
                    if z not in obj.records:
                        obj.records[z] = rec
                    continue
                if len(accepted) == 1:
                    obj.records[z], mask = accepted[0]
                    obj._set(z, mask)
                    continue
                if gap_fill == "best":
                    key = (lambda rm: (-_nan_low(rm[0].score), abs(rm[0].z - rm[0].origin),
                                       rm[0].origin))
                else:
                    key = (lambda rm: (abs(rm[0].z - rm[0].origin), -_nan_low(rm[0].score),
                                       rm[0].origin))
                accepted.sort(key=key)
                (rec, mask), (alt, _) = accepted[0], accepted[1]
                obj.records[z] = replace(rec, alternative_score=alt.score)
                obj._set(z, mask)
            obj.records = dict(sorted(obj.records.items()))
        embeddings, encoded = self._emb.counts()
        stats = {"embeddings": embeddings, "encoded": encoded,
                 "decoder_calls": self._decoder_calls}
        return PropagationResult(
            shape=p.source.shape, z_range=self.z_range, objects=objects, mapping=p.mapping,
            cancelled=self.token.cancelled, stats=stats, settings=p.settings,
        )


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x

