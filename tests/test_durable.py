"""Outputs are durable, not only atomic: content flushed before the rename and the folder
after it; batch's resume verifies the label files it skips (a torn or emptied file is
redone)."""

from __future__ import annotations

import json
import os

import numpy as np
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER


def test_atomic_writes_flush_the_file_then_rename_then_flush_the_folder(tmp_path,
                                                                        monkeypatch):
    from napari_edgesam.engine import paths

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.json"
    paths.atomic_write_text(target, "{}")
    assert events == [("fsync", False), ("replace", str(target)), ("fsync", True)]
    assert target.read_text() == "{}"


def _one_image_batch(tmp_path):
    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.workflows.automatic import AutoParams
    from napari_edgesam.workflows.batch import BatchParams, ModelSpec

    img = np.full((64, 64), 20, np.uint8)
    img[20:40, 20:40] = 220
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", img)
    spec = ModelSpec.from_model(EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double"))
    return src, spec, BatchParams(automatic=AutoParams(object_size=16))


def test_resume_redoes_a_label_file_whose_content_changed(tmp_path):
    from napari_edgesam.workflows.batch import run_batch

    src, spec, params = _one_image_batch(tmp_path)
    out = tmp_path / "out"
    first = run_batch(src, out, spec, params, scheduler="synchronous")
    assert [r.status for r in first.results] == ["done"]
    side = json.loads((out / "a_labels.json").read_text())
    assert len(side["output"]["sha256"]) == 64
    labels = out / "a_labels.tif"
    good = labels.read_bytes()
    want = tifffile.imread(labels)
    assert want.max() >= 1
    # a power cut's torn file: same size, other bytes -> not taken as done
    labels.write_bytes(bytes(len(good)))
    second = run_batch(src, out, spec, params, scheduler="synchronous")
    assert [r.status for r in second.results] == ["done"]
    np.testing.assert_array_equal(tifffile.imread(labels), want)
    third = run_batch(src, out, spec, params, scheduler="synchronous")
    assert [r.status for r in third.results] == ["skipped"]


def test_leftovers_of_a_killed_run_are_swept_and_a_running_run_is_not_disturbed(tmp_path):
    """A killed run leaves a 280 MiB .scratch.npy and .partial files: the next run sweeps
    them (their owner's lock died with it). While another run holds the output's lock, its
    files are left alone and this run refuses that output."""
    from napari_edgesam.engine.paths import FileLock
    from napari_edgesam.workflows.batch import run_batch

    src, spec, params = _one_image_batch(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    scratch = out / ".a_labels.tif.1234abcd.scratch.npy"
    partial = out / ".a_labels.tif.xyz.partial"
    for f in (scratch, partial):
        f.write_bytes(b"left by a killed run")
    held = FileLock(out / ".a_labels.tif.lock")
    assert held.acquire(wait=False)  # "another run" writing the same output right now
    try:
        busy = run_batch(src, out, spec, params, scheduler="synchronous")
        assert [r.status for r in busy.results] == ["failed"]
        assert "another run is writing" in busy.results[0].error
        assert scratch.exists() and partial.exists()  # not ours to remove
    finally:
        held.release()
    done = run_batch(src, out, spec, params, scheduler="synchronous")
    assert [r.status for r in done.results] == ["done"]
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert left == [], left  # swept, and no lock file stays behind


def test_part_files_of_an_interrupted_fetch_are_swept(tmp_path, monkeypatch):
    """A fetch killed mid-transfer leaves a .part file; the next fetch of that file removes
    it (it holds the file's download lock, so no other fetch owns it)."""
    import hashlib
    import http.server
    import threading
    from types import SimpleNamespace

    from napari_edgesam.engine.download import fetch_file

    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    body = b"model bytes" * 1000

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "models"
        dest.mkdir()
        stale = dest / ".m.onnx.0123456789ab.part"
        stale.write_bytes(body[:100])
        spec = SimpleNamespace(filename="m.onnx", size=len(body),
                               sha256=hashlib.sha256(body).hexdigest(),
                               urls=[f"http://127.0.0.1:{srv.server_address[1]}/m.onnx"])
        got = fetch_file(spec, dest)
        assert got.read_bytes() == body
        assert sorted(p.name for p in dest.iterdir()) == ["m.onnx"]
    finally:
        srv.shutdown()
        srv.server_close()
