"""Batch segmentation of TIFF files: outputs vs truth, metadata, resuming, failures, dask.

All runs use the test-double model (not EdgeSAM). Most runs use the in-process
("synchronous") dask scheduler to stay fast; one test compares dask's local process pool
with a dask.distributed LocalCluster, and one kills a CLI run in a subprocess and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib  # noqa: F401  (tifffile's zlib codec is used through compression="zlib")
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from test_automatic import make_scene_2d, make_scene_3d, match_instances

from napari_edgesam import __version__
from napari_edgesam.cli.main import main
from napari_edgesam.engine import EdgeSamModel, InvalidInputError
from napari_edgesam.workflows.automatic import AutoParams
from napari_edgesam.workflows.batch import (
    BatchParams,
    ModelSpec,
    output_paths,
    plan_axes,
    run_batch,
)
from napari_edgesam.workflows.tiff_io import LazyTiff

MODEL_ARGS = ["--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]
PARAMS = BatchParams(automatic=AutoParams(object_size=24), channel=0)


@pytest.fixture
def spec():
    return ModelSpec.from_model(EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double"))


def write_inputs(folder: Path, which=("flat2d", "stack3d", "hyper", "ome", "broken")) -> dict:
    """Write generated TIFFs with known instances; returns name -> truth labels."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    if "flat2d" in which:  # 2D uint8, plain TIFF, calibrated in centimetres
        img, truth = make_scene_2d(seed=10)
        tifffile.imwrite(folder / "flat2d.tif", img, resolution=(2500.0, 2500.0),
                         resolutionunit="CENTIMETER")
        truths["flat2d"] = truth
    if "stack3d" in which:  # 3D uint16 ImageJ stack with voxel size
        stack, truth = make_scene_3d(shape=(6, 120, 140), dtype=np.uint16, scale=9.0,
                                     offset=400.0, seed=11,
                                     balls=[(2, 40, 40, 14, 200), (3, 85, 95, 13, 170)])
        tifffile.imwrite(folder / "stack3d.tif", stack, imagej=True, resolution=(4.0, 4.0),
                         metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
        truths["stack3d"] = truth
    if "hyper" in which:  # ImageJ hyperstack T, Z, C (compressed: read page by page)
        frames, truth_t = [], []
        for t in range(2):
            nuc, tr = make_scene_3d(shape=(3, 112, 128), dtype=np.uint16, scale=8.0,
                                    seed=12 + t, z_radius=3,
                                    balls=[(1, 36 + 6 * t, 40, 13, 210),
                                           (1, 80, 90 - 5 * t, 12, 160)])
            other, _ = make_scene_3d(shape=(3, 112, 128), dtype=np.uint16, scale=8.0,
                                     seed=20 + t, balls=[(1, 56, 64, 30, 240)])
            frames.append(np.stack([nuc, other], axis=1))  # Z, C, Y, X
            truth_t.append(tr)
        tifffile.imwrite(folder / "hyper.tif", np.stack(frames), imagej=True,
                         compression="zlib", resolution=(5.0, 5.0),
                         metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um",
                                   "finterval": 30.0})
        truths["hyper"] = np.stack(truth_t)
    if "ome" in which:  # OME-TIFF, Z and C, compressed, physical sizes in micrometres
        nuc, truth = make_scene_3d(shape=(4, 110, 120), seed=13,
                                   balls=[(1, 40, 40, 13, 200), (2, 75, 85, 12, 180)])
        data = np.stack([nuc, np.zeros_like(nuc)], axis=1)
        tifffile.imwrite(folder / "ome.ome.tif", data, ome=True, compression="zlib",
                         metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm",
                                   "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "µm",
                                   "PhysicalSizeZ": 0.8, "PhysicalSizeZUnit": "µm"})
        truths["ome"] = truth
    if "broken" in which:  # a truncated compressed stack: the header reads, the pixels don't
        stack, _ = make_scene_3d(shape=(4, 100, 100), seed=14)
        tmp = folder / "broken.part"
        tifffile.imwrite(tmp, stack, imagej=True, compression="zlib", metadata={"axes": "ZYX"})
        raw = tmp.read_bytes()
        tmp.unlink()
        (folder / "broken.tif").write_bytes(raw[: int(len(raw) * 0.5)])
    return truths


def read_labels(path):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes, tif


def sidecar(out_dir, name):
    return json.loads((Path(out_dir) / f"{name}_labels.json").read_text())


# ---------------------------------------------------------------------------------------


def test_outputs_match_truth_with_metadata(tmp_path, spec):
    truths = write_inputs(tmp_path / "in")
    inputs_before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    events = []
    summary = run_batch(tmp_path / "in", tmp_path / "out", spec, PARAMS,
                        scheduler="synchronous",
                        progress=lambda r, d, n: events.append(
                            (Path(r.input).name, r.status, d, n)))
    # Every input reported once, in completion order, with running counts.
    assert [e[2:] for e in events] == [(i, 5) for i in range(1, 6)]
    status = {Path(r.input).name: r.status for r in summary.results}
    assert status == {"broken.tif": "failed", "flat2d.tif": "done", "hyper.tif": "done",
                      "ome.ome.tif": "done", "stack3d.tif": "done"}
    assert not summary.ok
    (broken,) = summary.failed
    assert "broken.tif" in broken.input and broken.error
    assert "1 failed" in summary.format() and "4 succeeded" in summary.format()
    # Inputs are never modified.
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == inputs_before

    out = tmp_path / "out"
    assert not list(out.glob("*.partial")) and not list(out.glob(".napari-edgesam-stop-*"))
    assert not (out / "broken_labels.tif").exists()

    # 2D: plain TIFF in, OME out, resolution tags carried over.
    labels, axes, _ = read_labels(out / "flat2d_labels.tif")
    assert axes == "YX" and labels.dtype == np.uint16 and labels.shape == truths["flat2d"].shape
    match_instances(labels, truths["flat2d"])
    with tifffile.TiffFile(out / "flat2d_labels.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value == (2500, 1)
        assert tif.pages[0].tags["ResolutionUnit"].value == 3
        assert tif.pages[0].compression != 1

    # 3D ImageJ: ImageJ out, same axes, voxel size; one id per 3D object.
    labels, axes, _ = read_labels(out / "stack3d_labels.tif")
    assert axes == "ZYX" and labels.shape == truths["stack3d"].shape
    match_instances(labels, truths["stack3d"])
    with tifffile.TiffFile(out / "stack3d_labels.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == 0.5 and tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].tags["XResolution"].value == (4, 1)

    # Hyperstack: channel 0 segmented, T kept, frames independent, finterval kept.
    labels, axes, _ = read_labels(out / "hyper_labels.tif")
    assert axes == "TZYX" and labels.shape == truths["hyper"].shape
    for t in range(2):
        match_instances(labels[t], truths["hyper"][t])
    with tifffile.TiffFile(out / "hyper_labels.tif") as tif:
        assert tif.imagej_metadata["spacing"] == 1.5
        assert tif.imagej_metadata["finterval"] == 30.0

    # OME: channel axis dropped, physical sizes carried over.
    labels, axes, _ = read_labels(out / "ome_labels.tif")
    assert axes == "ZYX" and labels.shape == truths["ome"].shape
    match_instances(labels, truths["ome"])
    with tifffile.TiffFile(out / "ome_labels.tif") as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.2"' in tif.ome_metadata
        assert 'PhysicalSizeZ="0.8"' in tif.ome_metadata

    # Sidecar: every parameter, model name and hashes, plugin version, what was done.
    side = sidecar(out, "hyper")
    assert side["status"] == "done" and side["plugin_version"] == __version__
    assert side["parameters"] == PARAMS.to_dict()
    assert side["model"]["name"] == "test-double"
    assert side["model"]["encoder_sha256"] == spec.encoder_sha256
    assert side["model"]["decoder_sha256"] == spec.decoder_sha256
    assert side["input"]["axes"] == "TZCYX" and side["input"]["shape"] == [2, 3, 2, 112, 128]
    assert side["axes_used"] == {"z": "Z", "t": "T", "channel": "C", "channel_index": 0,
                                 "rgb": False}
    assert side["output"]["axes"] == "TZYX" and side["output"]["dtype"] == "uint16"
    assert side["output"]["n_objects"] == 2
    assert side["run"]["slices"] == 6

    # The run log has one line per input.
    log = [json.loads(x) for x in (out / "napari-edgesam-batch.log.jsonl").read_text().splitlines()]
    assert sorted(Path(e["input"]).name for e in log) == sorted(status)


def test_rerun_skips_then_conflict_overwrite_and_changed_input(tmp_path, spec):
    write_inputs(tmp_path / "in", which=("flat2d", "stack3d"))
    out = tmp_path / "out"
    first = run_batch(tmp_path / "in", out, spec, PARAMS, scheduler="synchronous")
    assert first.ok and len(first.succeeded) == 2
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*_labels.*")}

    again = run_batch(tmp_path / "in", out, spec, PARAMS, scheduler="synchronous")
    assert again.ok and len(again.skipped) == 2 and not again.succeeded
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*_labels.*")}
    assert after == before  # nothing rewritten

    # Other parameters: refuse to replace outputs silently.
    other = BatchParams(automatic=AutoParams(object_size=26), channel=0)
    conflict = run_batch(tmp_path / "in", out, spec, other, scheduler="synchronous")
    assert not conflict.ok and len(conflict.failed) == 2
    assert "--overwrite" in conflict.failed[0].error
    # --overwrite recomputes.
    forced = run_batch(tmp_path / "in", out, spec, other, overwrite=True,
                       scheduler="synchronous")
    assert forced.ok and len(forced.succeeded) == 2
    assert sidecar(out, "flat2d")["parameters"]["automatic"]["object_size"] == 26

    # An input changed since (new mtime): redone without --overwrite.
    p = tmp_path / "in" / "flat2d.tif"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    changed = run_batch(tmp_path / "in", out, spec, other, scheduler="synchronous")
    assert {Path(r.input).name: r.status for r in changed.results} == {
        "flat2d.tif": "done", "stack3d.tif": "skipped"}

    # A label TIFF that vanished (or was truncated) is redone.
    (out / "stack3d_labels.tif").write_bytes(b"")
    redo = run_batch(tmp_path / "in", out, spec, other, scheduler="synchronous")
    assert {Path(r.input).name: r.status for r in redo.results} == {
        "flat2d.tif": "skipped", "stack3d.tif": "done"}


def test_local_processes_and_distributed_cluster_give_the_same_output(tmp_path, spec):
    import distributed
    truths = write_inputs(tmp_path / "in", which=("flat2d", "stack3d", "hyper"))
    local = run_batch(tmp_path / "in", tmp_path / "local", spec, PARAMS, workers=2)
    assert local.ok and len(local.succeeded) == 3
    # The work ran in worker processes, not here.
    assert all(not r.worker.endswith(f":{os.getpid()}") for r in local.succeeded)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = run_batch(tmp_path / "in", tmp_path / "cluster", spec, PARAMS,
                           scheduler=cluster.scheduler_address)
        worker_pids = {w.pid for w in cluster.workers.values() if hasattr(w, "pid")}
    assert remote.ok and len(remote.succeeded) == 3
    if worker_pids:
        assert {int(r.worker.rsplit(":", 1)[1]) for r in remote.succeeded} <= worker_pids
    for name in truths:
        a, axes_a, _ = read_labels(tmp_path / "local" / f"{name}_labels.tif")
        b, axes_b, _ = read_labels(tmp_path / "cluster" / f"{name}_labels.tif")
        assert axes_a == axes_b and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        sa, sb = sidecar(tmp_path / "local", name), sidecar(tmp_path / "cluster", name)
        assert sa["parameters_fingerprint"] == sb["parameters_fingerprint"]
        assert sa["output"]["n_objects"] == sb["output"]["n_objects"]


def test_killed_cli_run_resumes_without_repeating_work(tmp_path, capsys):
    n_files = 6
    truths = {}
    (tmp_path / "in").mkdir()
    for i in range(n_files):
        stack, truth = make_scene_3d(shape=(4, 128, 128), seed=100 + i,
                                     balls=[(1, 40, 40, 14, 200), (2, 85, 90, 13, 170)])
        tifffile.imwrite(tmp_path / "in" / f"s{i}.tif", stack, imagej=True,
                         metadata={"axes": "ZYX"})
        truths[f"s{i}"] = truth
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), "--out", str(out), *MODEL_ARGS,
            "--object-size", "24"]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "napari_edgesam.cli.main", *args,
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("*_labels.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes
        proc.wait()
        log.close()
    done_before = {}
    for p in out.glob("*_labels.json"):
        name = p.name[: -len("_labels.json")]
        done_before[name] = (p.read_text(), (out / f"{name}_labels.tif").stat().st_mtime_ns)
        assert output_paths(tmp_path / "in" / f"{name}.tif", out) == (
            out / f"{name}_labels.tif", p)
    assert 1 <= len(done_before) < n_files

    code = main([*args, "--scheduler", "synchronous"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    for name in truths:
        line = next(x for x in stdout.splitlines() if f"{name}.tif" in x)
        assert ("skipped" in line) == (name in done_before), line
    # Finished files were not redone: their sidecars (with their finish time) and TIFFs are
    # the very same files.
    for name, (text, mtime) in done_before.items():
        assert (out / f"{name}_labels.json").read_text() == text
        assert (out / f"{name}_labels.tif").stat().st_mtime_ns == mtime
    # Everything is complete and right; no half-written file is left.
    for name, truth in truths.items():
        labels, axes, _ = read_labels(out / f"{name}_labels.tif")
        assert axes == "ZYX"
        match_instances(labels, truth)
        assert sidecar(out, name)["status"] == "done"
    assert not list(out.glob("*.partial"))


def test_sigterm_stops_workers_promptly(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(4):
        stack, _ = make_scene_3d(shape=(6, 128, 128), seed=200 + i)
        tifffile.imwrite(tmp_path / "in" / f"t{i}.tif", stack, imagej=True,
                         metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_edgesam.cli.main", "batch", str(tmp_path / "in"),
         "--out", str(out), *MODEL_ARGS, "--object-size", "24", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=dict(os.environ))
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("*_labels.json")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # the CLI only, as a job scheduler would
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    # Its worker processes are gone too, and nothing but finished outputs is left.
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)],
                        capture_output=True, text=True).stdout
    alive = [x for x in ps.splitlines() if x.split() and not x.split()[1].startswith("Z")]
    assert not alive, ps  # (zombies are dead; only their reaping is left to init)
    names = sorted(p.name for p in out.iterdir())
    assert all(n.endswith(("_labels.tif", "_labels.json", ".jsonl")) for n in names), names


def test_cancel_hook_stops_and_rerun_completes(tmp_path, spec):
    write_inputs(tmp_path / "in", which=("flat2d", "stack3d", "ome"))
    seen = []
    summary = run_batch(tmp_path / "in", tmp_path / "out", spec, PARAMS,
                        scheduler="synchronous", progress=lambda r, d, n: seen.append(r.status),
                        cancel=lambda: len(seen) >= 1)
    assert summary.cancelled and not summary.ok
    assert seen[0] == "done" and set(seen[1:]) == {"cancelled"} and len(seen) == 3
    assert len(list((tmp_path / "out").glob("*_labels.tif"))) == 1
    assert not list((tmp_path / "out").glob(".napari-edgesam-stop-*"))
    rerun = run_batch(tmp_path / "in", tmp_path / "out", spec, PARAMS, scheduler="synchronous")
    assert rerun.ok and len(rerun.skipped) == 1 and len(rerun.succeeded) == 2


def test_a_cancel_token_stops_the_run(tmp_path, spec):
    """run_batch's cancel may be the caller's CancelToken (engine.cancel) instead of a hook:
    cancelled after the first file, the others come back cancelled, no stop file is left."""
    from napari_edgesam.engine.cancel import CancelToken

    write_inputs(tmp_path / "in", which=("flat2d", "stack3d", "ome"))
    token = CancelToken()
    summary = run_batch(tmp_path / "in", tmp_path / "out", spec, PARAMS,
                        scheduler="synchronous", progress=lambda r, d, n: token.cancel(),
                        cancel=token)
    assert [r.status for r in summary.results] == ["done", "cancelled", "cancelled"]
    assert summary.cancelled
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "flat2d_labels.json", "flat2d_labels.tif", "napari-edgesam-batch.log.jsonl"]


def test_cli_exit_codes(tmp_path, capsys):
    write_inputs(tmp_path / "in", which=("flat2d", "broken"))
    base = ["batch", "--out", str(tmp_path / "out"), "--object-size", "24",
            "--scheduler", "synchronous", *MODEL_ARGS]
    assert main([*base, str(tmp_path / "in" / "flat2d.tif")]) == 0
    assert "1 succeeded" in capsys.readouterr().out
    assert main([*base, str(tmp_path / "in")]) == 1  # broken.tif fails, flat2d skipped
    captured = capsys.readouterr()
    assert "broken.tif" in captured.err and "1 skipped" in captured.err
    assert "Traceback" not in captured.err
    assert main([*base, str(tmp_path / "nothing-here.tif")]) == 2
    assert main([*base, str(tmp_path / "in" / "*.png")]) == 2
    assert main([*base, "--object-size", "0", str(tmp_path / "in")]) == 2
    assert main([*base, "--workers", "0", str(tmp_path / "in")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path / "in"), *MODEL_ARGS])  # --out missing
    assert exc.value.code == 2
    missing = ["--encoder", str(tmp_path / "no.onnx"), "--decoder", str(TEST_DECODER)]
    assert main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), *missing]) == 3
    capsys.readouterr()


def test_plan_axes_rules():
    p = plan_axes("QYX", (5, 40, 50))
    assert (p.z, p.t, p.out_axes, p.out_shape) == (0, None, "ZYX", (5, 40, 50))
    p = plan_axes("TZCYX", (2, 3, 4, 40, 50), channel=1)
    assert (p.t, p.z, p.channel_axis, p.channel, p.out_axes) == (0, 1, 2, 1, "TZYX")
    assert p.index(1, 2) == (1, 2, 1, slice(None), slice(None))
    p = plan_axes("IYX", (7, 40, 50), t_axis="I")
    assert (p.z, p.t, p.out_axes) == (None, 0, "TYX")
    p = plan_axes("TYX", (7, 40, 50), z_axis="T")  # link over time
    assert (p.z, p.t, p.out_axes) == (0, None, "ZYX")
    p = plan_axes("YXS", (40, 50, 3))
    assert p.rgb and p.out_axes == "YX"
    p = plan_axes("ZYX", (3, 40, 50), z_axis="0")
    assert p.z == 0
    with pytest.raises(InvalidInputError, match="--channel"):
        plan_axes("CYX", (2, 40, 50))
    with pytest.raises(InvalidInputError, match="--channel 5"):
        plan_axes("CYX", (2, 40, 50), channel=5)
    with pytest.raises(InvalidInputError, match="--z-axis"):
        plan_axes("QIYX", (2, 3, 40, 50))
    with pytest.raises(InvalidInputError, match="not one of"):
        plan_axes("ZYX", (3, 40, 50), z_axis="W")
    with pytest.raises(InvalidInputError):
        BatchParams(z_axis="Q", t_axis="Q")


def test_lazy_reading_page_by_page_equals_whole_read(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (2, 3, 2, 30, 40), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", data, imagej=True, compression="zlib",
                     metadata={"axes": "TZCYX"})
    tifffile.imwrite(tmp_path / "u.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    for name, mode in (("c.tif", "pages"), ("u.tif", "memmap")):
        with LazyTiff(tmp_path / name) as r:
            assert r.lazy == mode and r.axes == "TZCYX" and r.shape == data.shape
            plan = plan_axes(r.axes, r.shape, channel=1)
            for t in range(2):
                for z in range(3):
                    np.testing.assert_array_equal(plan.plane(r, t, z), data[t, z, 1])


def test_many_objects_write_uint32_ome(tmp_path):
    from napari_edgesam.workflows.labels_tiff import write_labels
    from napari_edgesam.workflows.tiff_io import TiffMetadata

    labels = np.arange(2 * 300 * 300, dtype=np.uint32).reshape(2, 300, 300)  # ids > 65535
    meta = TiffMetadata(resolution=((3, 1), (3, 1)), resolution_unit=1,
                        imagej={"spacing": 2.0, "unit": "um"}, is_imagej=True)
    fmt = write_labels(tmp_path / "x_labels.tif", labels, "ZYX", np.dtype(np.uint32), meta)
    assert fmt == "ome"  # ImageJ TIFF cannot hold uint32
    back, axes, _ = read_labels(tmp_path / "x_labels.tif")
    assert axes == "ZYX" and back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)
    with tifffile.TiffFile(tmp_path / "x_labels.tif") as tif:
        assert 'PhysicalSizeZ="2.0"' in tif.ome_metadata


def test_rgb_input_and_output_folder_inside_input_folder(tmp_path, spec):
    img, truth = make_scene_2d(seed=15)
    rgb = np.stack([img, img // 2, np.zeros_like(img)], axis=-1)
    folder = tmp_path / "data"
    folder.mkdir()
    tifffile.imwrite(folder / "colour.tif", rgb, photometric="rgb", compression="zlib")
    # The output folder may not be the input folder (inputs are never overwritten) ...
    with pytest.raises(InvalidInputError, match="is an input folder"):
        run_batch(folder, folder, spec, BatchParams(automatic=AutoParams(object_size=24)),
                  scheduler="synchronous")
    # ... but inside it: our own label images are not taken as inputs.
    out = folder / "labels"
    first = run_batch(folder, out, spec, BatchParams(automatic=AutoParams(object_size=24)),
                      scheduler="synchronous")
    assert first.ok and len(first.results) == 1
    labels, axes, _ = read_labels(out / "colour_labels.tif")
    assert axes == "YX"
    match_instances(labels, truth)
    assert sidecar(out, "colour")["axes_used"]["rgb"] is True
    second = run_batch(folder, out, spec, BatchParams(automatic=AutoParams(object_size=24)),
                       scheduler="synchronous")
    assert [r.status for r in second.results] == ["skipped"]


def test_decoder_batch_runs_only_with_the_optimised_model_and_the_sidecar_says_so(
        tmp_path, monkeypatch):
    """The prompt-batched decoder is an optimised variant: a batch of the plain model (no
    --optimized) decodes one seed per run although a passing decoder-batch is recorded
    here; with the optimised model the seeds are batched, the sidecar names decoder-batch
    and its file's SHA-256, and a rerun with the other choice into the same folder is a
    conflict, not a silent mix. Published-style random-weight decoder (NOT EdgeSAM)."""
    import shutil

    from conftest import MODELS

    from napari_edgesam.engine import optimize as opt
    from napari_edgesam.engine.models import file_sha256
    from napari_edgesam.engine.optimize import prompt_batch_runtime

    shutil.copy(TEST_ENCODER, tmp_path / "enc.onnx")
    shutil.copy(MODELS / "published_style_decoder.onnx", tmp_path / "dec.onnx")
    plain = EdgeSamModel(tmp_path / "enc.onnx", tmp_path / "dec.onnx", name="fixture",
                         num_threads=1)
    scene, _ = make_scene_2d(seed=10)
    (res,) = opt.optimize_model(plain, [scene], variants=["decoder-batch"], n_clicks=2,
                                n_boxes=1).results
    assert res.status == "enabled", res.reason
    batched = []
    decode = prompt_batch_runtime.BatchDecoder.decode
    monkeypatch.setattr(prompt_batch_runtime.BatchDecoder, "decode",
                        lambda self, *a: batched.append(len(a[1])) or decode(self, *a))
    write_inputs(tmp_path / "in", which=("flat2d",))
    params = BatchParams(automatic=AutoParams(object_size=24, seeds="grid", grid_spacing=16,
                                              split_merged=False), channel=0)

    plain_spec = ModelSpec.from_model(plain)
    assert plain_spec.variants == () and plain_spec.decoder_batch is None
    summary = run_batch(tmp_path / "in", tmp_path / "plain", plain_spec, params,
                        scheduler="synchronous")
    assert summary.ok and batched == []  # one decoder run per seed
    side = sidecar(tmp_path / "plain", "flat2d")
    assert side["model"]["variants"] == [] and side["model"]["decoder_batch"] is None
    assert side["run"]["decoder_calls"] > 16

    fast_spec = ModelSpec.from_model(opt.load_optimized(plain))  # what --optimized passes
    assert fast_spec.variants == ("decoder-batch",)
    summary = run_batch(tmp_path / "in", tmp_path / "fast", fast_spec, params,
                        scheduler="synchronous")
    assert summary.ok and max(batched) == 16
    side = sidecar(tmp_path / "fast", "flat2d")
    assert side["model"]["variants"] == ["decoder-batch"]
    assert side["model"]["decoder_batch"] == {
        "file": res.path("model").name, "sha256": file_sha256(res.path("model"))}

    for spec_, out in ((fast_spec, "plain"), (plain_spec, "fast")):
        mixed = run_batch(tmp_path / "in", tmp_path / out, spec_, params,
                          scheduler="synchronous")
        assert not mixed.ok and "--overwrite" in mixed.failed[0].error
