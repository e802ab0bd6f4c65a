"""The widget's pure helpers (no Qt, no napari): boxes, slices, commit indices."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.widget._geometry import (
    ImageGeometry,
    commit_indices,
    normalise_box,
    rectangle_to_box,
)


@pytest.mark.parametrize(
    "corners",
    [
        (10, 20, 40, 70),  # top-left -> bottom-right
        (40, 70, 10, 20),  # bottom-right -> top-left
        (10, 70, 40, 20),  # top-right -> bottom-left
        (40, 20, 10, 70),  # bottom-left -> top-right
    ],
)
def test_box_any_direction(corners):
    assert normalise_box(*corners, shape=(100, 100)) == (20, 10, 70, 40)


def test_box_clipped_to_image_and_degenerate_boxes():
    # (row, col) corners partly outside a 50 x 80 image
    assert normalise_box(-10, -5, 60, 100, (50, 80)) == (-0.5, -0.5, 79.5, 49.5)
    assert normalise_box(60, 10, 70, 20, (50, 80)) is None  # below the image
    assert normalise_box(10, 10, 10, 30, (50, 80)) is None  # no height
    assert normalise_box(np.nan, 10, 20, 30, (50, 80)) is None


def test_rectangle_vertices_to_box():
    verts = np.array([[30, 5], [30, 25], [12, 25], [12, 5]])
    assert rectangle_to_box(verts, (40, 40)) == (5, 12, 25, 30)
    assert rectangle_to_box(np.zeros((0, 2)), (40, 40)) is None


def test_geometry_grey_rgb_stacks_channels():
    g = ImageGeometry((5, 64, 80))
    assert g.ndim == 3 and g.spatial_shape == (64, 80) and g.leading_shape == (5,)
    assert g.labels_shape == (5, 64, 80)
    assert g.leading_index([2.6, 10, 10]) == (3,)
    assert g.leading_index([-3, 10, 10]) == (0,)
    assert g.leading_index([99, 10, 10]) == (4,)

    rgb = ImageGeometry((64, 80, 3), rgb=True)
    assert rgb.ndim == 2 and rgb.spatial_shape == (64, 80) and rgb.labels_shape == (64, 80)
    assert rgb.leading_index([10, 10]) == ()

    # (t, c, y, x) with channels on axis 1: labels drop it; the model sees the chosen channel
    mc = ImageGeometry((4, 2, 32, 32), channel_axis=1)
    assert mc.labels_shape == (4, 32, 32) and mc.labels_axes == [0, 2, 3]
    lead = mc.leading_index([3, 0, 5, 5])
    assert lead == (3, 0)
    assert mc.slice_key(lead, channel=1) == (3, 1)
    assert mc.labels_index((3, 1)) == (3,)
    assert mc.same_slice((3, 0), (3, 1)) and not mc.same_slice((2, 0), (3, 0))
    data = np.arange(4 * 2 * 32 * 32).reshape(4, 2, 32, 32)
    np.testing.assert_array_equal(mc.read_slice(data, (3, 1)), data[3, 1])

    with pytest.raises(ValueError):
        ImageGeometry((32, 32), channel_axis=0)  # a spatial axis
    with pytest.raises(ValueError):
        ImageGeometry((32,))


def test_commit_indices_background_only_and_offset():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    existing = np.zeros((4, 5), int)
    existing[1, 1] = 7
    idx = commit_indices(mask, (2,), existing, only_background=True, offset=(10, 20))
    z, r, c = idx
    assert (z == 2).all()
    got = set(zip(r.tolist(), c.tolist(), strict=True))
    want = {(10 + rr, 20 + cc) for rr, cc in zip(*np.nonzero(mask), strict=True)} - {(11, 21)}
    assert got == want
    idx = commit_indices(mask, (), existing, only_background=False)
    assert len(idx) == 2 and idx[0].size == mask.sum()
