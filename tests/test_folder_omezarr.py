"""Journey: a folder of OME-Zarr images in the Folder tab (issue 18, "A dataset, not an
image"): listed beside TIFFs, read by napari-ome-zarr as lazy multiscale layers, click,
commit, Next, Previous, labels restored; the labels are saved as TIFF. The images are
written here with zarr as OME-NGFF 0.5 multiscales (zarr v3). Real napari, real clicks and
keys, the test double (not EdgeSAM).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from journey import TIMEOUT, choose_test_model, click, dock_panel

import napari_ome_zarr  # noqa: F401  (the testing extra: missing fails, never skips)

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _short_idle(monkeypatch):
    from napari_edgesam.widget import _prefetch

    monkeypatch.setattr(_prefetch, "IDLE_MS", 150)


def write_ome_zarr(path, image, levels=3, chunk=64):
    """``image`` ``(..., Y, X)`` as an OME-NGFF 0.5 multiscale image: level ``i`` is the
    image taken every ``2**i`` pixels in Y and X; axes ``z`` (if 3D), ``y``, ``x``."""
    names = ["z", "y", "x"][-image.ndim:]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    for i in range(levels):
        f = 2**i
        level = image[..., ::f, ::f]
        chunks = (1,) * (image.ndim - 2) + (chunk, chunk)
        arr = root.create_array(str(i), shape=level.shape, dtype=level.dtype, chunks=chunks)
        arr[...] = level
        scale = [1.0] * (image.ndim - 2) + [float(f), float(f)]
        datasets.append({"path": str(i),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": path.name,
        "axes": [{"name": n, "type": "space"} for n in names],
        "datasets": datasets}]}


def _scene(shape, centre, depth=None):
    """uint8 ``(Y, X)`` with a bright disc, or ``(depth, Y, X)`` with it on the middle
    slice only."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 22**2
    img = np.full(shape if depth is None else (depth, *shape), 20, np.uint8)
    (img if depth is None else img[depth // 2])[disc] = 200
    return img


def test_an_ome_zarr_folder_annotated_and_restored(make_napari_viewer, npe2pm, qtbot,
                                                   tmp_path):
    from qtpy.QtCore import Qt

    from napari_edgesam.widget._geometry import image_data

    raw = tmp_path / "raw"
    raw.mkdir()
    a = _scene((200, 260), (90, 120))
    write_ome_zarr(raw / "a.ome.zarr", a)
    write_ome_zarr(raw / "b.zarr", _scene((160, 200), (70, 90), depth=5))  # z-stack
    tifffile.imwrite(raw / "c.tif", _scene((100, 140), (40, 50)))
    npe2pm.register("napari-ome-zarr")  # installed: napari finds it as a user's napari does
    viewer, w = dock_panel(make_napari_viewer, npe2pm)
    choose_test_model(qtbot, w)
    w.tabs.setCurrentIndex(3)
    panel = w.folder
    panel.choose_images(str(raw))
    s = w.session
    assert [p.name for p in panel.controller.dataset.items] == ["a.ome.zarr", "b.zarr",
                                                                "c.tif"]

    def wait_on(index):
        c = panel.controller
        qtbot.waitUntil(lambda: c.index == index and c.image_layers
                        and s.image_layer is c.image_layers[0] and s.embedding is not None
                        and not w.busy, timeout=TIMEOUT)
        viewer.reset_view()
        qtbot.wait(30)
        return s.image_layer

    layer = wait_on(0)
    assert layer.multiscale and len(layer.data) == 3
    full = image_data(layer)  # the full-resolution level, read lazily (dask over zarr)
    assert not isinstance(full, np.ndarray) and full.shape == a.shape
    click(qtbot, viewer, layer, 90, 120)
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    assert s.preview_mask.shape == a.shape and s.preview_mask[90, 120]
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.wait(50)
    qtbot.keyClick(canvas, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: "Committed label 1" in w.status, timeout=TIMEOUT)
    painted = np.asarray(s.labels_layer.data).copy()
    assert painted.shape == a.shape and painted[90, 120] == 1

    ctl = w.prefetcher  # idle a moment: b's middle slice is encoded ahead, lazily read
    qtbot.waitUntil(lambda: ("next image", "b.zarr") in ctl.requested and not ctl.busy,
                    timeout=TIMEOUT)
    assert ctl.prefetcher.stats["failed"] == 0
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)  # Next
    layer = wait_on(1)
    assert layer.multiscale and s.lead == (2,)  # the stack opens on its middle slice
    assert s.embedding.embedding.cached  # the embedding prefetched: no encoder after Next
    saved = raw / "labels" / "a_labels.tif"  # TIFF, named as for a TIFF image
    qtbot.waitUntil(saved.is_file, timeout=TIMEOUT)
    np.testing.assert_array_equal(tifffile.imread(saved), painted)
    log = json.loads((raw / "labels" / "a_labels.prompts.json").read_text())
    assert [o["label"] for o in log["objects"]] == [1]

    qtbot.mouseClick(panel.previous_button, Qt.MouseButton.LeftButton)  # back to a
    wait_on(0)
    qtbot.waitUntil(lambda: s.labels_layer is not None, timeout=TIMEOUT)
    np.testing.assert_array_equal(s.labels_layer.data, painted)  # restored, the target
    assert "1 of 3 (1 done)" in panel.where_label.text()
