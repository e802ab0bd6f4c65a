"""Model status: where a model's files are on this machine and whether they are verified.

:func:`search_dirs` lists the folders looked in (an explicit folder,
``$NAPARI_EDGESAM_MODEL_DIR``, the ``model_dir`` setting, the user cache);
:func:`model_status` finds each file of a card there and checks its size and SHA-256
(memoised, see :mod:`.file_hash`), giving a :class:`ModelStatus` of :class:`FileStatus`.
Nothing is downloaded here (see :mod:`.models`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from napari_edgesam.engine import paths
from napari_edgesam.engine.file_hash import cached_sha256, file_sha256
from napari_edgesam.engine.model_cards import ROLES, ModelCard, ModelFile, get_card

__all__ = ["FileStatus", "ModelStatus", "model_status", "search_dirs"]

_log = logging.getLogger(__name__)


def search_dirs(model_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Return the folders searched for model files, in order, with where each comes from.

    Order: ``model_dir`` (argument), ``$NAPARI_EDGESAM_MODEL_DIR``, the ``model_dir``
    setting, the user cache (``<cache>/models``). Duplicates are dropped.

    Returns
    -------
    list of (str, pathlib.Path)
        ``(origin, folder)`` pairs; origins are ``"argument"``, ``"NAPARI_EDGESAM_MODEL_DIR"``,
        ``"setting"`` and ``"cache"``.
    """
    candidates: list[tuple[str, Path | None]] = [
        ("argument", Path(model_dir).expanduser() if model_dir else None),
        (paths.ENV_MODEL_DIR, paths._env_path(paths.ENV_MODEL_DIR)),
    ]
    setting = paths.get_setting("model_dir")
    candidates.append(
        ("setting", Path(setting).expanduser() if isinstance(setting, str) and setting else None)
    )
    candidates.append(("cache", paths.models_cache_dir()))
    seen: set[str] = set()
    result = []
    for origin, folder in candidates:
        if folder is None:
            continue
        key = os.path.normcase(os.path.abspath(folder))
        if key in seen:
            continue
        seen.add(key)
        result.append((origin, folder))
    return result


@dataclass(frozen=True)
class FileStatus:
    """Where one model file was found and in what state.

    Attributes
    ----------
    file : ModelFile
    state : str
        ``"verified"`` (SHA-256 matches), ``"present"`` (right size, hash not checked),
        ``"corrupt"`` (wrong size or hash) or ``"missing"``.
    path : pathlib.Path or None
        The file used (or the first bad one found); ``None`` when missing.
    detail : str
        Why a file is corrupt (expected and actual size or hash).
    """

    file: ModelFile
    state: str
    path: Path | None = None
    detail: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """Status of all files of one model.

    Attributes
    ----------
    card : ModelCard
    state : str
        ``"verified"``, ``"present"``, ``"missing"`` (no file found), ``"incomplete"`` (some
        files missing) or ``"corrupt"`` (a file with the wrong size or hash, none good).
    files : dict of str to FileStatus
    """

    card: ModelCard
    state: str
    files: dict

    @property
    def ok(self) -> bool:
        """True when every file is verified."""
        return self.state == "verified"


def _check_file(spec: ModelFile, path: Path, verify: bool) -> FileStatus:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return FileStatus(spec, "corrupt", path, f"cannot read: {exc}")
    if size != spec.size:
        return FileStatus(
            spec, "corrupt", path,
            f"{path} has {size} bytes, expected {spec.size} (an incomplete or different file)",
        )
    digest = cached_sha256(path)
    if digest is None and verify:
        try:
            digest = file_sha256(path)
        except OSError as exc:
            return FileStatus(spec, "corrupt", path, f"cannot read: {exc}")
    if digest is None:
        return FileStatus(spec, "present", path)
    if digest != spec.sha256:
        return FileStatus(
            spec, "corrupt", path,
            f"{path} has SHA-256 {digest}, expected {spec.sha256}",
        )
    return FileStatus(spec, "verified", path)


def _find_file(spec: ModelFile, folders: list[Path], verify: bool) -> FileStatus:
    first_bad: FileStatus | None = None
    for folder in folders:
        candidate = folder / spec.filename
        if not candidate.is_file():
            continue
        st = _check_file(spec, candidate, verify)
        if st.state in ("verified", "present"):
            if first_bad is not None:
                _log.warning("Ignoring bad model file: %s; using %s", first_bad.detail, st.path)
            return st
        first_bad = first_bad or st
    return first_bad or FileStatus(spec, "missing")


def model_status(
    card: str | ModelCard | None = None,
    model_dir: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    cards=None,
) -> ModelStatus:
    """Look for a model's files in the search folders and report their state.

    Parameters
    ----------
    card : str, ModelCard or None
        The model (``None``: the default).
    model_dir : path, optional
        An explicit folder searched first (see :func:`search_dirs`).
    verify : bool
        Hash files whose hash is not memoised yet (once per file version). ``False`` only
        checks sizes and the memo, and reports unhashed files as ``"present"``.
    cards : optional
        See :func:`list_cards`.

    Returns
    -------
    ModelStatus
    """
    card = get_card(card, cards)
    folders = [f for _, f in search_dirs(model_dir)]
    files = {r: _find_file(card.files[r], folders, verify) for r in ROLES}
    states = [files[r].state for r in ROLES]
    if all(s == "verified" for s in states):
        state = "verified"
    elif all(s == "missing" for s in states):
        state = "missing"
    elif "corrupt" in states:
        state = "corrupt"
    elif "missing" in states:
        state = "incomplete"
    else:
        state = "present"
    return ModelStatus(card, state, files)
