#!/usr/bin/env python
"""napari-edgesam benchmark harness.

Times the engine against raw ``onnxruntime`` ``session.run`` on the *same* model in the same
run, and prints a table of medians (warm-up excluded) with their ratios, so results hold on a
noisy machine. Writes the same figures as JSON.

Only a model with EdgeSAM's real architecture is timed: the architecture-faithful random-
weight pair made by ``benchmarks/make_faithful_model.py`` (default), or the real downloaded
weights (``--model edgesam-3x``). The kilobyte test-double model is refused.

Usage::

    python benchmarks/run.py                      # faithful model in benchmarks/models/
    python benchmarks/run.py --model edgesam-3x   # the real weights, if downloaded
    python benchmarks/run.py --only encoder,click --repeats 10 --json out.json
    xvfb-run -a python benchmarks/run.py --only goals           # issue 17's goal table
    xvfb-run -a python benchmarks/run.py --only goals --quick   # its smoke run
    python benchmarks/run.py --only goals --goals click,propagation   # parts of it

Adding a row: write ``def bench_<name>(ctx) -> list[Row]`` and register it in ``BENCHMARKS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_workflows.py beside this file
DEFAULT_ENCODER = HERE / "models" / "edgesam_faithful_encoder.onnx"
DEFAULT_DECODER = HERE / "models" / "edgesam_faithful_decoder.onnx"
#: Files smaller than this are not EdgeSAM-sized (the test double is a few kilobytes).
MIN_ENCODER_BYTES = 5_000_000


@dataclass
class Row:
    """One line of the table: a median engine time and the raw onnxruntime time it compares to."""

    name: str
    seconds: float
    raw_seconds: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.raw_seconds else self.seconds / self.raw_seconds


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux: ru_maxrss is KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


@dataclass
class Context:
    model: object
    repeats: int
    sizes: list[int]
    rng: np.random.Generator


def _test_image(size: int, rng) -> np.ndarray:
    """A synthetic uint16 microscopy-like slice: dim noisy background with bright blobs."""
    img = rng.normal(300, 30, (size, size)).astype(np.float32)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(30):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(size // 60 + 2, size // 15 + 3)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 2000
    return np.clip(img, 0, 65535).astype(np.uint16)


# -- benchmarks ---------------------------------------------------------------------------
def bench_encoder(ctx: Context) -> list[Row]:
    """Encoder per slice: engine (mapping, Pillow resize, normalisation, run) vs raw run."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.intensity import mapping_from_percentiles
    from napari_edgesam.engine.transforms import preprocess

    model = ctx.model
    pred = Predictor(model, cache=None)
    sess = model.session("encoder")
    rows = []
    for size in ctx.sizes:
        img = _test_image(size, ctx.rng)
        mapping = mapping_from_percentiles(img)
        tensor, _ = preprocess(mapping.apply(img))
        raw = median_time(lambda t=tensor: sess.run(None, {"image": t}), ctx.repeats)
        eng = median_time(lambda im=img: pred.embed(im, mapping, use_cache=False), ctx.repeats)
        pre = median_time(lambda im=img: preprocess(mapping.apply(im)), ctx.repeats)
        rows.append(Row(f"encoder per slice, {size}x{size} uint16", eng, raw,
                        f"preprocessing alone {pre * 1e3:.1f} ms",
                        {"preprocess_seconds": pre}))
    return rows


def bench_decoder(ctx: Context) -> list[Row]:
    """Decoder per prompt set (1 click + padding point; a box): engine decode vs raw run."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts

    model = ctx.model
    sess = model.session("decoder")
    pred = Predictor(model, cache=None)
    emb = pred.embed(_test_image(1024, ctx.rng))
    rows = []
    for label, kwargs in (("1 click", {"points": [(500, 400)]}),
                          ("box", {"box": (300, 300, 700, 650)}),
                          ("3 clicks + box", {"points": [(500, 400), (520, 420), (600, 600)],
                                              "labels": [1, 1, 0],
                                              "box": (300, 300, 700, 650)})):
        coords, labels, _ = prepare_prompts(emb.original_size, resized=emb.resized_size,
                                            **kwargs)
        feeds = {"image_embeddings": emb.features, "point_coords": coords,
                 "point_labels": labels}
        raw = median_time(lambda f=feeds: sess.run(None, f), ctx.repeats)
        eng = median_time(lambda c=coords, lb=labels: model.decode(emb.features, c, lb),
                          ctx.repeats)
        rows.append(Row(f"decoder per prompt set, {label}", eng, raw))
    return rows


def _object_point(img: np.ndarray, rng) -> list[tuple[float, float]]:
    """One click ``(x, y)`` inside a bright object of ``img`` (bench_workflows.object_points):
    with the realistic-mask model the mask is then object-sized, not background."""
    from bench_workflows import object_points

    return object_points(img, 1, rng)


def _masks(model) -> str:
    """What the model's masks are like, for notes (bench_workflows.masks_kind)."""
    from bench_workflows import masks_kind

    return masks_kind(model)


def bench_click(ctx: Context) -> list[Row]:
    """Click to mask: decoder + stability + postprocessing, embedding already computed."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts

    model = ctx.model
    sess = model.session("decoder")
    pred = Predictor(model, cache=None)
    rows = []
    for size in ctx.sizes:
        img = _test_image(size, ctx.rng)
        emb = pred.embed(img)
        point = _object_point(img, ctx.rng)
        coords, labels, _ = prepare_prompts(emb.original_size, point, [1],
                                            resized=emb.resized_size)
        feeds = {"image_embeddings": emb.features, "point_coords": coords,
                 "point_labels": labels}
        raw = median_time(lambda f=feeds: sess.run(None, f), ctx.repeats)
        res = pred.predict(points=point, embedding=emb)
        eng = median_time(lambda e=emb, p=point: pred.predict(points=p, embedding=e),
                          ctx.repeats)
        rows.append(Row(f"click to mask, {size}x{size} (cached embedding)", eng, raw,
                        f"mask {res.area / size**2:.0%} of the image ({_masks(model)})",
                        {"mask_fraction": res.area / size**2}))
    return rows


def bench_postprocess(ctx: Context) -> list[Row]:
    """Postprocessing alone for a controlled object size (independent of random weights)."""
    from napari_edgesam.engine.transforms import MaskUpsampler

    sess = ctx.model.session("decoder")
    feeds = {"image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
             "point_coords": np.array([[[500, 500], [0, 0]]], np.float32),
             "point_labels": np.array([[1, -1]], np.float32)}
    raw = median_time(lambda: sess.run(None, feeds), ctx.repeats)
    rows = []
    for size in ctx.sizes:
        up = MaskUpsampler((size, size))
        for label, extent in (("512 px object", 512 / size), ("whole-image mask", 1.0)):
            low = np.full((256, 256), -8.0, np.float32)
            n = max(1, int(256 * min(extent, 1.0)))
            low[:n, :n] = 8.0
            if extent >= 1.0:
                low[:] = 8.0
            eng = median_time(lambda lo=low, u=up: u.mask(lo), ctx.repeats)
            rows.append(Row(f"postprocessing, {size}x{size}, {label}", eng, raw,
                            "ratio to one raw decoder run"))
    return rows


def bench_overhead(ctx: Context) -> list[Row]:
    """Engine overhead: Predictor.predict minus the raw decoder run (1024 x 1024)."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts

    model = ctx.model
    pred = Predictor(model, cache=None)
    emb = pred.embed(_test_image(1024, ctx.rng))
    coords, labels, _ = prepare_prompts(emb.original_size, [(500, 500)], [1])
    sess = model.session("decoder")
    feeds = {"image_embeddings": emb.features, "point_coords": coords, "point_labels": labels}
    raw = median_time(lambda: sess.run(None, feeds), ctx.repeats)
    eng = median_time(lambda: pred.predict(points=[(500, 500)], embedding=emb), ctx.repeats)
    return [Row("engine overhead per click, 1024x1024", eng - raw, raw,
                "predict() minus raw decoder run")]


def bench_memory(ctx: Context) -> list[Row]:
    """Peak resident memory of the benchmark process after everything above."""
    return [Row("peak memory (process RSS)", 0.0, None, f"{peak_rss_mb():.0f} MiB",
                {"peak_rss_mib": peak_rss_mb()})]


# -- speed work (issue 10): optimised variants, session tuning ---------------------------
def interleaved_medians(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of each ``fns[name]()``, timed in turn (A, B, C, A, B, C, ...).

    Interleaving spreads the machine's load changes over all candidates, so their ratios
    hold on a shared, noisy machine even when absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _optimized(ctx: Context, kinds=("decoder-fast", "decoder-int8", "encoder-int8")):
    """Build (once; remembered beside the model files) and check the optimised variants on
    synthetic slices; returns ``{kind: VariantResult}``."""
    cached = getattr(ctx, "_optimized_results", None)
    if cached is not None:
        return cached
    from napari_edgesam.engine.optimize import optimize_model

    opts = getattr(ctx, "options", {}) or {}
    rng = np.random.default_rng(123)
    n = int(opts.get("optimize_images") or 3)
    images = [_test_image(s, rng) for s in ([1024, 2048, 768] * n)[:n]]
    print("... building / checking optimised variants (remembered after the first run)",
          file=sys.stderr, flush=True)
    report = optimize_model(ctx.model, images, variants=kinds,
                            force=bool(opts.get("reoptimize")))
    print(report.summary(), file=sys.stderr, flush=True)
    ctx._optimized_results = {r.kind: r for r in report.results}
    return ctx._optimized_results


def _variant(ctx: Context, kind: str, **kw):
    from napari_edgesam.engine.optimize import load_variant

    res = _optimized(ctx)[kind]
    if res.status == "failed":
        raise RuntimeError(f"{kind} could not be built: {res.reason}")
    return load_variant(ctx.model, kind, require_passed=False, **kw), res


def _verdict(res, masks: str = "random weights") -> str:
    if res.agreement is None:
        return res.status
    return (f"check: {res.status}, IoU mean {res.agreement.mean_iou:.3f} / min "
            f"{res.agreement.min_iou:.3f} ({masks})")


def bench_optimize(ctx: Context) -> list[Row]:
    """Building and checking the variants (timed only when built in this run)."""
    rows = []
    for kind, res in _optimized(ctx).items():
        note = ("remembered from an earlier run" if res.cached else "built and checked now")
        rows.append(Row(f"variant {kind}: {res.status}", res.seconds, None,
                        f"{note}; {_verdict(res)}",
                        {"status": res.status, "cached": res.cached,
                         "agreement": None if res.agreement is None
                         else asdict(res.agreement), "details": res.details}))
    return rows


def bench_click_optimized(ctx: Context) -> list[Row]:
    """Click to mask (decoder + stability + postprocessing, cached embedding) with the
    optimised decoders, as a ratio to ONE raw float32 decoder run (goal <= 0.7x at 2048)."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts

    model = ctx.model
    sess = model.session("decoder")
    fast, fast_res = _variant(ctx, "decoder-fast")
    int8, int8_res = _variant(ctx, "decoder-int8")
    int8_one, _ = _variant(ctx, "decoder-int8", use_split=False)
    preds = {"float32 engine": Predictor(model, cache=None),
             "decoder-fast": Predictor(fast, cache=None),
             "decoder-int8": Predictor(int8, cache=None),
             "decoder-int8, one file (no split)": Predictor(int8_one, cache=None)}
    rows = []
    for size in ctx.sizes:
        img = _test_image(size, ctx.rng)
        emb = preds["float32 engine"].embed(img)
        point = _object_point(img, ctx.rng)
        coords, labels, _ = prepare_prompts(emb.original_size, point, [1],
                                            resized=emb.resized_size)
        feeds = {"image_embeddings": emb.features, "point_coords": coords,
                 "point_labels": labels}

        # A newly encoded slice: its decoder part was made by embed (untimed, as in the
        # encode worker), so the first click runs the prompt part only (issue 17, point 2;
        # benchmarks/bench_first_click.py times the before/after in detail).
        def first_click(p, e, pt=point):
            p.model._memo.clear()  # no per-array memo to help: only the stored part
            return p.predict(points=pt, embedding=e)

        fns = {"raw": lambda f=feeds: sess.run(None, f)}
        for name, p in preds.items():
            fns[name] = lambda p=p, e=emb, pt=point: p.predict(points=pt, embedding=e)
        first_of = {}
        for kind in ("decoder-fast", "decoder-int8"):
            name = f"{kind}, first click on a slice"
            fresh = preds[kind].with_decoder_part(emb)
            fns[name] = lambda p=preds[kind], e=fresh: first_click(p, e)
            first_of[name] = kind
        med = interleaved_medians(fns, ctx.repeats)
        area = preds["decoder-int8"].predict(points=point, embedding=emb).area / size**2
        masks = _masks(model)
        for name in fns:
            if name == "raw":
                continue
            note = {"decoder-fast": _verdict(fast_res, masks),
                    "decoder-int8": _verdict(int8_res, masks)}
            rows.append(Row(f"click to mask {size}x{size}, {name}", med[name], med["raw"],
                            note.get(name, f"mask {area:.0%} of the image ({masks})"),
                            {"size": size, "variant": name,
                             "first_click_of": first_of.get(name), "mask_fraction": area}))
    return rows


def bench_encoder_int8(ctx: Context) -> list[Row]:
    """int8 encoder vs float32: raw session runs on the same tensor (goal >= 2x faster),
    and the engine's embed() with the int8 encoder vs a raw float32 run."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.intensity import mapping_from_percentiles
    from napari_edgesam.engine.transforms import preprocess

    int8, res = _variant(ctx, "encoder-int8")
    s32, s8 = ctx.model.session("encoder"), int8.session("encoder")
    img = _test_image(1024, ctx.rng)
    mapping = mapping_from_percentiles(img)
    tensor, _ = preprocess(mapping.apply(img))
    pred8 = Predictor(int8, cache=None)
    med = interleaved_medians({
        "fp32": lambda: s32.run(None, {"image": tensor}),
        "int8": lambda: s8.run(None, {"image": tensor}),
        "engine int8": lambda: pred8.embed(img, mapping, use_cache=False),
    }, ctx.repeats)
    speed = med["fp32"] / med["int8"]
    return [
        Row("encoder int8 (raw run) vs float32 (raw run)", med["int8"], med["fp32"],
            f"{speed:.2f}x faster; {_verdict(res)}", {"speedup": speed}),
        Row("encoder int8 engine embed() 1024x1024 vs float32 raw run", med["engine int8"],
            med["fp32"], "mapping + Pillow resize + normalisation + int8 run"),
    ]


def bench_encoder_overhead(ctx: Context) -> list[Row]:
    """Engine encoder overhead incl. preprocessing vs raw session.run (goal <= 5%),
    interleaved, with the preprocessing steps timed alone."""
    from PIL import Image

    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.intensity import as_model_image, mapping_from_percentiles
    from napari_edgesam.engine.transforms import preprocess, resized_shape

    pred = Predictor(ctx.model, cache=None)
    sess = ctx.model.session("encoder")
    rows = []
    for size in ctx.sizes:
        img = _test_image(size, ctx.rng)
        mapping = mapping_from_percentiles(img)
        rgb = mapping.apply(img)
        tensor, _ = preprocess(rgb)
        nh, nw = resized_shape(size, size)
        med = interleaved_medians({
            "raw": lambda t=tensor: sess.run(None, {"image": t}),
            "engine": lambda im=img: pred.embed(im, mapping, use_cache=False),
        }, ctx.repeats)
        steps = interleaved_medians({
            "mapping": lambda im=img: mapping.apply(im),
            "resize": lambda r=rgb: Image.fromarray(r).resize((nw, nh),
                                                              Image.Resampling.BILINEAR),
            "preprocess": lambda r=rgb: preprocess(r),
            "engine_pre": lambda im=img: preprocess(as_model_image(im, mapping)[0]),
            "raw": lambda t=tensor: sess.run(None, {"image": t}),
        }, max(3, ctx.repeats))
        # The engine's run is the raw run plus its preprocessing, in the same thread: the
        # preprocessing time over the raw run time estimates the overhead with far less
        # noise than the difference of two noisy medians.
        est = steps["engine_pre"] / steps["raw"]
        rows.append(Row(f"encoder overhead {size}x{size} uint16, preprocessing / raw run",
                        steps["raw"] + steps["engine_pre"], steps["raw"],
                        f"validate + mapping + preprocess {steps['engine_pre'] * 1e3:.1f} ms",
                        {"overhead_estimate": est}))
        over = med["engine"] / med["raw"] - 1
        rows.append(Row(f"encoder overhead {size}x{size} uint16 (engine vs raw run)",
                        med["engine"], med["raw"],
                        f"overhead {over:+.1%}; mapping {steps['mapping'] * 1e3:.1f} ms, "
                        f"RGB resize {steps['resize'] * 1e3:.1f} ms, preprocess() "
                        f"{steps['preprocess'] * 1e3:.1f} ms",
                        {"overhead": over, **{f"{k}_seconds": v for k, v in steps.items()}}))
    return rows


def _session(path, threads=None, level="all", spinning=True, mem_pattern=True, arena=True,
             save_to=None):
    import onnxruntime as ort

    from napari_edgesam.engine.session import default_num_threads

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_num_threads())
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.enable_mem_pattern = mem_pattern
    so.enable_cpu_mem_arena = arena
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench_startup(ctx: Context) -> list[Row]:
    """Session creation: from the original file (graph optimised at load) vs from a saved,
    already optimised graph (loaded with optimisation off)."""
    import tempfile

    rows = []
    files = [("encoder float32", ctx.model.encoder_path),
             ("decoder float32", ctx.model.decoder_path)]
    try:
        files.append(("encoder-int8", _variant(ctx, "encoder-int8")[0].encoder_path))
        dec8 = _variant(ctx, "decoder-int8")[0]
        files.append(("decoder-int8 prompt part", dec8.decoder_parts[1] if dec8.decoder_parts
                      else dec8.decoder_path))
    except (KeyError, RuntimeError) as exc:
        print(f"(variants skipped: {exc})", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in files:
            saved = Path(tmp) / (Path(path).stem + ".ort-optimised.onnx")
            _session(path, save_to=saved)
            med = interleaved_medians({
                "original": lambda p=path: _session(p),
                "saved": lambda s=saved: _session(s, level="disable"),
            }, max(3, ctx.repeats // 2))
            rows.append(Row(f"session start-up, {label}, saved optimised graph",
                            med["saved"], med["original"],
                            "ratio to creating the session from the file as shipped",
                            {"original_seconds": med["original"]}))
    return rows


def bench_prefetch(ctx: Context) -> list[Row]:
    """Click latency with a prefetch running in the background: paused() around the click
    (the engine's way: the encoder run in flight is terminated) vs no prefetch at all, and
    vs letting the click compete with the encoder (what pausing avoids). Interleaved."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.cache import EmbeddingCache
    from napari_edgesam.engine.prefetch import Prefetcher

    model = ctx.model
    pred = Predictor(model, cache=EmbeddingCache(memory_bytes=64 * 2**20, disk_dir=False))
    emb = Predictor(model, cache=None).embed(_test_image(1024, ctx.rng))
    others = [_test_image(1024, ctx.rng) for _ in range(3)]
    prefetcher = Prefetcher(pred)

    def click():
        pred.predict(points=[(400, 600)], embedding=emb)

    def busy_prefetch():
        prefetcher.prefetch(others)
        while not prefetcher.busy:
            time.sleep(0.001)
        time.sleep(0.05)  # the encoder run is under way

    times: dict = {"idle": [], "paused": [], "competing": []}
    click()
    try:
        for _ in range(ctx.repeats):
            t0 = time.perf_counter()
            click()
            times["idle"].append(time.perf_counter() - t0)
            busy_prefetch()
            t0 = time.perf_counter()
            with prefetcher.paused():
                click()
            times["paused"].append(time.perf_counter() - t0)
            prefetcher.cancel()
            prefetcher.wait()
            busy_prefetch()
            t0 = time.perf_counter()
            click()
            times["competing"].append(time.perf_counter() - t0)
            prefetcher.cancel()
            prefetcher.wait()
    finally:
        prefetcher.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        Row("click during prefetch, paused() (run terminated)", med["paused"], med["idle"],
            "ratio to the same click with no prefetch"),
        Row("click during prefetch, not paused (competing)", med["competing"], med["idle"],
            "what pausing avoids"),
    ]


def _workflow(name, module="bench_workflows"):
    """Rows defined in bench_workflows.py or bench_threads.py (imported lazily: they need
    more of the package)."""

    def bench(ctx):
        import importlib

        return getattr(importlib.import_module(module), f"bench_{name}")(ctx)

    bench.__doc__ = f"see {module}.bench_{name}"
    return bench


BENCHMARKS = {
    "encoder": bench_encoder,
    "decoder": bench_decoder,
    "click": bench_click,
    "postprocess": bench_postprocess,
    "overhead": bench_overhead,
    "propagation": _workflow("propagation"),
    "tiled": _workflow("tiled"),
    "batch": _workflow("batch"),
    "batch_large": _workflow("batch_large"),
    "optimize": bench_optimize,
    "click_optimized": bench_click_optimized,
    "encoder_int8": bench_encoder_int8,
    "encoder_overhead": bench_encoder_overhead,
    "startup": bench_startup,
    "threads": _workflow("threads", "bench_threads"),  # thread-pool policies, options
    "prefetch": bench_prefetch,
    "napari": _workflow("napari_click"),
    "goals": _workflow("goals", "bench_goals"),  # issue 17's goal table (bench_goals.py)
    "memory": bench_memory,
}


def _refuse_test_model(encoder: Path) -> None:
    if encoder.stat().st_size < MIN_ENCODER_BYTES:
        sys.exit(
            f"refusing to time {encoder} ({encoder.stat().st_size} bytes): it is not an "
            "EdgeSAM-sized model (the test double?). Generate the architecture-faithful model "
            "with benchmarks/make_faithful_model.py or use --model with downloaded weights."
        )


def format_table(rows: list[Row]) -> str:
    lines = [f"{'benchmark':<58} {'engine':>11} {'raw ort':>11} {'ratio':>7}  note",
             "-" * 100]
    for r in rows:
        eng = f"{r.seconds * 1e3:9.1f} ms" if r.seconds else f"{'':>11}"
        raw = f"{r.raw_seconds * 1e3:9.1f} ms" if r.raw_seconds else f"{'':>11}"
        ratio = f"{r.ratio:6.2f}x" if r.ratio is not None and r.seconds else f"{'':>7}"
        lines.append(f"{r.name:<58} {eng} {raw} {ratio}  {r.note}")
    return "\n".join(lines)


def _load_average() -> str | None:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``; None elsewhere)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=None)
    p.add_argument("--decoder", type=Path, default=None)
    p.add_argument("--model", default=None, help="a published model name, if downloaded")
    p.add_argument("--repeats", type=int, default=None, help="default 7 (3 with --quick)")
    p.add_argument("--sizes", default="512,2048,4096")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--thread-policy", default=None,
                   help="the engine's thread-pool policy for its sessions (default: settings)")
    p.add_argument("--only", default=None, help=f"comma list of {', '.join(BENCHMARKS)}")
    p.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    p.add_argument("--reoptimize", action="store_true",
                   help="rebuild and re-check the optimised variants (else remembered)")
    p.add_argument("--optimize-images", type=int, default=3,
                   help="synthetic slices for calibrating/checking the variants")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 3 repeats, and fewer slices in the goals rows")
    p.add_argument("--goals", default=None,
                   help="comma list of the goals rows' parts (see bench_goals.PARTS)")
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch for the SAM ViT-B row (bench_peers.py)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    load_start = _load_average()
    t_start = time.perf_counter()

    from napari_edgesam import __version__
    from napari_edgesam.engine import EdgeSamModel

    if args.model:
        model = EdgeSamModel.from_name(args.model, num_threads=args.threads,
                                       thread_policy=args.thread_policy)
    else:
        enc, dec = args.encoder or DEFAULT_ENCODER, args.decoder or DEFAULT_DECODER
        if not enc.is_file() or not dec.is_file():
            sys.exit(f"model files not found ({enc}, {dec}); run "
                     "benchmarks/make_faithful_model.py first (see benchmarks/README.md)")
        kind = ("realistic masks (benchmark only)" if "realistic" in enc.name
                else "faithful (random weights)")
        model = EdgeSamModel(enc, dec, name=kind,
                             num_threads=args.threads, thread_policy=args.thread_policy)
    _refuse_test_model(model.encoder_path)
    model.load()
    ctx = Context(model, args.repeats, [int(s) for s in args.sizes.split(",")],
                  np.random.default_rng(0))
    ctx.options = vars(args)
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    rows: list[Row] = []
    for name in chosen:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.extend(BENCHMARKS[name](ctx))
    import onnxruntime as ort

    from napari_edgesam.engine.session import default_num_threads, thread_policy

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "napari_edgesam": __version__,
        "model": model.name,
        "threads": model.num_threads or default_num_threads(),
        "thread_policy": thread_policy(model.thread_policy),
        "load_average_start": load_start,
        "load_average_end": _load_average(),
        "repeats": args.repeats,
        "quick": args.quick,
        "seconds": time.perf_counter() - t_start,
    }
    print(f"model: {model.name} ({model.encoder_path.name}, {model.decoder_path.name})")
    print(f"machine: {machine['processor']}, {machine['cpus_available']} CPUs, "
          f"onnxruntime {machine['onnxruntime']}, threads {machine['threads']}, "
          f"thread policy {machine['thread_policy']}; load average {load_start} at the "
          f"start, {machine['load_average_end']} at the end")
    print(format_table(rows))
    if any(r.extra.get("goal_key") for r in rows):
        from bench_goals import format_goals

        print(f"\n{format_goals(rows)}\n(load average {load_start} at the start, "
              f"{machine['load_average_end']} at the end; {machine['seconds']:.0f} s"
              f"{'; --quick: a smoke run, not the figures' if args.quick else ''})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine,
               "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
