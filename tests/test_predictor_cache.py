"""The predictor uses the embedding cache transparently; float16 entries give the same masks."""

from __future__ import annotations

import numpy as np
from conftest import CountingModel, disc_image, iou

from napari_edgesam.engine import IntensityMapping, Predictor
from napari_edgesam.engine.cache import EmbeddingCache


def test_second_embed_is_a_cache_hit(test_model, tmp_path):
    model = CountingModel(test_model)
    cache = EmbeddingCache(disk_dir=tmp_path / "emb")
    pred = Predictor(model, cache=cache)
    img, _ = disc_image((300, 400), (100, 300), 30)
    a = pred.embed(img)
    b = pred.embed(img)
    assert model.encodes == 1
    assert cache.stats["memory_hits"] == 1
    np.testing.assert_array_equal(a.features, b.features)
    assert a.key == b.key
    assert not a.cached and b.cached
    # A new process (empty memory) finds it on disk.
    cache.clear_memory()
    pred.embed(img)
    assert model.encodes == 1 and cache.stats["disk_hits"] == 1


def test_key_covers_pixels_and_mapping(test_model, tmp_path):
    model = CountingModel(test_model)
    pred = Predictor(model, cache=EmbeddingCache(disk_dir=False))
    img, _ = disc_image((100, 100), (50, 50), 10)
    k1 = pred.embed(img).key
    img2 = img.copy()
    img2[0, 0] += 1
    k2 = pred.embed(img2).key
    k3 = pred.embed(img, IntensityMapping((0,), (100,))).key
    assert len({k1, k2, k3}) == 3 and model.encodes == 3
    assert pred.embed(img).key == k1 and model.encodes == 3


def test_bypass_the_cache(test_model, tmp_path):
    model = CountingModel(test_model)
    cache = EmbeddingCache(disk_dir=False)
    pred = Predictor(model, cache=cache)
    img, _ = disc_image((100, 100), (50, 50), 10)
    pred.embed(img, fill_cache=False)
    pred.embed(img)
    assert model.encodes == 2  # the first run did not fill the cache
    pred.embed(img, use_cache=False)
    assert model.encodes == 3


def test_float16_entries_give_the_same_masks(test_model, tmp_path):
    """Disk entries in float16: masks agree with float32 (IoU >= 0.99) for many prompts."""
    rng = np.random.default_rng(1)
    h, w = 480, 640
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(30, 5, (h, w))
    centers = [(120, 150, 40), (300, 420, 60), (380, 120, 30), (100, 520, 25)]
    for cy, cx, r in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.uniform(120, 200)
    img = np.clip(img, 0, 255).astype(np.uint8)

    exact = Predictor(test_model, cache=None)
    exact.set_image(img)
    cache = EmbeddingCache(disk_dir=tmp_path / "emb", disk_dtype="float16")
    cached = Predictor(test_model, cache=cache)
    cached.embed(img)
    cache.clear_memory()
    emb16 = cached.embed(img)  # read back from the float16 disk entry
    assert cache.stats["disk_hits"] == 1
    assert emb16.features.dtype == np.float32
    assert not np.array_equal(emb16.features, exact.embedding.features)  # really rounded
    prompts = [dict(points=[(cx, cy)]) for cy, cx, _ in centers]
    prompts += [dict(box=(cx - r - 5, cy - r - 5, cx + r + 5, cy + r + 5)) for cy, cx, r in centers]
    prompts += [dict(points=[(150, 120), (170, 120)], labels=[1, 0])]
    for p in prompts:
        a = exact.predict(**p)
        b = cached.predict(embedding=emb16, **p)
        assert a.mask.any()
        assert iou(a.mask, b.mask) >= 0.99, p
