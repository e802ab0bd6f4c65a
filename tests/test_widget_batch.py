"""The batch tab of the dock widget, in real napari, with the test-double model.

The panel must call exactly ``workflows.batch.run_batch`` (the command line's engine) with
the parameters set in the panel; runs use ``scheduler="synchronous"`` (in-process) on small
generated TIFFs. The test double is not EdgeSAM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

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
    assert panel.progress.text() == panel.progress_text == "2 done of 2 files"
    assert panel.progress.value() == panel.progress.maximum() > 0
    assert panel.results_list.count() == 2
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
    assert panel.progress_text == "0 done, 2 skipped of 2 files"

    # load the results into the viewer on request
    assert panel.load_results() is not None
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    names = [lay.name for lay in panel.loaded_layers]
    assert names == ["img0", "img0_labels", "img1", "img1_labels"]
    assert [lay.visible for lay in panel.loaded_layers] == [False, False, True, True]
    assert all(lay in viewer.layers for lay in panel.loaded_layers)
    np.testing.assert_array_equal(viewer.layers["img1_labels"].data,
                                  tifffile.imread(out / "img1_labels.tif"))
    np.testing.assert_array_equal(viewer.layers["img0"].data, tifffile.imread(inputs[0]))


def test_batch_cancel_and_errors(viewer, qtbot, model, tmp_path, monkeypatch):
    """What the user sees after a run with a broken file that is cancelled half-way: the
    file finished before is done (its outputs complete), the broken one failed with the
    reader's reason, the running one and the one not started yet are cancelled and left
    nothing behind (no output, no temporary, lock or stop file); a rerun resumes."""
    import napari.utils.notifications as notifications
    import tifffile

    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(msg))
    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "a.tif", discs((96, 96), [(25, 25), (30, 70), (72, 40)], 9))
    (raw / "b_broken.tif").write_bytes(b"not a tiff at all")
    write_stack(raw / "c_stack.tif", 15)  # long enough to be cancelled half-way
    tifffile.imwrite(raw / "d.tif", discs((96, 96), [(25, 25), (72, 48)], 9))
    out = tmp_path / "out"
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    # missing inputs / output: a message, no run
    assert panel.run() is None and any("input" in m for m in infos)
    panel.set_inputs([raw])
    assert panel.run() is None and any("output" in m for m in infos)
    panel.set_output(out)
    panel.object_size = 18
    panel.scheduler = "synchronous"  # files in order: a, b_broken, c_stack, d
    slices_seen: dict = {}

    def cancel_in_c(name, done, total):
        name = name.rsplit("/", 1)[-1]
        slices_seen[name] = max(slices_seen.get(name, -1), done)
        if name == "c_stack.tif" and done >= 1:
            panel.cancel()

    panel._relay.slices.connect(cancel_in_c)
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    summary = panel.summary
    by_name = {r.input.rsplit("/", 1)[-1]: r for r in summary.results}
    assert list(by_name) == ["a.tif", "b_broken.tif", "c_stack.tif", "d.tif"]
    assert [r.status for r in summary.results] == ["done", "failed", "cancelled", "cancelled"]
    assert summary.cancelled and not summary.ok
    # done: its outputs, complete
    assert by_name["a.tif"].n_objects == 3
    assert tifffile.imread(out / "a_labels.tif").max() == 3
    assert json.loads((out / "a_labels.json").read_text())["status"] == "done"
    # failed, with the reader's reason
    error = by_name["b_broken.tif"].error
    assert error.startswith("cannot read ") and "b_broken.tif as TIFF: not a TIFF file" in error
    # cancelled while running (after some of its slices), and not started at all
    assert 1 <= slices_seen["c_stack.tif"] < 15
    assert "d.tif" not in slices_seen  # never opened
    # no output of the cancelled files, no partial, scratch, lock or stop file
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a_labels.tif", "a_labels.json", "napari-edgesam-batch.log.jsonl"])
    # what the tab shows
    assert panel.progress_text == "1 done, 1 failed, 2 cancelled of 4 files"
    lines = [panel.results_list.item(i).text() for i in range(panel.results_list.count())]
    assert len(lines) == 4
    assert lines[0].startswith("done     a.tif -> a_labels.tif: 3 objects, 1 slices")
    assert lines[1] == f"FAILED   b_broken.tif: {error}"
    assert lines[2:] == ["cancelled c_stack.tif", "cancelled d.tif"]
    assert panel.summary_label.text().startswith(
        "1 succeeded, 0 skipped (already done), 1 failed, 2 cancelled in ")
    assert f"FAILED {raw / 'b_broken.tif'}: {error}" in panel.summary_label.toolTip()

    # a rerun resumes: the done file is skipped, the broken one fails again, the rest is done
    panel._relay.slices.disconnect(cancel_in_c)
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    rerun = {r.input.rsplit("/", 1)[-1]: r for r in panel.summary.results}
    assert [r.status for r in rerun.values()] == ["skipped", "failed", "done", "done"]
    assert rerun["b_broken.tif"].error == error
    assert panel.progress_text == "2 done, 1 skipped, 1 failed of 4 files"
    assert tifffile.imread(out / "c_stack_labels.tif").shape == (15, 96, 96)


# ---------------------------------------------------------------------------------------
# Progress, Cancel, loading results
# ---------------------------------------------------------------------------------------


def write_stack(path, n_z, shift=0):
    import tifffile

    img = discs((96, 96), [(25, 25), (30, 70), (72, 40 + shift)], 9)
    tifffile.imwrite(path, np.stack([img] * n_z), imagej=True, metadata={"axes": "ZYX"})
    return path


def show_fitted(viewer, qtbot, w):
    """Show the window and size it so that the Batch page just fits (no scroll bar, 10
    pixels to spare): any growth of the page would then shift its rows."""
    from qtpy.QtWidgets import QScrollArea

    viewer.window.show()
    w.tabs.setCurrentWidget(w.batch.parentWidget().parentWidget())
    area = w.batch.parentWidget().parentWidget()
    assert isinstance(area, QScrollArea)
    bar = area.verticalScrollBar()
    qtbot.wait(50)
    for _ in range(10):
        if bar.maximum() == 0:
            break
        w.window().resize(w.window().width(), w.window().height() + bar.maximum() + 10)
        qtbot.wait(50)
    assert bar.maximum() == 0


def test_progress_counts_are_truthful_and_cancel_stays_put(viewer, qtbot, model, tmp_path):
    from qtpy.QtCore import QPoint

    raw = tmp_path / "raw"
    write_inputs(raw, n=2)
    write_stack(raw / "img2.tif", 15)  # long enough to be cancelled half-way
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    # idle: no claim about files (it said "0 / 1 files")
    assert panel.progress.text() == "no run yet" and panel.progress.value() == 0
    panel.set_inputs([raw])
    panel.set_output(tmp_path / "out")
    panel.object_size = 18
    panel.scheduler = "synchronous"
    show_fitted(viewer, qtbot, w)

    def where():
        b = panel.cancel_button
        return b.mapTo(w.window(), QPoint(0, 0)), b.size()

    seen = {"geometry": [where()], "details": [], "activity": []}

    def on_signal(*args):
        seen["geometry"].append(where())

    def on_slices(name, done, total):
        if name.endswith("img2.tif") and done >= 1:
            act = panel._activity
            seen["details"].append(panel.detail_label.text())
            seen["activity"].append((act, act.total, act.n, panel.progress_text))
            panel.cancel()

    panel._relay.progress.connect(on_signal)
    panel._relay.slices.connect(on_signal)
    panel._relay.slices.connect(on_slices)
    assert panel.run() is not None
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    qtbot.wait(50)
    seen["geometry"].append(where())

    assert [r.status for r in panel.summary.results] == ["done", "done", "cancelled"]
    assert panel.progress.text() == "2 done, 1 cancelled of 3 files"  # it said "3 / 3"
    assert panel.progress.value() == 2 * panel.progress.maximum() // 3
    assert panel.results_list.item(2).text().startswith("cancelled")
    # progress inside the file: its slices, in the tab and in napari's activity panel
    assert seen["details"] and seen["details"][0].startswith("img2.tif: slice ")
    assert seen["details"][0].endswith(" / 15")
    act, total, n, text = seen["activity"][0]
    assert (total, n, text) == (3, 2, "2 done of 3 files")
    assert act.disable and panel._activity is None  # closed at the end
    # Cancel never moved while the run filled the tab
    assert len(seen["geometry"]) > 4
    assert all(g == seen["geometry"][0] for g in seen["geometry"]), seen["geometry"]


@pytest.mark.slow
def test_cancel_with_worker_processes_returns_within_seconds(viewer, qtbot, model, tmp_path):
    import time

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(2):
        write_stack(raw / f"s{i}.tif", 15, shift=4 * i)
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    panel.set_inputs([raw])
    panel.set_output(tmp_path / "out")
    panel.object_size = 18
    panel.scheduler = None  # "worker processes"
    cancelled_at = []

    def on_slices(name, done, total):
        if done >= 1 and not cancelled_at:
            cancelled_at.append(time.perf_counter())
            panel.cancel()

    panel._relay.slices.connect(on_slices)
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    assert cancelled_at, "no slice progress came from the worker processes"
    assert time.perf_counter() - cancelled_at[0] < 5.0
    assert [r.status for r in panel.summary.results] == ["cancelled", "cancelled"]
    assert panel.progress_text == "0 done, 2 cancelled of 2 files"
    assert not list((tmp_path / "out").glob("*_labels.*"))


def test_load_results_with_physical_scale_each_labels_over_its_image(viewer, qtbot, model,
                                                                     tmp_path):
    import tifffile

    raw = tmp_path / "raw"
    raw.mkdir()
    img = discs((96, 96), [(25, 25), (30, 70), (72, 40)], 9)
    # plain TIFF, 2500 pixels per centimetre: 4 um pixels
    tifffile.imwrite(raw / "a.tif", img, resolution=(2500.0, 2500.0),
                     resolutionunit="CENTIMETER")
    # ImageJ stack: 0.25 um pixels, 0.5 um apart
    tifffile.imwrite(raw / "b.tif", np.stack([img] * 3), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
    # OME-TIFF with two channels: 0.2 um pixels, 0.8 um apart
    tifffile.imwrite(raw / "c.ome.tif", np.stack([np.stack([img, img // 2], 0)] * 2),
                     ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2,
                                         "PhysicalSizeY": 0.2, "PhysicalSizeZ": 0.8})
    out = tmp_path / "out"
    w = make_widget(viewer, model, prefetch=False)
    panel = w.batch
    panel.set_inputs([raw])
    panel.set_output(out)
    panel.object_size = 18
    panel.channel = 0
    panel.scheduler = "synchronous"
    panel.run()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)
    assert panel.summary.ok, panel.summary.format()
    assert panel.load_results() is not None
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT)

    layers = {lay.name: lay for lay in panel.loaded_layers}
    assert list(layers) == ["a", "a_labels", "b", "b_labels", "c.ome ch0", "c.ome ch1",
                            "c_labels"]
    expected = {"a": (4.0, 4.0), "b": (0.5, 0.25, 0.25), "c.ome ch0": (0.8, 0.2, 0.2),
                "c.ome ch1": (0.8, 0.2, 0.2)}
    pairs = {"a": "a_labels", "b": "b_labels", "c.ome ch0": "c_labels",
             "c.ome ch1": "c_labels"}
    order = list(viewer.layers)
    for name, scale in expected.items():
        image, labels = layers[name], layers[pairs[name]]
        np.testing.assert_allclose(image.scale, scale)
        np.testing.assert_allclose(labels.scale, scale)
        # the labels cover exactly their image, right above it in the layer list
        np.testing.assert_allclose(labels.extent.world, image.extent.world)
        assert order.index(labels) > order.index(image)
    assert order.index(layers["a_labels"]) == order.index(layers["a"]) + 1
    assert order.index(layers["b_labels"]) == order.index(layers["b"]) + 1
    assert order.index(layers["c_labels"]) == order.index(layers["c.ome ch1"]) + 1
    # only the last pair is visible
    assert [lay.name for lay in panel.loaded_layers if lay.visible] == [
        "c.ome ch0", "c.ome ch1", "c_labels"]
    np.testing.assert_array_equal(layers["b_labels"].data, tifffile.imread(out / "b_labels.tif"))
    np.testing.assert_array_equal(layers["b"].data, tifffile.imread(raw / "b.tif"))
