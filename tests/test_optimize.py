"""Optimised variants: the mechanism (build, agreement check, records, fallbacks).

With the test double (tests/models, not EdgeSAM) and random weights agreement figures mean
nothing, so these tests check the mechanism: an exact rewrite passes and is enabled, a
deliberately broken variant is refused and the original is used, results are remembered
and a changed source re-runs the check, a read-only model folder falls back to the user
cache, and a missing ``onnx`` gives a clear message. Speed is measured by
``benchmarks/run.py`` on the architecture-faithful model, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DECODER, disc_image

import onnx
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from napari_edgesam.engine import EdgeSamModel, Predictor, paths  # noqa: E402
from napari_edgesam.engine import optimize as opt  # noqa: E402
from napari_edgesam.engine.cache import EmbeddingCache  # noqa: E402
from napari_edgesam.engine.models import file_sha256  # noqa: E402
from napari_edgesam.engine.transforms import MaskUpsampler  # noqa: E402


@pytest.fixture
def model(model_dir):
    return EdgeSamModel(model_dir / "enc.onnx", model_dir / "dec.onnx", name="double")


@pytest.fixture(scope="module")
def images():
    a, _ = disc_image((300, 400), (120, 250), 50)
    b, _ = disc_image((256, 256), (100, 90), 30, value=180, background=40)
    return [a, b]


def _copy_build(ctx: opt.BuildContext) -> dict:
    """An exact 'variant': the source itself."""
    shutil.copyfile(ctx.source, ctx.output)
    return {"what": "copy"}


def _edit_decoder(ctx: opt.BuildContext, op: str, value: float | None = None) -> dict:
    """A broken decoder: ``masks`` negated or shifted (made here with onnx)."""
    m = onnx.load(str(ctx.source))
    for n in m.graph.node:
        n.output[:] = ["masks_raw" if o == "masks" else o for o in n.output]
        n.input[:] = ["masks_raw" if i == "masks" else i for i in n.input]
    if op == "Neg":
        m.graph.node.append(helper.make_node("Neg", ["masks_raw"], ["masks"]))
    else:
        m.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "shift"))
        m.graph.node.append(helper.make_node("Add", ["masks_raw", "shift"], ["masks"]))
    onnx.save(m, str(ctx.output))
    return {"broken": op}


NEGATED = opt.Variant("decoder-negated", "decoder", lambda c: _edit_decoder(c, "Neg"))
SHIFTED = opt.Variant("decoder-shifted", "decoder", lambda c: _edit_decoder(c, "Add", 25.0))


def test_exact_rewrite_passes_and_is_enabled(model, model_dir, images):
    report = opt.optimize_model(model, images, variants=["decoder-fast"], n_clicks=4, n_boxes=2)
    (res,) = report.results
    assert res.status == "enabled", res.reason
    assert res.agreement.mean_iou == 1.0 and res.agreement.min_iou == 1.0
    assert res.agreement.n_prompts == 12 and res.agreement.n_images == 2
    assert not res.cached
    # stored beside the source, in a folder named by the source's SHA-256, with a record
    sha = file_sha256(model_dir / "dec.onnx")
    assert res.folder == model_dir / opt.BESIDE_DIR / sha
    rec = json.loads((res.folder / "decoder-fast.json").read_text())
    assert rec["source"]["sha256"] == sha and rec["status"] == "enabled"
    assert rec["agreement"]["mean_iou"] == 1.0
    assert rec["onnxruntime"] == opt._ort_version()
    assert set(rec["file_sha256"]) == set(rec["files"].values())
    assert "decoder-fast" in report.summary()

    fast = opt.load_optimized(model)
    assert isinstance(fast, opt.OptimizedEdgeSamModel)
    assert fast.decoder_path == res.folder / "decoder-fast.onnx"
    assert fast.encoder_path == model.encoder_path
    assert fast.identity == model.identity  # same encoder: embeddings stay shared
    # the split decoder gives the original's masks
    p_ref, p_fast = Predictor(model, cache=None), Predictor(fast, cache=None)
    emb = p_ref.embed(images[0])
    for kw in ({"points": [(250, 120)]}, {"box": (180, 60, 320, 190)},
               {"points": [(250, 120), (100, 50)], "labels": [1, 0]}):
        a, b = p_ref.predict(embedding=emb, **kw), p_fast.predict(embedding=emb, **kw)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
    if fast.decoder_parts:  # the prompt-independent part ran once for the 3 prompts
        assert len(fast._memo) == 1


@pytest.mark.parametrize("broken", [NEGATED, SHIFTED], ids=lambda v: v.kind)
def test_broken_variant_is_refused_and_the_original_is_used(model, images, broken):
    report = opt.optimize_model(model, images, variants=[broken], n_clicks=3, n_boxes=1)
    (res,) = report.results
    assert res.status == "refused"
    assert res.agreement is not None and not res.agreement.passed
    assert "original is used" in res.reason
    assert opt.load_optimized(model, [broken.kind]) is model
    with pytest.raises(opt.ModelError, match="refused"):
        opt.load_variant(model, broken.kind)
    # for diagnostics it can still be opened on purpose
    assert isinstance(opt.load_variant(model, broken.kind, require_passed=False),
                      opt.OptimizedEdgeSamModel)


def test_a_failing_builder_falls_back_with_its_reason(model, images):
    def boom(ctx):
        raise RuntimeError("no luck today")

    report = opt.optimize_model(model, images, variants=[opt.Variant("decoder-boom", "decoder",
                                                                     boom)])
    (res,) = report.results
    assert res.status == "failed" and "no luck today" in res.reason
    assert opt.load_optimized(model, ["decoder-boom"]) is model


def test_results_are_remembered_and_a_changed_source_is_checked_again(model, model_dir,
                                                                      images):
    calls = []

    def build(ctx):
        calls.append(ctx.source)
        return _copy_build(ctx)

    variant = opt.Variant("decoder-copy", "decoder", build)
    first = opt.optimize_model(model, images, variants=[variant], n_clicks=2, n_boxes=1)
    assert first.results[0].status == "enabled" and not first.results[0].cached
    again = opt.optimize_model(model, images, variants=[variant], n_clicks=2, n_boxes=1)
    assert again.results[0].cached and again.results[0].status == "enabled"
    assert len(calls) == 1
    assert again.results[0].agreement.mean_iou == first.results[0].agreement.mean_iou

    # a new version of the source file (same graph, another doc string): new SHA-256
    dec = onnx.load(str(model_dir / "dec.onnx"))
    dec.doc_string += " (re-exported)"
    onnx.save(dec, str(model_dir / "dec.onnx"))
    changed = EdgeSamModel(model_dir / "enc.onnx", model_dir / "dec.onnx", name="double")
    assert opt.find_variants(changed, ["decoder-copy"])["decoder-copy"].status == "missing"
    assert opt.load_optimized(changed, ["decoder-copy"]) is changed
    third = opt.optimize_model(changed, images, variants=[variant], n_clicks=2, n_boxes=1)
    assert not third.results[0].cached and len(calls) == 2
    assert third.results[0].folder.name == file_sha256(model_dir / "dec.onnx")


def test_a_record_from_another_onnxruntime_is_stale(model, images):
    res = opt.optimize_model(model, images, variants=["decoder-fast"], n_clicks=2,
                             n_boxes=1).results[0]
    path = res.folder / "decoder-fast.json"
    rec = json.loads(path.read_text())
    rec["onnxruntime"] = "0.0.1"
    path.write_text(json.dumps(rec))
    found = opt.find_variants(model, ["decoder-fast"])["decoder-fast"]
    assert found.status == "stale" and "onnxruntime 0.0.1" in found.reason
    assert opt.load_optimized(model) is model
    # a changed variant file is not trusted either
    rec["onnxruntime"] = opt._ort_version()
    path.write_text(json.dumps(rec))
    with open(res.folder / "decoder-fast.onnx", "ab") as fh:
        fh.write(b"\0")
    found = opt.find_variants(model, ["decoder-fast"])["decoder-fast"]
    assert found.status == "stale" and "changed" in found.reason
    # optimising again rebuilds and re-checks
    again = opt.optimize_model(model, images, variants=["decoder-fast"], n_clicks=2,
                               n_boxes=1).results[0]
    assert again.status == "enabled" and not again.cached


def test_read_only_model_folder_falls_back_to_the_user_cache(model, model_dir, images):
    # Block the folder beside the model: a file where the folder would go (works as root
    # too), and no write permission.
    (model_dir / opt.BESIDE_DIR).write_text("not a folder")
    os.chmod(model_dir, stat.S_IRUSR | stat.S_IXUSR)
    res = opt.optimize_model(model, images, variants=["decoder-fast"], n_clicks=2,
                             n_boxes=1).results[0]
    sha = file_sha256(model_dir / "dec.onnx")
    assert res.status == "enabled"
    assert res.folder == paths.cache_dir() / "optimized" / sha
    assert (res.folder / "decoder-fast.json").is_file()
    fast = opt.load_optimized(model)
    assert Path(fast.decoder_path).parent == res.folder


def test_missing_onnx_gives_a_clear_message(model, images, monkeypatch):
    built = opt.optimize_model(model, images, variants=["decoder-fast"], n_clicks=2,
                               n_boxes=1).results[0]
    monkeypatch.setitem(sys.modules, "onnx", None)  # "import onnx" now fails
    with pytest.raises(opt.OptimizationUnavailableError) as err:
        opt.optimize_model(model, images, variants=["decoder-int8"])
    msg = str(err.value)
    assert "onnx" in msg and "napari-edgesam[optimize]" in msg
    assert isinstance(err.value, ImportError)
    # using variants that are already built needs no onnx
    fast = opt.load_optimized(model)
    assert fast.decoder_path == built.path()
    Predictor(fast, cache=None).set_image(images[0])


def test_encoder_variant_gives_a_new_embedding_cache_identity(model, images):
    variant = opt.Variant("encoder-copy", "encoder", lambda c: _resave(c), split=False)
    res = opt.optimize_model(model, images, variants=[variant], n_clicks=2,
                             n_boxes=1).results[0]
    assert res.status == "enabled", res.reason
    fast = opt.load_optimized(model, ["encoder-copy"])
    assert fast.encoder_path == res.path()
    assert fast.identity == file_sha256(res.path()) != model.identity
    cache = EmbeddingCache(disk_dir=False)
    Predictor(model, cache=cache).embed(images[0])
    Predictor(fast, cache=cache).embed(images[0])
    assert cache.stats["puts"] == 2 and cache.stats["memory_hits"] == 0


def _resave(ctx):
    m = onnx.load(str(ctx.source))
    m.doc_string = "re-saved copy for the identity test"
    onnx.save(m, str(ctx.output))
    return {}


def test_builtin_int8_variants_run_on_the_test_double(model, images):
    """Mechanism only: calibration on the user's slices, quantisation, check, record."""
    report = opt.optimize_model(model, images, n_clicks=2, n_boxes=1)
    by_kind = {r.kind: r for r in report.results}
    assert set(by_kind) == {"decoder-int8", "decoder-batch", "encoder-fold", "encoder-int8"}
    # the test double has no parallel depthwise branches: no fold variant, and it says so
    fold = by_kind.pop("encoder-fold")
    assert fold.status == "skipped" and fold.reason.startswith("0 folds"), fold.reason
    # its hand-built mask branch cannot take a prompt batch: no batch variant, with the node
    batch = by_kind.pop("decoder-batch")
    assert batch.status == "skipped" and "t12_reshape" in batch.reason, batch.reason
    for r in by_kind.values():
        assert r.status in ("enabled", "refused"), r.reason
        assert (r.folder / f"{r.kind}.json").is_file()
        assert r.agreement is not None
    assert by_kind["encoder-int8"].details["calibration_slices"] == len(images)


def _upscaling_graph(cin=8, c1=5, c2=6, k=4, h=4, w=4, seed=0):
    """The SAM mask head pattern: ConvT 2x2/2, LayerNorm2d, GELU, ConvT, GELU, mask MatMul."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((cin, c1, 2, 2)).astype(np.float32),
        "b1": rng.standard_normal(c1).astype(np.float32),
        "w2": rng.standard_normal((c1, c2, 2, 2)).astype(np.float32),
        "b2": rng.standard_normal(c2).astype(np.float32),
        "lnw": rng.standard_normal((c1, 1, 1)).astype(np.float32),
        "lnb": rng.standard_normal((c1, 1, 1)).astype(np.float32),
        "two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32),
        "sqrt2": np.array(2**0.5, np.float32), "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "shape_r": np.array([1, c2, 16 * h * w], np.int64),
        "shape_o": np.array([1, k, 4 * h, 4 * w], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("ConvTranspose", ["x", "w1", "b1"], ["y1"], kernel_shape=[2, 2], strides=[2, 2]),
        n("ReduceMean", ["y1"], ["u"], axes=[1], keepdims=1),
        n("Sub", ["y1", "u"], ["d"]), n("Pow", ["d", "two"], ["d2"]),
        n("ReduceMean", ["d2"], ["v"], axes=[1], keepdims=1),
        n("Add", ["v", "eps"], ["ve"]), n("Sqrt", ["ve"], ["s"]), n("Div", ["d", "s"], ["nn"]),
        n("Mul", ["lnw", "nn"], ["nw"]), n("Add", ["nw", "lnb"], ["ln"]),
        n("Div", ["ln", "sqrt2"], ["g1"]), n("Erf", ["g1"], ["g2"]),
        n("Add", ["g2", "one"], ["g3"]), n("Mul", ["ln", "g3"], ["g4"]),
        n("Mul", ["g4", "half"], ["g5"]),
        n("ConvTranspose", ["g5", "w2", "b2"], ["y2"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Div", ["y2", "sqrt2"], ["h1"]), n("Erf", ["h1"], ["h2"]),
        n("Add", ["h2", "one"], ["h3"]), n("Mul", ["y2", "h3"], ["h4"]),
        n("Mul", ["h4", "half"], ["h5"]),
        n("Reshape", ["h5", "shape_r"], ["r"]), n("MatMul", ["hyper", "r"], ["mm"]),
        n("Reshape", ["mm", "shape_o"], ["masks"]),
    ]
    g = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w]),
         helper.make_tensor_value_info("hyper", TensorProto.FLOAT, [1, k, c2])],
        [helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, k, 4 * h, 4 * w])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_upscaling_rewrite_is_exact_up_to_rounding():
    import onnxruntime as ort

    model = _upscaling_graph()
    rewritten, detail = opt.rewrite_upscaling(model)
    assert "rewritten" in detail
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ConvTranspose" not in ops and "ReduceMean" not in ops
    assert "LayerNormalization" in ops
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 8, 4, 4)).astype(np.float32),
             "hyper": rng.standard_normal((1, 4, 6)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           .run(None, feeds)[0] for m in (model, rewritten)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-4, atol=1e-4)
    # a graph without the pattern is left alone, with the reason
    same, why = opt.rewrite_upscaling(onnx.load(str(TEST_DECODER)))
    assert "skipped" in why


def test_split_decoder_is_bit_exact_and_merges_back():
    import onnxruntime as ort

    model = onnx.load(str(TEST_DECODER))
    img, prm, boundary = opt.split_decoder(model)
    assert boundary and "point_coords" not in boundary
    merged = opt.merge_parts(img, prm, boundary)
    sess = {name: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            for name, m in (("full", model), ("img", img), ("prm", prm), ("merged", merged))}
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    prompts = {"point_coords": np.array([[[300.0, 200.0], [0.0, 0.0]]], np.float32),
               "point_labels": np.array([[1.0, -1.0]], np.float32)}
    full = sess["full"].run(None, {"image_embeddings": emb, **prompts})
    parts = dict(zip(boundary, sess["img"].run(boundary, {"image_embeddings": emb}),
                     strict=True))
    needed = {i.name for i in sess["prm"].get_inputs()}
    split = sess["prm"].run(None, {**{k: v for k, v in parts.items() if k in needed},
                                   **prompts})
    again = sess["merged"].run(None, {"image_embeddings": emb, **prompts})
    for a, b, c in zip(full, split, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("size", [(2048, 2048), (1500, 700), (300, 500), (2600, 1100)])
def test_block_postprocessing_equals_full_interpolation(size):
    """MaskUpsampler.mask (edge blocks only) == logits() > threshold, bit for bit."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(sum(size))
    up = MaskUpsampler(size)
    yy, xx = np.mgrid[:256, :256]
    cases = [
        (gaussian_filter(rng.standard_normal((256, 256)), 6) * 40).astype(np.float32),
        rng.standard_normal((256, 256)).astype(np.float32) * 5,
        (90 - np.hypot(yy - 128, xx - 120)).astype(np.float32),
        np.full((256, 256), 8.0, np.float32),
        np.where(rng.random((256, 256)) < 0.5, np.float32(1e-39), np.float32(-3.0)),
    ]
    for low in cases:
        for thr in (0.0, 1.0, -2.5):
            np.testing.assert_array_equal(up.mask(low, thr), up.logits(low) > thr)


def test_count_casts_in_float32_are_bit_identical():
    """Stability counts: Cast(bool -> int64) -> ReduceSum -> Cast(float) == float32 counts."""
    import onnxruntime as ort

    n = helper.make_node
    nodes = [
        n("Greater", ["x", "one"], ["gt"]), n("Greater", ["x", "minus"], ["gm"]),
        n("Cast", ["gt"], ["ci"], to=TensorProto.INT64),
        n("ReduceSum", ["ci", "axes"], ["si"], keepdims=0),
        n("Cast", ["si"], ["fi"], to=TensorProto.FLOAT),
        n("Cast", ["gm"], ["cj"], to=TensorProto.INT64),
        n("ReduceSum", ["cj", "axes"], ["sj"], keepdims=0),
        n("Cast", ["sj"], ["fj"], to=TensorProto.FLOAT),
        n("Div", ["fi", "fj"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1.0, np.float32), "minus"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    g = helper.make_graph(nodes, "counts",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 65536])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten, detail = opt.rewrite_count_casts(model)
    assert detail.startswith("2 int64 count")
    assert not any(nd.op_type == "Cast" and nd.attribute[0].i == TensorProto.INT64
                   for nd in rewritten.graph.node)
    x = {"x": (np.random.default_rng(0).standard_normal((1, 4, 65536)) * 3).astype(np.float32)}
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            .run(None, x)[0] for m in (model, rewritten))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(2048, 2048), (97, 131), (1500, 700), (1024, 1024)])
def test_preprocess_grey_fast_path_is_bit_identical(shape):
    """Grey slices are resized as one channel: same bytes as the RGB resize."""
    from PIL import Image

    from napari_edgesam.engine.contract import PIXEL_MEAN, PIXEL_STD
    from napari_edgesam.engine.transforms import preprocess, resized_shape

    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, shape, dtype=np.uint8)
    grey = np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    almost = grey.copy()
    almost[-1, -1, 2] ^= 1  # one coloured pixel: must take the RGB path
    for rgb in (grey, almost):
        nh, nw = resized_shape(*shape)
        res = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
        ref = np.zeros((1, 3, 1024, 1024), np.float32)
        mean = np.asarray(PIXEL_MEAN, np.float32)
        inv = np.float32(1) / np.asarray(PIXEL_STD, np.float32)
        for c in range(3):
            ref[0, c, :nh, :nw] = (res[:, :, c].astype(np.float32) - mean[c]) * inv[c]
        tensor, size = preprocess(rgb)
        assert size == (nh, nw)
        assert tensor.tobytes() == ref.tobytes()
    assert preprocess(g)[0].tobytes() == preprocess(grey)[0].tobytes()  # 2-D grey input


def test_spatial_mean_becomes_global_average_pool():
    import onnxruntime as ort

    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
         helper.make_node("ReduceMean", ["x"], ["c"], axes=[1], keepdims=1),
         helper.make_node("Mul", ["m", "c"], ["y"])],
        "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten, n = opt.rewrite_global_pool(model)
    assert n == 1  # the channel mean is left alone
    assert [nd.op_type for nd in rewritten.graph.node].count("GlobalAveragePool") == 1
    x = {"x": np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)}
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            .run(None, x)[0] for m in (model, rewritten))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
