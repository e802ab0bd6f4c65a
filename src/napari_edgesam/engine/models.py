"""Model cards, file verification and model resolution.

- :func:`list_cards`, :func:`get_card`: the published variants (``edgesam-3x``, the default,
  and ``edgesam``), described by the JSON cards shipped in ``napari_edgesam/models``.
- :func:`file_sha256`: SHA-256 of a file, memoised by (path, size, mtime) in
  ``<cache>/sha256-memo.json`` so that start-ups do not re-hash the model files (defined in
  :mod:`.file_hash`, re-exported here).
- :func:`model_status`, :func:`resolve_model`, :func:`download_model`: find a model's files
  in an explicit folder, ``$NAPARI_EDGESAM_MODEL_DIR``, the ``model_dir`` setting, then the
  user cache, verify them, and download what is missing (after showing the licence notice).

It only imports the standard library at module level; :mod:`.download` (and pooch) are
imported only when a download starts. :mod:`.download` does not import this module.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from napari_edgesam.engine import paths
from napari_edgesam.engine.file_hash import (  # noqa: F401 (re-exported: their old home)
    HASH_MEMO_FILE,
    cached_sha256,
    file_sha256,
    remember_sha256,
)
from napari_edgesam.engine.errors import (  # noqa: F401 (UnknownModelError: re-exported)
    ChecksumError,
    ModelError,
    ModelNotAvailableError,
    UnknownModelError,
)

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------

#: Roles of the files of a model, in order.
ROLES = ("encoder", "decoder")
#: Folder of the model cards shipped in the package (``models/`` at the repository root).
PACKAGE_CARDS_DIR = Path(__file__).resolve().parent.parent / "models"
#: Settings key recording which licence notices were shown (licence URL -> ISO time).
LICENCE_SHOWN_KEY = "licence_notices_shown"
#: Settings key of the model the napari panel used last (see :func:`last_model`).
LAST_MODEL_KEY = "last_model"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, as pinned by its card.

    Attributes
    ----------
    role : str
        ``"encoder"`` or ``"decoder"``.
    filename : str
        The file's name (the same on every host and in every local folder).
    size : int
        Exact size in bytes.
    sha256 : str
        SHA-256, 64 lowercase hex digits.
    urls : tuple of str
        Download locations, tried in order: the primary first, then mirrors.
    """

    role: str
    filename: str
    size: int
    sha256: str
    urls: tuple[str, ...]

    @property
    def primary_url(self) -> str:
        """The first download URL."""
        return self.urls[0]


@dataclass(frozen=True)
class ModelCard:
    """What napari-edgesam knows about one published model variant.

    Attributes
    ----------
    name : str
        Canonical lowercase name (``"edgesam-3x"``, ``"edgesam"``).
    display_name : str
        Name for humans (``"EdgeSAM-3x"``).
    files : dict of str to ModelFile
        ``{"encoder": ..., "decoder": ...}``.
    licence_name, licence_url, licence_summary : str
        The licence of the weights, a link to its full text and our one-paragraph summary.
    default : bool
        Whether this is the variant used when no name is given.
    aliases : tuple of str
        Other accepted names (compared case-insensitively).
    description : str
        One sentence about the variant.
    kind : str
        Model family (``"edgesam"``).
    signature : dict
        Expected ONNX signature per role: ``{"encoder": {"inputs": {name: {"dtype": ...,
        "shape": [...]}}, "outputs": {...}}, ...}``; ``None`` in a shape is a dynamic axis.
    homepage : str
        Where the model comes from.
    source : pathlib.Path or None
        The card file it was read from.
    """

    name: str
    display_name: str
    files: dict
    licence_name: str
    licence_url: str
    licence_summary: str
    default: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""
    kind: str = "edgesam"
    signature: dict = field(default_factory=dict)
    homepage: str = ""
    source: Path | None = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: Path | None = None) -> ModelCard:
        """Build a card from its JSON form, validating it.

        Raises
        ------
        ModelError
            When a required field is missing or malformed.
        """
        where = f" ({source})" if source else ""
        try:
            files = {}
            for role in ROLES:
                f = data["files"][role]
                sha = str(f["sha256"]).lower()
                if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                    raise ValueError(f"{role} sha256 is not 64 hex digits")
                size = int(f["size"])
                if size <= 0:
                    raise ValueError(f"{role} size must be positive")
                urls = f.get("urls") or []
                if isinstance(urls, str):
                    urls = [urls]
                files[role] = ModelFile(role, str(f["filename"]), size, sha, tuple(urls))
            lic = data["licence"]
            return cls(
                name=str(data["name"]).lower(),
                display_name=str(data.get("display_name") or data["name"]),
                files=files,
                licence_name=str(lic["name"]),
                licence_url=str(lic["url"]),
                licence_summary=str(lic.get("summary", "")),
                default=bool(data.get("default", False)),
                aliases=tuple(str(a) for a in data.get("aliases", ())),
                description=str(data.get("description", "")),
                kind=str(data.get("kind", "edgesam")),
                signature=dict(data.get("signature") or {}),
                homepage=str(data.get("homepage", "")),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"Invalid model card{where}: {exc!r}") from exc

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ModelCard:
        """Read a card from a JSON file.

        Raises
        ------
        ModelError
            When the file cannot be read or is not a valid card.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"Cannot read model card {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"Invalid model card {path}: not a JSON object")
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict:
        """The card's JSON form (the inverse of :meth:`from_dict`)."""
        return {
            "schema_version": 1,
            "kind": self.kind,
            "name": self.name,
            "display_name": self.display_name,
            "default": self.default,
            "aliases": list(self.aliases),
            "description": self.description,
            "homepage": self.homepage,
            "files": {
                r: {"filename": f.filename, "size": f.size, "sha256": f.sha256,
                    "urls": list(f.urls)}
                for r, f in self.files.items()
            },
            "signature": self.signature,
            "licence": {"name": self.licence_name, "url": self.licence_url,
                        "summary": self.licence_summary},
        }

    def with_base_urls(self, *bases: str) -> ModelCard:
        """A copy whose files are fetched from ``<base>/<filename>`` for each base, in order.

        Useful for private mirrors and tests.
        """
        files = {
            r: replace(f, urls=tuple(b.rstrip("/") + "/" + f.filename for b in bases))
            for r, f in self.files.items()
        }
        return replace(self, files=files)

    # -- accessors ------------------------------------------------------------------
    @property
    def encoder(self) -> ModelFile:
        """The encoder file."""
        return self.files["encoder"]

    @property
    def decoder(self) -> ModelFile:
        """The decoder file."""
        return self.files["decoder"]

    @property
    def filenames(self) -> list[str]:
        """File names, encoder first."""
        return [self.files[r].filename for r in ROLES]

    @property
    def total_size(self) -> int:
        """Bytes to download for this model."""
        return sum(f.size for f in self.files.values())

    @property
    def sha256(self) -> dict[str, str]:
        """``{"encoder": digest, "decoder": digest}``."""
        return {r: self.files[r].sha256 for r in ROLES}

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this card's name, display name or an alias (any case)."""
        n = name.strip().lower()
        return n in {self.name.lower(), self.display_name.lower(), *(a.lower() for a in self.aliases)}

    @property
    def licence_notice(self) -> str:
        """The text shown before the first download: licence name, link and summary."""
        return (
            f"The {self.display_name} weights are licensed under the {self.licence_name} "
            f"({self.licence_url}).\n{self.licence_summary}"
        )


def _cards_from_dir(folder: Path) -> list[ModelCard]:
    if folder.is_file():
        return [ModelCard.from_file(folder)]
    return [ModelCard.from_file(p) for p in sorted(folder.glob("*.json"))]


def list_cards(cards=None) -> list[ModelCard]:
    """Return the known model cards, the default first.

    Parameters
    ----------
    cards : None, path or iterable of ModelCard or dict, optional
        Where the cards come from. ``None``: the folder named by ``$NAPARI_EDGESAM_CARDS_DIR``
        if set, else the cards shipped in the package. A path: the ``*.json`` cards of that
        folder (or one card file). An iterable: these cards (dicts are parsed).

    Returns
    -------
    list of ModelCard

    Raises
    ------
    ModelError
        When a card file is invalid.
    """
    if cards is None:
        folder = paths.cards_dir_override() or PACKAGE_CARDS_DIR
        result = _cards_from_dir(Path(folder))
    elif isinstance(cards, (str, os.PathLike)):
        result = _cards_from_dir(Path(cards))
    elif isinstance(cards, ModelCard):
        result = [cards]
    else:
        result = [c if isinstance(c, ModelCard) else ModelCard.from_dict(dict(c)) for c in cards]
    return sorted(result, key=lambda c: (not c.default, c.name))


def get_card(name: str | ModelCard | None = None, cards=None) -> ModelCard:
    """Return the card named ``name`` (case-insensitive; aliases accepted).

    Parameters
    ----------
    name : str, ModelCard or None
        ``None`` or ``""`` gives the default card (``edgesam-3x``). A card is returned as is.
    cards : optional
        See :func:`list_cards`.

    Raises
    ------
    UnknownModelError
        When no card matches (the message lists the known names).
    """
    if isinstance(name, ModelCard):
        return name
    available = list_cards(cards)
    if not available:
        raise UnknownModelError("No model cards found")
    if name is None or not str(name).strip():
        for card in available:
            if card.default:
                return card
        return available[0]
    for card in available:
        if card.matches(str(name)):
            return card
    known = ", ".join(c.name for c in available)
    raise UnknownModelError(f"Unknown model {name!r}; known models: {known}")


# ---------------------------------------------------------------------------------------
# Finding files locally
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Resolving and downloading
# ---------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class LastModel:
    """The model the napari panel used last, as remembered in ``settings.json``.

    Attributes
    ----------
    card : str or None
        A published model's name, or ``None`` for a custom pair.
    encoder, decoder : pathlib.Path or None
        The custom pair's files (absolute), or ``None`` for a published model.
    """

    card: str | None = None
    encoder: Path | None = None
    decoder: Path | None = None

    @property
    def custom(self) -> bool:
        """Whether this is a custom encoder/decoder pair (not a published model)."""
        return self.card is None


def last_model() -> LastModel | None:
    """Return the model remembered by :func:`remember_last_model`, if any.

    The ``last_model`` setting is ``{"card": "edgesam-3x"}`` or ``{"encoder": "/abs/enc.onnx",
    "decoder": "/abs/dec.onnx"}``; anything else (missing, malformed) gives ``None``.
    Nothing is checked here: the files may have moved since.

    Returns
    -------
    LastModel or None
    """
    value = paths.get_setting(LAST_MODEL_KEY)
    if not isinstance(value, dict):
        return None
    card = value.get("card")
    if isinstance(card, str) and card.strip():
        return LastModel(card=card.strip())
    enc, dec = value.get("encoder"), value.get("decoder")
    if isinstance(enc, str) and enc and isinstance(dec, str) and dec:
        return LastModel(encoder=Path(enc), decoder=Path(dec))
    return None


def remember_last_model(card: str | ModelCard | None = None, encoder=None,
                        decoder=None) -> bool:
    """Record the model in use in ``settings.json`` (key ``last_model``) for the next start.

    Give either a published model (``card``) or a custom pair (``encoder`` and ``decoder``,
    stored as absolute paths). The file is rewritten atomically and its other keys are kept
    (see :func:`~napari_edgesam.engine.paths.set_setting`).

    Parameters
    ----------
    card : str or ModelCard, optional
        The published model.
    encoder, decoder : path, optional
        The custom pair.

    Returns
    -------
    bool
        ``False`` when the config folder is not writable (logged; not an error).

    Raises
    ------
    ValueError
        When neither a card nor both files are given.
    """
    if card is not None:
        value = {"card": card.name if isinstance(card, ModelCard) else str(card)}
    elif encoder is not None and decoder is not None:
        value = {"encoder": str(Path(encoder).expanduser().absolute()),
                 "decoder": str(Path(decoder).expanduser().absolute())}
    else:
        raise ValueError("remember_last_model needs a card or an encoder and a decoder")
    try:
        paths.set_setting(LAST_MODEL_KEY, value)
    except OSError as exc:
        _log.info("Cannot remember the model in %s: %s", paths.settings_path(), exc)
        return False
    return True


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
