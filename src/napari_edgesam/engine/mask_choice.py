"""The mask choice on the decoder's low-res logits: stability scores, the contract's rule.

:func:`stability_scores` and :func:`choose_mask` are the contract's scoring and choice
(docs/model-contract.md, "Scores and the choice of mask"); :func:`low_res_choice` applies
them to one decoder output after checking it is finite, as
:meth:`~.predictor.Predictor.decode_low_res` and
:meth:`~.predictor.Predictor.decode_low_res_batch` both do. Frames: the low-res frame
(256 x 256, the padded 1024 frame at 1/4).
"""

from __future__ import annotations

import numpy as np

from . import contract
from .errors import InvalidInputError, ModelError

__all__ = ["choose_mask", "low_res_choice", "stability_scores"]


def stability_scores(logits: np.ndarray, offset: float = contract.STABILITY_OFFSET) -> np.ndarray:
    """Stability score per mask: ``count(logit > +offset) / count(logit > -offset)``.

    Parameters
    ----------
    logits : ndarray, shape (K, h, w)
        Mask logits (the decoder's 256 x 256 low-res logits, as the published export uses).

    Returns
    -------
    ndarray of float32, shape (K,)
        NaN where the denominator is 0 (no logit above ``-offset``).
    """
    logits = np.asarray(logits)
    flat = logits.reshape(logits.shape[0], -1)
    num = np.count_nonzero(flat > offset, axis=1).astype(np.float64)
    den = np.count_nonzero(flat > -offset, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).astype(np.float32)


def choose_mask(scores: np.ndarray, has_box: bool) -> int:
    """Index of the mask to use, as EdgeSAM's authors' demo does.

    A box (with or without clicks) uses mask 0 (the single-output token); clicks alone use
    the best stability score, NaN-safely (NaN never wins; all NaN gives 0).
    """
    if has_box:
        return 0
    s = np.where(np.isnan(scores), -np.inf, scores)
    return int(np.argmax(s))


def low_res_choice(logits: np.ndarray, file_scores, has_box: bool,
                   mask_index: int | None = None):
    """Check one decoder output and choose its mask (no upsampling).

    Parameters
    ----------
    logits : ndarray of float32, shape (4, 256, 256)
        One prompt set's mask logits, low-res frame.
    file_scores : array-like, shape (4,) or (1, 4)
        The decoder file's ``scores`` output for that prompt set.
    has_box : bool
        Whether the prompt had a box (then mask 0 is used).
    mask_index : int, optional
        Force one of the masks instead of the contract's rule.

    Returns
    -------
    (index, scores, logits, file_scores)
        The chosen index, stability scores (float32, (4,)), ``logits`` and the file's
        scores as a (4,) array: what :meth:`~.predictor.Predictor.decode_low_res` returns.

    Raises
    ------
    ModelError
        NaN or infinite logits.
    InvalidInputError
        ``mask_index`` out of range.
    """
    if not np.isfinite(logits).all():
        raise ModelError("the decoder returned values that are not numbers (NaN or "
                         "infinite): its file is broken or not an EdgeSAM decoder")
    scores = stability_scores(logits)
    if mask_index is None:
        index = choose_mask(scores, has_box)
    else:
        if not 0 <= mask_index < logits.shape[0]:
            raise InvalidInputError(f"mask_index must be in 0..{logits.shape[0] - 1}")
        index = int(mask_index)
    return index, scores, logits, np.asarray(file_scores).reshape(-1)
