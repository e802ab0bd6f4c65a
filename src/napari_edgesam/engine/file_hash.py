"""SHA-256 of files, memoised so that start-ups do not re-hash the model files.

:func:`file_sha256` hashes a file and remembers the digest, keyed by the resolved path, the
size and the modification time, in ``<cache>/sha256-memo.json`` (and in memory);
:func:`cached_sha256` reads the memo without hashing; :func:`remember_sha256` records a
digest computed elsewhere (a download hashes the bytes as it writes them).

Imported by the predictor (the model identity in embedding cache keys), model status and
downloads, so it imports only the standard library and :mod:`.paths`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from napari_edgesam.engine import paths

__all__ = ["HASH_MEMO_FILE", "cached_sha256", "file_sha256", "remember_sha256"]

_log = logging.getLogger(__name__)

#: Name of the hash memo file in the cache folder.
HASH_MEMO_FILE = "sha256-memo.json"
_CHUNK = 1 << 20
_MEMO_PRUNE_AT = 64
_memo_lock = threading.Lock()
_memo: dict[str, dict] | None = None  # in-process copy of the memo file
_memo_file: Path | None = None  # the file ``_memo`` was loaded from


def _memo_path() -> Path:
    return paths.cache_dir() / HASH_MEMO_FILE


def _load_memo_locked() -> dict[str, dict]:
    global _memo, _memo_file
    path = _memo_path()
    if _memo is not None and _memo_file == path:
        return _memo
    data: dict[str, dict] = {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            data = {k: v for k, v in loaded.items() if isinstance(v, dict)}
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        _log.debug("Ignoring unreadable hash memo %s", path)
    _memo, _memo_file = data, path
    return data


def _save_memo_locked(memo: dict[str, dict]) -> None:
    path = _memo_path()
    # Merge with what other processes may have written meanwhile; ours wins per key.
    try:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(on_disk, dict):
            for k, v in on_disk.items():
                if k not in memo and isinstance(v, dict):
                    memo[k] = v
    except (OSError, ValueError):
        pass
    if len(memo) > _MEMO_PRUNE_AT:  # forget files that no longer exist
        for k in [k for k in memo if not os.path.exists(k)]:
            del memo[k]
    try:
        paths.atomic_write_text(path, json.dumps(memo, indent=1, sort_keys=True))
    except OSError as exc:  # read-only or full cache folder: remember in memory only
        _log.debug("Cannot write hash memo %s: %s", path, exc)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, use_memo: bool = True) -> str:
    """Return the SHA-256 of a file as 64 lowercase hex digits, memoised.

    The result is remembered, keyed by the resolved path, the size and the modification time
    (ns), in a small JSON file in the cache folder (``<cache>/sha256-memo.json``) and in
    memory, so that a start-up does not re-hash the model files every time. A file whose size
    or mtime changed is hashed again. A corrupt memo file is ignored and a read-only cache
    folder keeps the memo in memory only.

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash.
    use_memo : bool, optional
        ``False`` always reads the whole file (and refreshes the memo).

    Returns
    -------
    str
        The hex digest.

    Raises
    ------
    OSError
        When the file cannot be read (``FileNotFoundError`` when it does not exist).
    """
    p = Path(path).expanduser().resolve()
    if use_memo:
        known = cached_sha256(p)
        if known is not None:
            return known
    st = p.stat()
    digest = _hash_file(p)
    st2 = p.stat()
    if (st2.st_size, st2.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return digest  # changed while we read it: don't remember
    with _memo_lock:
        memo = _load_memo_locked()
        memo[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        _save_memo_locked(memo)
    return digest


def cached_sha256(path: str | os.PathLike) -> str | None:
    """Return the memoised SHA-256 of ``path`` if it is still valid, without hashing.

    Returns
    -------
    str or None
        The digest remembered for this exact (path, size, mtime), or ``None``.
    """
    try:
        p = Path(path).expanduser().resolve()
        st = p.stat()
    except OSError:
        return None
    with _memo_lock:
        entry = _load_memo_locked().get(str(p))
    if (
        entry is not None
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    ):
        return entry["sha256"]
    return None


def remember_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record a digest computed elsewhere (for example while downloading) in the memo."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    with _memo_lock:
        memo = _load_memo_locked()
        memo[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        _save_memo_locked(memo)
