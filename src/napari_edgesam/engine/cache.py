"""Two-level cache of image embeddings: a bounded in-memory LRU and a bounded disk store.

The predictor builds the keys (model hash, pixel hash, intensity mapping, preprocessing
version, tile geometry); this module only stores arrays by key.

A third, memory-only store keeps split decoders' *image parts* (the prompt-independent
decoder tensors of an embedding, about 10 MiB for EdgeSAM, see
:meth:`EmbeddingCache.get_part`): an LRU of its own byte bound, so that parts never evict
embeddings. They are not written to disk: recomputing one costs less than reading it back
(figures in docs/speed.md).

Disk entries (one file per key, named by the SHA-256 of the key) are in the format of
:mod:`.cache_format` (version 2: a JSON header naming the arrays, their payloads, a BLAKE2b
digest). Arrays are stored exactly as given (float32 embeddings stay float32), so a result
never depends on whether its embedding came from the encoder, the memory cache or the disk;
a split decoder's image part stays in memory (above). Entries of the first format
(``NESCACHE1``, float16) are dropped when met and count as misses.

The digest covers everything before it, so a truncated or corrupt entry is detected, dropped
and reported as a miss. Files are written to a temporary name and moved into place with
:func:`os.replace`, so concurrent readers and writers (several napari windows, batch worker
processes) never see half an entry. Least-recently-used entries are evicted when the folder
grows past its bound; a read refreshes an entry's modification time. A folder that cannot be
written (read-only, full, not a folder) degrades the cache to memory only, with one warning.

Disk writes may go through a background writer (``async_writes``, and always inside
:meth:`EmbeddingCache.run_scope`): a bounded queue of entries, written in order by one
thread, each still to a temporary name and moved into place; until it is written an entry
is served from the queue, :meth:`EmbeddingCache.flush` waits for the queue, and pending
writes are flushed at interpreter exit. A propagation run opens a
:meth:`EmbeddingCache.run_scope`, which also raises the memory bound for that run only,
within a share of the machine's available memory (:func:`.cache_writer.run_memory_bound`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .cache_format import MAGIC, OLD_MAGICS, decode_entry, encode_entry  # noqa: F401
from .cache_writer import BackgroundWriter, run_memory_bound
from .cache_writer import available_memory_bytes  # noqa: F401 - re-exported

_log = logging.getLogger(__name__)

SUFFIX = ".nesc"
#: When evicting, shrink the folder to this fraction of its bound (fewer scans).
_EVICT_TO = 0.9
#: Temporary files older than this (seconds) are leftovers of killed writers.
_STALE_TMP_S = 3600.0


class CacheWarning(UserWarning):
    """The disk cache could not be used; the cache keeps working in memory only."""


def _key_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Thread-safe two-level cache of arrays (image embeddings) keyed by strings.

    Parameters
    ----------
    memory_bytes : int
        Bound of the in-memory LRU in bytes (default 256 MiB; 0 disables it). An array larger
        than the bound is not kept in memory.
    disk_dir : path, None or False
        Folder of the disk store. ``None``: ``<user cache>/embeddings`` (see
        :func:`napari_edgesam.engine.paths.embeddings_cache_dir`); ``False``: memory only.
    disk_bytes : int
        Bound of the disk store in bytes (default 2 GiB), enforced by evicting the least
        recently used entries (approximately, when several processes share the folder).
    part_memory_bytes : int
        Bound of the memory-only store of decoder image parts (:meth:`get_part`), in bytes
        (default 64 MiB: six EdgeSAM parts, the slice in view and the four neighbours the
        widget prefetches; 0 disables it).
    disk_dtype : str or None
        dtype of floating-point arrays on disk: ``None`` (default) keeps the array's dtype,
        exactly; ``"float16"`` halves the size (an embedding ``[1, 256, 64, 64]`` takes
        2 MiB instead of 4 MiB) at the price of results that differ slightly from a fresh
        encoder run. :meth:`get` always returns the dtype given to :meth:`put`.
    async_writes : bool
        Write disk entries in a background thread (bounded queue of
        :data:`WRITE_QUEUE_ENTRIES`; :meth:`put` returns before the file exists; readers
        of this cache are served from the queue meanwhile). Default False: writes happen in
        :meth:`put`, except inside a :meth:`run_scope`. The process-wide cache writes in the
        background.

    Notes
    -----
    Arrays returned by :meth:`get` are read-only and may be shared with other callers: copy
    before modifying. :attr:`stats` counts hits and misses.
    """

    def __init__(
        self,
        memory_bytes: int = 256 * 2**20,
        disk_dir=None,
        disk_bytes: int = 2 * 2**30,
        disk_dtype: str | None = None,
        part_memory_bytes: int = 64 * 2**20,
        async_writes: bool = False,
    ):
        self.memory_bytes = max(0, int(memory_bytes))
        #: The bound outside runs (:meth:`run_scope` raises ``memory_bytes`` above it).
        self.configured_memory_bytes = self.memory_bytes
        self.async_writes = bool(async_writes)
        self.part_memory_bytes = max(0, int(part_memory_bytes))
        self.disk_bytes = max(0, int(disk_bytes))
        self.disk_dtype = np.dtype(disk_dtype) if disk_dtype is not None else None
        if self.disk_dtype is not None and self.disk_dtype.kind != "f":
            raise ValueError(f"disk_dtype must be a floating-point dtype, got {disk_dtype!r}")
        if disk_dir is None:
            from napari_edgesam.engine import paths

            disk_dir = paths.embeddings_cache_dir()
        self.disk_dir: Path | None = Path(disk_dir) if disk_dir is not False else None
        self._lock = threading.RLock()
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._mem_used = 0
        self._parts: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._parts_used = 0
        self._disk_writable = self.disk_dir is not None and self.disk_bytes > 0
        self._disk_used: int | None = None  # estimate; None until the folder is scanned
        self._warned = False
        self._grants: dict[int, int] = {}  # run scope id -> bytes it raised the bound by
        self._grant_ids = itertools.count()
        self._scopes = 0
        self._writer = BackgroundWriter(self._disk_put_if_writable)
        self._counts = dict.fromkeys(
            ("memory_hits", "disk_hits", "misses", "puts", "memory_evictions",
             "disk_evictions", "corrupt", "disk_errors", "part_hits", "part_misses",
             "part_evictions"), 0,
        )

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache(memory_bytes={self.memory_bytes}, disk_dir={self.disk_dir!r}, "
            f"disk_bytes={self.disk_bytes}, disk_dtype={self.disk_dtype}, "
            f"part_memory_bytes={self.part_memory_bytes})"
        )

    # -- public API ---------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Counters and sizes (a snapshot).

        Keys: ``memory_hits``, ``disk_hits``, ``misses``, ``puts``, ``memory_evictions``,
        ``disk_evictions``, ``corrupt`` (entries dropped), ``disk_errors``,
        ``memory_entries``, ``memory_bytes`` (in use), ``disk_bytes`` (estimate of the folder
        size, or None before it was scanned), ``disk_enabled`` (reads), ``disk_writable``;
        for decoder image parts ``part_hits``, ``part_misses``, ``part_evictions``,
        ``part_entries`` and ``part_bytes`` (in use); ``async_writes`` (entries written by the
        background writer), ``pending_writes`` (queued or being written now) and
        ``memory_bound`` (the bound in force, raised inside a :meth:`run_scope`).
        """
        with self._lock:
            s = dict(self._counts)
            s.update(
                memory_entries=len(self._mem),
                memory_bytes=self._mem_used,
                disk_bytes=self._disk_used,
                disk_enabled=self.disk_dir is not None,
                disk_writable=self._disk_writable,
                part_entries=len(self._parts),
                part_bytes=self._parts_used,
                async_writes=self._writer.written,
                pending_writes=self._writer.count,
                memory_bound=self.memory_bytes,
            )
            return s

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._mem:
                return True
        if self._writer.pending(key) is not None:
            return True
        return self.disk_dir is not None and self._path(key).is_file()

    def get(self, key: str) -> np.ndarray | None:
        """Return the array stored under ``key``, or ``None`` (a miss).

        Memory first, then disk (a disk hit is promoted to memory). A corrupt or truncated
        disk entry is deleted and counts as a miss (``stats["corrupt"]``).

        Returns
        -------
        numpy.ndarray or None
            Read-only; the dtype given to :meth:`put` (float32 for embeddings, even when
            stored as float16 on disk).
        """
        with self._lock:
            arr = self._mem.get(key)
            if arr is not None:
                self._mem.move_to_end(key)
                self._counts["memory_hits"] += 1
                return arr
            arr = self._writer.pending(key)  # queued for the disk, not written yet
            if arr is not None:
                self._counts["memory_hits"] += 1
                self._mem_put(key, arr)
                return arr
        arr = self._disk_get(key) if self.disk_dir is not None else None
        with self._lock:
            if arr is None:
                self._counts["misses"] += 1
                return None
            self._counts["disk_hits"] += 1
            self._mem_put(key, arr)
            return arr

    def put(self, key: str, array, *, memory: bool = True, disk: bool = True) -> None:
        """Store ``array`` under ``key`` (replacing any previous entry).

        Parameters
        ----------
        key : str
            Any string (the file name on disk is its SHA-256).
        array : array_like
            Copied; for embeddings float32 ``[1, 256, 64, 64]``.
        memory, disk : bool
            Which levels to fill (a batch job may fill only the disk, or neither).

        Notes
        -----
        With ``async_writes``, or inside a :meth:`run_scope`, the disk entry is queued for
        the background writer (this call waits only when :data:`WRITE_QUEUE_ENTRIES` are
        already queued); :meth:`flush` waits until it is on disk.
        """
        arr = np.array(array, copy=True, order="C")
        arr.flags.writeable = False
        with self._lock:
            self._counts["puts"] += 1
            if memory:
                self._mem_put(key, arr)
            background = self.async_writes or self._scopes > 0
        if disk and self.disk_dir is not None and self._disk_writable:
            if background:
                self._writer.submit(key, arr)
            else:
                self._disk_put(key, arr)

    def get_part(self, key: str) -> dict | None:
        """The decoder image part stored under ``key`` (memory only), or ``None``.

        Parameters
        ----------
        key : str
            The embedding's key extended by the decoder variant's name (the predictor's
            ``decoder_part_key``), so one variant never gets another's part.

        Returns
        -------
        dict or None
            Tensor name -> read-only ndarray, shared with other callers.
        """
        with self._lock:
            hit = self._parts.get(key)
            if hit is None:
                self._counts["part_misses"] += 1
                return None
            self._parts.move_to_end(key)
            self._counts["part_hits"] += 1
            return hit[0]

    def put_part(self, key: str, tensors: dict) -> None:
        """Keep a decoder image part in memory (least recently used dropped past
        ``part_memory_bytes``; a part larger than the bound is not kept).

        Parameters
        ----------
        key : str
            See :meth:`get_part`.
        tensors : dict
            Tensor name -> ndarray (kept as given, made read-only: pass arrays nobody
            modifies).
        """
        parts = {}
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            if arr.flags.writeable:
                arr = arr.view()
                arr.flags.writeable = False
            parts[name] = arr
        nbytes = sum(a.nbytes for a in parts.values())
        with self._lock:
            old = self._parts.pop(key, None)
            if old is not None:
                self._parts_used -= old[1]
            if nbytes > self.part_memory_bytes:
                return
            self._parts[key] = (parts, nbytes)
            self._parts_used += nbytes
            while self._parts_used > self.part_memory_bytes and self._parts:
                _, (_, dropped) = self._parts.popitem(last=False)
                self._parts_used -= dropped
                self._counts["part_evictions"] += 1

    def discard(self, key: str) -> None:
        """Remove ``key`` from both levels, and the decoder image parts stored for it (no
        error when absent)."""
        with self._lock:
            arr = self._mem.pop(key, None)
            if arr is not None:
                self._mem_used -= arr.nbytes
            for k in [k for k in self._parts if k.startswith(key + "|dec=")]:
                self._parts_used -= self._parts.pop(k)[1]
        self._writer.discard(key)  # an entry being written now lands before it is deleted
        if self.disk_dir is not None:
            self._unlink(self._path(key))

    def clear(self, *, disk: bool = True) -> None:
        """Empty the memory level (embeddings and decoder image parts) and (with ``disk``)
        delete every disk entry."""
        with self._lock:
            self._mem.clear()
            self._mem_used = 0
            self._parts.clear()
            self._parts_used = 0
        if disk and self.disk_dir is not None:
            self._writer.clear()  # queued entries are not written any more
            for p, _, _ in self._scan():
                self._unlink(p)
            with self._lock:
                self._disk_used = 0

    def clear_memory(self) -> None:
        """Empty the memory level only (decoder image parts included)."""
        self.clear(disk=False)

    @contextlib.contextmanager
    def run_scope(self, needed_bytes: int = 0, *, available: int | None = None):
        """Context manager for a run over many slices (propagation opens one).

        Inside it the memory bound is raised to :func:`run_memory_bound` of
        ``needed_bytes`` (so that a run's embeddings stay in memory when they fit a share of
        the available memory) and disk entries are written by the background writer. On
        exit the writer is flushed, the bound returns to what it was without this run
        (:attr:`configured_memory_bytes` when no other run is open) and least recently used
        embeddings beyond it are dropped from memory (they are on disk). Runs may nest or
        overlap (threads): each adds what it raised.

        Parameters
        ----------
        needed_bytes : int
            Bytes of embeddings the run would like to keep (slices x bytes per embedding:
            4 MiB for EdgeSAM's float32 ``[1, 256, 64, 64]``).
        available : int, optional
            Available memory in bytes (default: :func:`available_memory_bytes` now).

        Yields
        ------
        int
            The memory bound in force for the run, in bytes.
        """
        with self._lock:
            bound = run_memory_bound(needed_bytes, self.configured_memory_bytes, available)
            grant = bound - self.configured_memory_bytes
            gid = next(self._grant_ids)
            self._grants[gid] = grant
            self._scopes += 1
            self.memory_bytes = self.configured_memory_bytes + sum(self._grants.values())
            in_force = self.memory_bytes
        try:
            yield in_force
        finally:
            try:
                self.flush()
            finally:
                with self._lock:
                    self._grants.pop(gid, None)
                    self._scopes -= 1
                    self.memory_bytes = (self.configured_memory_bytes
                                         + sum(self._grants.values()))
                    self._mem_shrink()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background writer has written every queued entry.

        Returns
        -------
        bool
            True when nothing is left to write, False on timeout.
        """
        return self._writer.flush(timeout)

    def _disk_put_if_writable(self, key: str, arr: np.ndarray) -> None:
        if self.disk_dir is not None and self._disk_writable:
            self._disk_put(key, arr)

    # -- memory level -------------------------------------------------------------------
    def _mem_put(self, key: str, arr: np.ndarray) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_used -= old.nbytes
        if arr.nbytes > self.memory_bytes:
            return
        self._mem[key] = arr
        self._mem_used += arr.nbytes
        self._mem_shrink()

    def _mem_shrink(self) -> None:
        while self._mem_used > self.memory_bytes and self._mem:
            _, dropped = self._mem.popitem(last=False)
            self._mem_used -= dropped.nbytes
            self._counts["memory_evictions"] += 1

    # -- disk level ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.disk_dir / (_key_name(key) + SUFFIX)

    def _degrade(self, exc: BaseException) -> None:
        with self._lock:
            self._counts["disk_errors"] += 1
            self._disk_writable = False
            if self._warned:
                return
            self._warned = True
        msg = (
            f"The embedding cache folder {self.disk_dir} cannot be written "
            f"({type(exc).__name__}: {exc}); embeddings are cached in memory only."
        )
        _log.warning(msg)
        warnings.warn(msg, CacheWarning, stacklevel=4)

    def encode_entry(self, key: str, arrays: dict) -> bytes:
        """The bytes of a disk entry holding ``arrays`` (name -> ndarray) under ``key``."""
        return encode_entry(key, arrays, self.disk_dtype)

    @staticmethod
    def _decode(key: str, data: bytes) -> np.ndarray | None:
        """The entry's ``"array"``; ``None`` when it is corrupt, truncated, of the first
        format or for another key."""
        arrays = decode_entry(key, data)
        return None if arrays is None else arrays.get("array")

    @staticmethod
    def decode_entry(key: str, data: bytes) -> dict | None:
        """Parse a disk entry: name -> read-only ndarray, or ``None`` (see :meth:`_decode`)."""
        return decode_entry(key, data)

    def _disk_get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # not a folder, permissions...: a miss
            _log.debug("Cannot read cache entry %s: %s", path, exc)
            return None
        arr = self._decode(key, data)
        if arr is None and data.startswith(OLD_MAGICS):  # the first format: not exact
            _log.info("Dropping embedding cache entry %s of an earlier format", path)
            self._unlink(path, size=len(data))  # a plain miss (get counts it), not corruption
            return None
        if arr is None:
            _log.warning("Dropping corrupt embedding cache entry %s", path)
            with self._lock:
                self._counts["corrupt"] += 1
            self._unlink(path, size=len(data))
            return None
        try:  # mark as recently used (LRU by modification time)
            os.utime(path)
        except OSError:
            pass
        return arr

    def _disk_put(self, key: str, arr: np.ndarray) -> None:
        data = self.encode_entry(key, {"array": arr})
        if len(data) > self.disk_bytes:
            return
        path = self._path(key)
        tmp = None
        try:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.disk_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                old_size = path.stat().st_size
            except OSError:
                old_size = 0
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            if tmp is not None:
                self._unlink(Path(tmp))
            self._degrade(exc)
            return
        with self._lock:
            if self._disk_used is None:
                need_scan = True
            else:
                self._disk_used += len(data) - old_size
                need_scan = self._disk_used > self.disk_bytes
        if need_scan:
            self._enforce_bound()

    def _scan(self):
        """``(path, size, mtime)`` of every entry; also removes stale temporary files."""
        out = []
        try:
            it = os.scandir(self.disk_dir)
        except OSError:
            return out
        now = time.time()
        with it:
            for e in it:
                try:
                    if e.name.endswith(SUFFIX):
                        st = e.stat()
                        out.append((Path(e.path), st.st_size, st.st_mtime))
                    elif e.name.startswith(".tmp-"):
                        if now - e.stat().st_mtime > _STALE_TMP_S:
                            self._unlink(Path(e.path))
                except OSError:
                    continue
        return out

    def _enforce_bound(self) -> None:
        entries = self._scan()
        total = sum(s for _, s, _ in entries)
        evicted = 0
        if total > self.disk_bytes:
            target = self.disk_bytes * _EVICT_TO
            for p, size, _ in sorted(entries, key=lambda t: t[2]):
                if total <= target:
                    break
                if self._unlink(p):
                    evicted += 1
                total -= size  # gone either way (maybe by another process)
        with self._lock:
            self._disk_used = total
            self._counts["disk_evictions"] += evicted

    def _unlink(self, path: Path, size: int | None = None) -> bool:
        try:
            if size is None:
                size = path.stat().st_size
            path.unlink()
        except OSError:
            return False
        with self._lock:
            if self._disk_used is not None and path.suffix == SUFFIX:
                self._disk_used = max(0, self._disk_used - size)
        return True


_default: EmbeddingCache | None = None
_default_lock = threading.Lock()


def default_cache() -> EmbeddingCache:
    """Return the process-wide cache, created on first use.

    It lives under ``<user cache>/embeddings``; its bounds come from the settings
    ``cache_memory_bytes`` and ``cache_disk_bytes`` (see :mod:`napari_edgesam.engine.paths`),
    and ``cache_disk_enabled: false`` keeps it in memory only. It writes disk entries in the
    background (``async_writes``), flushed at exit.
    """
    global _default
    with _default_lock:
        if _default is None:
            from napari_edgesam.engine import paths

            settings = paths.load_settings()
            disk = (paths.embeddings_cache_dir() if settings.get("cache_disk_enabled", True)
                    else False)
            _default = EmbeddingCache(
                memory_bytes=int(settings.get("cache_memory_bytes") or 256 * 2**20),
                disk_dir=disk,
                disk_bytes=int(settings.get("cache_disk_bytes") or 2 * 2**30),
                async_writes=True,
            )
        return _default


def set_default_cache(cache: EmbeddingCache | None) -> None:
    """Replace the process-wide cache (``None``: create it again from the settings); the
    previous one's background writes are flushed first."""
    global _default
    with _default_lock:
        old, _default = _default, cache
    if old is not None and old is not cache:
        old.flush()
