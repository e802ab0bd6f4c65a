"""Intensity mapping: exact values, stack-wide limits, lazy sampling."""

from __future__ import annotations

import numpy as np

from napari_edgesam.engine import IntensityMapping, default_mapping, mapping_from_percentiles


def test_linear_mapping_values():
    m = IntensityMapping((100,), (300,))
    out = m.apply(np.array([[0, 100, 200], [300, 1000, 150]], np.uint16))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 128], [255, 255, 64]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_nan_and_inf_map_to_ends():
    m = IntensityMapping((0,), (1,))
    out = m.apply(np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0, 128])


def test_uint8_default_is_the_reference_identity():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    m = default_mapping(img)
    assert m == IntensityMapping.identity_uint8()
    np.testing.assert_array_equal(m.apply(img)[..., 1], img)


def test_stack_wide_limits_not_per_slice():
    """A dim slice in a bright stack keeps the stack's limits, so it stays dim."""
    rng = np.random.default_rng(0)
    stack = rng.integers(1000, 5000, size=(20, 64, 64)).astype(np.uint16)
    stack[3] //= 10  # a dim slice
    m = mapping_from_percentiles(stack)
    per_slice = mapping_from_percentiles(stack[3])
    assert m.high[0] > 4900  # the stack's upper limit, not the dim slice's (~500)
    assert m.apply(stack[3]).max() < 30  # so the dim slice stays dim
    assert per_slice.apply(stack[3]).max() == 255


def test_sampling_reads_only_a_few_slices():
    class Counting:
        """An array-like that counts the slices read."""

        def __init__(self, arr):
            self.arr, self.reads = arr, 0
            self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

        def __getitem__(self, idx):
            self.reads += 1
            return self.arr[idx]

    data = Counting(np.ones((200, 32, 32), np.uint16))
    mapping_from_percentiles(data)
    assert data.reads <= 16


def test_rgb_limits_per_channel():
    img = np.zeros((10, 10, 3), np.float32)
    img[..., 0] = np.linspace(0, 1, 100).reshape(10, 10)
    img[..., 1] = np.linspace(0, 100, 100).reshape(10, 10)
    m = mapping_from_percentiles(img, rgb=True, percentiles=(0, 100))
    assert m.channels == 3
    np.testing.assert_allclose(m.low, (0, 0, 0))
    np.testing.assert_allclose(m.high, (1, 100, 1))  # constant channel widened
    out = m.apply(img)
    assert out[..., 0].max() == 255 and out[..., 1].max() == 255 and out[..., 2].max() == 0


def test_key_changes_with_limits():
    assert IntensityMapping((0,), (10,)).key() != IntensityMapping((0,), (11,)).key()
    assert IntensityMapping((0,), (10,)).key() == IntensityMapping((0.0,), (10.0,)).key()


def test_rgba_stack_percentiles_ignore_alpha():
    stack = np.zeros((3, 8, 8, 4), np.float32)
    stack[..., 0] = 10.0
    stack[..., 3] = 1e6  # alpha must not count
    m = mapping_from_percentiles(stack, rgb=True, percentiles=(0, 100))
    assert m.channels == 3 and m.high[0] == 11.0  # constant 10 -> widened to 11


def test_lookup_table_path_equals_the_arithmetic():
    """8/16-bit integers go through a lookup table: same values as the float32 formula."""
    rng = np.random.default_rng(0)
    for dt in (np.uint16, np.int16, np.uint8, np.int8):
        info = np.iinfo(dt)
        img = rng.integers(info.min, info.max, (50, 60), endpoint=True).astype(dt)
        m = IntensityMapping((info.min / 3,), (info.max / 2,))
        x = (img.astype(np.float32) - np.float32(info.min / 3)) * (
            np.float32(255) / (np.float32(info.max / 2) - np.float32(info.min / 3)))
        expected = (np.clip(x, 0, 255) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(m.apply(img)[..., 0], expected)
        np.testing.assert_array_equal(m.apply(img, expand=False), expected)


def test_chunked_slices_are_sampled_in_windows_not_read_whole():
    """dask reads whole chunks for strided pixels; a large dask slice is sampled in a few
    windows instead, reading a small part of it, with percentiles close to strides'."""
    import dask.array as da
    rng = np.random.default_rng(0)
    img = (rng.gamma(2.0, 300.0, (6000, 6000)) + 100).astype(np.uint16)
    lazy = da.from_array(img, chunks=500)
    read = []

    def count(block):
        read.append(block.size)
        return block

    counted = lazy.map_blocks(count, dtype=img.dtype)
    m = mapping_from_percentiles(counted)
    strided = mapping_from_percentiles(img)  # numpy in memory: strides
    assert sum(read) < img.size / 3, sum(read) / img.size  # a few chunks, not the slice
    assert abs(m.low[0] - strided.low[0]) < 0.05 * strided.low[0] + 5
    assert abs(m.high[0] - strided.high[0]) < 0.05 * strided.high[0]


def test_stack_mapping_is_the_one_policy():
    """One function decides the mapping for the widget, the CLI, propagation and batch."""
    import pytest

    from napari_edgesam.engine.intensity import IntensityMapping, stack_mapping

    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert stack_mapping(u8, "auto") == IntensityMapping.identity_uint8(1)
    u16 = (np.arange(100 * 100, dtype=np.uint16) * 3).reshape(100, 100)
    auto = stack_mapping(u16, "auto")
    assert auto == stack_mapping(u16, "percentiles")
    assert 0 < auto.low[0] < 3 * 100 and 29000 < auto.high[0] < 30000  # 0.5 / 99.8 %
    assert stack_mapping(u8, "percentiles") != IntensityMapping.identity_uint8(1)
    rgb = stack_mapping(None, "contrast", rgb=True, limits=(10, 90))
    assert rgb.low == (10.0,) * 3 and rgb.high == (90.0,) * 3
    with pytest.raises(ValueError, match="needs limits"):
        stack_mapping(u8, "contrast")
    with pytest.raises(ValueError, match="unknown mapping"):
        stack_mapping(u8, "brightest")
