"""Refining existing labels (workflows.refine): each object's box and deepest point prompt
the model; the table says how each changed. Test double (not EdgeSAM)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disc_image

from napari_edgesam.engine import Predictor
from napari_edgesam.engine.slice_predictor import EmbeddedSlice
from napari_edgesam.workflows.refine import object_prompts, refine_slice


def test_the_click_is_at_the_deepest_point_and_the_box_on_the_outermost_pixels():
    m = np.zeros((20, 30), bool)
    m[2:18, 3:9] = True       # a thin bar
    m[5:16, 10:27] = True     # a thick block: its centre is the deepest point
    (x, y), box = object_prompts(m, offset=(100, 200))
    assert 212 <= x <= 221 and 104 <= y <= 111 and m[int(y) - 100, int(x) - 200]
    assert box == (203.0, 102.0, 226.0, 117.0)


def test_rough_threshold_labels_become_the_objects(test_model):
    """A threshold that caught a dilated halo: refined, each object is the disc itself,
    keeps its id, and the table says how much it changed."""
    from scipy import ndimage
    from skimage.measure import label

    img, disc = disc_image((120, 160), (50, 60), 16)
    yy, xx = np.ogrid[:120, :160]
    disc2 = (yy - 85) ** 2 + (xx - 120) ** 2 <= 12**2
    img[disc2] = 200
    rough = label(ndimage.binary_dilation(disc | disc2, iterations=4))
    pred = Predictor(test_model, cache=None)
    sp = EmbeddedSlice(pred, pred.embed(img))
    objs = refine_slice(sp, rough)
    assert [o.label for o in objs] == [1, 2]
    for o, truth in zip(objs, (disc, disc2), strict=True):
        new = o.new.full()
        assert (new & truth).sum() / (new | truth).sum() >= 0.85
        assert o.new_area < o.old_area == int((rough == o.label).sum())
        assert 0.4 < o.iou < 0.9 and o.confident == (o.score >= 0.8)
    only = refine_slice(sp, rough, ids=[2])
    assert [o.label for o in only] == [2]


def test_a_cancelled_refinement_returns_what_it_did():
    class Token:
        cancelled = True

    labels = np.zeros((10, 10), np.uint8)
    labels[2:4, 2:4] = 1
    assert refine_slice(None, labels, cancel=Token()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_gaps_in_ids_are_skipped(test_model, dtype):
    img, _ = disc_image((60, 60), (30, 30), 10)
    labels = np.zeros((60, 60), dtype)
    labels[22:38, 22:38] = 5
    pred = Predictor(test_model, cache=None)
    objs = refine_slice(EmbeddedSlice(pred, pred.embed(img)), labels)
    assert [o.label for o in objs] == [5]


def test_huge_and_negative_free_ids_cost_what_the_objects_cost(test_model):
    """Ids such as 10**9 (another tool's) do not allocate per id up to the largest."""
    img, _ = disc_image((60, 60), (30, 30), 10)
    labels = np.zeros((60, 60), np.int64)
    labels[22:38, 22:38] = 10**9
    labels[2:6, 2:6] = 7
    pred = Predictor(test_model, cache=None)
    objs = refine_slice(EmbeddedSlice(pred, pred.embed(img)), labels)
    assert [o.label for o in objs] == [7, 10**9]
    assert objs[1].old_area == 16 * 16
