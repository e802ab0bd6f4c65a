"""The prompt-batched decoder (issue 17, point 5): the rewrite, its check, its use.

Graph surgery is tested on ``tests/models/published_style_decoder.onnx``, a small random-
weight decoder exported like the published file (NOT EdgeSAM; see
tests/models/make_published_style_decoder.py): the rewritten graph must give, row by row,
what the original gives for each prompt set alone (prompt sets of unequal length padded
with the contract's -1 points), and automatic segmentation must run one ``session.run`` per
batch of seeds. The hand-built test double and a graph that moves the batch axis must fall
back, saying why.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import MODELS, TEST_DECODER, TEST_ENCODER, disc_image  # noqa: E402

from napari_edgesam.engine import EdgeSamModel, Predictor  # noqa: E402
from napari_edgesam.engine import optimize as opt  # noqa: E402
from napari_edgesam.engine.mask_choice import stability_scores  # noqa: E402
from napari_edgesam.engine.optimize.prompt_batch import (  # noqa: E402
    PromptBatchUnavailable,
    batch_prompts,
)
from napari_edgesam.workflows.automatic import AutoParams, segment_slice  # noqa: E402

FIXTURE = MODELS / "published_style_decoder.onnx"


class CountingSession:
    """An onnxruntime session whose ``run`` calls are counted."""

    def __init__(self, session):
        self._s = session
        self.runs = 0
        self.batch_sizes: list[int] = []

    def run(self, names, feeds, *args):
        self.runs += 1
        self.batch_sizes.append(int(feeds["point_labels"].shape[0]))
        return self._s.run(names, feeds, *args)

    def __getattr__(self, name):
        return getattr(self._s, name)


def _session(model_or_path):
    data = model_or_path if isinstance(model_or_path, bytes) else None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data or str(model_or_path), so,
                                providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def batched():
    model, summary = batch_prompts(onnx.load(str(FIXTURE)))
    return _session(model.SerializeToString()), summary


@pytest.fixture(scope="module")
def original():
    return _session(FIXTURE)


def _prompts(rng, b):
    """``b`` prompt sets of unequal lengths (1-4 real points: clicks, negatives, boxes),
    padded with (0, 0) label -1 points to one length, as the contract's padding label."""
    sets = []
    for k in range(b):
        n = 1 + k % 4
        pts = rng.uniform(0, 1023, (n, 2))
        labs = rng.choice([0.0, 1.0], n)
        labs[0] = 1.0
        if k % 3 == 2 and n >= 2:
            labs[-2:] = (2.0, 3.0)
        sets.append((pts, labs))
    n_max = max(len(p) for p, _ in sets) + 1
    coords = np.zeros((b, n_max, 2), np.float32)
    labels = np.full((b, n_max), -1.0, np.float32)
    for k, (p, lab) in enumerate(sets):
        coords[k, :len(p)] = p
        labels[k, :len(lab)] = lab
    return coords, labels


def test_fixture_is_exported_in_the_published_style():
    m = onnx.load(str(FIXTURE))
    assert FIXTURE.stat().st_size < 400_000
    assert "NOT EdgeSAM" in m.doc_string
    from napari_edgesam.engine.optimize.graph_matching import _Graph

    g = _Graph(m)
    token_concats = [n for n in m.graph.node if n.op_type == "Concat"
                     and any(g.const(i) is not None and g.const(i).shape[:2] == (1, 5)
                             for i in n.input)]
    assert token_concats, "no [1, 5, C] output-token constant concatenated with the prompts"
    batch1_reshapes = [n for n in m.graph.node if n.op_type == "Reshape"
                       and g.const(n.input[1]) is not None and g.const(n.input[1])[0] == 1]
    assert len(batch1_reshapes) >= 3
    assert [n.op_type for n in m.graph.node if "scores" in n.output] == ["Div"]
    # the contract's signature, so the engine loads it as a decoder
    model = EdgeSamModel(TEST_ENCODER, FIXTURE, num_threads=1).load()
    assert model.session("decoder").get_inputs()[0].shape == [1, 256, 64, 64]


@pytest.mark.parametrize("b", [1, 3, 16])
def test_batched_graph_equals_one_prompt_set_per_run(batched, original, b):
    sess, _ = batched
    rng = np.random.default_rng(b)
    emb = rng.standard_normal((1, 256, 64, 64), dtype=np.float32)
    coords, labels = _prompts(rng, b)
    scores, masks = sess.run(["scores", "masks"], {"image_embeddings": emb,
                                                   "point_coords": coords,
                                                   "point_labels": labels})
    assert scores.shape == (b, 4) and masks.shape == (b, 4, 256, 256)
    ious = []
    for k in range(b):
        s1, m1 = original.run(["scores", "masks"], {"image_embeddings": emb,
                                                    "point_coords": coords[k:k + 1],
                                                    "point_labels": labels[k:k + 1]})
        np.testing.assert_allclose(masks[k], m1[0], atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(scores[k], s1[0], atol=1e-6, equal_nan=True)
        for j in range(4):
            a, c = masks[k, j] > 0, m1[0, j] > 0
            union = np.count_nonzero(a | c)
            ious.append(1.0 if union == 0 else np.count_nonzero(a & c) / union)
    th = opt.Thresholds()
    assert np.mean(ious) >= th.mean_iou and min(ious) >= th.min_iou


def test_rewrite_fixes_the_batch_one_constants_and_shares_the_image_side(batched):
    _, summary = batched
    assert summary.expanded, "the output-token Concat was not expanded to the batch"
    # the upscaling's input and the mask product's output; the attention's batch-1
    # Reshapes of image-side tensors stay as they are (those tensors stay batch 1)
    assert len(summary.reshapes) >= 2
    assert summary.shared_nodes > 0 and summary.batched_nodes > 0
    m, _ = batch_prompts(onnx.load(str(FIXTURE)))
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in m.graph.input}
    assert dims["image_embeddings"] == [1, 256, 64, 64]  # not repeated by the caller
    assert dims["point_coords"][0] == "prompt_batch" and dims["point_labels"][0] == "prompt_batch"


def _transposed_prompts(path):
    """The fixture with point_coords taken through Transpose(1, 0, 2) twice: the same
    function at batch 1, but the batch axis moves in between."""
    from onnx import helper

    m = onnx.load(str(path))
    for n in m.graph.node:
        for j, i in enumerate(n.input):
            if i == "point_coords":
                n.input[j] = "coords_back"
    m.graph.node.insert(0, helper.make_node("Transpose", ["coords_t"], ["coords_back"],
                                            perm=[1, 0, 2], name="back"))
    m.graph.node.insert(0, helper.make_node("Transpose", ["point_coords"], ["coords_t"],
                                            perm=[1, 0, 2], name="swap_batch"))
    return m


def test_a_graph_that_does_not_match_falls_back_with_the_reason():
    with pytest.raises(PromptBatchUnavailable, match="swap_batch.*Transpose.*moves the "
                                                     "prompt batch axis"):
        batch_prompts(_transposed_prompts(FIXTURE))
    assert issubclass(PromptBatchUnavailable, opt.OptimizationUnavailableError)
    m = onnx.load(str(FIXTURE))
    m.graph.input[1].name = "coords"
    with pytest.raises(PromptBatchUnavailable, match="no input 'point_coords'"):
        batch_prompts(m)


def test_the_test_double_falls_back_with_the_reason(tmp_path):
    """The hand-built test double squeezes the prompt axis away: no variant, and why."""
    with pytest.raises(PromptBatchUnavailable) as err:
        batch_prompts(onnx.load(str(TEST_DECODER)))
    assert "node" in str(err.value) and "one per decoder call" in str(err.value)
    shutil.copy(TEST_ENCODER, tmp_path / "enc.onnx")
    shutil.copy(TEST_DECODER, tmp_path / "dec.onnx")
    model = EdgeSamModel(tmp_path / "enc.onnx", tmp_path / "dec.onnx", num_threads=1)
    images = [disc_image((120, 160), (60, 80), 25)]
    (res,) = opt.optimize_model(model, images, variants=["decoder-batch"], n_clicks=2,
                                n_boxes=1).results
    assert res.status == "skipped" and res.reason == str(err.value)
    assert opt.batch_decoder_for(model) is None


@pytest.fixture
def fixture_model(tmp_path):
    shutil.copy(TEST_ENCODER, tmp_path / "enc.onnx")
    shutil.copy(FIXTURE, tmp_path / "dec.onnx")
    return EdgeSamModel(tmp_path / "enc.onnx", tmp_path / "dec.onnx", num_threads=1)


def _scene():
    img = np.full((256, 256), 20, np.uint8)
    yy, xx = np.mgrid[:256, :256]
    for r, c in [(50, 60), (60, 190), (180, 70), (190, 200), (128, 128)]:
        img[(yy - r) ** 2 + (xx - c) ** 2 < 22 ** 2] = 200
    return img


def test_variant_is_checked_and_found(fixture_model):
    report = opt.optimize_model(fixture_model, [_scene()], variants=["decoder-batch"],
                                n_clicks=6, n_boxes=3)
    (res,) = report.results
    assert res.role == "prompt-batch"
    assert res.status == "enabled", res.reason
    # 9 sampled prompts and 5 + 3 of other lengths, against one-by-one runs
    assert res.agreement.n_prompts == 17 and res.agreement.min_iou >= 0.99
    assert res.details["reshapes"] and res.details["expanded"]
    # an optimised variant like the others: only the optimised model uses it
    assert opt.batch_decoder_for(fixture_model) is None
    fast = opt.load_optimized(fixture_model)
    assert isinstance(fast, opt.OptimizedEdgeSamModel) and list(fast.variants) == [
        "decoder-batch"]
    bd = opt.batch_decoder_for(fast)
    assert isinstance(bd, opt.BatchDecoder) and bd.path == res.path("model")
    # not in the way of the decoder variants: the original files run the clicks
    assert fast.encoder_path == fixture_model.encoder_path and fast.decoder_parts is None
    assert fast.decoder_path == fixture_model.decoder_path
    assert fast.identity == fixture_model.identity  # the same embeddings in the cache


def test_predictor_batch_equals_decode_low_res(fixture_model):
    opt.optimize_model(fixture_model, [_scene()], variants=["decoder-batch"], n_clicks=2,
                       n_boxes=1)
    bd = opt.batch_decoder_for(opt.load_optimized(fixture_model))
    pred = Predictor(fixture_model, cache=None)
    emb = pred.embed(_scene())
    prompts = [{"points": [(60, 50)]}, {"box": (30, 30, 90, 80)},
               {"points": [(190, 60), (60, 50)], "labels": [1, 0]},
               {"points": [(128, 128)]}, {"points": [(70, 180)], "box": (40, 150, 100, 210)}]
    # 20 prompt sets of lengths 2 and 3, and one of length 4 (alone: the plain decoder)
    prompts = prompts * 4 + [{"points": [(60, 50), (190, 60), (128, 128)]}]
    bd._session = counting = CountingSession(bd.session)
    fixture_model.session("decoder")
    fixture_model._sessions["decoder"] = single = CountingSession(
        fixture_model._sessions["decoder"])
    got = pred.decode_low_res_batch(emb, prompts, batch_decoder=bd, batch_size=6)
    # lengths 2 (12 sets: 2 runs of 6), 3 (8 sets: 6 + 2), 4 (1 set, one plain run)
    assert counting.runs == 4 and sorted(counting.batch_sizes) == [2, 6, 6, 6]
    assert single.runs == 1
    for p, (index, scores, logits, file_scores) in zip(prompts, got, strict=True):
        i1, s1, l1, f1 = pred.decode_low_res(emb, **p)
        assert index == i1
        np.testing.assert_allclose(logits, l1, atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(scores, stability_scores(l1), atol=0.01, equal_nan=True)
    assert pred.decode_low_res_batch(emb, prompts[:2])[1][0] == \
        pred.decode_low_res(emb, **prompts[1])[0]


def test_automatic_segmentation_runs_one_session_run_per_batch(fixture_model):
    opt.optimize_model(fixture_model, [_scene()], variants=["decoder-batch"], n_clicks=2,
                       n_boxes=1)
    fast = opt.load_optimized(fixture_model)  # the user asked for the optimised variants
    bd = opt.batch_decoder_for(fast)
    assert bd is not None
    bd._session = batch_runs = CountingSession(bd.session)
    fast.session("decoder")
    fast._sessions["decoder"] = single_runs = CountingSession(fast._sessions["decoder"])
    pred = Predictor(fast, cache=None)
    params = AutoParams(object_size=40, seeds="grid", grid_spacing=24, split_merged=False,
                        min_stability=0.0, min_foreground=0.0)
    res = segment_slice(pred, _scene(), params=params)  # "auto": the checked variant
    n_seeds = len(res.seeds)
    assert n_seeds > 60
    assert single_runs.runs == 0
    assert 1 <= batch_runs.runs <= math.ceil(n_seeds / 16)
    # every prediction used came from a batch (seeds covered meanwhile leave theirs unused)
    assert res.decoder_calls <= sum(batch_runs.batch_sizes)
    assert max(batch_runs.batch_sizes) == 16
    # one by one: the same objects, one run per seed
    ref = segment_slice(pred, _scene(), params=params, batch_decoder=None)
    assert single_runs.runs == ref.decoder_calls == res.decoder_calls
    assert ref.n_objects == res.n_objects
    assert np.mean(ref.labels == res.labels) > 0.99


def test_automatic_refinements_are_batched_too(fixture_model):
    """With split_merged, each seed whose first mask covers distant seeds is predicted again
    with them as negatives; those prompt sets depend only on that seed's first mask, so they
    are decoded in batches as well (one run per prompt length)."""
    opt.optimize_model(fixture_model, [_scene()], variants=["decoder-batch"], n_clicks=2,
                       n_boxes=1)
    fast = opt.load_optimized(fixture_model)
    bd = opt.batch_decoder_for(fast)
    bd._session = batch_runs = CountingSession(bd.session)
    fast.session("decoder")
    fast._sessions["decoder"] = single_runs = CountingSession(fast._sessions["decoder"])
    pred = Predictor(fast, cache=None)
    params = AutoParams(object_size=40, seeds="grid", grid_spacing=32, min_stability=0.0,
                        min_foreground=0.0)
    res = segment_slice(pred, _scene(), params=params)
    batched_sets, singles = sum(batch_runs.batch_sizes), single_runs.runs
    refinements = res.decoder_calls - len(res.seeds)
    assert refinements > 16  # the random-weight masks cover distant seeds
    assert batch_runs.runs + singles < res.decoder_calls / 3
    ref = segment_slice(pred, _scene(), params=params, batch_decoder=None)
    assert single_runs.runs - singles == ref.decoder_calls == res.decoder_calls
    assert batched_sets + singles >= res.decoder_calls
    assert ref.n_objects == res.n_objects
    assert np.mean(ref.labels == res.labels) > 0.99


def test_the_plain_model_never_batches_even_with_a_passing_variant(fixture_model,
                                                                   monkeypatch):
    """decoder-batch is an optimised variant: without the "optimised" box / --optimized
    (the plain model), Segment all runs one decoder run per seed although the variant
    passed its check here."""
    from napari_edgesam.engine.optimize import prompt_batch_runtime

    report = opt.optimize_model(fixture_model, [_scene()], variants=["decoder-batch"],
                                n_clicks=2, n_boxes=1)
    assert report.results[0].status == "enabled"
    batched = []
    monkeypatch.setattr(prompt_batch_runtime.BatchDecoder, "decode",
                        lambda self, *a: batched.append(a) or (_ for _ in ()).throw(
                            AssertionError("batched decoder used")))
    fixture_model.session("decoder")
    fixture_model._sessions["decoder"] = single_runs = CountingSession(
        fixture_model._sessions["decoder"])
    params = AutoParams(object_size=40, seeds="grid", grid_spacing=32, split_merged=False,
                        min_stability=0.0, min_foreground=0.0)
    res = segment_slice(Predictor(fixture_model, cache=None), _scene(), params=params)
    assert batched == [] and single_runs.runs == res.decoder_calls > 30
