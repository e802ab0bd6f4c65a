"""Prefetcher: background encoding that a click can stop at once, leaving no cache entry.

The encoder used here must be slow enough to be caught in flight: a slow test double built
with onnx (a chain of large MatMuls honouring the encoder contract, not EdgeSAM), and the
architecture-faithful benchmark model when it has been generated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DECODER, disc_image

from napari_edgesam.engine import EdgeSamModel, Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.prefetch import Prefetcher

FAITHFUL = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
N_MATMULS = 12


def _slow_encoder(path: Path) -> Path:
    """(1, 3, 1024, 1024) -> 12 x MatMul(3072 x 1024 @ 1024 x 1024) -> (1, 256, 64, 64)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["image", "shape_in"], ["t0"])]
    for i in range(N_MATMULS):
        nodes.append(helper.make_node("MatMul", [f"t{i}", "w"], [f"t{i + 1}"]))
    nodes += [
        helper.make_node("Slice", [f"t{N_MATMULS}", "zero", "rows"], ["s"]),
        helper.make_node("Reshape", ["s", "shape_out"], ["image_embeddings"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([3072, 1024], np.int64), "shape_in"),
        numpy_helper.from_array(np.eye(1024, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1024], np.int64), "rows"),
        numpy_helper.from_array(np.array([1, 256, 64, 64], np.int64), "shape_out"),
    ]
    graph = helper.make_graph(
        nodes, "slow_test_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.doc_string = "slow test double, NOT EdgeSAM"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module", params=["slow-double", "faithful"])
def slow_model(request, tmp_path_factory):
    if request.param == "faithful":
        enc = FAITHFUL / "edgesam_faithful_encoder.onnx"
        dec = FAITHFUL / "edgesam_faithful_decoder.onnx"
        if not (enc.is_file() and dec.is_file()):
            pytest.skip("faithful benchmark model not generated (benchmarks/README.md)")
        return EdgeSamModel(enc, dec, name="faithful").load()
    enc = _slow_encoder(tmp_path_factory.mktemp("slow") / "slow_encoder.onnx")
    return EdgeSamModel(enc, TEST_DECODER, name="slow-double").load()


def _memory_cache():
    return EmbeddingCache(memory_bytes=64 * 2**20, disk_dir=False)


def _wait_until(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _image(seed=0):
    img, _ = disc_image((300, 400), (120, 200), 40, value=200 - seed)
    return img


def test_cancel_stops_an_in_flight_encode_and_stores_nothing(slow_model):
    cache = _memory_cache()
    predictor = Predictor(slow_model, cache=cache)
    img = _image()
    # how long one whole encode takes here, now (same machine, same load)
    t0 = time.perf_counter()
    Predictor(slow_model, cache=None).embed(img)
    full = time.perf_counter() - t0

    with Prefetcher(predictor) as prefetcher:
        prefetcher.prefetch([img])
        _wait_until(lambda: prefetcher.busy)
        time.sleep(min(0.2, full / 4))  # let the encoder run get going
        t_cancel = time.perf_counter()
        assert prefetcher.cancel() is True
        assert prefetcher.wait(timeout=60)
        stopped_after = time.perf_counter() - t_cancel
        assert prefetcher.stats["cancelled"] == 1
        assert prefetcher.stats["done"] == 0
    # terminated mid-run: well before a whole encode could have finished
    assert stopped_after < 0.5 * full, (stopped_after, full)
    assert cache.stats["puts"] == 0 and cache.stats["memory_entries"] == 0
    # the slice is then encoded normally
    emb = predictor.embed(img)
    assert emb.features.shape == (1, 256, 64, 64)
    assert cache.stats["puts"] == 1


def test_paused_stops_the_run_and_resumes_the_interrupted_slice(slow_model):
    cache = _memory_cache()
    predictor = Predictor(slow_model, cache=cache)
    img = _image(1)
    with Prefetcher(predictor) as prefetcher:
        prefetcher.prefetch([img])
        _wait_until(lambda: prefetcher.busy)
        with prefetcher.paused():
            _wait_until(lambda: not prefetcher.busy)
            assert prefetcher.stats["cancelled"] == 1
            assert prefetcher.pending == 1  # the interrupted slice waits
            assert cache.stats["puts"] == 0
            # interactive work has the model to itself
            predictor.predict(points=[(200, 120)], embedding=Predictor(
                slow_model, cache=None).embed(img))
            assert not prefetcher.busy
        assert prefetcher.wait(timeout=120)
        assert prefetcher.stats["done"] == 1
    assert cache.stats["puts"] == 1
    # the predictor now finds it in the cache
    hits = cache.stats["memory_hits"]
    predictor.set_image(img)
    assert cache.stats["memory_hits"] == hits + 1


def test_prefetch_replaces_the_queue_and_reads_lazily(test_model):
    cache = _memory_cache()
    predictor = Predictor(test_model, cache=cache)
    reads = []

    def lazy(seed):
        def read():
            reads.append(seed)
            return _image(seed)
        return read

    with Prefetcher(predictor) as prefetcher:
        with prefetcher.paused():  # hold the worker so both calls meet a full queue
            prefetcher.prefetch([lazy(1), lazy(2)])
            prefetcher.prefetch([lazy(3)])  # replaces the two not started
            assert prefetcher.pending == 1
        assert prefetcher.wait(timeout=60)
        assert prefetcher.stats["dropped"] == 2
        assert prefetcher.stats["done"] == 1
    assert reads == [3]
    assert cache.stats["puts"] == 1


def test_cancel_when_idle_and_after_close(test_model):
    prefetcher = Prefetcher(Predictor(test_model, cache=_memory_cache()))
    assert prefetcher.cancel() is False
    prefetcher.close()
    with pytest.raises(RuntimeError):
        prefetcher.prefetch([_image()])


def test_a_failing_slice_is_counted_not_raised(test_model):
    with Prefetcher(Predictor(test_model, cache=_memory_cache())) as prefetcher:
        prefetcher.prefetch([np.zeros((1, 1), np.uint8), _image()])  # too small, then fine
        assert prefetcher.wait(timeout=60)
        assert prefetcher.stats["failed"] == 1
        assert prefetcher.stats["done"] == 1


def test_each_slice_runs_under_its_own_cancel_token():
    """cancel() fires the CancelToken of the slice in flight, which terminates its
    onnxruntime run; the next slice gets a fresh token."""
    from napari_edgesam.engine.cancel import CancelToken

    started, seen = [], []

    class Waiting:  # embed() runs until its RunOptions is terminated
        def embed(self, image, mapping=None, *, rgb=None, run_options=None, tile="full"):
            started.append(image)
            while not run_options.terminate:
                time.sleep(0.002)
            raise RuntimeError("terminated")

    with Prefetcher(Waiting()) as prefetcher:
        prefetcher.prefetch(["a"])
        _wait_until(lambda: prefetcher.busy)
        token = prefetcher._token
        assert isinstance(token, CancelToken) and not token.cancelled
        seen.append(token)
        assert prefetcher.cancel() is True
        assert token.cancelled
        assert prefetcher.wait(timeout=10)
        assert prefetcher.stats["cancelled"] == 1 and prefetcher._token is None
        prefetcher.prefetch(["b"])
        _wait_until(lambda: prefetcher.busy)
        assert prefetcher._token is not seen[0] and not prefetcher._token.cancelled
    assert started == ["a", "b"]
    assert prefetcher.stats["cancelled"] == 2  # close() cancelled "b"
