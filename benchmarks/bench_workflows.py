"""Workflow rows of the benchmark harness: propagation, tiled first mask, batch, napari.

Each ``bench_*`` takes the harness's ``Context`` and returns ``Row`` objects; ``run.py``
registers them. Two benchmark models run them (benchmarks/README.md): the faithful one
(random weights: masks over 70 % of the image) and the realistic-mask one (the same cost,
the test double's object-like masks). Stop rules that would end a propagation early are
switched off with both, so the figures are per-slice costs.

Run as a script, it runs every workflow row with both models and prints them side by side::

    python benchmarks/bench_workflows.py                 # propagation,tiled,batch,...
    python benchmarks/bench_workflows.py --only propagation --repeats 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: The two benchmark models: (encoder, decoder) in benchmarks/models/ (git-ignored).
MODELS = {
    "faithful": (HERE / "models" / "edgesam_faithful_encoder.onnx",
                 HERE / "models" / "edgesam_faithful_decoder.onnx"),
    "realistic": (HERE / "models" / "edgesam_realistic_encoder.onnx",
                  HERE / "models" / "edgesam_realistic_decoder.onnx"),
}
#: The harness's workflow rows (run.py's names).
WORKFLOW_ROWS = ("propagation", "tiled", "batch", "batch_large", "napari")


def masks_kind(model) -> str:
    """What the model's masks are like, for the rows' notes: ``"realistic masks"`` for the
    realistic-mask benchmark model (its metadata says ``benchmark_only``), else ``"random
    weights"`` (the faithful model) or the model's name."""
    meta = model.session("encoder").get_modelmeta().custom_metadata_map
    if meta.get("model") == "realistic_encoder":
        return "realistic masks"
    return "random weights" if "faithful" in str(model.encoder_path) else str(model.name)


def object_points(img: np.ndarray, n: int, rng, margin: int = 4) -> list[tuple[float, float]]:
    """``n`` click positions ``(x, y)`` (original frame) on bright objects of ``img``.

    Parameters
    ----------
    img : ndarray (H, W)
        A synthetic slice with bright objects on a dim background (run.py's ``_test_image``).
    n : int
    rng : numpy.random.Generator
    margin : int
        Chosen pixels have the 4 pixels ``margin`` away (up, down, left, right) bright too,
        so a click is inside an object, not on its edge.

    Returns
    -------
    list of (float, float)
        Pixel centres above the midpoint between the median and the maximum.
    """
    bright = img > (float(np.median(img)) + float(img.max())) / 2
    inside = bright.copy()
    inside[margin:] &= bright[:-margin]
    inside[:-margin] &= bright[margin:]
    inside[:, margin:] &= bright[:, :-margin]
    inside[:, :-margin] &= bright[:, margin:]
    rows, cols = np.nonzero(inside)
    if not len(rows):
        raise ValueError("no bright object in the image")
    pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
    return [(float(cols[i]), float(rows[i])) for i in pick]


def _rows():
    from run import Row  # the harness's row type (benchmarks/ is on sys.path when run)

    return Row


def _raw_costs(model, rng) -> tuple[float, float]:
    """Median raw encoder and decoder run times on this model (seconds)."""
    from run import median_time

    enc = model.session("encoder")
    dec = model.session("decoder")
    tensor = rng.normal(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    (emb,) = enc.run(None, {"image": tensor})
    feeds = {"image_embeddings": emb,
             "point_coords": np.array([[[300, 300], [320, 330], [400, 400]]], np.float32),
             "point_labels": np.array([[1, 2, 3]], np.float32)}
    return (median_time(lambda: enc.run(None, {"image": tensor}), 3),
            median_time(lambda: dec.run(None, feeds), 5))


def bench_propagation(ctx):
    """Propagation per slice: cold cache, warm memory cache, warm disk cache."""
    Row = _rows()
    from napari_edgesam.engine import Predictor
    from napari_edgesam.engine.cache import EmbeddingCache
    from napari_edgesam.workflows.propagation import (
        PropagationSettings,
        SliceAnnotation,
        propagate,
    )

    z, size = 9, 512
    yy, xx = np.mgrid[:size, :size]
    stack = np.stack([
        (300 + 2000 * ((yy - 256) ** 2 + (xx - 256) ** 2 < (60 + 5 * k) ** 2)).astype(np.uint16)
        for k in range(z)])
    # Stop rules off so every slice is propagated with either model (per-slice costs).
    settings = PropagationSettings(min_area=0, min_score=0.0, min_overlap=0.0,
                                   max_growth=1e9, keep_connected=False)
    objects = {1: SliceAnnotation(z // 2, points=[(256, 256)], labels=[1])}
    raw_enc, raw_dec = _raw_costs(ctx.model, ctx.rng)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(disk_dir=Path(tmp))
        pred = Predictor(ctx.model, cache=cache)

        def run():
            t0 = time.perf_counter()
            res = propagate(pred, stack, objects, settings=settings)
            n = max(1, sum(1 for r in res.objects[1].records.values()))
            return (time.perf_counter() - t0) / n, n

        cold, n = run()
        warm_mem = min(run()[0] for _ in range(2))
        cache.clear_memory()
        warm_disk, _ = run()
    note = (f"{n} slices of {size}x{size}; {masks_kind(ctx.model)}; raw enc+dec "
            f"{1e3 * (raw_enc + raw_dec):.0f} ms")
    return [
        Row("propagation per slice, cold cache", cold, raw_enc + raw_dec,
            note + "; ratio to raw encoder + decoder"),
        Row("propagation per slice, warm memory cache", warm_mem, raw_dec,
            "ratio to one raw decoder run"),
        Row("propagation per slice, warm disk cache", warm_disk, raw_dec,
            "ratio to one raw decoder run"),
    ]


def _tiled_child(encoder, decoder, path, shape, queue):
    """In a fresh process: first mask on a memory-mapped huge image; report time and RSS."""
    import numpy as np

    from napari_edgesam.engine import EdgeSamModel, IntensityMapping, Predictor
    from napari_edgesam.engine.tiling import TiledPredictor

    def status_mib(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    model = EdgeSamModel(encoder, decoder).load()
    # Warm the sessions up (as a widget that has been used has), on other pixels.
    warm = Predictor(model, cache=None)
    warm.set_image(np.zeros((64, 64), np.uint8))
    warm.predict(points=[(10, 10)])
    image = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    try:  # reset the peak-RSS counter (Linux) so the figure is the first mask's alone
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss0 = status_mib("VmRSS")
    t0 = time.perf_counter()
    # Random weights give masks that touch the window's sides; re-centring would then
    # encode more windows, which real objects rarely need: time the needed tile alone.
    tp = TiledPredictor(Predictor(model, cache=None), image, IntensityMapping.identity_uint8(),
                        max_recentre=0)
    res = tp.predict(points=[(shape[1] * 0.37, shape[0] * 0.61)])
    elapsed = time.perf_counter() - t0
    queue.put((elapsed, len(tp.encoded), rss0, status_mib("VmHWM"), res.area))


def bench_tiled(ctx):
    """Time to first mask on a 10000 x 10000 memory-mapped image (only needed tiles)."""
    Row = _rows()
    raw_enc, raw_dec = _raw_costs(ctx.model, ctx.rng)
    shape = (10000, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.u8"
        mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
        for r in range(0, shape[0], 1000):
            mm[r:r + 1000] = ctx.rng.integers(0, 255, (1000, shape[1]), dtype=np.uint8)
        mm.flush()
        del mm
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(
            target=_tiled_child,
            args=(str(ctx.model.encoder_path), str(ctx.model.decoder_path), str(path), shape, q))
        p.start()
        elapsed, n_windows, rss0, rss1, _ = q.get(timeout=600)
        p.join()
    return [
        Row("tiled first mask, 10000x10000 memmap", elapsed, raw_enc + raw_dec,
            f"{n_windows} window(s) encoded; ratio to raw encoder + decoder"),
        Row("tiled first mask, peak memory", 0.0, None,
            f"peak RSS {rss1:.0f} MiB, {rss1 - rss0:+.0f} MiB over the loaded model "
            f"(the image is {shape[0] * shape[1] / 2**20:.0f} MiB)",
            {"peak_rss_mib": rss1, "delta_mib": rss1 - rss0}),
    ]


def _blob_stack(z, size, rng, n=6):
    yy, xx = np.ogrid[:size, :size]
    stack = rng.normal(400, 40, (z, size, size)).astype(np.float32)
    centers = rng.uniform(0.1 * size, 0.9 * size, (n, 2))
    for k in range(z):
        for cy, cx in centers:
            r = size / 30 * (1 + 0.3 * np.sin(k / 3))
            stack[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 3000
    return np.clip(stack, 0, 65535).astype(np.uint16)


def _batch_child(argv, queue):
    """Run the batch CLI in a fresh process; report its peak RSS and peak anonymous
    (private) memory in MiB. RSS also counts file-backed pages of memory-mapped inputs and
    scratch files, which the kernel can drop; anonymous memory is what the run really holds."""
    import resource
    import threading

    from napari_edgesam.cli.main import main

    peak_anon = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]) / 1024)
            done.wait(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    queue.put((code, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               peak_anon[0]))


def bench_batch(ctx):
    """Batch slices per second (next to the encoder-bound rate) and peak memory for a stack
    larger than a memory budget, in one process (``--scheduler synchronous``)."""
    Row = _rows()
    import tifffile

    raw_enc, raw_dec = _raw_costs(ctx.model, ctx.rng)
    model_args = ["--encoder", str(ctx.model.encoder_path),
                  "--decoder", str(ctx.model.decoder_path)]
    rows = []
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for name, z in (("small", 4), ("large", 32)):
            stack = _blob_stack(z, 2048, ctx.rng)
            path = tmp / f"{name}.tif"
            tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
            q = spawn.Queue()
            p = spawn.Process(target=_batch_child, args=(
                [ "batch", str(path), "--out", str(tmp / f"out_{name}"), "--object-size", "140",
                  "--scheduler", "synchronous", "-q", *model_args], q))
            p.start()
            code, seconds, peak, anon = q.get(timeout=1800)
            p.join()
            results[name] = (z, stack.nbytes / 2**20, seconds, peak, anon, code)
        z, mib, seconds, peak, anon, code = results["large"]
        rate = z / seconds
        rows.append(Row("batch, 2048x2048 uint16 slices per second", 1 / rate, raw_enc,
                        f"{rate:.2f} slices/s vs encoder-bound {1 / raw_enc:.2f} slices/s "
                        f"(seconds per slice; {masks_kind(ctx.model)}; exit {code})",
                        {"slices_per_second": rate}))
        zs, mibs, _, peak_small, anon_small, _ = results["small"]
        rows.append(Row("batch, peak memory: stack larger than the budget", 0.0, None,
                        f"{mib:.0f} MiB stack: private {anon:.0f} MiB (RSS {peak:.0f} MiB incl. "
                        f"page cache); {mibs:.0f} MiB stack: private {anon_small:.0f} MiB "
                        f"(RSS {peak_small:.0f} MiB)",
                        {"stack_mib": mib, "peak_rss_mib": peak, "peak_private_mib": anon,
                         "small_stack_mib": mibs, "small_peak_rss_mib": peak_small,
                         "small_peak_private_mib": anon_small}))
    return rows


def batch_per_slice(ctx, slices: int):
    """Batch wall time per slice against the raw model work it needs, in this process.

    ``run_batch`` (``scheduler="synchronous"``, as ``napari-edgesam batch`` runs by default:
    the model's own files, no ``--optimized``; object size 140) over one ``slices`` x
    2048 x 2048 uint16 stack of bright blobs (a TIFF in a temporary folder). Every
    ``session.run`` fed ``point_coords`` is counted (at onnxruntime's
    ``InferenceSession.run``, so a split or prompt-batched decoder is counted too), with
    its prompt sets (the batch axis of ``point_coords``).

    Returns
    -------
    Row
        seconds: the run's wall time over ``slices``; raw_seconds: one raw encoder run plus
        one raw decoder run (one prompt set) per prompt set decoded per slice. ``extra``
        has the counts and the steady-state time per slice (between the first and the last
        slice done).
    """
    Row = _rows()
    import onnxruntime as ort
    import tifffile

    from napari_edgesam.workflows.automatic import AutoParams
    from napari_edgesam.workflows.batch import BatchParams, ModelSpec, run_batch

    raw_enc, raw_dec = _raw_costs(ctx.model, ctx.rng)
    stack = _blob_stack(slices, 2048, ctx.rng)
    counts = {"runs": 0, "prompt_sets": 0}
    real_run = ort.InferenceSession.run

    def counting_run(self, output_names, input_feed, *args, **kwargs):
        if "point_coords" in input_feed:
            counts["runs"] += 1
            counts["prompt_sets"] += int(np.shape(input_feed["point_coords"])[0])
        return real_run(self, output_names, input_feed, *args, **kwargs)

    done_at = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
        ort.InferenceSession.run = counting_run
        try:
            t0 = time.perf_counter()
            summary = run_batch(path, Path(tmp) / "out", ModelSpec.from_model(ctx.model),
                                BatchParams(automatic=AutoParams(object_size=140)),
                                scheduler="synchronous",
                                slice_progress=lambda _i, done, _n: done_at.setdefault(
                                    done, time.perf_counter()))
            wall = time.perf_counter() - t0
        finally:
            ort.InferenceSession.run = real_run
    per_slice = wall / slices
    sets = counts["prompt_sets"] / slices
    base = raw_enc + sets * raw_dec
    steady = ((done_at[slices] - done_at[1]) / (slices - 1)
              if slices > 1 and 1 in done_at and slices in done_at else None)
    return Row("batch, 2048x2048 uint16, wall per slice", per_slice, base,
               f"{slices} slices, {sets:.1f} prompt sets ({counts['runs'] / slices:.1f} "
               f"decoder runs) per slice; raw encoder {raw_enc * 1e3:.0f} ms + "
               f"{sets:.1f} x raw decoder {raw_dec * 1e3:.0f} ms; steady state "
               + (f"{steady / base:.2f}x" if steady else "-")
               + f"; {masks_kind(ctx.model)}; {'ok' if summary.ok else 'FAILED'}",
               {"slices": slices, "wall_seconds": wall, "raw_encoder": raw_enc,
                "raw_decoder": raw_dec, "prompt_sets_per_slice": sets,
                "decoder_runs_per_slice": counts["runs"] / slices,
                "steady_seconds_per_slice": steady, "ok": summary.ok})


def bench_batch_large(ctx):
    """Batch on one 10000 x 10000 slice, memory-mapped (an uncompressed TIFF): tiled
    automatic segmentation reads it window by window; peak private memory next to the
    image's size. Random weights make most masks fail the filters, so the time is mostly
    the encoder over every tile (the decoder runs once or twice per seed)."""
    Row = _rows()
    import tifffile

    from napari_edgesam.engine.tiling import TileGrid

    raw_enc, _ = _raw_costs(ctx.model, ctx.rng)
    size, step = 10000, 400
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "slide.tif"
        mm = tifffile.memmap(path, shape=(size, size), dtype=np.uint8)
        yy, xx = np.ogrid[-20:20, -20:20]
        disc = (yy ** 2 + xx ** 2 <= 14 ** 2).astype(np.uint8) * 150
        for r in range(0, size, 1000):
            block = ctx.rng.integers(20, 40, (1000, size), dtype=np.uint8)
            for cy in range(step // 2, 1000, step):  # one nucleus every 400 px
                for cx in range(step // 2, size, step):
                    block[cy - 20:cy + 20, cx - 20:cx + 20] += disc
            mm[r:r + 1000] = block
        mm.flush()
        del mm
        n_tiles = len(TileGrid((size, size)))
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_batch_child, args=(
            ["batch", str(path), "--out", str(tmp / "out"), "--object-size", "28",
             "--scheduler", "synchronous", "-q", "--encoder", str(ctx.model.encoder_path),
             "--decoder", str(ctx.model.decoder_path)], q))
        p.start()
        code, seconds, peak, anon = q.get(timeout=3600)
        p.join()
    mib = size * size / 2**20
    return [
        Row("batch, one 10000x10000 memmapped slice (tiled)", seconds, raw_enc * n_tiles,
            f"{n_tiles} tiles; ratio to {n_tiles} raw encoder runs (exit {code})",
            {"tiles": n_tiles}),
        Row("batch, 10000x10000 slice: peak memory", 0.0, None,
            f"{mib:.0f} MiB image: private {anon:.0f} MiB (RSS {peak:.0f} MiB incl. "
            "page cache of the memmapped input and label scratch)",
            {"image_mib": mib, "peak_private_mib": anon, "peak_rss_mib": peak}),
    ]


class QtWait:
    """Waiting on napari's GUI thread as napari's own event loop does (sleeping until an
    event arrives), so that the waiting does not take a core from onnxruntime; a 5 ms tick
    bounds the polling delay. Made once a QApplication exists (after ``napari.Viewer``);
    :meth:`stop` ends the tick.

    Parameters
    ----------
    timeout : float
        Seconds :meth:`until` waits before raising ``TimeoutError(what)``.
    what : str
        The error's message.
    """

    def __init__(self, timeout: float = 120.0, what: str = "the widget did not answer"):
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.timeout, self.what = timeout, what
        self._flag = QEventLoop.ProcessEventsFlag.WaitForMoreEvents
        self._tick = QTimer()
        self._tick.setInterval(5)
        self._tick.start()

    def until(self, cond) -> None:
        """Process Qt events until ``cond()`` is true."""
        t_end = time.perf_counter() + self.timeout
        while not cond():
            self.app.processEvents(self._flag)
            if time.perf_counter() > t_end:
                raise TimeoutError(self.what)

    def pause(self, seconds: float) -> None:
        """Process Qt events for ``seconds`` (the user idle)."""
        t_end = time.perf_counter() + seconds
        self.until(lambda: time.perf_counter() >= t_end)

    def stop(self) -> None:
        self._tick.stop()


def bench_napari_click(ctx):
    """Click to labels in napari: a real napari Viewer with the EdgeSAM dock widget, a
    2048 x 2048 uint16 image whose embedding is already computed (cached). Median time from
    a click (a point added to the prompt layer, as napari's mouse callback adds it) until the
    preview is in the preview layer, and until the object is in the Labels layer (commit
    pressed right after the click: the widget commits when the preview arrives, one undo
    step), next to one raw decoder run. The widget's workers run in threads; the Qt event
    loop is spun without sleeping while waiting. The window is not shown, so the canvas's
    OpenGL drawing is not included (napari's layer refresh is).

    Needs a display: on a headless machine run the harness under Xvfb,
    ``xvfb-run -a python benchmarks/run.py --only napari``; without one the row is skipped
    with a note.
    """
    import os

    Row = _rows()
    name = "napari: click to labels, 2048x2048 (cached embedding)"
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal")):
        return [Row(name, 0.0, None, "skipped: no display (run under xvfb-run -a)")]
    import napari
    from run import _test_image

    from napari_edgesam.widget.dock import EdgeSamWidget

    _, raw_dec = _raw_costs(ctx.model, ctx.rng)
    size = 2048
    img = _test_image(size, ctx.rng)
    viewer = napari.Viewer(show=False)
    wait = QtWait()
    spin = wait.until
    preview_times, label_times, areas = [], [], []
    try:
        layer = viewer.add_image(img, name="bench")
        labels = viewer.add_labels(np.zeros((size, size), np.uint32), name="bench labels")
        w = EdgeSamWidget(viewer, model=ctx.model)
        viewer.window.add_dock_widget(w, name="EdgeSAM")
        w.prefetch_check.setChecked(False)  # no background encoding during the clicks
        s = w.session  # the AnnotationSession behind the panel
        s.paint_background_only = False  # every commit paints its whole mask
        s.set_labels_layer(labels)
        spin(lambda: not w.busy and s.embedding is not None)  # the embedding, computed once
        painted = []
        labels.events.paint.connect(lambda e: painted.append(time.perf_counter()))
        rng = np.random.default_rng(1)
        for i in range(ctx.repeats + 1):
            x, y = object_points(img, 1, rng)[0]  # on an object: realistic masks are its size
            p = layer.data_to_world((y, x))
            t0 = time.perf_counter()
            s.add_point(p)
            spin(lambda: not w.busy and s.preview_is_current)
            t_preview = time.perf_counter() - t0
            crop = s.preview_crop
            w.clear_prompts()
            if crop is None:
                continue  # an empty mask has nothing to commit
            n = len(painted)
            t0 = time.perf_counter()
            s.add_point(p)
            w.commit()
            spin(lambda: len(painted) > n)
            t_labels = painted[n] - t0
            spin(lambda: not w.busy)
            if i == 0:
                continue  # warm-up
            preview_times.append(t_preview)
            label_times.append(t_labels)
            areas.append(int(crop[0].sum()))
        w.close()
    finally:
        wait.stop()
        viewer.close()
    if not label_times:
        return [Row(name, 0.0, None, "no non-empty mask: nothing committed")]
    frac = float(np.median(areas)) / size**2
    return [
        Row(name, float(np.median(label_times)), raw_dec,
            f"click on an object -> it is in the Labels layer; mask {frac:.1%} of the image "
            f"({masks_kind(ctx.model)}); ratio to one raw decoder run",
            {"mask_fraction": frac}),
        Row("napari: click to preview, 2048x2048 (cached embedding)",
            float(np.median(preview_times)), raw_dec, "ratio to one raw decoder run"),
    ]


def _ratios(path: Path) -> dict[str, tuple[float, float | None]]:
    rows = json.loads(path.read_text())["rows"]
    return {r["name"]: (r["seconds"], r["ratio"]) for r in rows}


def main(argv=None) -> int:
    """Run the workflow rows with both benchmark models (one ``run.py`` process each) and
    print the rows side by side; the JSON of each run goes to ``benchmarks/results/``."""
    ap = argparse.ArgumentParser(description=main.__doc__.split(";")[0])
    ap.add_argument("--only", default=",".join(WORKFLOW_ROWS),
                    help="comma list of run.py rows (default: the workflow rows)")
    ap.add_argument("--models", default="faithful,realistic")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args, rest = ap.parse_known_args(argv)
    results = {}
    for name in args.models.split(","):
        enc, dec = MODELS[name]
        if not enc.is_file() or not dec.is_file():
            hint = ("benchmarks/make_faithful_model.py" if name == "faithful"
                    else "benchmarks/make_realistic_model.py")
            sys.exit(f"{enc.name} / {dec.name} not found: run {hint} (benchmarks/README.md)")
        out = args.out / f"workflows_{name}.json"
        cmd = [sys.executable, str(HERE / "run.py"), "--encoder", str(enc), "--decoder",
               str(dec), "--only", args.only, "--repeats", str(args.repeats),
               "--json", str(out), *rest]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
        results[name] = _ratios(out)
    names = list(dict.fromkeys(r for res in results.values() for r in res))
    print(f"\n{'row':<58}" + "".join(f" {m:>22}" for m in results))
    for row in names:
        cells = []
        for res in results.values():
            sec, ratio = res.get(row, (None, None))
            cells.append("-" if not sec else f"{sec * 1e3:.0f} ms"
                         + (f" ({ratio:.2f}x)" if ratio else ""))
        print(f"{row:<58}" + "".join(f" {c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
