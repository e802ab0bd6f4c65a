"""Prompted prediction: image -> embedding, prompts -> mask.

The split mirrors segment-anything's ``SamPredictor``: :meth:`Predictor.set_image` runs the
expensive encoder once per slice (through the embedding cache), :meth:`Predictor.predict`
runs only the small decoder per prompt set. Embeddings are explicit :class:`Embedding`
objects so that workflows (propagation, batch) can keep several and share them.

Where the plugin differs from EdgeSAM's reference ONNX predictor it is the more correct one:

- the padding point ``(0, 0)`` with label -1 is appended when there is no box (the reference
  ONNX predictor forgets it and so differs from the PyTorch model);
- the mask is chosen by *stability score* computed here from the logits (NaN-safe), whatever
  the file's ``scores`` output means (the IoU head was never distilled and is unreliable);
- only the chosen mask is upsampled, and only where it can be positive.

With a split decoder (an optimised variant, see :mod:`.optimize`) the prompt-independent
*image part* of the decoder runs in :meth:`Predictor.embed`, right after the encoder (or the
cache hit), and travels with the :class:`Embedding` as its :class:`DecoderPart`: the first
click on a slice then costs what later clicks cost. :meth:`Predictor.decode_low_res_batch`
decodes many prompt sets per run with the prompt-batched decoder (``decoder-batch``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from . import contract
from .errors import InvalidInputError
from .intensity import IntensityMapping, as_model_image, mapping_for, validate_image
from .mask_choice import choose_mask, low_res_choice, stability_scores
from .session import EdgeSamModel
from .transforms import coords_to_model, preprocess, resized_shape, upsampler

__all__ = [
    "DecoderPart",
    "Embedding",
    "Prediction",
    "PreparedSlice",
    "Predictor",
    "choose_mask",
    "prepare_prompts",
    "stability_scores",
]


@dataclass(frozen=True)
class DecoderPart:
    """A split decoder's prompt-independent tensors for one embedding.

    Attributes
    ----------
    variant : str
        The model's ``decoder_part_key`` (the decoder variant and its image part file's
        SHA-256): only a model with this key uses the tensors.
    tensors : dict
        Boundary tensor name -> read-only ndarray (float32 for EdgeSAM; about 10 MiB in all),
        the prompt part's image-side inputs.
    cached : bool
        True when it came from the cache's memory store (no image part run).
    """

    variant: str
    tensors: dict = field(repr=False)
    cached: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors."""
        return sum(int(a.nbytes) for a in self.tensors.values())


def without_decoder_part(embedding):
    """``embedding`` without its :class:`DecoderPart` (for memos that keep many embeddings:
    4 MiB each instead of about 14; :meth:`Predictor.with_decoder_part` gives it back)."""
    if getattr(embedding, "decoder_part", None) is None:
        return embedding
    return replace(embedding, decoder_part=None)


def part_key(key: str, variant: str) -> str:
    """Cache key of a decoder image part: the embedding's key and the decoder variant."""
    return f"{key}|dec={variant}"


@dataclass(frozen=True)
class Embedding:
    """The encoder's output for one 2D slice, with the geometry needed to use it.

    Attributes
    ----------
    features : ndarray of float32, shape (1, 256, 64, 64)
    original_size : (int, int)
        ``(H, W)`` of the slice in original pixels.
    resized_size : (int, int)
        ``(new_h, new_w)``: the part of the 1024 frame the slice occupies.
    key : str or None
        Embedding cache key (None when computed without one).
    cached : bool
        True when it came from the embedding cache (no encoder run).
    decoder_part : DecoderPart or None
        The split decoder's image part of ``features`` for the model that made this
        embedding (None when its decoder is not split).
    """

    features: np.ndarray
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    key: str | None = None
    cached: bool = False
    decoder_part: DecoderPart | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PreparedSlice:
    """Everything :meth:`Predictor.embed` does before the encoder, for one slice
    (:meth:`Predictor.prepare`): the cache key and either the cached embedding or the
    encoder's input tensor.

    Attributes
    ----------
    original_size : (int, int)
        ``(H, W)`` of the slice.
    resized_size : (int, int)
        ``(new_h, new_w)`` in the 1024 frame.
    key : str or None
        Embedding cache key (None without a cache).
    features : ndarray of float32, shape (1, 256, 64, 64), or None
        The cached embedding (then ``tensor`` is None).
    tensor : ndarray of float32, shape (1, 3, 1024, 1024), or None
        The encoder's input (mapped, resized, normalised, padded) on a cache miss.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    key: str | None = None
    features: np.ndarray | None = field(default=None, repr=False)
    tensor: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Prediction:
    """One predicted mask.

    Attributes
    ----------
    mask : ndarray of bool, shape (H, W)
        Original frame.
    score : float
        Stability score of the chosen mask (NaN when undefined: no logit above -1).
    mask_index : int
        Which of the decoder's 4 masks was chosen (0 for box prompts).
    low_res_logits : ndarray of float32, shape (256, 256)
        Logits of the chosen mask in the low-res frame (the padded 1024 frame at 1/4).
    scores : ndarray of float32, shape (4,)
        Stability scores of all 4 masks (NaN where undefined).
    file_scores : ndarray of float32, shape (4,)
        The decoder file's own ``scores`` output, for information.
    """

    mask: np.ndarray
    score: float
    mask_index: int
    low_res_logits: np.ndarray
    scores: np.ndarray
    file_scores: np.ndarray = field(repr=False)

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))


def _check_point(x: float, y: float, size: tuple[int, int], what: str) -> None:
    h, w = size
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InvalidInputError(f"{what} ({x}, {y}) is not finite")
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise InvalidInputError(
            f"{what} (x={x:g}, y={y:g}) lies outside the {w} x {h} (width x height) image; "
            "x is the column and y the row, in pixels of the image"
        )


def prepare_prompts(
    original_size: tuple[int, int],
    points=None,
    labels=None,
    box=None,
    resized: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate prompts and convert them to the decoder's inputs.

    Parameters
    ----------
    original_size : (int, int)
        ``(H, W)`` of the slice.
    points : array-like, shape (N, 2), optional
        Clicks as ``(x, y) = (col, row)`` in original pixels, inside the image.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative; default all positive.
    box : array-like, shape (4,), optional
        ``(x0, y0, x1, y1)`` in original pixels with ``x0 <= x1`` and ``y0 <= y1`` (normalise
        boxes drawn in other directions before calling).
    resized : (int, int), optional
        ``(new_h, new_w)``; computed from ``original_size`` when omitted.

    Returns
    -------
    coords : ndarray of float32, shape (1, M, 2)
        1024 frame; box corners (labels 2, 3) after the clicks; or the padding point
        ``(0, 0)`` with label -1 appended when there is no box.
    point_labels : ndarray of float32, shape (1, M)
    has_box : bool

    Raises
    ------
    InvalidInputError
        No prompt at all, points or box outside the image, labels other than 0/1, a box with
        ``x1 < x0`` or ``y1 < y0`` or zero area, mismatched lengths, non-finite values.
    """
    pts = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InvalidInputError(f"points must have shape (N, 2) as (x, y); got {pts.shape}")
    if labels is None:
        labs = np.ones(len(pts))
    else:
        labs = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(labs) != len(pts):
        raise InvalidInputError(f"{len(pts)} points but {len(labs)} labels")
    if not np.isin(labs, (contract.LABEL_NEGATIVE, contract.LABEL_POSITIVE)).all():
        raise InvalidInputError(f"point labels must be 1 (positive) or 0 (negative); got {labs}")
    for (x, y) in pts:
        _check_point(x, y, original_size, "point")
    has_box = box is not None
    if has_box:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,):
            raise InvalidInputError(f"a box is (x0, y0, x1, y1); got {b.shape[0]} values")
        x0, y0, x1, y1 = b
        _check_point(x0, y0, original_size, "box corner")
        _check_point(x1, y1, original_size, "box corner")
        if x1 < x0 or y1 < y0:
            raise InvalidInputError(
                f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has x1 < x0 or y1 < y0; "
                "give the top-left corner first"
            )
        if x1 == x0 or y1 == y0:
            raise InvalidInputError(
                f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has zero area: give two "
                "opposite corners of the object's box"
            )
        pts = np.concatenate([pts, [[x0, y0], [x1, y1]]])
        labs = np.concatenate([labs, [contract.LABEL_BOX_TOP_LEFT,
                                      contract.LABEL_BOX_BOTTOM_RIGHT]])
    if len(pts) == 0:
        raise InvalidInputError("no prompt: give at least one point or a box")
    if not has_box and not (labs == contract.LABEL_POSITIVE).any():
        raise InvalidInputError("only negative points: add a positive point or a box")
    coords = coords_to_model(pts, original_size, resized)
    if not has_box:
        coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
        labs = np.concatenate([labs, [contract.LABEL_PADDING]])
    return coords[None].astype(np.float32), labs[None].astype(np.float32), has_box


def pixel_digest(image: np.ndarray) -> str:
    """BLAKE2b digest of a slice's pixels, shape and dtype (part of the cache key)."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.dtype.str}{image.shape}".encode())
    h.update(memoryview(image).cast("B"))
    return h.hexdigest()


def embedding_key(model_identity: str, pixels: str, mapping: IntensityMapping,
                  tile: str = "full") -> str:
    """Cache key of an embedding: model file, pixels, intensity mapping, preprocessing version
    and tile geometry (``"full"`` for the whole slice)."""
    return (
        f"m={model_identity}|px={pixels}|map={mapping.key()}"
        f"|pre={contract.PREPROCESSING_VERSION}|tile={tile}"
    )


class Predictor:
    """Encode slices and predict masks from prompts with one EdgeSAM model.

    Parameters
    ----------
    model : EdgeSamModel
    cache : EmbeddingCache, None or "default"
        Where embeddings are looked up and stored (anything with ``get(key)`` and
        ``put(key, array)``; with ``get_part``/``put_part`` too, split decoders' image parts
        are kept there). ``"default"`` is the process-wide memory + disk cache; None
        disables caching.

    Examples
    --------
    >>> predictor = Predictor(EdgeSamModel("enc.onnx", "dec.onnx"))  # doctest: +SKIP
    >>> predictor.set_image(image)                                     # doctest: +SKIP
    >>> result = predictor.predict(points=[(120, 45)], labels=[1])     # doctest: +SKIP
    >>> result.mask.shape == image.shape[:2]                           # doctest: +SKIP
    True
    """

    def __init__(self, model: EdgeSamModel, cache="default"):
        self.model = model
        if isinstance(cache, str) and cache == "default":
            from .cache import default_cache

            cache = default_cache()
        self.cache = cache
        self.embedding: Embedding | None = None

    # -- encoder ----------------------------------------------------------------------
    def embed(
        self,
        image,
        mapping: IntensityMapping | None = None,
        *,
        rgb: bool | None = None,
        use_cache: bool = True,
        fill_cache: bool = True,
        run_options=None,
        tile: str = "full",
        prepared: PreparedSlice | None = None,
    ) -> Embedding:
        """Compute (or fetch from the cache) the embedding of one 2D slice.

        Parameters
        ----------
        image : array-like, shape (H, W), (H, W, 3) or (H, W, 4)
            One slice, original frame, any real dtype.
        mapping : IntensityMapping, optional
            Intensity mapping to the model's 0..255 scale; pass the stack-wide one for slices
            of a stack. Default: :func:`.intensity.default_mapping` of this slice.
        rgb : bool, optional
            Force the interpretation of a last axis of size 3/4.
        use_cache, fill_cache : bool
            Look the embedding up in / store it into the cache.
        run_options : onnxruntime.RunOptions, optional
            Lets a caller terminate the encoder run and the decoder's image part
            (prefetching).
        tile : str
            Geometry of the window this slice was cut from (see :mod:`.tiling`), part of
            the cache key; ``"full"`` for a whole slice.
        prepared : PreparedSlice, optional
            This slice already through :meth:`prepare` (with the same ``mapping``, ``rgb``,
            ``tile`` and cache flags): ``image`` is then not read and only the encoder (or
            nothing, on a cache hit) and the decoder's image part run. The pipeline of
            :mod:`.pipeline` prepares the next slice while the encoder runs.

        Returns
        -------
        Embedding
            With its :class:`DecoderPart` when the model's decoder is split (computed here,
            or from the cache's memory store of parts).
        """
        if prepared is None:
            prepared = self.prepare(image, mapping, rgb=rgb, use_cache=use_cache,
                                    fill_cache=fill_cache, tile=tile)
        return self._embed_prepared(prepared, run_options, fill_cache)

    def prepare(self, image, mapping: IntensityMapping | None = None, *,
                rgb: bool | None = None, use_cache: bool = True, fill_cache: bool = True,
                tile: str = "full") -> PreparedSlice:
        """The part of :meth:`embed` before the encoder: validation, the cache key, the
        cache lookup and, on a miss, the intensity mapping and the resize (thread-safe; no
        onnxruntime run).

        Parameters
        ----------
        image, mapping, rgb, use_cache, fill_cache, tile
            As for :meth:`embed`.

        Returns
        -------
        PreparedSlice
            For :meth:`embed` (``prepared=``).
        """
        image, is_rgb = validate_image(image, rgb=rgb)
        mapping = mapping_for(image, is_rgb, mapping)
        h, w = image.shape[:2]
        key = None
        if self.cache is not None and (use_cache or fill_cache):
            # The key needs only the raw pixels and the mapping: a hit skips the mapping,
            # the resize and the encoder.
            key = embedding_key(self.model.identity, pixel_digest(image), mapping, tile)
            if use_cache:
                hit = self.cache.get(key)
                if hit is not None:
                    return PreparedSlice((h, w), resized_shape(h, w), key,
                                         features=hit.astype(np.float32, copy=False))
        rgb_image, mapping = as_model_image(image, mapping, rgb=is_rgb, expand=False)
        tensor, resized = preprocess(rgb_image)
        return PreparedSlice((h, w), resized, key, tensor=tensor)

    def _embed_prepared(self, prepared: PreparedSlice, run_options,
                        fill_cache: bool) -> Embedding:
        """The part of :meth:`embed` from the encoder on (the encoder unless the embedding
        came from the cache, the cache's store, the decoder's image part)."""
        if prepared.features is not None:
            emb = Embedding(prepared.features, prepared.original_size, prepared.resized_size,
                            prepared.key, cached=True)
            return self.with_decoder_part(emb, run_options=run_options, fill_cache=fill_cache)
        features = self.model.encode(prepared.tensor, run_options)
        if prepared.key is not None and fill_cache:
            self.cache.put(prepared.key, features)
        emb = Embedding(features, prepared.original_size, prepared.resized_size, prepared.key)
        return self.with_decoder_part(emb, run_options=run_options, use_cache=False,
                                      fill_cache=fill_cache)

    def with_decoder_part(self, embedding: Embedding, *, run_options=None,
                          use_cache: bool = True, fill_cache: bool = True) -> Embedding:
        """``embedding`` with this model's decoder image part (see :class:`DecoderPart`).

        Returned unchanged when the model's decoder is not split or the embedding already
        carries this model's part. Otherwise the part comes from the cache's memory store
        (under the embedding's key and :attr:`DecoderPart.variant`) or is computed, one run
        of the image part, and stored there.

        Parameters
        ----------
        embedding : Embedding
        run_options : onnxruntime.RunOptions, optional
            Lets a caller terminate the image part's run.
        use_cache, fill_cache : bool
            Look the part up in / store it into the cache's memory store of parts.

        Returns
        -------
        Embedding
        """
        variant = getattr(self.model, "decoder_part_key", None)
        if variant is None:
            return embedding
        part = embedding.decoder_part
        if part is not None and part.variant == variant:
            return embedding
        pkey = None
        if embedding.key is not None and hasattr(self.cache, "get_part"):
            pkey = part_key(embedding.key, variant)
            hit = self.cache.get_part(pkey) if use_cache else None
            if hit is not None:
                return replace(embedding, decoder_part=DecoderPart(variant, hit, cached=True))
        tensors = self.model.decoder_image_part(embedding.features, run_options)
        if pkey is not None and fill_cache:
            self.cache.put_part(pkey, tensors)
        return replace(embedding, decoder_part=DecoderPart(variant, tensors))

    def set_image(self, image, mapping: IntensityMapping | None = None, **kwargs) -> Embedding:
        """Embed ``image`` (see :meth:`embed`) and make it the current image for
        :meth:`predict`."""
        self.embedding = self.embed(image, mapping, **kwargs)
        return self.embedding

    # -- decoder ----------------------------------------------------------------------
    def decode_low_res(self, emb: Embedding, points=None, labels=None, box=None, *,
                       mask_index: int | None = None):
        """One decoder run, without upsampling: what :meth:`predict` decides on.

        Parameters
        ----------
        emb : Embedding
            Its :class:`DecoderPart`, when it is this model's, spares the split decoder's
            image part.
        points, labels, box, mask_index
            As for :meth:`predict` (original pixels, ``(x, y)``).

        Returns
        -------
        index : int
            The chosen mask (the contract's rule, or ``mask_index``).
        scores : ndarray of float32, shape (4,)
            Stability scores.
        logits : ndarray of float32, shape (4, 256, 256)
            Low-res logits (the decoder's frame).
        file_scores : ndarray, shape (4,)
            The ``scores`` output of the decoder file.

        Raises
        ------
        ModelError
            The decoder returned NaN or infinite values.
        """
        coords, labs, has_box = prepare_prompts(
            emb.original_size, points, labels, box, emb.resized_size
        )
        part = emb.decoder_part
        if part is not None and part.variant == getattr(self.model, "decoder_part_key", None):
            file_scores, masks = self.model.decode(emb.features, coords, labs,
                                                   image_part=part.tensors)
        else:
            file_scores, masks = self.model.decode(emb.features, coords, labs)
        return low_res_choice(masks[0], file_scores, has_box, mask_index)

    def decode_low_res_batch(self, emb: Embedding, prompts, *, batch_decoder=None,
                             batch_size: int = 16) -> list:
        """:meth:`decode_low_res` for many prompt sets on one embedding, batched.

        Parameters
        ----------
        emb : Embedding
        prompts : sequence of dict
            Keyword arguments of :meth:`decode_low_res` (``points``, ``labels``, ``box``,
            ``mask_index``), original pixels, ``(x, y)``.
        batch_decoder : BatchDecoder, optional
            The checked ``decoder-batch`` variant
            (:func:`~.optimize.prompt_batch_runtime.batch_decoder_for`): prompt sets of one
            length (after the contract's padding point) run together, ``batch_size`` per
            ``session.run``, never padded further (a -1 point is a token the model attends
            to); a prompt set alone in its length runs through :meth:`decode_low_res`.
            None: one :meth:`decode_low_res` per prompt set.

        Returns
        -------
        list of tuple
            One :meth:`decode_low_res` result per prompt set, in order.
        """
        if batch_decoder is None:
            return [self.decode_low_res(emb, **p) for p in prompts]
        prep = [prepare_prompts(emb.original_size, p.get("points"), p.get("labels"),
                                p.get("box"), emb.resized_size) for p in prompts]
        groups: dict[int, list[int]] = {}
        for k, (coords, _, _) in enumerate(prep):
            groups.setdefault(coords.shape[1], []).append(k)
        out: list = [None] * len(prep)
        for ks in groups.values():
            for start in range(0, len(ks), max(1, int(batch_size))):
                chunk = ks[start:start + max(1, int(batch_size))]
                if len(chunk) == 1:  # alone: the plain decoder is cheaper than a batch of 1
                    out[chunk[0]] = self.decode_low_res(emb, **prompts[chunk[0]])
                    continue
                file_scores, masks = batch_decoder.decode(
                    emb.features, np.concatenate([prep[k][0] for k in chunk]),
                    np.concatenate([prep[k][1] for k in chunk]))
                for row, k in enumerate(chunk):
                    out[k] = low_res_choice(masks[row], file_scores[row], prep[k][2],
                                            prompts[k].get("mask_index"))
        return out

    def predict(
        self,
        points=None,
        labels=None,
        box=None,
        *,
        embedding: Embedding | None = None,
        mask_index: int | None = None,
    ) -> Prediction:
        """Predict one mask from clicks and/or a box.

        Parameters
        ----------
        points : array-like, shape (N, 2), optional
            ``(x, y) = (col, row)`` in original pixels of the slice.
        labels : array-like, shape (N,), optional
            1 positive (default), 0 negative.
        box : array-like, shape (4,), optional
            ``(x0, y0, x1, y1)`` in original pixels, ``x0 <= x1``, ``y0 <= y1``.
        embedding : Embedding, optional
            Default: the one from the last :meth:`set_image`. Its :class:`DecoderPart`, when
            it is this model's, spares the split decoder's image part (only the prompt part
            runs); an embedding without it (or with another variant's) decodes as before.
        mask_index : int, optional
            Force one of the 4 masks instead of the contract's choice rule.

        Returns
        -------
        Prediction
            Mask in the original frame, ``(H, W)`` bool.
        """
        emb = embedding if embedding is not None else self.embedding
        if emb is None:
            raise InvalidInputError("no image: call set_image() first or pass an embedding")
        index, scores, logits, file_scores = self.decode_low_res(
            emb, points, labels, box, mask_index=mask_index)
        chosen = logits[index]
        mask = upsampler(emb.original_size).mask(chosen)
        return Prediction(
            mask=mask,
            score=float(scores[index]),
            mask_index=index,
            low_res_logits=chosen,
            scores=scores,
            file_scores=file_scores,
        )
