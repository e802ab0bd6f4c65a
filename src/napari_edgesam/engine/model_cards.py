"""Model cards: what napari-edgesam knows about each published model variant.

A card (a JSON file in ``napari_edgesam/models``, or the folder named by
``$NAPARI_EDGESAM_CARDS_DIR``) names a variant (``edgesam-3x``, the default, and
``edgesam``), pins its encoder and decoder files (size, SHA-256, download URLs), their
expected ONNX signature and the licence of the weights. :class:`ModelCard` and
:class:`ModelFile` hold one card; :func:`list_cards` and :func:`get_card` find them.
Nothing here touches model files (see :mod:`.model_status` and :mod:`.models`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from napari_edgesam.engine import paths
from napari_edgesam.engine.errors import ModelError, UnknownModelError

__all__ = ["PACKAGE_CARDS_DIR", "ROLES", "ModelCard", "ModelFile", "get_card", "list_cards"]

#: Roles of the files of a model, in order.
ROLES = ("encoder", "decoder")
#: Folder of the model cards shipped in the package (``models/`` at the repository root).
PACKAGE_CARDS_DIR = Path(__file__).resolve().parent.parent / "models"


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
        names = {self.name.lower(), self.display_name.lower(), *(a.lower() for a in self.aliases)}
        return n in names

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
