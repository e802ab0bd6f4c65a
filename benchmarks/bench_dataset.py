"""Annotating a folder in real napari: Next to the first click's preview with the next image
prefetched or not, and Segment all per slice, against the raw encoder and decoder.

Issue 18 ("A dataset, not an image"). On the benchmark models (never EdgeSAM; see
benchmarks/README.md), in a real napari viewer with the EdgeSAM panel docked and its Folder
tab driven as the user drives it (the panel's slice prefetch off: the images are 2D):

- **Next to the first click's preview**: a folder of ``--images`` uint16 2048 x 2048 TIFFs
  of bright discs (``bench_automatic.scene``). On each image the user is idle for a while
  (until the next image's prefetch has finished; with prefetch off, as long as the last
  prefetch took, at least 1 s), then presses Next and clicks on an object as soon as the
  image is shown; timed from Next until that click's preview is in the preview layer.
  Rounds alternate prefetch on and off, each with new images (their embeddings are in no
  cache) and an emptied embedding cache; medians over every Next step of a mode. The
  Next-to-shown part (reading the image: from the pixels read ahead with prefetch on) is
  reported too, and the read alone of one image (napari's reader) for scale.
- **Segment all per slice**: the All tab's Run (``workflows.automatic``, object size
  ``--object-size``) on the image shown (its embedding computed when it was opened, as a
  user runs it), timed until its objects are in the Labels layer, with its decoder runs
  counted; ratios to one raw encoder run + one raw decoder run, and to the raw encoder +
  as many raw decoder runs, measured in the same process (ratios, never asserted).

The GUI thread waits as napari's event loop does (sleeping until an event). Needs a display:
``xvfb-run -a python benchmarks/bench_dataset.py``. Writes the measured JSON (with the load
average at start and end) to ``--out``.

Usage::

    xvfb-run -a python benchmarks/bench_dataset.py [--model realistic|faithful|both]
        [--rounds 2] [--images 4] [--threads 2] [--out benchmarks/results/dataset.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_workflows import MODELS  # noqa: E402 (benchmarks/ is on sys.path now)

#: ``--model both`` runs these, in this order.
BOTH = ("realistic", "faithful")
SIZE = 2048


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _Counting:
    """Counts calls of one method of ``obj`` (an instance attribute wrapping it)."""

    def __init__(self, obj, name):
        self.n = 0
        inner = getattr(obj, name)

        def call(*args, **kwargs):
            self.n += 1
            return inner(*args, **kwargs)

        setattr(obj, name, call)


def _folder(root: Path, n: int, object_size: float, seed: int) -> tuple[Path, list]:
    import tifffile
    from bench_automatic import scene

    root.mkdir(parents=True)
    images = []
    for i in range(n):
        img = scene(SIZE, object_size, 40, seed=seed * 100 + i)
        tifffile.imwrite(root / f"img{i:02d}.tif", img)
        images.append(img)
    return root, images


def run_model(kind: str, args) -> dict:
    import napari
    from bench_workflows import QtWait, _raw_costs, masks_kind, object_points

    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.engine.cache import EmbeddingCache, set_default_cache
    from napari_edgesam.widget.dataset import read_image_job
    from napari_edgesam.widget.dock import EdgeSamWidget

    enc, dec = MODELS[kind]
    if not enc.exists():
        raise SystemExit(f"{enc} missing: run benchmarks/make_faithful_model.py and "
                         "make_realistic_model.py")
    model = EdgeSamModel(enc, dec, name=f"benchmark {kind}", num_threads=args.threads).load()
    rng = np.random.default_rng(3)
    raw_enc, raw_dec = _raw_costs(model, rng)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    cache = EmbeddingCache(disk_dir=tmp / "cache")
    set_default_cache(cache)  # before the panel makes its predictor
    encodes = _Counting(model, "encode")
    decodes = _Counting(model, "decode")
    viewer = napari.Viewer(show=False)
    wait = QtWait(timeout=300.0, what="the panel did not answer")
    spin, pause = wait.until, wait.pause
    steps = {"on": [], "off": []}
    seg = []
    try:
        w = EdgeSamWidget(viewer, model=model)
        viewer.window.add_dock_widget(w, name="EdgeSAM")
        w.prefetch_check.setChecked(False)  # the slice prefetch; 2D images
        spin(lambda: w.model is not None and not w.busy)
        s, panel, ctl = w.session, w.folder, w.prefetcher
        w.segment_all.size_spin.setValue(args.object_size)
        idle_off = 1.0
        for r in range(args.rounds):
            for mode in ("on", "off"):
                cache.clear()
                folder, images = _folder(tmp / f"r{r}{mode}", args.images, args.object_size,
                                         seed=2 * r + (mode == "off"))
                panel.prefetch_check.setChecked(mode == "on")
                panel.choose_images(str(folder))
                for i in range(args.images):
                    name = f"img{i:02d}"
                    spin(lambda n=name: s.image_layer is not None and s.image_layer.name == n
                         and s.embedding is not None and not w.busy)
                    if i == args.images - 1:
                        break
                    t_idle = time.perf_counter()
                    if mode == "on":  # the user works here until the next one is ready
                        n_req = len(ctl.requested)
                        spin(lambda k=n_req, nx=f"img{i + 1:02d}.tif":
                             ("next image", nx) in ctl.requested[k:] and not ctl.busy)
                        idle_off = max(1.0, time.perf_counter() - t_idle)
                    else:
                        pause(idle_off)
                    e0 = encodes.n
                    t0 = time.perf_counter()
                    panel.controller.next()
                    nxt = f"img{i + 1:02d}"
                    spin(lambda n=nxt: s.image_layer is not None and s.image_layer.name == n)
                    t_shown = time.perf_counter() - t0
                    x, y = object_points(images[i + 1], 1, rng)[0]
                    s.add_point(s.image_layer.data_to_world((y, x)))  # clicked when shown
                    spin(lambda: s.preview_is_current and s.preview is not None
                         and not w.busy)
                    steps[mode].append({"next_to_preview_s": time.perf_counter() - t0,
                                        "next_to_shown_s": t_shown,
                                        "encoder_runs": encodes.n - e0,
                                        "cached": bool(s.embedding.embedding.cached)})
                    w.clear_prompts()
                # Segment all on the last image of the folder (its embedding computed)
                d0, e0 = decodes.n, encodes.n
                t0 = time.perf_counter()
                w.segment_all.run()
                spin(lambda: not w.segment_all.busy and ("undoes them all" in s.status
                                                         or "no object" in s.status))
                seg.append({"seconds": time.perf_counter() - t0,
                            "decoder_runs": decodes.n - d0, "encoder_runs": encodes.n - e0,
                            "objects": 0 if s.labels_layer is None
                            else int(s.labels_layer.data.max())})
                if s.labels_layer is not None:
                    w.undo()  # the folder's image is left unannotated
        # the read alone of one image, as the Next read does it
        path = next((tmp / "r0on").glob("*.tif"))
        reads = []
        for _ in range(5):
            t0 = time.perf_counter()
            read_image_job(path, None)
            reads.append(time.perf_counter() - t0)
        w.close()
    finally:
        wait.stop()
        viewer.close()
        set_default_cache(None)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(mode, key):
        return statistics.median(x[key] for x in steps[mode])

    seg_s = statistics.median(x["seconds"] for x in seg)
    seg_dec = statistics.median(x["decoder_runs"] for x in seg)
    out = {
        "model": kind, "masks": masks_kind(model), "threads": args.threads,
        "raw_encoder_s": raw_enc, "raw_decoder_s": raw_dec,
        "next_steps": steps,
        "next_to_preview_on_s": med("on", "next_to_preview_s"),
        "next_to_preview_off_s": med("off", "next_to_preview_s"),
        "next_to_shown_on_s": med("on", "next_to_shown_s"),
        "next_to_shown_off_s": med("off", "next_to_shown_s"),
        "read_one_image_s": statistics.median(reads),
        "segment_all": seg,
        "segment_all_per_slice_s": seg_s,
        "segment_all_decoder_runs": seg_dec,
        "segment_all_over_enc_plus_dec": seg_s / (raw_enc + raw_dec),
        "segment_all_over_enc_plus_n_dec": seg_s / (raw_enc + seg_dec * raw_dec),
    }
    out["next_on_over_off"] = out["next_to_preview_on_s"] / out["next_to_preview_off_s"]
    return out


def report(res: dict) -> None:
    ms = 1e3
    print(f"\n{res['model']} model ({res['masks']}), {res['threads']} threads: raw encoder "
          f"{res['raw_encoder_s'] * ms:.0f} ms, raw decoder {res['raw_decoder_s'] * ms:.1f} ms")
    for mode in ("on", "off"):
        st = res["next_steps"][mode]
        print(f"  Next -> first preview, prefetch {mode:3s}: "
              f"{res[f'next_to_preview_{mode}_s'] * ms:7.0f} ms (shown after "
              f"{res[f'next_to_shown_{mode}_s'] * ms:.0f} ms; {len(st)} steps; encoder runs "
              f"{[x['encoder_runs'] for x in st]})")
    print(f"  on / off {res['next_on_over_off']:.2f}; read of one image alone "
          f"{res['read_one_image_s'] * ms:.0f} ms")
    print(f"  Segment all per slice {res['segment_all_per_slice_s'] * ms:.0f} ms, "
          f"{res['segment_all_decoder_runs']:.0f} decoder runs: "
          f"{res['segment_all_over_enc_plus_dec']:.2f}x (raw encoder + decoder), "
          f"{res['segment_all_over_enc_plus_n_dec']:.2f}x (raw encoder + that many decoder "
          "runs)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=[*BOTH, "both"], default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--object-size", type=float, default=140.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("needs a display: xvfb-run -a python benchmarks/bench_dataset.py")
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    tmp = tempfile.mkdtemp(prefix="bench_dataset_user_")  # never the user's settings/cache
    os.environ["NAPARI_EDGESAM_CONFIG_DIR"] = str(Path(tmp) / "config")
    os.environ["NAPARI_EDGESAM_CACHE_DIR"] = str(Path(tmp) / "cache")
    start = _load()
    kinds = list(BOTH) if args.model == "both" else [args.model]
    results = []
    for kind in kinds:
        results.append(run_model(kind, args))
        report(results[-1])
    doc = {"benchmark": "bench_dataset.py", "date": time.strftime("%Y-%m-%d"),
           "size": SIZE, "images": args.images, "rounds": args.rounds,
           "object_size": args.object_size, "load_average_start": start,
           "load_average_end": _load(), "cpu_count": os.cpu_count(), "results": results}
    print(f"load average: start {start}, end {doc['load_average_end']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
