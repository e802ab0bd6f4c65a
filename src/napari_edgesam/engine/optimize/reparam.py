"""Structural re-parameterisation: parallel depthwise convolution branches folded into one.

RepViT (EdgeSAM's encoder) mixes tokens with a re-parameterisable depthwise convolution:
in its training form a 3x3 depthwise convolution, a parallel 1x1 depthwise convolution and
the identity, summed (``conv3(x) + conv1(x) + x``, each convolution with its BatchNorm).
At inference these are one 3x3 depthwise convolution, but the published EdgeSAM export keeps
the branches apart (two Conv and two Add nodes per block where one Conv does). Every branch
is a per-channel linear map of the same input with the same centre, so their sum is one
depthwise convolution whose kernel is the sum of the branches' kernels (a smaller kernel
added at the centre taps of the largest; the identity is a 1 at the centre) and whose bias
is the sum of their biases. A BatchNormalization on a branch, on the identity (``BN(x)``)
or after the sum is a per-channel scale and shift and folds in as well. The result computes
the same function up to float rounding.

:func:`fold_parallel_depthwise` finds sums (trees of ``Add``/``Sum`` nodes) whose terms are
depthwise convolutions of one tensor ``x`` (groups = channels, stride 1, dilation 1, odd
kernels padded to keep the size), optionally ``x`` itself and BatchNorms, and replaces each
by one ``Conv``; it says how many it folded, and "0 folds" when it found none. ``onnx`` is
imported lazily.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .dependencies import _import_onnx
from .graph_matching import _Graph, _remove_dead

_SUMS = ("Add", "Sum")


@dataclass
class FoldSummary:
    """What :func:`fold_parallel_depthwise` did to a graph.

    Attributes
    ----------
    folds : int
        Sums of parallel branches replaced by one depthwise ``Conv`` (0: nothing changed).
    conv_branches : int
        Depthwise convolutions absorbed (for RepViT: a 3x3 and a 1x1 per fold).
    identity_branches : int
        Identity terms (``x`` or ``BatchNormalization(x)``) absorbed.
    batchnorms : int
        ``BatchNormalization`` nodes folded into the new kernels and biases.
    kernels : dict
        ``"KHxKW"`` -> number of folded convolutions with that kernel.
    ops_before, ops_after : dict
        Node counts per op type of the graph before and after (``Conv``, ``Add``, ...).
    """

    folds: int = 0
    conv_branches: int = 0
    identity_branches: int = 0
    batchnorms: int = 0
    kernels: dict = field(default_factory=dict)
    ops_before: dict = field(default_factory=dict)
    ops_after: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One sentence for the user and the record; starts with the number of folds."""
        if not self.folds:
            return ("0 folds: no parallel depthwise convolution branches of one input found "
                    "(nothing changed)")
        ops = ", ".join(
            f"{op} {self.ops_before.get(op, 0)} -> {self.ops_after.get(op, 0)}"
            for op in ("Conv", "Add", "Sum", "BatchNormalization")
            if self.ops_before.get(op, 0) != self.ops_after.get(op, 0))
        kernels = ", ".join(f"{n} x {k}" for k, n in sorted(self.kernels.items()))
        return (f"{self.folds} fold(s): {self.conv_branches} depthwise convolution branches, "
                f"{self.identity_branches} identity branches and {self.batchnorms} "
                f"BatchNorm(s) folded into {self.folds} depthwise convolution(s) ({kernels}; "
                f"{ops})")


@dataclass
class _Term:
    """One branch of a sum: ``scale * dwconv_W(x) + bias`` per channel (W None: identity)."""

    x: str
    weight: np.ndarray | None  # (C, 1, KH, KW) float64, BatchNorm already applied
    bias: np.ndarray | float  # (C,) float64 or 0.0
    scale: np.ndarray | float = 1.0  # identity only: (C,) or 1.0
    batchnorms: int = 0


def _bn_params(g: _Graph, node) -> tuple[np.ndarray, np.ndarray] | None:
    """An inference ``BatchNormalization`` as per-channel ``(scale, shift)``, else None."""
    if node.op_type != "BatchNormalization" or len(node.input) != 5:
        return None
    if len([o for o in node.output if o]) != 1 or node.output[0] == "":
        return None
    a = g.attrs(node)
    if a.get("training_mode", 0) or a.get("spatial", 1) != 1 or "is_test" in a:
        return None
    vals = [g.const(i) for i in node.input[1:]]
    if any(v is None or v.dtype != np.float32 or v.ndim != 1 for v in vals):
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
    if not gamma.size == beta.size == mean.size == var.size:
        return None
    scale = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


def _centred_pads(kernel: tuple[int, int], attrs: dict) -> bool:
    """Does the convolution keep the size with the kernel centred on each pixel?"""
    kh, kw = kernel
    if kh % 2 == 0 or kw % 2 == 0:
        return False
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return True
    if auto != "NOTSET":
        return False
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    return list(attrs.get("pads", [0, 0, 0, 0])) == [ph, pw, ph, pw]


def _dw_conv(g: _Graph, node) -> tuple[str, np.ndarray, np.ndarray | float] | None:
    """A size-keeping depthwise 2-D ``Conv`` with constant float32 weights:
    ``(x, W (C, 1, KH, KW) float64, bias (C,) or 0.0)``, else None."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = g.const(node.input[1])
    if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[1] != 1:
        return None
    a = g.attrs(node)
    if a.get("group", 1) != w.shape[0]:
        return None
    if list(a.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        return None
    if any(s != 1 for s in a.get("strides", [1, 1])):
        return None
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return None
    if not _centred_pads(tuple(w.shape[2:]), a):
        return None
    bias: np.ndarray | float = 0.0
    if len(node.input) > 2 and node.input[2]:
        b = g.const(node.input[2])
        if b is None or b.dtype != np.float32 or b.size != w.shape[0]:
            return None
        bias = b.reshape(-1).astype(np.float64)
    return node.input[0], w.astype(np.float64), bias


def _term(g: _Graph, t: str) -> tuple[_Term, list] | None:
    """What tensor ``t`` (a term of a sum, used only there) is, with the nodes it absorbs."""
    p = g.producer.get(t)
    if p is None or len(g.only(t)) != 1:
        return None
    bn = None
    if p.op_type == "BatchNormalization":
        bn = _bn_params(g, p)
        if bn is None:
            return None
        inner = g.producer.get(p.input[0])
        if inner is None or len(g.only(p.input[0])) != 1 or _dw_conv(g, inner) is None:
            # BatchNorm of the input itself: an identity branch with a scale and a shift
            return _Term(p.input[0], None, bn[1], scale=bn[0], batchnorms=1), [p]
        nodes = [p, inner]
        p = inner
    else:
        nodes = [p]
    conv = _dw_conv(g, p)
    if conv is None:
        return None
    x, w, b = conv
    if bn is not None:
        if bn[0].size != w.shape[0]:
            return None
        w = w * bn[0][:, None, None, None]
        b = b * bn[0] + bn[1]
    return _Term(x, w, b, batchnorms=int(bn is not None)), nodes


def _sum_leaves(g: _Graph, node) -> list[str]:
    """The terms of the sum rooted at ``node``: inputs, expanding inner sums used only here."""
    out = []
    for t in node.input:
        p = g.producer.get(t)
        if p is not None and p.op_type in _SUMS and len(g.only(t)) == 1:
            out.extend(_sum_leaves(g, p))
        else:
            out.append(t)
    return out


def _fold(terms: list[_Term]) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (C, 1, KH, KW) and bias (C,), float32, of the sum of ``terms``."""
    convs = [t for t in terms if t.weight is not None]
    c = convs[0].weight.shape[0]
    kh = max(t.weight.shape[2] for t in convs)
    kw = max(t.weight.shape[3] for t in convs)
    w = np.zeros((c, 1, kh, kw), np.float64)
    b = np.zeros(c, np.float64)
    for t in terms:
        if t.weight is None:
            w[:, 0, kh // 2, kw // 2] += t.scale
        else:
            h, ww = t.weight.shape[2:]
            oy, ox = (kh - h) // 2, (kw - ww) // 2
            w[:, :, oy:oy + h, ox:ox + ww] += t.weight
        b += t.bias
    return w.astype(np.float32), b.astype(np.float32)


def _channels_agree(terms: list[_Term]) -> bool:
    c = next(t.weight.shape[0] for t in terms if t.weight is not None)
    for t in terms:
        for v in (t.weight, t.bias, t.scale):
            if isinstance(v, np.ndarray) and v.shape[0] != c:
                return False
    return True


def fold_parallel_depthwise(model) -> tuple[object, FoldSummary]:
    """Fold sums of parallel depthwise convolution branches into one depthwise ``Conv``.

    For every sum (a tree of ``Add``/``Sum`` nodes whose inner results are used only in it)
    the terms are grouped by their input ``x``; a group with at least one depthwise
    convolution and at least two terms becomes one ``Conv`` of ``x`` with the summed kernel
    and bias. A term is a size-keeping depthwise convolution of ``x`` (weights
    (C, 1, KH, KW) with odd KH, KW, ``group = C``, stride 1, dilation 1, pads (KH-1)/2 and
    (KW-1)/2 or ``SAME_*``; constant float32 weights and bias), optionally followed by an
    inference ``BatchNormalization``; or ``x`` itself or ``BatchNormalization(x)`` (the
    identity branch). A convolution or BatchNorm whose output is used anywhere else is not a
    term (it must stay). When a whole sum folds and its result goes only to a
    ``BatchNormalization``, that is folded too. Terms of other inputs stay and are added to
    the new convolution. Exact up to float rounding (weights summed in float64).

    Parameters
    ----------
    model : onnx.ModelProto
        Any graph; nothing is required of its shapes (the weights say everything).

    Returns
    -------
    model : onnx.ModelProto
        A rewritten copy, or the input itself when nothing was folded.
    summary : FoldSummary
        ``summary.folds`` is how many sums were folded (0: nothing); ``describe()`` says it.
    """
    onnx = _import_onnx()
    from onnx import helper, numpy_helper

    before = dict(Counter(n.op_type for n in model.graph.node))
    summary = FoldSummary(ops_before=before, ops_after=dict(before))
    g = _Graph(model)
    replace: dict[int, list] = {}  # id(node) -> nodes put in its place
    inits = []
    serial = 0
    for root in model.graph.node:
        if root.op_type not in _SUMS:
            continue
        cons = g.only(root.output[0])
        if len(cons) == 1 and cons[0].op_type in _SUMS:
            continue  # an inner sum: handled with its root
        leaves = _sum_leaves(g, root)
        found = []
        for t in leaves:
            hit = _term(g, t)
            # a leaf that is no branch may still be the identity of a group
            found.append((t, _Term(t, None, 0.0) if hit is None else hit[0]))
        groups: dict[str, list[_Term]] = {}
        for _, term in found:
            groups.setdefault(term.x, []).append(term)
        outs: list[str] = []
        post_bn = None
        new_nodes = []
        foldable = {x: grp for x, grp in groups.items()
                    if len(grp) >= 2 and any(k.weight is not None for k in grp)
                    and _channels_agree(grp)}
        if not foldable:
            continue
        rest = [t for t, term in found if term.x not in foldable]
        whole = not rest and len(foldable) == 1
        if whole:
            bn_node = cons[0] if len(cons) == 1 else None
            after = g.only(bn_node.output[0]) if bn_node is not None else []
            # not when the BatchNorm is itself a term of a later sum (it is folded there)
            if bn_node is not None and not (len(after) == 1 and after[0].op_type in _SUMS):
                bn = _bn_params(g, bn_node)
                c = next(k.weight.shape[0] for k in next(iter(foldable.values()))
                         if k.weight is not None)
                if bn is not None and bn[0].size == c:
                    post_bn = (bn_node, bn)
        for x, grp in foldable.items():
            w, b = _fold(grp)
            if post_bn is not None:
                s, sh = post_bn[1]
                w = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
                b = (b.astype(np.float64) * s + sh).astype(np.float32)
            name = f"nes_fold{serial}"
            serial += 1
            inits += [numpy_helper.from_array(w, f"{name}/W"),
                      numpy_helper.from_array(b, f"{name}/B")]
            if whole:
                out = (post_bn[0].output[0] if post_bn is not None else root.output[0])
            else:
                out = f"{name}/y"
            outs.append(out)
            kh, kw = w.shape[2:]
            new_nodes.append(helper.make_node(
                "Conv", [x, f"{name}/W", f"{name}/B"], [out], name=f"{name}/Conv",
                group=int(w.shape[0]), kernel_shape=[int(kh), int(kw)],
                pads=[int(kh // 2), int(kw // 2)] * 2, strides=[1, 1], dilations=[1, 1]))
            summary.folds += 1
            summary.conv_branches += sum(k.weight is not None for k in grp)
            summary.identity_branches += sum(k.weight is None for k in grp)
            summary.batchnorms += sum(k.batchnorms for k in grp)
            key = f"{kh}x{kw}"
            summary.kernels[key] = summary.kernels.get(key, 0) + 1
        if post_bn is not None:
            summary.batchnorms += 1
            replace[id(post_bn[0])] = []
        if not whole:  # the new convolution(s) plus the terms that stay
            terms = outs + rest
            acc = terms[0]
            for j, t in enumerate(terms[1:], 1):
                last = j == len(terms) - 1
                nxt = root.output[0] if last else f"{root.output[0]}/nes_fold_sum{j}"
                new_nodes.append(helper.make_node(
                    "Add", [acc, t], [nxt], name=f"{root.name or root.output[0]}/fold{j}"))
                acc = nxt
        replace[id(root)] = new_nodes
    if not summary.folds:
        return model, summary
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for n in model.graph.node:
        nodes.extend(replace.get(id(n), [n]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    init_names = {i.name for i in model.graph.initializer}
    _remove_dead(out)
    # an initializer listed as a graph input too (old exports) must go from the inputs
    # when it is gone, or it would become a required input
    kept = {i.name for i in out.graph.initializer}
    used = {i for n in out.graph.node for i in n.input}
    ins = [i for i in out.graph.input
           if not (i.name in init_names and i.name not in kept and i.name not in used)]
    del out.graph.input[:]
    out.graph.input.extend(ins)
    summary.ops_after = dict(Counter(n.op_type for n in out.graph.node))
    return out, summary
