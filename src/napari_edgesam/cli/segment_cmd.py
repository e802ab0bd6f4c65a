"""``napari-edgesam segment``: one object in a 2D image (or one slice of a stack) from clicks
and/or a box, written as a uint8 0/1 mask TIFF of the slice's ``(Y, X)`` shape.

Small images are read whole and shrunk to the model's 1024 frame. Large ones (over 2048 px, or
``--tiles on``) are answered from full-resolution tiles: the input is opened lazily
(:func:`~napari_edgesam.workflows.tiff_windows.open_lazy`), only the windows the prompt needs
are decoded, and the mask is written tile by tile into a compressed tiled TIFF
(:func:`~napari_edgesam.workflows.tiff_windows.write_mask_tiled`), so memory is bounded by the
tiles touched whatever the image's size. The embedding cache is used: a second prompt on the
same image costs a decoder run.
"""

from __future__ import annotations

from .arguments import (
    add_image_options,
    add_model_options,
    add_output_options,
    add_prompt_options,
    check_prompts_and_output,
    model_from_args,
)
from .exit_codes import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    """Register the ``segment`` subcommand."""
    p = subparsers.add_parser(
        "segment",
        help="segment one object in a 2D image (or one slice of a stack) from clicks/a box",
        description="Segment one object from clicks and/or a box and write it as a uint8 0/1 "
                    "mask TIFF of shape (Y, X). Coordinates are pixels of the input image: "
                    "x = column, y = row.",
    )
    p.add_argument("image", help="input TIFF")
    add_prompt_options(p)
    p.add_argument("--slice", type=int, default=None, dest="slice_index",
                   help="slice index along the stack axis (Z or T) of a stack")
    add_image_options(p, tiles_help="encode overlapping full-resolution tiles instead of the "
                                    "whole image shrunk to 1024 px (auto: for images over "
                                    "2048 px)")
    add_output_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def _mapping_for(args, stack, plane):
    from ..engine.errors import InvalidInputError
    from ..engine.intensity import stack_mapping

    rgb = plane.ndim == 3
    if args.contrast:
        return stack_mapping(plane, "contrast", rgb=rgb, limits=args.contrast)
    if rgb:
        return stack_mapping(plane[..., :3], "auto", rgb=True)
    # Stack-wide limits for a grey slice, so that every slice of a stack is mapped alike:
    # percentiles sampled (a few slices, strided) from a lazy view, never the whole stack.
    from ..workflows.tiff_io import stack_view

    try:
        whole, _ = stack_view(stack, args.channel)
    except InvalidInputError:  # a 2D image: the slice is the whole image
        whole = plane
    return stack_mapping(whole, "auto", rgb=False)



def run(args) -> int:
    """Run ``napari-edgesam segment``; returns the exit code."""
    from pathlib import Path

    import numpy as np

    from ..engine import Predictor
    from ..engine.tiling import TiledPredictor, needs_tiling
    from ..workflows.tiff_io import select_plane, write_tiff_atomic
    from ..workflows.tiff_windows import open_lazy, write_mask_tiled

    points, labels = check_prompts_and_output(args)
    out = Path(args.output)
    with open_lazy(args.image) as lazy:
        stack = lazy.stack
        plane, what = select_plane(stack, slice_index=args.slice_index, channel=args.channel,
                                   lazy=True)
        tiled = args.tiles == "on" or (args.tiles == "auto" and needs_tiling(plane.shape[:2]))
        if not tiled:
            plane = np.asarray(plane)
        mapping = _mapping_for(args, stack, plane)
        model = model_from_args(args)
        predictor = Predictor(model)  # the embedding cache: a second prompt costs a decoder run
        if tiled:
            # One prompt encodes a few windows, never the whole grid: no cache-bound check.
            tp = TiledPredictor(predictor, plane, mapping, tile_size=args.tile_size,
                                check_bound=False)
            tres = tp.predict(points=points, labels=labels, box=args.box)
            result, area = tres.prediction, tres.area
            write_mask_tiled(out, tres.mask, tres.offset, tres.image_shape,
                             overwrite=args.overwrite)
            what += f", tiled ({len(tp.encoded)} window(s) encoded)"
        else:
            predictor.set_image(plane, mapping)
            result = predictor.predict(points=points, labels=labels, box=args.box)
            area = int(np.count_nonzero(result.mask))
            write_tiff_atomic(out, result.mask.astype(np.uint8), overwrite=args.overwrite,
                              compression="zlib")
    print(
        f"{out}: {area} pixels (score {result.score:.3f}, mask "
        f"{result.mask_index}, {what}, model {model.name})"
    )
    return EXIT_OK
