"""The model of a batch run: how it travels to the workers and is loaded there.

One concept: tasks carry the model's *file paths* (:class:`ModelSpec`, picklable and cheap),
never an onnxruntime session; each worker process builds its session once, on first use,
and keeps it in a per-process cache keyed by the paths (:func:`predictor_for`). On a cluster
the model files must be visible at the same paths on every worker (a shared file system).
"""

from __future__ import annotations

import sys
import threading
import dataclasses
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelSpec", "batch_decoder_for_spec", "predictor_for"]


@dataclass(frozen=True)
class ModelSpec:
    """A model as file paths (picklable, cheap to send to workers).

    Attributes
    ----------
    encoder, decoder : str
        Absolute paths of the ONNX files, valid on every worker.
    name : str
    encoder_sha256, decoder_sha256 : str
        Recorded in sidecars; part of the resume fingerprint.
    providers : str or None
        onnxruntime execution providers (``"cuda"``...), as for :class:`EdgeSamModel`.
    num_threads : int or None
        onnxruntime threads per worker process; default: the cores of the worker divided by
        its concurrent tasks.
    thread_policy : str or None
        The sessions' thread-pool policy (a name of
        :data:`napari_edgesam.engine.session.THREAD_POLICIES`); None: the worker's settings.
    variants : tuple of str
        The optimised variants in use (``--optimized``: the kinds an
        :class:`~napari_edgesam.engine.optimize.OptimizedEdgeSamModel` carries, e.g.
        ``("decoder-int8", "encoder-int8", "decoder-batch")``); empty for the original.
    decoder_batch : str or None
        Absolute path of the prompt-batched decoder (``decoder-batch``) the workers decode
        the seeds with; None: one decoder run per seed (always for the original model).
    decoder_batch_sha256 : str
        Its SHA-256; part of the resume fingerprint when it is used.
    """

    encoder: str
    decoder: str
    name: str = "custom"
    encoder_sha256: str = ""
    decoder_sha256: str = ""
    providers: str | None = None
    num_threads: int | None = None
    thread_policy: str | None = None
    variants: tuple = ()
    decoder_batch: str | None = None
    decoder_batch_sha256: str = ""

    @classmethod
    def from_model(cls, model, *, num_threads: int | None = None) -> ModelSpec:
        """Describe an :class:`EdgeSamModel` by its paths (hashes are memoised, cheap).

        Raises
        ------
        ModelNotAvailableError
            A file is missing.
        """
        from ...engine.errors import ModelNotAvailableError
        from ...engine.models import file_sha256

        enc, dec = Path(model.encoder_path).resolve(), Path(model.decoder_path).resolve()
        for role, p in (("encoder", enc), ("decoder", dec)):
            if not p.is_file():
                raise ModelNotAvailableError(f"{role} file not found: {p}")
        providers = model.providers
        if isinstance(providers, (list, tuple)):
            providers = ",".join(providers)
        variants = tuple(getattr(model, "variants", None) or ())
        batch = None
        if "decoder-batch" in variants:  # an optimised model carrying it (see ModelSpec)
            from ...engine.optimize.prompt_batch_runtime import batch_decoder_for

            bd = batch_decoder_for(model)
            batch = None if bd is None else bd.path.resolve()
            if batch is None:  # its record no longer passes: not used, not named
                variants = tuple(v for v in variants if v != "decoder-batch")
        return cls(
            encoder=str(enc), decoder=str(dec), name=model.name,
            encoder_sha256=model.identity, decoder_sha256=file_sha256(dec),
            providers=providers,
            num_threads=num_threads if num_threads is not None else model.num_threads,
            thread_policy=getattr(model, "thread_policy", None),
            variants=variants, decoder_batch=None if batch is None else str(batch),
            decoder_batch_sha256="" if batch is None else file_sha256(batch),
        )

    def with_threads(self, num_threads: int | None) -> ModelSpec:
        """A copy with another thread count."""
        return dataclasses.replace(self, num_threads=num_threads)

    def to_dict(self) -> dict:
        """For the sidecar (file names, not the machine-specific folders): name, files and
        their SHA-256, the optimised ``variants`` in use (``[]`` for the original) and
        ``decoder_batch`` (``{"file", "sha256"}`` of the prompt-batched decoder the seeds
        were decoded with, or None: one decoder run per seed)."""
        return {
            "name": self.name,
            "encoder": Path(self.encoder).name,
            "decoder": Path(self.decoder).name,
            "encoder_sha256": self.encoder_sha256,
            "decoder_sha256": self.decoder_sha256,
            "variants": list(self.variants),
            "decoder_batch": (None if self.decoder_batch is None else
                              {"file": Path(self.decoder_batch).name,
                               "sha256": self.decoder_batch_sha256}),
        }

    def fingerprint_parts(self) -> list:
        """What of the model makes an output (for the resume fingerprint): both files'
        SHA-256, and the prompt-batched decoder's when it is used (the original's list is
        unchanged by it, so earlier outputs of the original still resume)."""
        parts = [self.encoder_sha256, self.decoder_sha256]
        if self.decoder_batch is not None:
            parts.append(f"decoder-batch:{self.decoder_batch_sha256}")
        return parts


_PREDICTORS: dict = {}
_PREDICTORS_LOCK = threading.Lock()


def _worker_threads() -> int | None:
    """onnxruntime threads for a dask.distributed worker: its cores over its task slots."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    from ...engine.session import default_num_threads

    slots = getattr(getattr(worker, "state", worker), "nthreads", None) or 1
    return max(1, default_num_threads() // int(slots))


def predictor_for(spec: ModelSpec):
    """This process's :class:`Predictor` for a model, created on first use and kept.

    The onnxruntime sessions are created here, in the process that uses them (a dask
    worker), never pickled. Keyed by the model's paths, providers, threads and thread
    policy.
    """
    from ...engine import EdgeSamModel, Predictor

    key = (spec.encoder, spec.decoder, spec.providers, spec.num_threads, spec.thread_policy)
    with _PREDICTORS_LOCK:
        pred = _PREDICTORS.get(key)
        if pred is None:
            sha = {k: v for k, v in (("encoder", spec.encoder_sha256),
                                     ("decoder", spec.decoder_sha256)) if v}
            model = EdgeSamModel(spec.encoder, spec.decoder, name=spec.name,
                                 providers=spec.providers,
                                 num_threads=spec.num_threads or _worker_threads(), sha256=sha,
                                 thread_policy=spec.thread_policy)
            model.load()
            pred = _PREDICTORS[key] = Predictor(model, cache=None)
    return pred


_BATCH_DECODERS: dict = {}


def batch_decoder_for_spec(spec: ModelSpec):
    """This process's prompt-batched decoder for ``spec`` (created on first use and kept),
    or None when the spec has none (the original model: one decoder run per seed).

    Raises
    ------
    ModelNotAvailableError
        The file is missing or is not the one the run was started with (SHA-256).
    """
    if spec.decoder_batch is None:
        return None
    from ...engine.errors import ModelNotAvailableError
    from ...engine.models import file_sha256
    from ...engine.optimize.prompt_batch_runtime import BatchDecoder

    pred = predictor_for(spec)
    key = (spec.decoder_batch, id(pred))
    with _PREDICTORS_LOCK:
        bd = _BATCH_DECODERS.get(key)
        if bd is None:
            path = Path(spec.decoder_batch)
            if not path.is_file() or (spec.decoder_batch_sha256
                                      and file_sha256(path) != spec.decoder_batch_sha256):
                raise ModelNotAvailableError(f"decoder-batch file missing or changed: {path}")
            bd = _BATCH_DECODERS[key] = BatchDecoder(path, pred.model)
    return bd
