"""Background writing of disk cache entries, and the memory bound of a run.

:class:`BackgroundWriter` keeps a bounded queue of ``(key, array)`` entries and writes them
in order in one daemon thread through a function the cache gives it (which writes each entry
to a temporary name and moves it into place, so no reader ever sees a partial entry). Until
an entry is written the cache serves it from :meth:`BackgroundWriter.pending`; writers with
work left are flushed at interpreter exit.

:func:`run_memory_bound` is the rule by which a run over many slices may raise the memory
cache's bound for itself (:meth:`~napari_edgesam.engine.cache.EmbeddingCache.run_scope`),
from :func:`available_memory_bytes`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref

import numpy as np

_log = logging.getLogger(__name__)

__all__ = ["BackgroundWriter", "available_memory_bytes", "run_memory_bound"]

#: Entries a writer may hold before :meth:`BackgroundWriter.submit` waits (about 32 MiB of
#: EdgeSAM embeddings).
WRITE_QUEUE_ENTRIES = 8
#: A run's memory bound (:func:`run_memory_bound`): at most this share of the available
#: memory, and never more than :data:`RUN_MEMORY_CAP` bytes.
RUN_MEMORY_FRACTION = 0.25
RUN_MEMORY_CAP = 4 * 2**30
#: Assumed available memory when the platform does not tell (conservative: a run may then
#: hold 512 MiB of embeddings, 128 EdgeSAM slices).
FALLBACK_AVAILABLE_BYTES = 2 * 2**30
#: A writer's thread ends after this many idle seconds (the next entry starts another).
_IDLE_S = 30.0


def available_memory_bytes() -> int | None:
    """Memory the machine can give without swapping, in bytes, or None when unknown.

    psutil's ``virtual_memory().available`` when psutil is installed; else Linux's
    ``MemAvailable`` (``/proc/meminfo``); else ``SC_AVPHYS_PAGES * SC_PAGE_SIZE`` (free
    pages only: lower, so safer).
    """
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or no figure on this platform
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def run_memory_bound(needed: int, configured: int, available: int | None = None) -> int:
    """The memory bound of a run that wants ``needed`` bytes of embeddings kept in memory.

    Rule: ``max(configured, min(needed, RUN_MEMORY_FRACTION * available, RUN_MEMORY_CAP))``
    with ``available`` from :func:`available_memory_bytes` (``FALLBACK_AVAILABLE_BYTES``
    when unknown): a run never lowers the configured bound, never takes more than a quarter
    of the memory available when it starts, nor more than 4 GiB.

    Parameters
    ----------
    needed : int
        Bytes the run would like to keep (slices x 4 MiB for EdgeSAM's embeddings).
    configured : int
        The cache's own bound in bytes.
    available : int, optional
        Available memory in bytes (default: measured now).

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> run_memory_bound(400 * 2**20, 256 * 2**20, available=8 * 2**30) // 2**20
    400
    >>> run_memory_bound(400 * 2**20, 256 * 2**20, available=1 * 2**30) // 2**20
    256
    """
    if available is None:
        available = available_memory_bytes()
    if available is None:
        available = FALLBACK_AVAILABLE_BYTES
    share = min(int(RUN_MEMORY_FRACTION * max(0, int(available))), RUN_MEMORY_CAP)
    return max(int(configured), min(int(needed), share))


#: Writers that have run, flushed at interpreter exit.
_WRITERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:  # pragma: no cover - runs at interpreter exit
    for writer in list(_WRITERS):
        with contextlib.suppress(Exception):
            writer.flush(timeout=60.0)


class BackgroundWriter:
    """A bounded queue of entries written in order by one daemon thread.

    Parameters
    ----------
    write : callable ``(key, array) -> None``
        Writes one entry completely (to a temporary name, then moved into place); its
        exceptions are logged and the entry dropped.
    max_entries : int
        Queue length at which :meth:`submit` waits.
    """

    def __init__(self, write, max_entries: int = WRITE_QUEUE_ENTRIES):
        self._write = write
        self.max_entries = max(1, int(max_entries))
        self._cond = threading.Condition()
        self._queue: list[tuple[str, np.ndarray]] = []
        self._pending: dict[str, np.ndarray] = {}
        self._busy = 0
        self._thread: threading.Thread | None = None
        #: Entries written (or attempted) by the thread.
        self.written = 0

    def submit(self, key: str, array: np.ndarray) -> None:
        """Queue ``array`` (read-only, never modified afterwards) to be written under
        ``key``, replacing a queued entry of the same key; waits while the queue is
        full."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._queue) < self.max_entries)
            self._queue = [(k, a) for k, a in self._queue if k != key]
            self._queue.append((key, array))
            self._pending[key] = array
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="edgesam-cache-writer")
                self._thread.start()
                _WRITERS.add(self)
            self._cond.notify_all()

    def pending(self, key: str) -> np.ndarray | None:
        """The array queued (or being written) under ``key``, else None."""
        with self._cond:
            return self._pending.get(key)

    @property
    def count(self) -> int:
        """Entries queued or being written."""
        with self._cond:
            return len(self._queue) + self._busy

    def discard(self, key: str) -> None:
        """Drop ``key`` from the queue (an entry being written is finished first)."""
        with self._cond:
            self._queue = [(k, a) for k, a in self._queue if k != key]
            self._pending.pop(key, None)
            self._cond.notify_all()
        self.flush()

    def clear(self) -> None:
        """Drop everything queued and wait for the entry being written."""
        with self._cond:
            self._queue.clear()
            self._pending.clear()
            self._cond.notify_all()
        self.flush()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued entry is written; True unless ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue, timeout=_IDLE_S):
                    self._thread = None  # idle: the next submit starts another
                    return
                key, arr = self._queue.pop(0)
                self._busy += 1
                self._cond.notify_all()
            try:
                self._write(key, arr)
            except Exception:  # noqa: BLE001 - a writer must not die silently
                _log.exception("writing embedding cache entry %r failed", key)
            finally:
                with self._cond:
                    self._busy -= 1
                    self.written += 1
                    if self._pending.get(key) is arr:
                        del self._pending[key]
                    self._cond.notify_all()
