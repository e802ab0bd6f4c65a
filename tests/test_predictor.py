"""Predictor behaviour with the test-double model: masks land on the right pixels.

The test double (tests/models, never EdgeSAM) segments the region around a click whose
brightness is like the clicked spot's, and bright regions inside a box; see its README.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TEST_DECODER_IOU, TEST_ENCODER, disc_image, iou

from napari_edgesam.engine import EdgeSamModel, IntensityMapping, Predictor
from napari_edgesam.engine.predictor import choose_mask, prepare_prompts, stability_scores

SHAPES = [
    (300, 500),  # wide
    (500, 300),  # tall
    (97, 131),  # small, odd, upscaled to the 1024 frame
    (257, 1023),  # odd and very wide
    (1024, 1024),  # exactly the model frame
    (1500, 700),  # larger than 1024, tall
    (2000, 2600),  # much larger
]


def _object(shape):
    """An off-centre disc (so an x/y swap or a wrong scale misses it) of ~1/10 the size."""
    h, w = shape
    r = max(4, int(min(h, w) * 0.12))
    center = (int(h * 0.3), int(w * 0.65))
    return center, r


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_click_lands_on_the_object(predictor, shape):
    center, r = _object(shape)
    img, truth = disc_image(shape, center, r)
    predictor.set_image(img)
    res = predictor.predict(points=[(center[1], center[0])], labels=[1])  # (x, y) = (col, row)
    assert res.mask.shape == shape and res.mask.dtype == bool
    assert iou(res.mask, truth) >= 0.9
    # Nothing far from the object.
    far = np.ones(shape, bool)
    far[max(0, center[0] - 2 * r): center[0] + 2 * r,
        max(0, center[1] - 2 * r): center[1] + 2 * r] = False
    assert not res.mask[far].any()


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (1500, 700)], ids=str)
def test_box_uses_mask_zero_and_finds_the_object(predictor, shape):
    center, r = _object(shape)
    img, truth = disc_image(shape, center, r)
    predictor.set_image(img)
    (cy, cx), m = center, int(r * 1.4)
    res = predictor.predict(box=(cx - m, cy - m, cx + m, cy + m))
    assert res.mask_index == 0
    assert iou(res.mask, truth) >= 0.9


def test_box_excludes_objects_outside_it(predictor):
    img, a = disc_image((400, 600), (200, 150), 40)
    img2, b = disc_image((400, 600), (200, 450), 40)
    img = np.maximum(img, img2)
    predictor.set_image(img)
    res = predictor.predict(box=(90, 140, 210, 260))
    assert iou(res.mask, a) >= 0.9
    assert not (res.mask & b).any()


def test_negative_click_removes_its_neighbourhood(predictor):
    img, truth = disc_image((400, 400), (200, 200), 80)
    predictor.set_image(img)
    pos = predictor.predict(points=[(200, 200)])
    assert pos.mask[200, 270]  # inside the disc, right side
    both = predictor.predict(points=[(200, 200), (270, 200)], labels=[1, 0])
    assert not both.mask[200, 270]
    assert both.mask[200, 150]  # the rest of the object stays
    assert both.area < pos.area


def test_padding_point_is_appended_without_box_only(predictor, monkeypatch):
    img, _ = disc_image((300, 400), (100, 250), 30)
    predictor.set_image(img)
    seen = []
    original = predictor.model.decode

    def spy(emb, coords, labels):
        seen.append((coords.copy(), labels.copy()))
        return original(emb, coords, labels)

    monkeypatch.setattr(predictor.model, "decode", spy)
    predictor.predict(points=[(250, 100)])
    coords, labels = seen[-1]
    assert labels.tolist() == [[1, -1]]
    assert coords[0, -1].tolist() == [0.0, 0.0]
    predictor.predict(points=[(250, 100)], box=(200, 50, 300, 150))
    coords, labels = seen[-1]
    assert labels.tolist() == [[1, 2, 3]]
    # Box corners scaled to the 1024 frame: 400 wide -> scale 2.56.
    np.testing.assert_allclose(coords[0, 1], [200 * 2.56, 50 * 2.56], rtol=1e-6)


def test_prompt_scaling_to_1024_frame():
    # 300 x 500 image: scale 1024/500 = 2.048, new size (614, 1024).
    coords, labels, has_box = prepare_prompts((300, 500), [(499, 299)], [1])
    np.testing.assert_allclose(coords[0, 0], [499 * 1024 / 500, 299 * 614 / 300], rtol=1e-6)
    assert not has_box and labels[0].tolist() == [1, -1]


def test_stability_scores_nan_safe():
    logits = np.full((4, 256, 256), -5.0, np.float32)
    logits[2, 10:20, 10:20] = 5.0
    logits[3, 10:30, 10:30] = 0.5  # above -1, below +1: score 0
    s = stability_scores(logits)
    assert np.isnan(s[0]) and np.isnan(s[1])
    assert s[2] == pytest.approx(1.0) and s[3] == 0.0
    assert choose_mask(s, has_box=False) == 2
    assert choose_mask(np.full(4, np.nan), has_box=False) == 0
    assert choose_mask(s, has_box=True) == 0


def test_nan_scores_from_the_model_do_not_win(predictor, monkeypatch):
    """A decoder whose best-looking masks are degenerate (NaN stability) is handled."""
    img, truth = disc_image((300, 300), (150, 150), 40)
    predictor.set_image(img)
    original = predictor.model.decode
    expected = predictor.predict(points=[(150, 150)], mask_index=0).mask

    def degenerate(emb, coords, labels):
        scores, masks = original(emb, coords, labels)
        masks = masks.copy()
        masks[0, 1:] = -10.0  # masks 1-3: nothing above -1 -> NaN stability
        return np.full_like(scores, np.nan), masks

    monkeypatch.setattr(predictor.model, "decode", degenerate)
    res = predictor.predict(points=[(150, 150)])
    assert res.mask_index == 0
    assert np.isnan(res.scores[1:]).all()
    assert res.mask.any()
    np.testing.assert_array_equal(res.mask, expected)


def test_iou_head_file_gives_the_same_masks(predictor):
    """Scores from an IoU head (Gemm) are ignored: selection uses our stability scores."""
    img, truth = disc_image((300, 500), (100, 320), 35)
    other = Predictor(EdgeSamModel(TEST_ENCODER, TEST_DECODER_IOU), cache=None)
    predictor.set_image(img)
    other.set_image(img)
    a = predictor.predict(points=[(320, 100)])
    b = other.predict(points=[(320, 100)])
    assert a.mask_index == b.mask_index
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.allclose(a.file_scores, b.file_scores)


def test_uint16_input(predictor):
    img8, truth = disc_image((400, 300), (120, 200), 40)
    img = (img8.astype(np.uint16) * 200 + 1000).astype(np.uint16)  # 5000..41000
    predictor.set_image(img)
    res = predictor.predict(points=[(200, 120)])
    assert iou(res.mask, truth) >= 0.9


def test_float_input_with_nan_and_inf(predictor):
    _, truth = disc_image((400, 300), (250, 100), 40)
    img = np.where(truth, 0.8, 0.1).astype(np.float32)
    img[:5, :5] = np.nan
    img[-3:, -3:] = np.inf
    predictor.set_image(img)
    res = predictor.predict(points=[(100, 250)])
    assert iou(res.mask, truth) >= 0.9


def test_rgb_and_rgba_input(predictor):
    img, truth = disc_image((300, 400), (150, 100), 45)
    rgb = np.stack([img, img // 2, img], axis=-1)
    rgba = np.concatenate([rgb, np.full((300, 400, 1), 255, np.uint8)], axis=-1)
    for im in (rgb, rgba):
        predictor.set_image(im)
        assert iou(predictor.predict(points=[(100, 150)]).mask, truth) >= 0.9


def test_explicit_mapping_changes_what_the_model_sees(predictor):
    """Contrast limits matter: with limits that saturate everything the object vanishes."""
    img, truth = disc_image((300, 300), (150, 150), 40, value=120, background=100)
    predictor.set_image(img, IntensityMapping((100,), (120,)))
    good = predictor.predict(points=[(150, 150)])
    assert iou(good.mask, truth) >= 0.9
    predictor.set_image(img, IntensityMapping((0,), (50,)))  # everything -> 255
    flat = predictor.predict(points=[(150, 150)])
    assert iou(flat.mask, truth) < 0.9


def test_constant_image_does_not_crash(predictor):
    """A constant image maps to 0 on the model's scale (IntensityMapping widens its equal
    limits), so the model sees exactly a black image: the same embedding and prediction as
    an all-zero uint8 image, with finite logits and scores and a mask around the click."""
    emb = predictor.set_image(np.full((200, 300), 7, np.uint16))
    assert emb.features.dtype == np.float32 and np.isfinite(emb.features).all()
    res = predictor.predict(points=[(150, 100)])
    assert res.mask.shape == (200, 300) and res.mask.dtype == bool
    assert res.low_res_logits.dtype == np.float32 and np.isfinite(res.low_res_logits).all()
    assert np.isfinite(res.scores).all() and 0.0 < res.score <= 1.0
    assert res.score == res.scores[res.mask_index] == np.max(res.scores)
    assert res.mask[100, 150]  # the clicked pixel: the test double takes same-grey pixels

    black = predictor.embed(np.zeros((200, 300), np.uint8))
    np.testing.assert_array_equal(emb.features, black.features)
    ref = predictor.predict(points=[(150, 100)], embedding=black)
    np.testing.assert_array_equal(res.low_res_logits, ref.low_res_logits)
    np.testing.assert_array_equal(res.mask, ref.mask)
    assert res.mask_index == ref.mask_index


def test_embedding_can_be_reused_without_set_image(predictor):
    img, truth = disc_image((256, 256), (60, 180), 25)
    emb = predictor.embed(img)
    assert emb.features.shape == (1, 256, 64, 64) and emb.features.dtype == np.float32
    assert emb.original_size == (256, 256) and emb.resized_size == (1024, 1024)
    res = predictor.predict(points=[(180, 60)], embedding=emb)
    assert iou(res.mask, truth) >= 0.9
