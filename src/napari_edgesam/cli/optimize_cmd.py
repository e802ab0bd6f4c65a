"""``napari-edgesam optimize``: make optimised model variants on this machine, checked on
the user's own images (see :mod:`napari_edgesam.engine.optimize` and ``docs/speed.md``).

Variants are built from the model files, checked against the float32 original (mask IoU over
sampled prompts on the given images) and enabled only when they agree; the others are
refused and the original keeps being used. ``--optimized`` on ``segment``, ``propagate`` and
``batch`` then uses the variants that passed.
"""

from __future__ import annotations

import sys

import numpy as np

from .arguments import add_model_options, model_from_args
from .exit_codes import EXIT_OK


def add_parser(sub) -> None:
    """Register the ``optimize`` subcommand."""
    p = sub.add_parser(
        "optimize",
        help="build faster (rewritten / int8) model variants, checked on your own images",
        description=__doc__.split("\n\n")[0] + " Needs the optional 'onnx' package "
                    "(pip install 'napari-edgesam[optimize]'). Exit codes as for segment.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="TIFF files typical of your data (a few slices of each are used)")
    from ..engine.optimize.variants import DEFAULT_VARIANTS, VARIANTS

    p.add_argument("--variants", default=None,
                   help=f"comma list of {', '.join(VARIANTS)} "
                        f"(default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--channel", type=int, default=None, help="channel of multichannel files")
    p.add_argument("--force", action="store_true", help="rebuild and re-check")
    add_model_options(p)
    p.set_defaults(func=run)


def _slices(path, channel, per_file: int = 2):
    """Up to ``per_file`` evenly spaced 2D slices of one TIFF (grey or RGB)."""
    from ..workflows.tiff_io import STACK_AXES, read_image, select_plane

    stack = read_image(path)
    n = 1
    for a, size in zip(stack.axes, stack.data.shape, strict=True):
        if a in STACK_AXES and size > 1:
            n = size
    out = []
    for z in np.unique(np.linspace(0, n - 1, min(n, per_file)).round().astype(int)):
        plane, _ = select_plane(stack, slice_index=int(z) if n > 1 else None, channel=channel)
        out.append(np.asarray(plane))
    return out


def run(args) -> int:
    """Run ``napari-edgesam optimize``; returns the exit code."""
    from ..engine.errors import InvalidInputError
    from ..engine.optimize import VARIANTS, optimize_model

    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise InvalidInputError(
                f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if getattr(args, "optimized", False):
        raise InvalidInputError("--optimized makes no sense here: optimise the original model")
    images = [im for path in args.images for im in _slices(path, args.channel)]
    model = model_from_args(args)

    def progress(message, done, total):
        print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    kwargs = {} if variants is None else {"variants": variants}
    report = optimize_model(model, images, force=args.force, progress=progress, **kwargs)
    print(report.summary())
    return EXIT_OK
