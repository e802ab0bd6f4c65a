"""Decoded masks that are upsampled only when, and only where, they are needed.

Automatic segmentation rejects many predicted masks (low stability, a second seed of an object
already found) and keeps small objects; upsampling every mask to the whole slice (4 Mpixel at
2048^2) is wasted work. A :class:`LowResMask` keeps the decoder's low-res logits of the chosen
mask and offers what the filters of :mod:`.prompting` ask for:

- :attr:`LowResMask.score`, from the low-res logits (the contract's stability score);
- :meth:`LowResMask.values_at`, the full-resolution mask at a few pixels (seeds), computed
  pixel by pixel;
- :meth:`LowResMask.window`, the full-resolution mask inside a box that contains every pixel
  that can be positive (the low-res positives' support, :meth:`MaskUpsampler.box`).

Every value is bit-identical to :meth:`~napari_edgesam.engine.transforms.MaskUpsampler.mask`
of the same logits (the same float32 operations through the upsampler's public
:meth:`~napari_edgesam.engine.transforms.MaskUpsampler.logits`), so labels do not change.
:class:`FullMask` gives a mask already in the original frame (tiled prediction) the same
interface. Frames: masks ``(row, col)``, slice pixels.
"""

from __future__ import annotations

import numpy as np

from ...engine.contract import MASK_THRESHOLD
from ...engine.transforms import upsampler

__all__ = ["FullMask", "LowResMask", "decode_low_res"]


class FullMask:
    """A mask already upsampled (e.g. a tile's), behind the :class:`LowResMask` interface.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The mask in its frame, a window of the slice at ``(row0, col0)``.
    row0, col0 : int
        Offset of that frame in the slice.
    score : float
        Stability score.
    """

    def __init__(self, mask: np.ndarray, row0: int, col0: int, score: float):
        self.mask = mask
        self.score = float(score)
        self.frame = (int(row0), int(col0), int(row0) + mask.shape[0],
                      int(col0) + mask.shape[1])

    def values_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The mask at slice pixels ``(rows, cols)`` (int arrays of one shape); False
        outside the frame."""
        r, c = rows - self.frame[0], cols - self.frame[1]
        ok = (r >= 0) & (r < self.mask.shape[0]) & (c >= 0) & (c < self.mask.shape[1])
        out = np.zeros(rows.shape, bool)
        out[ok] = self.mask[r[ok], c[ok]]
        return out

    def window(self) -> tuple[np.ndarray, int, int]:
        """``(crop, row0, col0)``: the mask and its offset in the slice."""
        return self.mask, self.frame[0], self.frame[1]


class LowResMask:
    """One decoded mask kept as low-res logits; upsampled lazily, only inside its box.

    Parameters
    ----------
    low_res : ndarray of float32, shape (256, 256)
        Logits of the chosen mask in the low-res frame.
    original_size : (int, int)
        ``(H, W)`` of the slice (its 1024-frame size follows from it, as in the contract).
    score : float
        Stability score of the chosen mask.
    """

    def __init__(self, low_res: np.ndarray, original_size: tuple[int, int], score: float):
        self.low_res = np.asarray(low_res, dtype=np.float32)
        self.score = float(score)
        h, w = (int(v) for v in original_size)
        self.frame = (0, 0, h, w)
        self._up = upsampler((h, w))
        self._crop: tuple[np.ndarray, int, int] | None = None
        self.box = self._up.box(self.low_res) or (0, 0, 0, 0)

    @property
    def upsampled(self) -> bool:
        """Whether :meth:`window` has been computed."""
        return self._crop is not None

    def values_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The full-resolution mask at slice pixels ``(rows, cols)`` (int arrays of one shape),
        computed pixel by pixel (or read from :meth:`window` when already computed)."""
        r0, c0, r1, c1 = self.box
        inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        out = np.zeros(rows.shape, bool)
        if self._crop is not None:
            crop = self._crop[0]
            out[inside] = crop[rows[inside] - r0, cols[inside] - c0]
            return out
        for k in zip(*np.nonzero(inside)):
            r, c = int(rows[k]), int(cols[k])
            out[k] = self._up.logits(self.low_res, (r, r + 1), (c, c + 1))[0, 0] > \
                MASK_THRESHOLD
        return out

    def window(self) -> tuple[np.ndarray, int, int]:
        """``(crop, row0, col0)``: the full-resolution mask inside :attr:`box` (every positive
        pixel lies in it), equal to ``MaskUpsampler.mask(low_res)[box]``."""
        if self._crop is None:
            r0, c0, r1, c1 = self.box
            if (r1 - r0) * (c1 - c0) <= self._up.DIRECT_PIXELS:
                crop = self._up.logits(self.low_res, (r0, r1), (c0, c1)) > MASK_THRESHOLD
            else:  # large masks: the upsampler's block classification is cheaper
                crop = self._up.mask(self.low_res)[r0:r1, c0:c1]
            self._crop = (crop, r0, c0)
        return self._crop


def decode_low_res(predictor, embedding, points, labels) -> LowResMask:
    """One decoder run on clicks, as :meth:`Predictor.predict` does, without upsampling.

    Same prompts, image part (a split decoder's :class:`DecoderPart` when it is this
    model's), finiteness check, stability scores and mask choice as the predictor.

    Parameters
    ----------
    predictor : Predictor
    embedding : Embedding
    points : array-like, shape (N, 2)
        ``(x, y) = (col, row)`` pixels of the slice.
    labels : array-like, shape (N,)
        1 positive, 0 negative.

    Returns
    -------
    LowResMask
    """
    index, scores, logits, _ = predictor.decode_low_res(embedding, points, labels)
    return LowResMask(logits[index], embedding.original_size, scores[index])
