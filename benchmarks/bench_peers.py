"""The plugin's float32 encoder against the strongest peer's default path: SAM ViT-B eager.

BENCHMARK ONLY. The peer's image encoder is :mod:`peer_vit_b` (SAM's ViT-B, random
weights, written from the paper), timed in PyTorch eager at 1024 x 1024 float32 with the
same number of threads, in a subprocess of a Python that has torch (the plugin never needs
torch, so its environment has none). The plugin's side is ``Predictor.embed`` of a
1024 x 1024 uint16 slice (mapping, resize, normalisation and the run) on the model the
plugin runs in float32: the ``encoder-fold`` variant when it passed its agreement check
(``load_optimized(model, ["encoder-fold"])``), else the published file; the file as
published and the int8 variant (when it passed) are timed beside it. The engine is timed
before and after the peer (never at the same time), and the ratio is the peer's median
over the engine's median of both.

Which Python has torch: ``--torch-python``, else ``$NAPARI_EDGESAM_TORCH_PYTHON``, else
``.bench-venv/bin/python`` in the checkout, else ``/tmp/bench-venv/bin/python``::

    .venv/bin/python benchmarks/bench_peers.py --repeats 7 --peer-runs 3
    .venv/bin/python benchmarks/run.py --only goals --goals peers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench_workflows import MODELS

HERE = Path(__file__).resolve().parent
#: Where a Python with torch is looked for, in order (after --torch-python).
TORCH_PYTHONS = (HERE.parent / ".bench-venv" / "bin" / "python",
                 Path("/tmp/bench-venv/bin/python"))
#: The issue's aim: the peer this many times slower than the plugin's float32 encoder.
AIM = 90.0


def torch_python(explicit: str | None = None) -> Path | None:
    """The Python that runs :mod:`peer_vit_b` (see the module docstring), or None."""
    for cand in (explicit, os.environ.get("NAPARI_EDGESAM_TORCH_PYTHON"), *TORCH_PYTHONS):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def run_peer(python: Path, threads: int, runs: int, warmup: int = 0) -> dict:
    """Run :mod:`peer_vit_b` in ``python``; its JSON (parameters, macs, seconds...).

    Raises
    ------
    RuntimeError
        The subprocess failed (its stderr is in the message).
    """
    cmd = [str(python), str(HERE / "peer_vit_b.py"), "--threads", str(threads),
           "--runs", str(runs), "--warmup", str(warmup), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    sys.stderr.write(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def plugin_models(model) -> dict:
    """``{label: model}``: the plugin's float32 encoder (``encoder-fold`` when it passed,
    else the published file), the published file, and ``encoder-int8`` when it passed.
    ``encoder-fold`` is built and checked first when it is not yet (remembered beside the
    model files, as ``napari-edgesam optimize`` does)."""
    from run import _test_image

    from napari_edgesam.engine.optimize import load_optimized, optimize_model

    rng = np.random.default_rng(123)
    report = optimize_model(model, [_test_image(s, rng) for s in (1024, 2048, 768)],
                            variants=("encoder-fold",))
    print(report.summary(), file=sys.stderr, flush=True)
    out = {}
    fold = load_optimized(model, ["encoder-fold"])
    out["plugin float32"] = fold
    out["published float32 file"] = model
    int8 = load_optimized(model, ["encoder-int8"])
    if int8 is not model:
        out["plugin int8"] = int8
    return out


def _engine_medians(models: dict, image, repeats: int) -> dict:
    from run import interleaved_medians

    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.intensity import mapping_from_percentiles

    mapping = mapping_from_percentiles(image)
    preds = {k: Predictor(m, cache=None) for k, m in models.items()}
    return interleaved_medians({k: (lambda p=p: p.embed(image, mapping, use_cache=False))
                                for k, p in preds.items()}, repeats)


def measure(model, repeats: int, peer_runs: int, python: Path | None = None) -> dict:
    """The engine's encoders (before and after the peer) and the peer, in one run.

    Returns
    -------
    dict
        ``engine``: ``{label: median seconds}`` over both halves; ``peer``: the JSON of
        :func:`run_peer`; ``labels``: what each engine label ran (the model's name);
        ``threads``.
    """
    from run import _test_image

    from napari_edgesam.engine.session import default_num_threads

    python = python or torch_python()
    if python is None:
        raise RuntimeError("no Python with torch: see bench_peers.torch_python")
    threads = model.num_threads or default_num_threads()
    models = plugin_models(model)
    image = _test_image(1024, np.random.default_rng(3))
    half = max(1, repeats // 2)
    first = _engine_medians(models, image, half)
    peer = run_peer(python, threads, peer_runs)
    second = _engine_medians(models, image, max(1, repeats - half))
    engine = {k: statistics.mean((first[k], second[k])) for k in models}
    return {"engine": engine, "peer": peer, "threads": threads,
            "labels": {k: m.name for k, m in models.items()},
            "halves": {"before": first, "after": second}}


def peer_rows(ctx, Row) -> list:
    """Rows: the peer's time against each engine encoder (``raw_seconds``: the engine's,
    so ``ratio`` is "x times faster"); the first row is the issue's figure."""
    opts = getattr(ctx, "options", {}) or {}
    python = torch_python(opts.get("torch_python"))
    name = "fp32 encoder through the plugin vs SAM ViT-B eager, 1024x1024"
    if python is None:
        return [Row(name, 0.0, None, "not measured: no Python with torch (--torch-python, "
                    "$NAPARI_EDGESAM_TORCH_PYTHON or .bench-venv; benchmarks/README.md)",
                    {"measured": False})]
    runs = int(opts.get("peer_runs") or (1 if opts.get("quick") else 3))
    res = measure(ctx.model, ctx.repeats, runs, python)
    peer = res["peer"]
    macs = peer["macs"]
    info = (f"SAM ViT-B image encoder, torch {peer['torch']} eager, {res['threads']} "
            f"threads, random weights: {peer['parameters'] / 1e6:.2f} M parameters, "
            f"{macs['total'] / 1e9:.0f} GMAC counted")
    rows = []
    for label, sec in res["engine"].items():
        speed = peer["median_seconds"] / sec
        title = name if label == "plugin float32" else f"{label} encoder vs SAM ViT-B eager"
        rows.append(Row(title, peer["median_seconds"], sec,
                        f"{speed:.0f}x faster ({res['labels'][label]}); {info}",
                        {"times_faster": speed, "engine_label": label,
                         "engine_model": res["labels"][label],
                         "peer_parameters": peer["parameters"], "peer_macs": macs,
                         "peer_seconds": peer["seconds"], "aim": AIM}))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, default=MODELS["faithful"][0])
    ap.add_argument("--decoder", type=Path, default=MODELS["faithful"][1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peer-runs", type=int, default=3)
    ap.add_argument("--torch-python", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from run import Context, Row, format_table

    from napari_edgesam.engine import EdgeSamModel

    model = EdgeSamModel(args.encoder, args.decoder, name="faithful (random weights)",
                         num_threads=args.threads).load()
    ctx = Context(model, args.repeats, [1024], np.random.default_rng(0))
    ctx.options = {"torch_python": args.torch_python, "peer_runs": args.peer_runs}
    print(f"load average {os.getloadavg()}")
    print(format_table(peer_rows(ctx, Row)))
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
