"""One colour (RGB) rule for the three command-line paths: ``segment`` (select_plane),
``propagate`` (stack_view) and ``batch`` (plan_axes), on files tifffile reads back with known
axes. The batch end-to-end run uses the test-double model (not EdgeSAM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from test_automatic import make_scene_2d, match_instances

from napari_edgesam.engine import EdgeSamModel, InvalidInputError
from napari_edgesam.workflows.automatic import AutoParams
from napari_edgesam.workflows.batch import BatchParams, ModelSpec, plan_axes, run_batch
from napari_edgesam.workflows.tiff_io import (
    LazyTiff,
    read_image,
    rgb_axis,
    select_plane,
    stack_view,
)


def _write(path, data, axes):
    """A TIFF that is NOT photometric RGB, with ``axes`` as tifffile reads them back."""
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": axes})
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == axes
        assert int(tif.pages[0].photometric) != 2  # not photometric RGB
    return path


def _plan(path, **kwargs):
    with LazyTiff(path) as r:
        assert not r.is_rgb
        return plan_axes(r.axes, r.shape, name=path.name, **kwargs)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    yxc = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    zyxc = rng.integers(0, 255, (4, 20, 24, 3), dtype=np.uint8)
    cyx = rng.integers(0, 255, (3, 20, 24), dtype=np.uint8)
    zcyx = rng.integers(0, 255, (4, 3, 20, 24), dtype=np.uint8)
    return {
        "yxc": (_write(tmp_path / "yxc.tif", yxc, "YXC"), yxc),
        "zyxc": (_write(tmp_path / "zyxc.tif", zyxc, "ZYXC"), zyxc),
        "cyx": (_write(tmp_path / "cyx.tif", cyx, "CYX"), cyx),
        "zcyx": (_write(tmp_path / "zcyx.tif", zcyx, "ZCYX"), zcyx),
    }


def test_rgb_axis_rule():
    assert rgb_axis("YXS", (5, 6, 3)) == 2
    assert rgb_axis("YXS", (5, 6, 4)) == 2
    assert rgb_axis("SYX", (3, 5, 6)) == 0  # samples are colour wherever they are
    assert rgb_axis("YXC", (5, 6, 3)) == 2  # a last C axis of 3 or 4 is colour
    assert rgb_axis("ZYXC", (2, 5, 6, 4)) == 3
    assert rgb_axis("yxc", (5, 6, 3)) == 2  # letters are case-insensitive
    assert rgb_axis("CYX", (3, 5, 6)) is None  # a C axis that is not last is not colour
    assert rgb_axis("ZCYX", (2, 3, 5, 6)) is None
    assert rgb_axis("YXC", (5, 6, 2)) is None  # sizes other than 3 or 4 are channels
    assert rgb_axis("YXC", (5, 6, 5)) is None
    assert rgb_axis("YXS", (5, 6, 2)) is None
    assert rgb_axis("ZYX", (3, 5, 6)) is None  # stack axes never are
    assert rgb_axis("YX", (5, 6)) is None
    with pytest.raises(ValueError):
        rgb_axis("YXC", (5, 6))


def test_last_channel_axis_of_3_is_rgb_everywhere(files):
    path, data = files["yxc"]
    plane, what = select_plane(read_image(path))  # segment
    assert what == "RGB" and plane.shape == (20, 24, 3)
    np.testing.assert_array_equal(plane, data)
    plan = _plan(path)  # batch: the same file is colour, no --channel needed
    assert plan.rgb and plan.channel is None and plan.channel_axis == 2
    assert plan.out_axes == "YX"
    with LazyTiff(path) as r:
        np.testing.assert_array_equal(plan.plane(r, 0, 0), data)

    path, data = files["zyxc"]
    view, letter = stack_view(read_image(path))  # propagate
    assert letter == "Z" and view.shape == (4, 20, 24, 3)
    np.testing.assert_array_equal(np.asarray(view), data)
    plan = _plan(path)
    assert plan.rgb and plan.z == 0 and plan.out_axes == "ZYX"
    with LazyTiff(path) as r:
        np.testing.assert_array_equal(plan.plane(r, 0, 2), data[2])


def test_first_channel_axis_of_3_is_not_rgb_anywhere(files):
    path, _ = files["cyx"]
    with pytest.raises(InvalidInputError, match="--channel"):
        select_plane(read_image(path))
    with pytest.raises(InvalidInputError, match="--channel"):
        _plan(path)
    path, _ = files["zcyx"]
    with pytest.raises(InvalidInputError, match="--channel"):
        stack_view(read_image(path))
    with pytest.raises(InvalidInputError, match="--channel"):
        _plan(path)


@pytest.mark.parametrize("name", ["yxc", "cyx"])
def test_channel_picks_one_channel_everywhere(files, name):
    path, data = files[name]
    c_axis = "YXC".index("C") if name == "yxc" else 0
    want = np.take(data, 1, axis=c_axis)
    plane, what = select_plane(read_image(path), channel=1)
    assert what == "channel 1"
    np.testing.assert_array_equal(plane, want)
    plan = _plan(path, channel=1)
    assert not plan.rgb and plan.channel == 1
    with LazyTiff(path) as r:
        np.testing.assert_array_equal(plan.plane(r, 0, 0), want)
    with pytest.raises(InvalidInputError, match="--channel 3"):
        select_plane(read_image(path), channel=3)
    with pytest.raises(InvalidInputError, match="--channel 3"):
        _plan(path, channel=3)

    stack_name = "z" + name
    path, data = files[stack_name]
    c_axis = 3 if stack_name == "zyxc" else 1
    view, _ = stack_view(read_image(path), channel=2)
    np.testing.assert_array_equal(np.asarray(view), np.take(data, 2, axis=c_axis))
    plan = _plan(path, channel=2)
    assert not plan.rgb and plan.channel == 2
    with LazyTiff(path) as r:
        np.testing.assert_array_equal(plan.plane(r, 0, 1), np.take(data, 2, axis=c_axis)[1])
    with pytest.raises(InvalidInputError, match="--channel 3"):
        stack_view(read_image(path), channel=3)


def test_batch_segments_a_yxc_file_as_colour(tmp_path):
    """process_file passes the file's axes through the rule: a 3-channel YXC file that is not
    photometric RGB runs without --channel and is recorded as colour."""
    img, truth = make_scene_2d(seed=15)
    rgb = np.stack([img, img // 2, np.zeros_like(img)], axis=-1)
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "colour.tif", rgb, "YXC")
    spec = ModelSpec.from_model(EdgeSamModel(TEST_ENCODER, TEST_DECODER, name="test-double"))
    out = tmp_path / "out"
    result = run_batch(folder, out, spec, BatchParams(automatic=AutoParams(object_size=24)),
                       scheduler="synchronous")
    assert result.ok, [r.error for r in result.results]
    with tifffile.TiffFile(out / "colour_labels.tif") as tif:
        labels = tif.series[0].asarray()
    match_instances(labels, truth)
    side = json.loads((out / "colour_labels.json").read_text())
    assert side["axes_used"]["rgb"] is True and side["axes_used"]["channel"] == "C"
