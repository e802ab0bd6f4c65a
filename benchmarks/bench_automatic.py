"""Automatic segmentation per 2048 x 2048 uint16 slice: seed detection, upsampling, decoder.

Issue 17, point 5. For a synthetic slice of bright discs (``object_size`` as given), timed
interleaved in one process (each round runs every measurement once, in turn; medians over
the rounds), single slice, embedding computed once:

- raw encoder: ``session.run`` of the encoder on a prepared input tensor (the reference);
- seed detection, before (signal at full resolution, :func:`detection_factor` blocks, the
  slice-wide foreground) and after (:func:`seed_factor` blocks from the uint8 image, the
  foreground computed box by box when a mask asks for it);
- upsampling: time spent inside ``MaskUpsampler.mask`` per slice when every decoded mask is
  upsampled whole (``Predictor.predict``, before) against the time inside
  :class:`LowResMask`'s box, ``values_at`` and ``window`` (after), for the same seeds;
- decoder: time inside the decoder's ``decode`` per slice and per call.

It also compares the seeds (nearest old seed for each new one, in pixels) and the labels
(objects matched by IoU) of the two detection scales. Ratios only mean something within one
run; the machine's load is printed.

Usage::

    python benchmarks/bench_automatic.py [--model realistic|faithful|double]
        [--object-size 140] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_workflows import MODELS as BENCHMARK_MODELS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The benchmark models (bench_workflows.MODELS) and the test double.
MODELS = {**BENCHMARK_MODELS, "double": (ROOT / "tests/models/test_encoder.onnx",
                                         ROOT / "tests/models/test_decoder.onnx")}


def scene(size: int, object_size: float, n: int, seed: int = 0) -> np.ndarray:
    """uint16 slice of ``n`` bright discs of diameter ``object_size`` on a noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.normal(2000, 500, (size, size))
    yy, xx = np.ogrid[:size, :size]
    r = object_size / 2
    for cy, cx in rng.uniform(r + 2, size - r - 2, (n, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(8000, 20000)
    return np.clip(img, 0, 65535).astype(np.uint16)


def seed_inputs(image: np.ndarray, object_size: float):
    """``(params, mapping, threshold)`` for :func:`detect_seeds` on ``image`` (uint16
    ``(Y, X)``): the automatic parameters, the stack's intensity mapping and the foreground
    threshold, computed once per stack as the batch does (not timed)."""
    from napari_edgesam.engine.intensity import stack_mapping
    from napari_edgesam.workflows.automatic import AutoParams
    from napari_edgesam.workflows.automatic.foreground import _signal, foreground_threshold

    params = AutoParams(object_size=object_size)
    mapping = stack_mapping(image, "auto")
    mapped = mapping.apply(image, expand=False)
    return params, mapping, foreground_threshold(_signal(mapped, "bright")[::4, ::4])


def detect_seeds(image: np.ndarray, params, mapping, threshold) -> np.ndarray:
    """Seed detection of one slice as ``segment_slice`` does it (the mapping, then
    ``seed_factor`` blocks of the uint8 image); seeds ``(N, 2)`` as ``(x, y)``."""
    from napari_edgesam.workflows.automatic import seeds

    m = mapping.apply(image, expand=False)
    f = seeds.seed_factor(m.shape, params.object_size)
    return seeds._detect(None, params, threshold, factor=f, shape=m.shape,
                         small=seeds._block_signal(m, f, "bright"))[0]


def seed_row(model, rounds: int, object_size: float = 140.0, objects: int = 40):
    """The harness row (``run.Row``) of issue 17's seed figure: seed detection per
    2048 x 2048 uint16 slice of :func:`scene` against one raw encoder run of ``model``,
    interleaved over ``rounds`` rounds (medians)."""
    from run import Row, interleaved_medians

    image = scene(2048, object_size, objects)
    params, mapping, threshold = seed_inputs(image, object_size)
    session = model.session("encoder")
    tensor = np.random.default_rng(1).normal(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    feeds = {session.get_inputs()[0].name: tensor}
    n = len(detect_seeds(image, params, mapping, threshold))
    med = interleaved_medians({
        "raw": lambda: session.run(None, feeds),
        "seeds": lambda: detect_seeds(image, params, mapping, threshold)}, rounds)
    return Row("seed detection per 2048x2048 slice", med["seeds"], med["raw"],
               f"{objects} discs of {object_size:g} px, {n} seeds; ratio to one raw "
               "encoder run", {"seeds": n})


def match(a: np.ndarray, b: np.ndarray, min_iou: float = 0.5) -> tuple[int, int, int, float]:
    """Objects of labels ``a`` and ``b`` matched one to one by IoU > ``min_iou``.

    Returns ``(n_a, n_b, matched, median IoU of matched)``."""
    ids_a = np.unique(a[a > 0])
    ids_b = np.unique(b[b > 0])
    ious = []
    for i in ids_a:
        m = a == i
        under = b[m]
        under = under[under > 0]
        if under.size == 0:
            continue
        j = np.bincount(under).argmax()
        n = b == j
        iou = np.count_nonzero(m & n) / np.count_nonzero(m | n)
        if iou > min_iou:
            ious.append(iou)
    return len(ids_a), len(ids_b), len(ious), float(np.median(ious)) if ious else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="realistic")
    ap.add_argument("--object-size", type=float, default=140.0)
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from napari_edgesam.engine import EdgeSamModel, Predictor
    from napari_edgesam.engine.transforms import MaskUpsampler
    from napari_edgesam.workflows.automatic import driver, lowres, segment_slice, seeds
    from napari_edgesam.workflows.automatic.foreground import _signal

    enc, dec = MODELS[args.model]
    if not enc.exists():
        print(f"{enc} missing: run benchmarks/make_faithful_model.py / make_realistic_model.py")
        return 2
    model = EdgeSamModel(enc, dec, num_threads=args.threads).load()
    predictor = Predictor(model, cache=None)
    image = scene(2048, args.object_size, args.objects)
    params, mapping, threshold = seed_inputs(image, args.object_size)
    emb = predictor.embed(image, mapping)
    tensor = np.zeros((1, 3, 1024, 1024), np.float32)
    tensor[:] = np.random.default_rng(1).normal(0, 1, tensor.shape).astype(np.float32)
    enc_session = model.session("encoder")
    enc_in = enc_session.get_inputs()[0].name

    def raw_encoder():
        enc_session.run(None, {enc_in: tensor})

    def seeds_before():
        sig = _signal(mapping.apply(image, expand=False), "bright")
        s, smoothed, f = seeds._detect(sig, params, threshold)
        fg = smoothed > threshold
        if f > 1:
            np.repeat(np.repeat(fg, f, 0), f, 1)
        return s

    def seeds_after():
        return detect_seeds(image, params, mapping, threshold)

    # time spent inside the upsampling and the decoder, per segment_slice
    spent = {"up": 0.0, "dec": 0.0, "calls": 0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    real_mask, real_decode = MaskUpsampler.mask, model.decode
    real_lr = {name: getattr(lowres.LowResMask, name)
               for name in ("__init__", "values_at", "window")}

    def counted_decode(*a, **k):
        spent["calls"] += 1
        return real_decode(*a, **k)

    model.decode = timed(counted_decode, "dec")

    def run_slice(before: bool):
        spent.update(up=0.0, dec=0.0, calls=0)
        if before:
            MaskUpsampler.mask = timed(real_mask, "up")

            def full(pr, e, points, labels):
                r = pr.predict(points=points, labels=labels, embedding=e)
                return lowres.FullMask(r.mask, 0, 0, r.score)
            saved = driver.decode_low_res
            driver.decode_low_res = full
        else:
            for name, fn in real_lr.items():
                setattr(lowres.LowResMask, name, timed(fn, "up"))
        try:
            res = segment_slice(predictor, image, params=params, mapping=mapping,
                                threshold=threshold, embedding=emb)
        finally:
            MaskUpsampler.mask = real_mask
            for name, fn in real_lr.items():
                setattr(lowres.LowResMask, name, fn)
            if before:
                driver.decode_low_res = saved
        return res, dict(spent)

    # equivalence of the two detection scales
    s_old, s_new = seeds_before(), seeds_after()
    d = np.hypot(s_new[:, None, 0] - s_old[None, :, 0], s_new[:, None, 1] - s_old[None, :, 1])
    nearest = d.min(axis=1) if d.size else np.zeros(0)
    res_new, _ = run_slice(False)
    real_sf = seeds.seed_factor
    driver.seed_factor = seeds.detection_factor
    try:
        res_old_seeds, _ = run_slice(False)
    finally:
        driver.seed_factor = real_sf
    n_a, n_b, matched, med_iou = match(res_old_seeds.labels, res_new.labels)

    rounds = {"encoder": [], "seeds_before": [], "seeds_after": [], "up_before": [],
              "up_after": [], "dec": [], "calls": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        raw_encoder()
        rounds["encoder"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        seeds_before()
        rounds["seeds_before"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        seeds_after()
        rounds["seeds_after"].append(time.perf_counter() - t0)
        _, sp = run_slice(True)
        rounds["up_before"].append(sp["up"])
        _, sp = run_slice(False)
        rounds["up_after"].append(sp["up"])
        rounds["dec"].append(sp["dec"])
        rounds["calls"].append(sp["calls"])
    med = {k: float(np.median(v)) for k, v in rounds.items()}
    enc_ms = med["encoder"] * 1e3
    print(f"model {args.model} ({model.name}), {args.threads} threads, 2048x2048 uint16, "
          f"{args.objects} discs of {args.object_size:g} px, medians of {args.rounds} "
          f"interleaved rounds, load {os.getloadavg()[0]:.1f}")
    print(f"raw encoder                       {enc_ms:8.1f} ms")
    for k in ("seeds_before", "seeds_after"):
        print(f"seed detection {k[6:]:7s}            {med[k] * 1e3:8.1f} ms  "
              f"{med[k] * 1e3 / enc_ms:5.2f} x raw encoder")
    for k in ("up_before", "up_after"):
        print(f"upsampling {k[3:]:7s}                {med[k] * 1e3:8.1f} ms")
    per_call = med["dec"] / max(1.0, med["calls"]) * 1e3
    print(f"decoder                           {med['dec'] * 1e3:8.1f} ms  "
          f"({med['calls']:.0f} calls, {per_call:.1f} ms each; "
          f"{med['dec'] * 1e3 / enc_ms:.2f} x raw encoder)")
    f_old = seeds.detection_factor((2048, 2048), args.object_size)
    f_new = seeds.seed_factor((2048, 2048), args.object_size)
    near_med = float(np.median(nearest)) if nearest.size else float("nan")
    near_max = float(nearest.max()) if nearest.size else float("nan")
    print(f"seeds: {len(s_old)} before (factor {f_old}), {len(s_new)} after (factor {f_new}); "
          f"nearest old seed median {near_med:.1f} px, max {near_max:.1f} px")
    print(f"labels: {n_a} objects with the old seeds, {n_b} with the new; {matched} matched "
          f"(IoU > 0.5), median IoU {med_iou:.3f}; identical arrays: "
          f"{np.array_equal(res_old_seeds.labels, res_new.labels)}")
    # a decoder run is ~1.8 GMAC per prompt set against ~20 GMAC for the encoder
    print(f"MAC bound: {med['calls']:.0f} decoder runs x 1.8 GMAC = "
          f"{med['calls'] * 1.8:.1f} GMAC = {med['calls'] * 1.8 / 20.0:.2f} encoders "
          "(20 GMAC), whatever the batching")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
