"""The benchmark models' construction on ONNX graphs (benchmarks/make_realistic_model.py).

The realistic-mask benchmark model is the architecture-faithful model's cost joined to the
test double's outputs by ``keep_alive``. Here the join is applied to the committed test
double and small stand-in "cost" graphs (no PyTorch, no generated files): the result must
honour the contract, give the test double's outputs bit for bit whatever the cost branch
computes (NaN included), and keep the cost branch feeding the outputs in the graph that
onnxruntime runs after its optimisations. The generated files themselves are checked when
present (benchmarks/README.md says how to make them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
TEST_MODELS = ROOT / "tests" / "models"


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_realistic_model", ROOT / "benchmarks" / "make_realistic_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mrm = _load_script()


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cost_decoder():
    """A stand-in decoder 'cost': a 1x1 Conv on the embedding whose output is named ``masks``
    (as the faithful decoder's) and ``scores`` that are NaN (0 / 0 of the prompt's sum)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 256, 1, 1)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [
        helper.make_node("Conv", ["image_embeddings", "w"], ["masks"], name="conv"),
        helper.make_node("ReduceSum", ["point_coords"], ["s"], keepdims=0),
        helper.make_node("Sub", ["s", "s"], ["d"]),
        helper.make_node("Div", ["d", "zero"], ["scores"]),
    ]
    return _model(nodes,
                  [_f("image_embeddings", [1, 256, 64, 64]),
                   _f("point_coords", [1, "num_points", 2])],
                  [_f("scores", []), _f("masks", [1, 4, 64, 64])], [w, zero], "cost_decoder")


def cost_encoder():
    """A stand-in encoder 'cost': a 16x16 stride-16 Conv whose output is named like the
    real encoder's."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 16, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["image_embeddings"], strides=[16, 16])]
    return _model(nodes, [_f("image", [1, 3, 1024, 1024])],
                  [_f("image_embeddings", [1, 8, 64, 64])], [w], "cost_encoder")


def _session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _io(values):
    return [(v.name, v.type, list(v.shape)) for v in values]


PROMPTS = [
    ([[400, 300], [0, 0]], [1, -1]),
    ([[100, 120], [700, 650]], [2, 3]),
    ([[100, 120], [700, 650], [300, 300], [500, 200]], [2, 3, 1, 0]),
    ([[10, 20], [500, 600], [900, 100]], [1, 1, 0]),
]


@pytest.fixture(scope="module")
def double():
    return {role: onnx.load(str(TEST_MODELS / f"test_{role}.onnx"))
            for role in ("encoder", "decoder")}


@pytest.fixture(scope="module")
def joined(double):
    return {"encoder": mrm.keep_alive(double["encoder"], cost_encoder(), "image_embeddings"),
            "decoder": mrm.keep_alive(double["decoder"], cost_decoder(), "masks")}


def test_join_honours_the_contract(double, joined):
    for role in ("encoder", "decoder"):
        got, want = _session(joined[role]), _session(double[role])
        assert _io(got.get_inputs()) == _io(want.get_inputs())
        assert _io(got.get_outputs()) == _io(want.get_outputs())
    dec_inputs = _io(_session(joined["decoder"]).get_inputs())
    assert dec_inputs[1] == ("point_coords", "tensor(float)", [1, "num_points", 2])
    (producer,) = [n for n in joined["decoder"].graph.node if "scores" in n.output]
    assert producer.op_type == "Div"  # the stability score, computed from the final masks


def test_join_gives_the_mask_graph_outputs_bit_for_bit(double, joined):
    image = np.random.default_rng(2).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    (emb,) = _session(joined["encoder"]).run(None, {"image": image})
    np.testing.assert_array_equal(emb, _session(double["encoder"]).run(None, {"image": image})[0])
    cost = _session(cost_decoder())
    got, want = _session(joined["decoder"]), _session(double["decoder"])
    for coords, labels in PROMPTS:  # the point count varies: the axis stays dynamic
        feed = {"image_embeddings": emb, "point_coords": np.array([coords], np.float32),
                "point_labels": np.array([labels], np.float32)}
        assert np.isnan(cost.run(None, {k: feed[k] for k in ("image_embeddings",
                                                             "point_coords")})[0])
        g_scores, g_masks = got.run(None, feed)
        w_scores, w_masks = want.run(None, feed)
        np.testing.assert_array_equal(g_masks, w_masks)  # NaN from the cost branch: no effect
        np.testing.assert_array_equal(g_scores, w_scores)
        assert (w_masks > 0).any()


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_cost_branch_stays_live_after_onnxruntime_optimisation(joined, role, tmp_path):
    cost = cost_encoder() if role == "encoder" else cost_decoder()
    assert mrm.check_live(joined[role], cost, tmp_path) == []
    optimised = mrm.optimized_graph(joined[role], tmp_path / "opt.onnx").graph
    _, live = mrm.live_op_counts(optimised)
    assert sum(n for op, n in live.items() if "Conv" in op) >= 1


def test_liveness_check_fails_without_the_keep_alive_term(joined, tmp_path):
    """The check is not vacuous: with the keep-alive Add bypassed the cost branch is still in
    the graph (onnxruntime 1.32 does not drop it) but feeds no output, and is reported."""
    model = onnx.ModelProto()
    model.CopyFrom(joined["decoder"])
    (add,) = [n for n in model.graph.node if n.name == "keep_alive/add"]
    add.op_type, add.input[:] = "Identity", [add.input[0]]
    problems = mrm.check_live(model, cost_decoder(), tmp_path)
    assert any("Conv" in p.split(":")[0] for p in problems), problems


def test_join_refuses_a_cost_graph_with_other_inputs(double):
    rogue = cost_encoder()
    rogue.graph.input[0].name = "pixels"
    rogue.graph.node[0].input[0] = "pixels"
    with pytest.raises(ValueError, match="pixels"):
        mrm.keep_alive(double["encoder"], rogue, "image_embeddings")


GENERATED = ROOT / "benchmarks" / "models"


def _generated(name):
    path = GENERATED / name
    if not path.is_file():
        pytest.skip(f"{name} not generated (benchmarks/README.md)")
    return path


def test_generated_faithful_encoder_has_the_published_structure():
    """The published export keeps RepViT's 23 parallel 1x1 depthwise branches unfolded."""
    graph = onnx.load(str(_generated("edgesam_faithful_encoder.onnx"))).graph
    ops = [n.op_type for n in graph.node]
    assert (ops.count("Conv"), ops.count("Add")) == (130, 104)


def test_generated_realistic_model_is_marked_and_honours_the_contract():
    from napari_edgesam.engine.session import check_signature

    for role in ("encoder", "decoder"):
        path = _generated(f"edgesam_realistic_{role}.onnx")
        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["benchmark_only"] == "true" and props["not_edgesam"] == "true"
        assert "NOT EdgeSAM" in model.doc_string
        check_signature(_session(model), role, path)
