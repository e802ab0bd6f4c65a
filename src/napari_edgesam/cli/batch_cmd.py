"""``napari-edgesam batch``: automatic segmentation of many TIFF files, resumable, on dask.

Exit codes: 0 every input has an output (done now or already), 1 some inputs failed (or the
run was cancelled), 2 bad arguments, 3 model not available.
"""

from __future__ import annotations

import contextlib
import sys

from .main import (
    EXIT_ERROR,
    EXIT_OK,
    add_model_options,
    contrast_limits,
    finite_float,
    model_from_args,
    positive_int,
)


def add_parser(subparsers) -> None:
    """Register the ``batch`` subcommand."""
    p = subparsers.add_parser(
        "batch",
        help="segment all objects in many TIFF files without clicks (resumable, on dask)",
        description="Automatic instance segmentation of TIFF files (2D, 3D, channels, ImageJ "
                    "hyperstacks, OME-TIFF). Writes <name>_labels.tif (uint16/uint32 labels, "
                    "same spatial shape and calibration) and <name>_labels.json (parameters, "
                    "model, version) per input into --out. A rerun skips inputs already done "
                    "with the same parameters. Exit codes: 0 all inputs done, 1 some failed, "
                    "2 bad arguments, 3 model not available.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TIFF file, folder of TIFFs, or glob pattern (quote it)")
    p.add_argument("--out", "-o", required=True, help="output folder (created if missing)")
    g = p.add_argument_group("axes and intensities")
    g.add_argument("--channel", type=int, default=None,
                   help="channel to segment; without it, an S axis or a last C axis of 3 or 4 "
                        "is colour (RGB), other channel axes need this")
    g.add_argument("--z-axis", default=None, metavar="AXIS",
                   help="axis linked into 3D objects: a letter of the file's axes (e.g. Q, I, "
                        "T) or its position; default Z, or the only unnamed stack axis")
    g.add_argument("--t-axis", default=None, metavar="AXIS",
                   help="axis of independent frames; default T")
    g.add_argument("--contrast", type=contrast_limits, default=None, metavar="LOW,HIGH",
                   help="intensity limits mapped to 0..255 (default: uint8 as is, other types "
                        "0.5-99.8 percentiles over the whole file)")
    a = p.add_argument_group("automatic segmentation")
    a.add_argument("--object-size", type=finite_float, default=30.0, metavar="PIX",
                   help="expected object diameter in pixels (default 30)")
    a.add_argument("--seeds", choices=("detect", "grid"), default="detect",
                   help="seed points: detected objects (default) or a regular grid")
    a.add_argument("--grid-spacing", type=float, default=None, metavar="PIX",
                   help="grid step for --seeds grid (default object size / 2)")
    a.add_argument("--polarity", choices=("bright", "dark"), default="bright",
                   help="objects brighter (default, fluorescence) or darker than background")
    a.add_argument("--threshold", type=float, default=None,
                   help="foreground threshold on the 0..255 mapped scale (default Otsu over "
                        "the file)")
    a.add_argument("--min-stability", type=finite_float, default=0.85,
                   help="drop masks with a lower stability score (default 0.85)")
    a.add_argument("--min-area", type=int, default=None, help="smallest object (pixels)")
    a.add_argument("--max-area", type=int, default=None, help="largest object (pixels)")
    a.add_argument("--nms-iou", type=finite_float, default=0.5,
                   help="suppress masks overlapping a better one by more than this IoU")
    a.add_argument("--link-iou", type=finite_float, default=0.3,
                   help="3D: minimum IoU to link objects of neighbouring slices (default 0.3)")
    a.add_argument("--tiles", choices=("auto", "on", "off"), default="auto",
                   help="predict on full-resolution tiles (auto: slices over 2048 px)")
    a.add_argument("--tile-size", type=positive_int, default=None,
                   help="tile side in pixels (1024)")
    e = p.add_argument_group("execution")
    e.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:8786) to run on a "
                        "cluster; 'synchronous' runs in this process; default: local worker "
                        "processes")
    e.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: half the CPU cores)")
    e.add_argument("--overwrite", action="store_true",
                   help="recompute every input and replace existing outputs")
    e.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    add_model_options(p)
    p.set_defaults(func=run)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (a job scheduler stopping us) like Ctrl-C, so running tasks are told to
    stop and nothing is left working in the background."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    """Run ``napari-edgesam batch``; returns the exit code."""
    from ..engine.errors import InvalidInputError
    from ..workflows.automatic import AutoParams
    from ..workflows.batch import BatchParams, ModelSpec, run_batch

    if args.workers is not None and args.workers < 1:
        raise InvalidInputError("--workers must be at least 1")
    auto = AutoParams(
        object_size=args.object_size, seeds=args.seeds, grid_spacing=args.grid_spacing,
        polarity=args.polarity, threshold=args.threshold, min_stability=args.min_stability,
        min_area=args.min_area, max_area=args.max_area, nms_iou=args.nms_iou,
        link_iou=args.link_iou, tiles=args.tiles, tile_size=args.tile_size,
    )
    params = BatchParams(automatic=auto, channel=args.channel, z_axis=args.z_axis,
                         t_axis=args.t_axis, contrast=args.contrast)
    # Resolve and check the model here (exit 3 if unusable); workers get only its paths.
    # With --optimized those are the variant files that passed their agreement check
    # (contract-compatible ONNX files; the sidecar names them), so every worker runs them,
    # and the prompt-batched decoder when it passed (ModelSpec.decoder_batch); without it,
    # one decoder run per seed.
    model = model_from_args(args)
    spec = ModelSpec.from_model(model)
    scheduler = args.scheduler
    if scheduler is not None and scheduler not in ("synchronous", "processes"):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise InvalidInputError("--scheduler needs the 'distributed' package "
                                    "(pip install distributed)") from None

    def progress(res, done, total):
        if args.quiet:
            return
        what = {"done": f"{res.n_objects} objects, {res.seconds:.1f} s",
                "skipped": "already done", "failed": res.error or "failed",
                "cancelled": "cancelled"}[res.status]
        print(f"[{done}/{total}] {res.status:9s} {res.input}: {what}", flush=True)

    with _sigterm_as_interrupt():
        summary = run_batch(args.inputs, args.out, spec, params, overwrite=args.overwrite,
                            scheduler=scheduler, workers=args.workers, progress=progress)
    stream = sys.stdout if summary.ok else sys.stderr
    print(summary.format(), file=stream, flush=True)
    return EXIT_OK if summary.ok else EXIT_ERROR


__all__ = ["add_parser", "run"]
