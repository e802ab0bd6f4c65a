"""The embedding of the slice the user looks at: encoded once, in a worker, as soon as the
image, the slice, the channel, the contrast mapping, the tiles or the model change.

:class:`SliceEncoder` belongs to an :class:`~.session.AnnotationSession` and reads only its
public state. A stale run (the user moved on) is terminated through onnxruntime's
``RunOptions`` and the newest slice is encoded next; a slice whose encoding failed is not
retried by itself (the user was told; a new slice, mapping or model retries). Big images get
no whole-slice embedding: a :class:`~napari_edgesam.engine.tiling.TiledPredictor` is
prepared instead, and tiles are encoded when prompts need them.
"""

from __future__ import annotations

from napari_edgesam.engine.cancel import CancelToken

from . import workers
from ._geometry import image_data

__all__ = ["SliceEncoder"]


class SliceEncoder:
    """Keeps the embedding of ``session``'s current slice.

    Parameters
    ----------
    session : AnnotationSession
    """

    def __init__(self, session):
        self.session = session
        self.embedding = None  # of .key
        self.key = None
        self.mapping = None  # the intensity mapping of the current embedding
        self.stack_mappings: dict = {}  # stack key -> mapping chosen for a whole stack
        self.last_seconds: float | None = None
        self._worker = None
        self._running_key = None
        self._pending = False
        self._failed_key = None
        self._token = CancelToken()

    @property
    def busy(self) -> bool:
        """Whether an encoding worker is running."""
        return self._worker is not None

    @property
    def worker(self):
        """The running encoder worker, or None."""
        return self._worker

    def current(self):
        """The embedding of the slice wanted now (None while it is computed)."""
        return self.embedding if self.key == self.session.wanted_key() else None

    def reset(self) -> None:
        """Forget the embedding (a new image or model)."""
        self.embedding = None
        self.key = None
        self.mapping = None

    def cancel(self) -> None:
        """Ask the running encoder to stop (its result is dropped)."""
        self._token.cancel()

    def retry_failed(self) -> None:
        """Let a slice whose encoding failed be tried again (the user came back to it)."""
        self._failed_key = None

    def request(self) -> None:
        """Encode the current slice unless its embedding is here or on its way."""
        s = self.session
        if s.image_layer is None or s.model is None:
            s.update_status()
            return
        problem = s.view_problem()
        if problem:
            s.set_status(problem)
            return
        key = s.wanted_key()
        if key == self.key and self.embedding is not None:
            return
        if key == self._failed_key:
            return
        if self._worker is not None:
            if self._running_key != key:
                self._pending = True
                self.cancel()  # stale: stop it, the newest slice comes next
            return
        layer = s.image_layer
        data = image_data(layer)
        smk = s.stack_mapping_key()
        stack_mapping = self.stack_mappings.get(smk) if smk is not None else None
        self._running_key = key
        self._pending = False
        self._token = token = CancelToken()
        s.prefetcher.activity()  # the slice the user looks at comes first
        text = s.slice_text()
        tiled = s.tiled_key()
        if tiled is not None:
            s.set_status(f"Preparing {text} (large image: tiles)...")
            job, args = workers.prepare_tiles_job, (*tiled, token)
            desc = f"EdgeSAM: preparing tiles of {text}"
        else:
            s.set_status(f"Encoding {text}...")
            job, args = workers.encode_job, (token,)
            desc = f"EdgeSAM: encoding {text}"
        self._worker = s.start_worker(
            job, s.predictor, data, s.geometry, key[2], key[3], stack_mapping, *args,
            returned=lambda res, k=key, m=smk: self._on_encoded(k, m, res),
            errored=lambda exc, k=key: self._on_failed(k, exc),
            finished=self._on_done,
            desc=desc,
        )

    def _on_encoded(self, key, smk, result):
        if result is None:
            return  # cancelled
        embedding, mapping, seconds = result
        if smk is not None:
            self.stack_mappings[smk] = mapping
        s = self.session
        if key != s.wanted_key():
            return  # the slice, image or mapping changed meanwhile: dropped
        self.embedding = embedding
        self.key = key
        self.mapping = mapping
        if not embedding.tiled:
            self.last_seconds = seconds
        s.update_status()
        s.request_predict()  # answers clicks made while encoding

    def _on_failed(self, key, exc):
        self._failed_key = key
        s = self.session
        if key == s.wanted_key():
            s.notify_error(exc, f"cannot encode {s.slice_text(key[2])}: ")

    def _on_done(self):
        self._worker = None
        self._running_key = None
        s = self.session
        if not s.alive:
            return
        s.prefetcher.activity()  # idle from here: prefetch after a while
        wanted = s.wanted_key()
        if self._pending or (wanted is not None and self.key != wanted):
            self._pending = False
            self.request()
        s.update_status()
