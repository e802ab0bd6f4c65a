"""The autosave store: the annotation state of one image, written incrementally.

An autosave is a folder per image and Labels layer under ``<cache>/autosave`` (see
:mod:`napari_edgesam.engine.paths`; ``$NAPARI_EDGESAM_CACHE_DIR`` moves it): a label image
cut into chunks (one leading index and a ``TILE`` x ``TILE`` tile of the last two axes), each
chunk a zlib-compressed file, the prompt log as JSON, and a small manifest naming the files
of the current state, written last. Only the chunks changed since the last write are
written, so a write stays cheap on large stacks; chunks holding only 0 have no file.

Consistency: every write puts new files under new names (the manifest's generation in the
name), flushed to the disk, then replaces the manifest atomically and durably
(:func:`~napari_edgesam.engine.paths.atomic_write`), then removes the files the new
manifest no longer names. A process killed at any point leaves the previous manifest and
every file it names: :meth:`AutosaveStore.read` gives the last consistent state, and the
next write sweeps the leftovers.

Identity: the folder is ``<root>/<image digest>/<session token>``; the digest hashes the
image's identity (:func:`image_identity`: its source path with size and modification time,
or napari's sample name, and the data's shape and dtype), so an image changed on disk no
longer matches. A store is owned by the process writing it through a lock file
(:class:`~napari_edgesam.engine.paths.FileLock`, released when the process ends, even
killed); :func:`list_autosaves` lists only stores no live process owns.

Frames: labels are data coordinates of the Labels layer, shape ``(*lead, H, W)``; a chunk
key is ``(*lead_index, tile_row, tile_col)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import paths
from ..engine.errors import InvalidInputError
from .prompt_log import PromptLog

FORMAT = "napari-edgesam autosave"
VERSION = 1
#: Tile edge of a chunk (pixels of the last two axes).
TILE = 512
MANIFEST = "manifest.json"
LOCK = "owner.lock"
#: Seconds a first write waits for a store's lock (a listing tests it by taking it briefly).
OWN_WAIT_S = 1.0

__all__ = ["FORMAT", "TILE", "VERSION", "AutosaveError", "AutosaveInfo", "AutosaveStore",
           "WriteReport", "autosave_root", "chunk_index", "chunk_keys", "chunks_in_box",
           "discard_autosaves", "image_identity", "list_autosaves"]


class AutosaveError(OSError):
    """An autosave could not be written or read (the message names the folder and the
    reason); the previous state stays readable."""


def autosave_root() -> Path:
    """The folder of all autosaves: ``<cache>/autosave`` (not created)."""
    return paths.cache_dir() / "autosave"


def image_identity(*, shape, dtype, path=None, sample=None) -> dict | None:
    """What identifies an image across napari sessions, as plain JSON values.

    Parameters
    ----------
    shape : tuple of int
        The image data's shape (level 0 of a multiscale image).
    dtype : numpy dtype or str
    path : path-like, optional
        The file (or folder, e.g. ``.zarr``) it was read from: its absolute path, size and
        modification time are part of the identity.
    sample : (str, str), optional
        napari's ``(plugin, sample name)`` when it came from File > Open Sample.

    Returns
    -------
    dict or None
        None when the image has neither a path that exists nor a sample name (an array
        added by a script: nothing identifies it in another session).
    """
    base = {"shape": [int(n) for n in shape], "dtype": str(np.dtype(dtype))}
    if path is not None:
        p = Path(path).expanduser()
        try:
            st = p.stat()
        except OSError:
            return None
        return {**base, "path": str(p.resolve()), "size": int(st.st_size),
                "mtime_ns": int(st.st_mtime_ns)}
    if sample is not None:
        return {**base, "sample": [str(s) for s in sample]}
    return None


def _digest(identity: dict) -> str:
    import hashlib

    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ------------------------------------------------------------------ chunks -------------
def chunk_keys(shape, tile: int = TILE) -> Iterator[tuple[int, ...]]:
    """Every chunk key ``(*lead_index, tile_row, tile_col)`` of labels of ``shape``
    ``(*lead, H, W)``, in C order."""
    shape = tuple(int(n) for n in shape)
    ny, nx = -(-shape[-2] // tile), -(-shape[-1] // tile)
    yield from np.ndindex(*shape[:-2], ny, nx)


def chunk_index(shape, key, tile: int = TILE) -> tuple:
    """The index of chunk ``key`` into labels of ``shape``: ``(*lead, rows, cols)`` with
    ``rows`` and ``cols`` slices (the last tiles are cut at the image's edge)."""
    *lead, ty, tx = (int(k) for k in key)
    h, w = int(shape[-2]), int(shape[-1])
    return (*lead, slice(ty * tile, min(h, (ty + 1) * tile)),
            slice(tx * tile, min(w, (tx + 1) * tile)))


def chunks_in_box(shape, box, tile: int = TILE) -> set[tuple[int, ...]]:
    """The chunks that a box of labels of ``shape`` touches.

    Parameters
    ----------
    shape : tuple of int
        ``(*lead, H, W)``.
    box : sequence of (int, int)
        ``(start, stop)`` per axis (data coordinates, stop exclusive); clipped to
        ``shape``.
    """
    ranges = []
    for axis, ((start, stop), n) in enumerate(zip(box, shape, strict=True)):
        start, stop = max(0, int(start)), min(int(n), int(stop))
        if stop <= start:
            return set()
        if axis >= len(shape) - 2:
            start, stop = start // tile, (stop - 1) // tile + 1
        ranges.append(range(start, stop))
    import itertools

    return set(itertools.product(*ranges))


def _key_text(key) -> str:
    return ".".join(str(int(k)) for k in key)


def _key_of(text: str) -> tuple[int, ...]:
    return tuple(int(k) for k in text.split("."))


# ------------------------------------------------------------------ records ------------
@dataclass(frozen=True)
class AutosaveInfo:
    """What a store's manifest says (read by :func:`list_autosaves`).

    Attributes
    ----------
    folder : Path
    identity : dict
        The image's :func:`image_identity`.
    labels_name : str
        The Labels layer's name when it was written.
    shape : tuple of int
        The labels' shape ``(*lead, H, W)``.
    dtype : str
    written : float
        When the manifest was written (seconds since the epoch).
    chunks : int
        Chunks holding a label.
    objects : int
        Objects in the prompt log.
    """

    folder: Path
    identity: dict
    labels_name: str
    shape: tuple[int, ...]
    dtype: str
    written: float
    chunks: int
    objects: int


@dataclass(frozen=True)
class WriteReport:
    """What one :meth:`AutosaveStore.write` did.

    Attributes
    ----------
    chunks_written : int
        Chunk files written (chunks holding a label).
    chunks_dropped : int
        Chunks now holding only 0 (their files removed).
    bytes_written : int
        Bytes of chunk files and prompt log written (the manifest not counted).
    log_written : bool
        Whether the prompt log changed and was written.
    seconds : float
    """

    chunks_written: int
    chunks_dropped: int
    bytes_written: int
    log_written: bool
    seconds: float


def _read_manifest(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        return None
    return m


def _info(folder: Path, m: dict) -> AutosaveInfo:
    return AutosaveInfo(folder=folder, identity=dict(m["identity"]),
                        labels_name=str(m["labels_name"]),
                        shape=tuple(int(n) for n in m["shape"]), dtype=str(m["dtype"]),
                        written=float(m["written"]), chunks=len(m["chunks"]),
                        objects=int(m.get("objects", 0)))


def _write_chunk(path: Path, data: bytes) -> None:
    """One chunk file, atomically (temporary name, then renamed) and flushed."""
    paths.atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=False)
    paths.fsync_file(path)


class AutosaveStore:
    """One image's autosave: labels of a fixed shape and dtype, and their prompt log.

    Parameters
    ----------
    folder : path-like
        The store's folder (created at the first write).
    identity : dict
        The image's :func:`image_identity`.
    labels_name : str
        The Labels layer's name (recorded, shown when offering a restore).
    shape : tuple of int
        The labels' shape ``(*lead, H, W)``.
    dtype : numpy dtype
        The labels' integer dtype.
    tile : int
        Chunk tile edge (default :data:`TILE`).

    Only one process writes a store: the first :meth:`write` takes its lock file, held
    until :meth:`close` or the end of the process.
    """

    def __init__(self, folder, identity: dict, labels_name: str, shape, dtype,
                 tile: int = TILE):
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.labels_name = str(labels_name)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.tile = int(tile)
        self._lock: paths.FileLock | None = None
        self._log_text: str | None = None

    @classmethod
    def create(cls, identity: dict, labels_name: str, shape, dtype, *, root=None,
               tile: int = TILE) -> AutosaveStore:
        """A new store of this process for ``identity`` (nothing is written yet)."""
        root = Path(root) if root is not None else autosave_root()
        token = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(3)}"
        return cls(root / _digest(identity) / token, identity, labels_name, shape, dtype,
                   tile)

    @classmethod
    def open(cls, folder) -> AutosaveStore:
        """The store in ``folder`` as its manifest describes it (to read it, or to go on
        writing it after a restore).

        Raises
        ------
        AutosaveError
            No readable manifest there.
        """
        folder = Path(folder)
        m = _read_manifest(folder)
        if m is None:
            raise AutosaveError(f"no autosave in {folder}")
        store = cls(folder, m["identity"], m["labels_name"], m["shape"], m["dtype"],
                    int(m.get("tile", TILE)))
        return store

    # ------------------------------------------------------------------ writing -----
    def _own(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            lock = paths.FileLock(self.folder / LOCK)
            # A listing (:func:`list_autosaves`, any process) holds an unowned store's lock
            # for a moment to test it: only a lock held for OWN_WAIT_S is another owner's.
            deadline = time.monotonic() + OWN_WAIT_S
            while not lock.acquire(wait=False):
                if time.monotonic() >= deadline:
                    raise AutosaveError(f"{self.folder} is written by another napari")
                time.sleep(0.01)
            self._lock = lock

    def close(self) -> None:
        """Give the store up (its lock): another session may now offer to restore it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write(self, changed: Mapping[tuple, np.ndarray], *, log: PromptLog | None = None,
              source=None) -> WriteReport:
        """Write the chunks ``changed`` (and the prompt log), then the manifest.

        Parameters
        ----------
        changed : mapping of chunk key -> ndarray
            Each changed chunk's pixels (shape of :func:`chunk_index` of the key, the
            store's dtype), copied by the caller.
        log : PromptLog, optional
            Written when its JSON differs from the one written last (None keeps it).
        source : array-like, shape (*lead, H, W), optional
            The whole labels: a full write, every chunk not in ``changed`` read from it
            (chunks of 0 skipped). Required for the first write of a store; later writes
            give only the changed chunks.

        Returns
        -------
        WriteReport

        Raises
        ------
        AutosaveError
            The folder cannot be written (read-only, full, gone), or a first write without
            ``source``. The previous state stays readable.
        """
        t0 = time.perf_counter()
        try:
            self._own()
            old = _read_manifest(self.folder)
            if old is None and source is None:
                raise AutosaveError(f"{self.folder}: the first autosave needs the whole "
                                    "labels (source)")
            return self._write(old, changed, log, source, t0)
        except AutosaveError:
            raise
        except OSError as exc:
            raise AutosaveError(f"autosave in {self.folder} failed: "
                                f"{exc.strerror or exc}") from exc

    def _write(self, old, changed, log, source, t0) -> WriteReport:
        gen = int(old["generation"]) + 1 if old else 1
        chunks = {} if source is not None or old is None else dict(old["chunks"])
        written = dropped = nbytes = 0

        def put(key, block):
            nonlocal written, dropped, nbytes
            name = _key_text(key)
            block = np.asarray(block)
            want = tuple(s.stop - s.start if isinstance(s, slice) else None
                         for s in chunk_index(self.shape, key, self.tile))[-2:]
            if block.shape[-2:] != want:
                raise InvalidInputError(f"chunk {name} has shape {block.shape}, not {want}")
            if not block.any():
                dropped += chunks.pop(name, None) is not None
                return
            data = zlib.compress(np.ascontiguousarray(block, self.dtype).tobytes(), 1)
            file = f"{name}.g{gen}.zz"
            _write_chunk(self.folder / file, data)
            chunks[name] = {"file": file, "crc32": zlib.crc32(data), "bytes": len(data)}
            written += 1
            nbytes += len(data)

        for key, block in changed.items():
            put(key, block)
        if source is not None:
            done = {tuple(k) for k in changed}
            for key in chunk_keys(self.shape, self.tile):
                if key not in done:
                    put(key, source[chunk_index(self.shape, key, self.tile)])
            if old:
                dropped = len(set(old["chunks"]) - set(chunks))
        prompts = old.get("prompts") if old else None
        objects = int(old.get("objects", 0)) if old else 0
        log_written = False
        text = None
        if log is not None:
            text = json.dumps(log.to_dict(), indent=1) + "\n"
            if text != self._log_text or prompts is None:
                prompts = f"prompts.g{gen}.json"
                _write_chunk(self.folder / prompts, text.encode("utf-8"))
                nbytes += len(text.encode("utf-8"))
                log_written = True
            objects = len(log.objects)
        paths.fsync_dir(self.folder)
        manifest = {"format": FORMAT, "version": VERSION, "identity": self.identity,
                    "labels_name": self.labels_name, "shape": list(self.shape),
                    "dtype": str(self.dtype), "tile": self.tile, "generation": gen,
                    "written": time.time(), "pid": os.getpid(), "chunks": chunks,
                    "prompts": prompts, "objects": objects}
        paths.atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=0))
        if text is not None:  # only now is it the log the manifest names
            self._log_text = text
        self._sweep(manifest)
        return WriteReport(written, dropped, nbytes, log_written, time.perf_counter() - t0)

    def _sweep(self, manifest: dict) -> None:
        """Remove the files the manifest does not name (superseded chunks and logs, and
        leftovers of a write that was killed)."""
        keep = {MANIFEST, LOCK, manifest.get("prompts")}
        keep.update(c["file"] for c in manifest["chunks"].values())
        for entry in os.scandir(self.folder):
            if entry.name not in keep and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    # ------------------------------------------------------------------ reading -----
    def read(self) -> tuple[np.ndarray, PromptLog | None]:
        """The labels and prompt log of the last complete write.

        Returns
        -------
        labels : ndarray, shape (*lead, H, W), the store's dtype
        log : PromptLog or None
            None when no log was written (or it cannot be read).

        Raises
        ------
        AutosaveError
            No manifest, or a chunk file missing or damaged (its checksum differs).
        """
        m = _read_manifest(self.folder)
        if m is None:
            raise AutosaveError(f"no autosave in {self.folder}")
        shape, dtype, tile = tuple(m["shape"]), np.dtype(m["dtype"]), int(m["tile"])
        labels = np.zeros(shape, dtype)
        for name, c in m["chunks"].items():
            index = chunk_index(shape, _key_of(name), tile)
            try:
                data = (self.folder / c["file"]).read_bytes()
            except OSError as exc:
                raise AutosaveError(f"autosave {self.folder}: chunk {name} cannot be read "
                                    f"({exc.strerror or exc})") from exc
            if zlib.crc32(data) != int(c["crc32"]):
                raise AutosaveError(f"autosave {self.folder}: chunk {name} is damaged")
            target = labels[index]
            target[...] = np.frombuffer(zlib.decompress(data), dtype).reshape(target.shape)
        log = None
        if m.get("prompts"):
            try:
                log = PromptLog.load(self.folder / m["prompts"])
            except InvalidInputError:
                log = None
        return labels, log

    def info(self) -> AutosaveInfo | None:
        """The manifest's summary, or None when nothing complete was written."""
        m = _read_manifest(self.folder)
        return None if m is None else _info(self.folder, m)

    def discard(self) -> None:
        """Delete the store (its folder), giving up its lock first."""
        self.close()
        _remove(self.folder)


# ------------------------------------------------------------------ listing ------------
def _owned_elsewhere(folder: Path) -> bool:
    """Whether a live process holds the store's lock (this one included)."""
    lock_path = folder / LOCK
    if not lock_path.exists():
        return False
    lock = paths.FileLock(lock_path)
    try:
        if lock.acquire(wait=False):
            lock.release()
            return False
    except OSError:
        return False
    return True


def list_autosaves(identity: dict, *, root=None) -> list[AutosaveInfo]:
    """The autosaves of an image that no live process writes, newest first.

    Folders without a complete manifest (a first write killed) are removed when no process
    owns them and they are older than a minute.

    Parameters
    ----------
    identity : dict
        :func:`image_identity` of the image.
    root : path-like, optional
        Default :func:`autosave_root`.
    """
    root = Path(root) if root is not None else autosave_root()
    base = root / _digest(identity)
    found = []
    try:
        folders = [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []
    for folder in folders:
        if _owned_elsewhere(folder):
            continue
        m = _read_manifest(folder)
        if m is None:  # a first write killed (not one that is starting now)
            try:
                stale = time.time() - folder.stat().st_mtime > 60
            except OSError:
                stale = False
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        if m.get("identity") == identity:
            found.append(_info(folder, m))
    return sorted(found, key=lambda i: i.written, reverse=True)


def discard_autosaves(identity: dict, *, labels_name: str | None = None, root=None,
                      keep=()) -> int:
    """Delete the autosaves of an image that no live process writes (those of
    ``labels_name`` only, when given), except the folders in ``keep``; returns how many."""
    keep = {Path(k) for k in keep}
    n = 0
    for info in list_autosaves(identity, root=root):
        if info.folder in keep or (labels_name is not None and info.labels_name != labels_name):
            continue
        _remove(info.folder)
        n += 1
    return n


def _remove(folder: Path) -> None:
    """Delete a store's folder, and its image's folder once no store is left in it."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when empty (another store of the image may be there)
