"""Geometry and pixel transforms between an image and the model's 1024 frame.

Frames used throughout (the names appear in every docstring):

- *original frame*: pixels of the 2D slice as given, ``(row, col)`` for arrays and
  ``(x, y) = (col, row)`` for prompt points; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``
  with its centre at ``(c + 0.5, r + 0.5)`` in continuous coordinates, and a prompt point
  ``(x, y)`` names the pixel whose index is ``(round(y), round(x))``.
- *1024 frame*: the slice resized so its longest side is 1024 (``new_h x new_w``), then
  zero-padded at the bottom and right to 1024 x 1024. The model sees this frame.
- *low-res frame*: the decoder's 256 x 256 logits, the padded 1024 frame at 1/4 resolution.

Everything follows the EdgeSAM contract exactly: Pillow's bilinear resize of the uint8 RGB
image (antialiased when shrinking, as in training), per-channel normalisation, padding after
normalising, and PyTorch-style ``align_corners=False`` bilinear upsampling of mask logits.

Masks kept as bounding-box crops (:class:`MaskCrop`, :func:`mask_bbox`, re-exported here
for older imports) and mask overlap measures (IoU) live in :mod:`.mask_crop`.
"""

from __future__ import annotations

import functools

import numpy as np

from .contract import IMAGE_SIZE, LOW_RES_SIZE, MASK_THRESHOLD, PIXEL_MEAN, PIXEL_STD
from .mask_crop import MaskCrop, mask_bbox  # re-exported: their old home

__all__ = [
    "MaskCrop",  # from .mask_crop
    "MaskUpsampler",
    "mask_bbox",  # from .mask_crop
    "bilinear_matrix",
    "coords_to_model",
    "preprocess",
    "resized_shape",
]


def resized_shape(height: int, width: int, target: int = IMAGE_SIZE) -> tuple[int, int]:
    """Size ``(new_h, new_w)`` of the slice once its longest side is scaled to ``target``.

    ``scale = target / max(H, W)``; ``new_side = int(side * scale + 0.5)`` (the contract's
    rounding).

    Examples
    --------
    >>> resized_shape(300, 500)  # (rows, columns) of the image inside the 1024 frame
    (614, 1024)
    """
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Turn a uint8 RGB slice into the encoder's input tensor.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3) or (H, W)
        Original frame, values on the 0..255 scale (see :mod:`.intensity`). A 2-D array is
        a grey image, the same as three equal channels (and cheaper: no channel check, a
        third of the resizing).

    Returns
    -------
    tensor : ndarray of float32, shape (1, 3, 1024, 1024)
        Resized with Pillow's bilinear filter so the longest side is 1024, normalised per
        channel with the training mean and std, zero-padded at the bottom and right (padding
        after normalisation, as in training). NCHW.
    resized : (int, int)
        ``(new_h, new_w)``: the part of the 1024 frame the image occupies.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    new_h, new_w = resized_shape(h, w)
    if (new_h, new_w) != (h, w):
        # Grey data (the usual microscopy case) arrives as three equal channels: resizing
        # one channel is ~3x cheaper and Pillow's per-channel arithmetic is the same for
        # "L" and "RGB" images, so the result is bit-identical.
        grey = np.ascontiguousarray(rgb) if rgb.ndim == 2 else _single_channel(rgb)
        resized = np.asarray(
            Image.fromarray(rgb if grey is None else grey).resize(
                (new_w, new_h), Image.Resampling.BILINEAR)
        )
    else:
        resized = rgb
    tensor = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    mean = np.asarray(PIXEL_MEAN, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(PIXEL_STD, dtype=np.float32)
    for c in range(3):
        np.multiply(
            (resized if resized.ndim == 2 else resized[:, :, c]).astype(np.float32) - mean[c],
            inv_std[c],
            out=tensor[0, c, :new_h, :new_w],
        )
    return tensor, (new_h, new_w)


def _single_channel(rgb: np.ndarray) -> np.ndarray | None:
    """The one channel of an ``(H, W, 3)`` uint8 image whose channels are all equal, else
    None (a sample of rows is compared first, so colour images are rejected cheaply)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        return None
    step = max(1, rgb.shape[0] // 32)
    for part in (rgb[::step], rgb):
        if not (np.array_equal(part[:, :, 0], part[:, :, 1])
                and np.array_equal(part[:, :, 1], part[:, :, 2])):
            return None
    return np.ascontiguousarray(rgb[:, :, 0])


def coords_to_model(
    points_xy: np.ndarray, original_size: tuple[int, int], resized: tuple[int, int] | None = None
) -> np.ndarray:
    """Scale points from the original frame to the 1024 frame.

    Parameters
    ----------
    points_xy : ndarray, shape (N, 2)
        ``(x, y) = (col, row)`` in original pixels.
    original_size : (int, int)
        ``(H, W)`` of the slice.
    resized : (int, int), optional
        ``(new_h, new_w)``; computed from ``original_size`` when omitted.

    Returns
    -------
    ndarray of float32, shape (N, 2)
        ``(x * new_w / W, y * new_h / H)`` in the 1024 frame (the decoder adds 0.5 itself).

    Examples
    --------
    A click at column 250, row 150 of a 300 x 500 (H x W) image:

    >>> coords_to_model([(250, 150)], (300, 500)).tolist()
    [[512.0, 307.0]]
    """
    h, w = original_size
    new_h, new_w = resized or resized_shape(h, w)
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    out = np.empty_like(pts)
    out[:, 0] = pts[:, 0] * (new_w / w)
    out[:, 1] = pts[:, 1] * (new_h / h)
    return out.astype(np.float32)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Dense matrix of a 1D bilinear resize with ``align_corners=False`` (PyTorch semantics).

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths.

    Returns
    -------
    ndarray of float64, shape (n_out, n_in)
        ``out = M @ in``. Source position ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0 as
        ``torch.nn.functional.interpolate`` does; no antialiasing.
    """
    m = np.zeros((n_out, n_in), dtype=np.float64)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


@functools.lru_cache(maxsize=16)
def _axis_operator(original: int, resized: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse form of low-res (256) -> original-axis upsampling, composed exactly.

    The contract's postprocessing is: 256 -> 1024 bilinear, crop to ``resized``, bilinear to
    ``original``. Both steps are linear, so along one axis they compose into one
    ``(original, 256)`` matrix with at most a few non-zeros per row. Returns ``(index,
    weight, (first, last))`` where ``index``/``weight`` are ``(original, K)`` and
    ``first``/``last`` stacked in an ``(original, 2)`` array give each row's support.
    """
    up = bilinear_matrix(LOW_RES_SIZE, IMAGE_SIZE)[:resized]  # (resized, 256)
    down = bilinear_matrix(resized, original)  # (original, resized)
    dense = down @ up  # (original, 256)
    nz = dense != 0
    k = max(1, int(nz.sum(axis=1).max()))
    order = np.argsort(~nz, axis=1, kind="stable")[:, :k]  # non-zero columns first, in order
    weight = np.take_along_axis(dense, order, axis=1)
    index = np.where(weight != 0, order, order[:, :1])
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 0)
    last = LOW_RES_SIZE - 1 - np.where(nz.any(axis=1), nz[:, ::-1].argmax(axis=1), 0)
    return (
        index.astype(np.intp),
        weight.astype(np.float32),
        np.stack([first, last], axis=1),
    )


class MaskUpsampler:
    """Low-res logits -> a mask in the original frame, for one image geometry.

    Exactly the contract's postprocessing (bilinear 256 -> 1024, crop to ``(new_h, new_w)``,
    bilinear to ``(H, W)``, threshold ``> 0``), computed as one separable sparse operator and
    only inside the rows and columns that can be positive: a bilinear resize is a convex
    combination, so an output pixel can only exceed 0 if some low-res logit it draws on does.

    Parameters
    ----------
    original_size : (int, int)
        ``(H, W)`` of the slice.
    """

    def __init__(self, original_size: tuple[int, int]):
        h, w = (int(v) for v in original_size)
        self.original_size = (h, w)
        self.resized = resized_shape(h, w)
        self._rows = _axis_operator(h, self.resized[0])
        self._cols = _axis_operator(w, self.resized[1])

    @staticmethod
    def _range(support: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
        """Output indices whose low-res support intersects [lo, hi] (a contiguous run)."""
        hit = np.nonzero((support[:, 0] <= hi) & (support[:, 1] >= lo))[0]
        if hit.size == 0:
            return 0, 0
        return int(hit[0]), int(hit[-1]) + 1

    def logits(
        self, low_res: np.ndarray, rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Upsampled logits in the original frame (optionally only a window of it).

        Parameters
        ----------
        low_res : ndarray of float32, shape (256, 256)
            Logits of one mask in the low-res frame.
        rows, cols : (int, int), optional
            Half-open windows ``[start, stop)`` of original rows/columns; default all.

        Returns
        -------
        ndarray of float32, shape (rows, cols)
        """
        h, w = self.original_size
        r0, r1 = rows or (0, h)
        c0, c1 = cols or (0, w)
        ri, rw, _ = self._rows
        ci, cw, _ = self._cols
        ri, rw = ri[r0:r1], rw[r0:r1]
        ci, cw = ci[c0:c1], cw[c0:c1]
        low_res = np.asarray(low_res, dtype=np.float32)
        # Columns first: (256, ncols), then rows: (nrows, ncols). Each output value is a
        # weighted sum of K inputs, so this costs O(K * size) instead of a dense matmul.
        tmp = low_res[:, ci[:, 0]] * cw[:, 0]
        for k in range(1, ci.shape[1]):
            tmp += low_res[:, ci[:, k]] * cw[:, k]
        out = tmp[ri[:, 0]] * rw[:, 0, None]
        for k in range(1, ri.shape[1]):
            out += tmp[ri[:, k]] * rw[:, k, None]
        return out

    #: Output block side for the sign classification of large masks (pixels).
    BLOCK = 64
    #: Masks whose bounding box has fewer output pixels than this are computed directly.
    DIRECT_PIXELS = 256 * 256

    def _window(self, low: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """:meth:`logits` of a window, reading only the low-res rows it depends on.

        Every output value is computed with exactly the same float32 operations in the same
        order as :meth:`logits`, so results are bit-identical.
        """
        ri, rw, rs = self._rows
        ci, cw, _ = self._cols
        lo, hi = int(rs[r0, 0]), int(rs[r1 - 1, 1])
        sub = low[lo:hi + 1]
        ci, cw = ci[c0:c1], cw[c0:c1]
        tmp = sub[:, ci[:, 0]] * cw[:, 0]
        for k in range(1, ci.shape[1]):
            tmp += sub[:, ci[:, k]] * cw[:, k]
        ri, rw = ri[r0:r1] - lo, rw[r0:r1]
        out = tmp[ri[:, 0]] * rw[:, 0, None]
        for k in range(1, ri.shape[1]):
            out += tmp[ri[:, k]] * rw[:, k, None]
        return out

    @staticmethod
    def _block_windows(support: np.ndarray, start: int, stop: int, block: int):
        """Low-res index windows of consecutive output blocks of ``[start, stop)``.

        Returns ``(edges, idx)``: block ``i`` covers outputs ``edges[i]:edges[i + 1]``;
        ``idx[i]`` (padded by repeating the last index) lists the low-res indices it reads.
        """
        edges = np.arange(start, stop, block)
        edges = np.append(edges, stop)
        a = support[edges[:-1], 0]
        b = support[edges[1:] - 1, 1]
        span = int((b - a).max()) + 1
        idx = np.minimum(a[:, None] + np.arange(span)[None, :], b[:, None])
        return edges, idx

    def box(self, low_res: np.ndarray, threshold: float = MASK_THRESHOLD):
        """Where the upsampled mask can be positive: the output pixels whose low-res support
        meets a low-res logit above ``threshold``.

        Parameters
        ----------
        low_res : ndarray of float32, shape (256, 256)
        threshold : float

        Returns
        -------
        (int, int, int, int) or None
            ``(row0, col0, row1, col1)``, half-open, original pixels; None when no pixel
            can be positive.
        """
        pos = np.asarray(low_res) > threshold
        rows_any = np.nonzero(pos.any(axis=1))[0]
        if rows_any.size == 0:
            return None
        cols_any = np.nonzero(pos.any(axis=0))[0]
        r0, r1 = self._range(self._rows[2], int(rows_any[0]), int(rows_any[-1]))
        c0, c1 = self._range(self._cols[2], int(cols_any[0]), int(cols_any[-1]))
        return (r0, c0, r1, c1) if r1 > r0 and c1 > c0 else None

    def mask(self, low_res: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
        """Boolean mask ``upsampled_logits > threshold`` in the original frame.

        Bit-identical to thresholding :meth:`logits`, but only computed where the answer is
        not already known. Outside the bounding box of the low-res pixels above
        ``threshold`` nothing can be positive. Inside it, large masks are split into
        blocks of :attr:`BLOCK` x :attr:`BLOCK` output pixels: since every output value is
        a convex combination (non-negative weights summing to 1) of the low-res logits in
        its support, a block whose supporting logits all exceed the threshold is all
        positive and one whose logits are all at most the threshold is all negative (with
        a margin for float32 rounding when ``threshold`` is not 0). Only the remaining
        blocks (along the mask's edge) are interpolated. A whole-image mask of a 2048 x
        2048 slice thus costs a fraction of the full interpolation.

        Parameters
        ----------
        low_res : ndarray of float32, shape (256, 256)
            Logits of one mask in the low-res frame.
        threshold : float
            Logit threshold (the contract's is 0).

        Returns
        -------
        ndarray of bool, shape (H, W)
        """
        h, w = self.original_size
        out = np.zeros((h, w), dtype=bool)
        low = np.asarray(low_res, dtype=np.float32)
        box = self.box(low, threshold)
        if box is None:
            return out
        r0, c0, r1, c1 = box
        if (r1 - r0) * (c1 - c0) <= self.DIRECT_PIXELS:
            out[r0:r1, c0:c1] = self._window(low, r0, r1, c0, c1) > threshold
            return out
        b = self.BLOCK
        redges, ridx = self._block_windows(self._rows[2], r0, r1, b)
        cedges, cidx = self._block_windows(self._cols[2], c0, c1, b)
        band = low[ridx]  # (I, span_r, 256)
        lo_r, hi_r = band.min(axis=1), band.max(axis=1)  # (I, 256)
        bmin = lo_r[:, cidx].min(axis=2)  # (I, J)
        bmax = hi_r[:, cidx].max(axis=2)
        t = np.float32(threshold)
        if threshold == 0:
            # Products of positive normal numbers and positive weights stay positive; of
            # non-positive numbers, non-positive: exact without a margin.
            sure_pos = bmin > np.float32(1e-20)
            sure_neg = bmax <= t
        else:
            margin = np.float32(1e-5) * np.maximum(np.abs(bmin), np.abs(bmax)) + np.float32(1e-20)
            sure_pos = bmin - t > margin
            sure_neg = t - bmax > margin
        unsure = ~(sure_pos | sure_neg)
        ri, rw, rs = self._rows
        ci, cw, _ = self._cols
        ncols = c1 - c0
        for i in range(len(redges) - 1):
            ra, rb = int(redges[i]), int(redges[i + 1])
            if sure_pos[i].any():
                out[ra:rb, c0:c1] = np.repeat(sure_pos[i], b)[:ncols]
            if not unsure[i].any():
                continue
            # The unsure columns of this band, interpolated exactly as in :meth:`logits`
            # (same float32 operations in the same order, so bit-identical).
            cols = np.nonzero(np.repeat(unsure[i], b)[:ncols])[0] + c0
            lo, hi = int(rs[ra, 0]), int(rs[rb - 1, 1])
            sub = low[lo:hi + 1]
            cik, cwk = ci[cols], cw[cols]
            tmp = sub[:, cik[:, 0]] * cwk[:, 0]
            for k in range(1, cik.shape[1]):
                tmp += sub[:, cik[:, k]] * cwk[:, k]
            rik, rwk = ri[ra:rb] - lo, rw[ra:rb]
            # same operations as logits(), without temporaries
            band = np.take(tmp, rik[:, 0], axis=0)
            band *= rwk[:, 0, None]
            buf = np.empty_like(band)
            for k in range(1, rik.shape[1]):
                np.take(tmp, rik[:, k], axis=0, out=buf)
                buf *= rwk[:, k, None]
                band += buf
            hit = band > threshold
            # write back run by run (slices are much cheaper than a fancy-index scatter)
            d = np.diff(np.concatenate(([0], unsure[i].view(np.int8), [0])))
            at = 0
            for js, je in zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0], strict=True):
                ca, cb = int(cedges[js]), int(cedges[je])
                out[ra:rb, ca:cb] = hit[:, at:at + cb - ca]
                at += cb - ca
        return out


@functools.lru_cache(maxsize=8)
def upsampler(original_size: tuple[int, int]) -> MaskUpsampler:
    """A cached :class:`MaskUpsampler` for ``(H, W)``."""
    return MaskUpsampler(tuple(original_size))
