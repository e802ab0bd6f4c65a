"""Which files a batch reads and writes: its inputs, and the names of their outputs.

One concept: :func:`collect_inputs` expands files, folders and glob patterns into the input
TIFFs of a run, and :func:`output_paths` names each input's outputs in the output folder
(``<stem>_labels.tif`` and its sidecar ``<stem>_labels.json``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ...engine.errors import InvalidInputError

__all__ = ["OUTPUT_SUFFIX", "TIFF_SUFFIXES", "collect_inputs", "output_paths", "stem"]

#: Suffix of label TIFFs and sidecars: ``<stem>_labels.tif`` / ``<stem>_labels.json``.
OUTPUT_SUFFIX = "_labels"
TIFF_SUFFIXES = (".tif", ".tiff")


def _is_tiff(p: Path) -> bool:
    return p.suffix.lower() in TIFF_SUFFIXES


def collect_inputs(inputs: Iterable, *, exclude_dir=None) -> list[Path]:
    """Expand files, folders and glob patterns into a list of input files.

    Parameters
    ----------
    inputs : iterable of str or Path
        A file (taken as is), a folder (its ``*.tif``/``*.tiff`` files, not recursive, hidden
        files skipped) or a glob pattern (``*``, ``?``, ``[``; ``**`` recurses; only files).
    exclude_dir : path, optional
        The output folder: label images written there (``*_labels.tif``) are left out, so
        the output folder may be the input folder.

    Returns
    -------
    list of Path
        Absolute, without duplicates, in the order given (folders and globs sorted).

    Raises
    ------
    InvalidInputError
        An input that does not exist or a pattern that matches nothing.
    """
    out: list[Path] = []
    seen = set()
    excl = Path(exclude_dir).resolve() if exclude_dir is not None else None

    def add(p: Path):
        p = p.resolve()
        if p in seen or (excl is not None and p.parent == excl
                         and stem(p).endswith(OUTPUT_SUFFIX)):
            return
        seen.add(p)
        out.append(p)

    for item in inputs:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_file():
            add(p)
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and _is_tiff(f) and not f.name.startswith("."):
                    add(f)
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise InvalidInputError(f"no file matches {text!r}")
            for f in files:
                add(f)
        else:
            raise InvalidInputError(f"input not found: {text}")
    return out


def stem(path: Path) -> str:
    """A file's name without its TIFF suffix (``.ome.tif``, ``.ome.tiff``, ``.tif``,
    ``.tiff``, any case), else without its last suffix."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_paths(input_path, out_dir) -> tuple[Path, Path]:
    """``(<out_dir>/<stem>_labels.tif, <out_dir>/<stem>_labels.json)`` for an input.

    Parameters
    ----------
    input_path, out_dir : path

    Returns
    -------
    (Path, Path)
        The label TIFF and its sidecar.
    """
    name = stem(Path(input_path)) + OUTPUT_SUFFIX
    out_dir = Path(out_dir)
    return out_dir / f"{name}.tif", out_dir / f"{name}.json"
