"""The sessions the engine makes carry the chosen thread-pool policy (issue 17, point 1).

Mechanism only, on the test-double model (never EdgeSAM): the options are read back from
each session with ``get_session_options()`` and its config entries. Whether a policy is
faster is measured by ``benchmarks/bench_threads.py``, never asserted here.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from napari_edgesam.engine import paths
from napari_edgesam.engine.session import (
    DEFAULT_THREAD_POLICY,
    THREAD_POLICIES,
    THREAD_POLICY_SETTING,
    EdgeSamModel,
    session_options,
    thread_policy,
)

from conftest import TEST_DECODER, TEST_ENCODER

SPIN = "session.intra_op.allow_spinning"
STOP = "session.force_spinning_stop"

#: (encoder, decoder) config entries (allow_spinning, force_spinning_stop) per local policy;
#: None: not set, onnxruntime's default (spinning on, not stopped after a run).
EXPECTED = {
    "spin": ((None, None), (None, None)),
    "encoder-no-spin": (("0", None), (None, None)),
    "no-spin": (("0", None), ("0", None)),
    "stop-after-run": ((None, "1"), (None, "1")),
}


def entry(opts, key):
    """A session config entry, or None when it is not set."""
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime: "does not have configuration with key"
        return None


def carried(model: EdgeSamModel, role: str):
    opts = model.session(role).get_session_options()
    return entry(opts, SPIN), entry(opts, STOP)


def test_every_local_policy_is_described():
    assert set(EXPECTED) == set(THREAD_POLICIES) - {"global"}
    assert DEFAULT_THREAD_POLICY in THREAD_POLICIES


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_sessions_carry_the_policy(policy):
    model = EdgeSamModel(TEST_ENCODER, TEST_DECODER, num_threads=2,
                         thread_policy=policy).load()
    assert (carried(model, "encoder"), carried(model, "decoder")) == EXPECTED[policy]
    for role in ("encoder", "decoder"):  # the options the sessions had before stay
        opts = model.session(role).get_session_options()
        assert opts.intra_op_num_threads == 2
        assert opts.use_per_session_threads
        assert opts.log_severity_level == 3


def test_default_sessions_carry_the_default_policy():
    model = EdgeSamModel(TEST_ENCODER, TEST_DECODER).load()
    assert model.thread_policy is None
    assert thread_policy() == DEFAULT_THREAD_POLICY
    assert (carried(model, "encoder"), carried(model, "decoder")) \
        == EXPECTED[DEFAULT_THREAD_POLICY]


def test_the_setting_chooses_and_the_keyword_wins():
    other = next(p for p in EXPECTED if p != DEFAULT_THREAD_POLICY)
    paths.set_setting(THREAD_POLICY_SETTING, other)
    model = EdgeSamModel(TEST_ENCODER, TEST_DECODER).load()
    assert (carried(model, "encoder"), carried(model, "decoder")) == EXPECTED[other]
    model = EdgeSamModel(TEST_ENCODER, TEST_DECODER, thread_policy="spin").load()
    assert (carried(model, "encoder"), carried(model, "decoder")) == EXPECTED["spin"]


def test_a_bad_setting_warns_and_uses_the_default():
    paths.set_setting(THREAD_POLICY_SETTING, "fast please")
    with pytest.warns(UserWarning, match="thread_pool_policy"):
        assert thread_policy() == DEFAULT_THREAD_POLICY


def test_a_bad_keyword_is_an_error():
    with pytest.raises(ValueError, match="unknown thread policy"):
        EdgeSamModel(TEST_ENCODER, TEST_DECODER, thread_policy="fast")
    with pytest.raises(ValueError, match="unknown thread policy"):
        session_options("decoder", policy="fast")


def test_decoder_parts_get_the_decoder_side_of_a_policy():
    opts = session_options("decoder_prompt", num_threads=1, policy="encoder-no-spin")
    assert entry(opts, SPIN) is None and opts.intra_op_num_threads == 1
    opts = session_options("decoder_prompt", num_threads=1, policy="no-spin")
    assert entry(opts, SPIN) == "0"


def test_global_pools_in_a_process_of_their_own():
    """The global policy makes onnxruntime's process-wide pools once (a second model, or
    pools someone else made first, are used as they are) and its sessions use them. In a
    child process: the pools cannot be undone in this one."""
    code = textwrap.dedent(f"""
        from onnxruntime.capi import _pybind_state
        from napari_edgesam.engine import session as s
        calls = []
        real = _pybind_state.set_global_thread_pool_sizes
        def spy(*a):
            calls.append(a)
            return real(*a)
        _pybind_state.set_global_thread_pool_sizes = spy
        a = s.EdgeSamModel({str(TEST_ENCODER)!r}, {str(TEST_DECODER)!r}, num_threads=2,
                           thread_policy="global").load()
        b = s.EdgeSamModel({str(TEST_ENCODER)!r}, {str(TEST_DECODER)!r},
                           thread_policy="global").load()
        opts = [m.session(r).get_session_options() for m in (a, b)
                for r in ("encoder", "decoder")]
        assert calls == [(2, 1)], calls
        assert not any(o.use_per_session_threads for o in opts)
        import numpy as np
        emb = a.encode(np.zeros((1, 3, 1024, 1024), np.float32))
        scores, masks = b.decode(emb, np.array([[[500, 500], [0, 0]]], np.float32),
                                 np.array([[1, -1]], np.float32))
        assert masks.shape == (1, 4, 256, 256)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_batch_workers_use_the_models_thread_policy():
    """A batch run's worker builds its sessions with the panel model's thread policy (the
    spec carried only paths and threads before, so workers fell back to the settings)."""
    from conftest import TEST_DECODER, TEST_ENCODER

    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.workflows.batch.model import ModelSpec, predictor_for

    model = EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test double", num_threads=1,
                         thread_policy="no-spin")
    spec = ModelSpec.from_model(model)
    assert spec.thread_policy == "no-spin"
    assert spec.with_threads(2).thread_policy == "no-spin"
    pred = predictor_for(spec.with_threads(1))
    assert pred.model.thread_policy == "no-spin"
    other = predictor_for(dataclasses.replace(spec.with_threads(1), thread_policy="spin"))
    assert other is not pred and other.model.thread_policy == "spin"
