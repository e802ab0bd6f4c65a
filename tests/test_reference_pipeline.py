"""The predictor equals an independent numpy re-computation of the contract's pipeline.

The reference below is written from ``docs/model-contract.md`` alone, without
the package's transforms: Pillow bilinear resize of the uint8 RGB image, normalisation,
zero padding, raw onnxruntime sessions, (x, y) scaled into the 1024 frame, the padding point,
stability scores, the mask choice rule, and a two-step PyTorch-style (align_corners=False)
bilinear upsampling written as explicit gathers.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import TEST_DECODER, TEST_ENCODER
from PIL import Image

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _resize_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='bilinear', align_corners=False) along one axis."""
    n_in = a.shape[axis]
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    src = np.clip(src, 0, None)
    i0 = np.floor(src).astype(int)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float64)
    a0 = np.take(a, i0, axis=axis).astype(np.float64)
    a1 = np.take(a, i1, axis=axis).astype(np.float64)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return a0 * (1 - w) + a1 * w


def reference(rgb: np.ndarray, points, labels, box):
    enc = ort.InferenceSession(str(TEST_ENCODER), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(TEST_DECODER), providers=["CPUExecutionProvider"])
    h, w = rgb.shape[:2]
    scale = 1024 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR)).astype(np.float32)
    x = (resized - MEAN) / STD
    padded = np.zeros((1024, 1024, 3), np.float32)
    padded[:nh, :nw] = x
    (emb,) = enc.run(None, {"image": padded.transpose(2, 0, 1)[None]})
    pts = [list(p) for p in points]
    labs = list(labels)
    if box is not None:
        pts += [[box[0], box[1]], [box[2], box[3]]]
        labs += [2, 3]
    pts = np.array(pts, np.float64) * np.array([nw / w, nh / h])
    if box is None:
        pts = np.concatenate([pts, [[0.0, 0.0]]])
        labs += [-1]
    outs = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {
        "image_embeddings": emb,
        "point_coords": pts[None].astype(np.float32),
        "point_labels": np.array(labs, np.float32)[None],
    }), strict=True))
    masks = outs["masks"][0]
    stab = []
    for m in masks:
        den = (m > -1).sum()
        stab.append((m > 1).sum() / den if den else -np.inf)
    idx = 0 if box is not None else int(np.argmax(stab))
    logit = masks[idx]
    up = _resize_axis(_resize_axis(logit, 1024, 0), 1024, 1)[:nh, :nw]
    full = _resize_axis(_resize_axis(up, h, 0), w, 1)
    return full, idx


CASES = [
    ((300, 500), [(330, 90)], [1], None),
    ((500, 300), [(200, 350), (230, 350)], [1, 0], None),
    ((123, 77), [(50, 40)], [1], None),
    ((700, 1300), [], [], (700, 100, 1000, 350)),
    ((1100, 900), [(600, 300)], [1], (480, 180, 720, 420)),
]


@pytest.mark.parametrize("shape,points,labels,box", CASES, ids=lambda v: str(v))
def test_predictor_matches_independent_reference(test_model, shape, points, labels, box):
    from napari_edgesam.engine import Predictor

    rng = np.random.default_rng(sum(shape))
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    grey = (40 + 20 * rng.random((h, w))).astype(np.float32)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, max(9, min(h, w) // 4))
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
    # Make sure the prompted spots are on something bright.
    for (x, y) in points[:1]:
        grey[(yy - y) ** 2 + (xx - x) ** 2 < (min(h, w) // 8) ** 2] = 210
    rgb = np.clip(grey, 0, 255).astype(np.uint8)
    rgb = np.stack([rgb, (rgb * 0.8).astype(np.uint8), rgb], axis=-1)

    ref_logits, ref_idx = reference(rgb, points, labels, box)
    pred = Predictor(test_model, cache=None)
    pred.set_image(rgb)
    res = pred.predict(points=points or None, labels=labels or None, box=box)
    assert res.mask_index == ref_idx
    ref_mask = ref_logits > 0
    assert ref_mask.any()
    differ = res.mask != ref_mask
    # Only pixels whose logit is within float32 rounding of the threshold may differ.
    assert np.all(np.abs(ref_logits[differ]) < 1e-4), np.abs(ref_logits[differ]).max()
    assert differ.sum() <= 3
