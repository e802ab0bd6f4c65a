"""Running the prompt-batched decoder: :class:`BatchDecoder` and :func:`batch_decoder_for`.

The ``decoder-batch`` variant (:mod:`.prompt_batch`, built and checked by
:func:`~.orchestration.optimize_model`) is a decoder file that takes B prompt sets of one
length in one ``session.run``. It is an optimised variant like the others: used only when
the user asked for them (the panel's "optimised" box, ``--optimized``), i.e. for an
:class:`~.runtime.OptimizedEdgeSamModel` that :func:`~.runtime.load_optimized` made with
``decoder-batch`` among its ``variants``. :func:`batch_decoder_for` returns it for such a
model when its record still says it passed its agreement check, else None (the caller then
runs one prompt set per call); for the plain model always None. Only the record is read
(no ``onnx``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..session import EdgeSamModel

__all__ = ["BatchDecoder", "batch_decoder_for"]

_log = logging.getLogger(__name__)
_KIND = "decoder-batch"
_found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class BatchDecoder:
    """A decoder file that takes a batch of prompt sets (see :mod:`.prompt_batch`).

    Parameters
    ----------
    path : path
        The batched decoder (``decoder-batch.onnx``).
    model : EdgeSamModel
        The model it was made from: its providers, threads and thread policy are used.
    """

    def __init__(self, path, model: EdgeSamModel):
        self.path = Path(path)
        self.model = model
        self._session = None
        self._lock = threading.Lock()

    def __repr__(self):
        return f"BatchDecoder({str(self.path)!r})"

    @property
    def session(self):
        """The onnxruntime session (created on first use, with the model's thread policy)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort

                    from ..session import resolve_providers, session_options

                    opts = session_options("decoder", num_threads=self.model.num_threads,
                                           policy=getattr(self.model, "thread_policy", None))
                    try:
                        s = ort.InferenceSession(str(self.path), sess_options=opts,
                                                 providers=resolve_providers(
                                                     self.model.providers))
                    except Exception as exc:  # noqa: BLE001
                        raise ModelError(f"batched decoder {self.path} cannot be loaded: "
                                         f"{exc}") from exc
                    names = [i.name for i in s.get_inputs()]
                    if sorted(names) != ["image_embeddings", "point_coords", "point_labels"]:
                        raise ModelError(f"batched decoder {self.path} has inputs {names}")
                    self._session = s
        return self._session

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        """One run for B prompt sets of one length.

        Parameters
        ----------
        embedding : ndarray of float32, shape (1, 256, 64, 64)
            One image's embedding (not repeated: the graph broadcasts it).
        coords : ndarray of float32, shape (B, N, 2)
            ``(x, y)`` in the 1024 frame, padding points included as the contract says.
        labels : ndarray of float32, shape (B, N)
            Contract labels (1, 0, 2, 3, -1).

        Returns
        -------
        scores : ndarray of float32, shape (B, 4)
            The file's ``scores`` output.
        masks : ndarray of float32, shape (B, 4, 256, 256)
            Logits in the low-res frame; row ``b`` is what the original decoder gives for
            prompt set ``b`` alone (up to float rounding).
        """
        coords = np.asarray(coords, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.float32)
        if coords.ndim != 3 or labels.shape != coords.shape[:2] or coords.shape[2] != 2:
            raise ModelError(f"batched prompts must be (B, N, 2) and (B, N); got "
                             f"{coords.shape} and {labels.shape}")
        scores, masks = self.session.run(["scores", "masks"], {
            "image_embeddings": np.asarray(embedding, dtype=np.float32),
            "point_coords": coords, "point_labels": labels})
        return scores, masks


def batch_decoder_for(model: EdgeSamModel, *, refresh: bool = False) -> BatchDecoder | None:
    """The ``decoder-batch`` variant of an optimised model, if it passed its check here.

    Parameters
    ----------
    model : EdgeSamModel
        An :class:`~.runtime.OptimizedEdgeSamModel` with ``"decoder-batch"`` in its
        ``variants`` (what :func:`~.runtime.load_optimized` gives when the user asked for
        the optimised variants; its source's variant is used, checked against the float32
        original as the other variants). Any other model, the plain original included,
        gets None: the variant is used only when asked for.
    refresh : bool
        Read the record again (after building the variant in this process).

    Returns
    -------
    BatchDecoder or None
        None for a model without the variant, or when never built, stale, refused or not
        applicable (logged at INFO with the reason): the caller decodes one prompt set per
        call. Remembered per model object.
    """
    if _KIND not in (getattr(model, "variants", None) or {}):
        return None  # the plain model, or optimised variants without decoder-batch
    with _lock:
        try:
            if model in _found and not refresh:
                return _found[model]
        except TypeError:  # not weak-referenceable: not remembered
            pass
    from .records import find_variants

    source = getattr(model, "source", None) or model
    try:
        r = find_variants(source, [_KIND])[_KIND]
    except Exception as exc:  # noqa: BLE001 - a lookup problem means "one by one"
        _log.info("batched decoder not used: %s", exc)
        r = None
    bd = None
    if r is not None and r.enabled and r.path("model") is not None:
        bd = BatchDecoder(r.path("model"), model)
    elif r is not None and r.status != "missing":
        _log.info("batched decoder not used: %s (%s)", r.status, r.reason)
    with _lock, contextlib.suppress(TypeError):
        _found[model] = bd
    return bd
