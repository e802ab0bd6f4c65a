"""The model the napari panel used last, remembered in ``settings.json`` for the next start.

:func:`remember_last_model` records a published model's name or a custom encoder/decoder
pair under the ``last_model`` setting; :func:`last_model` reads it back as a
:class:`LastModel` (nothing is checked: the files may have moved since).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from napari_edgesam.engine import paths
from napari_edgesam.engine.model_cards import ModelCard

__all__ = ["LAST_MODEL_KEY", "LastModel", "last_model", "remember_last_model"]

_log = logging.getLogger(__name__)

#: Settings key of the model the napari panel used last (see :func:`last_model`).
LAST_MODEL_KEY = "last_model"


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
