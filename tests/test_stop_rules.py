"""The propagation stop rules (workflows.propagation.stop_rules) on constructed masks.

Each rejecting rule is pinned just past its threshold (it stops, for exactly that reason) and
just inside it (it does not); the order is pinned on pairs of rules that fire together; the
bounds (stack end, z-limit, the other annotated slice) and the seed rule are pinned too.
Finally the run is shown to decide with :func:`stop_reason` (no model logic of its own).
No model is needed except for that last test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_edgesam.engine.transforms import MaskCrop
from napari_edgesam.workflows.propagation import (
    REJECTING_REASONS,
    STOP_REASONS,
    PredictedMask,
    PropagationSettings,
    stop_reason,
)
from napari_edgesam.workflows.propagation.stop_rules import (
    bound_end,
    outward_reason,
    overlaps,
    seed_reason,
)

HW = (64, 64)
DEFAULT = PropagationSettings()  # min_area 4, min_score 0.70, min_overlap 0.5,
#                                  max_growth 1.8, growth_slack 30
JUST_BELOW_SCORE = float(np.nextafter(DEFAULT.min_score, 0.0))


def rect(r0, c0, h, w) -> np.ndarray:
    m = np.zeros(HW, bool)
    m[r0:r0 + h, c0:c0 + w] = True
    return m


def extra(mask, n) -> np.ndarray:
    """``mask`` plus ``n`` pixels in rows 40.. (away from every mask used here)."""
    out = mask.copy()
    region = out[40:]
    flat = region.reshape(-1)
    assert not flat.any() and n <= flat.size
    flat[:n] = True
    return out


PREV = rect(5, 5, 10, 10)  # 100 pixels: area-jump limit 1.8 * 100 + 30 = 210


def reason(pred, score=0.9, prev=PREV, settings=DEFAULT):
    return stop_reason(prev, PredictedMask(pred, score), settings)


# -- each rule: just past its threshold, just inside it ------------------------------------
def test_vanished():
    tiny = rect(7, 7, 1, 3)  # 3 pixels inside the previous mask
    assert reason(tiny) == "vanished"
    assert reason(rect(7, 7, 1, 4)) is None  # 4 = min_area
    assert reason(np.zeros(HW, bool)) == "vanished"
    assert reason(rect(7, 7, 1, 4), settings=PropagationSettings(min_area=5)) == "vanished"


def test_low_score():
    same = PREV.copy()
    assert reason(same, score=JUST_BELOW_SCORE) == "low score"
    assert reason(same, score=DEFAULT.min_score) is None  # the threshold itself passes
    assert reason(same, score=math.nan) == "low score"  # an undefined score stops


def test_overlap_collapsed():
    # The overlap coefficient |new & prev| / min(|new|, |prev|), both 100 px here.
    past = extra(rect(5, 5, 7, 7), 51)     # 49 px inside the previous mask: 0.49
    inside = extra(rect(5, 5, 5, 10), 50)  # 50 px inside: 0.50
    assert overlaps(past, PREV)[1] == pytest.approx(0.49)
    assert overlaps(inside, PREV)[1] == 0.5
    assert reason(past) == "overlap collapsed"
    assert reason(inside) is None
    # A mask inside the previous one (an object shrinking to its end) has overlap 1.
    assert reason(rect(8, 8, 3, 3)) is None


def test_area_jump():
    # area > max_growth * prev_area + growth_slack = 210; the previous mask stays inside.
    assert reason(extra(PREV, 111)) == "area jump"   # 211 px
    assert reason(extra(PREV, 110)) is None          # 210 px
    tight = PropagationSettings(max_growth=1.0, growth_slack=0)
    assert reason(extra(PREV, 1), settings=tight) == "area jump"
    assert reason(PREV, settings=tight) is None


# -- order: the first rule that fires is the reason -----------------------------------------
# (prediction, score, the reason reported, settings that switch that rule off, the reason then)
ORDER = [
    pytest.param(rect(40, 40, 1, 3), 0.1, "vanished",
                 PropagationSettings(min_area=0), "low score", id="vanished-before-low-score"),
    pytest.param(rect(40, 40, 1, 3), 0.9, "vanished",
                 PropagationSettings(min_area=0), "overlap collapsed",
                 id="vanished-before-overlap"),
    pytest.param(extra(rect(5, 5, 7, 7), 200), 0.5, "low score",
                 PropagationSettings(min_score=0.0), "overlap collapsed",
                 id="low-score-before-overlap"),
    pytest.param(extra(PREV, 111), JUST_BELOW_SCORE, "low score",
                 PropagationSettings(min_score=0.0), "area jump",
                 id="low-score-before-area-jump"),
    pytest.param(extra(rect(5, 5, 7, 7), 300), 0.9, "overlap collapsed",
                 PropagationSettings(min_overlap=0.0), "area jump",
                 id="overlap-before-area-jump"),
]


@pytest.mark.parametrize("pred, score, first, without_first, second", ORDER)
def test_order_when_two_rules_fire(pred, score, first, without_first, second):
    assert reason(pred, score) == first
    # The second rule really fires too: with the first switched off it is the reason.
    assert reason(pred, score, settings=without_first) == second


def test_order_is_documented():
    assert STOP_REASONS[:4] == ("vanished", "low score", "overlap collapsed", "area jump")
    assert set(STOP_REASONS[:4]) | {"unusable slice"} == REJECTING_REASONS
    doc = stop_reason.__doc__  # the numbered list, in order
    positions = [doc.index(f"{i}. ``'{r}'``") for i, r in enumerate(STOP_REASONS[:4], 1)]
    assert positions == sorted(positions)


# -- inputs: crops or arrays, a given overlap --------------------------------------------------
@pytest.mark.parametrize("pred, score", [(rect(7, 7, 1, 3), 0.9), (PREV, JUST_BELOW_SCORE),
                                         (extra(rect(5, 5, 7, 7), 51), 0.9),
                                         (extra(PREV, 111), 0.9), (extra(PREV, 110), 0.9)])
def test_crops_and_arrays_agree(pred, score):
    as_arrays = reason(pred, score)
    crop_prev, crop_pred = MaskCrop(PREV), MaskCrop(pred)
    assert stop_reason(crop_prev, PredictedMask(crop_pred, score), DEFAULT) == as_arrays
    ov = overlaps(crop_pred, crop_prev)[1]
    assert stop_reason(crop_prev, PredictedMask(crop_pred, score), DEFAULT,
                       overlap=ov) == as_arrays


def test_overlaps_iou_and_coefficient():
    a, b = rect(0, 0, 4, 4), rect(0, 2, 4, 4)  # 16 px each, 8 in common
    iou, ov = overlaps(a, b)
    assert iou == pytest.approx(8 / 24) and ov == 0.5
    empty = np.zeros(HW, bool)
    iou, ov = overlaps(empty, empty)
    assert math.isnan(iou) and ov == 0.0
    assert overlaps(a, empty) == (0.0, 0.0)


# -- the seed and the bounds ---------------------------------------------------------------
def test_seed_reason():
    assert seed_reason(None, DEFAULT) == "vanished"
    assert seed_reason(rect(0, 0, 1, 3), DEFAULT) == "vanished"
    assert seed_reason(MaskCrop(rect(0, 0, 1, 4)), DEFAULT) is None


def test_bounds():
    assert outward_reason(0, 40) == "stack end"
    assert outward_reason(39, 40) == "stack end"
    assert outward_reason(5, 40) == outward_reason(38, 40) == "z-limit"
    # Upwards with bound 10: slice 10 may be visited, 11 may not.
    assert bound_end(10, +1, 10, "stack end") is None
    assert bound_end(11, +1, 10, "stack end") == ("stack end", None)
    assert bound_end(11, +1, 10, "z-limit") == ("z-limit", None)
    # Downwards with bound 3; the other annotated slice is where the gap chain ends.
    assert bound_end(3, -1, 3, "met other annotation") is None
    assert bound_end(2, -1, 3, "met other annotation") == ("met other annotation", 2)


# -- the run decides with stop_reason ---------------------------------------------------------
def test_the_run_decides_with_stop_reason(shared_predictor_small, monkeypatch):
    """Patch stop_reason where the run uses it: the run's records follow what it says."""
    from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation
    from napari_edgesam.workflows.propagation import run as run_module

    stack, z, point = shared_predictor_small["stack"], 10, (32, 32)
    calls = []
    real = run_module.stop_reason

    def spy(previous, predicted, settings, **kw):
        calls.append((previous, predicted, settings, kw))
        return "overlap collapsed" if len(calls) == 3 else real(previous, predicted, settings,
                                                                 **kw)

    monkeypatch.setattr(run_module, "stop_reason", spy)
    res = Propagator(shared_predictor_small["predictor"], stack).run(
        {1: SliceAnnotation(z, points=[point])})
    up = next(e for e in res.objects[1].ends if e.direction > 0)
    # The up sweep comes first: calls 1 and 2 are slices 11 and 12, call 3 is slice 13.
    assert (up.reason, up.at, up.last) == ("overlap collapsed", 13, 12)
    rec = res.objects[1].records[13]
    assert not rec.accepted and rec.reason == "overlap collapsed"
    # The run passes what the rule needs: the previous mask, the prediction, the settings.
    previous, predicted, settings, kw = calls[0]
    assert isinstance(predicted, PredictedMask) and settings is res.settings
    assert np.array_equal(np.asarray(previous), res.mask(1)[z])
    assert kw["overlap"] == res.objects[1].records[11].overlap_prev


@pytest.fixture
def shared_predictor_small(test_model):
    """A small stack: a bright cylinder through slices 2..17 of 20, and a predictor."""
    from napari_edgesam.engine import Predictor

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 12 ** 2
    rng = np.random.default_rng(0)
    img = np.full((20, 64, 64), 100.0) + rng.normal(0, 5, (20, 64, 64))
    img[2:18][:, disc] += 320
    return {"stack": np.clip(img, 0, 65535).astype(np.uint16),
            "predictor": Predictor(test_model, cache=None)}
