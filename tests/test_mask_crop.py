"""engine.mask_crop: MaskCrop, box helpers and the one IoU / overlap implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_edgesam.engine import transforms
from napari_edgesam.engine.mask_crop import (
    MaskCrop,
    bbox_intersection,
    mask_bbox,
    mask_intersection,
    mask_iou,
    overlap_coefficient,
)

SHAPE = (40, 60)


def _rect(r0, c0, r1, c1, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def _reference(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    return (int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b)))


def test_old_import_path_is_the_same_class():
    assert transforms.MaskCrop is MaskCrop
    assert transforms.mask_bbox is mask_bbox


def test_mask_bbox_and_crop_are_tight():
    m = _rect(5, 7, 9, 20)
    assert mask_bbox(m) == (5, 7, 9, 20)
    assert mask_bbox(np.zeros(SHAPE, bool)) is None
    crop = MaskCrop(m[2:30, 3:40], 2, 3, SHAPE)
    assert crop.bbox == (5, 7, 9, 20) and crop.area == 4 * 13
    assert np.array_equal(np.asarray(crop), m)


def test_bbox_intersection():
    assert bbox_intersection((0, 0, 10, 10), (5, 3, 20, 8)) == (5, 3, 10, 8)
    assert bbox_intersection((0, 0, 10, 10), (10, 0, 20, 10)) is None  # touching edges
    assert bbox_intersection((0, 0, 10, 10), None) is None


def test_iou_of_crops_with_different_offsets():
    a_full, b_full = _rect(2, 2, 12, 12), _rect(7, 5, 20, 30)
    a, b = MaskCrop(a_full), MaskCrop(b_full)
    assert a.offset != b.offset
    inter, na, nb = _reference(a_full, b_full)
    assert inter == 5 * 7 and mask_intersection(a, b) == inter
    assert mask_iou(a, b) == inter / (na + nb - inter)
    assert mask_iou(a, b) == mask_iou(b, a) == mask_iou(a_full, b_full)
    assert overlap_coefficient(a, b) == inter / min(na, nb)
    # a bool array paired with a crop is the slice-sized mask
    assert mask_iou(a_full, b) == mask_iou(a, b)


def test_iou_of_disjoint_masks_is_zero():
    a, b = MaskCrop(_rect(0, 0, 5, 5)), MaskCrop(_rect(10, 10, 15, 15))
    assert mask_iou(a, b) == 0.0 and overlap_coefficient(a, b) == 0.0
    # boxes that overlap while the masks do not
    ring = _rect(0, 0, 20, 20) & ~_rect(2, 2, 18, 18)
    inner = _rect(5, 5, 10, 10)
    assert mask_iou(MaskCrop(ring), MaskCrop(inner)) == 0.0
    assert mask_iou(ring, inner) == 0.0


def test_nested_masks():
    outer, inner = _rect(0, 0, 20, 20), _rect(5, 5, 10, 10)
    assert mask_iou(MaskCrop(outer), MaskCrop(inner)) == 25 / 400
    assert overlap_coefficient(MaskCrop(outer), MaskCrop(inner)) == 1.0
    assert mask_iou(MaskCrop(inner), MaskCrop(inner)) == 1.0


@pytest.mark.parametrize("as_crop", [True, False])
def test_empty_masks_follow_the_callers_convention(as_crop):
    wrap = MaskCrop if as_crop else (lambda m: m)
    empty, some = wrap(np.zeros(SHAPE, bool)), wrap(_rect(1, 1, 4, 4))
    # empty union: the keyword decides
    assert mask_iou(empty, empty) == 0.0
    assert mask_iou(empty, empty, empty=1.0) == 1.0
    assert math.isnan(mask_iou(empty, empty, empty=math.nan))
    # one empty mask: the union is not empty, IoU is 0 whatever the keyword
    assert mask_iou(empty, some, empty=1.0) == 0.0
    assert math.isnan(mask_iou(empty, some, empty=math.nan)) is False
    # overlap coefficient: the smaller area is 0
    assert overlap_coefficient(empty, some) == 0.0
    assert overlap_coefficient(empty, some, empty=1.0) == 1.0


def test_matches_full_arrays_on_random_crops():
    rng = np.random.default_rng(3)
    for _ in range(50):
        fulls = []
        for _ in range(2):
            m = np.zeros(SHAPE, bool)
            r0, c0 = rng.integers(0, 30), rng.integers(0, 50)
            h, w = rng.integers(1, 15), rng.integers(1, 15)
            m[r0:r0 + h, c0:c0 + w] = rng.random((h, w))[: SHAPE[0] - r0, : SHAPE[1] - c0] < 0.6
            fulls.append(m)
        a, b = MaskCrop(fulls[0]), MaskCrop(fulls[1])
        inter, na, nb = _reference(*fulls)
        union = na + nb - inter
        want = inter / union if union else 1.0
        assert mask_iou(a, b, empty=1.0) == want
        assert mask_iou(*fulls, empty=1.0) == want
        small = min(na, nb)
        assert overlap_coefficient(a, b) == (inter / small if small else 0.0)


def test_different_shapes_are_refused():
    with pytest.raises(ValueError, match="different shapes"):
        mask_iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="different shapes"):
        mask_iou(MaskCrop(np.ones((3, 3), bool)), MaskCrop(np.ones((3, 4), bool)))


def test_returns_python_floats():
    a = MaskCrop(_rect(0, 0, 3, 3))
    assert type(mask_iou(a, a)) is float and type(overlap_coefficient(a, a)) is float
    assert type(mask_iou(np.asarray(a), np.asarray(a))) is float


def test_crops_of_a_huge_slice_are_compared_without_slice_sized_arrays():
    huge = (200_000, 200_000)  # a slice-sized bool array would take 40 GB
    a = MaskCrop(np.ones((10, 10), bool), 100_000, 100_000, huge)
    b = MaskCrop(np.ones((10, 10), bool), 100_005, 100_008, huge)
    assert mask_intersection(a, b) == 5 * 2
    assert mask_iou(a, b) == 10 / 190
    assert overlap_coefficient(a, b) == 10 / 100
