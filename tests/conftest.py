"""Shared fixtures: the committed test-double ONNX pair (never EdgeSAM) and helpers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).parent / "models"
#: Generator scripts that need PyTorch (not a test dependency): their output is committed and
#: they are run by hand; --doctest-modules would import them.
collect_ignore = ["models/make_published_style_decoder.py"]
TEST_ENCODER = MODELS / "test_encoder.onnx"
TEST_DECODER = MODELS / "test_decoder.onnx"
TEST_DECODER_IOU = MODELS / "test_decoder_iou.onnx"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Never touch the real user cache/config: every test gets its own folders."""
    root = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("NAPARI_EDGESAM_CONFIG_DIR", str(root / "config"))
    monkeypatch.delenv("NAPARI_EDGESAM_MODEL_DIR", raising=False)
    monkeypatch.delenv("NAPARI_EDGESAM_CARDS_DIR", raising=False)
    from napari_edgesam.engine.cache import set_default_cache

    set_default_cache(None)  # each test's default cache lives in its own folder
    yield
    set_default_cache(None)


@pytest.fixture
def model_dir(tmp_path):
    """A private copy of the test-double pair, ``enc.onnx`` and ``dec.onnx`` (optimised
    variants are written beside the files, so never next to the committed ones)."""
    import os
    import shutil

    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(TEST_ENCODER, d / "enc.onnx")
    shutil.copy(TEST_DECODER, d / "dec.onnx")
    yield d
    os.chmod(d, 0o755)  # tests may make it read-only; pytest must be able to clean up


@pytest.fixture
def closed_url():
    """A URL on a port where nothing listens (no network)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def embedding_cache(tmp_path):
    """A private memory + disk embedding cache, installed as the process-wide default."""
    from napari_edgesam.engine.cache import EmbeddingCache, set_default_cache

    cache = EmbeddingCache(disk_dir=tmp_path / "embeddings")
    set_default_cache(cache)
    yield cache
    set_default_cache(None)


@pytest.fixture
def viewer(make_napari_viewer):
    """A napari viewer (napari's fixture; it blocks plugin discovery, so widgets are built
    directly with the viewer)."""
    return make_napari_viewer()


@pytest.fixture(scope="session")
def test_model():
    """The test-double model pair (loaded once per session)."""
    from napari_edgesam.engine import EdgeSamModel

    return EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double").load()


@pytest.fixture
def predictor(test_model):
    from napari_edgesam.engine import Predictor

    return Predictor(test_model, cache=None)


class CountingModel:
    """Wraps an EdgeSamModel and counts encoder and decoder runs."""

    def __init__(self, model):
        self._model = model
        self.encodes = 0
        self.decodes = 0

    def encode(self, *args, **kwargs):
        self.encodes += 1
        return self._model.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        self.decodes += 1
        return self._model.decode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class SlowModel:
    """The test double with a slow encoder that honours ``RunOptions.terminate`` (for tests of
    work in worker threads, cancellation and GUI responsiveness)."""

    def __init__(self, delay):
        from napari_edgesam.engine import EdgeSamModel

        self._inner = EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="custom: slow")
        self.delay = delay
        self.calls = 0
        self.terminated = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, tensor, run_options=None):
        self.calls += 1
        t_end = time.perf_counter() + self.delay
        while time.perf_counter() < t_end:
            if run_options is not None and run_options.terminate:
                self.terminated += 1
                raise RuntimeError("Exiting due to terminate flag being set to true.")
            time.sleep(0.005)
        return self._inner.encode(tensor, run_options)


def disc_image(shape, center_rc, radius, value=200, background=20, dtype=np.uint8):
    """A grey image with one bright disc; returns (image, truth mask)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - center_rc[0]) ** 2 + (xx - center_rc[1]) ** 2 <= radius**2
    img = np.full(shape, background, dtype=dtype)
    img[truth] = value
    return img, truth


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
