"""Resolving a model name (or card) to verified files on this machine, downloading them.

- :func:`resolve_model`: the verified encoder and decoder of a model, looked for in an
  explicit folder, ``$NAPARI_EDGESAM_MODEL_DIR``, the ``model_dir`` setting, then the user
  cache, and downloaded into the cache when allowed (a :class:`ResolvedModel`).
- :func:`download_model`: fetch a model's files into a folder (after showing the licence
  notice once per machine, see :func:`licence_notice_shown`).
- :func:`where_to_put_message`, :func:`browse_page`: what to tell a user whose model is
  missing.

This module is also the facade of the model machinery: the names of :mod:`.model_cards`
(cards), :mod:`.model_status` (what is on this machine), :mod:`.file_hash` (the SHA-256
memo) and :mod:`.last_model` (the panel's last model) are re-exported here, so
``from napari_edgesam.engine.models import get_card`` and the like keep working.

It only imports the standard library at module level; :mod:`.download` (and pooch) are
imported only when a download starts. :mod:`.download` does not import this module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from napari_edgesam.engine import paths
from napari_edgesam.engine.errors import (  # noqa: F401 (UnknownModelError: re-exported)
    ChecksumError,
    ModelNotAvailableError,
    UnknownModelError,
)
from napari_edgesam.engine.file_hash import (  # noqa: F401 (re-exported: their old home)
    HASH_MEMO_FILE,
    cached_sha256,
    file_sha256,
    remember_sha256,
)
from napari_edgesam.engine.last_model import (  # noqa: F401 (re-exported: their old home)
    LAST_MODEL_KEY,
    LastModel,
    last_model,
    remember_last_model,
)
from napari_edgesam.engine.model_cards import (  # noqa: F401 (re-exported: their old home)
    PACKAGE_CARDS_DIR,
    ROLES,
    ModelCard,
    ModelFile,
    get_card,
    list_cards,
)
from napari_edgesam.engine.model_status import (  # noqa: F401 (re-exported: their old home)
    FileStatus,
    ModelStatus,
    _check_file,
    model_status,
    search_dirs,
)

_log = logging.getLogger(__name__)

#: Settings key recording which licence notices were shown (licence URL -> ISO time).
LICENCE_SHOWN_KEY = "licence_notices_shown"


@dataclass(frozen=True)
class ResolvedModel:
    """A model whose files are on this machine and verified.

    Attributes
    ----------
    card : ModelCard
    encoder, decoder : pathlib.Path
        The verified files.
    """

    card: ModelCard
    encoder: Path
    decoder: Path

    @property
    def sha256(self) -> dict[str, str]:
        """``{"encoder": digest, "decoder": digest}`` (verified, so the card's)."""
        return self.card.sha256

    @property
    def name(self) -> str:
        """The card's name."""
        return self.card.name


def browse_page(url: str) -> str:
    """The web page listing a download URL's file, for people (not the file itself).

    A Hugging Face file URL ``https://huggingface.co/<repo>/resolve/<rev>/<dir>/<file>``
    becomes the repository's browsable page ``https://huggingface.co/<repo>/tree/<rev>/<dir>``
    (spaces too); any other URL gives its folder.

    Parameters
    ----------
    url : str
        A download URL from a model card.

    Returns
    -------
    str
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    segs = parts.path.split("/")
    if "resolve" in segs:
        i = segs.index("resolve")
        if i + 2 < len(segs):  # a revision and a file after "resolve"
            path = "/".join(segs[:i] + ["tree"] + segs[i + 1:-1])
            return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return url.rsplit("/", 1)[0] + "/"


def where_to_put_message(card: ModelCard, dest: Path | None = None) -> str:
    """One sentence telling the user how to make ``card`` available offline.

    It names the files, the browsable page they can be downloaded from (see
    :func:`browse_page`), the user cache folder and ``$NAPARI_EDGESAM_MODEL_DIR``.

    Parameters
    ----------
    card : ModelCard
    dest : path, optional
        The folder to put the files in (default: the user cache, ``<cache>/models``).

    Returns
    -------
    str
    """
    dest = Path(dest) if dest is not None else paths.models_cache_dir()
    names = " and ".join(card.filenames)
    page = browse_page(card.encoder.primary_url) if card.encoder.urls else card.homepage
    return (
        f"To use {card.display_name} offline, download {names} from {page} and put them "
        f"in {dest}, or in any folder and set {paths.ENV_MODEL_DIR} to that folder."
    )


def licence_notice_shown(card: ModelCard) -> bool:
    """Whether the licence notice of ``card`` was already shown on this machine."""
    shown = paths.get_setting(LICENCE_SHOWN_KEY, {})
    return isinstance(shown, dict) and card.licence_url in shown


def _show_licence_notice(card: ModelCard, licence_notice) -> None:
    if licence_notice_shown(card):
        return
    text = card.licence_notice
    if licence_notice is None:
        _log.warning("%s", text)
    else:
        licence_notice(text)
    try:
        shown = paths.get_setting(LICENCE_SHOWN_KEY, {})
        shown = dict(shown) if isinstance(shown, dict) else {}
        shown[card.licence_url] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        paths.set_setting(LICENCE_SHOWN_KEY, shown)
    except OSError as exc:  # read-only config folder: shown again next time
        _log.debug("Cannot record the licence notice: %s", exc)


def download_model(
    name: str | ModelCard | None = None,
    dest: str | os.PathLike | None = None,
    progress=None,
    licence_notice=None,
    *,
    cards=None,
    timeout: float = 30.0,
    max_seconds: float | None = None,
) -> ResolvedModel:
    """Download a model's files into ``dest`` (skipping files already verified there).

    The licence notice is shown first if it never was on this machine. Each file is tried
    from its primary URL, then its mirrors; it is written under a temporary name and renamed
    only once its size and SHA-256 are verified.

    Parameters
    ----------
    name : str, ModelCard or None
        The model (``None``: the default).
    dest : path, optional
        Target folder; default the user cache (``<cache>/models``).
    progress : callable, optional
        ``progress(filename: str, done: int, total: int | None)``, called as bytes arrive.
        It may raise :class:`~napari_edgesam.engine.errors.CancelledError` to cancel.
    licence_notice : callable, optional
        ``licence_notice(text: str)`` shows the licence text and link (it must not wait for
        keyboard input). ``None`` logs it as a warning.
    cards : optional
        See :func:`list_cards`.
    timeout : float
        Network timeout in seconds per request (connect, and between bytes).
    max_seconds : float, optional
        Give up a file's transfer from one URL after this many seconds in all (a server
        that sends slowly but never stops); the next URL is tried.

    Returns
    -------
    ResolvedModel

    Raises
    ------
    UnknownModelError
        For an unknown name.
    ModelNotAvailableError
        When a file could not be downloaded from any URL (no network, server errors, truncated
        transfers); the message says where to put the files by hand.
    ChecksumError
        When every copy downloaded had the wrong hash (the message names the file, the
        expected and the actual hash).
    CancelledError
        When ``progress`` cancelled.
    """
    card = get_card(name, cards)
    dest_dir = Path(dest).expanduser() if dest is not None else paths.models_cache_dir()
    got = _download(card, dest_dir, ROLES, progress, licence_notice, timeout, max_seconds)
    return ResolvedModel(card, got["encoder"], got["decoder"])


def _download(card, dest_dir: Path, roles, progress, licence_notice, timeout,
              max_seconds=None) -> dict:
    """Fetch the files of ``roles`` into ``dest_dir`` unless already verified there."""
    from napari_edgesam.engine.download import fetch_file

    result = {}
    todo = []
    for r in roles:
        target = dest_dir / card.files[r].filename
        if target.is_file() and _check_file(card.files[r], target, True).state == "verified":
            result[r] = target
        else:
            todo.append(r)
    if todo:
        _show_licence_notice(card, licence_notice)
    for r in todo:
        result[r] = fetch_file(
            card.files[r], dest_dir, progress=progress, timeout=timeout,
            help_message=where_to_put_message(card, dest_dir), max_seconds=max_seconds,
        )
    return result


def resolve_model(
    name: str | ModelCard | None = None,
    model_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress=None,
    licence_notice=None,
    *,
    cards=None,
    timeout: float = 30.0,
    max_seconds: float | None = None,
) -> ResolvedModel:
    """Find a model's verified files, downloading them if allowed.

    Looks, in order, in ``model_dir``, ``$NAPARI_EDGESAM_MODEL_DIR``, the ``model_dir``
    setting and the user cache; files found are verified by SHA-256 (memoised by size and
    mtime, so only once per file version). Missing or bad files are then downloaded into the
    user cache when ``download`` is true.

    Parameters
    ----------
    name : str, ModelCard or None
        ``"edgesam-3x"`` (default), ``"edgesam"``, an alias, or a card.
    model_dir : path, optional
        A folder searched first.
    download : bool
        Download what is missing (see :func:`download_model`).
    progress, licence_notice, cards, timeout, max_seconds
        See :func:`download_model`.

    Returns
    -------
    ResolvedModel

    Raises
    ------
    UnknownModelError
        For an unknown name.
    ChecksumError
        When a file was found but has the wrong size or hash and no good copy is available.
    ModelNotAvailableError
        When files are missing (and could not be downloaded); the message lists the folders
        searched and where to put the files.
    """
    status = model_status(name, model_dir, verify=True, cards=cards)
    card = status.card
    if status.ok:
        return ResolvedModel(card, status.files["encoder"].path, status.files["decoder"].path)
    if download:
        dest = paths.models_cache_dir()
        todo = [r for r in ROLES if status.files[r].state != "verified"]
        got = _download(card, dest, todo, progress, licence_notice, timeout, max_seconds)
        found = {r: status.files[r].path for r in ROLES if r not in todo}
        found.update(got)
        return ResolvedModel(card, found["encoder"], found["decoder"])
    bad = [s for s in status.files.values() if s.state == "corrupt"]
    if bad:
        raise ChecksumError(
            f"{card.display_name}: {bad[0].detail}. Delete or replace it. "
            + where_to_put_message(card)
        )
    missing = [s.file.filename for s in status.files.values() if s.state == "missing"]
    searched = ", ".join(str(f) for _, f in search_dirs(model_dir))
    raise ModelNotAvailableError(
        f"{card.display_name} is not available: {' and '.join(missing)} not found in "
        f"{searched}. Run `napari-edgesam models fetch {card.name}` to download it. "
        + where_to_put_message(card)
    )
