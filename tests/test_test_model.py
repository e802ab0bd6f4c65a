"""Tests of the test-double ONNX models in tests/models (NOT EdgeSAM).

They check that the committed files honour the published EdgeSAM ONNX contract
(names, dtypes, shapes, dynamic point count) and that their hand-written
computation behaves as documented in tests/models/README.md, with real pixel
positions, so that plugin tests built on them mean something.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import onnx
import onnxruntime as ort

MODELS = Path(__file__).resolve().parent / "models"
ENC = MODELS / "test_encoder.onnx"
DEC = MODELS / "test_decoder.onnx"
DEC_IOU = MODELS / "test_decoder_iou.onnx"

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
BRIGHT, DARK = 200.0, 30.0
PAD = (0.0, 0.0, -1.0)


def _session(path_or_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def enc():
    return _session(ENC)


@pytest.fixture(scope="module")
def dec():
    return _session(DEC)


@pytest.fixture(scope="module")
def dec_iou():
    return _session(DEC_IOU)


def _to_input(grey_1024: np.ndarray) -> np.ndarray:
    """Grey 1024x1024 image on the 0..255 scale -> normalised NCHW input."""
    rgb = np.repeat(grey_1024[..., None].astype(np.float32), 3, axis=-1)
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def _embed(enc, grey_1024):
    return enc.run(None, {"image": _to_input(grey_1024)})[0]


def _decode(dec, emb, points):
    """points: list of (x, y, label) in the 1024 frame -> (scores[4], masks[4,256,256])."""
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    scores, masks = dec.run(
        None,
        {
            "image_embeddings": emb,
            "point_coords": pts[None, :, :2].copy(),
            "point_labels": pts[None, :, 2].copy(),
        },
    )
    assert scores.shape == (1, 4) and masks.shape == (1, 4, 256, 256)
    return scores[0], masks[0]


YY, XX = np.mgrid[:1024, :1024]


def _ellipse(cx, cy, rx, ry):
    """Boolean 1024x1024 ellipse; cx, rx along columns (x), cy, ry along rows (y)."""
    return ((XX - cx) / rx) ** 2 + ((YY - cy) / ry) ** 2 < 1.0


def _image(fg):
    return np.where(fg, BRIGHT, DARK).astype(np.float32)


def _grid_truth(fg):
    """Ground truth in the 256 grid: pixels more than half covered."""
    return fg.reshape(256, 4, 256, 4).mean(axis=(1, 3)) > 0.5


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _grid_pos(v):
    """1024-frame coordinate -> grid pixel-index coordinate."""
    return (v + 0.5) / 4.0 - 0.5


# ---------------------------------------------------------------- signatures


def _dims(vi):
    return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("path", [ENC, DEC, DEC_IOU], ids=lambda p: p.name)
def test_files_are_valid_small_and_marked(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version in (8, 9)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert path.stat().st_size < 300_000
    props = {p.key: p.value for p in model.metadata_props}
    assert props["test_double"] == "true"
    assert "NOT EdgeSAM" in model.doc_string


def test_encoder_signature(enc):
    model = onnx.load(str(ENC))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and _dims(inp) == [1, 3, 1024, 1024]
    assert out.name == "image_embeddings" and _dims(out) == [1, 256, 64, 64]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [(i.name, i.type, i.shape) for i in enc.get_inputs()] == [
        ("image", "tensor(float)", [1, 3, 1024, 1024])
    ]
    assert [(o.name, o.type, o.shape) for o in enc.get_outputs()] == [
        ("image_embeddings", "tensor(float)", [1, 256, 64, 64])
    ]


@pytest.mark.parametrize("path", [DEC, DEC_IOU], ids=lambda p: p.name)
def test_decoder_signature(path):
    model = onnx.load(str(path))
    ins = {i.name: i for i in model.graph.input}
    outs = {o.name: o for o in model.graph.output}
    assert list(ins) == ["image_embeddings", "point_coords", "point_labels"]
    assert list(outs) == ["scores", "masks"]
    assert _dims(ins["image_embeddings"]) == [1, 256, 64, 64]
    assert _dims(ins["point_coords"]) == [1, "num_points", 2]
    assert _dims(ins["point_labels"]) == [1, "num_points"]
    assert _dims(outs["scores"]) == [1, 4]
    assert _dims(outs["masks"]) == [1, 4, 256, 256]
    for vi in [*ins.values(), *outs.values()]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    sess = _session(path)
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 3
    # Like the real graph, the first thing done to the coordinates is (c + 0.5) / 1024.
    (add,) = [n for n in model.graph.node if "point_coords" in n.input]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert add.op_type == "Add" and float(inits[add.input[1]]) == 0.5
    (div,) = [n for n in model.graph.node if add.output[0] in n.input]
    assert div.op_type == "Div" and float(inits[div.input[1]]) == 1024.0


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_decoder_accepts_any_point_count(enc, dec, n):
    emb = _embed(enc, np.full((1024, 1024), DARK, np.float32))
    rng = np.random.default_rng(n)
    pts = [(*rng.uniform(0, 1024, 2), float(rng.choice([0, 1, -1]))) for _ in range(n)]
    scores, masks = _decode(dec, emb, pts)
    assert np.isfinite(masks).all()


@pytest.mark.parametrize(
    "path,op", [(DEC, "Div"), (DEC_IOU, "Gemm")], ids=["stability", "iou"]
)
def test_scores_producer_node(path, op):
    model = onnx.load(str(path))
    (producer,) = [n for n in model.graph.node if "scores" in n.output]
    assert producer.op_type == op


def test_regeneration_is_byte_identical():
    spec = importlib.util.spec_from_file_location("make_test_model", MODELS / "make_test_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, model in mod.build_all().items():
        assert model.SerializeToString(deterministic=True) == (MODELS / name).read_bytes(), name


# ---------------------------------------------------------------- image round trip


def test_encoder_decoder_round_trip_recovers_image(enc):
    model = onnx.load(str(DEC))
    (d2s,) = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in d2s.attribute}
    assert attrs == {"blocksize": 16, "mode": b"DCR"}
    for name in ("grey_1024", "grey_256"):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = _session(model.SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 1024, 1024)).astype(np.float32)
    emb = enc.run(None, {"image": x})[0]
    out = sess.run(
        ["grey_1024", "grey_256"],
        {
            "image_embeddings": emb,
            "point_coords": np.zeros((1, 1, 2), np.float32),
            "point_labels": np.ones((1, 1), np.float32),
        },
    )
    grey = x.mean(axis=1)[0]
    np.testing.assert_allclose(out[0][0, 0], grey, atol=1e-6)  # DepthToSpace inverts exactly
    pooled = grey.reshape(256, 4, 256, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out[1], pooled, atol=1e-5)
    # and the embedding is an exact rearrangement (no arithmetic on the values)
    assert np.array_equal(np.sort(emb.ravel()), np.sort(x.mean(axis=1, dtype=np.float32).ravel()))


# ---------------------------------------------------------------- clicks


def test_click_position_is_x_column_y_row(enc, dec):
    """On a uniform image mask 0 is a disc around the click: its centroid is the click."""
    emb = _embed(enc, np.full((1024, 1024), BRIGHT, np.float32))
    x, y = 700.0, 300.0
    _, masks = _decode(dec, emb, [(x, y, 1), PAD])
    for k in range(4):
        rows, cols = np.nonzero(masks[k] > 0)
        if k < 3:  # mask 3 is clipped by the image border
            assert abs(rows.mean() - _grid_pos(y)) < 0.3
            assert abs(cols.mean() - _grid_pos(x)) < 0.3
    # nearest grid pixel to the click is the peak region; the mirrored point is far outside
    assert masks[0, int(round(_grid_pos(y))), int(round(_grid_pos(x)))] > 0
    assert (masks[:, int(_grid_pos(x)), int(_grid_pos(y))] < 0).all()
    # mask areas grow with the mask index (reach 12, 24, 48, 96 grid px + slack)
    areas = [(masks[k] > 0).sum() for k in range(4)]
    assert areas == sorted(areas) and len(set(areas)) == 4


def test_point_logits_match_documented_formula(enc, dec):
    """Uniform image, one click: logits are exactly the documented distance term.

    Checks the (x + 0.5) / 1024 * 256 - 0.5 grid convention to well below a grid pixel.
    """
    emb = _embed(enc, np.full((1024, 1024), BRIGHT, np.float32))
    x, y = 700.3, 299.1
    _, masks = _decode(dec, emb, [(x, y, 1), PAD])
    gy, gx = np.mgrid[:256, :256]
    d = np.hypot(gx - ((x + 0.5) / 1024 * 256 - 0.5), gy - ((y + 0.5) / 1024 * 256 - 0.5))
    for k, (tol, radius) in enumerate(zip((0.25, 0.4, 0.6, 0.9), (12, 24, 48, 96))):
        raw = 8.0 * tol - 1.0 * np.maximum(d - radius, 0.0)
        np.testing.assert_allclose(masks[k], 20.0 * np.tanh(raw / 20.0), atol=2e-3)


def test_click_in_off_centre_ellipse(enc, dec):
    # tall ellipse (rows) in the upper right; its x/y mirror image is dark
    fg = _ellipse(cx=700, cy=300, rx=60, ry=140)
    emb = _embed(enc, _image(fg))
    truth = _grid_truth(fg)
    scores, masks = _decode(dec, emb, [(700, 300, 1), PAD])
    ious = [_iou(masks[k] > 0, truth) for k in range(4)]
    assert max(ious) >= 0.9
    best = masks[int(np.nanargmax(scores))] > 0  # stability-based choice also works
    assert _iou(best, truth) >= 0.9
    rows, cols = np.nonzero(best)
    t_rows, t_cols = np.nonzero(truth)
    assert abs(rows.min() - t_rows.min()) <= 1 and abs(rows.max() - t_rows.max()) <= 1
    assert abs(cols.min() - t_cols.min()) <= 1 and abs(cols.max() - t_cols.max()) <= 1
    assert rows.max() - rows.min() > 2 * (cols.max() - cols.min())  # tall, not wide
    # a click with x and y swapped lands on dark background: masks cover no ellipse pixel
    _, swapped = _decode(dec, emb, [(300, 700, 1), PAD])
    assert not ((swapped > 0) & truth).any()


@pytest.mark.parametrize("radius_grid", [5, 12, 30, 60])
def test_click_in_discs_of_many_sizes(enc, dec, radius_grid):
    fg = _ellipse(cx=612, cy=420, rx=4 * radius_grid, ry=4 * radius_grid)
    emb = _embed(enc, _image(fg))
    truth = _grid_truth(fg)
    scores, masks = _decode(dec, emb, [(612, 420, 1), PAD])
    ious = [_iou(masks[k] > 0, truth) for k in range(4)]
    assert max(ious) >= 0.9, ious
    # graded logits, within the documented range
    assert masks.min() >= -20.0 - 1e-3 and masks.max() <= 20.0
    assert len(np.unique(np.round(masks, 2))) > 20


def test_four_masks_clearly_differ(enc, dec):
    fg = _ellipse(cx=512, cy=512, rx=240, ry=240)
    emb = _embed(enc, _image(fg))
    scores, masks = _decode(dec, emb, [(512, 512, 1), PAD])
    binary = masks > 0
    areas = binary.sum(axis=(1, 2))
    assert np.all(np.diff(areas) > 0.1 * areas[-1]), areas
    for i in range(4):
        for j in range(i + 1, 4):
            assert _iou(binary[i], binary[j]) < 0.9
    assert len(set(np.round(scores, 4))) == 4


def test_negative_click_removes_its_neighbourhood(enc, dec):
    fg = _ellipse(cx=512, cy=512, rx=300, ry=300)
    emb = _embed(enc, _image(fg))
    _, before = _decode(dec, emb, [(512, 512, 1), PAD])
    nx, ny = 680.0, 440.0  # inside the disc, right of and above the positive click
    _, after = _decode(dec, emb, [(512, 512, 1), (nx, ny, 0), PAD])
    gy, gx = np.mgrid[:256, :256]
    d = np.hypot(gx - _grid_pos(nx), gy - _grid_pos(ny))
    near, far = d <= 8, d > 40
    assert (before[3][near] > 0).all()
    assert (after[:, near] < 0).all()
    np.testing.assert_allclose(after[:, far], before[:, far], atol=1e-3)
    # the mirrored location (x/y swapped) is untouched
    dm = np.hypot(gx - _grid_pos(ny), gy - _grid_pos(nx))
    np.testing.assert_allclose(after[:, dm <= 8], before[:, dm <= 8], atol=1e-3)


# ---------------------------------------------------------------- boxes


def test_box_around_disc(enc, dec):
    fg = _ellipse(cx=640, cy=360, rx=100, ry=60)  # wide ellipse
    other = _ellipse(cx=200, cy=800, rx=80, ry=80)  # a second object outside the box
    emb = _embed(enc, _image(fg | other))
    truth = _grid_truth(fg)
    box = [(520, 280, 2), (760, 440, 3)]
    scores, masks = _decode(dec, emb, box)
    assert _iou(masks[0] > 0, truth) >= 0.9
    assert not (masks[:, _grid_truth(other)] > 0).any()
    # the padding stand-in does not apply with a box: adding a -1 point changes nothing
    _, with_pad = _decode(dec, emb, [*box, PAD])
    np.testing.assert_array_equal(with_pad, masks)


def test_box_edges_exact(enc, dec):
    """Bright right half; box x 400..800, y 200..300 -> mask 0 = rows 50..74, cols 150..199."""
    emb = _embed(enc, _image(XX >= 600))
    _, masks = _decode(dec, emb, [(400, 200, 2), (800, 300, 3)])
    rows, cols = np.nonzero(masks[0] > 0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (50, 74, 150, 199)
    assert (masks[0] > 0).sum() == 25 * 50
    # outside the box: strongly negative
    assert masks[:, :40].max() < -19


def test_box_with_clicks(enc, dec):
    emb = _embed(enc, np.full((1024, 1024), DARK, np.float32))  # featureless
    box = [(200, 200, 2), (800, 800, 3)]
    _, plain = _decode(dec, emb, box)
    assert np.abs(plain[0][50:200, 50:200]).max() < 1e-3  # G - m = 0 inside the box
    assert plain[:, :40].max() < -19  # outside the box
    _, pos = _decode(dec, emb, [*box, (300, 600, 1)])
    r, c = round(_grid_pos(600)), round(_grid_pos(300))
    assert pos[0, r, c] > 5  # positive click raises logits near it
    assert abs(pos[0, c, r]) < 1e-3  # ... not at the x/y-swapped place
    fg = _ellipse(cx=500, cy=500, rx=200, ry=200)
    emb = _embed(enc, _image(fg))
    _, neg = _decode(dec, emb, [*box, (500, 500, 0)])
    gy, gx = np.mgrid[:256, :256]
    near = np.hypot(gx - _grid_pos(500), gy - _grid_pos(500)) <= 8
    assert (neg[:, near] < 0).all()
    assert (neg[0][_grid_truth(fg) & ~near] > 0).mean() > 0.9


# ---------------------------------------------------------------- padding, scores


def test_missing_padding_point_changes_output(enc, dec):
    fg = _ellipse(cx=700, cy=300, rx=60, ry=140)
    emb = _embed(enc, _image(fg))
    _, with_pad = _decode(dec, emb, [(700, 300, 1), PAD])
    _, without = _decode(dec, emb, [(700, 300, 1)])
    np.testing.assert_allclose(without, with_pad - 3.0, atol=1e-4)
    # the padding point's coordinates are irrelevant, only its label counts
    _, elsewhere = _decode(dec, emb, [(700, 300, 1), (900, 50, -1)])
    np.testing.assert_allclose(elsewhere, with_pad, atol=1e-6)


def test_stability_scores_and_nan(enc, dec, dec_iou):
    fg = _ellipse(cx=700, cy=300, rx=60, ry=140)
    emb = _embed(enc, _image(fg))
    scores, masks = _decode(dec, emb, [(700, 300, 1), PAD])
    expected = (masks > 1).sum(axis=(1, 2)) / (masks > -1).sum(axis=(1, 2))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # degenerate: a lone negative click -> every logit <= -1 -> 0/0 -> NaN
    scores, masks = _decode(dec, emb, [(100, 100, 0), PAD])
    assert (masks <= -1).all()
    assert np.isnan(scores).all()
    # the IoU-head double gives finite, meaningless numbers instead
    iou_scores, iou_masks = _decode(dec_iou, emb, [(100, 100, 0), PAD])
    assert np.isfinite(iou_scores).all()
    np.testing.assert_array_equal(iou_masks, masks)


def test_iou_decoder_same_masks_different_scores(enc, dec, dec_iou):
    fg = _ellipse(cx=700, cy=300, rx=60, ry=140)
    emb = _embed(enc, _image(fg))
    pts = [(700, 300, 1), (650, 500, 0), PAD]
    s1, m1 = _decode(dec, emb, pts)
    s2, m2 = _decode(dec_iou, emb, pts)
    np.testing.assert_array_equal(m1, m2)
    assert not np.allclose(s1, s2)
