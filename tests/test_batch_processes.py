"""Batch runs on local worker processes: how workers start, per-slice progress, cancelling.

Workers must never re-run the calling script (a script without an ``if __name__ ==
"__main__"`` guard, e.g. one that starts napari, would run again in every worker), and
Cancel must end a run within seconds, terminating workers that do not stop by themselves.
All runs use the test-double model (not EdgeSAM) on small generated stacks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER

import napari_edgesam.workflows.batch as batch
from napari_edgesam.engine import EdgeSamModel
from napari_edgesam.workflows.automatic import AutoParams
from napari_edgesam.workflows.batch import BatchParams, ModelSpec, run_batch, schedulers

PARAMS = BatchParams(automatic=AutoParams(object_size=18))
CENTRES = [(25, 25), (30, 70), (72, 40)]


def disc_stack(n_z: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:96, :96]
    img = np.full((n_z, 96, 96), 20, np.uint8)
    for cy, cx in CENTRES:
        img[:, (yy - cy) ** 2 + (xx - cx - shift) ** 2 <= 81] = 200
    return img


def write_stacks(folder: Path, n: int, n_z: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"s{i}.tif"
        tifffile.imwrite(p, disc_stack(n_z, shift=2 * i), imagej=True, metadata={"axes": "ZYX"})
        paths.append(p)
    return paths


@pytest.fixture
def spec():
    return ModelSpec.from_model(EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double"))


UNGUARDED = textwrap.dedent('''
    # No `if __name__ == "__main__":` guard, on purpose: everything here is top level.
    import json, os, sys
    from pathlib import Path

    work = Path(sys.argv[1])
    with open(work / "top_level_runs.txt", "a") as fh:
        fh.write(f"{os.getpid()}\\n")

    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.workflows.automatic import AutoParams
    from napari_edgesam.workflows.batch import BatchParams, run_batch

    model = EdgeSamModel(sys.argv[2], sys.argv[3], name="test-double")
    slices = []
    summary = run_batch(work / "in", work / "out", model,
                        BatchParams(automatic=AutoParams(object_size=18)), scheduler=None,
                        workers=2, slice_progress=lambda *a: slices.append(a))
    (work / "summary.json").write_text(json.dumps({
        "statuses": [r.status for r in summary.results],
        "workers": [r.worker for r in summary.results],
        "errors": [r.error for r in summary.results],
        "slices": slices,
        "pid": os.getpid(),
    }))
''')


@pytest.mark.slow
@pytest.mark.parametrize("how", ["path", "module"])
def test_unguarded_script_runs_its_top_level_code_once(tmp_path, how):
    work = tmp_path / "work"
    inputs = write_stacks(work / "in", n=2, n_z=2)
    code = tmp_path / "proj"
    code.mkdir()
    (code / "unguarded_script.py").write_text(UNGUARDED)
    args = [str(work), str(TEST_ENCODER), str(TEST_DECODER)]
    if how == "path":  # python path/to/script.py: children would re-run it from its path
        cmd = [sys.executable, str(code / "unguarded_script.py"), *args]
    else:  # python -m module: children would re-import it by name
        cmd = [sys.executable, "-m", "unguarded_script", *args]
    proc = subprocess.run(cmd, cwd=code, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    runs = (work / "top_level_runs.txt").read_text().split()
    report = json.loads((work / "summary.json").read_text())
    assert runs == [str(report["pid"])]  # the script's top level ran once: in itself
    assert report["statuses"] == ["done", "done"], report["errors"]
    # the work ran in worker processes, not in the script's process
    assert all(not w.endswith(f":{report['pid']}") for w in report["workers"])
    for p in inputs:
        labels = tifffile.imread(work / "out" / f"{p.stem}_labels.tif")
        assert labels.shape == (2, 96, 96)
        assert len(np.unique(labels[0])) == 4  # background and the three discs
    # per-slice progress came back from the workers: 0, 1, 2 of 2 slices for each file
    by_file: dict = {}
    for name, done, total in report["slices"]:
        assert total == 2
        by_file.setdefault(name, []).append(done)
    assert {Path(n).name: d for n, d in by_file.items()} == {"s0.tif": [0, 1, 2],
                                                             "s1.tif": [0, 1, 2]}


def _cancel_on_first_slice(run_kwargs):
    """Run ``run_batch`` with a cancel hook that fires on the first slice done in a worker;
    returns (summary, seconds from the cancel to the return, slice messages)."""
    fired = threading.Event()
    fired_at = []
    seen = []

    def on_slices(name, done, total):
        seen.append((name, done, total))
        if done >= 1 and not fired.is_set():
            fired_at.append(time.perf_counter())
            fired.set()

    summary = run_batch(**run_kwargs, slice_progress=on_slices, cancel=fired.is_set)
    assert fired_at, "no slice progress arrived from the workers"
    return summary, time.perf_counter() - fired_at[0], seen


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


@pytest.mark.slow
def test_cancel_with_worker_processes_ends_within_seconds(tmp_path, spec):
    write_stacks(tmp_path / "in", n=3, n_z=12)
    before = _children()
    summary, seconds, seen = _cancel_on_first_slice(dict(
        inputs=tmp_path / "in", out_dir=tmp_path / "out", model=spec, params=PARAMS,
        scheduler=None, workers=2))
    assert seconds < 3.0
    assert summary.cancelled and [r.status for r in summary.results] == ["cancelled"] * 3
    assert {t for _, _, t in seen} == {12}
    # nothing but the run log is left; the workers are gone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [batch.LOG_NAME]
    assert _children() <= before


@pytest.mark.slow
def test_workers_that_do_not_stop_are_terminated_and_a_rerun_resumes(tmp_path, spec,
                                                                      monkeypatch):
    inputs = write_stacks(tmp_path / "in", n=2, n_z=6)
    out = tmp_path / "out"
    # s0 is finished before; the run then works on s1 only
    first = run_batch(inputs[0], out, spec, PARAMS, scheduler="synchronous")
    assert first.ok
    done_before = (out / "s0_labels.json").read_text()
    monkeypatch.setattr(schedulers, "CANCEL_GRACE_S", 0.0)  # no time to stop: terminate at once
    before = _children()
    summary, seconds, _ = _cancel_on_first_slice(dict(
        inputs=tmp_path / "in", out_dir=out, model=spec, params=PARAMS, scheduler=None,
        workers=1))
    assert seconds < 3.0
    assert [r.status for r in summary.results] == ["skipped", "cancelled"]
    assert _children() <= before  # the terminated worker is gone
    # finished outputs untouched, no half-written or temporary file of the killed task
    assert (out / "s0_labels.json").read_text() == done_before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["s0_labels.tif", "s0_labels.json", batch.LOG_NAME])
    rerun = run_batch(tmp_path / "in", out, spec, PARAMS, scheduler=None, workers=1)
    assert [r.status for r in rerun.results] == ["skipped", "done"]
    labels = tifffile.imread(out / "s1_labels.tif")
    assert labels.shape == (6, 96, 96) and len(np.unique(labels)) == 4


def test_synchronous_runs_report_slices_too(tmp_path, spec):
    write_stacks(tmp_path / "in", n=1, n_z=3)
    seen = []
    summary = run_batch(tmp_path / "in", tmp_path / "out", spec, PARAMS,
                        scheduler="synchronous", slice_progress=lambda *a: seen.append(a))
    assert summary.ok
    assert [(Path(n).name, d, t) for n, d, t in seen] == [("s0.tif", d, 3) for d in range(4)]
