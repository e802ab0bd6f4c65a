"""Finding patterns in ONNX graphs: a producer/consumer index and the pattern matchers.

:class:`_Graph` indexes an ``onnx.ModelProto``; the ``_match_*`` functions recognise the
exported subgraphs the rewrites replace (erf-GELU, SAM's channel LayerNorm2d, 2x2 stride-2
transposed convolutions); ``_static_shape``/``_shape_dims`` read inferred tensor shapes and
``_remove_dead`` drops what a rewrite left unused. ``onnx`` is imported lazily (see
:mod:`.dependencies`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .dependencies import _import_onnx


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
