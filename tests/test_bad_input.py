"""Bad input gets a specific, clear error, and nothing is lost."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from conftest import TEST_DECODER, TEST_ENCODER, disc_image, iou

from napari_edgesam.engine import (
    EdgeSamModel,
    IntensityMapping,
    InvalidInputError,
    ModelError,
    ModelNotAvailableError,
    ModelSignatureError,
    mapping_from_percentiles,
)
from napari_edgesam.engine.predictor import prepare_prompts
from napari_edgesam.engine.session import resolve_providers


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((2, 3, 4, 5)), "4D"),
        (np.zeros((10, 10, 5)), "pick one channel"),
        (np.zeros((0, 10)), "too small"),
        (np.zeros((1, 1)), "too small"),
        (np.zeros((1, 5000)), "too small"),
        (np.zeros((2, 5000)), "too elongated"),
        (np.full((20, 20), np.nan, np.float32), "no finite values"),
        (np.zeros((5,)), "1D"),
        (np.zeros((10, 10), dtype=complex), "not a real number"),
        (np.array([["a", "b"], ["c", "d"]]), "not a real number"),
    ],
    ids=["4d", "5-channels", "empty", "1-pixel", "1-row", "elongated", "nan-only", "1d",
         "complex", "strings"],
)
def test_bad_images(predictor, image, message):
    with pytest.raises(InvalidInputError, match=message):
        predictor.set_image(image)


def test_bad_image_keeps_previous_embedding(predictor):
    img, _ = disc_image((100, 100), (50, 50), 10)
    emb = predictor.set_image(img)
    with pytest.raises(InvalidInputError):
        predictor.set_image(np.zeros((1, 1)))
    assert predictor.embedding is emb


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "no prompt"),
        ({"points": [(300, 10)]}, "outside the 200 x 100"),
        ({"points": [(-3, 10)]}, "outside"),
        ({"points": [(10, 100)]}, "outside"),  # y == H is one row past the last
        ({"points": [(np.nan, 10)]}, "not finite"),
        ({"points": [(10, 10)], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [(10, 10)], "labels": [2]}, "must be 1 .positive. or 0"),
        ({"points": [(10, 10)], "labels": [0]}, "only negative"),
        ({"points": [10, 10, 10]}, "shape \\(N, 2\\)"),
        ({"box": (50, 10, 20, 40)}, "x1 < x0"),
        ({"box": (10, 40, 20, 10)}, "y1 < y0"),
        ({"box": (10, 10, 20)}, "x0, y0, x1, y1"),
        ({"box": (10, 10, 250, 50)}, "outside"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else "",
)
def test_bad_prompts(predictor, kwargs, message):
    predictor.set_image(np.zeros((100, 200), np.uint8))
    with pytest.raises(InvalidInputError, match=message):
        predictor.predict(**kwargs)


def test_predict_without_image(predictor):
    predictor.embedding = None
    with pytest.raises(InvalidInputError, match="set_image"):
        predictor.predict(points=[(1, 1)])


@pytest.mark.parametrize(
    "point,corner",
    [((0, 0), "top-left"), ((199, 99), "bottom-right"), ((199.5, 99.5), "bottom-right")],
    ids=["first-pixel", "last-pixel", "last-pixel-outer-edge"],
)
def test_edge_points_are_inside(predictor, point, corner):
    """A click on the image's edge pixels (x = W - 1, and the outer edge x = W - 0.5) is
    accepted, maps inside the image's part of the 1024 frame and segments the object there.

    Image: 100 x 200 (H x W), dark, with a bright 30 x 30 square in the top-left and in the
    bottom-right corner; the test double segments the bright square under the click.
    """
    h, w = 100, 200
    img = np.full((h, w), 20, np.uint8)
    squares = {"top-left": np.zeros((h, w), bool), "bottom-right": np.zeros((h, w), bool)}
    squares["top-left"][:30, :30] = True
    squares["bottom-right"][-30:, -30:] = True
    img[squares["top-left"] | squares["bottom-right"]] = 200
    emb = predictor.set_image(img)
    coords, _, _ = prepare_prompts((h, w), [point], None, None, emb.resized_size)
    new_h, new_w = emb.resized_size
    x, y = coords[0, 0]  # the click in the 1024 frame (the padding point follows it)
    assert 0 <= x < new_w and 0 <= y < new_h
    res = predictor.predict(points=[point], labels=[1])
    row, col = min(h - 1, int(np.floor(point[1] + 0.5))), min(w - 1, int(np.floor(point[0] + 0.5)))
    assert res.mask[row, col], "the clicked edge pixel is not in its mask"
    assert iou(res.mask, squares[corner]) >= 0.9
    other = "top-left" if corner == "bottom-right" else "bottom-right"
    assert not (res.mask & squares[other]).any()


def test_box_on_the_image_edges_is_inside(predictor):
    """A box whose corners are the first and last pixels is accepted and finds the bright
    squares in it (mask 0 of the test double: brighter than the box's mean)."""
    h, w = 100, 200
    img = np.full((h, w), 20, np.uint8)
    top_left, bottom_right, near = (np.zeros((h, w), bool) for _ in range(3))
    top_left[:30, :30] = bottom_right[-30:, -30:] = True
    near[:32, :32] = near[-32:, -32:] = True  # the squares and 2 pixels around them
    img[top_left | bottom_right] = 200
    predictor.set_image(img)
    res = predictor.predict(box=(0, 0, w - 1, h - 1))
    assert res.mask_index == 0
    assert res.mask[0, 0]
    for square in (top_left, bottom_right):
        assert np.count_nonzero(res.mask & square) >= 0.9 * np.count_nonzero(square)
    assert not (res.mask & ~near).any()


def test_decoder_given_as_encoder():
    with pytest.raises(ModelSignatureError, match="looks like an EdgeSAM decoder.*swap"):
        EdgeSamModel(TEST_DECODER, TEST_DECODER).load()


def test_encoder_given_as_decoder():
    with pytest.raises(ModelSignatureError, match="looks like an EdgeSAM encoder"):
        EdgeSamModel(TEST_ENCODER, TEST_ENCODER).load()


def test_wrong_signature_names_what_differs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 512, 512])
    y = helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 3, 512, 512])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["image_embeddings"])],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "small_encoder.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelSignatureError, match="input image has size 512 on axis 2"):
        EdgeSamModel(path, TEST_DECODER).load()


def test_truncated_model_file(tmp_path):
    data = TEST_ENCODER.read_bytes()
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        EdgeSamModel(bad, TEST_DECODER).load()


def test_non_onnx_file(tmp_path):
    bad = tmp_path / "decoder.onnx"
    bad.write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelError, match="decoder file .* not a loadable ONNX model"):
        EdgeSamModel(TEST_ENCODER, bad).load()


def test_empty_and_missing_model_files(tmp_path):
    empty = tmp_path / "e.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        EdgeSamModel(empty, TEST_DECODER).load()
    with pytest.raises(ModelNotAvailableError, match="not found"):
        EdgeSamModel(tmp_path / "nope.onnx", TEST_DECODER).load()


def test_model_file_untouched_after_failures(tmp_path):
    enc = tmp_path / "enc.onnx"
    shutil.copy(TEST_ENCODER, enc)
    before = enc.read_bytes()
    with pytest.raises(ModelSignatureError):
        EdgeSamModel(enc, enc).load()
    assert enc.read_bytes() == before


def test_unavailable_provider_falls_back_to_cpu():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        providers = resolve_providers("definitely-not-a-provider")
    assert providers == ["CPUExecutionProvider"]
    assert any("not available" in str(x.message) for x in w)
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_mapping_validation():
    with pytest.raises(InvalidInputError, match="1 .grey. or 3 .RGB."):
        IntensityMapping((0, 1), (2, 3))
    with pytest.raises(InvalidInputError, match="finite"):
        IntensityMapping((np.nan,), (1,))
    with pytest.raises(InvalidInputError, match="percentiles"):
        mapping_from_percentiles(np.zeros((4, 4)), percentiles=(50, 10))
    with pytest.raises(InvalidInputError, match="no finite values"):
        mapping_from_percentiles(np.full((4, 4), np.inf))
    m = IntensityMapping((5,), (5,))  # constant image: widened, not a division by zero
    assert m.high == (6.0,)


def test_mapping_channel_mismatch(predictor):
    with pytest.raises(InvalidInputError, match="1 channel.*RGB"):
        predictor.set_image(np.zeros((10, 10, 3), np.uint8), IntensityMapping((0,), (255,)))
