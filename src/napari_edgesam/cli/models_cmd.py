"""``napari-edgesam models list | fetch [NAME] | path [NAME]``.

Exit codes: 0 success; 2 bad arguments (an unknown model name); 3 model not available (not
found, not downloadable, corrupt); 1 anything else. Errors are one line on stderr, never a
traceback; nothing waits for keyboard input.
"""

from __future__ import annotations

import argparse
import sys

from .exit_codes import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_MODEL, EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``models`` subcommand on ``subparsers`` (from ``add_subparsers``).

    Returns
    -------
    argparse.ArgumentParser
        The ``models`` parser.
    """
    p = subparsers.add_parser(
        "models",
        help="list, download and locate the EdgeSAM model files",
        description="List, download and locate the EdgeSAM model files. Files are looked "
                    "for in --model-dir, $NAPARI_EDGESAM_MODEL_DIR, the configured model "
                    "folder, then the user cache ($NAPARI_EDGESAM_CACHE_DIR/models).",
    )
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(p))

    def common(q):
        q.add_argument("--model-dir", default=None,
                       help="folder holding the model files, searched first")

    q = sub.add_parser("list", help="show the known models and whether they are here")
    common(q)
    q.add_argument("--no-verify", action="store_true",
                   help="do not hash files not verified before (report them as 'present')")

    q = sub.add_parser("fetch", help="download a model (prints its licence first)")
    q.add_argument("name", nargs="?", default=None, help="model name (default: edgesam-3x)")
    common(q)
    q.add_argument("--dest", default=None,
                   help="download into this folder (default: the user cache)")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    q.add_argument("--timeout", type=float, default=30.0,
                   help="give up when the server sends nothing for this many seconds "
                        "(default 30)")
    q.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="give up a file's transfer that takes longer than this in all "
                        "(default: no limit; a slow but steady server is never given up "
                        "on by --timeout alone)")

    q = sub.add_parser("path", help="print the paths of a model's verified files")
    q.add_argument("name", nargs="?", default=None, help="model name (default: edgesam-3x)")
    common(q)
    q.add_argument("--role", choices=("encoder", "decoder"), default=None,
                   help="print only this file")
    return p


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _err(message: str) -> None:
    print(f"napari-edgesam models: {message}", file=sys.stderr)


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _list(args) -> int:
    from napari_edgesam.engine import models

    rows = []
    for card in models.list_cards():
        st = models.model_status(card, args.model_dir, verify=not args.no_verify)
        where = sorted({str(f.path.parent) for f in st.files.values() if f.path is not None})
        rows.append((card.name + ("*" if card.default else ""), card.display_name, st.state,
                     _fmt_size(card.total_size), ", ".join(where) or "-"))
        for f in st.files.values():
            if f.state == "corrupt":
                print(f"napari-edgesam models: warning: {f.detail}", file=sys.stderr)
    header = ("NAME", "VARIANT", "STATUS", "SIZE", "LOCATION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    cards = models.list_cards()
    if cards:
        c = cards[0]
        print(f"* default. Weights licence: {c.licence_name} ({c.licence_url}). "
              f"Download with: napari-edgesam models fetch NAME")
    return EXIT_OK


def _fetch(args) -> int:
    from napari_edgesam.engine import models
    from napari_edgesam.engine.download import TextProgress

    def notice(text: str) -> None:
        print(text, file=sys.stderr)

    progress = None if args.quiet else TextProgress(sys.stderr)
    if args.dest is not None:
        res = models.download_model(args.name, dest=args.dest, progress=progress,
                                    licence_notice=notice, timeout=args.timeout,
                                    max_seconds=args.max_time)
    else:
        res = models.resolve_model(args.name, model_dir=args.model_dir, download=True,
                                   progress=progress, licence_notice=notice,
                                   timeout=args.timeout, max_seconds=args.max_time)
    print(f"{res.card.display_name}: verified {res.encoder} {res.decoder}")
    return EXIT_OK


def _path(args) -> int:
    from napari_edgesam.engine import models

    res = models.resolve_model(args.name, model_dir=args.model_dir, download=False)
    if args.role in (None, "encoder"):
        print(res.encoder)
    if args.role in (None, "decoder"):
        print(res.decoder)
    return EXIT_OK


_ACTIONS = {"list": _list, "fetch": _fetch, "path": _path}


def run(args) -> int:
    """Run ``models ACTION``; returns the exit code (never raises, except SystemExit)."""
    action = _ACTIONS.get(getattr(args, "models_command", None) or "")
    if action is None:
        _err("missing action: choose one of list, fetch, path")
        return EXIT_BAD_INPUT
    try:
        from napari_edgesam.engine.errors import CancelledError, ModelError
        from napari_edgesam.engine.models import UnknownModelError

        try:
            return action(args)
        except UnknownModelError as exc:
            _err(_one_line(exc))
            return EXIT_BAD_INPUT
        except ModelError as exc:
            _err(_one_line(exc))
            return EXIT_NO_MODEL
        except CancelledError as exc:
            _err(f"cancelled: {_one_line(exc)}")
            return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as exc:  # environment problems or bugs: still one line
        _err(f"{type(exc).__name__}: {_one_line(exc)}")
        return EXIT_ERROR


def main(argv=None) -> int:
    """Stand-alone entry (``python -m napari_edgesam.cli.models_cmd list``)."""
    parser = argparse.ArgumentParser(prog="napari-edgesam")
    add_parser(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
