"""A memory cache sized for the work (issue 17, point 4) and asynchronous disk writes
(point 3): a propagation over N slices keeps its N embeddings in memory for that run only,
within a share of the available memory; disk entries are written in the background, whole,
and flushed at the end of the run."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_edgesam.engine import Predictor
from napari_edgesam.engine import cache_writer
from napari_edgesam.engine.cache import SUFFIX, EmbeddingCache
from napari_edgesam.engine.cache_writer import RUN_MEMORY_CAP, run_memory_bound
from napari_edgesam.workflows.propagation import PropagationSettings, SliceAnnotation, propagate

EMB = 256 * 64 * 64 * 4  # bytes of one embedding (the test double honours the contract)
N = 10
NO_STOPS = PropagationSettings(min_area=0, min_score=0.0, min_overlap=0.0, max_growth=1e9,
                               keep_connected=False)


def _stack(n=N, size=64):
    yy, xx = np.mgrid[:size, :size]
    return np.stack([(40 + 150 * ((yy - 32) ** 2 + (xx - 32) ** 2 < (10 + z) ** 2))
                     .astype(np.uint16) for z in range(n)])


def _propagate(pred, stack, seen=None):
    def progress(done, total, z):
        if seen is not None and z is not None:
            seen.append(dict(pred.cache.stats))

    return propagate(pred, stack, {1: SliceAnnotation(N // 2, points=[(32, 32)], labels=[1])},
                     settings=NO_STOPS, progress=progress)


@pytest.fixture
def plenty(monkeypatch):
    """A machine with 64 GiB available."""
    monkeypatch.setattr(cache_writer, "available_memory_bytes", lambda: 64 * 2**30)


def test_the_rule():
    configured = 3 * EMB
    assert run_memory_bound(N * EMB, configured, available=64 * 2**30) == N * EMB
    assert run_memory_bound(2 * EMB, configured, available=64 * 2**30) == configured
    assert run_memory_bound(N * EMB, configured, available=16 * EMB) == 4 * EMB  # a quarter
    assert run_memory_bound(N * EMB, configured, available=4 * EMB) == configured
    assert run_memory_bound(2**40, 0, available=2**40) == RUN_MEMORY_CAP


def test_unknown_available_memory_falls_back_conservatively(monkeypatch):
    monkeypatch.setattr(cache_writer, "available_memory_bytes", lambda: None)
    assert run_memory_bound(2**40, 0) == cache_writer.FALLBACK_AVAILABLE_BYTES // 4


def test_available_memory_is_measured():
    avail = cache_writer.available_memory_bytes()
    assert avail is None or avail > 0


def test_a_run_keeps_its_embeddings_in_memory_and_gives_the_bound_back(
        test_model, tmp_path, plenty):
    cache = EmbeddingCache(memory_bytes=3 * EMB, disk_dir=tmp_path / "c")
    pred = Predictor(test_model, cache=cache)
    seen = []
    res = _propagate(pred, _stack(), seen)
    assert res.stats["encoded"] == N
    # During the run: the bound covers the run, nothing was evicted, all N in memory.
    assert all(s["memory_bound"] >= N * EMB for s in seen)
    assert seen[-1]["memory_entries"] == N and seen[-1]["memory_evictions"] == 0
    # Afterwards: the configured bound again, the rest on disk (flushed: nothing pending).
    s = cache.stats
    assert cache.memory_bytes == cache.configured_memory_bytes == 3 * EMB
    assert s["memory_bound"] == 3 * EMB and s["memory_entries"] == 3
    assert s["pending_writes"] == 0
    assert len(list((tmp_path / "c").glob("*" + SUFFIX))) == N
    # A warm run: the 3 kept come from memory, the others from disk once, and within the
    # run nothing is evicted again (the LRU scan that sent every hit to disk is gone).
    seen.clear()
    before = dict(cache.stats)
    res = _propagate(pred, _stack(), seen)
    assert res.stats["encoded"] == 0
    assert seen[-1]["memory_hits"] - before["memory_hits"] == 3
    assert seen[-1]["disk_hits"] - before["disk_hits"] == N - 3
    assert seen[-1]["memory_evictions"] == before["memory_evictions"]
    assert cache.memory_bytes == 3 * EMB


def test_the_run_bound_respects_a_small_available_memory(test_model, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_writer, "available_memory_bytes", lambda: 20 * EMB)
    cache = EmbeddingCache(memory_bytes=3 * EMB, disk_dir=tmp_path / "c")
    seen = []
    _propagate(Predictor(test_model, cache=cache), _stack(), seen)
    assert {s["memory_bound"] for s in seen} == {5 * EMB}  # a quarter of 20 embeddings
    assert max(s["memory_entries"] for s in seen) == 5
    assert cache.memory_bytes == 3 * EMB


def test_the_bound_comes_back_when_a_run_fails(test_model, tmp_path, plenty):
    cache = EmbeddingCache(memory_bytes=3 * EMB, disk_dir=tmp_path / "c")
    pred = Predictor(test_model, cache=cache)

    def boom(done, total, z):
        if done == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        propagate(pred, _stack(), {1: SliceAnnotation(N // 2, points=[(32, 32)])},
                  settings=NO_STOPS, progress=boom)
    assert cache.memory_bytes == 3 * EMB and cache.stats["memory_entries"] <= 3


def test_run_scopes_add_up_and_undo_their_own(tmp_path, plenty):
    cache = EmbeddingCache(memory_bytes=2 * EMB, disk_dir=False)
    with cache.run_scope(4 * EMB) as a:
        assert a == cache.memory_bytes == 4 * EMB
        with cache.run_scope(5 * EMB):
            assert cache.memory_bytes == 4 * EMB + 3 * EMB
            for i in range(7):
                cache.put(f"k{i}", np.full((256, 64, 64), i, np.float32))
            assert cache.stats["memory_entries"] == 7
        assert cache.memory_bytes == 4 * EMB and cache.stats["memory_entries"] == 4
    assert cache.memory_bytes == 2 * EMB and cache.stats["memory_entries"] == 2
    assert cache.get("k6") is not None and cache.get("k0") is None  # least recent dropped


# -- the background writer -------------------------------------------------------------------
def _gated(cache):
    """Hold the background writer until the returned event is set."""
    gate = threading.Event()
    real = cache._writer._write

    def write(key, arr):
        gate.wait(30)
        real(key, arr)

    cache._writer._write = write
    return gate


def test_async_entries_are_served_while_queued_and_complete_after_flush(tmp_path):
    folder = tmp_path / "c"
    cache = EmbeddingCache(memory_bytes=0, disk_dir=folder, async_writes=True)
    gate = _gated(cache)
    arrays = {f"k{i}": np.random.default_rng(i).normal(size=(1, 256, 64, 64))
              .astype(np.float32) for i in range(3)}
    for k, a in arrays.items():
        cache.put(k, a)
    assert cache.stats["pending_writes"] == 3
    assert not list(folder.glob("*" + SUFFIX))  # nothing on disk yet, and nothing partial
    for k, a in arrays.items():  # served from the queue (no memory level here)
        assert np.array_equal(cache.get(k), a) and k in cache
    gate.set()
    assert cache.flush(30)
    assert cache.stats["pending_writes"] == 0 and cache.stats["async_writes"] == 3
    fresh = EmbeddingCache(memory_bytes=0, disk_dir=folder)  # another process, say
    for k, a in arrays.items():
        got = fresh.get(k)
        assert got is not None and got.dtype == np.float32 and np.array_equal(got, a)
    assert fresh.stats["corrupt"] == 0


def test_the_write_queue_is_bounded(tmp_path):
    cache = EmbeddingCache(memory_bytes=0, disk_dir=tmp_path / "c", async_writes=True)
    cache._writer.max_entries = 2
    gate = _gated(cache)
    small = np.zeros(4, np.float32)
    for i in range(3):  # one being written (held), two queued
        cache.put(f"k{i}", small)
    done = threading.Event()
    t = threading.Thread(target=lambda: (cache.put("k3", small), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.3)  # waits for room in the queue
    gate.set()
    assert done.wait(30) and cache.flush(30)
    assert len(list((tmp_path / "c").glob("*" + SUFFIX))) == 4


def test_discard_and_clear_drop_queued_writes(tmp_path):
    cache = EmbeddingCache(memory_bytes=0, disk_dir=tmp_path / "c", async_writes=True)
    gate = _gated(cache)
    for i in range(3):
        cache.put(f"k{i}", np.full(4, i, np.float32))
    threading.Timer(0.2, gate.set).start()
    cache.discard("k2")
    assert cache.get("k2") is None
    cache.clear()
    assert cache.flush(30) and not list((tmp_path / "c").glob("*" + SUFFIX))
