"""Automatic instance segmentation (no clicks) with the test-double model.

The test double segments "the region around a click as bright as the clicked spot", so
bright discs (2D) and balls (3D) on a dark, noisy background are objects it can find. The
scene helpers here are shared with the batch tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.engine import CancelledError, InvalidInputError
from napari_edgesam.workflows.automatic import (
    AutoParams,
    Candidate,
    detect_seeds,
    grid_seeds,
    label_dtype,
    link_labels,
    resolve_overlaps,
    segment_slice,
    segment_stack,
)

# Objects: (row, col, radius, value on the 0..255 scale).
OBJECTS_2D = [(36, 36, 13, 200), (40, 100, 12, 150), (100, 40, 14, 230), (104, 104, 11, 175),
              (70, 150, 10, 210)]


def make_scene_2d(shape=(140, 180), objects=OBJECTS_2D, *, dtype=np.uint8, scale=1.0,
                  offset=0.0, background=20.0, noise=5.0, seed=0, dark=False):
    """A noisy image of flat discs and its truth labels (1..n in the order given).

    Returns
    -------
    image : ndarray, shape ``shape``, ``dtype``
        ``offset + scale * value`` (inverted around 255 first when ``dark``).
    truth : ndarray of uint16, shape ``shape``
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = np.full(shape, float(background))
    truth = np.zeros(shape, np.uint16)
    for i, (r, c, rad, v) in enumerate(objects, 1):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
        img[disc] = v
        truth[disc] = i
    img = img + rng.normal(0, noise, shape)
    if dark:
        img = 255.0 - img
    img = offset + scale * img
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        img = np.clip(np.round(img), info.min, info.max)
    return img.astype(dtype), truth


BALLS = [(4, 40, 40, 14, 200), (3, 90, 95, 13, 170), (5, 45, 100, 12, 230)]


def make_scene_3d(shape=(8, 128, 140), balls=BALLS, *, dtype=np.uint8, scale=1.0, offset=0.0,
                  z_radius=None, seed=0):
    """A noisy stack of flattened balls (radius ``r`` in-plane, spread over the stack).

    Every ball's cross-section stays a disc of radius >= 0.7 r over ``z_radius`` slices
    either side of its centre, so each slice sees a segmentable object.

    Returns
    -------
    stack : ndarray, shape ``shape``
    truth : ndarray of uint16, shape ``shape``
    """
    rng = np.random.default_rng(seed)
    nz, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = np.full(shape, 20.0)
    truth = np.zeros(shape, np.uint16)
    for i, (zc, r, c, rad, v) in enumerate(balls, 1):
        zr = z_radius or 3
        for z in range(nz):
            dz = abs(z - zc)
            if dz > zr:
                continue
            rz = rad * np.sqrt(1 - 0.5 * (dz / zr) ** 2)
            disc = (yy - r) ** 2 + (xx - c) ** 2 <= rz**2
            img[z][disc] = v
            truth[z][disc] = i
    img = img + rng.normal(0, 5, shape)
    img = offset + scale * img
    info = np.iinfo(dtype)
    return np.clip(np.round(img), info.min, info.max).astype(dtype), truth


def match_instances(labels, truth, min_iou=0.8):
    """Match every truth object to the label overlapping it most; check IoU and count.

    Returns the list of IoUs (truth order). Fails when counts differ, a label is used twice
    or an IoU is below ``min_iou``.
    """
    labels, truth = np.asarray(labels), np.asarray(truth)
    assert labels.shape == truth.shape
    n_truth = int(truth.max())
    found = np.unique(labels[labels > 0])
    assert len(found) == n_truth, f"{len(found)} instances found, {n_truth} expected"
    ious, used = [], set()
    for i in range(1, n_truth + 1):
        t = truth == i
        ids, counts = np.unique(labels[t], return_counts=True)
        counts = counts[ids > 0]
        ids = ids[ids > 0]
        assert ids.size, f"truth object {i} not found"
        best = int(ids[np.argmax(counts)])
        assert best not in used, f"label {best} covers two truth objects"
        used.add(best)
        m = labels == best
        iou = np.count_nonzero(m & t) / np.count_nonzero(m | t)
        ious.append(iou)
    assert min(ious) >= min_iou, f"per-object IoU {np.round(ious, 3)}"
    return ious


# ---------------------------------------------------------------------------------------


def test_slice_uint8_instances(predictor):
    img, truth = make_scene_2d()
    res = segment_slice(predictor, img, params=AutoParams(object_size=24))
    assert res.labels.dtype == np.uint32 and res.labels.shape == img.shape
    match_instances(res.labels, truth)
    assert res.n_objects == 5 and res.scores.shape == (5,)
    assert np.all(res.scores >= 0.85)
    # About one decoder call per object: seeds come from detection, not a grid.
    assert res.decoder_calls <= 2 * 5


def test_slice_uint16_dark_offset(predictor):
    # uint16 with a large offset: the stack-wide percentile mapping handles the range.
    img, truth = make_scene_2d(dtype=np.uint16, scale=12.0, offset=900.0, seed=1)
    res = segment_slice(predictor, img, params=AutoParams(object_size=24))
    match_instances(res.labels, truth)


def test_slice_dark_objects(predictor):
    img, truth = make_scene_2d(dark=True, seed=2)
    res = segment_slice(predictor, img, params=AutoParams(object_size=24, polarity="dark"))
    match_instances(res.labels, truth)


def test_slice_grid_seeds(predictor):
    img, truth = make_scene_2d(shape=(128, 128), objects=OBJECTS_2D[:4], seed=3)
    res = segment_slice(predictor, img, params=AutoParams(object_size=24, seeds="grid",
                                                          grid_spacing=16))
    match_instances(res.labels, truth)
    assert len(res.seeds) == (128 // 16) ** 2


def test_touching_objects_of_different_brightness_are_separated(predictor):
    objs = [(60, 50, 14, 220), (60, 81, 14, 160)]  # 3 px apart, different brightness
    img, truth = make_scene_2d(shape=(120, 130), objects=objs, seed=4)
    res = segment_slice(predictor, img, params=AutoParams(object_size=28))
    match_instances(res.labels, truth, min_iou=0.75)


def test_empty_and_constant_slices(predictor):
    flat = np.full((96, 96), 30, np.uint8)
    res = segment_slice(predictor, flat, params=AutoParams(object_size=20))
    assert res.n_objects == 0 and res.decoder_calls == 0 and not res.labels.any()
    # A stack-wide threshold above the slice: nothing is foreground, no decoder call.
    img, _ = make_scene_2d(seed=5)
    res = segment_slice(predictor, img, params=AutoParams(object_size=24), threshold=250.0)
    assert res.n_objects == 0 and res.decoder_calls == 0


def test_area_filter(predictor):
    img, truth = make_scene_2d(seed=6)
    # The largest disc (radius 14, ~615 px) exceeds max_area: dropped.
    res = segment_slice(predictor, img, params=AutoParams(object_size=24, max_area=560))
    big = truth == 3
    assert not res.labels[big].any() or np.count_nonzero(res.labels[big]) < 0.5 * big.sum()
    assert res.n_objects == 4


def test_detect_seeds_frame_is_xy():
    img = np.zeros((80, 120), np.float32)
    img[20:30, 90:100] = 200  # a square at rows 20-29, columns 90-99
    seeds = detect_seeds(img, object_size=10, threshold=100)
    assert len(seeds) == 1
    x, y = seeds[0]
    assert 90 <= x <= 99 and 20 <= y <= 29


def test_grid_seeds_cap():
    s = grid_seeds((100, 200), 10)
    assert s.shape == (200, 2)
    assert s[:, 0].max() < 200 and s[:, 1].max() < 100
    assert len(grid_seeds((1000, 1000), 1, max_seeds=500)) <= 500


def test_resolve_overlaps_nms_and_painting():
    a = np.zeros((10, 10), bool)
    a[2:8, 2:8] = True
    near_dup = np.zeros((10, 10), bool)
    near_dup[2:8, 2:9] = True
    b = np.zeros((6, 6), bool)
    b[:, :] = True
    cands = [
        Candidate((0, 0, 10, 10), a, 0.95, (5.0, 5.0), 0),
        Candidate((0, 0, 10, 10), near_dup, 0.90, (5.0, 5.0), 1),  # IoU 36/42: suppressed
        Candidate((5, 5, 11, 11), b, 0.92, (8.0, 8.0), 2),          # overlaps a by 9 px
    ]
    labels, scores = resolve_overlaps(cands, (12, 12), nms_iou=0.5, min_kept_fraction=0.5)
    assert labels.dtype == np.uint32
    assert list(np.unique(labels)) == [0, 1, 2]
    np.testing.assert_allclose(scores, [0.95, 0.92])
    assert np.count_nonzero(labels == 1) == 36  # the best mask whole
    assert np.count_nonzero(labels == 2) == 36 - 9  # the next one where free


def test_link_labels():
    prev = np.zeros((20, 20), np.uint32)
    prev[2:8, 2:8] = 7
    prev[12:18, 12:18] = 3
    cur = np.zeros((20, 20), np.uint32)
    cur[3:9, 3:9] = 1  # overlaps 7 well
    cur[0:2, 15:20] = 2  # new object
    cur[12:14, 12:14] = 3  # overlaps 3 but IoU 4/36 < 0.3: new id
    linked, nxt = link_labels(prev, cur, min_iou=0.3, next_id=8)
    assert set(np.unique(linked[cur == 1])) == {7}
    assert set(np.unique(linked[cur == 2])) == {8}
    assert set(np.unique(linked[cur == 3])) == {9}
    assert nxt == 10
    first, nxt = link_labels(None, cur, min_iou=0.3, next_id=1)
    np.testing.assert_array_equal(first, cur)
    assert nxt == 4


def test_stack_3d_linked_objects(predictor):
    stack, truth = make_scene_3d(dtype=np.uint16, scale=10.0, offset=300.0)
    seen = []
    res = segment_stack(predictor, stack, params=AutoParams(object_size=24),
                        progress=lambda d, n: seen.append((d, n)))
    assert seen == [(z + 1, len(stack)) for z in range(len(stack))]
    assert res.labels.shape == stack.shape and res.labels.dtype == np.uint32
    assert res.n_objects == 3 == int(res.labels.max())
    match_instances(res.labels, truth)
    # One id per 3D object: every object's id appears in all its slices.
    for i in range(1, 4):
        zs = np.flatnonzero((truth == i).any(axis=(1, 2)))
        ids = {int(np.bincount(res.labels[z][truth[z] == i]).argmax()) for z in zs}
        assert len(ids) == 1


def test_stack_cancel(predictor):
    stack, _ = make_scene_3d()
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(CancelledError):
        segment_stack(predictor, stack, params=AutoParams(object_size=24), cancel=cancel)


def test_params_validation_and_roundtrip():
    p = AutoParams(object_size=20, seeds="grid", min_area=10)
    assert AutoParams.from_dict(p.to_dict()) == p
    assert p.area_limits[0] == 10
    for bad in ({"object_size": 1}, {"seeds": "dense"}, {"polarity": "up"},
                {"min_stability": 1.5}, {"min_area": 100, "max_area": 10}):
        with pytest.raises(InvalidInputError):
            AutoParams(**bad)


def test_label_dtype():
    assert label_dtype(0) == np.uint16
    assert label_dtype(65535) == np.uint16
    assert label_dtype(65536) == np.uint32
