"""The graph rewrites that make the variants: each takes an ``onnx.ModelProto`` and returns
a rewritten copy (or the input unchanged) with what was done.

Exact float32 rewrites of the decoder (:func:`rewrite_upscaling`, :func:`rewrite_count_casts`,
onnxruntime's offline constant folding :func:`_ort_offline`) and the encoder's preparation for
int8 quantisation (:func:`rewrite_global_pool`, :func:`fuse_gelu`). Patterns are found with
:mod:`.graph_matching`. ``onnx`` is imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dependencies import _import_onnx
from .graph_matching import (
    _Graph,
    _match_convt2x2,
    _match_gelu,
    _match_layernorm2d,
    _reduce_axes,
    _remove_dead,
    _shape_dims,
    _static_shape,
)


def rewrite_upscaling(model) -> tuple[object, str]:
    """Rewrite SAM's mask upscaling and mask product as channels-last matrix products.

    The published decoder computes, on the transformer output ``X`` (NCHW, 256 x 64 x 64):
    ConvTranspose 2x2/2 -> LayerNorm2d -> GELU -> ConvTranspose 2x2/2 -> GELU -> reshape ->
    ``hyper_in @ features`` -> reshape to (1, K, 256, 256). A 2x2 stride-2 transposed
    convolution maps each input pixel to its own 2x2 output block, so the whole chain is
    per pixel: it is rewritten as ``MatMul`` (Cin -> 4*C1), ``LayerNormalization`` over the
    channel axis, GELU, ``MatMul`` (C1 -> 4*C2), GELU and ``MatMul`` with the mask tokens,
    all in channels-last layout (no strided channel reductions, no col2im), followed by one
    small reordering of the (1, K, 256, 256) logits. Mathematically exact; only float
    rounding differs.

    Parameters
    ----------
    model : onnx.ModelProto
        Shapes are inferred here; the pattern must have static shapes.

    Returns
    -------
    model : onnx.ModelProto
        The rewritten model (or the input unchanged).
    detail : str
        What was done, or why the pattern was not found (then nothing changed).
    """
    onnx = _import_onnx()
    from onnx import helper, numpy_helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - shape inference of foreign graphs may fail
        return model, f"upscaling rewrite skipped: shape inference failed ({exc})"
    g = _Graph(inferred)
    opset = max((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if opset < 17:
        return model, f"upscaling rewrite skipped: opset {opset} < 17 (no LayerNormalization)"
    for ct1 in [n for n in inferred.graph.node if n.op_type == "ConvTranspose"]:
        m1 = _match_convt2x2(g, ct1)
        if m1 is None:
            continue
        w1, b1 = m1
        x_in = ct1.input[0]
        xs = _static_shape(inferred, x_in)
        if xs is None or len(xs) != 4 or xs[0] != 1 or xs[1] != w1.shape[0]:
            continue
        _, cin, h, w = xs
        c1 = w1.shape[1]
        ln = _match_layernorm2d(g, ct1.output[0])
        if ln is None:
            continue
        ln_out, ln_nodes, eps, ln_w, ln_b = ln
        ln_w = np.ones(c1, np.float32) if ln_w is None else ln_w.astype(np.float32)
        ln_b = np.zeros(c1, np.float32) if ln_b is None else ln_b.astype(np.float32)
        if ln_w.size != c1 or ln_b.size != c1:
            continue
        ge1 = _match_gelu(g, ln_out)
        if ge1 is None:
            continue
        ct2s = g.only(ge1[0])
        if len(ct2s) != 1:
            continue
        ct2 = ct2s[0]
        m2 = _match_convt2x2(g, ct2)
        if m2 is None or ct2.input[0] != ge1[0] or m2[0].shape[0] != c1:
            continue
        w2, b2 = m2
        c2 = w2.shape[1]
        ge2 = _match_gelu(g, ct2.output[0])
        if ge2 is None:
            continue
        rs = g.only(ge2[0])
        if len(rs) != 1 or rs[0].op_type != "Reshape":
            continue
        if _static_shape(inferred, rs[0].output[0]) != (1, c2, 16 * h * w):
            continue
        mms = g.only(rs[0].output[0])
        if len(mms) != 1 or mms[0].op_type != "MatMul" or mms[0].input[1] != rs[0].output[0]:
            continue
        mm = mms[0]
        hyper = mm.input[0]
        hs = _shape_dims(inferred, hyper)
        if hs is not None and (len(hs) != 3 or hs[0] not in (1, None)
                               or hs[2] not in (c2, None)):
            continue
        rs2 = g.only(mm.output[0])
        if len(rs2) != 1 or rs2[0].op_type != "Reshape":
            continue
        final = rs2[0].output[0]
        fs = _static_shape(inferred, final)
        if fs is None or len(fs) != 4 or fs[0] != 1 or fs[2:] != (4 * h, 4 * w):
            continue
        k = fs[1]
        # ---- matched: build the replacement ------------------------------------------
        p = f"nes_up{len(inferred.graph.node)}/"
        inits = []

        def const(name, arr):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), p + name))
            return p + name

        nodes = []

        def node(op, ins, outs=None, **kw):
            outs = outs or [p + f"{op}_{len(nodes)}"]
            nodes.append(helper.make_node(op, ins, outs, name=p + f"{op}_{len(nodes)}", **kw))
            return outs[0]

        def gelu(t):
            d = node("Div", [t, const(f"sqrt2_{len(nodes)}", np.array(2**0.5, np.float32))])
            e = node("Erf", [d])
            a = node("Add", [e, const(f"one_{len(nodes)}", np.array(1.0, np.float32))])
            m = node("Mul", [t, a])
            return node("Mul", [m, const(f"half_{len(nodes)}", np.array(0.5, np.float32))])

        # Channels-last input: reuse (1, HW, Cin) when X = Reshape(Transpose(t, [0, 2, 1])).
        src = None
        pr = g.producer.get(x_in)
        if pr is not None and pr.op_type == "Reshape":
            tr = g.producer.get(pr.input[0])
            ts = _shape_dims(inferred, tr.input[0]) if tr is not None else None
            if (tr.op_type == "Transpose" and ts is not None and len(ts) == 3
                    and list(g.attrs(tr).get("perm", [])) == [0, 2, 1]
                    and ts[0] in (1, None) and ts[1:] == (h * w, cin)):
                src = tr.input[0]
        if src is None:
            src = node("Transpose", [x_in], perm=[0, 2, 3, 1])
        flat = node("Reshape", [src, const("shape_in", np.array([h * w, cin], np.int64))])
        w1m = w1.transpose(0, 2, 3, 1).reshape(cin, 4 * c1)  # column (a*2+b)*C1 + o
        y1 = node("MatMul", [flat, const("w1", w1m)])
        if b1 is not None:
            y1 = node("Add", [y1, const("b1", np.tile(b1, 4))])
        y1 = node("Reshape", [y1, const("shape_1", np.array([h * w * 4, c1], np.int64))])
        y1 = node("LayerNormalization", [y1, const("ln_w", ln_w), const("ln_b", ln_b)],
                  axis=-1, epsilon=float(eps))
        y1 = gelu(y1)
        w2m = w2.transpose(0, 2, 3, 1).reshape(c1, 4 * c2)
        y2 = node("MatMul", [y1, const("w2", w2m)])
        if b2 is not None:
            y2 = node("Add", [y2, const("b2", np.tile(b2, 4))])
        y2 = node("Reshape", [y2, const("shape_2", np.array([1, h * w * 16, c2], np.int64))])
        y2 = gelu(y2)
        ht = node("Transpose", [hyper], perm=[0, 2, 1])
        lg = node("MatMul", [y2, ht])  # (1, HW*16, K), rows (h, w, a1, b1, a2, b2)
        lg = node("Reshape", [lg, const("shape_7", np.array([h, w, 2, 2, 2, 2, k], np.int64))])
        lg = node("Transpose", [lg], perm=[6, 0, 2, 4, 1, 3, 5])
        node("Reshape", [lg, const("shape_out", np.array([1, k, 4 * h, 4 * w], np.int64))],
             [final])
        removed = {id(n) for n in [ct1, *ln_nodes, *ge1[1], ct2, *ge2[1], rs[0], mm, rs2[0]]}
        out_model = onnx.ModelProto()
        out_model.CopyFrom(model)
        gg = out_model.graph
        kept = []
        for n in inferred.graph.node:
            if id(n) in removed:
                if n is rs2[0]:
                    kept.extend(nodes)
                continue
            kept.append(n)
        del gg.node[:]
        gg.node.extend(kept)
        gg.initializer.extend(inits)
        _remove_dead(out_model)
        return out_model, (
            f"upscaling rewritten as channels-last MatMuls ({cin}->{4 * c1}->{4 * c2} "
            f"channels, {k} masks of {4 * h}x{4 * w})"
        )
    return model, "upscaling rewrite skipped: pattern not found"


def rewrite_count_casts(model) -> tuple[object, str]:
    """Count in float32 instead of int64: ``Cast(bool -> int64) -> ReduceSum -> Cast(float)``
    becomes ``Cast(bool -> float) -> ReduceSum`` (the stability-score counts).

    Exact: integer counts up to 2^24 are exactly representable in float32, and the rewrite
    is only applied when the number of summed elements is statically known not to exceed
    that. Float reductions are much faster than int64 ones in onnxruntime.

    Parameters
    ----------
    model : onnx.ModelProto
        Shapes are inferred here; a count whose summed size is not static is left alone.

    Returns
    -------
    model : onnx.ModelProto
    detail : str
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001
        return model, f"count rewrite skipped: shape inference failed ({exc})"
    g = _Graph(inferred)
    ints = (TensorProto.INT64, TensorProto.INT32)
    done = 0
    replace: dict[int, list] = {}
    drop: set[int] = set()
    for cast in inferred.graph.node:
        if cast.op_type != "Cast" or g.attrs(cast).get("to") not in ints:
            continue
        src = g.producer.get(cast.input[0])
        elem = next((v.type.tensor_type.elem_type for v in inferred.graph.value_info
                     if v.name == cast.input[0]), None)
        if elem != TensorProto.BOOL and (src is None or src.op_type not in (
                "Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "Not", "And",
                "Or", "Xor")):
            continue
        rs = g.only(cast.output[0])
        if len(rs) != 1 or rs[0].op_type != "ReduceSum" or rs[0].input[0] != cast.output[0]:
            continue
        back = g.only(rs[0].output[0])
        if (len(back) != 1 or back[0].op_type != "Cast"
                or g.attrs(back[0]).get("to") != TensorProto.FLOAT):
            continue
        shape = _static_shape(inferred, cast.input[0])
        a = g.attrs(rs[0])
        axes = list(a.get("axes", []))
        if not axes and len(rs[0].input) > 1 and rs[0].input[1]:
            v = g.const(rs[0].input[1])
            axes = [] if v is None else [int(x) for x in v.reshape(-1)]
        if shape is None:
            continue
        if not axes and not a.get("noop_with_empty_axes", 0):
            axes = list(range(len(shape)))
        summed = int(np.prod([shape[x] for x in axes])) if axes else 1
        if summed > 2**24:
            continue
        fcast = helper.make_node("Cast", [cast.input[0]], [cast.output[0] + "_f32"],
                                 name=(cast.name or cast.output[0]) + "_f32",
                                 to=TensorProto.FLOAT)
        red = onnx.NodeProto()
        red.CopyFrom(rs[0])
        red.input[0] = fcast.output[0]
        red.output[:] = [back[0].output[0]]
        replace[id(cast)] = [fcast, red]
        drop.update({id(rs[0]), id(back[0])})
        done += 1
    if not done:
        return model, "count rewrite: no int64 counts found"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for n in inferred.graph.node:
        if id(n) in drop:
            continue
        nodes.extend(replace.get(id(n), [n]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    _remove_dead(out)
    return out, f"{done} int64 count(s) computed in float32 (exact below 2^24)"


def rewrite_global_pool(model) -> tuple[object, int]:
    """``ReduceMean(axes=[2, 3], keepdims=1)`` of a 4-D NCHW tensor -> ``GlobalAveragePool``.

    The same mean (squeeze-excitation pooling); the quantiser has an int8 kernel for the
    pool (``QLinearGlobalAveragePool``) but not for the reduction.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    model : onnx.ModelProto
        A rewritten copy, or the input when nothing matched (or shape inference failed).
    count : int
        How many reductions became pools.
    """
    onnx = _import_onnx()

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return model, 0
    g = _Graph(inferred)
    hits = set()
    for n in inferred.graph.node:
        if n.op_type != "ReduceMean":
            continue
        dims = _shape_dims(inferred, n.input[0])
        if dims is None or len(dims) != 4:
            continue
        axes = _reduce_axes(g, n)
        if axes is not None and sorted(a % 4 for a in axes) == [2, 3]:
            hits.add(n.output[0])
    if not hits:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.op_type == "ReduceMean" and n.output[0] in hits:
            n.op_type = "GlobalAveragePool"
            del n.input[1:]
            del n.attribute[:]
    _remove_dead(out)
    return out, len(hits)


def _ort_offline(src: Path, dst: Path, level: str = "basic") -> None:
    """Save onnxruntime's offline-optimised graph (``basic``: constant folding and other
    hardware-independent rewrites, standard ONNX ops only)."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def fuse_gelu(model) -> tuple[object, int]:
    """Replace exported erf-GELU subgraphs by onnxruntime's fused ``com.microsoft.Gelu``.

    The fused op computes the same formula (onnxruntime fuses it the same way at run
    time); doing it before quantisation keeps each GELU one float op between quantised
    convolutions instead of five quantised element-wise ops.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    model : onnx.ModelProto
        A rewritten copy (with the ``com.microsoft`` opset added), or the input when no GELU
        was found.
    count : int
        How many GELUs were fused.
    """
    onnx = _import_onnx()
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = _Graph(m)
    drop, repl = set(), {}
    for erf in [n for n in m.graph.node if n.op_type == "Erf"]:
        sc = g.producer.get(erf.input[0])
        if sc is None or sc.op_type not in ("Div", "Mul"):
            continue
        x = sc.input[0]
        if sc.op_type == "Mul" and g.const(x) is not None:
            x = sc.input[1]
        hit = _match_gelu(g, x)
        if hit is None or hit[1][0] is not sc:
            continue
        out, nodes = hit
        for k in nodes[:-1]:
            drop.add(id(k))
        repl[id(nodes[-1])] = helper.make_node(
            "Gelu", [x], [out], name=(nodes[-1].name or out) + "_gelu", domain="com.microsoft")
    if not repl:
        return model, 0
    new = []
    for n in m.graph.node:
        if id(n) in drop:
            continue
        new.append(repl.get(id(n), n))
    del m.graph.node[:]
    m.graph.node.extend(new)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for r in repl.values():  # the quantiser calibrates only tensors of known float type
        m.graph.value_info.append(
            helper.make_tensor_value_info(r.output[0], onnx.TensorProto.FLOAT, None))
    _remove_dead(m)
    return m, len(repl)
