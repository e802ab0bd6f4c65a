"""Propagation over 100 slices, cold and warm, as ratios to raw onnxruntime (issue 17, 3-4).

Rows: cold cache per run / (N x (raw encoder + raw decoder)) and warm cache per run /
(N x raw decoder), on a benchmark model (benchmarks/models/, not EdgeSAM): the faithful
random-weight one (default) or the realistic-mask one (``--model realistic``). Raw costs
are measured in the same process right before each propagation (medians), so the ratios
survive a loaded machine better than times do. Stop rules are off so every slice is
propagated.

To compare two trees of the package (say the last commit before a change and after it),
pass ``--src`` several times: each repeat runs every tree once, in turn, each in a fresh
process (interleaved), and the medians of the ratios are printed per tree::

    python benchmarks/bench_pipeline.py --src /tmp/before/src --src src --repeats 3
    python benchmarks/bench_pipeline.py --src /tmp/before/src --src src --model realistic

``run.py --only goals`` calls :func:`measure` for its propagation rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_workflows import MODELS  # the benchmark models (not EdgeSAM): --model picks one


def _stack(n: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    rng = np.random.default_rng(0)
    return np.stack([
        (300 + 2000 * ((yy - c) ** 2 + (xx - c) ** 2 < (size // 8 + (k % 20)) ** 2)
         + rng.integers(0, 60, (size, size))).astype(np.uint16)
        for k in range(n)])


def child(n: int, size: int, threads: int, model: str = "faithful") -> dict:
    """:func:`measure` on a benchmark model (``"faithful"`` or ``"realistic"``) loaded here."""
    from napari_edgesam.engine import EdgeSamModel

    enc, dec = MODELS[model]
    loaded = EdgeSamModel(enc, dec, name=model, num_threads=threads)
    return measure(loaded.load(), n, size)


def measure(model, n: int, size: int) -> dict:
    """One cold and one warm propagation over ``n`` slices of ``size`` x ``size`` with
    ``model`` (a loaded :class:`EdgeSamModel`), with raw costs around them.

    Returns
    -------
    dict
        ``{"cold" | "warm": {"seconds", "slices", "raw_encoder", "raw_decoder", "ratio",
        "stats", "cache"}}``: the run's wall time, slices propagated, the raw medians
        (seconds; before and after the run, averaged), the run over ``slices`` x (raw
        encoder + raw decoder) cold or ``slices`` x raw decoder warm, the run's stats and
        the cache's hits.
    """
    from run import median_time

    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.cache import EmbeddingCache
    from napari_edgesam.workflows.propagation import (
        PropagationSettings,
        SliceAnnotation,
        propagate,
    )

    enc, dec = model.session("encoder"), model.session("decoder")
    rng = np.random.default_rng(1)
    tensor = rng.normal(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    (emb,) = enc.run(None, {"image": tensor})
    feeds = {"image_embeddings": emb,
             "point_coords": np.array([[[300, 300], [320, 330], [0, 0]]], np.float32),
             "point_labels": np.array([[1, 1, -1]], np.float32)}

    def raw():
        return (median_time(lambda: enc.run(None, {"image": tensor}), 3, warmup=0),
                median_time(lambda: dec.run(None, feeds), 7, warmup=0))

    stack = _stack(n, size)
    settings = PropagationSettings(min_area=0, min_score=0.0, min_overlap=0.0,
                                   max_growth=1e9, keep_connected=False)
    objects = {1: SliceAnnotation(n // 2, points=[(size / 2, size / 2)], labels=[1])}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(disk_dir=Path(tmp))  # the default bounds (256 MiB memory)
        pred = Predictor(model, cache=cache)
        for phase in ("cold", "warm"):
            e, d = raw()
            t0 = time.perf_counter()
            res = propagate(pred, stack, objects, settings=settings)
            t = time.perf_counter() - t0
            slices = len(res.objects[1].records)
            e2, d2 = raw()
            e, d = (e + e2) / 2, (d + d2) / 2
            base = slices * ((e + d) if phase == "cold" else d)
            out[phase] = {"seconds": t, "slices": slices, "raw_encoder": e, "raw_decoder": d,
                          "ratio": t / base, "stats": res.stats,
                          "cache": {k: v for k, v in cache.stats.items()
                                    if k in ("memory_hits", "disk_hits", "misses")}}
        if hasattr(cache, "flush"):
            cache.flush()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", action="append", default=None,
                   help="a tree holding napari_edgesam (repeatable; default: the installed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", choices=sorted(MODELS), default="faithful")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.slices, args.size, args.threads, args.model)))
        return 0
    srcs = args.src or [""]
    results = {s: [] for s in srcs}
    loads = [os.getloadavg()]
    for r in range(args.repeats):
        for s in srcs:
            env = dict(os.environ)
            if s:
                env["PYTHONPATH"] = str(Path(s).resolve())
            cmd = [sys.executable, __file__, "--child", "--slices", str(args.slices),
                   "--size", str(args.size), "--threads", str(args.threads),
                   "--model", args.model]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            res = json.loads(done.stdout.strip().splitlines()[-1])
            results[s].append(res)
            loads.append(os.getloadavg())
            print(f"repeat {r} {s or 'installed'}: cold {res['cold']['ratio']:.3f} "
                  f"warm {res['warm']['ratio']:.3f} ({res['warm']['cache']}) load "
                  f"{loads[-1][0]:.2f}", flush=True)
    print(f"\n{args.slices} slices {args.size}x{args.size}, {args.model} benchmark model, "
          f"{args.threads} threads; medians of {args.repeats} interleaved runs")
    for s in srcs:
        cold = np.median([x["cold"]["ratio"] for x in results[s]])
        warm = np.median([x["warm"]["ratio"] for x in results[s]])
        print(f"  {s or 'installed':<30} cold / N(raw enc + raw dec) {cold:.3f}   "
              f"warm / N raw dec {warm:.3f}")
    print("load averages (1 min) seen: " + ", ".join(f"{x[0]:.2f}" for x in loads))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "loads": loads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
