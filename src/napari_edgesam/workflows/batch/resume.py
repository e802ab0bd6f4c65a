"""How batch resumes: what is already done, and what a killed run left behind.

One concept, everything a rerun relies on:

- the sidecar (``<stem>_labels.json``, :func:`write_sidecar` / :func:`read_sidecar`)
  records a fingerprint of the parameters and model hashes (:func:`params_fingerprint`),
  one of the input (name, size, modification time: :func:`input_identity`) and the label
  TIFF's size and SHA-256;
- :func:`existing_state` says whether an input is done (outputs exist, match, and the
  label TIFF's SHA-256 is the recorded one: a torn or emptied file is redone), in conflict
  (outputs of other parameters or another model) or still to do;
- outputs are only ever renamed into place complete, so a killed run leaves at most
  temporary files; whoever holds an output's lock (:func:`output_lock`, a
  :class:`~napari_edgesam.engine.paths.FileLock`) owns them, so another run writing the
  same output is refused and what a killed run left is swept (:func:`sweep_leftovers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from pathlib import Path

from .files import output_paths
from .model import ModelSpec
from .params import BatchParams

__all__ = ["SIDECAR_FORMAT", "conflict_error", "existing_state", "input_identity",
           "output_lock", "params_fingerprint", "read_sidecar", "scratch_path",
           "sweep_leftovers", "write_sidecar"]

#: Identifies our sidecar files (and their version).
SIDECAR_FORMAT = "napari-edgesam-batch/1"
#: Suffix of scratch label volumes (memory-mapped ``.npy``) kept next to their output.
SCRATCH_SUFFIX = ".scratch.npy"


def _fingerprint(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def params_fingerprint(params: BatchParams, model: ModelSpec) -> str:
    """SHA-256 (hex) of everything that makes an output: the parameters, the model files'
    hashes (and the prompt-batched decoder's when the seeds are decoded with it, see
    :meth:`ModelSpec.fingerprint_parts`) and the sidecar format. Outputs of another
    fingerprint are a conflict."""
    return _fingerprint({"parameters": params.to_dict(),
                         "model": model.fingerprint_parts(),
                         "format": SIDECAR_FORMAT})


def input_identity(path: Path) -> dict:
    """What says an input has not changed since its output was made: its name, size and
    modification time (``{"name", "size", "mtime_ns"}``)."""
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_sidecar(path: Path) -> dict | None:
    """A sidecar's content, or None when the file is unreadable or not one of ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None
    return data


def existing_state(path: Path, out_dir: Path, params_fp: str) -> tuple[str, dict | None]:
    """``("done" | "conflict" | "todo", sidecar)`` for an input: may it be skipped?

    done: label TIFF and sidecar exist and match the parameters and the input's size and
    mtime, and the label TIFF's SHA-256 is the one the sidecar recorded (a file emptied or
    torn by a power cut is redone); conflict: a sidecar of *other* parameters or model
    exists; todo: anything else (no output, a half-finished one, or an input that changed
    since).
    """
    out_tif, out_json = output_paths(path, out_dir)
    side = read_sidecar(out_json) if out_json.exists() else None
    if side is None:
        return "todo", None
    if side.get("parameters_fingerprint") != params_fp:
        return "conflict", side
    try:
        ident = input_identity(path)
        out_ok = out_tif.is_file() and out_tif.stat().st_size == side["output"]["bytes"]
    except (OSError, KeyError, TypeError):
        return "todo", side
    if side.get("status") == "done" and side.get("input", {}).get("identity") == ident and out_ok:
        want = side["output"].get("sha256")
        if want is not None:  # sidecars of earlier versions have sizes only
            from ...engine.models import file_sha256

            try:
                if file_sha256(out_tif, use_memo=False) != want:
                    return "todo", side
            except OSError:
                return "todo", side
        return "done", side
    return "todo", side


def sweep_leftovers(out_dir: Path, path: Path, lock: bool = False) -> None:
    """Delete the temporary files a terminated or killed task left for ``path``'s outputs
    (the outputs themselves are only ever renamed into place, so they are complete): the
    label TIFF's ``.partial`` file, scratch memmaps (:func:`scratch_path`) and the
    sidecar's ``.tmp`` file. Call it holding the output's lock (:func:`output_lock`), or
    once the task's process is gone (then with ``lock``: its lock file too).

    Parameters
    ----------
    out_dir : Path
        The output folder.
    path : path
        The input whose outputs are concerned.
    lock : bool
        Also delete the output's lock file.
    """
    out_tif, out_json = output_paths(path, out_dir)
    patterns = [f".{out_tif.name}.*.partial", f".{out_tif.name}.*{SCRATCH_SUFFIX}",
                f".{out_json.name}.*.tmp"] + ([_lock_name(out_tif)] if lock else [])
    for pattern in patterns:
        for stale in out_dir.glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()


def conflict_error(out_json: Path) -> str:
    """The reason given for an input whose sidecar is of other parameters or model."""
    return (f"{out_json.name} exists from other parameters or another model; pass "
            "--overwrite or use another output folder")


def _lock_name(out_tif: Path) -> str:
    return f".{out_tif.name}.lock"


def output_lock(out_tif: Path):
    """The lock that owns an output's temporary files (not acquired yet).

    Parameters
    ----------
    out_tif : Path
        The label TIFF (:func:`~.files.output_paths`).

    Returns
    -------
    FileLock
        ``<out_dir>/.<name>.lock``; hold it (``acquire(wait=False)``) while writing the
        output and sweeping its leftovers.
    """
    from ...engine.paths import FileLock

    return FileLock(out_tif.parent / _lock_name(out_tif))


def scratch_path(out_tif: Path) -> Path:
    """A new name for a scratch label volume (a ``.npy`` memmap) of this output, in its
    folder, swept by :func:`sweep_leftovers` if its run is killed."""
    return out_tif.parent / f".{out_tif.name}.{uuid.uuid4().hex[:8]}{SCRATCH_SUFFIX}"


def write_sidecar(out_json: Path, out_tif: Path, *, params: BatchParams, model: ModelSpec,
                  input_path: Path, identity: dict, input_info: dict, details: dict,
                  output: dict, run: dict) -> dict:
    """Write the sidecar of a finished output (atomically), after its label TIFF.

    Parameters
    ----------
    out_json, out_tif : Path
        The sidecar and the label TIFF, already written (its size and SHA-256 are recorded
        here, for :func:`existing_state`).
    params : BatchParams
    model : ModelSpec
    input_path : Path
        The input.
    identity : dict
        :func:`input_identity` of the input, taken *before* it was read.
    input_info : dict
        More about the input (``axes``, ``shape``, ``dtype``, ``metadata``).
    details : dict
        Entries recorded as they are, after the input (``axes_used``,
        ``intensity_mapping``, ``foreground_threshold``).
    output : dict
        About the label TIFF (``path``, ``axes``, ``shape``, ``dtype``, ``format``,
        ``n_objects``); ``bytes`` and ``sha256`` are added here.
    run : dict
        When, how long, where.

    Returns
    -------
    dict
        What was written.
    """
    from ... import __version__
    from ...engine.models import file_sha256
    from ...engine.paths import atomic_write_text

    data = {
        "format": SIDECAR_FORMAT,
        "status": "done",
        "plugin_version": __version__,
        "parameters": params.to_dict(),
        "parameters_fingerprint": params_fingerprint(params, model),
        "model": model.to_dict(),
        "input": {"path": str(input_path), "identity": identity, **input_info},
        **details,
        "output": {**output,
                   "bytes": out_tif.stat().st_size,
                   "sha256": file_sha256(out_tif, use_memo=False)},  # resume verifies it
        "run": run,
    }
    atomic_write_text(out_json, json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")
    return data
