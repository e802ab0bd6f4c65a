"""``napari-edgesam propagate``: one object through a z-stack (or a 2D+t movie) from clicks.

The object is annotated on one slice (``--slice``) with clicks and/or a box in that slice's
pixels (x = column, y = row); the workflow :mod:`napari_edgesam.workflows.propagation`
follows it up and down the stack. The output is a uint8 0/1 TIFF of the stack's
``(Z, Y, X)`` shape (axes ``TYX`` for a movie), written atomically and durably by
:func:`~napari_edgesam.workflows.labels_tiff.write_labels` with the input's pixel size, as
batch writes its labels. Exit codes as for ``segment``: 0 ok, 2 bad input,
3 model not available, 1 other errors.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from .arguments import (
    add_image_options,
    add_model_options,
    add_output_options,
    add_prompt_options,
    check_prompts_and_output,
    finite_float,
    model_from_args,
)
from .exit_codes import EXIT_OK

__all__ = ["add_parser", "run"]


def _z_range(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--z-range {text!r}: expected Z0,Z1 (integers)") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"--z-range {text!r}: Z0 must not exceed Z1")
    return lo, hi


def add_parser(subparsers) -> None:
    """Register the ``propagate`` subcommand."""
    from ..workflows.propagation import PropagationSettings

    d = PropagationSettings()
    p = subparsers.add_parser(
        "propagate",
        help="segment one object through a z-stack or movie from clicks on one slice",
        description="Segment one object on slice --slice from clicks and/or a box (pixels of "
                    "that slice: x = column, y = row), then follow it slice by slice up and "
                    "down the stack until it ends. Writes a uint8 0/1 mask TIFF of the stack's "
                    "(Z, Y, X) shape. The stack axis is Z, or T for a 2D+t movie (the file's "
                    "only stack axis). Exit codes: 0 ok, 2 bad input, 3 model not available, "
                    "1 other errors.",
    )
    p.add_argument("stack", help="input TIFF stack (Z, Y, X), also with channels or as T, Y, X")
    p.add_argument("--slice", type=int, required=True, dest="slice_index", metavar="Z",
                   help="the annotated slice (index along the stack axis)")
    add_prompt_options(p)
    p.add_argument("--z-range", type=_z_range, default=None, metavar="Z0,Z1",
                   help="propagate only within slices Z0..Z1 (inclusive)")
    add_image_options(p, tiles_help="predict on full-resolution tiles around the object "
                                    "(auto: slices over 2048 px)")
    s = p.add_argument_group("stop rules (see docs/propagation.md)")
    s.add_argument("--min-score", type=finite_float, default=d.min_score,
                   help=f"stop below this stability score (default {d.min_score})")
    s.add_argument("--min-overlap", type=finite_float, default=d.min_overlap,
                   help="stop when the overlap with the previous slice's mask falls below "
                        f"this (default {d.min_overlap}; lower it for fast-moving objects)")
    s.add_argument("--max-growth", type=finite_float, default=d.max_growth,
                   help=f"stop when the area grows by more than this factor (default "
                        f"{d.max_growth})")
    s.add_argument("--min-area", type=int, default=d.min_area,
                   help=f"stop when the mask has fewer pixels (default {d.min_area})")
    s.add_argument("--box-margin", type=float, default=d.box_margin,
                   help="margin of the derived box prompt, as a fraction of the object size "
                        f"(default {d.box_margin})")
    add_output_options(p)
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the embedding cache (default: the user cache, so that a "
                        "second run on the same stack re-encodes nothing)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    add_model_options(p)
    p.set_defaults(func=run)


def _fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table(result, object_id) -> list[str]:
    obj = result.objects[object_id]
    lines = [f"{'z':>5}  {'status':<10} {'score':>6} {'area':>8} {'IoU prev':>8}  note"]
    for z, rec in obj.records.items():
        if rec.source == "annotation":
            status, note = "annotated", ""
        elif rec.accepted:
            status, note = "kept", ("up" if rec.direction > 0 else "down") + f" from {rec.origin}"
        else:
            status, note = "stopped", rec.reason
        lines.append(f"{z:>5}  {status:<10} {_fmt(rec.score):>6} {rec.area:>8} "
                     f"{_fmt(rec.iou_prev, '.2f'):>8}  {note}".rstrip())
    return lines


def run(args) -> int:
    """Run ``napari-edgesam propagate``; returns the exit code."""
    from ..engine import Predictor
    from ..engine.errors import InvalidInputError
    from ..engine.intensity import stack_mapping
    from ..workflows.propagation import PropagationSettings, Propagator, SliceAnnotation
    from ..workflows.labels_tiff import write_labels
    from ..workflows.tiff_io import LazyTiff, read_image, stack_view

    points, labels = check_prompts_and_output(args)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InvalidInputError(f"output folder does not exist: {out.parent}")
    image = read_image(args.stack)
    data, z_letter = stack_view(image, args.channel)
    n = data.shape[0]
    if not 0 <= args.slice_index < n:
        raise InvalidInputError(
            f"--slice {args.slice_index} is outside 0..{n - 1} ({image.path.name}, "
            f"{z_letter} axis)")
    settings = PropagationSettings(
        min_score=args.min_score, min_overlap=args.min_overlap, max_growth=args.max_growth,
        min_area=args.min_area, box_margin=args.box_margin)
    mapping = None
    if args.contrast is not None:
        mapping = stack_mapping(data, "contrast", rgb=data.ndim == 4, limits=args.contrast)
    model = model_from_args(args)
    cache = None if args.no_cache else "default"
    predictor = Predictor(model, cache=cache)
    prop = Propagator(predictor, data, mapping=mapping, settings=settings, tiles=args.tiles,
                      tile_size=args.tile_size)
    annotation = SliceAnnotation(args.slice_index, points=points, labels=labels, box=args.box)

    tty = sys.stderr.isatty() and not args.quiet

    def progress(done, total, z):
        if tty:
            where = f"slice {z}" if z is not None else "done"
            print(f"\rpropagating: {done}/{total} ({where})   ", end="", file=sys.stderr,
                  flush=True)

    result = prop.run({1: annotation}, z_range=args.z_range, progress=progress)
    if tty:
        print(file=sys.stderr)
    mask = result.mask(1).astype(np.uint8)
    with LazyTiff(args.stack) as source:  # the input's calibration goes with the mask
        meta = source.metadata
    write_labels(out, mask, ("T" if z_letter == "T" else "Z") + "YX", np.uint8, meta)
    if not args.quiet:
        for line in _table(result, 1):
            print(line)
    obj = result.objects[1]
    ext = obj.extent
    span = (f"slices {ext[0]}..{ext[1]} ({len(obj.slices)} with the object)" if ext
            else "no slice (the object was not found)")
    ends = "; ".join(
        f"{'up' if e.direction > 0 else 'down'}: {e.reason}"
        + (f" at {z_letter}={e.at}" if e.at is not None else "")
        for e in sorted(obj.ends, key=lambda e: e.direction)
    )
    print(f"{out}: {int(mask.sum())} voxels, {span}; {ends}; "
          f"{result.stats['encoded']} slices encoded, model {model.name}")
    return EXIT_OK
