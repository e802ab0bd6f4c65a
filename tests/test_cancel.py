"""engine.cancel.CancelToken: one flag for between-step checks, onnxruntime runs and other
processes (a stop file)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_edgesam.engine.cancel import CancelToken
from napari_edgesam.engine.errors import CancelledError


def test_cancel_sets_the_flag_and_terminates_every_run_started_with_it():
    token = CancelToken()
    before = token.run_options()
    assert not token.cancelled and not before.terminate
    token.check()  # nothing raised
    token.cancel()
    assert token.cancelled and before.terminate
    assert token.run_options().terminate  # a run started after the cancel stops at once
    with pytest.raises(CancelledError):
        token.check()
    token.cancel()  # idempotent


def test_a_stop_file_cancels_across_processes(tmp_path):
    stop = tmp_path / "sub" / "STOP"
    worker_side = CancelToken(stop_file=stop)
    assert not worker_side.cancelled
    CancelToken(stop_file=stop).cancel()  # another process's token: creates the file
    assert stop.exists() and worker_side.cancelled


def test_an_encoder_run_is_terminated_from_another_thread(test_model):
    """A real onnxruntime run of the test-double encoder with the token's RunOptions,
    cancelled from another thread, raises (the caller then knows it was cancelled)."""
    token = CancelToken()
    x = np.zeros((1, 3, 1024, 1024), np.float32)
    ro = token.run_options()
    token.cancel()  # before the run: onnxruntime refuses to start it
    assert ro.terminate
    with pytest.raises(Exception, match="(?i)terminat"):
        test_model.encode(x, run_options=ro)
    done = threading.Event()
    threading.Thread(target=lambda: (test_model.encode(x), done.set())).start()
    assert done.wait(30)  # a run without the token is not affected
