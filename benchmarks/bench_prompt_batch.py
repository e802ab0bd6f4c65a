"""The prompt-batched decoder (issue 17, point 5): cost per prompt set, and per slice.

On the architecture-faithful random-weight decoder (``edgesam_faithful_decoder.onnx``, NOT
EdgeSAM), rewritten here by :func:`napari_edgesam.engine.optimize.prompt_batch.batch_prompts`
into a temporary file, timed in one process, interleaved (each round runs every measurement
once, in turn; medians over the rounds), with the engine's session options:

- **per prompt set**: one click and its padding point per run, 16 runs of the original
  decoder, against one run of 16 such prompt sets in the batched decoder, each divided by
  16 (goal <= 0.5); the batched decoder at batch 1 too (the rewrite's own overhead);
- **the MAC bound** beside it: the matrix-product MACs of the decoder (MatMul, Gemm, Conv,
  ConvTranspose; from onnx shape inference at batch 1) split into those that depend on the
  prompts (paid per prompt set even when batched perfectly) and those computed from the
  embedding alone (shared by the batch): the best per-prompt ratio batching can reach is
  ``per-prompt MACs / all MACs`` (plus 1/16 of the shared part);
- **per 2048 x 2048 slice**: automatic segmentation (``segment_slice``, embedding included,
  ``benchmarks/bench_automatic.py``'s scene) with the batched decoder and with one run per
  seed, and the raw encoder for scale.

Usage::

    python benchmarks/bench_prompt_batch.py [--threads 2] [--rounds 7] [--slice-rounds 3]

:func:`rows` gives the same figures to ``benchmarks/run.py`` (``Row`` objects).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_workflows import MODELS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENCODER, DECODER = MODELS["faithful"]
BATCH = 16


def mac_split(decoder_path: Path) -> tuple[float, float]:
    """``(per-prompt MACs, shared MACs)`` of a batch-1 decoder's matrix products, with one
    click and its padding point (N = 2)."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(str(decoder_path))
    for inp in m.graph.input:
        if inp.name in ("point_coords", "point_labels"):
            inp.type.tensor_type.shape.dim[1].dim_value = 2
    m = shape_inference.infer_shapes(m, data_prop=True)
    dims = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims[vi.name] = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    dims.update(inits)
    prompt = {"point_coords", "point_labels"}
    per, shared = 0.0, 0.0
    for n in m.graph.node:
        if any(i in prompt for i in n.input):
            prompt.update(n.output)
        macs = 0.0
        out = dims.get(n.output[0]) if n.output else None
        if n.op_type == "MatMul" and out and n.input[0] in dims:
            macs = float(np.prod(out)) * dims[n.input[0]][-1]
        elif n.op_type == "Gemm" and out and n.input[0] in dims:
            macs = float(np.prod(out)) * dims[n.input[0]][-1]
        elif n.op_type == "Conv" and out and n.input[1] in dims:
            w = dims[n.input[1]]
            macs = float(np.prod(out)) * float(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose" and n.input[0] in dims and n.input[1] in dims:
            w = dims[n.input[1]]
            macs = float(np.prod(dims[n.input[0]])) * float(np.prod(w[1:]))
        if any(o in prompt for o in n.output):
            per += macs
        else:
            shared += macs
    return per, shared


def measure(threads: int = 2, rounds: int = 7, slice_rounds: int = 3,
            slices: bool = True) -> dict:
    """Every figure of this benchmark, as a dict (seconds, ratios, counts)."""
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(HERE))
    import onnx
    from run import interleaved_medians

    from napari_edgesam.engine import EdgeSamModel, Predictor
    from napari_edgesam.engine.optimize.prompt_batch import batch_prompts
    from napari_edgesam.engine.optimize.prompt_batch_runtime import BatchDecoder

    model = EdgeSamModel(ENCODER, DECODER, num_threads=threads).load()
    work = Path(tempfile.mkdtemp(prefix="bench-prompt-batch-"))
    t0 = time.perf_counter()
    batched, summary = batch_prompts(onnx.load(str(DECODER)))
    path = work / "decoder-batch.onnx"
    onnx.save(batched, str(path))
    rewrite_s = time.perf_counter() - t0
    bd = BatchDecoder(path, model)
    dec = model.session("decoder")
    rng = np.random.default_rng(0)
    emb = model.encode(rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32))
    coords = np.zeros((BATCH, 2, 2), np.float32)
    coords[:, 0] = rng.uniform(0, 1023, (BATCH, 2))
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (BATCH, 1))
    feeds = [{"image_embeddings": emb, "point_coords": coords[k:k + 1],
              "point_labels": labels[k:k + 1]} for k in range(BATCH)]
    # agreement of the timed runs (the same graph, batched)
    _, masks = bd.decode(emb, coords, labels)
    diff = max(float(np.abs(masks[k] - dec.run(["masks"], feeds[k])[0][0]).max())
               for k in range(BATCH))
    enc_in = np.zeros((1, 3, 1024, 1024), np.float32)
    med = interleaved_medians({
        "one_by_one": lambda: [dec.run(["scores", "masks"], f) for f in feeds],
        "batched": lambda: bd.decode(emb, coords, labels),
        "batched_1": lambda: bd.decode(emb, coords[:1], labels[:1]),
        "encoder": lambda: model.encode(enc_in),
    }, rounds)
    per, shared = mac_split(DECODER)
    out = {
        "threads": threads, "rounds": rounds, "load": os.getloadavg()[0],
        "rewrite_seconds": rewrite_s, "summary": summary.describe(),
        "max_abs_logit_diff": diff,
        "per_prompt_one_by_one": med["one_by_one"] / BATCH,
        "per_prompt_batched": med["batched"] / BATCH,
        "batched_1": med["batched_1"], "encoder": med["encoder"],
        "ratio": med["batched"] / med["one_by_one"],
        "batch1_ratio": med["batched_1"] / (med["one_by_one"] / BATCH),
        "macs_per_prompt": per, "macs_shared": shared,
        "mac_bound": (per + shared / BATCH) / (per + shared),
    }
    if slices:
        from bench_automatic import scene, seed_inputs

        from napari_edgesam.workflows.automatic import segment_slice

        image = scene(2048, 140.0, 40)
        params, mapping, threshold = seed_inputs(image, 140.0)
        pred = Predictor(model, cache=None)
        res = {}

        def slice_with(b):
            def run():
                res[b is None] = segment_slice(pred, image, params=params, mapping=mapping,
                                               threshold=threshold, batch_decoder=b)
            return run

        sl = interleaved_medians({"with": slice_with(bd), "without": slice_with(None)},
                                 slice_rounds)
        a, b = res[False], res[True]
        out.update(slice_with_batch=sl["with"], slice_without=sl["without"],
                   slice_ratio=sl["with"] / sl["without"], slice_rounds=slice_rounds,
                   slice_calls=b.decoder_calls, slice_objects=(b.n_objects, a.n_objects),
                   slice_labels_equal=float(np.mean(a.labels == b.labels)))
    return out


def rows(ctx_or_args=None) -> list:
    """This benchmark's rows for ``benchmarks/run.py``.

    Parameters
    ----------
    ctx_or_args : run.Context, argparse.Namespace or None
        ``threads`` (or the context model's ``num_threads``) and ``repeats``/``rounds`` are
        read when present; defaults 2 threads, 7 rounds; ``slice_rounds`` (default 3, 0: no
        slice rows).

    Returns
    -------
    list of Row
        Decoder per prompt set batched by 16 vs one per run (with the MAC bound), and
        seconds per 2048 x 2048 slice of automatic segmentation with and without it.
    """
    model = getattr(ctx_or_args, "model", None)
    threads = getattr(ctx_or_args, "threads", None) or getattr(model, "num_threads", None) or 2
    n = getattr(ctx_or_args, "rounds", None) or getattr(ctx_or_args, "repeats", None) or 7
    slice_rounds = getattr(ctx_or_args, "slice_rounds", 3)
    m = measure(threads=threads, rounds=max(3, int(n)), slice_rounds=slice_rounds or 1,
                slices=slice_rounds != 0)
    from run import Row  # benchmarks/ is on sys.path (measure put it there)

    note = (f"goal <= 0.5; MAC bound {m['mac_bound']:.2f} ({m['macs_per_prompt'] / 1e9:.2f} "
            f"GMAC per prompt set, {m['macs_shared'] / 1e9:.2f} shared); faithful random "
            "weights")
    out = [
        Row(f"decoder per prompt set, batch of {BATCH} / one per run",
            m["per_prompt_batched"], m["per_prompt_one_by_one"], note, m),
        Row("decoder-batch at batch 1 / original decoder", m["batched_1"],
            m["per_prompt_one_by_one"], "the rewrite's own overhead"),
    ]
    if "slice_with_batch" in m:
        out.append(Row("automatic segmentation per 2048x2048 slice, decoder-batch / one run "
                       "per seed", m["slice_with_batch"], m["slice_without"],
                       f"{m['slice_calls']} prompt sets; faithful random weights"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--slice-rounds", type=int, default=3)
    ap.add_argument("--no-slices", action="store_true")
    args = ap.parse_args(argv)
    if not DECODER.exists():
        print(f"{DECODER} missing: run benchmarks/make_faithful_model.py")
        return 2
    m = measure(args.threads, args.rounds, args.slice_rounds, slices=not args.no_slices)
    print(f"faithful random-weight decoder (NOT EdgeSAM), {m['threads']} threads, medians of "
          f"{m['rounds']} interleaved rounds, load {m['load']:.1f}")
    print(f"rewrite: {m['summary']} ({m['rewrite_seconds']:.2f} s); max |logit diff| "
          f"batched vs one by one {m['max_abs_logit_diff']:.1e}")
    print(f"one prompt set per run          {m['per_prompt_one_by_one'] * 1e3:8.1f} ms per set")
    print(f"batch of {BATCH}, per set            {m['per_prompt_batched'] * 1e3:8.1f} ms per "
          f"set   ratio {m['ratio']:.2f} (goal <= 0.5)")
    print(f"MAC bound                       {m['mac_bound']:.2f}  ({m['macs_per_prompt'] / 1e9:.2f}"
          f" GMAC per prompt set, {m['macs_shared'] / 1e9:.2f} GMAC shared)")
    print(f"batched decoder at batch 1      {m['batched_1'] * 1e3:8.1f} ms   "
          f"{m['batch1_ratio']:.2f} x the original")
    print(f"raw encoder                     {m['encoder'] * 1e3:8.1f} ms   (16 prompt sets "
          f"batched: {m['per_prompt_batched'] * BATCH / m['encoder']:.2f} x the encoder)")
    if "slice_with_batch" in m:
        print(f"2048x2048 slice, automatic, medians of {m['slice_rounds']}: with "
              f"{m['slice_with_batch']:.2f} s, without {m['slice_without']:.2f} s, ratio "
              f"{m['slice_ratio']:.2f}; {m['slice_calls']} prompt sets; objects "
              f"{m['slice_objects'][0]} vs {m['slice_objects'][1]}; labels equal on "
              f"{m['slice_labels_equal']:.1%} of pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
