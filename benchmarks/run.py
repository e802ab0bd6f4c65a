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


def bench_click(ctx: Context) -> list[Row]:
    """Click to mask: decoder + stability + postprocessing, embedding already computed."""
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts

    model = ctx.model
    sess = model.session("decoder")
    pred = Predictor(model, cache=None)
    rows = []
    for size in ctx.sizes:
        emb = pred.embed(_test_image(size, ctx.rng))
        point = [(size * 0.4, size * 0.6)]
        coords, labels, _ = prepare_prompts(emb.original_size, point, [1],
                                            resized=emb.resized_size)
        feeds = {"image_embeddings": emb.features, "point_coords": coords,
                 "point_labels": labels}
        raw = median_time(lambda f=feeds: sess.run(None, f), ctx.repeats)
        res = pred.predict(points=point, embedding=emb)
        eng = median_time(lambda e=emb, p=point: pred.predict(points=p, embedding=e),
                          ctx.repeats)
        rows.append(Row(f"click to mask, {size}x{size} (cached embedding)", eng, raw,
                        f"mask {res.area / size**2:.0%} of the image (random weights)",
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


def _workflow(name):
    """Rows defined in bench_workflows.py (imported lazily: they need more of the package)."""

    def bench(ctx):
        import bench_workflows

        return getattr(bench_workflows, f"bench_{name}")(ctx)

    bench.__doc__ = f"see bench_workflows.bench_{name}"
    return bench


BENCHMARKS = {
    "encoder": bench_encoder,
    "decoder": bench_decoder,
    "click": bench_click,
    "postprocess": bench_postprocess,
    "overhead": bench_overhead,
    "propagation": _workflow("propagation"),
    "tiled": _workflow("tiled"),
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=None)
    p.add_argument("--decoder", type=Path, default=None)
    p.add_argument("--model", default=None, help="a published model name, if downloaded")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sizes", default="512,2048,4096")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default=None, help=f"comma list of {', '.join(BENCHMARKS)}")
    p.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    args = p.parse_args(argv)

    from napari_edgesam import __version__
    from napari_edgesam.engine import EdgeSamModel

    if args.model:
        model = EdgeSamModel.from_name(args.model, num_threads=args.threads)
    else:
        enc, dec = args.encoder or DEFAULT_ENCODER, args.decoder or DEFAULT_DECODER
        if not enc.is_file() or not dec.is_file():
            sys.exit(f"model files not found ({enc}, {dec}); run "
                     "benchmarks/make_faithful_model.py first (see benchmarks/README.md)")
        model = EdgeSamModel(enc, dec, name="faithful (random weights)",
                             num_threads=args.threads)
    _refuse_test_model(model.encoder_path)
    model.load()
    ctx = Context(model, args.repeats, [int(s) for s in args.sizes.split(",")],
                  np.random.default_rng(0))
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    rows: list[Row] = []
    for name in chosen:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.extend(BENCHMARKS[name](ctx))
    import onnxruntime as ort

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
        "threads": model.session("encoder").get_session_options().intra_op_num_threads,
        "repeats": args.repeats,
    }
    print(f"model: {model.name} ({model.encoder_path.name}, {model.decoder_path.name})")
    print(f"machine: {machine['processor']}, {machine['cpus_available']} CPUs, "
          f"onnxruntime {machine['onnxruntime']}, threads {machine['threads']}")
    print(format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine,
               "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
