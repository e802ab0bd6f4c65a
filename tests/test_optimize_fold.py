"""The re-parameterisation rewrite (engine.optimize.reparam) and the ``encoder-fold`` variant.

Small graphs with RepViT's unfolded token mixer are built here with onnx's helper (random
weights, a few channels): ``Conv3x3_dw(x) + Conv1x1_dw(x)``, with and without the identity
``+ x``, BatchNorms on the branches, on the identity and after the sum. After the rewrite
the Conv/Add counts drop as expected, onnxruntime gives the same outputs within 1e-5
(relative to the outputs' scale), the number of folds is reported, and graphs without the
pattern report "0 folds" and are left unchanged. The variant is run on the test double (not
EdgeSAM), which has no branches ("skipped" with its reason), and on the test double with an
unfolded block appended to its encoder (built, checked, enabled).
"""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from conftest import disc_image

import onnx
from onnx import TensorProto, helper, numpy_helper

from napari_edgesam.engine import EdgeSamModel
from napari_edgesam.engine import optimize as opt
from napari_edgesam.engine.optimize.reparam import fold_parallel_depthwise
from napari_edgesam.engine.optimize.variants import NotApplicable

C, H, W = 6, 9, 7


class _Builder:
    """Collects nodes and random float32 initializers for a small NCHW graph."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(self, op, ins, out, **kw):
        self.nodes.append(helper.make_node(op, ins, [out], name=out + "_node", **kw))
        return out

    def dw(self, x, out, k, *, bias=True, bn=False, stride=1, pads=None, c=C):
        w = self.const(out + "_w", self.rng.standard_normal((c, 1, k, k)))
        ins = [x, w]
        if bias:
            ins.append(self.const(out + "_b", self.rng.standard_normal(c)))
        p = (k - 1) // 2 if pads is None else pads
        y = self.node("Conv", ins, out + ("_conv" if bn else ""), group=c,
                      kernel_shape=[k, k], pads=[p] * 4, strides=[stride] * 2)
        return self.bn(y, out) if bn else y

    def bn(self, x, out, c=C):
        r = self.rng
        return self.node("BatchNormalization", [
            x, self.const(out + "_g", r.uniform(0.5, 1.5, c)),
            self.const(out + "_beta", r.standard_normal(c)),
            self.const(out + "_mean", r.standard_normal(c)),
            self.const(out + "_var", r.uniform(0.5, 2.0, c))], out, epsilon=1e-5)

    def model(self, outputs, inputs=("x",)):
        g = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(i, TensorProto.FLOAT, [1, C, H, W]) for i in inputs],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, C, None, None])
             for o in outputs],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def _token_mixer(b, x, tag, *, identity, bn, bn_identity=False, post_bn=False, order=0):
    """RepViT's unfolded mixer, the sum nested in the order ``order`` picks."""
    c3 = b.dw(x, f"{tag}_c3", 3, bn=bn)
    c1 = b.dw(x, f"{tag}_c1", 1, bn=bn, bias=not bn)  # with and without a bias
    ident = b.bn(x, f"{tag}_idbn") if bn_identity else x
    if not identity:
        s = b.node("Add", [c1, c3] if order else [c3, c1], f"{tag}_sum")
    elif order == 0:  # (c3 + c1) + x, as torch exports conv(x) + conv1(x) + x
        s = b.node("Add", [b.node("Add", [c3, c1], f"{tag}_s1"), ident], f"{tag}_sum")
    else:  # x + (c1 + c3)
        s = b.node("Add", [ident, b.node("Add", [c1, c3], f"{tag}_s1")], f"{tag}_sum")
    return b.bn(s, f"{tag}_post") if post_bn else s


def _blocks(n=2, seed=0, **kw):
    """``n`` RepViT-like blocks: token mixer, then a residual 1x1 channel mixer."""
    b = _Builder(seed)
    x = "x"
    for i in range(n):
        y = _token_mixer(b, x, f"b{i}", **kw)
        w = b.const(f"b{i}_mix_w", b.rng.standard_normal((C, C, 1, 1)) * 0.3)
        m = b.node("Conv", [y, w], f"b{i}_mix")
        x = b.node("Add", [y, m], f"b{i}_out")  # residual: not a depthwise branch
    return b.model([x])


def _run(model, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i in s.get_inputs()}
    return s.run(None, feeds)


def _assert_same_function(a, b, seed=1):
    x = np.random.default_rng(seed).standard_normal((1, C, H, W)).astype(np.float32)
    for ya, yb in zip(_run(a, x), _run(b, x), strict=True):
        scale = float(np.abs(ya).max())
        np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5 * scale)


def _ops(model):
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("identity, bn, bn_identity, post_bn, order", [
    (True, False, False, False, 0),   # conv3(x) + conv1(x) + x, BatchNorms folded already
    (True, False, False, False, 1),   # the same, nested the other way round
    (False, False, False, False, 0),  # no identity
    (False, False, False, False, 1),
    (True, True, False, False, 0),    # BatchNorm on each convolution branch
    (True, True, True, False, 0),     # ... and on the identity: BN(x)
    (True, True, False, True, 0),     # ... and after the sum (RepViT v2)
    (False, True, False, True, 1),
])
def test_branches_fold_into_one_depthwise_conv(identity, bn, bn_identity, post_bn, order):
    m = _blocks(2, identity=identity, bn=bn, bn_identity=bn_identity, post_bn=post_bn,
                order=order)
    folded, summary = fold_parallel_depthwise(m)
    before, after = _ops(m), _ops(folded)
    # per block: two depthwise Convs -> one; the sum's one or two Adds -> none; only the
    # residual Add and the channel mixer's Conv stay
    assert before["Conv"] == 2 * 3 and after["Conv"] == 2 * 2
    assert before["Add"] == 2 * (1 + identity + 1) and after["Add"] == 2
    assert after["BatchNormalization"] == 0
    assert summary.folds == 2 and summary.conv_branches == 4
    assert summary.identity_branches == 2 * identity
    assert summary.batchnorms == 2 * (2 * bn + bn_identity + post_bn)
    assert summary.kernels == {"3x3": 2}
    assert summary.describe().startswith("2 fold(s)")
    assert summary.ops_before == dict(before) and summary.ops_after == dict(after)
    dws = [n for n in folded.graph.node if n.op_type == "Conv"
           and any(a.name == "group" and a.i == C for a in n.attribute)]
    assert len(dws) == 2
    onnx.checker.check_model(folded)
    _assert_same_function(m, folded)


def test_identity_and_one_by_one_go_to_the_centre_tap():
    """With a zero 3x3 kernel, the folded kernel is the 1x1 weight + 1 at the centre only."""
    b = _Builder(3)
    w1 = b.rng.standard_normal((C, 1, 1, 1)).astype(np.float32)
    c3 = b.node("Conv", ["x", b.const("w3", np.zeros((C, 1, 3, 3))), b.const("b3", np.ones(C))],
                "c3", group=C, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c1 = b.node("Conv", ["x", b.const("w1", w1), b.const("b1", np.full(C, 2.0))], "c1",
                group=C, kernel_shape=[1, 1])
    y = b.node("Add", [b.node("Add", [c3, c1], "s"), "x"], "y")
    folded, summary = fold_parallel_depthwise(b.model([y]))
    assert summary.folds == 1
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    (wk,) = [v for k, v in inits.items() if k.endswith("/W")]
    (bk,) = [v for k, v in inits.items() if k.endswith("/B")]
    expect = np.zeros((C, 1, 3, 3), np.float32)
    expect[:, 0, 1, 1] = w1[:, 0, 0, 0] + 1.0
    np.testing.assert_array_equal(wk, expect)
    np.testing.assert_array_equal(bk, np.full(C, 3.0, np.float32))


def test_other_terms_of_the_sum_stay():
    """``conv3(x) + conv1(x) + z``: the branches fold, ``z`` is added to the new conv."""
    b = _Builder(4)
    c3, c1 = b.dw("x", "c3", 3), b.dw("x", "c1", 1)
    y = b.node("Add", [b.node("Add", [c3, c1], "s"), "z"], "y")
    m = b.model([y], inputs=("x", "z"))
    folded, summary = fold_parallel_depthwise(m)
    assert summary.folds == 1 and summary.identity_branches == 0
    assert _ops(folded)["Conv"] == 1 and _ops(folded)["Add"] == 1
    _assert_same_function(m, folded)


def _no_pattern_graphs():
    out = {}
    b = _Builder(5)  # a full 1x1 convolution and a residual Add
    w = b.const("w", b.rng.standard_normal((C, C, 1, 1)))
    out["dense conv + residual"] = b.model([b.node("Add", ["x", b.node("Conv", ["x", w], "c")],
                                                   "y")])
    b = _Builder(6)  # a stride-2 depthwise conv cannot take the 1x1 branch
    y = b.node("Add", [b.dw("x", "c3", 3, stride=2), b.dw("x", "c1", 1, stride=2)], "y")
    out["stride 2"] = b.model([y])
    b = _Builder(7)  # a 3x3 without padding is not centred on the 1x1's pixels
    y = b.node("Add", [b.dw("x", "c3", 3, pads=0), "x"], "y")
    out["not size-keeping"] = b.model([y])
    b = _Builder(8)  # the 1x1 branch's output is used elsewhere too: it must stay
    c1 = b.dw("x", "c1", 1)
    y = b.node("Add", [b.dw("x", "c3", 3), c1], "y")
    out["branch used elsewhere"] = b.model([y, c1])
    b = _Builder(9)  # branches of two different inputs
    y = b.node("Add", [b.dw("x", "c3", 3), b.dw("z", "c1", 1)], "y")
    out["different inputs"] = b.model([y], inputs=("x", "z"))
    b = _Builder(10)  # two identities but no convolution
    out["no convolution"] = b.model([b.node("Add", ["x", "x"], "y")])
    return out


@pytest.mark.parametrize("name", list(_no_pattern_graphs()))
def test_a_graph_without_the_pattern_reports_0_folds(name):
    m = _no_pattern_graphs()[name]
    folded, summary = fold_parallel_depthwise(m)
    assert summary.folds == 0
    assert summary.describe().startswith("0 folds")
    assert folded is m  # unchanged, not a copy with something dropped


def test_initializers_listed_as_inputs_do_not_become_required_inputs():
    """Old exports list the weights as graph inputs too; the folded ones must go."""
    m = _blocks(1, identity=True, bn=True)
    m.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                         for i in m.graph.initializer)
    folded, summary = fold_parallel_depthwise(m)
    assert summary.folds == 1
    names = {i.name for i in folded.graph.input}
    kept = {i.name for i in folded.graph.initializer}
    assert names - kept == {"x"}
    _assert_same_function(m, folded)


# ---- the variant ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    a, _ = disc_image((300, 400), (120, 250), 50)
    b, _ = disc_image((256, 256), (100, 90), 30, value=180, background=40)
    return [a, b]


def _encoder_with_branches(src, dst, seed=0):
    """The test double's encoder followed by an unfolded RepViT token mixer on its
    (1, 256, 64, 64) output: small random branches, identity, BatchNorms."""
    m = onnx.load(str(src))
    emb = m.graph.output[0].name
    for n in m.graph.node:
        n.output[:] = ["emb0" if o == emb else o for o in n.output]
    rng = np.random.default_rng(seed)
    c = 256

    def init(name, arr):
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def bn(x, out):
        m.graph.node.append(helper.make_node("BatchNormalization", [
            x, init(out + "_g", rng.uniform(0.05, 0.1, c)), init(out + "_b", np.zeros(c)),
            init(out + "_m", np.zeros(c)), init(out + "_v", np.ones(c))], [out]))
        return out

    for k, name in ((3, "c3"), (1, "c1")):
        m.graph.node.append(helper.make_node(
            "Conv", ["emb0", init(name + "_w", rng.standard_normal((c, 1, k, k)))],
            [name + "_raw"], group=c, kernel_shape=[k, k], pads=[(k - 1) // 2] * 4))
        bn(name + "_raw", name)
    m.graph.node.append(helper.make_node("Add", ["c3", "c1"], ["s"]))
    m.graph.node.append(helper.make_node("Add", ["s", "emb0"], [emb]))
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def test_fold_variant_is_skipped_with_its_reason_when_nothing_folds(model_dir, images):
    model = EdgeSamModel(model_dir / "enc.onnx", model_dir / "dec.onnx", name="double")
    report = opt.optimize_model(model, images, variants=["encoder-fold"], n_clicks=2,
                                n_boxes=1)
    (res,) = report.results
    assert res.status == "skipped" and not res.enabled
    assert res.reason.startswith("0 folds") and "not offered" in res.reason
    assert res.folder is None and not list(model_dir.rglob("encoder-fold*"))
    assert "encoder-fold: skipped - 0 folds" in report.summary()
    assert opt.load_optimized(model) is model


def test_fold_builder_raises_not_applicable(tmp_path, model_dir):
    from napari_edgesam.engine.optimize.variants import VARIANTS, BuildContext

    ctx = BuildContext(model_dir / "enc.onnx", tmp_path / "out.onnx", tmp_path, list, print)
    with pytest.raises(NotApplicable, match="0 folds"):
        VARIANTS["encoder-fold"].build(ctx)
    assert not ctx.output.exists()


def test_fold_variant_is_built_checked_and_preferred_after_int8(model_dir, images):
    _encoder_with_branches(model_dir / "enc.onnx", model_dir / "enc_branches.onnx")
    model = EdgeSamModel(model_dir / "enc_branches.onnx", model_dir / "dec.onnx", name="rep")
    report = opt.optimize_model(model, images, variants=["encoder-fold"], n_clicks=3,
                                n_boxes=2)
    (res,) = report.results
    assert res.status == "enabled", res.reason
    assert res.details["folds"] == 1
    assert res.details["ops_before"]["Conv"] == 2 and res.details["ops_after"]["Conv"] == 1
    assert res.agreement.min_iou == 1.0
    fast = opt.load_optimized(model)
    assert fast.name == "rep+encoder-fold"
    assert fast.identity != model.identity  # embeddings of the two never mix in a cache
    tensor = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    a, b = model.load().encode(tensor), fast.load().encode(tensor)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # int8 is built on the folded graph and, when it passes, wins over the exact fold
    assert opt.PREFERENCE.index("encoder-int8") < opt.PREFERENCE.index("encoder-fold")
    assert "encoder-fold" in opt.DEFAULT_VARIANTS


def test_int8_encoder_is_quantised_from_the_folded_graph(tmp_path, model_dir, images):
    from napari_edgesam.engine.optimize.orchestration import _preprocessed
    from napari_edgesam.engine.optimize.variants import VARIANTS, BuildContext

    _encoder_with_branches(model_dir / "enc.onnx", tmp_path / "rep.onnx")
    ctx = BuildContext(tmp_path / "rep.onnx", tmp_path / "int8.onnx", tmp_path,
                       lambda: _preprocessed(images[:1], None), lambda m: None)
    details = VARIANTS["encoder-int8"].build(ctx)
    assert details["folds"] == 1
    convs = [n for n in onnx.load(str(ctx.output)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 1  # one (QDQ) depthwise convolution where the source had two
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


def test_combined_check_uses_the_variants_load_optimized_picks(model_dir, images,
                                                               monkeypatch):
    """With two passing encoder variants the combined agreement is of the preferred one
    (PREFERENCE order), not of whichever was listed first."""
    from napari_edgesam.engine.optimize import orchestration

    _encoder_with_branches(model_dir / "enc.onnx", model_dir / "enc_branches.onnx")
    model = EdgeSamModel(model_dir / "enc_branches.onnx", model_dir / "dec.onnx", name="rep")
    copy = opt.Variant("encoder-copy", "encoder",
                       lambda ctx: shutil.copyfile(ctx.source, ctx.output) and {})
    used = []
    real = orchestration._model_with

    def spy(source, results, **kw):
        used.append([r.kind for r in results])
        return real(source, results, **kw)

    monkeypatch.setattr(orchestration, "_model_with", spy)
    report = opt.optimize_model(model, images, variants=[copy, "encoder-fold", "decoder-fast"],
                                n_clicks=2, n_boxes=1)
    assert report.enabled == ["encoder-copy", "encoder-fold", "decoder-fast"]
    assert report.combined is not None
    encoders = [k for k in used[-1] if k.startswith("encoder")]
    assert encoders[0] == "encoder-fold"  # what _model_with takes for the encoder
    assert opt.load_optimized(model).name == "rep+decoder-fast+encoder-fold"
