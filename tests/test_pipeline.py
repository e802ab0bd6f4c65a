"""Preprocessing off the critical path (issue 17, point 3): the one-slot look-ahead of
engine.pipeline in propagation and prefetch.

Overlap is shown by the order of recorded events, never by timing: the fake encoder of slice
k waits (up to a generous timeout) for the preparation of the next slice to start in the
background thread, and the test checks that it did start before the encoder returned.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_edgesam.engine import Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.pipeline import Ahead, SlicePipeline
from napari_edgesam.engine.prefetch import Prefetcher
from napari_edgesam.workflows.propagation import PropagationSettings, SliceAnnotation, propagate
from napari_edgesam.workflows.propagation import embeddings as prop_embeddings

N_SLICES = 9
NO_STOPS = PropagationSettings(min_area=0, min_score=0.0, min_overlap=0.0, max_growth=1e9,
                               keep_connected=False)


def _stack(n=N_SLICES, size=96):
    """A disc growing with z; pixel (0, 0) of slice z holds z (names the slice)."""
    yy, xx = np.mgrid[:size, :size]
    stack = np.stack([(40 + 150 * ((yy - 48) ** 2 + (xx - 48) ** 2 < (14 + z) ** 2))
                      .astype(np.uint16) for z in range(n)])
    stack[:, 0, 0] = np.arange(n)
    return stack


class _Log:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)

    def add(self, *event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def background_preps(self):
        return [e for e in self.events if e[0] == "prep" and e[2]]


class _RecordingPredictor(Predictor):
    """Records which slice (pixel (0, 0)) is prepared, and in which thread."""

    def __init__(self, model, log, **kw):
        super().__init__(model, **kw)
        self.log = log

    def prepare(self, image, *args, **kwargs):
        bg = threading.current_thread().name.startswith("edgesam-preprocess")
        self.log.add("prep", int(np.asarray(image)[0, 0]), bg)
        return super().prepare(image, *args, **kwargs)


class _WaitingModel:
    """The test double whose encoder k waits until k background preparations have started
    (at most ``timeout`` s: the last slice has no next one), recording start and end."""

    def __init__(self, model, log, timeout=1.5):
        self._model, self.log, self.timeout = model, log, timeout
        self.encodes = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, tensor, run_options=None):
        self.encodes += 1
        k = self.encodes
        self.log.add("enc_start", k)
        with self.log.cond:
            self.log.cond.wait_for(lambda: len(self.log.background_preps()) >= k,
                                   self.timeout)
        out = self._model.encode(tensor, run_options)
        self.log.add("enc_end", k)
        return out


def _assert_next_prepared_during_encoder(log, n_encodes):
    """Encoder k (all but the last) saw the k-th background preparation start before it
    returned, and that preparation was of the slice encoded next."""
    ev = log.events
    preps = [i for i, e in enumerate(ev) if e[0] == "prep" and e[2]]
    assert len(preps) >= n_encodes - 1
    enc_slices = []  # the slice each encoder ran on: the preparation used for it
    for k in range(1, n_encodes):
        assert preps[k - 1] < ev.index(("enc_end", k)), (k, ev)
        enc_slices.append(ev[preps[k - 1]][1])
    return enc_slices


# -- the pipeline itself -------------------------------------------------------------------
def test_pipeline_gives_the_embeddings_of_plain_embed_bit_for_bit(test_model, tmp_path):
    stack = _stack()
    mapping = None
    plain = Predictor(test_model, cache=None)
    with SlicePipeline(Predictor(test_model, cache=None)) as pipe:
        for z in range(len(stack)):
            nxt = Ahead(z + 1, stack[z + 1]) if z + 1 < len(stack) else None
            got = pipe.embed(stack[z], mapping, tag=z, ahead=nxt)
            want = plain.embed(stack[z], mapping)
            assert got.features.dtype == want.features.dtype
            assert np.array_equal(got.features, want.features)
            assert got.resized_size == want.resized_size
        assert pipe.stats["used"] == len(stack) - 1  # every slice but the first came ahead
        assert pipe.stats["wasted"] == 0


def test_a_wrong_guess_is_dropped_and_the_slice_asked_for_is_used(test_model):
    stack = _stack()
    plain = Predictor(test_model, cache=None)
    with SlicePipeline(Predictor(test_model, cache=None)) as pipe:
        pipe.embed(stack[0], tag=0, ahead=Ahead(5, stack[5]))
        got = pipe.embed(stack[1], tag=1)  # not slice 5
        assert np.array_equal(got.features, plain.embed(stack[1]).features)
        assert pipe.stats == {"submitted": 1, "used": 0, "wasted": 1}
        # Another mapping under the same tag is not taken either.
        from napari_edgesam.engine.intensity import IntensityMapping

        pipe.embed(stack[0], tag=0, ahead=Ahead(1, stack[1]))
        other = IntensityMapping(low=(0.0,), high=(100.0,))
        got = pipe.embed(stack[1], other, tag=1)
        assert np.array_equal(got.features, plain.embed(stack[1], other).features)
        assert pipe.stats["used"] == 0


def test_an_error_preparing_ahead_is_raised_when_that_slice_is_asked_for(test_model):
    from napari_edgesam.engine import InvalidInputError

    bad = np.full((32, 32), np.nan, np.float32)
    with SlicePipeline(Predictor(test_model, cache=None)) as pipe:
        pipe.embed(_stack()[0], tag=0, ahead=Ahead(1, bad))  # slice 0 is fine
        with pytest.raises(InvalidInputError):
            pipe.embed(bad, tag=1)


def test_the_next_slice_is_prepared_while_the_encoder_runs(test_model):
    log = _Log()
    model = _WaitingModel(test_model, log)
    pred = _RecordingPredictor(model, log, cache=None)
    stack = _stack(4)
    with SlicePipeline(pred) as pipe:
        for z in range(4):
            pipe.embed(stack[z], tag=z, ahead=Ahead(z + 1, stack[z + 1]) if z < 3 else None)
    assert _assert_next_prepared_during_encoder(log, 4) == [1, 2, 3]
    # Only the first slice was prepared in the caller's thread.
    assert [e for e in log.events if e[0] == "prep" and not e[2]] == [("prep", 0, False)]


# -- propagation -----------------------------------------------------------------------------
def _run(predictor, stack):
    return propagate(predictor, stack, {1: SliceAnnotation(4, points=[(48, 48)], labels=[1])},
                     settings=NO_STOPS)


def test_propagation_prepares_the_next_slice_while_the_encoder_runs(test_model):
    log = _Log()
    model = _WaitingModel(test_model, log)
    stack = _stack()
    res = _run(_RecordingPredictor(model, log, cache=None), stack)
    assert model.encodes == N_SLICES == res.stats["encoded"]
    order = _assert_next_prepared_during_encoder(log, N_SLICES)
    # The annotated slice 4, the up sweep 5..8, the down sweep 3..0: every guess right.
    assert order == [5, 6, 7, 8, 3, 2, 1, 0]
    assert [e for e in log.events if e[0] == "prep" and not e[2]] == [("prep", 4, False)]


def test_propagation_results_are_bit_identical_with_and_without_the_pipeline(
        test_model, tmp_path, monkeypatch):
    stack = _stack()
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(prop_embeddings.SlicePipeline, "enabled", property(
            lambda self, e=enabled: e))
        cache = EmbeddingCache(disk_dir=tmp_path / f"c{enabled}")
        res = _run(Predictor(test_model, cache=cache), stack)
        runs.append((res, cache))
    (a, ca), (b, cb) = runs
    assert np.array_equal(a.mask(1), b.mask(1)) and a.mask(1).any()
    assert {z: r.score for z, r in a.objects[1].records.items()} == \
        {z: r.score for z, r in b.objects[1].records.items()}
    assert a.stats == b.stats
    keys = sorted(ca._mem)
    assert keys == sorted(cb._mem) and len(keys) == N_SLICES
    for k in keys:
        assert np.array_equal(ca._mem[k], cb._mem[k])


# -- prefetch --------------------------------------------------------------------------------
def test_prefetch_prepares_the_next_queued_slice_while_the_encoder_runs(test_model, tmp_path):
    log = _Log()
    model = _WaitingModel(test_model, log)
    cache = EmbeddingCache(disk_dir=tmp_path / "c")
    pred = _RecordingPredictor(model, log, cache=cache)
    stack = _stack(3)
    with Prefetcher(pred, nice=0) as pf:
        pf.prefetch([stack[0], stack[1], stack[2]])
        assert pf.wait(30)
        assert pf.stats["done"] == 3
    assert _assert_next_prepared_during_encoder(log, 3) == [1, 2]
    plain = Predictor(test_model, cache=None)
    for z in range(3):  # what the prefetcher stored is what a plain embed gives
        hit = Predictor(test_model, cache=cache).embed(stack[z])
        assert hit.cached and np.array_equal(hit.features, plain.embed(stack[z]).features)


# -- batch -----------------------------------------------------------------------------------
def _scene():
    from test_automatic import make_scene_3d

    stack, _ = make_scene_3d(dtype=np.uint16, scale=10.0, offset=300.0)
    stack = stack.copy()
    stack[:, 0, 0] = np.arange(len(stack))  # names the slice (a background pixel)
    return stack


def test_batch_lookahead_gives_the_same_labels_and_prepares_the_next_plane(test_model):
    from napari_edgesam.workflows.automatic import AutoParams, segment_stack
    from napari_edgesam.workflows.batch.lookahead import LookAhead

    stack = _scene()
    params = AutoParams(object_size=24)
    plain = segment_stack(Predictor(test_model, cache=None), stack, params=params)
    log = _Log()
    model = _WaitingModel(test_model, log)
    reads = []

    class Planes:  # records each read, as a TIFF's planes would be read
        def __len__(self):
            return len(stack)

        def __getitem__(self, z):
            reads.append(z)
            return stack[z]

    with LookAhead(_RecordingPredictor(model, log, cache=None), Planes()) as la:
        got = segment_stack(la.predictor, la.planes, params=params)
        assert la.pipeline.stats["used"] == len(stack) - 1
    assert np.array_equal(got.labels, plain.labels) and got.n_objects == plain.n_objects
    assert got.decoder_calls == plain.decoder_calls
    assert model.encodes == len(stack)
    assert _assert_next_prepared_during_encoder(log, len(stack)) == list(range(1, len(stack)))
    # Every plane was read once (the one prepared ahead is not read again), and only the
    # statistics pass of segment_stack itself read planes before.
    assert sorted(reads[-len(stack):]) == list(range(len(stack)))
