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


def test_resume_redoes_a_label_file_whose_content_changed(tmp_path):
    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.workflows.automatic import AutoParams
    from napari_edgesam.workflows.batch import BatchParams, ModelSpec, run_batch

    img = np.full((64, 64), 20, np.uint8)
    img[20:40, 20:40] = 220
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", img)
    out = tmp_path / "out"
    spec = ModelSpec.from_model(EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double"))
    params = BatchParams(automatic=AutoParams(object_size=16))
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
