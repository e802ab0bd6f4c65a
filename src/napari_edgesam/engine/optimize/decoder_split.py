"""Splitting a decoder into a prompt-independent *image* part and a *prompt* part, and
merging the two back into one graph.

The image part runs once per image embedding, the prompt part once per prompt set; the split
is bit-exact. ``onnx`` is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import contract
from .dependencies import _import_onnx


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


def merge_parts(image_model, prompt_model, boundary: Sequence[str]):
    """One decoder graph from the two parts of :func:`split_decoder` (the inverse).

    The image part's internal names are prefixed so they cannot clash with the prompt
    part's; the boundary tensors connect the two.

    Parameters
    ----------
    image_model, prompt_model : onnx.ModelProto
        The two parts, as :func:`split_decoder` returns them (possibly quantised since).
    boundary : sequence of str
        Names of the tensors the image part passes to the prompt part.

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
