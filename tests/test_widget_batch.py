"""The batch tab of the dock widget, in real napari, with the test-double model.

The panel must call exactly ``workflows.batch.run_batch`` (the command line's engine) with
the parameters set in the panel; runs use ``scheduler="synchronous"`` (in-process) on small
generated TIFFs. The test double is not EdgeSAM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import TEST_DECODER, TEST_ENCODER  # noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402


TIMEOUT = 60_000


@pytest.fixture
def model():
    from napari_edgesam.engine import EdgeSamModel

    return EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double")


def discs(shape, centres, radius, value=200, background=20, dtype=np.uint8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, dtype)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return img


def write_inputs(folder, n=2):
    import tifffile

    folder.mkdir()
    paths = []
    for i in range(n):
        img = discs((96, 96), [(25, 25), (30, 70), (72, 40 + 8 * i)], 9)
        p = folder / f"img{i}.tif"
        tifffile.imwrite(p, img)
        paths.append(p)
    return paths


def test_batch_panel_runs_run_batch_and_loads_results(viewer, qtbot, model, tmp_path,
                                                      monkeypatch):
    import tifffile

    import napari_edgesam.workflows.batch as batch

    calls = []
    original = batch.run_batch

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "run_batch", spy)
    inputs = write_inputs(tmp_path / "raw")
    out = tmp_path / "labels"
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    panel.set_inputs([tmp_path / "raw"])
    panel.set_output(out)
    panel.object_size = 18
    panel.scheduler = "synchronous"
    assert panel.run() is not None
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)

    # exactly run_batch, with the panel's parameters (the CLI's function)
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert args[0] == [str(tmp_path / "raw")] and args[1] == str(out)
    assert args[2] is model
    assert args[3].automatic.object_size == 18 and args[3].channel is None
    assert kwargs["scheduler"] == "synchronous" and kwargs["overwrite"] is False

    summary = panel.summary
    assert summary.ok and [r.status for r in summary.results] == ["done", "done"]
    assert panel.progress.value() == 2 and panel.results_list.count() == 2
    assert "2 succeeded" in panel.summary_label.text()
    for p in inputs:
        lab = tifffile.imread(out / f"{p.stem}_labels.tif")
        assert lab.shape == (96, 96) and lab.max() == 3  # the three discs
        side = json.loads((out / f"{p.stem}_labels.json").read_text())
        assert side["parameters"]["automatic"]["object_size"] == 18

    # a second run skips what is done (resumable, as the command line)
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    assert [r.status for r in panel.summary.results] == ["skipped", "skipped"]

    # load the results into the viewer on request
    assert panel.load_results() is not None
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    names = [lay.name for lay in panel.loaded_layers]
    assert names == ["img0", "img0_labels", "img1", "img1_labels"]
    assert all(lay in viewer.layers for lay in panel.loaded_layers)
    np.testing.assert_array_equal(viewer.layers["img1_labels"].data,
                                  tifffile.imread(out / "img1_labels.tif"))
    np.testing.assert_array_equal(viewer.layers["img0"].data, tifffile.imread(inputs[0]))


def test_batch_cancel_and_errors(viewer, qtbot, model, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(msg))
    write_inputs(tmp_path / "raw", n=3)
    (tmp_path / "raw" / "broken.tif").write_bytes(b"not a tiff at all")
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    # missing inputs / output: a message, no run
    assert panel.run() is None and any("input" in m for m in infos)
    panel.set_inputs([tmp_path / "raw"])
    assert panel.run() is None and any("output" in m for m in infos)
    panel.set_output(tmp_path / "out")
    panel.scheduler = "synchronous"
    # cancel as soon as the first file is reported
    panel._relay.progress.connect(lambda *a: panel.cancel())
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    summary = panel.summary
    statuses = [r.status for r in summary.results]
    assert summary.cancelled and "cancelled" in statuses
    assert statuses.count("done") + statuses.count("failed") >= 1
    for r in summary.results:  # finished outputs are complete; cancelled ones left nothing
        if r.status == "cancelled":
            assert not (tmp_path / "out" / (r.input.rsplit("/", 1)[-1][:-4] + "_labels.json")
                        ).exists()
    # a rerun resumes: the broken file is reported, the others are done
    panel._relay.progress.disconnect()
    panel._relay.progress.connect(panel._on_progress)
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    by_name = {r.input.rsplit("/", 1)[-1]: r for r in panel.summary.results}
    assert by_name["broken.tif"].status == "failed" and by_name["broken.tif"].error
    assert all(by_name[f"img{i}.tif"].status in ("done", "skipped") for i in range(3))
    assert any(t.text().startswith("FAILED") for t in
               (panel.results_list.item(i) for i in range(panel.results_list.count())))
