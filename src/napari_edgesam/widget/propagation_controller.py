"""The "Propagate" tab's controller: starts, follows, cancels, shows, commits and
discards propagation runs (no Qt widgets; :mod:`._propagation_panel` is its view, the run's
pieces and worker jobs are in :mod:`.propagation_run`).

A run has two workers: :func:`~.workers.propagation_prepare_job` (intensity mapping and plan),
then :func:`~.workers.propagation_steps_job`, started with the run's slice count as ``total`` so
that napari's activity panel advances by one per decided slice. The result is pending (shown
in cyan on the preview layer, nothing written) until :meth:`PropagationController.commit`
writes it through the session's one commit path as ONE undo step.
"""

from __future__ import annotations

from psygnal import Signal

from napari_edgesam.engine.cancel import CancelToken

from ._geometry import image_data
from .propagation_run import (
    Outcome,
    RunContext,
    RunProgress,
    RunRequest,
    RunStep,
)
from .workers import propagation_prepare_job, propagation_steps_job

__all__ = ["PropagationController"]


class PropagationController:
    """Runs, shows, commits and discards propagations for the dock widget (no Qt widgets).

    Parameters
    ----------
    dock : EdgeSamWidget
        Used through its public API only: ``session``, ``viewer``, ``start_worker``,
        ``notify_error``, ``set_status``, ``prefetcher``.

    Events (psygnal): ``progress_changed(RunProgress)``, ``outcome_changed()`` (the shown
    outcome: table, summary), ``state_changed()`` (busy, pending), ``message_changed(str)``
    (why the last action did nothing; ``""`` when it did something).
    """

    progress_changed = Signal(object)
    outcome_changed = Signal()
    state_changed = Signal()
    message_changed = Signal(str)

    def __init__(self, dock):
        self.dock = dock
        self.worker = None               # the running worker (prepare, then steps)
        self.run_ctx: RunContext | None = None
        self.pending_outcome: Outcome | None = None
        self.committed: Outcome | None = None
        self.shown: Outcome | None = None
        self.progress = RunProgress()
        self.message = ""
        self.last_label: int | None = None
        self._control: dict = {}  # the run in progress: verb, start slice, run, failed
        self._token = CancelToken()
        self._kind: tuple | None = None
        self._live: dict = {}
        self._dropped = False

    # -- state ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a run is being prepared or runs."""
        return self.worker is not None

    @property
    def pending(self) -> bool:
        """Whether a result waits to be committed (or discarded)."""
        return self.pending_outcome is not None

    @property
    def result(self):
        """The shown ``PropagationResult`` (pending, else the last committed), or None."""
        return None if self.shown is None else self.shown.result

    @property
    def records(self) -> list:
        """The shown result's ``SliceRecord`` s, sorted by slice."""
        return [] if self.shown is None else self.shown.records

    def _set_progress(self, state: str, done: int = 0, total: int = 0) -> None:
        self.progress = RunProgress(state, int(done), int(total))
        self.progress_changed.emit(self.progress)

    def reset_progress(self) -> None:
        """Forget the last run's progress (Discard, a model change); not while running."""
        if not self.busy:
            self._set_progress("idle")

    def _show(self, outcome: Outcome | None) -> None:
        self.shown = outcome
        self.outcome_changed.emit()

    def _say(self, text: str) -> None:
        self.message = text
        self.message_changed.emit(text)

    def refuse(self, text: str) -> None:
        """Say why nothing happens: a notification, the dock's status line and the tab's
        message (:attr:`message`)."""
        from napari.utils.notifications import show_info

        show_info(f"EdgeSAM: {text}")
        self.dock.set_status(f"Propagation: {text}")
        self._say(text[:1].upper() + text[1:])

    def weakest_slice(self) -> int | None:
        """The kept propagated slice with the lowest score (None without one)."""
        import math

        cands = [r for r in self.records
                 if r.accepted and r.source == "propagated" and not math.isnan(r.score)]
        if not cands:
            return None
        return min(cands, key=lambda r: (r.score, r.z)).z

    # -- start a run ----------------------------------------------------------------------
    def _problem(self, axis) -> str | None:
        s = self.dock.session
        if self.worker is not None:
            return "a propagation is running: wait for it or cancel it"
        if s.image_layer is None or s.geometry is None:
            return "choose an image layer first"
        if axis is None:
            return "propagation needs a stack (an image with a z or t axis)"
        if s.model is None:
            return "no model yet"
        problem = s.view_problem()
        return problem.rstrip(".") if problem else None

    def _prompt_annotation(self):
        """``("mask", crop, offset)`` from the session's up-to-date preview on this slice,
        ``("prompts", points, labels, box)`` from its prompts, or None."""
        s = self.dock.session
        crop = s.preview_crop
        if crop is not None and s.preview.lead == s.lead and s.preview_is_current:
            return ("mask", crop[0].copy(), crop[1])
        prompts = s.gather_prompts()
        if prompts.usable:
            return ("prompts", prompts.points, prompts.labels, prompts.box)
        return None

    def propagate(self, req: RunRequest):
        """Start propagating the object on the current slice. Returns the worker, or None
        when nothing could start (the reason is shown, see :meth:`refuse`)."""
        problem = self._problem(req.axis)
        if problem:
            self.refuse(problem + ".")
            return None
        s = self.dock.session
        lead = s.lead
        z = lead[req.axis]
        lo, hi = req.z_range
        if not lo <= z <= hi:
            self.refuse(f"the slice you look at ({z}) is outside the slice limits {lo}..{hi}.")
            return None
        source_label, labels_layer = None, None
        if req.source == "label":
            labels_layer = s.labels_layer
            if labels_layer is None:
                self.refuse("choose the Labels layer that holds the label (target).")
                return None
            source_label = int(req.label)
            ann = ("label", labels_layer, source_label)
        else:
            ann = self._prompt_annotation()
            if ann is None:
                self.refuse("nothing to propagate: click on an object first (its preview "
                            "is what is propagated), or choose a committed label.")
                return None
        oid = source_label if source_label is not None else 1
        ctx = RunContext(s.image_layer, s.geometry, req.axis, tuple(lead), s.slice_key(),
                         oid, source_label, labels_layer)
        self.pending_outcome = None
        if ann[0] != "label":  # the object now lives in the propagation (cyan overlay)
            s.clear_prompt_data()
            s.clear_preview()
        return self._launch(ctx, ann, req.settings, req.z_range, None, ("new", None))

    def repropagate(self, settings):
        """Apply a correction made on the current slice and recompute only the slices it
        affects. The correction is the current preview (new clicks), else (after a commit)
        the label as it now is on this slice in the Labels layer (napari's brush; an empty
        slice means "the object ends here")."""
        base = self.pending_outcome or self.committed
        if base is None:
            self.refuse("propagate an object first.")
            return None
        problem = self._problem(base.ctx.axis)
        if problem:
            self.refuse(problem + ".")
            return None
        s = self.dock.session
        ctx = base.ctx
        lead = s.lead
        if not ctx.same_stack(s.image_layer, lead):
            self.refuse("go to a slice of the propagated stack first.")
            return None
        z = lead[ctx.axis]
        zlo, zhi = base.result.z_range
        if not zlo <= z <= zhi:
            self.refuse(f"slice {z} is outside the run's slice limits {zlo}..{zhi}.")
            return None
        ann = self._prompt_annotation()
        if ann is None:
            if base is self.committed and base.layer is not None \
                    and base.layer in self.dock.viewer.layers:
                ann = ("label", base.layer, base.label_id)
            else:
                self.refuse("correct the object on this slice first (click on it).")
                return None
        # the corrected slice is the one you look at (other axes as in the first run)
        ctx = RunContext(ctx.image_layer, ctx.geom, ctx.axis, tuple(lead), s.slice_key(),
                         ctx.object_id, ctx.source_label, ctx.labels_layer, ctx.mapping)
        if base is self.committed:
            kind = ("replace", base)
        else:
            kind = ("new", None)
            ctx.labels_layer = base.ctx.labels_layer
        s.clear_prompt_data()  # the correction is used up
        s.clear_preview()
        return self._launch(ctx, ann, settings, None, base, kind)

    def _launch(self, ctx: RunContext, ann, settings, z_range, previous, kind):
        s = self.dock.session
        layer = ctx.image_layer
        data = image_data(layer)
        spec = s.mapping_spec()
        known = ctx.mapping
        if known is None:
            smk = s.stack_mapping_key()
            known = s.stack_mappings.get(smk) if smk is not None else None
        if known is None and s.embedding is not None and spec[0] != "contrast":
            known = s.current_mapping
        self._control = {"verb": "Re-propagating" if previous is not None else "Propagating",
                         "z": ctx.lead[ctx.axis]}
        self._token = CancelToken()
        self.run_ctx = ctx
        self._kind = kind
        self._live = {}
        self._dropped = False
        self.dock.prefetcher.activity()  # propagation needs the cores
        self._say("")
        self._set_progress("preparing")
        self.dock.set_status(f"{self._control['verb']} from slice {ctx.lead[ctx.axis]}...")
        self.worker = self.dock.start_worker(
            propagation_prepare_job, data, ctx.geom, ctx, spec, known, s.predictor, settings, ann,
            z_range, None if previous is None else previous.result, self._token,
            returned=self._on_prepared, errored=self._on_error,
            finished=self._on_prepare_finished, desc="EdgeSAM: preparing the propagation")
        self.state_changed.emit()
        return self.worker

    # -- worker callbacks (GUI thread) ----------------------------------------------------
    def _on_prepared(self, out):
        run, seed, mapping = out
        control, ctx = self._control, self.run_ctx
        if self._dropped or ctx is None:
            return
        ctx.mapping = mapping
        control["run"] = run
        if self._token.cancelled:
            run.cancel()  # still iterated: the (empty) consistent result is kept
        previous_crops = self._kind[1].crops if self._kind[0] == "replace" else None
        total = run.total + (0 if seed is None else 1)
        self._set_progress("running", 0, total)
        self.worker = self.dock.start_worker(
            propagation_steps_job, run, ctx.lead[ctx.axis], seed, ctx.object_id, previous_crops,
            yielded=self._on_step, returned=self._on_done, errored=self._on_error,
            finished=self._on_finished,
            desc=f"EdgeSAM: {control['verb'].lower()} through the stack", total=total)

    def _on_prepare_finished(self):
        if "run" not in self._control:  # failed or dropped before the steps started
            self._on_finished()

    def _on_step(self, step: RunStep):
        self._set_progress("running", step.done, step.total)
        self._live.update(step.live)
        if self._token.cancelled:
            return
        self.dock.set_status(f"Propagating: slice {step.z} ({step.done} of at most "
                             f"{step.total})...")
        if step.z in step.live:
            self.dock.session.render_preview()

    def _on_done(self, out):
        result, crops, changed = out
        ctx, kind = self.run_ctx, self._kind
        if self._dropped or ctx is None:
            return
        outcome = Outcome(ctx, result, crops)
        if kind[0] == "replace":
            base = kind[1]
            outcome.replace_label = base.label_id
            outcome.previous_crops = base.crops
            outcome.changed = changed
            outcome.layer = base.layer
        self.pending_outcome = outcome
        done = self.progress.done
        self._set_progress("cancelled" if result.cancelled else "done", done, done)
        self._show(outcome)
        n = f"{done} slice{'s' if done != 1 else ''}"
        what = f"cancelled after {n}" if result.cancelled else f"done, {n}"
        self.dock.set_status(
            f"Propagation {what}: {outcome.span()}. The cyan overlay shows it slice by "
            "slice: Shift+C commits it, Discard drops it.")
        self.dock.session.render_preview()

    def _on_error(self, exc):
        self.dock.notify_error(exc, "propagation failed: ")
        self._control["failed"] = True

    def _on_finished(self):
        failed = self._control.get("failed") or self._dropped
        self.worker = None
        self._control = {}
        self._live = {}
        if failed or self.progress.state in ("preparing", "running"):
            self._set_progress("idle")  # nothing kept: no stale count
        self.state_changed.emit()
        self.dock.session.render_preview()
        self.dock.prefetcher.activity()

    def cancel(self):
        """Stop the run at once (a running encoder is terminated); the partial (consistent)
        result is kept as pending, nothing is written."""
        control = self._control
        if self.worker is None or not control:
            return
        self._token.cancel()
        run = control.get("run")
        if run is not None:
            run.cancel()
        self.dock.set_status("Cancelling the propagation...")

    # -- preview --------------------------------------------------------------------------
    def overlay(self, image_layer, lead):
        """``(bool crop, (row0, col0))`` of the running or pending result on slice ``lead``
        (leading index of the image data) of ``image_layer``, or None."""
        if self.worker is not None and self.run_ctx is not None:
            ctx, crops = self.run_ctx, self._live
        elif self.pending_outcome is not None:
            ctx, crops = self.pending_outcome.ctx, self.pending_outcome.crops
        else:
            return None
        if not ctx.same_stack(image_layer, lead):
            return None
        return crops.get(lead[ctx.axis])

    def discard(self):
        """Drop the pending result (nothing was written) and the progress shown."""
        if self.pending_outcome is None:
            return
        pending, self.pending_outcome = self.pending_outcome, None
        if self.shown is pending:
            self._show(self.committed)
        self.reset_progress()
        self._say("")
        self.state_changed.emit()
        self.dock.session.render_preview()
        self.dock.set_status("Propagation result discarded; no layer was changed.")

    # -- commit ---------------------------------------------------------------------------
    def _target_layer(self, out: Outcome):
        s = self.dock.session
        ctx = out.ctx
        layers = self.dock.viewer.layers
        for cand in (out.layer, ctx.labels_layer):
            if cand is not None and cand in layers:
                return cand
        if ctx.source_label is None and out.replace_label is None:
            t = s.labels_layer
            if t is not None and t in layers and tuple(t.data.shape) == ctx.geom.labels_shape:
                return t
        if s.image_layer is ctx.image_layer:
            return s.ensure_labels_layer()
        return None

    def commit(self):
        """Write the pending result into the Labels layer as ONE undo step.

        A new object gets the next free label id; a propagated label keeps its id; a
        re-propagated committed object replaces its old pixels on the slices that changed.
        With "paint only on background" other labels are never overwritten.

        Returns
        -------
        int or None
            The label id, or None when nothing was written (the reason is shown).
        """
        dock = self.dock
        s = dock.session
        out = self.pending_outcome
        if out is None:
            self.refuse("no propagation result to commit.")
            return None
        if self.worker is not None:
            self.refuse("a propagation is running: wait for it or cancel it.")
            return None
        ctx = out.ctx
        if ctx.image_layer not in dock.viewer.layers:
            dock.notify_error("the propagated image layer is gone; nothing to commit")
            self.pending_outcome = None
            self.state_changed.emit()
            return None
        layer = self._target_layer(out)
        if layer is None:
            dock.notify_error("no Labels layer to commit into: choose the image again")
            return None
        if tuple(layer.data.shape) != ctx.geom.labels_shape:
            dock.notify_error(f"the Labels layer '{layer.name}' does not match the image")
            return None
        label_id = out.replace_label
        if label_id is None and layer is ctx.labels_layer:
            label_id = ctx.source_label
        if label_id is None:
            ids = s.target.label_ids
            label_id = ids.next_id(layer)
            if label_id is None:
                dock.set_status("Commit pending: looking for the next free label id in "
                                f"'{layer.name}' (a large layer)...")
                ids.when_known(layer, lambda nid, o=out: self.commit()
                               if nid and self.pending_outcome is o else None)
                return None
        try:
            painted, erased = self._write(layer, out, int(label_id))
        except ValueError as exc:  # no free label id left in the layer's dtype
            dock.notify_error(exc)
            return None
        if painted == 0 and erased == 0:
            self.refuse("nothing to paint: the result lies on other labels (untick "
                        "'paint only on background' to overwrite them).")
            return None
        out.label_id = int(label_id)
        out.layer = layer
        self.committed = out
        self.pending_outcome = None
        self.last_label = int(label_id)
        self._say("")
        self._show(out)
        self.state_changed.emit()
        s.render_preview()
        slices = sorted(out.crops)
        span = f"slices {slices[0]}..{slices[-1]}" if slices else "no slice"
        dock.set_status(
            f"Committed label {label_id} ({painted} px painted"
            + (f", {erased} px cleared" if erased else "")
            + f", {span}) as one step: Ctrl+Z undoes it.")
        return int(label_id)

    def _write(self, layer, out: Outcome, label_id: int) -> tuple[int, int]:
        """All slices through the session's one commit path: one undo step. Reads and
        writes only the crops' windows."""
        from .commit import SliceEdit

        ctx = out.ctx
        if out.replace_label is None:
            slices, erase = sorted(out.crops), set()
        else:
            # Every slice of the object is painted (idempotent where the labels already
            # hold it: after an undo or a brush stroke they may not); the old pixels are
            # cleared only where the result changed.
            erase = set(out.changed)
            slices = sorted(set(out.crops) | erase)
        edits = [SliceEdit(ctx.labels_lead(z), paint=out.crops.get(z),
                           erase=out.previous_crops.get(z) if z in erase else None)
                 for z in slices]
        return self.dock.session.commit_edits(layer, label_id, edits)

    # -- layers ---------------------------------------------------------------------------
    def on_layer_removed(self, layer):
        """Drop what depends on ``layer`` (the session's ``layer_removed`` event)."""
        s = self.dock.session
        running = self.worker is not None
        for ctx, what in ((self.run_ctx if running else None, "run"),
                          (self.pending_outcome.ctx if self.pending_outcome else None,
                           "pending")):
            if ctx is None:
                continue
            if layer is ctx.image_layer:
                if what == "run":
                    self._dropped = True
                    self.cancel()
                self.pending_outcome = None
                committed = self.committed
                self._show(committed if committed is not None
                           and committed.ctx.image_layer is not layer else None)
                s.warn_later(
                    f"EdgeSAM: the image layer '{layer.name}' was removed during "
                    "propagation; the result is dropped and no layer was changed.")
                break
            if layer is ctx.labels_layer:
                ctx.labels_layer = None
                ctx.source_label = None
                s.warn_later(
                    f"EdgeSAM: the Labels layer '{layer.name}' was removed during "
                    "propagation; the result will be committed as a new object into "
                    "the target Labels layer.")
                break
        c = self.committed
        if c is not None and (layer is c.layer or layer is c.ctx.image_layer):
            if self.shown is c:
                self._show(self.pending_outcome)
            self.committed = None
        self.state_changed.emit()

    def shutdown(self):
        """Stop a running propagation (the panel is going away); its result is dropped."""
        self._dropped = True
        if self.worker is not None:
            self.cancel()
