"""The store of built variants on disk and their JSON records.

Where variants live (:func:`variant_folders`: beside the source file, else the user cache,
in a folder named by the source's SHA-256), the record written beside each variant (verdict,
figures, file hashes, onnxruntime version) and when a record is stale, and
:class:`VariantResult`, one variant's outcome as read back by :func:`find_variants`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import ModelError
from ..session import EdgeSamModel
from .agreement import Agreement
from .dependencies import _ort_version
from .variants import VARIANTS

_log = logging.getLogger(__name__)


#: Folder created beside the source model files.
BESIDE_DIR = "edgesam-optimized"
#: Version of the record format (a record of another format is rebuilt).
RECORD_FORMAT = 1


def _probe_writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def variant_folders(source: Path, source_sha: str) -> list[Path]:
    """Where variants of ``source`` are looked for, in order: beside it, then the cache.

    Parameters
    ----------
    source : pathlib.Path
        The original ONNX file.
    source_sha : str
        Its SHA-256 (the folder name, so that a changed file never reuses old variants).
    """
    return [
        Path(source).resolve().parent / BESIDE_DIR / source_sha,
        paths.cache_dir() / "optimized" / source_sha,
    ]


def _source_sha(model: EdgeSamModel, role: str) -> str:
    if role == "encoder":
        return model.identity
    h = model._sha256.get("decoder")
    if h is None:
        from ..models import file_sha256

        h = model._sha256["decoder"] = file_sha256(model.decoder_path)
    return h


def _read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _record_problem(rec: dict, folder: Path, source_sha: str) -> str | None:
    """Why a record cannot be used as it is (None: it can)."""
    if rec.get("format") != RECORD_FORMAT:
        return "record of another format"
    if rec.get("source", {}).get("sha256") != source_sha:
        return "made from another version of the source file"
    if rec.get("onnxruntime") != _ort_version():
        return (f"made with onnxruntime {rec.get('onnxruntime')}, now {_ort_version()}: "
                "it must be checked again")
    from ..models import file_sha256

    for name, digest in (rec.get("file_sha256") or {}).items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            if file_sha256(p) != digest:
                return f"{name} changed since it was checked"
        except OSError as exc:
            return f"{name} cannot be read ({exc})"
    if not rec.get("file_sha256"):
        return "record lists no files"
    return None


@dataclass
class VariantResult:
    """Outcome for one variant.

    Attributes
    ----------
    kind : str
    role : {"encoder", "decoder"}
    status : {"enabled", "refused", "failed", "unchecked", "stale", "missing", "skipped"}
        ``enabled``: built and passed the check; ``refused``: the check failed;
        ``skipped``: the builder found nothing to rewrite (no file, no record; an
        ``optimize`` report only, e.g. ``encoder-fold`` with "0 folds");
        ``failed``: building or checking raised (see ``reason``); ``unchecked``: built with
        ``check=False`` (never enabled automatically); ``stale``/``missing``: found by
        :func:`find_variants` but unusable / not built.
    reason : str
        One sentence for the user.
    folder : pathlib.Path or None
        Where the files and the record are.
    files : dict
        ``{"model": name, "image": name, "prompt": name}`` (file names in ``folder``).
    agreement : Agreement or None
    cached : bool
        True when the result came from an earlier run's record.
    seconds : float
        Time spent building and checking in this call.
    details : dict
        What the builder did.
    """

    kind: str
    role: str
    status: str
    reason: str = ""
    folder: Path | None = None
    files: dict = field(default_factory=dict)
    agreement: Agreement | None = None
    cached: bool = False
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when the variant passed its check (``status == "enabled"``)."""
        return self.status == "enabled"

    def path(self, part: str = "model") -> Path | None:
        """The file of ``part`` (``"model"``, ``"image"`` or ``"prompt"``), None if absent."""
        name = self.files.get(part)
        return None if name is None or self.folder is None else self.folder / name


def _result_from_record(rec: dict, folder: Path) -> VariantResult:
    ag = rec.get("agreement")
    agreement = Agreement(**ag) if isinstance(ag, dict) else None
    return VariantResult(
        kind=rec["kind"], role=rec["role"], status=rec.get("status", "failed"),
        reason=rec.get("reason", ""), folder=folder, files=dict(rec.get("files") or {}),
        agreement=agreement, cached=True, details=dict(rec.get("build") or {}),
    )


def _write_record(folder: Path, kind: str, rec: dict) -> None:
    paths.atomic_write_text(folder / f"{kind}.json", json.dumps(rec, indent=2, default=str))


def find_variants(model: EdgeSamModel, kinds: Sequence[str] | None = None
                  ) -> dict[str, VariantResult]:
    """Look up the recorded variants of ``model``'s files (no building, no checking).

    Parameters
    ----------
    model : EdgeSamModel
        The original model (an :class:`OptimizedEdgeSamModel` is traced back to its source).
    kinds : sequence of str, optional
        Default: the built-in kinds.

    Returns
    -------
    dict
        kind -> :class:`VariantResult`; ``status`` ``missing`` when never built here,
        ``stale`` when the record no longer fits (with the reason), else the recorded one.
    """
    model = getattr(model, "source", None) or model
    out = {}
    for kind in kinds or list(VARIANTS):
        role = VARIANTS[kind].role if kind in VARIANTS else (
            "encoder" if kind.startswith("encoder") else "decoder")
        out[kind] = _lookup(model, kind, role)
    return out


def _lookup(model: EdgeSamModel, kind: str, role: str) -> VariantResult:
    """The recorded result of one variant kind of ``model`` (see :func:`find_variants`)."""
    src = model.encoder_path if role == "encoder" else model.decoder_path
    try:
        sha = _source_sha(model, role)
    except (OSError, ModelError) as exc:
        return VariantResult(kind, role, "missing", f"source not readable: {exc}")
    found = VariantResult(kind, role, "missing", "not built yet")
    for folder in variant_folders(src, sha):
        rec = _read_record(folder / f"{kind}.json")
        if rec is None:
            continue
        problem = _record_problem(rec, folder, sha)
        if problem is not None:
            found = VariantResult(kind, role, "stale", problem, folder=folder)
            continue
        return _result_from_record(rec, folder)
    return found


def _file_list(folder: Path, kind: str) -> dict:
    files = {"model": f"{kind}.onnx"}
    if (folder / f"{kind}.image.onnx").is_file() and (folder / f"{kind}.prompt.onnx").is_file():
        files["image"] = f"{kind}.image.onnx"
        files["prompt"] = f"{kind}.prompt.onnx"
    return files


def _target_folder(source: Path, sha: str) -> Path:
    beside, cache = variant_folders(source, sha)
    if _probe_writable(beside):
        return beside
    if _probe_writable(cache):
        _log.info("model folder %s is not writable; optimised variants go to %s",
                  Path(source).parent, cache)
        return cache
    raise ModelError(f"cannot write optimised variants beside {source} nor into {cache}")
