"""Optimised model variants, made on the user's machine and enabled only after a check.

The published EdgeSAM files are float32 graphs exported from PyTorch. This module derives
faster variants *from the user's own downloaded files* (nothing optimised is ever
downloaded or shipped), stores them beside the originals, and enables a variant only after
an automatic **agreement check** against the float32 original on the user's own images.

Variants (see :data:`VARIANTS`):

``decoder-fast``
    Exact float32 rewrites of the decoder: onnxruntime's offline constant folding, the
    output upscaling (two 2x2 stride-2 transposed convolutions, a channel LayerNorm, GELUs
    and the mask product) rewritten as per-pixel matrix products in channels-last layout,
    and a **split** into a prompt-independent part (run once per image embedding and
    remembered) and a prompt part (run per click). Mathematically exact; only rounding
    differs (the split itself is bit-exact).
``decoder-int8``
    ``decoder-fast`` plus dynamic int8 quantisation of the weight matrix products
    (``onnxruntime.quantization.quantize_dynamic``, per-channel int8 weights).
``encoder-int8``
    Static int8 QDQ quantisation of the encoder calibrated on the user's own slices, fed
    through the engine's own preprocessing (``quantize_static`` with a
    ``CalibrationDataReader``); GELUs are first fused into onnxruntime's ``Gelu`` so they
    stay float and fast between quantised convolutions.

Every variant is checked with :func:`check_agreement`: random positive clicks and boxes on
the given images, mask IoU between the variant and the float32 original (the variant's mask
at the mask index the original chose). A variant is enabled when the mean IoU is at least
0.95 and the smallest at least 0.80 (:class:`Thresholds`). The verdict, figures, source
hash, variant hashes and the onnxruntime version are written to a JSON record beside the
variant, so the check is not repeated at each start; a changed source file (new SHA-256) or
another onnxruntime version makes the record stale and the variant is rebuilt and checked
again. Anything that goes wrong falls back to the original model with a reason.

Storage: ``<folder of the source file>/edgesam-optimized/<sha256 of the source>/`` when
that folder is writable, else ``<user cache>/optimized/<sha256 of the source>/``.

``onnx`` (and ``onnxruntime.quantization``, which needs it) are imported lazily, only when a
variant is built: they are not run-time dependencies of the plugin. Install them with
``pip install 'napari-edgesam[optimize]'``. Loading variants already built needs only
onnxruntime.

Examples
--------
>>> report = optimize_model(model, [slice_a, slice_b])   # doctest: +SKIP
>>> print(report.summary())                              # doctest: +SKIP
>>> fast = load_optimized(model)                         # doctest: +SKIP
>>> Predictor(fast).set_image(slice_a)                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import contract, paths
from .errors import CancelledError, EdgeSamError, ModelError
from .session import EdgeSamModel

__all__ = [
    "optimized_or_original",
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "Agreement",
    "OptimizationReport",
    "OptimizationUnavailableError",
    "OptimizedEdgeSamModel",
    "Thresholds",
    "Variant",
    "VariantResult",
    "check_agreement",
    "find_variants",
    "load_optimized",
    "load_variant",
    "optimize_model",
]

_log = logging.getLogger(__name__)

#: Folder created beside the source model files.
BESIDE_DIR = "edgesam-optimized"
#: Version of the record format (a record of another format is rebuilt).
RECORD_FORMAT = 1
#: Variants built by default.
DEFAULT_VARIANTS = ("decoder-int8", "encoder-int8")
#: When several variants of one role passed, the first one of this order is used.
PREFERENCE = ("decoder-int8", "decoder-fast", "encoder-int8")

INSTALL_HINT = "pip install 'napari-edgesam[optimize]'  (or: pip install 'onnx>=1.15')"


class OptimizationUnavailableError(EdgeSamError, ImportError):
    """Building optimised variants needs the optional ``onnx`` package, which is missing."""


def _import_onnx():
    """Import ``onnx`` lazily, with a clear message when it is missing."""
    try:
        import onnx
    except ImportError as exc:
        raise OptimizationUnavailableError(
            "Making optimised model variants needs the 'onnx' package, which is not "
            f"installed. Install it with: {INSTALL_HINT}. napari-edgesam works without it, "
            "with the original float32 models."
        ) from exc
    return onnx


def _import_quantization():
    """Import ``onnxruntime.quantization`` lazily (it needs ``onnx``)."""
    _import_onnx()
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - onnxruntime builds without it are rare
        raise OptimizationUnavailableError(
            "This onnxruntime build lacks onnxruntime.quantization, needed for int8 variants "
            f"({exc}). Install the standard onnxruntime wheel and {INSTALL_HINT}."
        ) from exc
    return quantization


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


# =========================================================================================
# Graph utilities (onnx ModelProto surgery)
# =========================================================================================


class _Graph:
    """Producer/consumer indices and constant lookup over an ONNX graph."""

    def __init__(self, model):
        self.onnx = _import_onnx()
        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or a ``Constant`` node's output, else None."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.asarray(a.f, np.float32)
                if a.name == "value_floats":
                    return np.asarray(a.floats, np.float32)
                if a.name == "value_int":
                    return np.asarray(a.i, np.int64)
                if a.name == "value_ints":
                    return np.asarray(a.ints, np.int64)
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1:
            return None
        return float(v.reshape(()))

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def only(self, tensor: str) -> list:
        """Consumers of ``tensor``; empty when it is also a graph output (cannot be removed)."""
        if tensor in self.outputs:
            return []
        return self.consumers.get(tensor, [])

    def other_input(self, node, tensor: str) -> str | None:
        """For a binary node taking ``tensor``, its other input."""
        ins = list(node.input)
        if len(ins) != 2 or tensor not in ins:
            return None
        return ins[1] if ins[0] == tensor else ins[0]


def _reduce_axes(g: _Graph, node) -> list[int] | None:
    a = g.attrs(node)
    if a.get("keepdims", 1) != 1:
        return None
    if "axes" in a:
        return list(a["axes"])
    if len(node.input) > 1 and node.input[1]:
        v = g.const(node.input[1])
        return None if v is None else [int(x) for x in v.reshape(-1)]
    return None


def _match_gelu(g: _Graph, x: str):
    """Match the exported erf-GELU ``0.5 * x * (1 + erf(x / sqrt(2)))`` applied to ``x``.

    Returns ``(output tensor, nodes)`` or None. Accepts ``Div`` by sqrt(2) or ``Mul`` by
    1/sqrt(2), either operand order of the commutative nodes, and the 0.5 applied first or
    last. ``x`` must have no other consumers.
    """
    cons = g.only(x)
    scale = [n for n in cons if n.op_type in ("Div", "Mul")]
    for sc in scale:
        other = g.other_input(sc, x)
        if other is None:
            continue
        v = g.scalar(other)
        if v is None:
            continue
        if sc.op_type == "Div" and (list(sc.input)[0] != x or abs(v - 2**0.5) > 1e-3):
            continue
        if sc.op_type == "Mul" and abs(v - 2**-0.5) > 1e-3:
            continue
        erf = g.only(sc.output[0])
        if len(erf) != 1 or erf[0].op_type != "Erf":
            continue
        add = g.only(erf[0].output[0])
        if len(add) != 1 or add[0].op_type != "Add":
            continue
        one = g.scalar(g.other_input(add[0], erf[0].output[0]) or "")
        if one is None or abs(one - 1.0) > 1e-6:
            continue
        rest = [n for n in cons if n is not sc]
        after_add = g.only(add[0].output[0])
        if len(after_add) != 1 or after_add[0].op_type != "Mul":
            continue
        m = after_add[0]
        m_other = g.other_input(m, add[0].output[0])
        # form A: Mul(x, add) then Mul(., 0.5)
        if m_other == x and len(rest) == 1 and rest[0] is m:
            last = g.only(m.output[0])
            if len(last) == 1 and last[0].op_type == "Mul":
                half = g.scalar(g.other_input(last[0], m.output[0]) or "")
                if half is not None and abs(half - 0.5) < 1e-6:
                    return last[0].output[0], [sc, erf[0], add[0], m, last[0]]
        # form B: h = Mul(x, 0.5); Mul(h, add)
        if len(rest) == 1 and rest[0].op_type == "Mul":
            h = rest[0]
            half = g.scalar(g.other_input(h, x) or "")
            if half is not None and abs(half - 0.5) < 1e-6 and m_other == h.output[0]:
                if g.only(h.output[0]) == [m]:
                    return m.output[0], [sc, erf[0], add[0], h, m]
    return None


def _match_layernorm2d(g: _Graph, y: str):
    """Match SAM's LayerNorm2d over axis 1 (channels) of an NCHW tensor ``y``.

    ``u = mean(y, 1); d = y - u; v = mean(d^2, 1); n = d / sqrt(v + eps); w * n + b``.
    Returns ``(output tensor, nodes, eps, weight (C,), bias (C,))`` or None.
    """
    cons = g.only(y)
    if len(cons) != 2:
        return None
    rm = next((n for n in cons if n.op_type == "ReduceMean"), None)
    sub = next((n for n in cons if n.op_type == "Sub"), None)
    if rm is None or sub is None or _reduce_axes(g, rm) != [1]:
        return None
    if list(sub.input) != [y, rm.output[0]] or g.only(rm.output[0]) != [sub]:
        return None
    d = sub.output[0]
    dc = g.only(d)
    if len(dc) != 2:
        return None
    sq = next((n for n in dc if n.op_type in ("Pow", "Mul")), None)
    div = next((n for n in dc if n.op_type == "Div"), None)
    if sq is None or div is None:
        return None
    if sq.op_type == "Pow" and (sq.input[0] != d or g.scalar(sq.input[1]) != 2.0):
        return None
    if sq.op_type == "Mul" and list(sq.input) != [d, d]:
        return None
    rm2 = g.only(sq.output[0])
    if len(rm2) != 1 or rm2[0].op_type != "ReduceMean" or _reduce_axes(g, rm2[0]) != [1]:
        return None
    add = g.only(rm2[0].output[0])
    if len(add) != 1 or add[0].op_type != "Add":
        return None
    eps = g.scalar(g.other_input(add[0], rm2[0].output[0]) or "")
    if eps is None:
        return None
    sqrt = g.only(add[0].output[0])
    if len(sqrt) != 1 or sqrt[0].op_type != "Sqrt":
        return None
    if list(div.input) != [d, sqrt[0].output[0]] or g.only(sqrt[0].output[0]) != [div]:
        return None
    nodes = [rm, sub, sq, rm2[0], add[0], sqrt[0], div]
    out = div.output[0]
    weight = bias = None
    nxt = g.only(out)
    if len(nxt) == 1 and nxt[0].op_type == "Mul":
        w = g.const(g.other_input(nxt[0], out) or "")
        if w is not None:
            weight = w.reshape(-1)
            nodes.append(nxt[0])
            out = nxt[0].output[0]
            nxt = g.only(out)
    if len(nxt) == 1 and nxt[0].op_type == "Add":
        b = g.const(g.other_input(nxt[0], out) or "")
        if b is not None:
            bias = b.reshape(-1)
            nodes.append(nxt[0])
            out = nxt[0].output[0]
    return out, nodes, eps, weight, bias


def _match_convt2x2(g: _Graph, node):
    """A ConvTranspose with a 2x2 kernel, stride 2, no padding: ``(W (Cin, Cout, 2, 2), b)``."""
    if node.op_type != "ConvTranspose":
        return None
    a = g.attrs(node)
    w = g.const(node.input[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (2, 2):
        return None
    if list(a.get("strides", [1, 1])) != [2, 2] or a.get("group", 1) != 1:
        return None
    if any(a.get("pads", [0, 0, 0, 0])) or any(a.get("output_padding", [0, 0])):
        return None
    if list(a.get("dilations", [1, 1])) != [1, 1] or "output_shape" in a:
        return None
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    b = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return w.astype(np.float32), (None if b is None else b.astype(np.float32).reshape(-1))


def _static_shape(model, name: str) -> tuple[int, ...] | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            if not dims or any(not d.HasField("dim_value") for d in dims):
                return None
            return tuple(int(d.dim_value) for d in dims)
    return None


def _shape_dims(model, name: str) -> tuple | None:
    """Shape of a tensor with None for unknown dims; None when not even the rank is known."""
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            t = vi.type.tensor_type
            if not t.HasField("shape"):
                return None
            return tuple(int(d.dim_value) if d.HasField("dim_value") else None
                         for d in t.shape.dim)
    return None


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
    pool (``QLinearGlobalAveragePool``) but not for the reduction. Returns
    ``(model, count)``.
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


def _remove_dead(model) -> None:
    """Drop nodes whose outputs nobody uses, and unused initializers (in place)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


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


def split_decoder(model, prompt_inputs=("point_coords", "point_labels")):
    """Split a decoder into a prompt-independent part and a prompt part (bit-exact).

    Every node that does not depend (transitively) on the prompt inputs is moved into an
    *image* model whose outputs are the tensors the remaining *prompt* model needs. The
    image model runs once per image embedding; the prompt model once per prompt set.

    Parameters
    ----------
    model : onnx.ModelProto
        A decoder honouring the contract (inputs ``image_embeddings``, ``point_coords``,
        ``point_labels``; outputs ``scores``, ``masks``).

    Returns
    -------
    (image_model, prompt_model, boundary) or None
        ``None`` when nothing is prompt-independent (no gain). ``boundary`` lists the tensor
        names passed from the image model to the prompt model.
    """
    onnx = _import_onnx()
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        inferred = model
    g = inferred.graph
    dep = set(prompt_inputs)
    pnodes, inodes = [], []
    for n in _toposorted(g):
        if any(i in dep for i in n.input):
            dep.update(n.output)
            pnodes.append(n)
        else:
            inodes.append(n)
    if any(o.name not in dep for o in g.output):
        return None
    produced = {o for n in inodes for o in n.output} | {i.name for i in g.input}
    produced -= set(prompt_inputs)
    boundary = []
    for n in pnodes:
        for i in n.input:
            if i in produced and i not in boundary:
                boundary.append(i)
    if not inodes or boundary == ["image_embeddings"]:
        return None
    infos = {v.name: v for v in list(g.value_info) + list(g.input) + list(g.output)}
    missing = [b for b in boundary if not _has_elem_type(infos.get(b))]
    if missing:
        infos.update(_types_from_ort(model, missing))
    if any(not _has_elem_type(infos.get(b)) for b in boundary):
        return None
    need = set(boundary)
    keep_a = []
    for n in reversed(inodes):
        if any(o in need for o in n.output):
            keep_a.append(n)
            need.update(i for i in n.input if i)
    keep_a.reverse()
    used_a = {i for n in keep_a for i in n.input}
    used_b = {i for n in pnodes for i in n.input}
    img_in = [i for i in g.input if i.name == "image_embeddings"]
    ga = helper.make_graph(keep_a, "decoder_image", img_in, [infos[b] for b in boundary],
                           [i for i in g.initializer if i.name in used_a])
    gb = helper.make_graph(
        pnodes, "decoder_prompt",
        [infos[b] for b in boundary] + [i for i in g.input if i.name in prompt_inputs],
        list(g.output), [i for i in g.initializer if i.name in used_b])
    out = []
    for gg in (ga, gb):
        mm = helper.make_model(gg, opset_imports=list(model.opset_import),
                               ir_version=model.ir_version)
        out.append(mm)
    return out[0], out[1], boundary


def _has_elem_type(vi) -> bool:
    return vi is not None and vi.type.tensor_type.elem_type != 0


def _types_from_ort(model, names: list[str]) -> dict:
    """Types of intermediate tensors that ONNX shape inference could not give (contrib ops):
    add them as outputs and run the model once on dummy inputs."""
    onnx = _import_onnx()
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {
            "image_embeddings": np.zeros((1, *contract.EMBEDDING_SHAPE), np.float32),
            "point_coords": np.array([[[10.0, 10.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32),
        }
        vals = s.run(names, {k: v for k, v in feeds.items()
                             if k in {i.name for i in s.get_inputs()}})
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for n, v in zip(names, vals, strict=True):
        v = np.asarray(v)
        out[n] = helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
    return out


def _toposorted(g) -> list:
    """Nodes in a topological order (the given order when it already is one)."""
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    nodes = list(g.node)
    ordered, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input: keep as given
            return nodes
        pending = rest
    return ordered


def fuse_gelu(model) -> tuple[object, int]:
    """Replace exported erf-GELU subgraphs by onnxruntime's fused ``com.microsoft.Gelu``.

    Returns ``(model, count)``. The fused op computes the same formula (onnxruntime fuses it
    the same way at run time); doing it before quantisation keeps each GELU one float op
    between quantised convolutions instead of five quantised element-wise ops.
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


# =========================================================================================
# Variants
# =========================================================================================


@dataclass
class BuildContext:
    """What a variant builder gets.

    Attributes
    ----------
    source : pathlib.Path
        The original (float32) ONNX file of the variant's role.
    output : pathlib.Path
        Where to write the variant (a contract-compatible ONNX file).
    work_dir : pathlib.Path
        A scratch folder (deleted afterwards).
    calibration : callable
        ``calibration() -> list of ndarray (1, 3, 1024, 1024) float32``: the user's slices
        through the engine's preprocessing (computed on first use).
    log : callable
        ``log(message)`` for progress messages.
    image_output, prompt_output : pathlib.Path
        Decoder builders that split the decoder themselves write the two parts here (see
        :func:`split_decoder`); otherwise the framework splits ``output`` when the
        variant asks for it.
    """

    source: Path
    output: Path
    work_dir: Path
    calibration: Callable[[], list]
    log: Callable[[str], None]
    image_output: Path | None = None
    prompt_output: Path | None = None


@dataclass(frozen=True)
class Variant:
    """A kind of optimised variant.

    Attributes
    ----------
    kind : str
        Name, used for files and records (``"decoder-int8"``).
    role : {"encoder", "decoder"}
    build : callable
        ``build(ctx: BuildContext) -> dict`` writes ``ctx.output`` and returns details for
        the record.
    split : bool
        For decoders: also split the result into image and prompt parts.
    description : str
    """

    kind: str
    role: str
    build: Callable[[BuildContext], dict]
    split: bool = True
    description: str = ""


def _quantize_dynamic(src: Path, dst: Path) -> int:
    """Dynamic int8 quantisation of the weight MatMuls; returns how many were quantised."""
    onnx = _import_onnx()
    q = _import_quantization()
    with _quiet_quantizer():
        q.quantize_dynamic(
            str(src), str(dst), weight_type=q.QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    qm = onnx.load(str(dst))
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in qm.graph.node)


def merge_parts(image_model, prompt_model, boundary: Sequence[str]):
    """One decoder graph from the two parts of :func:`split_decoder` (the inverse).

    The image part's internal names are prefixed so they cannot clash with the prompt
    part's; the boundary tensors connect the two.

    Returns
    -------
    onnx.ModelProto
        With the contract's inputs (``image_embeddings``, ``point_coords``,
        ``point_labels``) and outputs.
    """
    onnx = _import_onnx()
    from onnx import helper

    a = onnx.ModelProto()
    a.CopyFrom(image_model)
    keep = set(boundary) | {"image_embeddings", ""}
    internal = {o for n in a.graph.node for o in n.output} | {i.name for i in a.graph.initializer}
    ren = {t: "img/" + t for t in internal - keep}

    def r(t):
        return ren.get(t, t)

    for n in a.graph.node:
        n.name = "img/" + n.name if n.name else n.name
        n.input[:] = [r(i) for i in n.input]
        n.output[:] = [r(o) for o in n.output]
    for i in a.graph.initializer:
        i.name = r(i.name)
    b = prompt_model.graph
    inputs = list(a.graph.input) + [i for i in b.input if i.name not in boundary
                                     and i.name != "image_embeddings"]
    g = helper.make_graph(list(a.graph.node) + list(b.node), "decoder", inputs, list(b.output),
                          list(a.graph.initializer) + list(b.initializer))
    opsets: dict[str, int] = {}
    for o in list(image_model.opset_import) + list(prompt_model.opset_import):
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v)
                                               for d, v in opsets.items()],
                             ir_version=max(image_model.ir_version, prompt_model.ir_version))


def _build_decoder(ctx: BuildContext, quantize: bool) -> dict:
    """Fold constants, rewrite the upscaling, split, quantise each part, merge."""
    onnx = _import_onnx()
    details: dict = {}
    folded = ctx.work_dir / "folded.onnx"
    _ort_offline(ctx.source, folded, "basic")
    model = onnx.load(str(folded))
    model, detail = rewrite_upscaling(model)
    model, detail2 = rewrite_count_casts(model)
    details["rewrites"] = ["onnxruntime basic offline optimisation (constant folding)", detail,
                           detail2]
    ctx.log(f"{detail}; {detail2}")
    parts = split_decoder(model)
    if quantize:
        details["quantization"] = "dynamic, int8 per-channel weights, MatMul"
    if parts is None:
        details["split"] = "not split (nothing prompt-independent)"
        if quantize:
            fp = ctx.work_dir / "float.onnx"
            onnx.save(model, str(fp))
            details["quantized_matmuls"] = _quantize_dynamic(fp, ctx.output)
        else:
            onnx.save(model, str(ctx.output))
        return details
    img, prm, boundary = parts
    details["split"] = f"split into image and prompt parts ({len(boundary)} boundary tensors)"
    ctx.log(f"split: {len(boundary)} tensor(s) computed once per image")
    onnx.save(img, str(ctx.image_output))
    onnx.save(prm, str(ctx.prompt_output))
    if quantize:
        n = 0
        for part in (ctx.image_output, ctx.prompt_output):
            fp = ctx.work_dir / ("float-" + part.name)
            os.replace(part, fp)
            n += _quantize_dynamic(fp, part)
        details["quantized_matmuls"] = n
        img, prm = onnx.load(str(ctx.image_output)), onnx.load(str(ctx.prompt_output))
    onnx.save(merge_parts(img, prm, boundary), str(ctx.output))
    return details


@contextlib.contextmanager
def _quiet_quantizer():
    """Hide onnxruntime.quantization's chatter (it logs through the root logger)."""

    def drop(record):
        return not (record.levelno < logging.ERROR
                    and "onnxruntime" in record.pathname.replace("\\", "/"))

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _build_encoder_int8(ctx: BuildContext) -> dict:
    onnx = _import_onnx()
    q = _import_quantization()
    from onnxruntime.quantization import registry

    model = onnx.load(str(ctx.source))
    model, n_pool = rewrite_global_pool(model)
    model, n_gelu = fuse_gelu(model)
    pre = ctx.work_dir / "fused.onnx"
    onnx.save(model, str(pre))
    tensors = ctx.calibration()
    if not tensors:
        raise ModelError("no calibration images")

    class _Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(tensors)

        def get_next(self):
            t = next(self._it, None)
            return None if t is None else {"image": t}

    ops = sorted(set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry) | {"Gelu"})
    ctx.log(f"calibrating the int8 encoder on {len(tensors)} slice(s)")
    with _quiet_quantizer():
        q.quantize_static(
            str(pre), str(ctx.output), _Reader(), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            per_channel=True, op_types_to_quantize=ops,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    qm = onnx.load(str(ctx.output))
    _remove_dead(qm)
    onnx.save(qm, str(ctx.output))
    return {
        "quantization": "static QDQ, uint8 activations (MinMax calibration), int8 "
                        "per-channel weights",
        "fused_gelu": n_gelu,
        "global_pools": n_pool,
        "calibration_slices": len(tensors),
    }


#: The built-in variants, by kind.
VARIANTS: dict[str, Variant] = {
    "decoder-fast": Variant(
        "decoder-fast", "decoder", lambda ctx: _build_decoder(ctx, quantize=False),
        description="exact float32 rewrites (constant folding, channels-last upscaling) and "
                    "a prompt-independent part computed once per image",
    ),
    "decoder-int8": Variant(
        "decoder-int8", "decoder", lambda ctx: _build_decoder(ctx, quantize=True),
        description="decoder-fast with dynamic int8 quantisation of the weight MatMuls",
    ),
    "encoder-int8": Variant(
        "encoder-int8", "encoder", _build_encoder_int8, split=False,
        description="static int8 (QDQ) quantisation calibrated on your own images",
    ),
}


# =========================================================================================
# Agreement check
# =========================================================================================


@dataclass(frozen=True)
class Thresholds:
    """When a variant counts as agreeing with the original.

    Attributes
    ----------
    mean_iou : float
        Smallest accepted mean mask IoU over all sampled prompts (default 0.95).
    min_iou : float
        Smallest accepted IoU of any single prompt (default 0.80).
    """

    mean_iou: float = 0.95
    min_iou: float = 0.80


@dataclass
class Agreement:
    """Mask agreement between a variant and the original.

    Attributes
    ----------
    mean_iou, min_iou : float
        Over all prompts: IoU of the variant's mask (at the mask index the original chose)
        with the original's mask, in the original frame. Two empty masks count as 1.
    same_choice : float
        Fraction of prompts where the variant, left to choose, picks the same one of the 4
        masks (information only: near-ties of the stability score may flip).
    n_prompts, n_images : int
    passed : bool
    thresholds : dict
    """

    mean_iou: float
    min_iou: float
    same_choice: float
    n_prompts: int
    n_images: int
    passed: bool
    thresholds: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (f"mean IoU {self.mean_iou:.3f}, min {self.min_iou:.3f} over {self.n_prompts} "
                f"prompts on {self.n_images} image(s); same mask chosen for "
                f"{self.same_choice:.0%}")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def sample_prompts(shape: tuple[int, int], n_clicks: int, n_boxes: int,
                   rng: np.random.Generator) -> list[dict]:
    """Random prompts for an agreement check on a ``(H, W)`` slice.

    Returns
    -------
    list of dict
        ``{"points": [(x, y)], "labels": [1]}`` for each positive click (uniform over the
        slice) and ``{"box": (x0, y0, x1, y1)}`` for each box (sides 10 % to 60 % of the
        slice's sides, anywhere inside it).
    """
    h, w = shape
    out: list[dict] = []
    for _ in range(n_clicks):
        out.append({"points": [(float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1)))],
                    "labels": [1]})
    for _ in range(n_boxes):
        bw = rng.uniform(0.1, 0.6) * (w - 1)
        bh = rng.uniform(0.1, 0.6) * (h - 1)
        x0 = rng.uniform(0, w - 1 - bw)
        y0 = rng.uniform(0, h - 1 - bh)
        out.append({"box": (float(x0), float(y0), float(x0 + bw), float(y0 + bh))})
    return out


class _Reference:
    """Embeddings and masks of the float32 original, computed once per check run."""

    def __init__(self, model: EdgeSamModel, images, mapping, n_clicks, n_boxes, seed):
        from .predictor import Predictor

        self.model = model
        self.images = images
        self.mapping = mapping
        self.predictor = Predictor(model, cache=None)
        rng = np.random.default_rng(seed)
        self.prompts = [sample_prompts(np.shape(im)[:2], n_clicks, n_boxes, rng)
                        for im in images]
        self._emb: dict[int, object] = {}
        self._masks: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    def embedding(self, i: int):
        if i not in self._emb:
            self._emb[i] = self.predictor.embed(self.images[i], self.mapping, use_cache=False,
                                                fill_cache=False)
        return self._emb[i]

    def mask(self, i: int, j: int) -> tuple[np.ndarray, int]:
        if (i, j) not in self._masks:
            r = self.predictor.predict(embedding=self.embedding(i), **self.prompts[i][j])
            self._masks[(i, j)] = (r.mask, r.mask_index)
        return self._masks[(i, j)]


def _decode_at(model: EdgeSamModel, emb, prompt: dict, index: int) -> tuple[np.ndarray, int]:
    """Variant's mask at ``index`` and the index it would choose itself."""
    from .predictor import choose_mask, prepare_prompts, stability_scores
    from .transforms import upsampler

    coords, labels, has_box = prepare_prompts(emb.original_size, resized=emb.resized_size,
                                              **prompt)
    _, masks = model.decode(emb.features, coords, labels)
    logits = masks[0]
    own = choose_mask(stability_scores(logits), has_box)
    return upsampler(emb.original_size).mask(logits[index]), own


def check_agreement(reference: EdgeSamModel, candidate: EdgeSamModel, images, *,
                    mapping=None, n_clicks: int = 8, n_boxes: int = 4, seed: int = 0,
                    thresholds: Thresholds | None = None, progress=None,
                    _ref: _Reference | None = None) -> Agreement:
    """Compare a candidate model's masks with the reference (float32 original) model's.

    For each image, both models embed the slice (the reference's embedding is reused when
    the candidate's encoder file is the reference's), then the same random prompts
    (:func:`sample_prompts`, seeded) are decoded by both. IoU is computed on the final
    boolean masks in the original frame, with the candidate's mask taken at the mask index
    the reference chose.

    Parameters
    ----------
    reference, candidate : EdgeSamModel
    images : sequence of ndarray, each (H, W), (H, W, 3) or (H, W, 4)
        The user's slices, any real dtype.
    mapping : IntensityMapping, optional
        Stack-wide intensity mapping; default per slice.
    n_clicks, n_boxes : int
        Prompts per image.
    seed : int
    thresholds : Thresholds, optional
    progress : callable, optional
        ``progress(message, done, total)``; may raise :class:`CancelledError`.

    Returns
    -------
    Agreement
    """
    from .predictor import Predictor

    thresholds = thresholds or Thresholds()
    ref = _ref or _Reference(reference, list(images), mapping, n_clicks, n_boxes, seed)
    same_encoder = (Path(candidate.encoder_path).resolve() == Path(ref.model.encoder_path)
                    .resolve())
    cand_pred = Predictor(candidate, cache=None)
    ious, same = [], []
    total = sum(len(p) for p in ref.prompts)
    done = 0
    for i, image in enumerate(ref.images):
        emb = ref.embedding(i) if same_encoder else cand_pred.embed(
            image, ref.mapping, use_cache=False, fill_cache=False)
        for j, prompt in enumerate(ref.prompts[i]):
            ref_mask, ref_index = ref.mask(i, j)
            mask, own = _decode_at(candidate, emb, prompt, ref_index)
            ious.append(_iou(mask, ref_mask))
            same.append(own == ref_index)
            done += 1
            if progress is not None:
                progress("checking agreement", done, total)
    if not ious:
        raise ModelError("agreement check without prompts: give at least one image")
    mean, low = float(np.mean(ious)), float(np.min(ious))
    return Agreement(
        mean_iou=mean, min_iou=low, same_choice=float(np.mean(same)), n_prompts=len(ious),
        n_images=len(ref.images),
        passed=bool(mean >= thresholds.mean_iou and low >= thresholds.min_iou),
        thresholds=asdict(thresholds),
    )


# =========================================================================================
# Storage and records
# =========================================================================================


def _probe_writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def variant_folders(source: Path, source_sha: str) -> list[Path]:
    """Where variants of ``source`` are looked for, in order: beside it, then the cache.

    Parameters
    ----------
    source : pathlib.Path
        The original ONNX file.
    source_sha : str
        Its SHA-256 (the folder name, so that a changed file never reuses old variants).
    """
    return [
        Path(source).resolve().parent / BESIDE_DIR / source_sha,
        paths.cache_dir() / "optimized" / source_sha,
    ]


def _source_sha(model: EdgeSamModel, role: str) -> str:
    if role == "encoder":
        return model.identity
    h = model._sha256.get("decoder")
    if h is None:
        from .models import file_sha256

        h = model._sha256["decoder"] = file_sha256(model.decoder_path)
    return h


def _read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _record_problem(rec: dict, folder: Path, source_sha: str) -> str | None:
    """Why a record cannot be used as it is (None: it can)."""
    if rec.get("format") != RECORD_FORMAT:
        return "record of another format"
    if rec.get("source", {}).get("sha256") != source_sha:
        return "made from another version of the source file"
    if rec.get("onnxruntime") != _ort_version():
        return (f"made with onnxruntime {rec.get('onnxruntime')}, now {_ort_version()}: "
                "it must be checked again")
    from .models import file_sha256

    for name, digest in (rec.get("file_sha256") or {}).items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            if file_sha256(p) != digest:
                return f"{name} changed since it was checked"
        except OSError as exc:
            return f"{name} cannot be read ({exc})"
    if not rec.get("file_sha256"):
        return "record lists no files"
    return None


@dataclass
class VariantResult:
    """Outcome for one variant.

    Attributes
    ----------
    kind : str
    role : {"encoder", "decoder"}
    status : {"enabled", "refused", "failed", "unchecked", "stale", "missing"}
        ``enabled``: built and passed the check; ``refused``: the check failed;
        ``failed``: building or checking raised (see ``reason``); ``unchecked``: built with
        ``check=False`` (never enabled automatically); ``stale``/``missing``: found by
        :func:`find_variants` but unusable / not built.
    reason : str
        One sentence for the user.
    folder : pathlib.Path or None
        Where the files and the record are.
    files : dict
        ``{"model": name, "image": name, "prompt": name}`` (file names in ``folder``).
    agreement : Agreement or None
    cached : bool
        True when the result came from an earlier run's record.
    seconds : float
        Time spent building and checking in this call.
    details : dict
        What the builder did.
    """

    kind: str
    role: str
    status: str
    reason: str = ""
    folder: Path | None = None
    files: dict = field(default_factory=dict)
    agreement: Agreement | None = None
    cached: bool = False
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"

    def path(self, part: str = "model") -> Path | None:
        name = self.files.get(part)
        return None if name is None or self.folder is None else self.folder / name


@dataclass
class OptimizationReport:
    """What :func:`optimize_model` did.

    Attributes
    ----------
    results : list of VariantResult
    combined : Agreement or None
        Agreement of all enabled variants used together (encoder and decoder variant), when
        both roles have one; information only.
    """

    results: list[VariantResult] = field(default_factory=list)
    combined: Agreement | None = None

    @property
    def enabled(self) -> list[str]:
        """Kinds that passed the check."""
        return [r.kind for r in self.results if r.enabled]

    def summary(self) -> str:
        """A few lines for the user."""
        lines = []
        for r in self.results:
            head = f"{r.kind}: {r.status}" + (" (remembered)" if r.cached else "")
            if r.agreement is not None:
                head += f" - {r.agreement.describe()}"
            if r.reason and not r.enabled:
                head += f" - {r.reason}"
            lines.append(head)
        if self.combined is not None:
            lines.append(f"all enabled variants together: {self.combined.describe()}")
        return "\n".join(lines)


def _result_from_record(rec: dict, folder: Path) -> VariantResult:
    ag = rec.get("agreement")
    agreement = Agreement(**ag) if isinstance(ag, dict) else None
    return VariantResult(
        kind=rec["kind"], role=rec["role"], status=rec.get("status", "failed"),
        reason=rec.get("reason", ""), folder=folder, files=dict(rec.get("files") or {}),
        agreement=agreement, cached=True, details=dict(rec.get("build") or {}),
    )


def _write_record(folder: Path, kind: str, rec: dict) -> None:
    paths.atomic_write_text(folder / f"{kind}.json", json.dumps(rec, indent=2, default=str))


def find_variants(model: EdgeSamModel, kinds: Sequence[str] | None = None
                  ) -> dict[str, VariantResult]:
    """Look up the recorded variants of ``model``'s files (no building, no checking).

    Parameters
    ----------
    model : EdgeSamModel
        The original model (an :class:`OptimizedEdgeSamModel` is traced back to its source).
    kinds : sequence of str, optional
        Default: the built-in kinds.

    Returns
    -------
    dict
        kind -> :class:`VariantResult`; ``status`` ``missing`` when never built here,
        ``stale`` when the record no longer fits (with the reason), else the recorded one.
    """
    model = getattr(model, "source", None) or model
    out = {}
    for kind in kinds or list(VARIANTS):
        role = VARIANTS[kind].role if kind in VARIANTS else (
            "encoder" if kind.startswith("encoder") else "decoder")
        out[kind] = _lookup(model, kind, role)
    return out


def _lookup(model: EdgeSamModel, kind: str, role: str) -> VariantResult:
    """The recorded result of one variant kind of ``model`` (see :func:`find_variants`)."""
    src = model.encoder_path if role == "encoder" else model.decoder_path
    try:
        sha = _source_sha(model, role)
    except (OSError, ModelError) as exc:
        return VariantResult(kind, role, "missing", f"source not readable: {exc}")
    found = VariantResult(kind, role, "missing", "not built yet")
    for folder in variant_folders(src, sha):
        rec = _read_record(folder / f"{kind}.json")
        if rec is None:
            continue
        problem = _record_problem(rec, folder, sha)
        if problem is not None:
            found = VariantResult(kind, role, "stale", problem, folder=folder)
            continue
        return _result_from_record(rec, folder)
    return found


# =========================================================================================
# The optimised model
# =========================================================================================


class OptimizedEdgeSamModel(EdgeSamModel):
    """An :class:`EdgeSamModel` running optimised variant files of a source model.

    ``encoder_path``/``decoder_path`` point at contract-compatible files (the variant's or
    the source's), so anything that recreates a model from the paths (batch workers) gets
    the same model. When the decoder variant was split, :meth:`decode` runs the
    prompt-independent part once per embedding array (remembered for the last few arrays)
    and only the prompt part per call.

    Parameters
    ----------
    source : EdgeSamModel
        The float32 original.
    encoder, decoder : path
        Files to run.
    decoder_parts : (path, path), optional
        ``(image part, prompt part)`` of the split decoder.
    variants : dict, optional
        kind -> :class:`VariantResult` of the variants in use.
    memo_size : int
        How many embeddings' prompt-independent decoder tensors to remember (each about
        10 MB for EdgeSAM).
    """

    def __init__(self, source: EdgeSamModel, encoder, decoder, *, decoder_parts=None,
                 variants: dict | None = None, memo_size: int = 2, sha256: dict | None = None):
        kinds = list(variants or {})
        super().__init__(
            encoder, decoder, name="+".join([source.name, *kinds]),
            providers=source.providers, num_threads=source.num_threads, sha256=sha256,
        )
        self.source = source
        self.variants = dict(variants or {})
        self.decoder_parts = tuple(Path(p) for p in decoder_parts) if decoder_parts else None
        self._memo: list[tuple[np.ndarray, float, dict]] = []
        self._memo_size = max(1, int(memo_size))
        self._memo_lock = threading.Lock()

    def __repr__(self):
        return (f"OptimizedEdgeSamModel(name={self.name!r}, encoder={str(self.encoder_path)!r}, "
                f"decoder={str(self.decoder_path)!r}, split={self.decoder_parts is not None})")

    def _make_session(self, role: str):
        if role not in ("decoder_image", "decoder_prompt"):
            return super()._make_session(role)
        import onnxruntime as ort

        from .session import default_num_threads, resolve_providers

        path = self.decoder_parts[0 if role == "decoder_image" else 1]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.num_threads or default_num_threads())
        opts.log_severity_level = 3
        try:
            s = ort.InferenceSession(str(path), sess_options=opts,
                                     providers=resolve_providers(self.providers))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"optimised decoder part {path} cannot be loaded: {exc}") from exc
        if role == "decoder_prompt":
            names = {o.name for o in s.get_outputs()}
            if not {"scores", "masks"} <= names:
                raise ModelError(f"optimised decoder part {path} lacks scores/masks outputs")
        return s

    def load(self) -> OptimizedEdgeSamModel:
        super().load()
        if self.decoder_parts:
            self.session("decoder_image")
            self.session("decoder_prompt")
        return self

    @staticmethod
    def _fingerprint(a: np.ndarray) -> float:
        flat = a.reshape(-1)
        return float(flat[:: max(1, flat.size // 1024)].sum(dtype=np.float64))

    def image_part(self, embedding: np.ndarray) -> dict:
        """The prompt-independent decoder tensors for ``embedding`` (remembered).

        Parameters
        ----------
        embedding : ndarray of float32, shape (1, 256, 64, 64)

        Returns
        -------
        dict
            Input name -> array for the prompt part.
        """
        emb = np.asarray(embedding, dtype=np.float32)
        fp = self._fingerprint(emb)
        with self._memo_lock:
            for i, (arr, f, out) in enumerate(self._memo):
                if arr is emb and f == fp:
                    self._memo.append(self._memo.pop(i))
                    return out
            s = self.session("decoder_image")
            vals = s.run(None, {"image_embeddings": emb})
            out = dict(zip([o.name for o in s.get_outputs()], vals, strict=True))
            self._memo.append((emb, fp, out))
            del self._memo[:-self._memo_size]
            return out

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        """Run the decoder (see :meth:`EdgeSamModel.decode`); with a split decoder the
        prompt-independent part is computed once per embedding array."""
        if not self.decoder_parts:
            return super().decode(embedding, coords, labels)
        feeds = self.image_part(embedding)
        s = self.session("decoder_prompt")
        wanted = {i.name for i in s.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        if "image_embeddings" in wanted:
            feeds["image_embeddings"] = np.asarray(embedding, dtype=np.float32)
        feeds["point_coords"] = np.asarray(coords, dtype=np.float32)
        feeds["point_labels"] = np.asarray(labels, dtype=np.float32)
        scores, masks = s.run(["scores", "masks"], feeds)
        return scores, masks


def _model_with(source: EdgeSamModel, results: Sequence[VariantResult],
                use_split: bool = True) -> EdgeSamModel:
    enc = dec = None
    parts = None
    used = {}
    sha = {}
    for r in results:
        if r.role == "encoder" and enc is None:
            enc = r.path("model")
            used[r.kind] = r
        elif r.role == "decoder" and dec is None:
            dec = r.path("model")
            if use_split and r.path("image") and r.path("prompt"):
                parts = (r.path("image"), r.path("prompt"))
            used[r.kind] = r
    if not used:
        return source
    if enc is None:
        sha["encoder"] = source.identity
    return OptimizedEdgeSamModel(
        source, enc or source.encoder_path, dec or source.decoder_path, decoder_parts=parts,
        variants=used, sha256=sha,
    )


def optimized_or_original(model: EdgeSamModel) -> tuple[EdgeSamModel, str]:
    """:func:`load_optimized` with a sentence for the user saying what runs and why.

    Returns
    -------
    (EdgeSamModel, str)
        The variants that passed (or ``model``), and e.g. ``"running <name> (optimised
        variants that agreed ...)"`` or why the original runs and how to make variants.
    """
    report: list = []
    optimized = load_optimized(model, report=report)
    if optimized is model:
        why = "; ".join(f"{r.kind}: {r.status}" for r in report) or "none made"
        return model, (f"no optimised variant of {model.name} passed its check here ({why}); "
                       "running the original. Make them with 'napari-edgesam optimize "
                       "IMAGES' on a few of your images.")
    return optimized, (f"running {optimized.name} (optimised variants that agreed with the "
                       "original on your images).")


def load_optimized(model: EdgeSamModel, kinds: Sequence[str] | None = None, *,
                   report: list | None = None) -> EdgeSamModel:
    """The model with every variant that passed its agreement check, else ``model`` itself.

    Only records are read (no building, no checking, no ``onnx`` needed). For each role the
    first passing kind of :data:`PREFERENCE` is used. A record made from another source
    file version or another onnxruntime version, or whose files changed, is not used.

    Parameters
    ----------
    model : EdgeSamModel
        The original model.
    kinds : sequence of str, optional
        Restrict to these kinds (default: all built-in kinds).
    report : list, optional
        Receives one :class:`VariantResult` per kind considered (with the reason when it is
        not used).

    Returns
    -------
    EdgeSamModel
        An :class:`OptimizedEdgeSamModel` (its ``identity``, the SHA-256 of its encoder
        file, differs from the original's when the encoder variant is used, so cached
        embeddings never mix), or ``model`` when nothing passed.
    """
    model = getattr(model, "source", None) or model
    found = find_variants(model, kinds)
    if report is not None:
        report.extend(found.values())
    order = [k for k in PREFERENCE if k in found] + [k for k in found if k not in PREFERENCE]
    chosen = [found[k] for k in order if found[k].enabled]
    for k in order:
        if not found[k].enabled and found[k].status != "missing":
            _log.info("optimised variant %s not used: %s", k, found[k].reason)
    return _model_with(model, chosen)


def load_variant(model: EdgeSamModel, kind: str, *, require_passed: bool = True,
                 use_split: bool = True) -> EdgeSamModel:
    """One variant of ``model`` (for benchmarks and diagnostics).

    Parameters
    ----------
    model : EdgeSamModel
    kind : str
    require_passed : bool
        When False, a refused or unchecked variant is loaded too (never do this for real
        work: its masks were not shown to agree with the original).
    use_split : bool
        Use the split decoder (image part remembered per embedding) when there is one.

    Raises
    ------
    ModelError
        When the variant is not built here (or did not pass, with ``require_passed``).
    """
    model = getattr(model, "source", None) or model
    r = find_variants(model, [kind])[kind]
    ok = r.enabled or (not require_passed and r.status in ("refused", "unchecked"))
    if not ok:
        raise ModelError(f"variant {kind} is not usable: {r.status} ({r.reason})")
    return _model_with(model, [r], use_split=use_split)


# =========================================================================================
# Building and checking
# =========================================================================================


def _preprocessed(images, mapping) -> list[np.ndarray]:
    from .intensity import as_model_image
    from .transforms import preprocess

    out = []
    for im in images:
        rgb, _ = as_model_image(im, mapping)
        out.append(preprocess(rgb)[0])
    return out


def _file_list(folder: Path, kind: str) -> dict:
    files = {"model": f"{kind}.onnx"}
    if (folder / f"{kind}.image.onnx").is_file() and (folder / f"{kind}.prompt.onnx").is_file():
        files["image"] = f"{kind}.image.onnx"
        files["prompt"] = f"{kind}.prompt.onnx"
    return files


def _split_files(full: Path, image_out: Path, prompt_out: Path) -> str:
    """Split the decoder file ``full`` into the two part files (see :func:`split_decoder`)."""
    onnx = _import_onnx()
    res = split_decoder(onnx.load(str(full)))
    if res is None:
        return "not split (nothing prompt-independent)"
    img, prm, boundary = res
    onnx.save(img, str(image_out))
    onnx.save(prm, str(prompt_out))
    return f"split into image and prompt parts ({len(boundary)} boundary tensors)"


def _target_folder(source: Path, sha: str) -> Path:
    beside, cache = variant_folders(source, sha)
    if _probe_writable(beside):
        return beside
    if _probe_writable(cache):
        _log.info("model folder %s is not writable; optimised variants go to %s",
                  Path(source).parent, cache)
        return cache
    raise ModelError(f"cannot write optimised variants beside {source} nor into {cache}")


def optimize_model(
    model: EdgeSamModel,
    images,
    *,
    variants: Sequence[str | Variant] = DEFAULT_VARIANTS,
    mapping=None,
    check: bool = True,
    force: bool = False,
    thresholds: Thresholds | None = None,
    n_clicks: int = 8,
    n_boxes: int = 4,
    seed: int = 0,
    max_images: int = 4,
    progress=None,
) -> OptimizationReport:
    """Build optimised variants of ``model`` from its files and check them on ``images``.

    A variant whose record (beside the files) already fits the current source file and
    onnxruntime version is not built nor checked again (``cached=True``) unless ``force``.
    Building and checking errors are caught: the variant is reported ``failed`` with the
    reason, and the original keeps being used. Cancelling (``progress`` raising
    :class:`CancelledError`) leaves no record of the variant in progress.

    Parameters
    ----------
    model : EdgeSamModel
        The float32 original (an :class:`OptimizedEdgeSamModel` is traced to its source).
    images : sequence of ndarray, each (H, W), (H, W, 3) or (H, W, 4)
        A few of the user's slices (any real dtype): calibration of the int8 encoder and
        the agreement check. At most ``max_images`` are used (evenly spaced).
    variants : sequence of str or Variant
        Kinds from :data:`VARIANTS` (default :data:`DEFAULT_VARIANTS`) or custom
        :class:`Variant` objects.
    mapping : IntensityMapping, optional
        Stack-wide intensity mapping for the slices; default per slice.
    check : bool
        Run the agreement check (without it variants are ``unchecked`` and never enabled
        by :func:`load_optimized`).
    force : bool
        Rebuild and re-check even when a fitting record exists.
    thresholds : Thresholds, optional
        Default: mean IoU >= 0.95 and min IoU >= 0.80.
    n_clicks, n_boxes, seed : int
        Prompts per image for the check.
    max_images : int
    progress : callable, optional
        ``progress(message: str, done: int, total: int)``.

    Returns
    -------
    OptimizationReport

    Raises
    ------
    OptimizationUnavailableError
        When ``onnx`` is not installed (and something must be built).
    """
    source = getattr(model, "source", None) or model
    images = list(images)
    if not images:
        raise ModelError("optimize_model needs at least one image of yours")
    if len(images) > max_images:
        idx = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images = [images[i] for i in idx]
    specs = [VARIANTS[v] if isinstance(v, str) else v for v in variants]
    thresholds = thresholds or Thresholds()
    report = OptimizationReport()
    ref: _Reference | None = None
    calib: list | None = None

    def get_ref() -> _Reference:
        nonlocal ref
        if ref is None:
            ref = _Reference(source, images, mapping, n_clicks, n_boxes, seed)
        return ref

    def calibration() -> list:
        nonlocal calib
        if calib is None:
            calib = _preprocessed(images, mapping)
        return calib

    def say(msg, done=0, total=0):
        _log.info("%s", msg)
        if progress is not None:
            progress(msg, done, total)

    for spec in specs:
        t0 = time.perf_counter()
        if not force:
            prev = _lookup(source, spec.kind, spec.role)
            if prev.cached and (prev.status != "unchecked" or not check):
                report.results.append(prev)
                continue
        try:
            res = _build_and_check(source, spec, get_ref, calibration, check, thresholds,
                                   say, progress)
        except CancelledError:
            raise
        except OptimizationUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the original
            _log.warning("optimised variant %s failed: %s", spec.kind, exc, exc_info=True)
            res = VariantResult(spec.kind, spec.role, "failed",
                                f"{type(exc).__name__}: {exc}".strip()[:500])
        res.seconds = time.perf_counter() - t0
        report.results.append(res)
    # combined agreement of the enabled encoder + decoder variants (information)
    enabled = [r for r in report.results if r.enabled]
    if check and {r.role for r in enabled} == {"encoder", "decoder"}:
        try:
            both = _model_with(source, enabled)
            report.combined = check_agreement(source, both, images, thresholds=thresholds,
                                              _ref=get_ref())
        except Exception as exc:  # noqa: BLE001
            _log.warning("combined agreement check failed: %s", exc)
    return report


def _build_and_check(source: EdgeSamModel, spec: Variant, get_ref, calibration, check,
                     thresholds, say, progress) -> VariantResult:
    onnx = _import_onnx()
    role = spec.role
    src = Path(source.encoder_path if role == "encoder" else source.decoder_path)
    sha = _source_sha(source, role)
    folder = _target_folder(src, sha)
    kind = spec.kind
    for stale in (folder / f"{kind}.json",):
        with contextlib.suppress(OSError):
            stale.unlink()
    say(f"building {kind}")
    for name in (f"{kind}.onnx", f"{kind}.image.onnx", f"{kind}.prompt.onnx"):
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    work = Path(tempfile.mkdtemp(prefix=f"nes-{kind}-"))
    try:
        ctx = BuildContext(src, work / f"{kind}.onnx", work, calibration,
                           lambda m: say(f"{kind}: {m}"),
                           image_output=work / f"{kind}.image.onnx",
                           prompt_output=work / f"{kind}.prompt.onnx")
        details = dict(spec.build(ctx) or {})
        if not ctx.output.is_file():
            raise ModelError(f"the {kind} builder wrote no file")
        has_parts = ctx.image_output.is_file() and ctx.prompt_output.is_file()
        if role == "decoder" and spec.split and not has_parts:
            try:
                details["split"] = _split_files(ctx.output, ctx.image_output,
                                                ctx.prompt_output)
                has_parts = ctx.image_output.is_file() and ctx.prompt_output.is_file()
            except Exception as exc:  # noqa: BLE001 - the one-file variant still works
                details["split"] = f"not split: {exc}"
        produced = [ctx.output] + ([ctx.image_output, ctx.prompt_output] if has_parts else [])
        for p in produced:  # into place: copy to a temporary name, then an atomic rename
            tmp = folder / f".{p.name}.tmp"
            shutil.copyfile(p, tmp)
            os.replace(tmp, folder / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = _file_list(folder, kind)
    result = VariantResult(kind, role, "unchecked", "built; not checked", folder=folder,
                           files=files, details=details)
    # the variant must load and honour the contract
    candidate = _model_with(source, [result])
    candidate.load()
    if check:
        ref = get_ref()
        say(f"checking {kind} against the original")
        ag = check_agreement(source, candidate, ref.images, thresholds=thresholds,
                             _ref=ref, progress=progress)
        if files.get("image"):
            # The one-file variant (used by other processes, e.g. batch workers) is the same
            # graph, but onnxruntime fuses across the split differently, and with int8 the
            # tiny float differences can flip quantisation steps: check it too.
            say(f"checking the one-file {kind} against the original")
            one = check_agreement(source, _model_with(source, [result], use_split=False),
                                  ref.images, thresholds=thresholds, _ref=ref,
                                  progress=progress)
            details["agreement_split"] = asdict(ag)
            details["agreement_one_file"] = asdict(one)
            ag = Agreement(
                mean_iou=min(ag.mean_iou, one.mean_iou), min_iou=min(ag.min_iou, one.min_iou),
                same_choice=min(ag.same_choice, one.same_choice), n_prompts=ag.n_prompts,
                n_images=ag.n_images, passed=ag.passed and one.passed,
                thresholds=ag.thresholds)
        result.agreement = ag
        if ag.passed:
            result.status, result.reason = "enabled", f"agrees with the original: {ag.describe()}"
        else:
            result.status = "refused"
            result.reason = (
                f"does not agree closely enough with the original ({ag.describe()}; needs "
                f"mean >= {thresholds.mean_iou}, min >= {thresholds.min_iou}); the original "
                "is used")
    from .models import file_sha256

    rec = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "role": role,
        "status": result.status,
        "reason": result.reason,
        "description": spec.description,
        "source": {"path": str(src.resolve()), "sha256": sha},
        "files": files,
        "file_sha256": {name: file_sha256(folder / name) for name in files.values()},
        "agreement": None if result.agreement is None else asdict(result.agreement),
        "build": details,
        "onnxruntime": _ort_version(),
        "onnx": getattr(onnx, "__version__", "?"),
        "napari_edgesam": _package_version(),
        "machine": {"system": platform.system(), "machine": platform.machine(),
                    "processor": platform.processor()},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_record(folder, kind, rec)
    return result


def _package_version() -> str:
    try:
        from napari_edgesam import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "?"
