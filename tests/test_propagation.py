"""Propagation through stacks (workflows.propagation) with the test-double model.

The synthetic stack holds four ellipsoids of different sizes and brightness with noise: one
that starts and ends mid-stack, one cut by the bottom of the stack, a small one, and one cut
by the top. Truth is the rasterised ellipsoid, so every assertion is about real pixels and
real slices.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CountingModel
from scipy import ndimage as ndi

from napari_edgesam.engine import InvalidInputError, Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.intensity import default_mapping
from napari_edgesam.workflows.propagation import (
    REJECTING_REASONS,
    STOP_REASONS,
    PropagationSettings,
    PropagationStep,
    Propagator,
    SliceAnnotation,
    derive_prompts,
    propagate,
)

SHAPE = (40, 160, 160)
#: (centre (z, y, x), semi-axes (z, y, x), brightness)
OBJECTS = [
    ((20, 50, 50), (10, 22, 16), 420),   # 1: starts and ends mid-stack
    ((4, 112, 108), (12, 18, 24), 500),  # 2: cut by the bottom of the stack (z = 0)
    ((30, 38, 120), (6, 10, 9), 380),    # 3: small, ends mid-stack
    ((36, 118, 40), (8, 15, 17), 460),   # 4: cut by the top of the stack (z = 39)
]


def make_stack(seed=0, noise=12.0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    img = np.full(SHAPE, 100.0)
    truths = []
    for (cz, cy, cx), (c, ry, rx), value in OBJECTS:
        t = ((zz - cz) / c) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        truths.append(t)
        img[t] = value
    img = ndi.gaussian_filter(img, (0, 1.0, 1.0)) + rng.normal(0, noise, SHAPE)
    return np.clip(img, 0, 65535).astype(np.uint16), truths


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = np.count_nonzero(a) + np.count_nonzero(b)
    return 2 * np.count_nonzero(a & b) / s if s else 1.0


def z_extent(mask3d):
    zs = np.flatnonzero(mask3d.reshape(mask3d.shape[0], -1).any(axis=1))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def click(i):
    """One click in the middle of object i (1-based): the annotated slice and (x, y)."""
    (cz, cy, cx), _, _ = OBJECTS[i - 1]
    return SliceAnnotation(min(max(cz, 0), SHAPE[0] - 1), points=[(cx, cy)], labels=[1])


@pytest.fixture(scope="module")
def synth():
    return make_stack()


@pytest.fixture(scope="module")
def shared_predictor(test_model):
    """A predictor with a memory-only cache shared by the tests of this module."""
    return Predictor(test_model, cache=EmbeddingCache(memory_bytes=1 << 30, disk_dir=False))


@pytest.fixture(scope="module")
def full_run(synth, shared_predictor):
    """All four objects, one click each, in one run."""
    stack, _ = synth
    model = CountingModel(shared_predictor.model)
    predictor = Predictor(model, cache=shared_predictor.cache)
    return Propagator(predictor, stack).run({i: click(i) for i in range(1, 5)}), model


# -- accuracy and stopping ----------------------------------------------------------------
@pytest.mark.parametrize("i", [1, 2, 3, 4])
def test_one_click_recovers_object_and_stops_where_it_ends(synth, shared_predictor, i):
    stack, truths = synth
    res = Propagator(shared_predictor, stack).run({i: click(i)})
    mask = res.mask(i)
    assert mask.shape == SHAPE and mask.dtype == bool
    assert dice(mask, truths[i - 1]) >= 0.9
    (t0, t1), (g0, g1) = z_extent(truths[i - 1]), z_extent(mask)
    assert abs(g0 - t0) <= 1 and abs(g1 - t1) <= 1, (z_extent(truths[i - 1]), z_extent(mask))
    # The records say why each direction stopped, and the slice where it did.
    ends = {e.direction: e for e in res.objects[i].ends}
    assert set(ends) == {-1, +1}
    for direction, end in ends.items():
        assert end.reason in STOP_REASONS
        if (direction < 0 and t0 == 0) or (direction > 0 and t1 == SHAPE[0] - 1):
            assert end.reason == "stack end" and end.at is None
            assert end.last == (0 if direction < 0 else SHAPE[0] - 1)
        else:
            assert end.reason in REJECTING_REASONS
            assert end.at == end.last + direction
            rec = res.objects[i].records[end.at]
            assert not rec.accepted and rec.reason == end.reason
            assert not mask[end.at].any()


#: Flat-ended cylinders for the stop reasons: (first, last slice), centre (y, x), radius, value.
#: Each ends in a step (present with its full cross-section on its last slice, absent on the
#: next), so the slice where a direction stops is determined: the first slice without the
#: object, or the stack's end.
CYLINDERS = [
    ((12, 27), (50, 50), 16, 420),    # 1: mid-stack, large
    ((0, 14), (112, 108), 18, 500),   # 2: cut by the bottom of the stack (z = 0)
    ((24, 33), (38, 120), 6, 380),    # 3: mid-stack, small
    ((30, 39), (118, 40), 14, 460),   # 4: cut by the top of the stack (z = 39)
]


def make_cylinders(seed=0, noise=12.0):
    """A (Z, Y, X) uint16 stack of :data:`CYLINDERS` with noise, and the truth masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    img = np.full(SHAPE, 100.0)
    truths = []
    for (z0, z1), (cy, cx), r, value in CYLINDERS:
        t = np.zeros(SHAPE, bool)
        t[z0:z1 + 1] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        truths.append(t)
        img[t] = value
    img = ndi.gaussian_filter(img, (0, 1.0, 1.0)) + rng.normal(0, noise, SHAPE)
    return np.clip(img, 0, 65535).astype(np.uint16), truths


def test_objects_stop_for_the_documented_reasons(shared_predictor):
    """Each direction stops for one determined reason, on one determined slice.

    Object 2 is cut by the bottom and 4 by the top: 'stack end'. Past a flat end the box
    prompt lies on background: for the large objects (1, 2, 4) the model's mask there has a
    stability score far below ``min_score`` ('low score'); for the small object 3 the box is
    small, the score stays high but the mask fills far more than the object's cross-section
    ('area jump', checked only after the score). Either way the rejected slice is the first
    slice without the object.
    """
    stack, truths = make_cylinders()
    objects = {i: SliceAnnotation((z0 + z1) // 2, points=[(cx, cy)], labels=[1])
               for i, ((z0, z1), (cy, cx), _, _) in enumerate(CYLINDERS, start=1)}
    res = Propagator(shared_predictor, stack).run(objects)
    s = res.settings
    expected = {  # (object, direction) -> (reason, at, last)
        (1, -1): ("low score", 11, 12), (1, +1): ("low score", 28, 27),
        (2, -1): ("stack end", None, 0), (2, +1): ("low score", 15, 14),
        (3, -1): ("area jump", 23, 24), (3, +1): ("area jump", 34, 33),
        (4, -1): ("low score", 29, 30), (4, +1): ("stack end", None, 39),
    }
    got = {(oid, e.direction): (e.reason, e.at, e.last)
           for oid, o in res.objects.items() for e in o.ends}
    assert got == expected
    for (oid, _), (reason, at, last) in expected.items():
        obj = res.objects[oid]
        assert obj.extent == z_extent(truths[oid - 1])
        if at is None:
            continue
        assert not truths[oid - 1][at].any() and truths[oid - 1][last].any()
        rec = obj.records[at]
        assert not rec.accepted and rec.reason == reason and not res.mask(oid)[at].any()
        # The score decides with a wide margin: far below min_score for 'low score'; far
        # above it for 'area jump' (so the score rule, checked first, cannot fire instead).
        if reason == "low score":
            assert rec.score < s.min_score - 0.2, rec
        else:
            assert rec.score > s.min_score + 0.1 and rec.overlap_prev >= s.min_overlap, rec
            assert rec.area > s.max_growth * obj.area(last) + s.growth_slack, rec


def test_records_per_slice(synth, full_run):
    _, truths = synth
    res, _ = full_run
    obj = res.objects[1]
    ann = obj.records[20]
    assert ann.source == "annotation" and ann.direction == 0 and ann.origin == 20
    assert ann.area == np.count_nonzero(res.mask(1)[20])
    for z in obj.slices:
        rec = obj.records[z]
        assert rec.accepted
        assert rec.area == obj.area(z) > 0
        assert rec.score >= res.settings.min_score
        if rec.source == "propagated":
            assert rec.direction == (1 if z > 20 else -1) and rec.origin == 20
            assert 0 < rec.iou_prev <= 1 and rec.overlap_prev >= res.settings.min_overlap
    # Propagated masks really follow the object slice by slice.
    for z in obj.slices:
        assert dice(obj.slice_mask(z), truths[0][z]) >= 0.75, z


def test_multi_object_run_shares_embeddings(synth, full_run):
    _, truths = synth
    res, model = full_run
    visited = set()
    for obj in res.objects.values():
        visited.update(obj.records)
    # One encoder run per slice at most, however many objects use it.
    assert model.encodes <= len(visited) <= SHAPE[0]
    assert res.stats["encoded"] == model.encodes
    for i in range(1, 5):
        assert dice(res.mask(i), truths[i - 1]) >= 0.9
    labels = res.labels()
    assert labels.shape == SHAPE and labels.dtype == np.uint32
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert np.array_equal(labels == 3, res.mask(3))


def test_second_run_reencodes_nothing(synth, test_model):
    stack, _ = synth
    model = CountingModel(test_model)
    cache = EmbeddingCache(memory_bytes=1 << 30, disk_dir=False)
    prop = Propagator(Predictor(model, cache=cache), stack)
    objects = {1: click(1), 3: click(3)}
    first = prop.run(objects)
    n_first = model.encodes
    assert n_first == first.stats["encoded"] > 0
    assert n_first == len(set(first.objects[1].records) | set(first.objects[3].records))
    second = prop.run(objects)
    assert model.encodes == n_first, "the second run re-encoded slices"
    assert second.stats["encoded"] == 0 and second.stats["embeddings"] > 0
    for i in objects:
        assert np.array_equal(first.mask(i), second.mask(i))


def test_embeddings_are_lazy_and_use_one_stack_wide_mapping(synth, test_model, monkeypatch):
    stack, _ = synth
    predictor = Predictor(test_model, cache=None)
    seen = []
    real_embed = predictor.embed

    def spy(image, mapping=None, **kwargs):
        seen.append(mapping)
        return real_embed(image, mapping, **kwargs)

    monkeypatch.setattr(predictor, "embed", spy)
    res = Propagator(predictor, stack).run({3: click(3)})
    assert res.mapping == default_mapping(stack)
    assert seen and all(m == res.mapping for m in seen)
    # Only the slices the object needed were embedded (object 3 spans 24..36 of 0..39).
    assert len(seen) == res.stats["embeddings"] <= (36 - 24 + 1) + 2


# -- limits, cancellation ------------------------------------------------------------------
def test_z_limits(synth, shared_predictor):
    stack, truths = synth
    res = Propagator(shared_predictor, stack).run({1: click(1)}, z_range=(16, 23))
    mask = res.mask(1)
    assert z_extent(mask) == (16, 23)
    assert not mask[:16].any() and not mask[24:].any()
    assert dice(mask[16:24], truths[0][16:24]) >= 0.9
    assert {e.reason for e in res.objects[1].ends} == {"z-limit"}
    assert res.z_range == (16, 23)
    # An annotation outside the range is refused.
    with pytest.raises(InvalidInputError, match="outside the z-range"):
        Propagator(shared_predictor, stack).run({1: click(1)}, z_range=(0, 10))


def test_cancel_mid_run_gives_consistent_partial_result(synth, shared_predictor, full_run):
    stack, _ = synth
    full, _ = full_run
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 6

    progress = []
    res = Propagator(shared_predictor, stack).run(
        {i: click(i) for i in range(1, 5)}, should_cancel=should_cancel,
        progress=lambda done, total, z: progress.append((done, total, z)))
    assert res.cancelled
    assert progress and progress[-1][2] is None
    assert all(0 < d <= t for d, t, _ in progress)
    done_slices = [z for d, t, z in progress if z is not None]
    assert len(done_slices) == 6
    some = False
    for oid, obj in res.objects.items():
        assert {e.direction for e in obj.ends} == {-1, +1}
        for z in obj.slices:
            # Every slice present is complete and equal to the uncancelled run's.
            assert np.array_equal(obj.slice_mask(z), full.objects[oid].slice_mask(z)), (oid, z)
            some = True
        assert set(obj.slices) <= set(done_slices) | {a for a in obj.annotations}
    assert some
    assert "cancelled" in {e.reason for o in res.objects.values() for e in o.ends}
    labels = res.labels()  # still usable
    assert labels.shape == SHAPE and labels.any()


def test_cancel_by_closing_the_iterator(synth, shared_predictor):
    """What a napari thread_worker does: iterate the run, stop after a few slices."""
    stack, _ = synth
    run = Propagator(shared_predictor, stack).start({1: click(1)})
    steps = []
    gen = iter(run)
    for step in gen:
        assert isinstance(step, PropagationStep)
        steps.append(step)
        if len(steps) == 4:
            break
    gen.close()
    res = run.result()
    assert res.cancelled
    # Annotated slice 20, then 21, 22, 23 going up: the down direction never started.
    assert [s.z for s in steps] == [20, 21, 22, 23]
    assert res.objects[1].slices == [20, 21, 22, 23]
    assert {e.reason for e in res.objects[1].ends} == {"cancelled"}
    up = next(e for e in res.objects[1].ends if e.direction > 0)
    assert up.last == 23
    # Step updates carry the candidate masks for a live preview.
    z, rec, mask = steps[1].z, steps[1].updates[0][1], steps[1].updates[0][2]
    assert rec.z == z == 21 and np.array_equal(mask, res.objects[1].slice_mask(21))


def test_run_cancel_method(synth, shared_predictor):
    stack, _ = synth
    run = Propagator(shared_predictor, stack).start({1: click(1)})
    gen = iter(run)
    for step in gen:
        if step.done == 2:
            run.cancel()  # e.g. from the GUI thread; the worker may still be running
            snapshot = run.result()
            assert snapshot.cancelled and snapshot.objects[1].slices == [20, 21]
            assert {e.reason for e in snapshot.objects[1].ends} == {"cancelled"}
    res = run.result()
    assert res.cancelled and res.objects[1].slices == [20, 21]
    assert {e.reason for e in res.objects[1].ends} == {"cancelled"}


# -- gap filling, re-propagation -------------------------------------------------------------
@pytest.mark.parametrize("gap_fill", ["best", "middle"])
def test_gap_between_two_annotated_slices_is_filled_from_both_ends(synth, shared_predictor,
                                                                     gap_fill):
    stack, truths = synth
    truth = truths[0]
    anns = [SliceAnnotation(13, mask=truth[13]), SliceAnnotation(27, mask=truth[27])]
    res = Propagator(shared_predictor, stack, settings=PropagationSettings(gap_fill=gap_fill)
                     ).run({1: anns})
    mask = res.mask(1)
    assert np.array_equal(mask[13], truth[13]) and np.array_equal(mask[27], truth[27])
    assert dice(mask[14:27], truth[14:27]) >= 0.9
    obj = res.objects[1]
    assert all(mask[z].any() for z in range(13, 28))
    gap_ends = [e for e in obj.ends if e.reason == "met other annotation"]
    assert {(e.start, e.direction, e.at) for e in gap_ends} == {(13, 1, 27), (27, -1, 13)}
    origins = {obj.records[z].origin for z in range(14, 27)}
    assert origins == {13, 27}  # both ends contributed
    for z in range(14, 27):
        rec = obj.records[z]
        assert np.isfinite(rec.alternative_score)  # two candidates were compared
        if gap_fill == "middle":
            assert rec.origin == (13 if z - 13 <= 27 - z else 27)
        else:
            assert rec.score >= rec.alternative_score
    # Outside the gap the object still ends where it really ends.
    assert abs(z_extent(mask)[0] - 10) <= 1 and abs(z_extent(mask)[1] - 30) <= 1


def test_repropagation_recomputes_only_the_affected_range(synth, test_model):
    stack, truths = synth
    model = CountingModel(test_model)
    prop = Propagator(Predictor(model, cache=None), stack)
    first = prop.run({1: click(1), 3: click(3)})
    before_dec = model.decodes
    # The user says object 1 ends at slice 25: an empty mask on slice 26.
    empty = np.zeros(SHAPE[1:], bool)
    second = prop.repropagate(first, 1, SliceAnnotation(26, mask=empty))
    m1, m2 = first.mask(1), second.mask(1)
    # Below the annotated slice 20 nothing changed (not even recomputed).
    assert np.array_equal(m1[:21], m2[:21])
    # Between 20 and 26 the gap was refilled from 20 (26 has no object): same as before.
    assert np.array_equal(m1[21:26], m2[21:26])
    assert not m2[26:].any() and m1[26:29].any()
    # Object 3 untouched.
    assert np.array_equal(first.mask(3), second.mask(3))
    # Only slices 21..25 were embedded and decoded (one chain each way; the chain from the
    # empty slice stops at once).
    assert second.stats["embeddings"] == 5 == model.encodes - first.stats["encoded"]
    assert model.decodes - before_dec == 5
    ends = {(e.start, e.direction): e for e in second.objects[1].ends}
    assert ends[(20, -1)] == next(e for e in first.objects[1].ends if e.direction < 0)
    assert ends[(20, 1)].reason == "met other annotation" and ends[(20, 1)].at == 26
    assert ends[(26, 1)].reason == "vanished"
    assert sorted(second.objects[1].annotations) == [20, 26]
    assert sorted(first.objects[1].annotations) == [20]  # the previous result is untouched


def test_repropagation_with_corrected_mask_extends_the_object(synth, shared_predictor):
    stack, truths = synth
    truth = truths[0]
    strict = Propagator(shared_predictor, stack, settings=PropagationSettings(min_score=0.99))
    first = strict.run({1: click(1)})
    lo, hi = z_extent(first.mask(1))
    assert hi < 28  # the strict threshold stopped early
    # The user draws slice 28; re-propagate with the default thresholds.
    second = Propagator(shared_predictor, stack).repropagate(
        first, 1, SliceAnnotation(28, mask=truth[28]))
    m = second.mask(1)
    assert np.array_equal(m[28], truth[28])
    assert all(m[z].any() for z in range(20, 29))
    assert np.array_equal(m[:20], first.mask(1)[:20])
    assert dice(m[20:29], truth[20:29]) >= 0.9


# -- inputs: axes, dask, channels, validation --------------------------------------------
def test_time_axis_and_other_axis_positions(synth, shared_predictor):
    """2D+t is the same machinery along another axis; axis can be anywhere."""
    stack, _ = synth
    small = stack[8:32]
    ref = Propagator(shared_predictor, small).run({1: SliceAnnotation(12, points=[(50, 50)])})
    moved = np.moveaxis(small, 0, 2)  # (Y, X, T)
    res = Propagator(shared_predictor, moved, axis=2).run(
        {1: SliceAnnotation(12, points=[(50, 50)])})
    assert res.shape == ref.shape == small.shape
    assert np.array_equal(ref.mask(1), res.mask(1))


def test_dask_and_channel_stacks(synth, shared_predictor):
    import dask.array as da
    stack, truths = synth
    sub = stack[12:29]
    ref = propagate(shared_predictor, sub, {1: SliceAnnotation(8, points=[(50, 50)])})
    lazy = da.from_array(sub, chunks=(1, 160, 160))
    res = propagate(shared_predictor, lazy, {1: SliceAnnotation(8, points=[(50, 50)])})
    assert np.array_equal(ref.mask(1), res.mask(1))
    # (Z, Y, X, C) with the object in channel 1.
    zyxc = np.stack([np.zeros_like(sub), sub], axis=-1)
    res = propagate(shared_predictor, zyxc, {1: SliceAnnotation(8, points=[(50, 50)])},
                    channel=1)
    assert np.array_equal(ref.mask(1), res.mask(1))
    with pytest.raises(InvalidInputError, match="channel"):
        propagate(shared_predictor, zyxc, {1: SliceAnnotation(8, points=[(50, 50)])})


def test_invalid_inputs(synth, shared_predictor):
    stack, _ = synth
    prop = Propagator(shared_predictor, stack)
    with pytest.raises(InvalidInputError, match="shape"):
        prop.run({1: SliceAnnotation(5, mask=np.ones((10, 10), bool))})
    with pytest.raises(InvalidInputError, match="same slice"):
        prop.run({1: [SliceAnnotation(5, points=[(1, 1)]), SliceAnnotation(5, box=(0, 0, 9, 9))]})
    with pytest.raises(InvalidInputError, match="not both"):
        SliceAnnotation(5, mask=np.ones(SHAPE[1:], bool), points=[(1, 1)])
    with pytest.raises(InvalidInputError):
        SliceAnnotation(5)
    with pytest.raises(InvalidInputError, match="outside"):
        prop.run({1: SliceAnnotation(5, points=[(500, 1)])})
    with pytest.raises(InvalidInputError):
        Propagator(shared_predictor, stack[0])
    with pytest.raises(InvalidInputError):
        prop.run({})
    with pytest.raises(InvalidInputError, match="gap_fill"):
        PropagationSettings(gap_fill="sideways")


def test_empty_annotation_stops_at_once(synth, shared_predictor):
    stack, _ = synth
    res = Propagator(shared_predictor, stack).run(
        {1: SliceAnnotation(3, mask=np.zeros(SHAPE[1:], bool))})
    assert res.objects[1].slices == []
    assert {e.reason for e in res.objects[1].ends} == {"vanished"}
    assert res.stats["embeddings"] == 0


def test_derive_prompts_geometry():
    mask = np.zeros((100, 120), bool)
    mask[20:41, 30:71] = True  # rows 20..40, cols 30..70
    s = PropagationSettings(box_margin=0.1, box_margin_px=2, positive_points=1)
    p = derive_prompts(mask, s)
    # Box (x0, y0, x1, y1) = columns/rows of the mask's bounding box grown by 0.1 * 41 px.
    assert p["box"] == pytest.approx((30 - 4.1, 20 - 4.1, 70 + 4.1, 40 + 4.1))
    (x, y), = p["points"]
    assert 40 <= x <= 60 and y == pytest.approx(30, abs=1)  # deep inside: the centre row
    assert list(p["labels"]) == [1]
    # A neighbour reaching into the box gets a negative click on itself.
    other = np.zeros_like(mask)
    other[20:41, 74:110] = True
    p = derive_prompts(mask, s, [other])
    neg = p["points"][p["labels"] == 0]
    assert len(neg) == 1 and other[int(neg[0][1]), int(neg[0][0])]
    # Thin objects get no click (only the box); clicks-only settings keep the click.
    thin = np.zeros_like(mask)
    thin[50:53, 10:90] = True
    assert derive_prompts(thin, s)["points"] is None
    p = derive_prompts(thin, PropagationSettings(box_margin=-1))
    assert p["box"] is None and len(p["points"]) == 1
    # Boxes are clipped to the slice.
    edge = np.zeros_like(mask)
    edge[0:10, 0:10] = True
    assert derive_prompts(edge, s)["box"][:2] == (0.0, 0.0)


def test_cancel_terminates_a_running_encoder(synth):
    """cancel() from another thread stops the encoder run in progress (RunOptions), not
    only before the next slice: the run ends at once with the slices done kept."""
    import threading
    import time

    from conftest import SlowModel

    stack, _ = synth
    slow = SlowModel(3.0)  # each slice's encoder run takes 3 s unless terminated
    slow.delay = 0.0
    run = Propagator(Predictor(slow, cache=None), stack).start({1: click(1)})
    steps = []
    t0 = None
    for step in run:
        steps.append(step)
        if len(steps) == 2:  # the annotated slice and one more, then slow encoders
            slow.delay = 3.0
            t0 = time.perf_counter()
            threading.Timer(0.3, run.cancel).start()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.5, elapsed  # not the 3 s a whole encoder run takes
    assert slow.terminated == 1
    res = run.result()
    assert res.cancelled
    assert len(res.objects[1].slices) == 2  # the slices done are kept
    assert {e.reason for e in res.objects[1].ends} == {"cancelled"}


def test_a_given_cancel_token_stops_the_run(synth, shared_predictor, tmp_path):
    """The run's one cancellation flag is its CancelToken: a caller's token (here through
    its stop file, as another process would) stops it like run.cancel()."""
    from napari_edgesam.engine.cancel import CancelToken

    stack, _ = synth
    token = CancelToken(stop_file=tmp_path / "stop")
    run = Propagator(shared_predictor, stack).start({1: click(1)}, token=token)
    assert run.token is token and not run.cancelled
    for step in run:
        if step.done == 2:
            (tmp_path / "stop").touch()
    res = run.result()
    assert run.cancelled and res.cancelled and res.objects[1].slices == [20, 21]
    assert {e.reason for e in res.objects[1].ends} == {"cancelled"}
    # Closing a run early cancels its token: the caller sees it.
    token = CancelToken()
    run = Propagator(shared_predictor, stack).start({1: click(1)}, token=token)
    gen = iter(run)
    next(gen)
    gen.close()
    assert token.cancelled and run.result().cancelled
