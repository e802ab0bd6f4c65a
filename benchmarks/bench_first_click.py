"""First click vs later clicks with a split decoder, and where its image part should live.

Issue 17, point 2. On the architecture-faithful random-weight model (never EdgeSAM; see
benchmarks/README.md), with the optimised decoder variants built on synthetic slices as
``run.py`` builds them (remembered beside the model files)::

    python benchmarks/bench_first_click.py --repeats 21 --pause 0.1   # first click, before/after
    python benchmarks/bench_first_click.py --repeats 21               # clicks back to back
    python benchmarks/bench_first_click.py --disk --repeats 31        # compute vs disk cache
    python benchmarks/bench_first_click.py --disk --repeats 21 --threads 1

Everything is timed interleaved (A, B, C, A, B, C, ...) in one process and reported as
medians and as ratios to one raw float32 decoder run, so the figures hold on a shared,
noisy machine. "BEFORE" is the path an embedding without its part takes (the image part at
the first click, remembered by array identity: what every click did before); "AFTER" is the
embedding as ``Predictor.embed`` returns it (the part computed with it, untimed, right
before the click). ``--pause`` sleeps before each timed call, as a click comes after an idle
moment (no onnxruntime thread still spinning from the previous run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _timed(fns: dict, repeats: int, pause: float = 0.0) -> dict:
    """Median seconds of each ``fns[name]``: a callable, or ``(callable, untimed setup)``."""
    def once(f):
        if isinstance(f, tuple):
            f[1]()
            f = f[0]
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    for f in fns.values():
        once(f)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(once(f))
    return {k: statistics.median(v) for k, v in times.items()}


def _report(med: dict, title: str) -> None:
    base = med["raw fp32 decoder"]
    print(title)
    for k, v in med.items():
        print(f"  {k:48s} {v * 1e3:8.2f} ms  {v / base:5.2f}x raw decoder")


def first_click(model, variants, size: int, repeats: int, pause: float) -> dict:
    from run import _test_image

    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.predictor import prepare_prompts, without_decoder_part

    img = _test_image(size, np.random.default_rng(7))
    emb0 = Predictor(model, cache=None).embed(img)
    point = [(size * 0.4, size * 0.6)]
    coords, labels, _ = prepare_prompts(emb0.original_size, point, [1],
                                        resized=emb0.resized_size)
    raw = model.session("decoder")
    feeds = {"image_embeddings": emb0.features, "point_coords": coords,
             "point_labels": labels}
    fns = {"raw fp32 decoder": lambda: raw.run(None, feeds)}
    fresh = {}
    for kind, v in variants.items():
        p = Predictor(v, cache=None)
        emb = p.with_decoder_part(emb0)
        bare = without_decoder_part(emb)

        def before_first(p=p, v=v, bare=bare):
            v._memo.clear()  # a newly encoded slice: the part runs at this click
            return p.predict(points=point, embedding=bare)

        def encode(p=p, bare=bare):  # what embed() does right after the encoder (untimed)
            fresh[p] = p.with_decoder_part(dataclasses.replace(bare))

        fns[f"{kind}: BEFORE first click"] = before_first
        fns[f"{kind}: BEFORE later click"] = (
            lambda p=p, e=bare: p.predict(points=point, embedding=e))
        fns[f"{kind}: AFTER first click"] = (
            lambda p=p: p.predict(points=point, embedding=fresh[p]), encode)
        fns[f"{kind}: AFTER later click"] = (
            lambda p=p, e=emb: p.predict(points=point, embedding=e))
        fns[f"{kind}: image part alone"] = lambda v=v: v.decoder_image_part(emb0.features)
    med = _timed(fns, repeats, pause)
    _report(med, f"click to mask {size}x{size}, pause {pause} s before each timed call")
    for kind in variants:
        b = med[f"{kind}: BEFORE first click"] / med[f"{kind}: BEFORE later click"]
        a = med[f"{kind}: AFTER first click"] / med[f"{kind}: AFTER later click"]
        print(f"  {kind}: first click / later click  BEFORE {b:.2f}  AFTER {a:.2f}")
    return med


def disk(model, variants, repeats: int) -> dict:
    from napari_edgesam.engine.cache import EmbeddingCache

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords = np.array([[[400.0, 600.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    raw = model.session("decoder")
    feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels}
    folder = Path(tempfile.mkdtemp(prefix="nes-part-"))
    try:
        cache = EmbeddingCache(memory_bytes=0, disk_dir=folder)
        fns = {"raw fp32 decoder": lambda: raw.run(None, feeds)}
        for kind, v in variants.items():
            part = v.decoder_image_part(emb)
            key = f"k-{kind}"
            cache._path(key).write_bytes(cache.encode_entry(key, part))
            fns[f"{kind} image part: compute"] = lambda v=v: v.decoder_image_part(emb)
            fns[f"{kind} image part: read back (file, check)"] = (
                lambda key=key: cache.decode_entry(key, cache._path(key).read_bytes()))
            fns[f"{kind} image part: write (entry, file)"] = (
                lambda key=key, part=part: cache._path(key).write_bytes(
                    cache.encode_entry(key, part)))
        cache.put("emb", emb, memory=False)
        fns["embedding alone: read back"] = lambda: cache._disk_get("emb")
        any_key = f"k-{next(iter(variants))}"
        blob = cache._path(any_key).read_bytes()
        fns["  of which: the file read (page cache)"] = (
            lambda: cache._path(any_key).read_bytes())
        fns["  of which: BLAKE2b over the entry"] = (
            lambda: hashlib.blake2b(blob, digest_size=32).digest())
        med = _timed(fns, repeats)
        _report(med, f"image part: compute vs disk cache ({len(blob) / 2**20:.1f} MiB entry)")
        return med
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(HERE / "models"))
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--disk", action="store_true", help="compute vs disk cache instead")
    args = ap.parse_args(argv)

    from run import _test_image

    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.engine.optimize import load_variant, optimize_model

    enc = Path(args.models) / "edgesam_faithful_encoder.onnx"
    dec = Path(args.models) / "edgesam_faithful_decoder.onnx"
    if not enc.is_file():
        print("generate the faithful model first (benchmarks/README.md)", file=sys.stderr)
        return 2
    model = EdgeSamModel(enc, dec, name="faithful (random weights)",
                         num_threads=args.threads)
    kinds = ("decoder-fast", "decoder-int8")
    rng = np.random.default_rng(123)
    optimize_model(model, [_test_image(s, rng) for s in (1024, 2048, 768)], variants=kinds)
    variants = {}
    for kind in kinds:
        v = load_variant(model, kind, require_passed=False)
        v.num_threads = args.threads
        variants[kind] = v.load()
    print(f"load average {os.getloadavg()}, threads {args.threads or 'default'}, "
          f"repeats {args.repeats}")
    if args.disk:
        disk(model, variants, args.repeats)
    else:
        first_click(model, variants, args.size, args.repeats, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
