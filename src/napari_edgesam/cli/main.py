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

from .arguments import (  # noqa: F401 - re-exported: the subcommands' shared options
    add_model_options,
    check_prompts_and_output,
    contrast_limits,
    finite_float,
    join_negative_values,
    model_from_args,
    positive_int,
)
from .exit_codes import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_MODEL, EXIT_OK  # noqa: F401


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message (its default, made explicit)."""

    def error(self, message):  # pragma: no cover - trivial
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


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
    for module in _SUBCOMMAND_MODULES.values():
        importlib.import_module(f"napari_edgesam.cli.{module}").add_parser(sub)
    return parser


#: Subcommand -> module under ``napari_edgesam.cli`` that contributes it, with
#: ``add_parser(subparsers)`` and ``run(args) -> int`` (or a ``func`` default).
_SUBCOMMAND_MODULES = {"segment": "segment_cmd", "models": "models_cmd",
                       "propagate": "propagate_cmd", "batch": "batch_cmd",
                       "optimize": "optimize_cmd", "replay": "replay_cmd"}


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
