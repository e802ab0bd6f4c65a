"""Automatic segmentation does less work for the same labels (issue 17, point 5).

- masks are upsampled only when they pass the filters decided on low-res logits, and only
  inside the box their low-res positives can reach (:mod:`...automatic.lowres`), with the
  same labels as upsampling every mask over the whole slice through ``Predictor.predict``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_automatic import make_scene_2d

from napari_edgesam.engine.transforms import upsampler
from napari_edgesam.workflows.automatic import AutoParams, segment_slice
from napari_edgesam.workflows.automatic import driver as driver_module
from napari_edgesam.workflows.automatic import lowres
from napari_edgesam.workflows.automatic.lowres import FullMask, LowResMask


def _logits(kind: str, rng) -> np.ndarray:
    yy, xx = np.mgrid[:256, :256].astype(np.float32)
    if kind == "empty":
        return np.full((256, 256), -3.0, np.float32)
    if kind == "blob":
        cy, cx, r = rng.uniform(20, 236), rng.uniform(20, 236), rng.uniform(1.5, 12)
        return (r - np.hypot(yy - cy, xx - cx)).astype(np.float32)
    if kind == "edge":  # a blob cut by the image border
        return (9.0 - np.hypot(yy - 2, xx - 250)).astype(np.float32)
    # "large": most of the frame, noisy edge
    return (80.0 - np.hypot(yy - 128, xx - 128) + rng.normal(0, 3, (256, 256))).astype(
        np.float32)


@pytest.mark.parametrize("size", [(2048, 2048), (140, 180), (1500, 700), (700, 1500),
                                  (1024, 1024), (513, 2000)])
def test_low_res_mask_equals_the_upsampled_mask(size):
    """window() is the full-frame mask inside the box, every positive lies in the box, and
    values_at() equals the mask pixel by pixel: bit for bit what MaskUpsampler.mask gives."""
    rng = np.random.default_rng(sum(size))
    for kind in ("empty", "blob", "blob", "blob", "edge", "large"):
        low = _logits(kind, rng)
        full = upsampler(size).mask(low)
        lr = LowResMask(low, size, 0.9)
        crop, r0, c0 = lr.window()
        r1, c1 = r0 + crop.shape[0], c0 + crop.shape[1]
        assert np.array_equal(crop, full[r0:r1, c0:c1]), kind
        assert np.count_nonzero(crop) == np.count_nonzero(full), kind  # box holds them all
        if kind in ("blob", "edge") and full.any():
            # the box is tight: at most a few pixels of bilinear support around the positives
            rows, cols = np.nonzero(full)
            scale = max(size) / 1024 * 4
            assert rows.min() - r0 <= 3 * scale + 3 and r1 - rows.max() <= 3 * scale + 3
            assert cols.min() - c0 <= 3 * scale + 3 and c1 - cols.max() <= 3 * scale + 3
        rows = rng.integers(0, size[0], 300)
        cols = rng.integers(0, size[1], 300)
        if full.any():  # plus pixels on and near the mask
            pr, pc = np.nonzero(full)
            pick = rng.integers(0, len(pr), 100)
            rows = np.concatenate([rows, pr[pick], np.clip(pr[pick] + 2, 0, size[0] - 1)])
            cols = np.concatenate([cols, pc[pick], np.clip(pc[pick] - 2, 0, size[1] - 1)])
        fresh = LowResMask(low, size, 0.9)
        assert np.array_equal(fresh.values_at(rows, cols), full[rows, cols]), kind
        assert not fresh.upsampled
        assert np.array_equal(lr.values_at(rows, cols), full[rows, cols]), kind


def _full_frame_run(predictor, embedding):
    """The previous decoder step: Predictor.predict, every mask upsampled whole."""
    def run(points, labels):
        r = predictor.predict(points=points, labels=labels, embedding=embedding)
        return FullMask(r.mask, 0, 0, r.score)
    return run


SCENES = [
    ("discs", lambda: make_scene_2d(), AutoParams(object_size=26)),
    ("grid", lambda: make_scene_2d(), AutoParams(object_size=26, seeds="grid")),
    ("no-split", lambda: make_scene_2d(),
     AutoParams(object_size=26, split_merged=False, seed_component=False)),
    ("uint16-large", lambda: make_scene_2d((1200, 1600), [
        (200, 300, 60, 200), (260, 420, 50, 150), (800, 900, 70, 230), (900, 1400, 40, 180),
        (500, 700, 55, 210), (1100, 200, 45, 190)], dtype=np.uint16, scale=100),
     AutoParams(object_size=110)),
]


@pytest.mark.parametrize("name,scene,params", SCENES, ids=[s[0] for s in SCENES])
def test_same_labels_as_upsampling_every_mask(predictor, monkeypatch, name, scene, params):
    image, _ = scene()
    new = segment_slice(predictor, image, params=params)
    assert new.n_objects > 0
    made = []
    monkeypatch.setattr(driver_module, "decode_low_res",
                        lambda pr, emb, points, labels: made.append(1) or
                        _full_frame_run(pr, emb)(points, labels))
    old = segment_slice(predictor, image, params=params)
    assert len(made) == old.decoder_calls > 0
    assert np.array_equal(new.labels, old.labels)
    assert np.array_equal(new.scores, old.scores)
    assert new.decoder_calls == old.decoder_calls and new.n_candidates == old.n_candidates


def test_only_masks_that_pass_the_low_res_filters_are_upsampled(predictor, monkeypatch):
    """Masks below the stability threshold are never upsampled, and the ones upsampled are
    computed inside their box only (never a full-slice array)."""
    image, _ = make_scene_2d()
    made: list[LowResMask] = []
    real = lowres.decode_low_res

    def spy(*args):
        m = real(*args)
        made.append(m)
        return m

    monkeypatch.setattr(driver_module, "decode_low_res", spy)
    full_calls = []
    up = upsampler(image.shape)
    monkeypatch.setattr(type(up), "mask", lambda self, low, *a: full_calls.append(1))
    params = AutoParams(object_size=26, seeds="grid", min_stability=0.9)
    res = segment_slice(predictor, image, params=params)
    low = [m for m in made if not m.score >= params.min_stability]
    assert low and made and res.n_candidates > 0
    assert not any(m.upsampled for m in low)
    assert sum(m.upsampled for m in made) >= res.n_candidates
    for m in made:
        if m.upsampled:
            crop, r0, c0 = m.window()
            assert (r0, c0, r0 + crop.shape[0], c0 + crop.shape[1]) == m.box
            assert crop.size < image.size
    assert not full_calls


# -- seed detection on a coarser copy, foreground box by box --------------------------------

@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (2050, 333)])
@pytest.mark.parametrize("factor", [1, 2, 3, 11])
def test_block_signal_is_the_downscaled_signal_bit_for_bit(shape, factor):
    from napari_edgesam.workflows.automatic.foreground import _signal
    from napari_edgesam.workflows.automatic.seeds import _block_signal, _downscale

    rng = np.random.default_rng(factor)
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for mapped in (grey, rgb):
        for polarity in ("bright", "dark"):
            want = _downscale(_signal(mapped, polarity), factor)
            got = _block_signal(mapped, factor, polarity)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got, want), (mapped.ndim, polarity)


@pytest.mark.parametrize("shape,object_size", [((300, 260), 26), ((2100, 300), 40),
                                               ((3100, 190), 70), ((2300, 2049), 30)])
def test_foreground_crops_equal_the_slice_wide_foreground(shape, object_size):
    from napari_edgesam.workflows.automatic.driver import _ForegroundCrops
    from napari_edgesam.workflows.automatic.foreground import _signal, _smooth
    from napari_edgesam.workflows.automatic.seeds import _downscale, detection_factor

    rng = np.random.default_rng(shape[0])
    mapped = rng.integers(0, 120, shape, dtype=np.uint8)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for cy, cx in rng.uniform(0, 1, (12, 2)) * shape:
        mapped[(yy - cy) ** 2 + (xx - cx) ** 2 <= (object_size / 2) ** 2] = 220
    params = AutoParams(object_size=object_size)
    f = detection_factor(shape, object_size)
    whole = _smooth(_downscale(_signal(mapped, "bright"), f), object_size / f) > 110
    whole = np.repeat(np.repeat(whole, f, 0), f, 1)[:shape[0], :shape[1]]
    crops = _ForegroundCrops(mapped, params, 110.0)
    assert crops.factor == f
    h, w = shape
    boxes = [(0, 0, h, w), (0, 0, 5, 7), (h - 9, w - 4, h, w), (h // 2, 0, h // 2 + 1, w)]
    for _ in range(25):
        r0, c0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        boxes.append((r0, c0, rng.integers(r0 + 1, h + 1), rng.integers(c0 + 1, w + 1)))
    for r0, c0, r1, c1 in boxes:
        assert np.array_equal(crops.crop(r0, c0, r1, c1), whole[r0:r1, c0:c1]), (r0, c0, r1, c1)


def test_seed_factor():
    from napari_edgesam.workflows.automatic.seeds import detection_factor, seed_factor

    for shape in ((140, 180), (1024, 1024), (700, 1000)):  # slices within the model's frame
        for size in (10, 30, 140):
            assert seed_factor(shape, size) == detection_factor(shape, size)
    assert seed_factor((2048, 2048), 140) == 11  # was 2: the 1024 floor
    assert seed_factor((2048, 2048), 30) == 2
    assert seed_factor((4096, 1000), 20) == 1


def test_coarse_seeds_find_the_same_objects_on_a_large_slice(predictor, monkeypatch):
    """2048^2, objects of 100 px: seeds detected on 8-pixel blocks (before: 2) find the same
    objects, each within a few pixels of an old seed, with the same masks."""
    from napari_edgesam.workflows.automatic import driver, seeds

    objects = [(int(r), int(c), 50, int(v)) for r, c, v in
               [(200, 300, 200), (400, 1500, 150), (1000, 1000, 230), (1600, 400, 180),
                (1700, 1700, 210), (900, 200, 190), (300, 900, 220), (1300, 1500, 170)]]
    image, truth = make_scene_2d((2048, 2048), objects, dtype=np.uint16, scale=100)
    params = AutoParams(object_size=100)
    new = segment_slice(predictor, image, params=params)
    monkeypatch.setattr(driver, "seed_factor", seeds.detection_factor)
    old = segment_slice(predictor, image, params=params)
    assert seeds.seed_factor((2048, 2048), 100) == 8
    d = np.hypot(new.seeds[:, None, 0] - old.seeds[None, :, 0],
                 new.seeds[:, None, 1] - old.seeds[None, :, 1])
    assert len(new.seeds) == len(old.seeds) == len(objects)
    assert d.min(axis=1).max() <= 8
    assert new.n_objects == old.n_objects == len(objects)
    for i in range(1, len(objects) + 1):
        t = truth == i
        a = np.bincount(new.labels[t]).argmax()
        b = np.bincount(old.labels[t]).argmax()
        m_new, m_old = new.labels == a, old.labels == b
        assert np.count_nonzero(m_new & m_old) / np.count_nonzero(m_new | m_old) > 0.98
