"""The ``napari-edgesam`` command line: a thin adapter over the engine and workflows.

Exit codes (all subcommands):

- 0 success;
- 2 bad arguments or bad input (a one-line reason, no traceback);
- 3 model not available (not downloaded, not found, corrupt or not an EdgeSAM file);
- 1 anything else.

Nothing here ever waits for keyboard input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NO_MODEL = 3


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message (its default, made explicit)."""

    def error(self, message):  # pragma: no cover - trivial
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"point {text!r}: expected X,Y or X,Y,LABEL")
    try:
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r}: X and Y must be numbers") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point {text!r}: LABEL must be 1 (positive) or 0")
    return x, y, label


def _box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r}: expected X0,Y0,X1,Y1") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r}: expected X0,Y0,X1,Y1")
    return values


def positive_int(text: str) -> int:
    """argparse type of counts and sizes that must be at least 1 (``--threads``,
    ``--tile-size``, ``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def finite_float(text: str) -> float:
    """argparse type of thresholds: a finite number (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same file or folder (through links and other
    spellings; a path that does not exist yet is compared by its resolved form)."""
    import os
    from pathlib import Path

    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


#: Options whose value may start with a minus sign (coordinates): ``--point -0.5,10``.
_NEGATIVE_VALUE_OPTIONS = ("--point", "-p", "--box", "-b")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--point -0.5,10`` -> ``--point=-0.5,10``: argparse would read a value starting with
    ``-`` (and holding a comma) as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in _NEGATIVE_VALUE_OPTIONS and nxt is not None and len(nxt) > 1 \
                and nxt[0] == "-" and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def contrast_limits(text: str) -> tuple[float, float]:
    """argparse type of ``--contrast LOW,HIGH`` (numbers, HIGH > LOW)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--contrast {text!r}: expected LOW,HIGH") from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"--contrast {text!r}: HIGH must exceed LOW")
    return lo, hi


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model NAME | --encoder PATH --decoder PATH``, ``--model-dir``, ``--provider``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="published model name (default: edgesam-3x); see 'models list'")
    g.add_argument("--encoder", default=None, help="custom encoder ONNX file")
    g.add_argument("--decoder", default=None, help="custom decoder ONNX file")
    g.add_argument("--model-dir", default=None,
                   help="folder holding the model files (else NAPARI_EDGESAM_MODEL_DIR, the "
                        "configured folder, then the user cache)")
    g.add_argument("--download", action="store_true",
                   help="download the model if it is missing (prints the licence first)")
    g.add_argument("--provider", default=None,
                   help="onnxruntime execution provider(s), e.g. cuda, coreml, directml "
                        "(default: cpu)")
    g.add_argument("--threads", type=positive_int, default=None, help="onnxruntime threads")
    g.add_argument("--optimized", action="store_true",
                   help="use the optimised variants that passed their agreement check "
                        "(made with 'napari-edgesam optimize'); the original otherwise")


def model_from_args(args):
    """Build the :class:`EdgeSamModel` the model options ask for (raises engine errors)."""
    from ..engine import EdgeSamModel, InvalidInputError

    if (args.encoder is None) != (args.decoder is None):
        raise InvalidInputError("--encoder and --decoder go together")
    if args.encoder is not None:
        if args.model is not None:
            raise InvalidInputError("give either --model or --encoder/--decoder, not both")
        model = EdgeSamModel(args.encoder, args.decoder, name="custom",
                             providers=args.provider, num_threads=args.threads)
    else:
        def notice(text: str) -> None:
            print(text, file=sys.stderr)

        model = EdgeSamModel.from_name(
            args.model, model_dir=args.model_dir, download=args.download,
            licence_notice=notice, providers=args.provider, num_threads=args.threads,
        )
    if getattr(args, "optimized", False) and getattr(args, "command", "") != "optimize":
        from ..engine.optimize import load_optimized

        considered: list = []
        optimized = load_optimized(model, report=considered)
        used = [r.kind for r in considered if getattr(r, "status", "") == "enabled"]
        print(f"optimised variants enabled: "
              f"{', '.join(used) if optimized is not model else 'none'} "
              "(see 'napari-edgesam optimize')", file=sys.stderr)
        model = optimized
    return model.load()


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment one object in a 2D image (or one slice of a stack) from clicks/a box",
        description="Segment one object from clicks and/or a box and write it as a uint8 0/1 "
                    "mask TIFF of shape (Y, X). Coordinates are pixels of the input image: "
                    "x = column, y = row.",
    )
    p.add_argument("image", help="input TIFF")
    p.add_argument("--point", "-p", type=_point, action="append", default=[],
                   metavar="X,Y[,LABEL]", help="a click; LABEL 1 positive (default), 0 negative")
    p.add_argument("--box", "-b", type=_box, default=None, metavar="X0,Y0,X1,Y1")
    p.add_argument("--slice", type=int, default=None, dest="slice_index",
                   help="slice index along the stack axis (Z or T) of a stack")
    p.add_argument("--channel", type=int, default=None,
                   help="channel to segment; without it, an S axis or a last C axis of 3 or 4 "
                        "is colour (RGB), other channel axes need this")
    p.add_argument("--contrast", type=contrast_limits, default=None, metavar="LOW,HIGH",
                   help="intensity limits mapped to 0..255 (default: uint8 as is, other types "
                        "0.5-99.8 percentiles over the whole stack)")
    p.add_argument("--tiles", choices=("auto", "on", "off"), default="auto",
                   help="encode overlapping full-resolution tiles instead of the whole image "
                        "shrunk to 1024 px (auto: for images over 2048 px)")
    p.add_argument("--tile-size", type=positive_int, default=None,
                   help="tile side in pixels (default 1024)")
    p.add_argument("-o", "--output", required=True, help="output mask TIFF")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_model_options(p)
    p.set_defaults(func=_run_segment)


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


def check_prompts_and_output(args) -> tuple[list | None, list | None]:
    """The ``--point``/``--box`` prompts and ``--output`` checks shared by segment and
    propagate; returns ``(points, labels)`` (``(x, y)`` pixels and 1/0 labels, or None).

    Raises
    ------
    InvalidInputError
        No prompt, or an existing output without ``--overwrite``.
    """
    from pathlib import Path

    from ..engine.errors import InvalidInputError

    if not args.point and args.box is None:
        raise InvalidInputError("no prompt: give at least one --point or a --box")
    out = Path(args.output)
    source = getattr(args, "image", None) or getattr(args, "stack", None)
    if source is not None and same_file(out, source):
        raise InvalidInputError(f"the output {out} is the input image: choose another "
                                "output file (the input is never overwritten)")
    if out.is_dir():
        raise InvalidInputError(f"the output {out} is a folder: give a file name")
    if out.exists() and not args.overwrite:
        raise InvalidInputError(f"{out} exists; pass --overwrite to replace it")
    return ([(x, y) for x, y, _ in args.point] or None,
            [lab for _, _, lab in args.point] or None)


def _run_segment(args) -> int:
    from pathlib import Path

    from ..engine import Predictor
    from ..engine.tiling import TiledPredictor, needs_tiling
    from ..workflows.tiff_io import read_image, select_plane, write_tiff_atomic

    points, labels = check_prompts_and_output(args)
    out = Path(args.output)
    stack = read_image(args.image)
    plane, what = select_plane(stack, slice_index=args.slice_index, channel=args.channel)
    mapping = _mapping_for(args, stack, plane)
    model = model_from_args(args)
    predictor = Predictor(model)  # the embedding cache: a second prompt costs a decoder run
    tiled = args.tiles == "on" or (args.tiles == "auto" and needs_tiling(plane.shape))
    if tiled:
        tp = TiledPredictor(predictor, plane, mapping, tile_size=args.tile_size)
        tres = tp.predict(points=points, labels=labels, box=args.box)
        mask, result = tres.full_mask(), tres.prediction
        what += f", tiled ({len(tp.encoded)} window(s) encoded)"
    else:
        predictor.set_image(plane, mapping)
        result = predictor.predict(points=points, labels=labels, box=args.box)
        mask = result.mask
    write_tiff_atomic(out, mask.astype(np.uint8), overwrite=args.overwrite,
                      compression="zlib")
    print(
        f"{out}: {int(mask.sum())} pixels (score {result.score:.3f}, mask "
        f"{result.mask_index}, {what}, model {model.name})"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands register themselves here)."""
    from .. import __version__

    parser = _Parser(
        prog="napari-edgesam",
        description="EdgeSAM segmentation from the command line (the same engine as the "
                    "napari plugin). Exit codes: 0 ok, 2 bad input, 3 model not available, "
                    "1 other errors.",
    )
    parser.add_argument("--version", action="version", version=f"napari-edgesam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_segment(sub)
    for module in _SUBCOMMAND_MODULES.values():
        try:
            mod = importlib.import_module(f"napari_edgesam.cli.{module}")
        except ImportError:  # a subcommand module not present in this build
            continue
        mod.add_parser(sub)
    return parser


#: Subcommand -> module under ``napari_edgesam.cli`` that contributes it, with
#: ``add_parser(subparsers)`` and ``run(args) -> int`` (or a ``func`` default).
_SUBCOMMAND_MODULES = {"models": "models_cmd", "propagate": "propagate_cmd", "batch": "batch_cmd",
                       "optimize": "optimize_cmd"}


def main(argv=None) -> int:
    """Entry point of ``napari-edgesam``; returns the exit code."""
    from ..engine.errors import EdgeSamError, InvalidInputError, ModelError

    parser = build_parser()
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None
                                                       else argv)))
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    func = getattr(args, "func", None)
    if func is None:
        mod = importlib.import_module(f"napari_edgesam.cli.{_SUBCOMMAND_MODULES[args.command]}")
        func = mod.run
    try:
        return int(func(args) or 0)
    except InvalidInputError as exc:
        print(f"napari-edgesam {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModelError as exc:
        from ..engine.models import UnknownModelError

        if isinstance(exc, UnknownModelError):  # a bad argument, as for 'models fetch'
            print(f"napari-edgesam {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"napari-edgesam {args.command}: model not available: {exc}", file=sys.stderr)
        return EXIT_NO_MODEL
    except EdgeSamError as exc:
        print(f"napari-edgesam {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"napari-edgesam {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a read-only folder, a full disk, a path that is a folder...
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"napari-edgesam {args.command}: error: {exc.strerror or exc}{where}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug or an environment problem: still one line
        return _unexpected(args, exc)


def _unexpected(args, exc) -> int:
    print(f"napari-edgesam {args.command}: unexpected error: {type(exc).__name__}: {exc}",
          file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
