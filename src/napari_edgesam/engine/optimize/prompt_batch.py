"""The prompt-batch rewrite: a decoder that runs B prompt sets in one ``session.run``.

The published EdgeSAM decoder takes one prompt set per call: ``point_coords`` ``[1, N, 2]``,
``point_labels`` ``[1, N]``, ``image_embeddings`` ``[1, 256, 64, 64]``, and writes batch 1
into its graph (the output-token constant ``[1, 5, 256]`` concatenated with the prompt
tokens, Reshape nodes whose target shapes start with a literal 1). :func:`batch_prompts`
rewrites such a graph so that

- ``point_coords`` is ``[B, N, 2]`` and ``point_labels`` ``[B, N]`` (B prompt sets of one
  length N: pad shorter ones with ``(0, 0)`` label -1 points, see below), outputs
  ``scores`` ``[B, 4]`` and ``masks`` ``[B, 4, 256, 256]``;
- ``image_embeddings`` stays ``[1, 256, 64, 64]``: the embedding and everything computed
  from it alone (its positional encoding, the first attention's image-side projections)
  keep batch 1 and *broadcast* against the prompts' batch, so the image side runs once per
  call, not B times; a batch-1 tensor is expanded to B (``Expand`` to
  ``[B, 1, ...]``) only where an operator does not broadcast (``Concat``: the output tokens);
- a Reshape of a batched tensor whose target shape starts with a literal 1 gets a 0 there
  (ONNX: "copy this dimension from the input"), in the constant or in the ``Concat`` that
  assembles the shape.

How it finds what to change (no node names are used): every tensor computed from the
prompt inputs is *batched* (its axis 0 is the prompt batch); 1-D shape tensors are
evaluated symbolically from ``Shape`` nodes (:class:`_Shapes`). Each node that touches a
batched tensor must be one of the operators known to keep axis 0 the batch (element-wise
with compatible ranks, MatMul, Conv, Softmax over another axis, ...); anything else
(an axis-0 Gather/Slice/Squeeze/Transpose/reduction, a Reshape that merges the batch, an
unknown operator) stops the rewrite with :class:`PromptBatchUnavailable` naming the node and
why, so a graph that does not match falls back to one prompt per run with a stated reason.

Padding: a label -1 point is the contract's "not a point" (its positional encoding is
replaced by a learned embedding), but it is still a token the transformer attends to, so
padding a prompt changes the model's masks a little. The rewritten graph computes exactly
what the original computes on the same (padded) inputs; the predictor
(:meth:`~napari_edgesam.engine.predictor.Predictor.decode_low_res_batch`) therefore batches
prompt sets of equal length together and never pads, and its results are those of one run
per prompt set.

``onnx`` is imported lazily (see :mod:`.dependencies`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OptimizationUnavailableError
from .dependencies import _import_onnx
from .graph_matching import _Graph

__all__ = ["PromptBatchSummary", "PromptBatchUnavailable", "batch_prompts"]

#: The symbolic name of the prompt batch axis in the rewritten graph's inputs and outputs.
BATCH_DIM = "prompt_batch"

# Operators applied element by element (numpy broadcasting): safe on batched tensors when
# the ranks line up (see _check_broadcast).
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Relu", "Sigmoid", "Tanh", "Exp", "Log",
    "Neg", "Abs", "Sin", "Cos", "Cast", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And", "Or", "Where", "Identity", "Clip", "Max", "Min", "Floor",
    "Ceil", "Round", "Sign", "Reciprocal", "IsNaN", "IsInf", "Gelu", "CastLike", "Mod",
    "Dropout", "LeakyRelu", "HardSigmoid", "Softplus", "Elu",
}
# Operators with an axis attribute that must not be the batch axis.
_AXIS_OPS = {"Softmax": -1, "LogSoftmax": -1, "Split": 0, "OneHot": -1,
             "Flatten": 1, "LayerNormalization": -1, "ArgMax": 0, "ArgMin": 0,
             "CumSum": None}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
           "ReduceL2", "ReduceSumSquare"}
_CONV = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization",
         "AveragePool", "MaxPool", "Resize", "DepthToSpace", "SpaceToDepth",
         "GlobalAveragePool"}


class PromptBatchUnavailable(OptimizationUnavailableError):
    """The decoder graph does not match what the prompt-batch rewrite knows how to batch;
    the message names the node and why. The decoder then runs one prompt set per call."""


@dataclass
class PromptBatchSummary:
    """What :func:`batch_prompts` changed.

    Attributes
    ----------
    reshapes : list of str
        Reshape nodes whose leading 1 became 0 (copy the batch from the input).
    expanded : list of str
        Concat nodes whose batch-1 inputs were expanded to the prompt batch.
    batched_nodes : int
        Nodes that now carry the prompt batch.
    shared_nodes : int
        Nodes left at batch 1 and shared by every prompt set of a call (the image side).
    """

    reshapes: list = field(default_factory=list)
    expanded: list = field(default_factory=list)
    batched_nodes: int = 0
    shared_nodes: int = 0

    def describe(self) -> str:
        """One line for the record and the user."""
        return (f"prompt batch: {len(self.reshapes)} Reshape target(s) 1 -> 0, "
                f"{len(self.expanded)} Concat input(s) expanded to the batch, "
                f"{self.batched_nodes} nodes per prompt set, {self.shared_nodes} shared "
                "(batch 1, broadcast)")


def _unavailable(node, why: str) -> PromptBatchUnavailable:
    name = node.name or (node.output[0] if node.output else "?")
    return PromptBatchUnavailable(
        f"the decoder cannot be batched over prompts: node {name!r} ({node.op_type}) {why}; "
        "prompts run one per decoder call")


class _Shapes:
    """Symbolic values of 1-D int shape tensors: a list per tensor whose items are ints,
    ``"B"`` (the prompt batch) or None (unknown)."""

    def __init__(self, g: _Graph, model, batched: set):
        self.g, self.model, self.batched = g, model, batched
        self.memo: dict[str, list | None] = {}

    def value(self, name: str) -> list | None:
        if name not in self.memo:
            self.memo[name] = self._value(name)
        return self.memo[name]

    def _value(self, name: str) -> list | None:
        c = self.g.const(name)
        if c is not None:
            return [int(v) for v in np.asarray(c).reshape(-1)] if c.size <= 16 else None
        n = self.g.producer.get(name)
        if n is None:
            return None
        op, a = n.op_type, self.g.attrs(n)
        if op == "Shape":
            dims = self.model.get(n.input[0])
            if dims is None:
                return None
            vals: list = list(dims)
            if n.input[0] in self.batched:
                vals[0] = "B"
            start, end = a.get("start", 0), a.get("end", None)
            return vals[start:end]
        ins = [self.value(i) if i else None for i in n.input]
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            return ins[0]
        if op == "Concat":
            if any(v is None for v in ins):
                return None
            return [x for v in ins for x in v]
        if op == "Gather" and a.get("axis", 0) == 0 and ins[0] is not None:
            idx = self.g.const(n.input[1])
            if idx is None:
                return None
            try:
                return [ins[0][int(i)] for i in np.asarray(idx).reshape(-1)]
            except IndexError:
                return None
        if op == "Slice" and ins[0] is not None:
            s = [self.g.const(i) if i else None for i in n.input[1:]]
            if s[0] is None or s[1] is None or (len(s) > 2 and n.input[3] and s[2] is None):
                return None
            step = int(s[3].reshape(-1)[0]) if len(s) > 3 and s[3] is not None else 1
            start, end = int(s[0].reshape(-1)[0]), int(s[1].reshape(-1)[0])
            return ins[0][start:end:step]
        if op in ("Mul", "Div", "Add", "Sub") and ins[0] is not None and ins[1] is not None:
            a0, a1 = ins
            if len(a0) != len(a1):
                a0, a1 = (a0 * len(a1), a1) if len(a0) == 1 else (a0, a1 * len(a0))
            out = []
            for x, y in zip(a0, a1, strict=False):
                if not (isinstance(x, int) and isinstance(y, int)):
                    out.append(None)
                    continue
                out.append({"Mul": x * y, "Add": x + y, "Sub": x - y,
                            "Div": x // y if y else None}[op])
            return out
        return None


def _dims_of(model) -> dict:
    """Tensor name -> inferred shape (None for unknown dims), or None without a rank."""
    out: dict = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        out[vi.name] = None if not t.HasField("shape") else tuple(
            int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
    return out


def _rank(model, name: str, g: _Graph) -> int | None:
    c = g.const(name)
    if c is not None:
        return c.ndim
    dims = model.get(name)
    return None if dims is None else len(dims)


def _dim0(model, name: str, g: _Graph):
    c = g.const(name)
    if c is not None:
        return c.shape[0] if c.ndim else None
    dims = model.get(name)
    return dims[0] if dims else None


def batch_prompts(model) -> tuple[object, PromptBatchSummary]:
    """Rewrite a contract decoder so that it takes a batch of prompt sets.

    Parameters
    ----------
    model : onnx.ModelProto
        A decoder with the contract's signature (``image_embeddings`` ``[1, 256, 64, 64]``,
        ``point_coords`` ``[1, N, 2]`` as ``(x, y)`` in the 1024 frame, ``point_labels``
        ``[1, N]``; ``scores`` ``[1, 4]``, ``masks`` ``[1, 4, 256, 256]``). Not modified.

    Returns
    -------
    (onnx.ModelProto, PromptBatchSummary)
        The rewritten decoder: ``point_coords`` ``[B, N, 2]``, ``point_labels`` ``[B, N]``
        (float32, B and N dynamic), ``image_embeddings`` unchanged, ``scores`` ``[B, 4]`` and
        ``masks`` ``[B, 4, 256, 256]``; row ``b`` equals the original decoder run on prompt
        set ``b`` alone, up to float rounding.

    Raises
    ------
    PromptBatchUnavailable
        When the graph does not match (a subclass of
        :class:`~napari_edgesam.engine.errors.OptimizationUnavailableError`), with the
        node and the reason.
    """
    onnx = _import_onnx()
    from onnx import helper, numpy_helper, shape_inference

    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    names = [i.name for i in graph.input]
    for needed in ("image_embeddings", "point_coords", "point_labels"):
        if needed not in names:
            raise PromptBatchUnavailable(f"the decoder has no input {needed!r}: not a "
                                         "contract decoder, prompts run one per call")
    for inp in graph.input:
        if inp.name in ("point_coords", "point_labels"):
            d0 = inp.type.tensor_type.shape.dim[0]
            if not (d0.HasField("dim_value") and d0.dim_value == 1):
                raise PromptBatchUnavailable(
                    f"input {inp.name} does not have batch 1 (already batched?); prompts "
                    "run one per call")
    try:
        work = shape_inference.infer_shapes(work, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        raise PromptBatchUnavailable(f"shape inference failed on the decoder ({exc}); "
                                     "prompts run one per call") from exc
    graph = work.graph
    g = _Graph(work)
    inferred = _dims_of(work)  # name -> inferred dims
    batched: set[str] = {"point_coords", "point_labels"}
    shapes = _Shapes(g, inferred, batched)
    summary = PromptBatchSummary()
    new_inits: list = []
    new_nodes: dict[int, list] = {}  # node index -> nodes to insert before it
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"prompt_batch/{prefix}_{counter[0]}"

    batch_vec = "prompt_batch/B"  # [B], int64, made once at the start of the graph
    prologue = [
        helper.make_node("Shape", ["point_labels"], ["prompt_batch/labels_shape"],
                         name="prompt_batch/Shape"),
        helper.make_node("Slice", ["prompt_batch/labels_shape", "prompt_batch/zero",
                                   "prompt_batch/one"], [batch_vec], name="prompt_batch/Slice"),
    ]
    new_inits += [numpy_helper.from_array(np.array([0], np.int64), "prompt_batch/zero"),
                  numpy_helper.from_array(np.array([1], np.int64), "prompt_batch/one")]

    def rank(name):
        return _rank(inferred, name, g)

    for idx, node in enumerate(graph.node):
        ins = [i for i in node.input if i]
        b_ins = [i for i in ins if i in batched]
        op, a = node.op_type, g.attrs(node)
        if op == "Shape":
            continue  # a shape value, evaluated by _Shapes
        if op == "Reshape":
            out_b = _reshape(node, g, inferred, shapes, batched, summary, new_inits, fresh)
            if out_b:
                batched.update(node.output)
            continue
        if op in ("Expand", "Tile", "ConstantOfShape"):
            target = shapes.value(node.input[1] if op != "ConstantOfShape" else node.input[0])
            from_shape = target is not None and target[:1] == ["B"]
            if target is not None and "B" in target[1:]:
                raise _unavailable(node, "puts the prompt batch on another axis")
            if op == "Tile" and b_ins and (target is None or target[:1] != [1]):
                raise _unavailable(node, "repeats along the prompt batch axis")
            if b_ins or from_shape:
                batched.update(node.output)
            continue
        if not b_ins:
            if any(shapes.value(i) is not None and "B" in (shapes.value(i) or [])
                   for i in ins) and op not in ("Unsqueeze", "Squeeze", "Concat", "Gather",
                                                "Slice", "Cast", "Mul", "Div", "Add", "Sub",
                                                "Identity"):
                raise _unavailable(node, "uses the prompt batch size in a way not understood")
            continue
        r = max((rank(i) or 0) for i in b_ins)
        if any(rank(i) is None for i in b_ins):
            raise _unavailable(node, "has an input of unknown rank")

        def axis_ok(ax, r=r):
            return ax is not None and (ax % r) != 0

        if op in _ELEMENTWISE:
            _check_broadcast(node, ins, b_ins, r, inferred, g)
        elif op == "Concat":
            if not axis_ok(a.get("axis")):
                raise _unavailable(node, "concatenates along the prompt batch axis")
            for j, i in enumerate(node.input):
                if i in batched:
                    continue
                if rank(i) != r or _dim0(inferred, i, g) != 1:
                    raise _unavailable(node, f"joins {i!r}, which is not [1, ...] of rank {r}")
                shp = fresh("expand_shape")
                ones = fresh("ones")
                new_inits.append(numpy_helper.from_array(np.ones(r - 1, np.int64), ones))
                out = fresh("expanded")
                new_nodes.setdefault(idx, []).extend([
                    helper.make_node("Concat", [batch_vec, ones], [shp], axis=0,
                                     name=fresh("Concat")),
                    helper.make_node("Expand", [i, shp], [out], name=fresh("Expand")),
                ])
                node.input[j] = out
                summary.expanded.append(node.name or node.output[0])
        elif op in ("MatMul", "Gemm"):
            _check_matmul(node, b_ins, r, inferred, g)
        elif op in _CONV:
            if node.input[0] not in batched or len(b_ins) > 1:
                raise _unavailable(node, "has the prompt batch in its weights")
        elif op == "Transpose":
            if list(a.get("perm", [r - 1]))[0] != 0:
                raise _unavailable(node, "moves the prompt batch axis")
        elif op in _REDUCE:
            axes = list(a["axes"]) if "axes" in a else (
                [int(v) for v in g.const(node.input[1]).reshape(-1)]
                if len(node.input) > 1 and node.input[1] and g.const(node.input[1]) is not None
                else None)
            if axes is None or any(ax % r == 0 for ax in axes):
                raise _unavailable(node, "reduces over the prompt batch axis (or all axes)")
        elif op == "Gather":
            ax = a.get("axis", 0)
            if node.input[0] in batched and (node.input[1] in batched or not axis_ok(ax)):
                raise _unavailable(node, "indexes along the prompt batch axis")
            if node.input[0] not in batched and axis_ok(ax):
                raise _unavailable(node, "moves batched indices off axis 0")
        elif op in _AXIS_OPS:
            ax = a.get("axis", _AXIS_OPS[op])
            if op == "Flatten" and ax == 0:
                raise _unavailable(node, "flattens the prompt batch into one row")
            if op != "Flatten" and not axis_ok(ax):
                raise _unavailable(node, "works along the prompt batch axis")
        elif op in ("Unsqueeze", "Squeeze", "Slice"):
            axes = _axes(node, g, a)
            rr = r + (len(axes) if op == "Unsqueeze" and axes else 0)
            if axes is None or any(ax % rr == 0 for ax in axes):
                raise _unavailable(node, "adds, removes or slices the prompt batch axis")
        else:
            raise _unavailable(node, "is not an operator known to keep the prompt batch on "
                                     "axis 0")
        batched.update(node.output)

    outs = {o.name for o in graph.output}
    for name in ("scores", "masks"):
        if name in outs and name not in batched:
            raise PromptBatchUnavailable(f"output {name!r} does not depend on the prompts; "
                                         "prompts run one per call")
    nodes = list(prologue)
    for idx, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(idx, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    for vi in list(graph.input) + list(graph.output):
        if vi.name in ("point_coords", "point_labels", "scores", "masks"):
            d0 = vi.type.tensor_type.shape.dim[0]
            d0.Clear()
            d0.dim_param = BATCH_DIM
    del graph.value_info[:]
    summary.batched_nodes = sum(any(o in batched for o in n.output) for n in graph.node)
    summary.shared_nodes = len(graph.node) - summary.batched_nodes
    try:
        onnx.checker.check_model(work)
    except Exception as exc:  # noqa: BLE001
        raise PromptBatchUnavailable(f"the batched decoder is not a valid graph ({exc}); "
                                     "prompts run one per call") from exc
    return work, summary


def _axes(node, g: _Graph, a: dict) -> list | None:
    """The axes an Unsqueeze, Squeeze or Slice works on (attribute or constant input);
    None when they cannot be read (or a Squeeze without axes: every 1 goes)."""
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    pos = 3 if node.op_type == "Slice" else 1
    if len(node.input) > pos and node.input[pos]:
        c = g.const(node.input[pos])
        return None if c is None else [int(v) for v in c.reshape(-1)]
    if node.op_type == "Slice":
        starts = g.const(node.input[1])
        return None if starts is None else list(range(starts.size))
    return None


def _check_broadcast(node, ins, b_ins, r, model, g) -> None:
    """Element-wise: batched inputs share rank ``r``; others have a lower rank or a
    leading 1."""
    for i in ins:
        ri = _rank(model, i, g)
        if ri is None:
            raise _unavailable(node, f"has an input {i!r} of unknown rank")
        if i in b_ins and ri != r:
            raise _unavailable(node, "mixes batched tensors of different ranks")
        if i not in b_ins and (ri > r or (ri == r and _dim0(model, i, g) != 1)):
            raise _unavailable(node, f"broadcasts {i!r} against the prompt batch axis")


def _check_matmul(node, b_ins, r, model, g) -> None:
    a_in, b_in = node.input[0], node.input[1]
    ra, rb = _rank(model, a_in, g), _rank(model, b_in, g)
    if ra is None or rb is None:
        raise _unavailable(node, "has an input of unknown rank")
    if node.op_type == "Gemm":
        if b_ins != [a_in] or g.attrs(node).get("transA", 0):
            raise _unavailable(node, "has the prompt batch outside its first operand's rows")
        return
    if b_in in b_ins and rb < 3:
        raise _unavailable(node, "contracts over the prompt batch axis")
    if a_in in b_ins and b_in not in b_ins and rb > ra:
        raise _unavailable(node, "broadcasts the prompt batch against a weight's batch axes")
    if b_in in b_ins and a_in not in b_ins and ra > rb:
        raise _unavailable(node, "broadcasts the prompt batch against a weight's batch axes")
    if a_in in b_ins and b_in in b_ins and ra != rb:
        raise _unavailable(node, "mixes batched operands of different ranks")
    if a_in not in b_ins and ra == rb and _dim0(model, a_in, g) != 1:
        raise _unavailable(node, "broadcasts a batch-1 operand that is not batch 1")
    if b_in not in b_ins and ra == rb and _dim0(model, b_in, g) != 1:
        raise _unavailable(node, "broadcasts a batch-1 operand that is not batch 1")


def _reshape(node, g, model, shapes, batched, summary, new_inits, fresh) -> bool:
    """Check and fix one Reshape; returns whether its output is batched."""
    from onnx import numpy_helper

    data, target = node.input[0], node.input[1]
    value = shapes.value(target)
    if data not in batched:
        if value is not None and "B" in value:
            raise _unavailable(node, "gives a batch-1 tensor the prompt batch's size")
        return False
    if value is None or not value:
        raise _unavailable(node, "reshapes a batched tensor to a target shape that cannot be "
                                 "read")
    if "B" in value[1:]:
        raise _unavailable(node, "moves the prompt batch to another axis")
    if value[0] == "B" or value[0] == 0:
        return True
    in_dims, out_dims = model.get(data), model.get(node.output[0])
    if value[0] == -1 and out_dims and out_dims[0] == 1 and all(
            isinstance(v, int) and v > 0 for v in value[1:]):
        return True  # the other sizes are fixed: -1 becomes B
    if value[0] != 1 or not in_dims or in_dims[0] != 1 or g.attrs(node).get("allowzero", 0):
        raise _unavailable(node, f"reshapes a batched tensor to {value}, merging or moving "
                                 "the prompt batch")
    c = g.const(target)
    if c is not None:
        fixed = np.asarray(c).copy().reshape(-1)
        fixed[0] = 0
        name = fresh("reshape_shape")
        new_inits.append(numpy_helper.from_array(fixed.astype(np.int64), name))
        node.input[1] = name
    else:
        cat = g.producer.get(target)
        first = cat.input[0] if cat is not None and cat.op_type == "Concat" else None
        fc = g.const(first) if first else None
        if fc is None or fc.reshape(-1)[0] != 1:
            raise _unavailable(node, "has a target shape whose leading 1 cannot be replaced")
        fixed = np.asarray(fc).copy().reshape(-1)
        fixed[0] = 0
        name = fresh("reshape_head")
        new_inits.append(numpy_helper.from_array(fixed.astype(np.int64).reshape(fc.shape),
                                                 name))
        cat.input[0] = name
    summary.reshapes.append(node.name or node.output[0])
    return True
