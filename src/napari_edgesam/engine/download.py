"""Verified downloads of model files (pooch over HTTP), with mirror fallback.

A file is written under a temporary name (``.<filename>.<random>.part``) in the target
folder and renamed to its final name with :func:`os.replace` only after its size and
SHA-256 match the model card, so a partial or wrong file never looks complete. pooch (and
requests) are imported only when a download actually starts.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Callable

from napari_edgesam.engine.errors import (  # noqa: F401 (DownloadError: re-exported)
    CancelledError,
    ChecksumError,
    DownloadError,
    ModelNotAvailableError,
)
from napari_edgesam.engine.file_hash import file_sha256, remember_sha256

_log = logging.getLogger(__name__)

#: ``progress(filename, bytes_done, bytes_total_or_None)``.
ProgressCallback = Callable[[str, int, "int | None"], None]

_CHUNK = 1 << 16


class _PoochProgress:
    """The tqdm-like object pooch's HTTPDownloader drives, forwarding to a callback."""

    def __init__(self, callback: ProgressCallback, filename: str, expected: int | None):
        self._cb = callback
        self._name = filename
        self._expected = expected
        self._total: int | None = expected
        self.n = 0

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, value):  # pooch sets it from Content-Length (0 when unknown)
        self._total = int(value) if value else self._expected
        self._emit()

    def _emit(self):
        done = self.n if self._total is None else min(self.n, self._total)
        self._cb(self._name, done, self._total)

    def update(self, n=1):
        self.n += int(n)
        self._emit()

    def reset(self, total=None):
        self.n = 0

    def close(self):
        pass


def _with_deadline(progress, max_seconds):
    """``progress`` that also raises :class:`_TooLong` once ``max_seconds`` have passed."""
    if max_seconds is None:
        return progress
    import time

    start = time.monotonic()

    def call(filename, done, total):
        if time.monotonic() - start > max_seconds:
            raise _TooLong(f"took longer than {max_seconds:g} s in all (--max-time)")
        if progress is not None:
            progress(filename, done, total)

    return call


class TextProgress:
    """A tqdm-style text progress callback for terminals (``progress=TextProgress()``).

    Writes ``name  45% 10.0/22.1 MB`` to ``stream`` (stderr by default), redrawn in place on
    a terminal and every 25% otherwise.
    """

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._last: dict[str, int] = {}

    def __call__(self, filename: str, done: int, total: int | None) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        if total:
            pct = int(100 * done / total)
            step = pct if tty else (pct // 25) * 25
            if self._last.get(filename) == step:
                return
            self._last[filename] = step
            width = 24
            fill = int(width * done / total)
            bar = "#" * fill + "-" * (width - fill)
            line = f"{filename}: {pct:3d}%|{bar}| {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        else:
            mb = int(done / 1e6)
            if not tty and self._last.get(filename) == mb // 5:
                return
            self._last[filename] = mb // 5
            line = f"{filename}: {done / 1e6:.1f} MB"
        end = "\n" if (not tty or (total and done >= total)) else ""
        self.stream.write(("\r" if tty else "") + line + end)
        self.stream.flush()


class _TooLong(Exception):
    """A transfer that went past its total time limit (``max_seconds``)."""


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    """A short human reason for a failed attempt (the real cause: a stalled server is not
    "no network", a redirect loop is not a disk error)."""
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with pooch
        requests = None
    if isinstance(exc, _TooLong):
        return str(exc)
    if requests is not None:
        gap = f" for {timeout:g} s" if timeout else ""
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
        if isinstance(exc, requests.TooManyRedirects):
            return "too many redirects (the server redirects in a loop)"
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"the server did not answer{gap}"
        if isinstance(exc, requests.exceptions.Timeout) or (
                isinstance(exc, requests.ConnectionError) and "Read timed out" in str(exc)):
            return f"the server stopped sending (no data{gap})"
        if isinstance(exc, requests.ConnectionError):
            return "cannot connect (no network?)"
        if isinstance(exc, (requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ContentDecodingError)):
            return "transfer interrupted"
        if isinstance(exc, requests.RequestException):  # an OSError too: not a disk error
            text = str(exc).strip().splitlines()
            return text[0][:200] if text else type(exc).__name__
    if isinstance(exc, OSError):
        return f"cannot write: {exc.strerror or exc}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def size_mismatch_reason(expected: int, got: int) -> str:
    """The reason given for a complete transfer whose size is not the card's.

    Parameters
    ----------
    expected : int
        The size pinned by the model card, in bytes.
    got : int
        The size received, in bytes.

    Returns
    -------
    str
        For example ``"size differs from the model card's: expected 756 bytes, got 700"``.
    """
    return f"size differs from the model card's: expected {expected} bytes, got {got}"


def summarize_attempts(attempts) -> str:
    """Say why each URL failed, naming its host only (the file URLs stay in the log and in
    :attr:`DownloadError.attempts`; a ``/resolve/`` link is no page to send a user to).

    Parameters
    ----------
    attempts : iterable of (str, str)
        ``(url, reason)`` pairs.

    Returns
    -------
    str
        ``"host: reason; other.host: reason"``, identical pairs once.
    """
    from urllib.parse import urlsplit

    seen: list[str] = []
    for url, reason in attempts:
        host = urlsplit(url).netloc or url
        item = f"{host}: {reason}"
        if item not in seen:
            seen.append(item)
    return "; ".join(seen)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def fetch_file(
    spec,
    dest_dir: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    timeout: float = 30.0,
    help_message: str = "",
    max_seconds: float | None = None,
) -> Path:
    """Download one model file into ``dest_dir``, verified, trying each URL in turn.

    Parameters
    ----------
    spec : ModelFile
        Anything with ``filename``, ``size``, ``sha256`` and ``urls`` (tried in order:
        primary, then mirrors).
    dest_dir : path
        Target folder (created if needed). The result is ``dest_dir / spec.filename``.
    progress : callable, optional
        ``progress(filename, done, total)``; may raise :class:`CancelledError` to cancel.
    timeout : float
        Seconds to wait for the server (connect and between bytes).
    help_message : str
        Appended to error messages (where to put the file by hand).
    max_seconds : float, optional
        Give up a transfer (and try the next URL) that takes longer than this in all: a
        server that sends slowly but never stops is never caught by ``timeout``. Checked
        after every 64 KiB received.

    Returns
    -------
    pathlib.Path
        The verified file. An already verified file at that path is returned untouched.

    Raises
    ------
    DownloadError
        No URL gave a complete file (network errors, HTTP errors, truncated transfers).
    ChecksumError
        A complete file was received but its SHA-256 differs (from every URL that answered).
    CancelledError
        The progress callback cancelled; no file is left behind.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / spec.filename
    tail = f" {help_message}" if help_message else ""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Cannot create the model folder {dest_dir}: {exc.strerror or exc}.{tail}",
            spec.filename,
        ) from exc
    from .paths import FileLock

    # One download of a file at a time; the holder of the lock owns its .part files, so the
    # leftovers of an interrupted or killed fetch are swept here.
    try:
        lock = FileLock(dest_dir / f".{spec.filename}.lock")
        lock.acquire(wait=True)
    except OSError as exc:
        raise DownloadError(f"Cannot write in the model folder {dest_dir}: "
                            f"{exc.strerror or exc}.{tail}", spec.filename) from exc
    try:
        for stale in dest_dir.glob(f".{spec.filename}.*.part"):
            _unlink(stale)
        return _fetch_locked(spec, dest_dir, target, progress, timeout, tail, max_seconds)
    finally:
        lock.release()


def _fetch_locked(spec, dest_dir: Path, target: Path, progress, timeout, tail,
                  max_seconds) -> Path:
    """:func:`fetch_file`'s work, holding the file's lock."""
    if target.is_file():  # there already, or fetched by the process we waited for
        try:
            if target.stat().st_size == spec.size and file_sha256(target) == spec.sha256:
                return target
        except OSError:
            pass
    if not spec.urls:
        raise DownloadError(f"No download URL known for {spec.filename}.{tail}", spec.filename)

    import pooch

    attempts: list[tuple[str, str]] = []
    mismatches: list[tuple[str, str]] = []  # (url, actual sha256)
    for url in spec.urls:
        tmp = dest_dir / f".{spec.filename}.{uuid.uuid4().hex[:12]}.part"
        bar = False
        if progress is not None or max_seconds is not None:
            bar = _PoochProgress(_with_deadline(progress, max_seconds), spec.filename,
                                 spec.size)
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=timeout)
        try:
            _log.info("Downloading %s from %s", spec.filename, url)
            downloader(url, str(tmp), None)
        except CancelledError:
            _unlink(tmp)
            raise
        except Exception as exc:  # network, HTTP or disk errors: try the next URL
            _unlink(tmp)
            reason = _describe(exc, timeout)
            _log.info("Download of %s from %s failed: %s", spec.filename, url, reason)
            attempts.append((url, reason))
            continue
        try:
            size = tmp.stat().st_size
            if size != spec.size:  # the server finished the transfer: not "incomplete"
                attempts.append((url, size_mismatch_reason(spec.size, size)))
                continue
            actual = file_sha256(tmp, use_memo=False)
            if actual != spec.sha256:
                mismatches.append((url, actual))
                attempts.append((url, f"wrong SHA-256 {actual}"))
                continue
            from .paths import fsync_dir, fsync_file

            fsync_file(tmp)  # durable: the verified bytes are on the disk before the rename
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            attempts.append((url, f"cannot write: {exc.strerror or exc}"))
            continue
        finally:
            if tmp.exists():
                _unlink(tmp)
        if progress:
            progress(spec.filename, spec.size, spec.size)
        try:  # remember the hash so the next start-up does not re-hash the file
            remember_sha256(target, spec.sha256)
        except OSError:
            pass
        if attempts:
            _log.warning("Downloaded %s from %s after: %s", spec.filename, url,
                         "; ".join(f"{u}: {r}" for u, r in attempts))
        return target

    if mismatches:
        url, actual = mismatches[0]
        raise ChecksumError(
            f"Refused {spec.filename} downloaded from {url}: SHA-256 {actual}, expected "
            f"{spec.sha256}; the file was discarded.{tail}"
        )
    raise DownloadError(
        f"Could not download {spec.filename} ({summarize_attempts(attempts)}).{tail}",
        spec.filename, attempts,
    )
