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

__all__ = [
    "THREAD_POLICIES",
    "EdgeSamModel",
    "check_signature",
    "make_run_options",
    "resolve_providers",
    "session_options",
    "thread_policy",
]

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

#: How the sessions made here share the CPU (:func:`session_options`), by name:
#: ``"spin"``: every session's idle threads spin-wait (onnxruntime's default, and this
#: project's until issue 17); ``"encoder-no-spin"``: spinning off on the encoder, the
#: session that runs rarely; ``"no-spin"``: spinning off on every session;
#: ``"stop-after-run"``: threads spin during a run and stop spinning when it returns
#: (``session.force_spinning_stop``); ``"global"``: onnxruntime's process-wide thread pools,
#: shared with every other onnxruntime user in the process (other napari plugins too),
#: created once and never resized, spinning on (no spin control from Python).
THREAD_POLICIES = ("spin", "encoder-no-spin", "no-spin", "stop-after-run", "global")

#: The policy used when neither the caller nor ``settings.json`` chooses one; chosen by
#: measurement (see :class:`EdgeSamModel` and docs/performance.md, "Session tuning").
DEFAULT_THREAD_POLICY = "encoder-no-spin"

#: ``settings.json`` key naming a policy of :data:`THREAD_POLICIES` for every session made
#: without an explicit ``thread_policy``.
THREAD_POLICY_SETTING = "thread_pool_policy"

_SPIN_OFF = "session.intra_op.allow_spinning"
_SPIN_STOP = "session.force_spinning_stop"
_global_pools: dict = {}  # "intra": threads asked for when this process created them
_global_lock = threading.Lock()

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


def thread_policy(policy: str | None = None) -> str:
    """The thread-pool policy to use: ``policy`` if given, else the ``settings.json`` key
    :data:`THREAD_POLICY_SETTING`, else :data:`DEFAULT_THREAD_POLICY`.

    Parameters
    ----------
    policy : str, optional
        One of :data:`THREAD_POLICIES`.

    Returns
    -------
    str
        One of :data:`THREAD_POLICIES`.

    Raises
    ------
    ValueError
        For an unknown ``policy``. An unknown value in ``settings.json`` is not an error: it
        is reported with a warning and the default is used.
    """
    if policy is not None:
        if policy not in THREAD_POLICIES:
            raise ValueError(f"unknown thread policy {policy!r}; expected one of "
                             f"{', '.join(THREAD_POLICIES)}")
        return policy
    from .paths import get_setting

    chosen = get_setting(THREAD_POLICY_SETTING, DEFAULT_THREAD_POLICY)
    if chosen not in THREAD_POLICIES:
        warnings.warn(f"settings.json: {THREAD_POLICY_SETTING} = {chosen!r} is not one of "
                      f"{', '.join(THREAD_POLICIES)}; using {DEFAULT_THREAD_POLICY!r}",
                      stacklevel=2)
        return DEFAULT_THREAD_POLICY
    return chosen


def _ensure_global_pools(num_threads: int) -> None:
    """Create onnxruntime's process-wide thread pools once (``num_threads`` intra-op, one
    inter-op: sessions run their nodes sequentially). If something else in the process made
    them first, theirs are used as they are: they can be neither resized nor replaced."""
    from onnxruntime.capi import _pybind_state

    with _global_lock:
        if _global_pools:
            return
        try:
            _pybind_state.set_global_thread_pool_sizes(int(num_threads), 1)
            _global_pools["intra"] = int(num_threads)
        except Exception:  # noqa: BLE001 - "already created": another user's pools
            _global_pools["intra"] = None


def session_options(role: str, *, num_threads: int | None = None,
                    policy: str | None = None):
    """The ``onnxruntime.SessionOptions`` for one session this project makes.

    Parameters
    ----------
    role : str
        ``"encoder"``, ``"decoder"`` or another name of a decoder part
        (``"decoder_image"``, ``"decoder_prompt"``); only ``"encoder"`` runs rarely.
    num_threads : int, optional
        Intra-op threads; default :func:`default_num_threads` (the cores this process may
        use). Under the ``"global"`` policy it sizes the process-wide pools if this call
        creates them.
    policy : str, optional
        One of :data:`THREAD_POLICIES`; default :func:`thread_policy` (settings, then
        :data:`DEFAULT_THREAD_POLICY`).

    Returns
    -------
    onnxruntime.SessionOptions
        Warnings-only logging, the threads, and the policy's config entries
        (``session.intra_op.allow_spinning``, ``session.force_spinning_stop``) or
        ``use_per_session_threads = False``.
    """
    import onnxruntime as ort

    policy = thread_policy(policy)
    threads = int(num_threads or default_num_threads())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if policy == "global":
        _ensure_global_pools(threads)
        opts.use_per_session_threads = False
        return opts
    # Threads matching the machine: the cores this process may use (containers and
    # affinity masks included), unless the caller says otherwise.
    opts.intra_op_num_threads = threads
    if policy == "no-spin" or (policy == "encoder-no-spin" and role == "encoder"):
        opts.add_session_config_entry(_SPIN_OFF, "0")
    elif policy == "stop-after-run":
        opts.add_session_config_entry(_SPIN_STOP, "1")
    return opts


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
    thread_policy : str, optional
        How the two sessions share the CPU, one of :data:`THREAD_POLICIES`; default: the
        ``settings.json`` key ``"thread_pool_policy"``, else :data:`DEFAULT_THREAD_POLICY`.
        Read when a session is created.

    Notes
    -----
    Files are checked when first used (or by :meth:`load`): a missing file raises
    :class:`ModelNotAvailableError`, a corrupt or non-ONNX file :class:`ModelError`, a file
    with the wrong inputs/outputs :class:`ModelSignatureError`.

    **Thread pools** (:func:`session_options`, the one place sessions' options are made).
    Each session has its own intra-op pool whose idle threads spin-wait after a run; with two
    spinning sessions the run that follows the other session's run competes with its spinning
    threads. The default policy, ``"encoder-no-spin"``, turns spinning off on the encoder only:
    the encoder runs once per slice and its run is long, so waking its threads costs nothing
    measurable, while the decoder, run click after click with many small operators, keeps
    spinning. Measured with ``benchmarks/bench_threads.py`` on the architecture-faithful
    random-weight model (2 threads, 2-core shared machine, medians of 15-21 interleaved rounds,
    each sequence after a 250 ms idle gap, beside raw onnxruntime sessions made in the same
    run; three runs, one at load average 1, two at 4-6): a decoder run right after an encoder
    run / the same run alone was 1.74 (quiet) and 1.32-1.34 (loaded) with spinning everywhere
    (onnxruntime's default, this project's until issue 17), 0.95-1.04 with this policy; an
    encoder run after a decoder run 1.03-1.07; the isolated runs 0.96-1.06 of today's (the
    encoder once 0.70, under load; two identically made sessions differ by up to 13 % on this
    machine). Spinning off everywhere and ``session.force_spinning_stop`` passed the quiet run
    (0.91, 0.86) but not the loaded ones (1.13-1.18; 1.03-1.20, encoder after decoder
    1.11-1.15); onnxruntime's global pools gave 0.96-1.08 (encoder after decoder 1.05-1.10)
    and are shared with every other onnxruntime user of the process (other napari plugins),
    made once per process, without spin control from Python. Choose another policy with
    ``thread_policy=`` or the ``settings.json`` key ``"thread_pool_policy"``. See
    docs/performance.md, "Session tuning".
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
        thread_policy: str | None = None,
    ):
        self.encoder_path = Path(encoder)
        self.decoder_path = Path(decoder)
        self.name = name or "custom"
        self.providers = providers
        self.num_threads = num_threads
        self._sha256 = dict(sha256 or {})
        if thread_policy is not None and thread_policy not in THREAD_POLICIES:
            raise ValueError(f"unknown thread policy {thread_policy!r}; expected one of "
                             f"{', '.join(THREAD_POLICIES)}")
        self.thread_policy = thread_policy
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
        opts = session_options(role, num_threads=self.num_threads, policy=self.thread_policy)
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
