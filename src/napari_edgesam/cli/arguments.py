"""Argument types and option groups shared by the ``napari-edgesam`` subcommands.

Types (``point``, ``box``, ``positive_int``, ``finite_float``, ``contrast_limits``) turn one
command-line word into a checked value or an argparse error; option groups
(``add_prompt_options``, ``add_image_options``, ``add_output_options``,
``add_model_options``) register the same flags, with the same help, on every subcommand that
takes them. Coordinates on the command line are pixels of the input image, ``x`` = column,
``y`` = row.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def point(text: str) -> tuple[float, float, int]:
    """argparse type of ``--point X,Y[,LABEL]``: ``(x, y, label)``, x = column and y = row in
    pixels of the input image, label 1 (positive, the default) or 0 (negative).

    Examples
    --------
    >>> point("120,45"), point("140,60,0")
    ((120.0, 45.0, 1), (140.0, 60.0, 0))
    """
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


def box(text: str) -> tuple[float, float, float, float]:
    """argparse type of ``--box X0,Y0,X1,Y1``: two corners, (x, y) = (column, row) pixels
    of the input image."""
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
    ``-`` (and holding a comma) as an option.

    Examples
    --------
    >>> join_negative_values(["img.tif", "--point", "-0.5,10", "-o", "m.tif"])
    ['img.tif', '--point=-0.5,10', '-o', 'm.tif']
    """
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


def check_output(output, inputs: dict, *, overwrite: bool) -> None:
    """Refuse an ``--output`` that is one of ``inputs`` (``{"image": path, ...}``; also
    through links or another spelling: inputs are never overwritten), a folder, or an
    existing file without ``--overwrite``.

    Raises
    ------
    InvalidInputError
    """
    from pathlib import Path

    from ..engine.errors import InvalidInputError

    out = Path(output)
    for what, source in inputs.items():
        if same_file(out, source):
            raise InvalidInputError(f"the output {out} is the input {what}: choose another "
                                    "output file (inputs are never overwritten)")
    if out.is_dir():
        raise InvalidInputError(f"the output {out} is a folder: give a file name")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out} exists; pass --overwrite to replace it")


def check_prompts_and_output(args) -> tuple[list | None, list | None]:
    """The ``--point``/``--box`` prompts and ``--output`` checks shared by segment and
    propagate; returns ``(points, labels)`` (``(x, y)`` pixels and 1/0 labels, or None).

    Raises
    ------
    InvalidInputError
        No prompt, or an existing output without ``--overwrite``.
    """

    from ..engine.errors import InvalidInputError

    if not args.point and args.box is None:
        raise InvalidInputError("no prompt: give at least one --point or a --box")
    source = getattr(args, "image", None) or getattr(args, "stack", None)
    check_output(args.output, {"image": source} if source is not None else {},
                 overwrite=args.overwrite)
    return ([(x, y) for x, y, _ in args.point] or None,
            [lab for _, _, lab in args.point] or None)


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """``--point X,Y[,LABEL]`` (repeatable) and ``--box X0,Y0,X1,Y1``: the prompts of
    ``segment`` and ``propagate``, in pixels of the prompted slice (x = column, y = row;
    negative values are accepted after a space, see :func:`join_negative_values`)."""
    parser.add_argument("--point", "-p", type=point, action="append", default=[],
                        metavar="X,Y[,LABEL]",
                        help="a click; LABEL 1 positive (default), 0 negative")
    parser.add_argument("--box", "-b", type=box, default=None, metavar="X0,Y0,X1,Y1")


def add_image_options(parser: argparse.ArgumentParser, *, tiles_help: str) -> None:
    """``--channel``, ``--contrast``, ``--tiles`` and ``--tile-size``: which pixels the model
    sees and how (``tiles_help`` says what ``--tiles`` does for this subcommand)."""
    parser.add_argument("--channel", type=int, default=None,
                        help="channel to segment; without it, an S axis or a last C axis of 3 "
                             "or 4 is colour (RGB), other channel axes need this")
    parser.add_argument("--contrast", type=contrast_limits, default=None, metavar="LOW,HIGH",
                        help="intensity limits mapped to 0..255 (default: uint8 as is, other "
                             "types 0.5-99.8 percentiles over the whole stack)")
    parser.add_argument("--tiles", choices=("auto", "on", "off"), default="auto",
                        help=tiles_help)
    parser.add_argument("--tile-size", type=positive_int, default=None,
                        help="tile side in pixels (default 1024)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``-o/--output FILE`` (required) and ``--overwrite``."""
    parser.add_argument("-o", "--output", required=True, help="output mask TIFF")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
