"""ONNX model files and onnxruntime sessions.

:class:`EdgeSamModel` is one encoder/decoder pair of ONNX files. Sessions are created
lazily, once, thread-safely; their signatures are checked against the EdgeSAM contract with
a message that names what differs. onnxruntime is imported only when a session is created,
so importing the plugin stays cheap.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from . import contract
from .errors import InvalidInputError, ModelError, ModelNotAvailableError, ModelSignatureError

__all__ = ["EdgeSamModel", "check_signature", "make_run_options", "resolve_providers"]

#: Short names accepted for execution providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def resolve_providers(providers=None) -> list[str]:
    """Execution providers to ask onnxruntime for, always ending with the CPU.

    Parameters
    ----------
    providers : str or list of str, optional
        Short names (``"cuda"``, ``"coreml"``, ``"directml"``...) or onnxruntime's full
        names. Providers that this onnxruntime build lacks are skipped with a warning.
        Default: CPU only.
    """
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    available = set(ort.get_available_providers())
    chosen = []
    for p in providers:
        full = PROVIDER_ALIASES.get(p.strip().lower(), p.strip())
        if full not in available:
            warnings.warn(
                f"execution provider {p!r} is not available in this onnxruntime "
                f"(available: {', '.join(sorted(available))}); using the CPU instead",
                stacklevel=2,
            )
            continue
        if full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def make_run_options():
    """A fresh ``onnxruntime.RunOptions``: pass it to :meth:`EdgeSamModel.encode` (or
    ``Predictor.embed(run_options=...)``) and set ``.terminate = True`` from another thread to
    stop that run early (it then raises; nothing is cached)."""
    import onnxruntime as ort

    return ort.RunOptions()


def _describe(args) -> dict[str, tuple[str, tuple]]:
    out = {}
    for a in args:
        shape = tuple(d if isinstance(d, int) else None for d in a.shape)
        out[a.name] = (_ORT_TYPES.get(a.type, a.type), shape)
    return out


def check_signature(session, role: str, path: Path | str = "") -> None:
    """Compare a session's inputs and outputs with the contract for ``role``.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    role : {"encoder", "decoder"}
    path : path, optional
        Named in the error message.

    Raises
    ------
    ModelSignatureError
        Naming the file, what was expected and what differs. A decoder given as encoder (or
        the reverse) is recognised and said so.
    """
    expected_in = contract.ENCODER_INPUTS if role == "encoder" else contract.DECODER_INPUTS
    expected_out = contract.ENCODER_OUTPUTS if role == "encoder" else contract.DECODER_OUTPUTS
    got_in, got_out = _describe(session.get_inputs()), _describe(session.get_outputs())
    name = Path(path).name or role
    other_in = contract.DECODER_INPUTS if role == "encoder" else contract.ENCODER_INPUTS
    if set(got_in) == set(other_in) and set(got_in) != set(expected_in):
        other = "decoder" if role == "encoder" else "encoder"
        raise ModelSignatureError(
            f"{name} looks like an EdgeSAM {other}, but it was given as the {role} "
            f"(its inputs are {', '.join(got_in)}); swap the two files"
        )
    problems = []
    for kind, expected, got in (("input", expected_in, got_in), ("output", expected_out, got_out)):
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing:
            problems.append(f"missing {kind}(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected {kind}(s) {', '.join(extra)}")
        for k in expected.keys() & got.keys():
            (e_type, e_shape), (g_type, g_shape) = expected[k], got[k]
            if e_type != g_type:
                problems.append(f"{kind} {k} has type {g_type}, expected {e_type}")
            if len(e_shape) != len(g_shape):
                problems.append(f"{kind} {k} has rank {len(g_shape)}, expected {len(e_shape)}")
                continue
            for axis, (e, g) in enumerate(zip(e_shape, g_shape, strict=True)):
                if e is not None and g is not None and e != g:
                    problems.append(
                        f"{kind} {k} has size {g} on axis {axis}, expected {e} "
                        f"(shape {_fmt(g_shape)}, expected {_fmt(e_shape)})"
                    )
                    break
    if problems:
        raise ModelSignatureError(
            f"{name} is not an EdgeSAM {role}: " + "; ".join(problems)
        )


def _fmt(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class EdgeSamModel:
    """An EdgeSAM encoder/decoder pair of ONNX files.

    Parameters
    ----------
    encoder, decoder : path
        ONNX files honouring the EdgeSAM contract (see :mod:`.contract`).
    name : str, optional
        Shown in messages and stored with results (e.g. ``"edgesam-3x"``, or ``"custom"``).
    providers : str or list of str, optional
        Execution providers (see :func:`resolve_providers`); default CPU.
    num_threads : int, optional
        onnxruntime intra-op threads; default: the CPU cores this process may use.
    sha256 : dict, optional
        Known SHA-256 of the files (``{"encoder": ..., "decoder": ...}``) so they need not be
        hashed again.

    Notes
    -----
    Files are checked when first used (or by :meth:`load`): a missing file raises
    :class:`ModelNotAvailableError`, a corrupt or non-ONNX file :class:`ModelError`, a file
    with the wrong inputs/outputs :class:`ModelSignatureError`.
    """

    def __init__(
        self,
        encoder,
        decoder,
        *,
        name: str | None = None,
        providers=None,
        num_threads: int | None = None,
        sha256: dict | None = None,
    ):
        self.encoder_path = Path(encoder)
        self.decoder_path = Path(decoder)
        self.name = name or "custom"
        self.providers = providers
        self.num_threads = num_threads
        self._sha256 = dict(sha256 or {})
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def __repr__(self):
        return (
            f"EdgeSamModel(name={self.name!r}, encoder={str(self.encoder_path)!r}, "
            f"decoder={str(self.decoder_path)!r})"
        )

    @classmethod
    def from_name(cls, name: str | None = None, *, model_dir=None, download: bool = False,
                  progress=None, licence_notice=None, **kwargs) -> EdgeSamModel:
        """Find a published model by name (see :func:`.models.resolve_model`) and wrap it."""
        from .models import resolve_model

        resolved = resolve_model(
            name, model_dir=model_dir, download=download, progress=progress,
            licence_notice=licence_notice,
        )
        return cls(resolved.encoder, resolved.decoder, name=resolved.name,
                   sha256=resolved.sha256, **kwargs)

    # -- sessions ---------------------------------------------------------------------
    def _make_session(self, role: str):
        import onnxruntime as ort

        path = self.encoder_path if role == "encoder" else self.decoder_path
        if not path.is_file():
            raise ModelNotAvailableError(f"{role} file not found: {path}")
        if path.stat().st_size == 0:
            raise ModelError(f"{role} file {path} is empty (an interrupted download?)")
        opts = ort.SessionOptions()
        # Threads matching the machine: the cores this process may use (containers and
        # affinity masks included), unless the caller says otherwise.
        opts.intra_op_num_threads = int(self.num_threads or default_num_threads())
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=resolve_providers(self.providers)
            )
        except Exception as exc:  # onnxruntime raises several private exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{role} file {path} is not a loadable ONNX model (truncated or corrupt?): "
                f"{first[:300]}"
            ) from exc
        check_signature(session, role, path)
        return session

    def session(self, role: str):
        """The onnxruntime session for ``role`` ("encoder" or "decoder"), created once."""
        s = self._sessions.get(role)
        if s is None:
            with self._lock:
                s = self._sessions.get(role)
                if s is None:
                    s = self._sessions[role] = self._make_session(role)
        return s

    def load(self) -> EdgeSamModel:
        """Create both sessions now (checking both files); returns ``self``."""
        self.session("encoder")
        self.session("decoder")
        return self

    @property
    def identity(self) -> str:
        """SHA-256 of the encoder file: what makes embeddings of this model unique."""
        h = self._sha256.get("encoder")
        if h is None:
            if not self.encoder_path.is_file():
                raise ModelNotAvailableError(f"encoder file not found: {self.encoder_path}")
            from .models import file_sha256

            h = self._sha256["encoder"] = file_sha256(self.encoder_path)
        return h

    # -- raw runs ---------------------------------------------------------------------
    def encode(self, tensor: np.ndarray, run_options=None) -> np.ndarray:
        """Run the encoder on a preprocessed tensor.

        Parameters
        ----------
        tensor : ndarray of float32, shape (1, 3, 1024, 1024)
            Output of :func:`.transforms.preprocess` (1024 frame, normalised, padded).
        run_options : onnxruntime.RunOptions, optional
            For example to terminate a run early.

        Returns
        -------
        ndarray of float32, shape (1, 256, 64, 64)
        """
        if tensor.shape != (1, 3, contract.IMAGE_SIZE, contract.IMAGE_SIZE):
            raise InvalidInputError(f"encoder input must be (1, 3, 1024, 1024), got {tensor.shape}")
        (emb,) = self.session("encoder").run(
            ["image_embeddings"], {"image": tensor.astype(np.float32, copy=False)}, run_options
        )
        return emb

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        """Run the decoder on one prompt set.

        Parameters
        ----------
        embedding : ndarray of float32, shape (1, 256, 64, 64)
        coords : ndarray of float32, shape (1, N, 2)
            ``(x, y)`` in the 1024 frame (padding point included where needed).
        labels : ndarray of float32, shape (1, N)
            Contract labels (1, 0, 2, 3, -1).

        Returns
        -------
        scores : ndarray of float32, shape (1, 4)
            Whatever the file's ``scores`` output means (stability or IoU head).
        masks : ndarray of float32, shape (1, 4, 256, 256)
            Logits in the low-res frame.
        """
        scores, masks = self.session("decoder").run(
            ["scores", "masks"],
            {
                "image_embeddings": np.asarray(embedding, dtype=np.float32),
                "point_coords": np.asarray(coords, dtype=np.float32),
                "point_labels": np.asarray(labels, dtype=np.float32),
            },
        )
        return scores, masks


def default_num_threads() -> int:
    """Number of CPU cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
