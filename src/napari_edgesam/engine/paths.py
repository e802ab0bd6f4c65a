"""Where napari-edgesam keeps its files: user cache, user config, settings.

Locations (first match wins):

- cache folder: ``$NAPARI_EDGESAM_CACHE_DIR``, else the platform's user cache folder for
  ``napari-edgesam`` (``~/.cache/napari-edgesam`` on Linux,
  ``~/Library/Caches/napari-edgesam`` on macOS, ``%LOCALAPPDATA%\\napari-edgesam\\Cache`` on
  Windows). Downloaded models go to ``<cache>/models``, image embeddings to
  ``<cache>/embeddings``.
- config folder: ``$NAPARI_EDGESAM_CONFIG_DIR``, else the platform's user config folder.
  It holds ``settings.json`` (for example ``model_dir``, ``cache_memory_bytes``,
  ``cache_disk_bytes``) and the record that the model licence notice was shown.
- an explicit model folder: ``$NAPARI_EDGESAM_MODEL_DIR``, else the ``model_dir`` setting.

Only the standard library and :mod:`platformdirs` are imported; nothing is created on
import. Folders are created lazily by the code that writes into them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

APP_NAME = "napari-edgesam"

#: Environment variable overriding the cache folder (models and embeddings).
ENV_CACHE_DIR = "NAPARI_EDGESAM_CACHE_DIR"
#: Environment variable naming a folder that holds the model files (offline use).
ENV_MODEL_DIR = "NAPARI_EDGESAM_MODEL_DIR"
#: Environment variable overriding the config folder (settings.json).
ENV_CONFIG_DIR = "NAPARI_EDGESAM_CONFIG_DIR"
#: Environment variable replacing the packaged model cards by the ``*.json`` cards of a
#: folder (for tests and for private mirrors).
ENV_CARDS_DIR = "NAPARI_EDGESAM_CARDS_DIR"

SETTINGS_FILE = "settings.json"

#: Settings understood by the engine, with their defaults.
DEFAULT_SETTINGS: dict[str, Any] = {
    "model_dir": None,
    "cache_memory_bytes": 256 * 2**20,
    "cache_disk_bytes": 2 * 2**30,
    "cache_disk_enabled": True,
}

_log = logging.getLogger(__name__)
_settings_lock = threading.Lock()
_reported: set = set()  # (file, key, value) already reported as invalid


class SettingsWarning(UserWarning):
    """A setting in settings.json with a value of the wrong kind (its default is used)."""


def _valid(key: str, value: Any) -> bool:
    """Whether ``value`` is usable for the known setting ``key``."""
    if key in ("cache_memory_bytes", "cache_disk_bytes"):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if key == "cache_disk_enabled":
        return isinstance(value, bool)
    if key == "model_dir":
        return value is None or isinstance(value, str)
    return True


def _checked(data: dict, path: Path) -> dict:
    """``data`` without the known settings whose values are invalid; each one is reported
    once (a :class:`SettingsWarning` naming the file, the key and the default used)."""
    import warnings

    good = {}
    for key, value in data.items():
        if _valid(key, value):
            good[key] = value
            continue
        mark = (str(path), key, repr(value))
        if mark not in _reported:
            _reported.add(mark)
            warnings.warn(f"{path}: setting {key!r} = {value!r} is not valid; using the "
                          f"default {DEFAULT_SETTINGS.get(key)!r}", SettingsWarning,
                          stacklevel=3)
    return good


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    return Path(value).expanduser()


def cache_dir() -> Path:
    """Return the user cache folder (not created).

    Returns
    -------
    pathlib.Path
        ``$NAPARI_EDGESAM_CACHE_DIR`` if set, else the platform user cache folder.
    """
    env = _env_path(ENV_CACHE_DIR)
    if env is not None:
        return env
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Return the user config folder (not created).

    Returns
    -------
    pathlib.Path
        ``$NAPARI_EDGESAM_CONFIG_DIR`` if set, else the platform user config folder.
    """
    env = _env_path(ENV_CONFIG_DIR)
    if env is not None:
        return env
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def models_cache_dir() -> Path:
    """Return the folder where downloaded model files are stored (``<cache>/models``)."""
    return cache_dir() / "models"


def embeddings_cache_dir() -> Path:
    """Return the folder of the on-disk embedding cache (``<cache>/embeddings``)."""
    return cache_dir() / "embeddings"


def cards_dir_override() -> Path | None:
    """Return ``$NAPARI_EDGESAM_CARDS_DIR`` as a path, or ``None`` when it is not set."""
    return _env_path(ENV_CARDS_DIR)


def settings_path() -> Path:
    """Return the path of ``settings.json`` in the config folder."""
    return config_dir() / SETTINGS_FILE


def load_settings() -> dict[str, Any]:
    """Read the settings, filling in defaults.

    A missing, unreadable or corrupt settings file gives the defaults (with a log message
    for a corrupt one); it is never an error. A known setting with a value of the wrong
    kind (``"cache_disk_bytes": "lots"``) gets its default, reported once as a
    :class:`SettingsWarning` naming the file and the key.

    Returns
    -------
    dict
        A fresh dictionary (changing it does not change the file).
    """
    settings = dict(DEFAULT_SETTINGS)
    path = settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return settings
    try:
        data = json.loads(text)
    except ValueError:
        _log.warning("Ignoring corrupt settings file %s", path)
        return settings
    if isinstance(data, dict):
        settings.update(_checked(data, path))
    return settings


def get_setting(key: str, default: Any = None) -> Any:
    """Return one setting (``default`` when it is missing or ``None``)."""
    value = load_settings().get(key)
    return default if value is None else value


class FileLock:
    """An exclusive advisory lock on a small lock file, between processes of this machine
    (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows; on a network file system it
    holds where the file system supports locks).

    It defines who owns temporary files: the holder of ``<name>.lock`` owns the leftovers
    of ``<name>``, so a run that gets the lock may remove them (their writer is gone). The
    lock ends with its process, even a killed one. :meth:`release` removes the lock file
    while still holding it, and :meth:`acquire` checks that the file it locked is still the
    one at ``path`` (else it tries again), so two processes never hold locks on two files
    of the same name; a killed holder leaves an unlocked file that the next run takes.

    Parameters
    ----------
    path : path
        The lock file (created if missing).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock (waiting for another holder when ``wait``); False when ``wait`` is
        False and another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if os.name == "nt":  # pragma: no cover - Windows is not tested here
                    import msvcrt

                    msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                os.close(fd)
                if wait:
                    raise
                return False
            try:  # the file we locked may have been released (removed) meanwhile
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and give the lock up."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def fsync_file(path) -> None:
    """Flush a written file's content to the disk (``os.fsync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder) -> None:
    """Flush a folder's entries (a rename into it) to the disk. POSIX only: Windows cannot
    open folders for this, and its renames go through the file system's journal."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network, FUSE) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], object], *, suffix: str = ".partial",
                 durable: bool = True) -> Path:
    """Create ``path`` through a temporary file in its folder and :func:`os.replace`.

    ``write(tmp_path)`` writes the content; the file then gets the usual permissions
    (``0666 & ~umask``, not the temporary file's private 0600) and replaces ``path`` in one
    step, so readers and a killed process never see a half-written file under ``path``. The
    temporary file is removed on any error. With ``durable`` (default) the content is
    flushed to the disk before the rename and the folder after it, so that a power cut
    leaves the old file or the whole new one, never a renamed but empty file.

    Returns
    -------
    Path
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`), creating
    the folder if needed.

    Raises
    ------
    OSError
        When the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), suffix=".tmp")


def set_setting(key: str, value: Any) -> None:
    """Set one setting and save (read-modify-write; ``None`` removes the key).

    Raises
    ------
    OSError
        When the config folder is not writable.
    """
    with _settings_lock:
        path = settings_path()
        data: dict[str, Any] = {}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                data = loaded
        except (OSError, ValueError):
            pass
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def configured_model_dir() -> Path | None:
    """Return the explicitly configured model folder, if any.

    ``$NAPARI_EDGESAM_MODEL_DIR`` first, then the ``model_dir`` setting.

    Returns
    -------
    pathlib.Path or None
    """
    env = _env_path(ENV_MODEL_DIR)
    if env is not None:
        return env
    value = get_setting("model_dir")
    if isinstance(value, str) and value.strip():
        return Path(value).expanduser()
    return None
