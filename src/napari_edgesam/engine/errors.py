"""Exceptions raised by the engine.

Every error a user can cause has its own class so that adapters (the napari widget, the
command line) can show a clear message: :class:`InvalidInputError` for bad images and
prompts, :class:`ModelError` for model files that are missing, corrupt or of the wrong kind.
Every exception class of the engine is defined here; the modules that raise them
(``models``, ``download``, ``optimize``) re-export them under their old import paths.
"""

from __future__ import annotations


class EdgeSamError(Exception):
    """Base class of all errors raised on purpose by napari-edgesam."""


class InvalidInputError(EdgeSamError, ValueError):
    """An image, a prompt or a parameter that the engine cannot use (the message says why)."""


class ModelError(EdgeSamError):
    """A model that cannot be used: not found, not downloaded, corrupt or of the wrong kind."""


class ModelNotAvailableError(ModelError):
    """The model's files are not on this machine and could not be downloaded."""


class UnknownModelError(ModelError, ValueError):
    """A model name that matches no model card (a bad argument, not a missing file)."""


class DownloadError(ModelNotAvailableError):
    """A model file that could not be downloaded from any of its URLs.

    Attributes
    ----------
    filename : str
        The file that could not be fetched.
    attempts : list of (str, str)
        ``(url, reason)`` for every URL tried.
    """

    def __init__(self, message: str, filename: str = "", attempts=()):
        super().__init__(message)
        self.filename = filename
        self.attempts = list(attempts)


class ModelSignatureError(ModelError):
    """A model file whose ONNX inputs/outputs differ from the EdgeSAM contract."""


class ChecksumError(ModelError):
    """A model file whose SHA-256 differs from the pinned one."""


class CancelledError(EdgeSamError):
    """A long operation was cancelled by the user; partial results stay consistent."""


class CacheBoundError(InvalidInputError):
    """An image whose tile embeddings would not fit under the disk cache's bound (the
    message says how large they are and which setting to raise)."""


class OptimizationUnavailableError(EdgeSamError, ImportError):
    """Building optimised variants needs the optional ``onnx`` package, which is missing."""
