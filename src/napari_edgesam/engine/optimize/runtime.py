"""The runtime model: what the predictor loads when optimised variants are used.

:class:`OptimizedEdgeSamModel` runs variant files. A split decoder's prompt-independent
*image part* is computed once per embedding, by the predictor right after the encoder
(:meth:`OptimizedEdgeSamModel.decoder_image_part`), kept with the embedding under
:attr:`OptimizedEdgeSamModel.decoder_part_key` and passed to
:meth:`OptimizedEdgeSamModel.decode`; an embedding that comes without it (made elsewhere)
falls back to a small memo by array identity. :func:`load_optimized`,
:func:`optimized_or_original` and :func:`load_variant` pick the variants whose records say
they passed. Only records are read: no building, no checking, no ``onnx``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..session import EdgeSamModel
from .records import VariantResult, find_variants
from .variants import PREFERENCE

_log = logging.getLogger(__name__)


class OptimizedEdgeSamModel(EdgeSamModel):
    """An :class:`EdgeSamModel` running optimised variant files of a source model.

    ``encoder_path``/``decoder_path`` point at contract-compatible files (the variant's or
    the source's), so anything that recreates a model from the paths (batch workers) gets
    the same model. When the decoder variant was split, the prompt-independent *image part*
    runs once per embedding (:meth:`decoder_image_part`; the predictor does it right after
    the encoder and keeps the result with the embedding) and :meth:`decode` runs only the
    prompt part per call.

    Parameters
    ----------
    source : EdgeSamModel
        The float32 original.
    encoder, decoder : path
        Files to run.
    decoder_parts : (path, path), optional
        ``(image part, prompt part)`` of the split decoder.
    variants : dict, optional
        kind -> :class:`VariantResult` of the variants in use; ``"decoder-batch"`` (role
        ``prompt-batch``) among them means automatic segmentation decodes its seeds in
        batches with it (:func:`~.prompt_batch_runtime.batch_decoder_for`); the plain
        :class:`EdgeSamModel` never does.
    memo_size : int
        How many embeddings' image parts :meth:`decode` remembers for embedding arrays that
        come without theirs (each about 10 MiB for EdgeSAM); the predictor's path never
        uses this memo.
    """

    def __init__(self, source: EdgeSamModel, encoder, decoder, *, decoder_parts=None,
                 variants: dict | None = None, memo_size: int = 2, sha256: dict | None = None):
        kinds = list(variants or {})
        super().__init__(
            encoder, decoder, name="+".join([source.name, *kinds]),
            providers=source.providers, num_threads=source.num_threads, sha256=sha256,
            thread_policy=getattr(source, "thread_policy", None),
        )
        self.source = source
        self.variants = dict(variants or {})
        self.decoder_parts = tuple(Path(p) for p in decoder_parts) if decoder_parts else None
        self._memo: list[tuple[np.ndarray, float, dict]] = []
        self._memo_size = max(1, int(memo_size))
        self._memo_lock = threading.Lock()
        self._part_key: str | None = None

    def __repr__(self):
        return (f"OptimizedEdgeSamModel(name={self.name!r}, encoder={str(self.encoder_path)!r}, "
                f"decoder={str(self.decoder_path)!r}, split={self.decoder_parts is not None})")

    def _make_session(self, role: str):
        if role not in ("decoder_image", "decoder_prompt"):
            return super()._make_session(role)
        import onnxruntime as ort

        from ..session import resolve_providers, session_options

        path = self.decoder_parts[0 if role == "decoder_image" else 1]
        # the same thread policy as the model's other sessions (engine.session)
        opts = session_options(role, num_threads=self.num_threads, policy=self.thread_policy)
        try:
            s = ort.InferenceSession(str(path), sess_options=opts,
                                     providers=resolve_providers(self.providers))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"optimised decoder part {path} cannot be loaded: {exc}") from exc
        if role == "decoder_prompt":
            names = {o.name for o in s.get_outputs()}
            if not {"scores", "masks"} <= names:
                raise ModelError(f"optimised decoder part {path} lacks scores/masks outputs")
        return s

    def load(self) -> OptimizedEdgeSamModel:
        """Create every session now (the split decoder's two parts too); returns self."""
        super().load()
        if self.decoder_parts:
            self.session("decoder_image")
            self.session("decoder_prompt")
        return self

    @property
    def decoder_part_key(self) -> str | None:
        """What names this model's decoder image part, or None without a split decoder.

        ``"<kind>:<SHA-256 of the image part file>"``: the tensors of one variant's image
        part are never given to another variant's prompt part, nor to the plain decoder.
        """
        if not self.decoder_parts:
            return None
        if self._part_key is None:
            from ..file_hash import file_sha256

            kind = next((k for k, r in self.variants.items()
                         if getattr(r, "role", None) == "decoder"), "decoder")
            self._part_key = f"{kind}:{file_sha256(self.decoder_parts[0])}"
        return self._part_key

    def decoder_image_part(self, embedding: np.ndarray, run_options=None) -> dict:
        """Run the split decoder's prompt-independent image part once (no memo).

        Parameters
        ----------
        embedding : ndarray of float32, shape (1, 256, 64, 64)
        run_options : onnxruntime.RunOptions, optional
            Lets another thread terminate the run (prefetching).

        Returns
        -------
        dict
            Boundary tensor name -> read-only ndarray (float32 for EdgeSAM, about 10 MiB in
            all), the inputs :meth:`decode` takes as ``image_part``.

        Raises
        ------
        ModelError
            When the decoder is not split.
        """
        if not self.decoder_parts:
            raise ModelError(f"{self.name} has no split decoder")
        s = self.session("decoder_image")
        vals = s.run(None, {"image_embeddings": np.asarray(embedding, dtype=np.float32)},
                     run_options)
        out = dict(zip([o.name for o in s.get_outputs()], vals, strict=True))
        for v in out.values():
            v.flags.writeable = False
        return out

    @staticmethod
    def _fingerprint(a: np.ndarray) -> float:
        flat = a.reshape(-1)
        return float(flat[:: max(1, flat.size // 1024)].sum(dtype=np.float64))

    def image_part(self, embedding: np.ndarray) -> dict:
        """The image part for ``embedding``, remembered by array identity (the fallback for
        embeddings that come without theirs; see :meth:`decoder_image_part`).

        Parameters
        ----------
        embedding : ndarray of float32, shape (1, 256, 64, 64)

        Returns
        -------
        dict
            Input name -> array for the prompt part.
        """
        emb = np.asarray(embedding, dtype=np.float32)
        fp = self._fingerprint(emb)
        with self._memo_lock:
            for i, (arr, f, out) in enumerate(self._memo):
                if arr is emb and f == fp:
                    self._memo.append(self._memo.pop(i))
                    return out
            out = self.decoder_image_part(emb)
            self._memo.append((emb, fp, out))
            del self._memo[:-self._memo_size]
            return out

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, *,
               image_part: dict | None = None):
        """Run the decoder (see :meth:`EdgeSamModel.decode`).

        Parameters
        ----------
        embedding, coords, labels
            As for :meth:`EdgeSamModel.decode`.
        image_part : dict, optional
            This model's :meth:`decoder_image_part` of ``embedding`` (the caller vouches for
            both: the predictor checks :attr:`decoder_part_key`); only the prompt part runs.
            Without it a split decoder computes the image part once per embedding array
            (memo). Ignored when the decoder is not split.
        """
        if not self.decoder_parts:
            return super().decode(embedding, coords, labels)
        feeds = image_part if image_part is not None else self.image_part(embedding)
        s = self.session("decoder_prompt")
        wanted = {i.name for i in s.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        if "image_embeddings" in wanted:
            feeds["image_embeddings"] = np.asarray(embedding, dtype=np.float32)
        feeds["point_coords"] = np.asarray(coords, dtype=np.float32)
        feeds["point_labels"] = np.asarray(labels, dtype=np.float32)
        scores, masks = s.run(["scores", "masks"], feeds)
        return scores, masks


def _model_with(source: EdgeSamModel, results: Sequence[VariantResult],
                use_split: bool = True) -> EdgeSamModel:
    enc = dec = None
    parts = None
    used = {}
    sha = {}
    for r in results:
        if r.role == "encoder" and enc is None:
            enc = r.path("model")
            used[r.kind] = r
        elif r.role == "decoder" and dec is None:
            dec = r.path("model")
            if use_split and r.path("image") and r.path("prompt"):
                parts = (r.path("image"), r.path("prompt"))
            used[r.kind] = r
        elif r.role == "prompt-batch" and r.kind not in used:
            # run beside the decoder by batch work (see prompt_batch_runtime): named in
            # ``variants`` so that only an optimised model uses it
            used[r.kind] = r
    if not used:
        return source
    if enc is None:
        sha["encoder"] = source.identity
    return OptimizedEdgeSamModel(
        source, enc or source.encoder_path, dec or source.decoder_path, decoder_parts=parts,
        variants=used, sha256=sha,
    )


def optimized_or_original(model: EdgeSamModel) -> tuple[EdgeSamModel, str]:
    """:func:`load_optimized` with a sentence for the user saying what runs and why.

    Parameters
    ----------
    model : EdgeSamModel
        The original model (an :class:`OptimizedEdgeSamModel` is traced to its source).

    Returns
    -------
    (EdgeSamModel, str)
        The variants that passed (or ``model``), and e.g. ``"running <name> (optimised
        variants that agreed ...)"`` or why the original runs and how to make variants.
    """
    report: list = []
    optimized = load_optimized(model, report=report)
    if optimized is model:
        why = "; ".join(f"{r.kind}: {r.status}" for r in report) or "none made"
        return model, (f"no optimised variant of {model.name} passed its check here ({why}); "
                       "running the original. Make them with 'napari-edgesam optimize "
                       "IMAGES' on a few of your images.")
    return optimized, (f"running {optimized.name} (optimised variants that agreed with the "
                       "original on your images).")


def load_optimized(model: EdgeSamModel, kinds: Sequence[str] | None = None, *,
                   report: list | None = None) -> EdgeSamModel:
    """The model with every variant that passed its agreement check, else ``model`` itself.

    Only records are read (no building, no checking, no ``onnx`` needed). For each role the
    first passing kind of :data:`PREFERENCE` is used. A record made from another source
    file version or another onnxruntime version, or whose files changed, is not used.

    Parameters
    ----------
    model : EdgeSamModel
        The original model.
    kinds : sequence of str, optional
        Restrict to these kinds (default: all built-in kinds).
    report : list, optional
        Receives one :class:`VariantResult` per kind considered (with the reason when it is
        not used).

    Returns
    -------
    EdgeSamModel
        An :class:`OptimizedEdgeSamModel` (its ``identity``, the SHA-256 of its encoder
        file, differs from the original's when the encoder variant is used, so cached
        embeddings never mix), or ``model`` when nothing passed. A passing ``decoder-batch``
        is in its ``variants`` too (alone, it gives an OptimizedEdgeSamModel running the
        original files, whose automatic segmentation is batched).
    """
    model = getattr(model, "source", None) or model
    found = find_variants(model, kinds)
    if report is not None:
        report.extend(found.values())
    order = [k for k in PREFERENCE if k in found] + [k for k in found if k not in PREFERENCE]
    chosen = [found[k] for k in order if found[k].enabled]
    for k in order:
        if not found[k].enabled and found[k].status != "missing":
            _log.info("optimised variant %s not used: %s", k, found[k].reason)
    return _model_with(model, chosen)


def load_variant(model: EdgeSamModel, kind: str, *, require_passed: bool = True,
                 use_split: bool = True) -> EdgeSamModel:
    """One variant of ``model`` (for benchmarks and diagnostics).

    Parameters
    ----------
    model : EdgeSamModel
    kind : str
    require_passed : bool
        When False, a refused or unchecked variant is loaded too (never do this for real
        work: its masks were not shown to agree with the original).
    use_split : bool
        Use the split decoder (image part remembered per embedding) when there is one.

    Raises
    ------
    ModelError
        When the variant is not built here (or did not pass, with ``require_passed``).
    """
    model = getattr(model, "source", None) or model
    r = find_variants(model, [kind])[kind]
    ok = r.enabled or (not require_passed and r.status in ("refused", "unchecked"))
    if not ok:
        raise ModelError(f"variant {kind} is not usable: {r.status} ({r.reason})")
    return _model_with(model, [r], use_split=use_split)
