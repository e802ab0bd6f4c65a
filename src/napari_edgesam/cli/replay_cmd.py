"""``napari-edgesam replay LOG IMAGE -o LABELS``: re-create labels from a prompt log.

The log (:mod:`napari_edgesam.workflows.prompt_log`, saved beside a label image as
``<name>.prompts.json``) holds the prompts of every committed object. Replayed with the
model it records (the same files, optimised variants and thread count: checked through the
files' SHA-256), the labels are the same pixels; with another model a per-object agreement
table compares them with the reference labels (``--reference``, by default the label image
the log was saved beside). Exit codes as for ``segment``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .arguments import add_model_options, add_output_options
from .exit_codes import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    """Register the ``replay`` subcommand."""
    p = subparsers.add_parser(
        "replay",
        help="re-create labels from a prompt log (the prompts of every committed object)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1] + " " +
        __doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("log", help="prompt log (<name>.prompts.json)")
    p.add_argument("image", help="the image the log was made on (TIFF)")
    p.add_argument("--reference", default=None,
                   help="labels to compare with (default: the label image beside the log)")
    add_output_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def _model_for(args, log):
    """The log's model unless the options name another (same threads unless given)."""
    from ..engine import InvalidInputError
    from .arguments import model_from_args

    rec = log.model
    if args.threads is None and rec is not None and rec.threads:
        args.threads = int(rec.threads)
    if args.model is None and args.encoder is None:
        if rec is None or rec.name.startswith("custom"):
            raise InvalidInputError("the log's model is a custom pair: give --encoder and "
                                    "--decoder")
        args.model = rec.name
    if rec is not None and rec.variants and not args.optimized:
        args.optimized = True  # the log's masks came from optimised variants
    return model_from_args(args)


def _write(out: Path, labels, image, channel_axis=None) -> None:
    """Labels with the image's axes and calibration (as batch writes them), or, for axes a
    label image cannot have (channels), a plain grey-level TIFF with its axes named."""
    from ..workflows.labels_tiff import write_labels
    from ..workflows.tiff_io import LazyTiff, write_tiff_atomic

    n_lead = image.data.ndim - 2 - (1 if image.axes.endswith(("S", "C")) and
                                    image.data.shape[-1] in (3, 4) else 0)
    lead = "".join(a for i, a in enumerate(image.axes[:n_lead]) if i != channel_axis)
    if len(lead) != labels.ndim - 2:  # axes not known well enough: name them plainly
        lead = "Q" * (labels.ndim - 2)
    if lead in ("", "T", "Z", "TZ"):
        with LazyTiff(image.path) as source:
            meta = source.metadata
        write_labels(out, labels, lead + "YX", labels.dtype, meta)
    else:
        write_tiff_atomic(out, labels, overwrite=True, compression="zlib",
                          photometric="minisblack", metadata={"axes": lead + "YX"})


def run(args) -> int:
    """Run ``napari-edgesam replay``; returns the exit code."""
    import numpy as np

    from ..engine import InvalidInputError, Predictor
    from ..workflows.prompt_log import (
        ModelRecord,
        PromptLog,
        agreement,
        labels_for_log,
        replay,
    )
    from ..workflows.tiff_io import read_image
    from .arguments import check_output, same_file

    out = Path(args.output)
    check_output(out, {"prompt log": args.log, "image": args.image},
                 overwrite=args.overwrite)
    log = PromptLog.load(args.log)
    image = read_image(args.image)
    want = log.image.get("shape")
    if want is not None and list(want) != list(image.data.shape):
        raise InvalidInputError(f"{Path(args.image).name} has shape {list(image.data.shape)}; "
                                f"the log was made on an image of shape {want}")
    model = _model_for(args, log)
    used = ModelRecord.of(model)
    diffs = [] if log.model is None else log.model.differences(used)
    labels, objs = replay(log, image.data, Predictor(model))
    _write(out, labels, image, log.image.get("channel_axis"))
    print(f"{out}: {len(objs)} object(s) replayed with {model.name}"
          + ("; the log's model exactly (same files, variants and threads)" if not diffs
             else "; another model than the log's: " + "; ".join(diffs)))
    reference = args.reference or labels_for_log(args.log)
    if reference is not None and not same_file(reference, out):
        import tifffile

        ref = np.asarray(tifffile.imread(reference))
        rows = agreement(labels, ref, objs)
        print(f"{'label':>6} {'slice':>8} {'area':>8} {'ref area':>8} {'IoU':>6}")
        for r in rows:
            print(f"{r['label']:>6} {str(r['key']):>8} {r['area']:>8} "
                  f"{r['reference_area']:>8} {r['iou']:>6.3f}")
        worst = min((r["iou"] for r in rows), default=1.0)
        print(f"agreement with {reference}: min IoU {worst:.3f} over {len(rows)} object(s)",
              file=sys.stderr if diffs else sys.stdout)
    return EXIT_OK
