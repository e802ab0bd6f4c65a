"""Build the *realistic-mask* benchmark model: the faithful model's full cost, object-like masks.

**This is NOT EdgeSAM, and it is for benchmarks only.** The architecture-faithful model of
``make_faithful_model.py`` costs what EdgeSAM costs, but its random weights give masks over
70 % of the image, which inflates every figure that depends on a mask's size (upsampling,
cropping, painting, propagation's overlap tests). The test double of ``tests/models/``
segments like a real model on simple images (the bright object under a click) but costs a
few milliseconds. This script joins them, working on the ONNX graphs alone (no PyTorch):

- encoder = the faithful encoder, computed in full, **and** the test double's encoder (mean
  over channels, SpaceToDepth 16); ``image_embeddings`` is the test double's embedding;
- decoder = the faithful decoder, computed in full, **and** the test double's decoder, which
  reads the image back from the embedding; ``masks`` and ``scores`` are the test double's.

The faithful branch's outputs are kept live by one exact operation: every faithful output
is summed (``ReduceSum``), and ``0 * float(isnan(sum))`` (exactly 0 whatever the sum, NaN and
infinity included) is added to the test double's ``image_embeddings`` / ``masks``, so their
values are unchanged bit for bit while the faithful branch reaches the graph's outputs and
no optimiser may drop it. ``check_live`` verifies that in onnxruntime's optimised graph.

Usage (after ``make_faithful_model.py``; onnx, onnxruntime and numpy, e.g. the project venv)::

    .venv/bin/python benchmarks/make_realistic_model.py
    .venv/bin/python benchmarks/make_realistic_model.py --runs 15   # + interleaved timing

Outputs (git-ignored, never commit them):
    benchmarks/models/edgesam_realistic_encoder.onnx
    benchmarks/models/edgesam_realistic_decoder.onnx

Both honour the EdgeSAM ONNX contract exactly (docs/model-contract.md: names, float32,
shapes, dynamic point count ``num_points``; ``scores`` produced by a ``Div``). Their doc
string and metadata (``benchmark_only``, ``not_edgesam``) say what they are.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
TEST_MODELS = HERE.parent / "tests" / "models"
FAITHFUL = {"encoder": MODELS / "edgesam_faithful_encoder.onnx",
            "decoder": MODELS / "edgesam_faithful_decoder.onnx"}
DOUBLE = {"encoder": TEST_MODELS / "test_encoder.onnx",
          "decoder": TEST_MODELS / "test_decoder.onnx"}
OUT = {"encoder": MODELS / "edgesam_realistic_encoder.onnx",
       "decoder": MODELS / "edgesam_realistic_decoder.onnx"}
#: The tensor of the mask graph that the keep-alive term is added to, per role.
LIVE_TENSOR = {"encoder": "image_embeddings", "decoder": "masks"}

DOC = (
    "BENCHMARK ONLY - NOT EdgeSAM. napari-edgesam's realistic-mask timing model: computes the "
    "architecture-faithful random-weight model ({cost}) in full, but outputs the test "
    "double's object-like {what} ({double}); the faithful outputs are kept live by adding "
    "0 * isnan(sum). Never use it to judge segmentation. Regenerate with: "
    "python benchmarks/make_realistic_model.py"
)


def _rename(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors (node inputs/outputs, initialisers, value_info, graph outputs) in place."""
    for n in graph.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        n.output[:] = [mapping.get(o, o) for o in n.output]
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for v in list(graph.value_info) + list(graph.output):
        v.name = mapping.get(v.name, v.name)


def keep_alive(masks: onnx.ModelProto, cost: onnx.ModelProto, live: str,
               *, masks_prefix: str = "objmask/", cost_prefix: str = "cost/",
               doc: str = "") -> onnx.ModelProto:
    """One model that computes ``cost`` in full and returns ``masks``'s outputs unchanged.

    Parameters
    ----------
    masks : onnx.ModelProto
        The graph whose outputs the result returns (here the test double). Its inputs are
        the result's inputs; its internal tensor and node names get ``masks_prefix``.
    cost : onnx.ModelProto
        The graph whose cost the result carries (here the faithful model). Its inputs must
        be among ``masks``'s inputs (same names); its internal names are kept, its outputs
        are renamed with ``cost_prefix``.
    live : str
        A tensor of ``masks`` (a graph output or an internal name) to which the keep-alive
        term ``0 * float(isnan(sum of every cost output's ReduceSum))`` (a float32 scalar,
        exactly 0) is added; everything downstream of it then depends on the cost branch.
    masks_prefix, cost_prefix : str
        Name prefixes that keep the two graphs' names apart.
    doc : str
        Doc string of the result.

    Returns
    -------
    onnx.ModelProto
        Same inputs and outputs (names, types, shapes, symbolic dimensions) as ``masks``;
        outputs equal to ``masks``'s outputs bit for bit (``x + 0.0``), for any cost values.
    """
    m, c = copy.deepcopy(masks), copy.deepcopy(cost)
    mg, cg = m.graph, c.graph
    inputs = {i.name for i in mg.input}
    missing = [i.name for i in cg.input if i.name not in inputs]
    if missing:
        raise ValueError(f"cost graph inputs {missing} are not inputs of the masks graph")
    if not cg.output:
        raise ValueError("the cost graph has no outputs to keep live")
    outputs = {o.name for o in mg.output}
    produced = {o for n in mg.node for o in n.output if o} | {t.name for t in mg.initializer}
    _rename(mg, {t: masks_prefix + t for t in produced - outputs - inputs})
    _rename(cg, {o.name: cost_prefix + o.name for o in cg.output})
    for n in mg.node:
        if n.name:
            n.name = masks_prefix + n.name
    live = live if live in outputs else masks_prefix + live
    taken_m = {o for n in mg.node for o in n.output} | {t.name for t in mg.initializer}
    taken_c = {o for n in cg.node for o in n.output} | {t.name for t in cg.initializer}
    clash = (taken_m & taken_c) | ({n.name for n in mg.node if n.name}
                                   & {n.name for n in cg.node if n.name})
    if clash:
        raise ValueError(f"name clash between the two graphs: {sorted(clash)[:5]}")
    producers = [n for n in mg.node if live in n.output]
    if len(producers) != 1:
        raise ValueError(f"{live!r} is not produced by one node of the masks graph")
    before = live + "/before_keep_alive"
    producers[0].output[:] = [before if o == live else o for o in producers[0].output]

    k = "keep_alive/"
    nodes = []
    sums = []
    for o in cg.output:
        s = f"{k}sum_{len(sums)}"
        nodes.append(helper.make_node("ReduceSum", [o.name], [s], keepdims=0, name=s))
        sums.append(s)
    total = sums[0]
    for i, s in enumerate(sums[1:]):
        nxt = f"{k}total_{i}"
        nodes.append(helper.make_node("Add", [total, s], [nxt], name=nxt))
        total = nxt
    nodes += [
        helper.make_node("IsNaN", [total], [k + "isnan"], name=k + "isnan"),
        helper.make_node("Cast", [k + "isnan"], [k + "flag"], to=TensorProto.FLOAT,
                         name=k + "flag"),
        helper.make_node("Mul", [k + "flag", k + "zero"], [k + "term"], name=k + "term"),
        helper.make_node("Add", [before, k + "term"], [live], name=k + "add"),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), k + "zero")

    at = list(mg.node).index(producers[0]) + 1  # keep the node list topologically sorted
    graph = helper.make_graph(
        list(cg.node) + list(mg.node)[:at] + nodes + list(mg.node)[at:],
        mg.name + "_with_" + cg.name,
        list(mg.input),
        list(mg.output),
        initializer=list(cg.initializer) + list(mg.initializer) + [zero],
        doc_string=doc,
        value_info=[v for v in list(cg.value_info) + list(mg.value_info)
                    if v.name not in outputs],
    )
    opsets: dict[str, int] = {}
    for op in list(m.opset_import) + list(c.opset_import):
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="napari-edgesam-benchmark", producer_version="1", doc_string=doc)
    model.ir_version = max(m.ir_version, c.ir_version)
    onnx.checker.check_model(model)
    return model


def build(role: str, faithful: Path, double: Path) -> onnx.ModelProto:
    """The realistic ``role`` ("encoder" or "decoder") from the faithful and test-double files.

    Parameters
    ----------
    role : {"encoder", "decoder"}
    faithful, double : Path
        The architecture-faithful file and the test double's file for that role.

    Returns
    -------
    onnx.ModelProto
        With doc string and metadata saying it is not EdgeSAM and is for benchmarks only.
    """
    cost, masks = onnx.load(str(faithful)), onnx.load(str(double))
    doc = DOC.format(cost=faithful.name, double=double.name,
                     what="masks" if role == "decoder" else "embedding (the image itself)")
    model = keep_alive(masks, cost, LIVE_TENSOR[role], doc=doc)
    helper.set_model_props(model, {
        "benchmark_only": "true", "not_edgesam": "true", "model": f"realistic_{role}",
        "cost_from": faithful.name, "cost_sha256": _sha256(faithful),
        "outputs_from": double.name, "outputs_sha256": _sha256(double)})
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def optimized_graph(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    """The graph onnxruntime runs (``ORT_ENABLE_ALL``, CPU), read back from
    ``SessionOptions.optimized_model_filepath``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp)
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp))


def live_op_counts(graph: onnx.GraphProto) -> tuple[dict[str, int], dict[str, int]]:
    """Operator counts of all nodes and of the nodes from which a graph output is reachable.

    Returns
    -------
    (all_counts, live_counts) : dict[str, int], dict[str, int]
        ``op_type -> number of nodes``; a node missing from ``live_counts`` contributes to
        no output, so an optimiser or a runtime may skip it.
    """
    producer = {o: n for n in graph.node for o in n.output}
    live, stack = set(), [o.name for o in graph.output]
    while stack:
        n = producer.get(stack.pop())
        if n is None or id(n) in live:
            continue
        live.add(id(n))
        stack.extend(i for i in n.input if i)
    all_counts: dict[str, int] = {}
    live_counts: dict[str, int] = {}
    for n in graph.node:
        all_counts[n.op_type] = all_counts.get(n.op_type, 0) + 1
        if id(n) in live:
            live_counts[n.op_type] = live_counts.get(n.op_type, 0) + 1
    return all_counts, live_counts


def check_live(combined: onnx.ModelProto, cost: onnx.ModelProto, tmp_dir: Path) -> list[str]:
    """Problems (empty if none): every node of onnxruntime's optimised ``cost`` graph must
    also be, by operator type, in the optimised ``combined`` graph *and* feed its outputs."""
    cost_all, _ = live_op_counts(optimized_graph(cost, tmp_dir / "cost_opt.onnx").graph)
    comb_all, comb_live = live_op_counts(
        optimized_graph(combined, tmp_dir / "combined_opt.onnx").graph)
    return [f"{op}: {n} in the optimised cost graph, {comb_live.get(op, 0)} live in the "
            f"combined one ({comb_all.get(op, 0)} in all)"
            for op, n in sorted(cost_all.items()) if comb_live.get(op, 0) < n]


def _session(source, threads: int = 2, spin: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def interleaved(fns: dict, runs: int) -> dict[str, list[float]]:
    """Times of each callable, interleaved (the order reversed every other round), after one
    untimed warm-up call each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def mask_fractions(encoder: Path, decoder: Path, size: int = 2048, clicks: int = 15):
    """Median area fractions of the chosen mask on run.py's synthetic 2048 x 2048 slice, through
    napari_edgesam's Predictor (as the benchmark rows use a model): for ``clicks`` clicks on
    bright discs (``bench_workflows.object_points``) and ``clicks`` on the background.

    Returns
    -------
    (on_objects, on_background) : float, float
    """
    from bench_workflows import object_points
    from run import _test_image

    from napari_edgesam.engine import EdgeSamModel, Predictor

    img = _test_image(size, np.random.default_rng(0))
    pred = Predictor(EdgeSamModel(encoder, decoder, num_threads=2).load(), cache=None)
    pred.set_image(img)
    rng = np.random.default_rng(1)
    background = []
    while len(background) < clicks:
        x, y = rng.uniform(0.05, 0.95, 2) * size
        if img[int(y), int(x)] < 1000:
            background.append((x, y))
    result = []
    for points in (object_points(img, clicks, rng), background):
        areas = [pred.predict(points=[p]).area / size**2 for p in points]
        result.append(float(np.median(areas)))
    return tuple(result)


def _check_outputs(realistic: dict, double: dict) -> list[str]:
    """The realistic files give exactly the test double's outputs."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    enc_r, enc_d = _session(realistic["encoder"]), _session(double["encoder"])
    (emb,) = enc_r.run(None, {"image": image})
    problems = []
    if not np.array_equal(emb, enc_d.run(None, {"image": image})[0]):
        problems.append("encoder output differs from the test double's")
    dec_r, dec_d = _session(realistic["decoder"]), _session(double["decoder"])
    for coords, labels in (([[400, 300], [0, 0]], [1, -1]), ([[100, 120], [700, 650]], [2, 3]),
                           ([[10, 20], [500, 600], [900, 100], [0, 0]], [1, 1, 0, -1])):
        feed = {"image_embeddings": emb, "point_coords": np.array([coords], np.float32),
                "point_labels": np.array([labels], np.float32)}
        for a, b in zip(dec_r.run(None, feed), dec_d.run(None, feed)):
            if not np.array_equal(a, b, equal_nan=True):
                problems.append(f"decoder output differs from the test double's for {labels}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faithful-encoder", type=Path, default=FAITHFUL["encoder"])
    ap.add_argument("--faithful-decoder", type=Path, default=FAITHFUL["decoder"])
    ap.add_argument("--out-dir", type=Path, default=MODELS)
    ap.add_argument("--runs", type=int, default=0,
                    help="interleaved timing runs of realistic vs faithful (0: no timing)")
    ap.add_argument("--no-masks", action="store_true",
                    help="skip the mask-area figure (needs napari_edgesam)")
    args = ap.parse_args(argv)
    faithful = {"encoder": args.faithful_encoder, "decoder": args.faithful_decoder}
    for p in faithful.values():
        if not p.is_file():
            sys.exit(f"{p} not found: run benchmarks/make_faithful_model.py first")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = {role: args.out_dir / OUT[role].name for role in OUT}
    problems = []
    for role in ("encoder", "decoder"):
        model = build(role, faithful[role], DOUBLE[role])
        tmp = out[role].with_suffix(".tmp")
        tmp.write_bytes(model.SerializeToString(deterministic=True))
        tmp.replace(out[role])
        counts, _ = live_op_counts(model.graph)
        print(f"wrote {out[role]} ({out[role].stat().st_size / 1e6:.1f} MB, "
              f"{sum(counts.values())} nodes)")
        bad = check_live(model, onnx.load(str(faithful[role])), args.out_dir)
        for name in ("cost_opt.onnx", "combined_opt.onnx"):
            (args.out_dir / name).unlink(missing_ok=True)
        print(f"{role}: every node of the optimised faithful graph is live in the optimised "
              f"realistic graph: {not bad}")
        problems += [f"{role}: {b}" for b in bad]
    problems += _check_outputs(out, DOUBLE)
    print(f"outputs equal the test double's bit for bit: {not problems}")
    if not args.no_masks:
        for label, pair in (("faithful", faithful), ("realistic", out)):
            on_obj, on_bg = mask_fractions(pair["encoder"], pair["decoder"])
            print(f"{label}: median mask area on a 2048x2048 synthetic slice: {on_obj:.1%} "
                  f"for 15 clicks on objects, {on_bg:.1%} for 15 on the background")
    if args.runs:
        problems += _time(faithful, out, args.runs)
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("OK")
    return 0


def _time(faithful: dict, out: dict, runs: int) -> list[str]:
    """Raw onnxruntime timing: realistic and faithful interleaved (the two sessions alternate,
    the order reversed every other round, so each follows the other as often as itself), then
    the test double alone. Thread spinning is off in these sessions so that one session's
    spinning threads do not slow the next run of the other (which would favour whichever
    more often follows itself)."""
    import os

    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    sessions = {role: {"realistic": _session(out[role], spin=False),
                       "faithful": _session(faithful[role], spin=False),
                       "test double": _session(DOUBLE[role], spin=False)} for role in out}
    emb = sessions["encoder"]["realistic"].run(None, {"image": image})[0]
    feeds = {"encoder": {"image": image},
             "decoder": {"image_embeddings": emb,
                         "point_coords": np.array([[[400, 300], [0, 0]]], np.float32),
                         "point_labels": np.array([[1, -1]], np.float32)}}
    for role in ("encoder", "decoder"):
        ss, f = sessions[role], feeds[role]
        times = interleaved({k: (lambda s=ss[k]: s.run(None, f))
                             for k in ("realistic", "faithful")}, runs)
        times.update(interleaved({"test double": lambda s=ss["test double"]: s.run(None, f)},
                                 runs))
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        paired = float(np.median(np.divide(times["realistic"], times["faithful"])))
        load = " (load %.2f)" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
        print(f"{role}, {runs} runs each{load}: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
              + f"; realistic / faithful {med['realistic'] / med['faithful']:.3f} (median of "
              f"the paired ratios {paired:.3f}), "
              f"realistic / (faithful + test double) "
              f"{med['realistic'] / (med['faithful'] + med['test double']):.3f}")
    return []


if __name__ == "__main__":
    sys.exit(main())
