"""Issue 17's goal table in one process and one run: ``run.py --only goals``.

Every figure of the issue's table is a ratio against raw onnxruntime on the same model in
the same run, measured by the harness's existing rows (this module only picks the figure,
compares it with its goal and says "met" or "not met"):

=========================  ================================================================
part (``--goals``)         figure (goal)
=========================  ================================================================
``encoder``                encoder through the engine / raw, 2048² uint16 (<= 1.03)
``click``                  click to mask 2048², best variant that passes its check / one
                           raw fp32 decoder (<= 0.6); first click on a newly encoded slice,
                           same variant / raw decoder (<= 0.7)
``spin``                   a decoder run right after an encoder run / the same run alone
                           (<= 1.05), the engine's thread policy
``propagation``            100 slices 512², cold / 100 x (raw encoder + raw decoder)
                           (<= 1.1); warm / 100 x raw decoder (<= 1.2)
``batch``                  batch 2048² uint16, wall time per slice / (raw encoder + the raw
                           decoder runs it needs) (<= 1.3)
``prompt_batch``           decoder cost per prompt in a batch of 16 / one prompt per run
                           (<= 0.5): ``bench_prompt_batch.rows``
``seeds``                  seed detection per 2048² slice / raw encoder (<= 0.15)
``napari``                 napari click to preview, 2048², cached embedding / raw decoder
                           (<= 1.25; needs a display: ``xvfb-run -a``)
``peers``                  SAM ViT-B eager / fp32 encoder through the plugin (reported; the
                           aim is >= 90x): :mod:`bench_peers`
=========================  ================================================================

Rows where masks matter (click, propagation, batch, napari) run with both benchmark models:
the faithful one (random weights, masks over 70 % of the image) and the realistic-mask one
(the same cost, object-like masks); with any other model (real weights), with that model
only. ``--quick`` (fewer repeats, 20 propagated slices, 3 batch slices, one ViT-B run) makes
the whole table a smoke run of a few minutes; its figures are not the issue's.

A part that fails gives a row saying so (with the error), never a silent gap.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Goal:
    """One row of the issue's table: ``ratio <= limit`` (``at_least``: ``>= limit``)."""

    key: str
    title: str
    limit: float
    at_least: bool = False

    def met(self, ratio: float | None) -> bool | None:
        """True/False, or None when nothing was measured."""
        if ratio is None or not np.isfinite(ratio):
            return None
        return ratio >= self.limit if self.at_least else ratio <= self.limit

    @property
    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.limit:g}"


GOALS = {g.key: g for g in (
    Goal("encoder", "encoder through the engine / raw, 2048² uint16", 1.03),
    Goal("click", "click to mask 2048², best passing variant / one raw fp32 decoder", 0.6),
    Goal("first_click", "first click on a newly encoded slice, same variant / raw decoder",
         0.7),
    Goal("spin", "decoder run right after an encoder run / the same run alone", 1.05),
    Goal("propagation_cold", "propagation 100 slices 512², cold / 100 x (raw enc + raw dec)",
         1.1),
    Goal("propagation_warm", "propagation 100 slices 512², warm / 100 x raw decoder", 1.2),
    Goal("batch", "batch 2048² uint16, wall per slice / (raw enc + its raw decoder runs)",
         1.3),
    Goal("prompt_batch", "decoder cost per prompt in a batch of 16 / one prompt per run",
         0.5),
    Goal("seeds", "seed detection per 2048² slice / raw encoder", 0.15),
    Goal("napari", "napari click to preview, 2048², cached embedding / raw decoder", 1.25),
    Goal("peers", "SAM ViT-B eager / fp32 encoder through the plugin (x times faster)",
         90.0, at_least=True),
)}
#: The parts of ``--goals``, in run order (cheap and model-level first).
PARTS = ("encoder", "click", "spin", "seeds", "prompt_batch", "propagation", "batch",
         "napari", "peers")
#: Parts measured with both benchmark models (masks matter there).
MASK_PARTS = ("click", "propagation", "batch", "napari")


def _run_module():
    import run  # the harness (benchmarks/ is on sys.path)

    return run


def goal_row(goal: Goal, row, model: str, note: str = ""):
    """The harness row ``row`` as the goal's row: its times and ratio, the goal and the
    verdict in the note, and ``extra`` with ``goal``, ``met``, ``model``, ``ratio``."""
    ratio = row.ratio if row.seconds else None
    met = goal.met(ratio)
    verdict = {True: "met", False: "NOT met", None: "not measured"}[met]
    text = f"goal {goal.text}: {verdict}; {note or row.note}"
    return replace(row, name=f"[{goal.key}] {goal.title} ({model})", note=text,
                   extra={**row.extra, "goal": goal.text, "goal_key": goal.key,
                          "met": met, "model": model, "ratio": ratio,
                          "source_row": row.name})


def missing_row(goal: Goal, model: str, why: str):
    """A goal that could not be measured: a row that says why."""
    Row = _run_module().Row
    return goal_row(goal, Row(goal.title, 0.0, None, why), model, f"{why}")


# -- the models ------------------------------------------------------------------------------
def _sub(ctx, model, sizes=(2048,)):
    """A harness context for ``model`` (the run's repeats and options, its own rng)."""
    Context = _run_module().Context
    sub = Context(model, ctx.repeats, list(sizes), np.random.default_rng(0))
    sub.options = getattr(ctx, "options", {}) or {}
    return sub


def models(ctx) -> dict:
    """``{label: model or str}`` for the mask rows: the harness's model, and the other
    benchmark model when the harness's model is one (a str says why it is missing)."""
    from bench_workflows import MODELS, masks_kind

    from napari_edgesam.engine import EdgeSamModel

    cached = getattr(ctx, "_goal_models", None)
    if cached is not None:
        return cached
    out = {masks_kind(ctx.model): ctx.model}
    mine = Path(ctx.model.encoder_path).resolve()
    bench = {name: Path(enc).resolve() for name, (enc, _) in MODELS.items()}
    if mine in bench.values():
        other = next(n for n, p in bench.items() if p != mine)
        enc, dec = MODELS[other]
        if enc.is_file() and dec.is_file():
            m = EdgeSamModel(enc, dec, name=("realistic masks (benchmark only)"
                                             if other == "realistic"
                                             else "faithful (random weights)"),
                             num_threads=ctx.model.num_threads,
                             thread_policy=ctx.model.thread_policy).load()
            out[masks_kind(m)] = m
        else:
            out[other] = (f"not measured: {enc.name} missing (benchmarks/"
                          f"make_{other}_model.py)")
    ctx._goal_models = out
    return out


# -- the parts -------------------------------------------------------------------------------
def part_encoder(ctx) -> list:
    """Encoder overhead at 2048² (``run.bench_encoder_overhead``, engine vs raw run)."""
    from bench_workflows import masks_kind

    rows = _run_module().bench_encoder_overhead(_sub(ctx, ctx.model))
    row = next(r for r in rows if "overhead" in r.extra)
    return [goal_row(GOALS["encoder"], row, masks_kind(ctx.model))]


def part_click(ctx, model, label) -> list:
    """``run.bench_click_optimized`` at 2048²: the fastest of the float32 engine and the
    variants that passed their check, then that variant's first click on a slice."""
    run = _run_module()
    sub = _sub(ctx, model)
    run._optimized(sub, kinds=("decoder-fast", "decoder-int8"))  # no encoder variant here
    rows = run.bench_click_optimized(sub)
    status = {k: r.status for k, r in run._optimized(sub).items()}
    passing = [r for r in rows if r.extra.get("first_click_of") is None
               and (r.extra.get("variant") == "float32 engine"
                    or status.get(r.extra.get("variant")) == "enabled")]
    best = min(passing, key=lambda r: r.ratio)
    kind = best.extra["variant"]
    first = next((r for r in rows if r.extra.get("first_click_of") == kind), None)
    considered = ", ".join(f"{r.extra['variant']} {r.ratio:.2f}" for r in passing)
    details = {r.name: r.ratio for r in rows}
    out = [goal_row(GOALS["click"], replace(best, extra={**best.extra, "rows": details}),
                    label, f"{kind} (passing: {considered}; checks: "
                    f"{', '.join(f'{k} {v}' for k, v in status.items())}); {best.note}")]
    if first is None:  # the float32 engine has no image part: every click is the same
        first = replace(best, note="float32 engine: no split decoder, the first click "
                        "runs what every click runs")
    out.append(goal_row(GOALS["first_click"], first, label, f"{kind}; {first.note}"))
    return out


def part_spin(ctx) -> list:
    """``bench_threads.measure`` for the engine's thread policy, the two figures only."""
    from bench_threads import measure, measure_global
    from bench_workflows import masks_kind

    from napari_edgesam.engine.session import default_num_threads, thread_policy

    Row = _run_module().Row
    policy = thread_policy(ctx.model.thread_policy)
    threads = ctx.model.num_threads or default_num_threads()
    figs = ("decoder alone", "decoder right after an encoder run")
    rounds = max(ctx.repeats, 5 if _quick(ctx) else 15)
    if policy == "global":  # onnxruntime's global pools: once per process, in a child
        res = measure_global(ctx.model.encoder_path, ctx.model.decoder_path, threads,
                             rounds)["global"]
    else:
        res = measure([policy], ctx.model.encoder_path, ctx.model.decoder_path, threads,
                      rounds, figures=figs)[policy]
    row = Row("decoder after encoder / alone", res[figs[1]], res[figs[0]],
              f"policy {policy}, {threads} threads, each sequence after a 250 ms idle gap")
    return [goal_row(GOALS["spin"], row, masks_kind(ctx.model))]


def part_propagation(ctx, model, label) -> list:
    """``bench_pipeline.measure``: one cold and one warm propagation over 100 slices."""
    from bench_pipeline import measure

    Row = _run_module().Row
    n = 20 if _quick(ctx) else 100
    res = measure(model, n, 512)
    out = []
    for phase, key in (("cold", "propagation_cold"), ("warm", "propagation_warm")):
        r = res[phase]
        base = r["slices"] * ((r["raw_encoder"] + r["raw_decoder"]) if phase == "cold"
                              else r["raw_decoder"])
        row = Row(f"propagation {phase}", r["seconds"], base,
                  f"{r['slices']} slices 512², cache {r['cache']}",
                  {k: v for k, v in r.items() if k != "stats"})
        out.append(goal_row(GOALS[key], row, label))
    return out


def part_batch(ctx, model, label) -> list:
    """``bench_workflows.batch_per_slice``: a batch over a 2048² stack in this process."""
    from bench_workflows import batch_per_slice

    row = batch_per_slice(_sub(ctx, model), 3 if _quick(ctx) else 16)
    return [goal_row(GOALS["batch"], row, label)]


def part_prompt_batch(ctx) -> list:
    """``bench_prompt_batch.rows(ctx)``: its first row (decoder per prompt set, batch of 16
    / one per run) is the goal's, the others are reported beside it."""
    import bench_prompt_batch
    from bench_workflows import masks_kind

    rows = bench_prompt_batch.rows(ctx)
    return [goal_row(GOALS["prompt_batch"], rows[0], masks_kind(ctx.model))] + rows[1:]


def part_seeds(ctx) -> list:
    """``bench_automatic.seed_row``: seed detection per 2048² slice vs the raw encoder."""
    from bench_automatic import seed_row
    from bench_workflows import masks_kind

    row = seed_row(ctx.model, max(ctx.repeats, 5 if _quick(ctx) else 9))
    return [goal_row(GOALS["seeds"], row, masks_kind(ctx.model))]


def part_napari(ctx, model, label) -> list:
    """``bench_workflows.bench_napari_click``: its click-to-preview row."""
    from bench_workflows import bench_napari_click

    rows = bench_napari_click(_sub(ctx, model))
    row = next((r for r in rows if "preview" in r.name), None)
    if row is None:
        return [missing_row(GOALS["napari"], label, rows[0].note if rows else "no row")]
    labels = next((r for r in rows if "labels" in r.name), None)
    extra, note = {}, row.note
    if labels is not None and labels.ratio is not None:
        frac = labels.extra.get("mask_fraction", float("nan"))
        extra = {"click_to_labels_ratio": labels.ratio, "mask_fraction": frac}
        note += f"; click to labels {labels.ratio:.2f}x; mask {frac:.1%} of the image"
    return [goal_row(GOALS["napari"], replace(row, extra={**row.extra, **extra}), label,
                     note)]


def part_peers(ctx) -> list:
    """``bench_peers.peer_rows``: the first row is the issue's figure, the others (the
    published file, int8) are reported beside it."""
    from bench_peers import peer_rows
    from bench_workflows import masks_kind

    rows = peer_rows(ctx, _run_module().Row)
    return [goal_row(GOALS["peers"], rows[0], masks_kind(ctx.model))] + rows[1:]


def _quick(ctx) -> bool:
    return bool((getattr(ctx, "options", {}) or {}).get("quick"))


def _guarded(fn, goal_keys, label, *args) -> list:
    """``fn(*args)``, or one row per goal of ``goal_keys`` saying how it failed."""
    t0 = time.perf_counter()
    try:
        rows = fn(*args)
    except Exception as exc:  # a failed part is reported, the others still run
        traceback.print_exc()
        return [missing_row(GOALS[k], label, f"failed: {type(exc).__name__}: {exc}")
                for k in goal_keys]
    print(f"    ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return rows


#: Goal keys of each part (for the rows of a part that failed).
PART_GOALS = {"encoder": ("encoder",), "click": ("click", "first_click"), "spin": ("spin",),
              "propagation": ("propagation_cold", "propagation_warm"), "batch": ("batch",),
              "prompt_batch": ("prompt_batch",), "seeds": ("seeds",),
              "napari": ("napari",), "peers": ("peers",)}


def bench_goals(ctx) -> list:
    """The harness's ``goals`` rows: each part of ``--goals`` (default all of
    :data:`PARTS`), the mask parts once per model of :func:`models`."""
    from bench_workflows import masks_kind

    opts = getattr(ctx, "options", {}) or {}
    chosen = [p.strip() for p in (opts.get("goals") or ",".join(PARTS)).split(",")]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown --goals part(s) {unknown}; choose from {', '.join(PARTS)}")
    rows = []
    for part in PARTS:
        if part not in chosen:
            continue
        fn = globals()[f"part_{part}"]
        if part in MASK_PARTS:
            for label, model in models(ctx).items():
                print(f"... goals: {part} ({label})", file=sys.stderr, flush=True)
                if isinstance(model, str):
                    rows += [missing_row(GOALS[k], label, model) for k in PART_GOALS[part]]
                else:
                    rows += _guarded(fn, PART_GOALS[part], label, ctx, model, label)
        else:
            print(f"... goals: {part}", file=sys.stderr, flush=True)
            rows += _guarded(fn, PART_GOALS[part], masks_kind(ctx.model), ctx)
    return rows


def format_goals(rows) -> str:
    """The goal rows of ``rows`` as a table: figure, model, ratio, goal, verdict."""
    goal_rows = [r for r in rows if r.extra.get("goal_key")]
    if not goal_rows:
        return ""
    lines = [f"{'issue 17 goal':<74} {'model':<16} {'ratio':>7} {'goal':>8}  verdict",
             "-" * 118]
    for r in goal_rows:
        g = GOALS[r.extra["goal_key"]]
        ratio = r.extra.get("ratio")
        cell = f"{ratio:6.2f}x" if ratio is not None else f"{'-':>7}"
        verdict = {True: "met", False: "not met", None: "not measured"}[r.extra["met"]]
        lines.append(f"{g.title:<74} {r.extra['model'][:16]:<16} {cell} {g.text:>8}  "
                     f"{verdict}")
    return "\n".join(lines)
