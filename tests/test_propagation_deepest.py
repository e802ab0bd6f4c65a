"""The deepest point of the previous slice's mask (propagation's positive click) found
from a coarse distance transform: the same pixel and depth as the full transform.

``prompts.deepest_point`` bounds every pixel's depth by a coarse transform and measures
only the pixels that can hold the maximum, so it must agree exactly (ties included: the
first maximum in row-major order, as ``argmax`` gives) with
``scipy.ndimage.distance_transform_edt`` on the full mask. Speed is measured by
``benchmarks/bench_pipeline.py``, never asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edgesam.workflows.propagation import PropagationSettings, derive_prompts
from napari_edgesam.workflows.propagation import prompts


def full_transform(padded):
    """What _deep_points computed before: (row, col, depth) of the transform's argmax."""
    d = ndi.distance_transform_edt(padded)
    i = int(np.argmax(d))
    r, c = np.unravel_index(i, d.shape)
    return int(r), int(c), float(d.flat[i])


def _pad(mask):
    return np.pad(mask, 1)


def _transform_sizes(monkeypatch) -> list:
    """The sizes of the arrays given to ``ndi.distance_transform_edt`` from now on."""
    sizes = []
    real = ndi.distance_transform_edt

    def spy(a, *args, **kwargs):
        sizes.append(np.asarray(a).size)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(ndi, "distance_transform_edt", spy)
    return sizes


def shapes():
    """Masks of many geometries: ties (discs, squares, rectangles, rings), odd sizes,
    holes, several parts, random smooth blobs covering most of the frame (what random
    weights give) and object-sized ones."""
    out = {}
    yy, xx = np.mgrid[:203, :257]
    for r, (cy, cx) in ((40, (100, 128)), (61, (101, 127.5)), (90, (101, 128))):
        out[f"disc r{r}"] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    out["square"] = (abs(yy - 100) <= 70) & (abs(xx - 128) <= 70)
    out["rectangle (a ridge of ties)"] = (abs(yy - 101) <= 30) & (abs(xx - 128) <= 120)
    out["tall rectangle"] = (abs(yy - 101) <= 99) & (abs(xx - 40) <= 25)
    ellipse = ((yy - 100) / 90.0) ** 2 + ((xx - 130) / 40.0) ** 2 <= 1
    out["ellipse"] = ellipse
    ring = ((yy - 100) ** 2 + (xx - 128) ** 2 <= 95 ** 2) & (
        (yy - 100) ** 2 + (xx - 128) ** 2 > 50 ** 2)
    out["ring"] = ring
    holes = out["square"].copy()
    holes[60:70, 60:200:7] = False
    out["square with holes"] = holes
    two = ((yy - 60) ** 2 + (xx - 60) ** 2 <= 45 ** 2) | (
        (yy - 140) ** 2 + (xx - 190) ** 2 <= 45 ** 2)
    out["two equal discs"] = two
    out["full frame"] = np.ones((150, 190), bool)
    rng = np.random.default_rng(0)
    for k in range(8):
        noise = ndi.gaussian_filter(rng.normal(size=(180 + 7 * k, 240 - 5 * k)), 6 + k)
        out[f"random blob {k} (70 %)"] = noise > np.quantile(noise, 0.3)
        out[f"random blob {k} (object)"] = noise > np.quantile(noise, 0.85)
    return out


def textures():
    """Fine-grained masks only a few pixels deep (what random weights give: thousands of
    parts, 2-3 px deep) and bands of every thickness up to 30 px."""
    out = {}
    rng = np.random.default_rng(1)
    for k, p in enumerate((0.3, 0.5, 0.7, 0.85)):
        out[f"noise {p}"] = rng.random((220 + k, 260 - k)) < p
        smooth = ndi.gaussian_filter(rng.normal(size=(230, 250)), 1.0 + k)
        out[f"texture {k}"] = smooth > np.quantile(smooth, 0.6)
    stripes = np.zeros((200, 240), bool)
    stripes[:, ::3] = True
    out["stripes"] = stripes
    for t in range(1, 31):
        band = np.zeros((200, 200), bool)
        band[70:70 + t, 10:190] = True
        out[f"band {t} px"] = band
    return out


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_deepest_point_is_the_full_transforms_maximum(factor, monkeypatch):
    routes = {"candidates": 0, "rings": 0, "none": 0}
    for name in ("candidates", "rings"):
        real = getattr(prompts, {"candidates": "_deep_from_candidates",
                                 "rings": "_deep_by_rings"}[name])

        def counted(*a, _real=real, _name=name, **k):
            routes[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(prompts, real.__name__, counted)
    for name, mask in {**shapes(), **textures()}.items():
        padded = _pad(mask)
        got = prompts.deepest_point(padded, factor)
        if got is None:
            routes["none"] += 1
            continue
        assert got == full_transform(padded), name
    # Both routes ran on many masks; a few (deep but thin in the coarse mask) had none.
    assert routes["candidates"] >= 15 and routes["rings"] >= 5, routes
    assert routes["none"] <= 30, routes


def test_a_shifted_mask_keeps_its_point():
    """Every offset against the block grid gives the same point (shifted)."""
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 95.3) ** 2 + (xx - 96.6) ** 2 <= 75 ** 2
    base = full_transform(_pad(disc))
    for dy in range(4):
        for dx in range(4):
            padded = np.pad(disc, ((1 + dy, 1), (1 + dx, 1)))
            r, c, d = prompts.deepest_point(padded)
            assert (r - dy, c - dx, d) == base


def test_small_masks_use_the_full_transform():
    assert prompts.deepest_point(_pad(np.ones((150, 150), bool))) is None


def test_random_weights_masks_run_no_full_transform(monkeypatch):
    """A fine-grained mask over a 512 x 512 slice (about 3 px deep, as the random-weight
    model's are) is searched ring by ring: no transform of the full mask."""
    rng = np.random.default_rng(5)
    mask = ndi.gaussian_filter(rng.normal(size=(512, 512)), 0.8) > 0.1
    expected = full_transform(_pad(mask))
    sizes = _transform_sizes(monkeypatch)
    assert prompts.deepest_point(_pad(mask)) == expected and expected[2] < 8.5
    assert max(sizes) <= (514 * 514) // 16 + 2 * 130


def test_derive_prompts_runs_no_full_transform_on_a_large_mask(monkeypatch):
    """The click of a large mask costs a transform of a 16x smaller array, and gives the
    click the full transform gives."""
    yy, xx = np.mgrid[:512, :512]
    rng = np.random.default_rng(3)
    noise = ndi.gaussian_filter(rng.normal(size=(512, 512)), 8)
    mask = (noise > np.quantile(noise, 0.3)) | ((yy - 300) ** 2 + (xx - 200) ** 2 < 80 ** 2)
    s = PropagationSettings()
    monkeypatch.setattr(prompts, "COARSE_MIN_PIXELS", 10 ** 12)  # the full transform
    before = derive_prompts(mask, s)
    monkeypatch.undo()

    sizes = _transform_sizes(monkeypatch)
    after = derive_prompts(mask, s)
    assert sizes and max(sizes) <= (514 * 514) // 16 + 2 * 130
    np.testing.assert_array_equal(after["points"], before["points"])
    np.testing.assert_array_equal(after["labels"], before["labels"])
    assert after["box"] == before["box"]


def test_min_depth_still_applies_on_the_coarse_route():
    """A long band 24 px thick (12 px deep) gets its click with a 5 px minimum depth and
    none with 20 px, on the coarse route."""
    band = np.zeros((300, 300), bool)
    band[100:124, 20:280] = True
    r, c, depth = prompts.deepest_point(_pad(band))
    assert (r, c, depth) == full_transform(_pad(band)) and depth == 12.0
    p = derive_prompts(band, PropagationSettings(click_min_depth=5.0))
    assert p["points"].tolist() == [[c - 1, r - 1]]
    assert derive_prompts(band, PropagationSettings(click_min_depth=20.0))["points"] is None
