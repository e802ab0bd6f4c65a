"""The agreement check: random prompts on the user's slices, decoded by a variant and by the
float32 original, and the IoU of their masks.

:func:`sample_prompts` draws the clicks and boxes (original pixels, (x, y)),
:func:`check_agreement` compares the final boolean masks in the original frame,
:func:`check_batch_agreement` does the same for the prompt-batched decoder against one-by-one
runs of the original, and
:class:`Thresholds`/:class:`Agreement` say when a variant counts as agreeing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..mask_crop import mask_iou
from ..session import EdgeSamModel


@dataclass(frozen=True)
class Thresholds:
    """When a variant counts as agreeing with the original.

    Attributes
    ----------
    mean_iou : float
        Smallest accepted mean mask IoU over all sampled prompts (default 0.95).
    min_iou : float
        Smallest accepted IoU of any single prompt (default 0.80).
    """

    mean_iou: float = 0.95
    min_iou: float = 0.80


@dataclass
class Agreement:
    """Mask agreement between a variant and the original.

    Attributes
    ----------
    mean_iou, min_iou : float
        Over all prompts: IoU of the variant's mask (at the mask index the original chose)
        with the original's mask, in the original frame. Two empty masks count as 1.
    same_choice : float
        Fraction of prompts where the variant, left to choose, picks the same one of the 4
        masks (information only: near-ties of the stability score may flip).
    n_prompts, n_images : int
    passed : bool
    thresholds : dict
    """

    mean_iou: float
    min_iou: float
    same_choice: float
    n_prompts: int
    n_images: int
    passed: bool
    thresholds: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the user: the IoU figures, prompts, images and same-choice rate."""
        return (f"mean IoU {self.mean_iou:.3f}, min {self.min_iou:.3f} over {self.n_prompts} "
                f"prompts on {self.n_images} image(s); same mask chosen for "
                f"{self.same_choice:.0%}")


def sample_prompts(shape: tuple[int, int], n_clicks: int, n_boxes: int,
                   rng: np.random.Generator) -> list[dict]:
    """Random prompts for an agreement check on a ``(H, W)`` slice.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the slice, original pixels.
    n_clicks, n_boxes : int
        How many single positive clicks and how many boxes to draw.
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller for a repeatable check).

    Returns
    -------
    list of dict
        ``{"points": [(x, y)], "labels": [1]}`` for each positive click (uniform over the
        slice) and ``{"box": (x0, y0, x1, y1)}`` for each box (sides 10 % to 60 % of the
        slice's sides, anywhere inside it).
    """
    h, w = shape
    out: list[dict] = []
    for _ in range(n_clicks):
        out.append({"points": [(float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1)))],
                    "labels": [1]})
    for _ in range(n_boxes):
        bw = rng.uniform(0.1, 0.6) * (w - 1)
        bh = rng.uniform(0.1, 0.6) * (h - 1)
        x0 = rng.uniform(0, w - 1 - bw)
        y0 = rng.uniform(0, h - 1 - bh)
        out.append({"box": (float(x0), float(y0), float(x0 + bw), float(y0 + bh))})
    return out


class _Reference:
    """Embeddings and masks of the float32 original, computed once per check run."""

    def __init__(self, model: EdgeSamModel, images, mapping, n_clicks, n_boxes, seed):
        from ..predictor import Predictor

        self.model = model
        self.images = images
        self.mapping = mapping
        self.predictor = Predictor(model, cache=None)
        rng = np.random.default_rng(seed)
        self.prompts = [sample_prompts(np.shape(im)[:2], n_clicks, n_boxes, rng)
                        for im in images]
        self._emb: dict[int, object] = {}
        self._masks: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    def embedding(self, i: int):
        if i not in self._emb:
            self._emb[i] = self.predictor.embed(self.images[i], self.mapping, use_cache=False,
                                                fill_cache=False)
        return self._emb[i]

    def mask(self, i: int, j: int) -> tuple[np.ndarray, int]:
        if (i, j) not in self._masks:
            r = self.predictor.predict(embedding=self.embedding(i), **self.prompts[i][j])
            self._masks[(i, j)] = (r.mask, r.mask_index)
        return self._masks[(i, j)]


def _decode_at(model: EdgeSamModel, emb, prompt: dict, index: int) -> tuple[np.ndarray, int]:
    """Variant's mask at ``index`` and the index it would choose itself."""
    from ..predictor import choose_mask, prepare_prompts, stability_scores
    from ..transforms import upsampler

    coords, labels, has_box = prepare_prompts(emb.original_size, resized=emb.resized_size,
                                              **prompt)
    _, masks = model.decode(emb.features, coords, labels)
    logits = masks[0]
    own = choose_mask(stability_scores(logits), has_box)
    return upsampler(emb.original_size).mask(logits[index]), own


def _summary(ious: list[float], same: list[bool], n_images: int,
             thresholds: Thresholds) -> Agreement:
    """The :class:`Agreement` of per-prompt IoUs and same-choice flags."""
    if not ious:
        raise ModelError("agreement check without prompts: give at least one image")
    mean, low = float(np.mean(ious)), float(np.min(ious))
    return Agreement(
        mean_iou=mean, min_iou=low, same_choice=float(np.mean(same)), n_prompts=len(ious),
        n_images=n_images,
        passed=bool(mean >= thresholds.mean_iou and low >= thresholds.min_iou),
        thresholds=asdict(thresholds),
    )


def check_agreement(reference: EdgeSamModel, candidate: EdgeSamModel, images, *,
                    mapping=None, n_clicks: int = 8, n_boxes: int = 4, seed: int = 0,
                    thresholds: Thresholds | None = None, progress=None,
                    _ref: _Reference | None = None) -> Agreement:
    """Compare a candidate model's masks with the reference (float32 original) model's.

    For each image, both models embed the slice (the reference's embedding is reused when
    the candidate's encoder file is the reference's), then the same random prompts
    (:func:`sample_prompts`, seeded) are decoded by both. IoU is computed on the final
    boolean masks in the original frame, with the candidate's mask taken at the mask index
    the reference chose.

    Parameters
    ----------
    reference, candidate : EdgeSamModel
    images : sequence of ndarray, each (H, W), (H, W, 3) or (H, W, 4)
        The user's slices, any real dtype.
    mapping : IntensityMapping, optional
        Stack-wide intensity mapping; default per slice.
    n_clicks, n_boxes : int
        Prompts per image.
    seed : int
    thresholds : Thresholds, optional
    progress : callable, optional
        ``progress(message, done, total)``; may raise :class:`CancelledError`.

    Returns
    -------
    Agreement
    """
    from ..predictor import Predictor

    thresholds = thresholds or Thresholds()
    ref = _ref or _Reference(reference, list(images), mapping, n_clicks, n_boxes, seed)
    same_encoder = (Path(candidate.encoder_path).resolve() == Path(ref.model.encoder_path)
                    .resolve())
    cand_pred = Predictor(candidate, cache=None)
    ious, same = [], []
    total = sum(len(p) for p in ref.prompts)
    done = 0
    for i, image in enumerate(ref.images):
        emb = ref.embedding(i) if same_encoder else cand_pred.embed(
            image, ref.mapping, use_cache=False, fill_cache=False)
        for j, prompt in enumerate(ref.prompts[i]):
            ref_mask, ref_index = ref.mask(i, j)
            mask, own = _decode_at(candidate, emb, prompt, ref_index)
            ious.append(mask_iou(mask, ref_mask, empty=1.0))  # two empty masks agree
            same.append(own == ref_index)
            done += 1
            if progress is not None:
                progress("checking agreement", done, total)
    return _summary(ious, same, len(ref.images), thresholds)


def _mixed_prompts(prompts: list[dict]) -> list[dict]:
    """Prompt sets of other lengths made from the sampled ones, so that a batched check sees
    several lengths: a click with the next click as a negative (3 points with the padding
    point), and a box with a click (3 points)."""
    clicks = [p["points"][0] for p in prompts if "points" in p]
    boxes = [p["box"] for p in prompts if "box" in p]
    out = [{"points": [a, b], "labels": [1, 0]} for a, b in zip(clicks, clicks[1:])]
    for x0, y0, x1, y1 in boxes:
        out.append({"points": [((x0 + x1) / 2, (y0 + y1) / 2)], "labels": [1],
                    "box": (x0, y0, x1, y1)})
    return out


def check_batch_agreement(batch_decoder, images, *, reference: EdgeSamModel | None = None,
                          mapping=None, n_clicks: int = 8, n_boxes: int = 4, seed: int = 0,
                          thresholds: Thresholds | None = None, batch_size: int = 16,
                          progress=None, _ref: _Reference | None = None) -> Agreement:
    """Compare a prompt-batched decoder with one-by-one runs of the reference's decoder.

    On each image the reference embeds the slice; the sampled prompts (:func:`sample_prompts`)
    and prompt sets of other lengths made from them (a click and a negative click, a box and
    its centre) are decoded by the reference one prompt set per run (:meth:`Predictor.predict`)
    and by ``batch_decoder`` in batches (:meth:`Predictor.decode_low_res_batch`, prompt sets
    of one length together). IoU is computed on the final boolean masks in the original
    frame, the batched mask taken at the index the reference chose.

    Parameters
    ----------
    batch_decoder : BatchDecoder
        See :mod:`.prompt_batch_runtime`.
    images : sequence of ndarray, each (H, W), (H, W, 3) or (H, W, 4)
    reference : EdgeSamModel, optional
        The float32 original (needed unless ``_ref`` is given).
    mapping, n_clicks, n_boxes, seed, thresholds, progress
        As for :func:`check_agreement`.
    batch_size : int
        Prompt sets per batched run.

    Returns
    -------
    Agreement
    """
    from ..transforms import upsampler

    thresholds = thresholds or Thresholds()
    if _ref is None:
        if reference is None:
            raise ModelError("check_batch_agreement needs the reference model")
        _ref = _Reference(reference, list(images), mapping, n_clicks, n_boxes, seed)
    ref = _ref
    ious, same = [], []
    for i in range(len(ref.images)):
        emb = ref.embedding(i)
        extra = _mixed_prompts(ref.prompts[i])
        prompts = list(ref.prompts[i]) + extra
        got = ref.predictor.decode_low_res_batch(emb, prompts, batch_decoder=batch_decoder,
                                                 batch_size=batch_size)
        for j, (own, _, logits, _) in enumerate(got):
            if j < len(ref.prompts[i]):
                ref_mask, ref_index = ref.mask(i, j)
            else:
                r = ref.predictor.predict(embedding=emb, **prompts[j])
                ref_mask, ref_index = r.mask, r.mask_index
            mask = upsampler(emb.original_size).mask(logits[ref_index])
            ious.append(mask_iou(mask, ref_mask, empty=1.0))
            same.append(own == ref_index)
        if progress is not None:
            progress("checking the batched decoder", i + 1, len(ref.images))
    return _summary(ious, same, len(ref.images), thresholds)
