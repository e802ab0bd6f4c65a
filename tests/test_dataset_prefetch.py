"""The Folder tab reads the next image and encodes the slice it opens on while the user is
idle (issue 18, "A dataset, not an image"): after Next the first click runs only the
decoder; "Prefetch next image" off, the encoder runs after Next; a click stops a prefetch
in flight; large images are not read ahead. Real napari, real clicks and keys, the test
double (not EdgeSAM).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile
from conftest import SlowModel
from journey import TIMEOUT, choose_test_model, click, dock_panel

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _short_idle(monkeypatch):
    from napari_edgesam.widget import _prefetch

    monkeypatch.setattr(_prefetch, "IDLE_MS", 150)


def _stack(n, disc_on, centre=(50, 70), shape=(100, 140)):
    """uint16 (n, H, W): dim noise, a bright disc on slices ``disc_on`` (so the stack-wide
    percentile mapping is used, as for real microscopy)."""
    rng = np.random.default_rng(n)
    img = rng.integers(280, 320, (n, *shape)).astype(np.uint16)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 15**2
    for z in disc_on:
        img[z][disc] = 2500
    return img


class _Counter:
    """Counts the encoder runs of the session's model made for the user (``n``: in the
    panel's workers) and in the background (``prefetched``: the prefetch thread)."""

    def __init__(self, monkeypatch, model):
        self.n = self.prefetched = 0
        inner = model.encode

        def encode(*args, **kwargs):
            if threading.current_thread().name == "edgesam-prefetch":
                self.prefetched += 1
            else:
                self.n += 1
            return inner(*args, **kwargs)

        monkeypatch.setattr(model, "encode", encode)


def _ready_on(qtbot, viewer, w, name):
    s = w.session
    qtbot.waitUntil(lambda: s.image_layer is not None and s.image_layer.name == name
                    and s.embedding is not None and not w.busy, timeout=TIMEOUT)
    viewer.reset_view()
    qtbot.wait(30)


def _wait_prefetched(qtbot, w, name):
    """Wait until the idle prefetch planned (after now) the next image ``name`` and ran it."""
    ctl = w.prefetcher
    n = len(ctl.requested)
    qtbot.waitUntil(lambda: ("next image", name) in ctl.requested[n:] and not ctl.busy,
                    timeout=TIMEOUT)
    assert ctl.prefetcher.stats["failed"] == 0


def test_next_is_encoded_ahead_so_the_first_click_runs_only_the_decoder(
        make_napari_viewer, npe2pm, qtbot, tmp_path, monkeypatch):
    from qtpy.QtCore import Qt

    from napari_edgesam.engine.paths import get_setting
    from napari_edgesam.widget import dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "a.tif", _stack(7, [3]))
    tifffile.imwrite(raw / "b.tif", _stack(5, [2]))  # the object on its middle slice only
    tifffile.imwrite(raw / "c.tif", _stack(1, [0])[0])
    tifffile.imwrite(raw / "d.tif", _stack(2, [0])[0])
    viewer, w = dock_panel(make_napari_viewer, npe2pm)  # the panel's slice prefetch is off
    choose_test_model(qtbot, w)
    s = w.session
    encodes = _Counter(monkeypatch, s.predictor.model)
    reads = []
    read_layers = dataset.read_layers
    monkeypatch.setattr(dataset, "read_layers", lambda p: reads.append(p.name) or
                        read_layers(p))  # the reads made when an image is opened
    w.tabs.setCurrentIndex(3)
    panel = w.folder
    assert panel.prefetch_check.isChecked()  # on by default
    panel.choose_images(str(raw))
    _ready_on(qtbot, viewer, w, "a")
    assert s.lead == (3,)  # opened on its middle slice
    # the user moves to a's last slice: napari alone would keep b's slider at its end
    viewer.window._qt_viewer.dims.slider_widgets[0].slider.setValue(6)
    qtbot.waitUntil(lambda: s.lead == (6,) and s.embedding is not None and not w.busy,
                    timeout=TIMEOUT)
    _wait_prefetched(qtbot, w, "b.tif")
    assert panel.controller.next_image.ready
    assert encodes.prefetched >= 1  # b's slice, encoded in the background

    before = encodes.n
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)  # Next
    _ready_on(qtbot, viewer, w, "b")
    assert s.lead == (2,)  # b's middle slice, the one encoded ahead
    assert s.embedding.embedding.cached  # from the cache: no encoder run after Next
    assert reads == ["a.tif"]  # b's pixels read ahead were used, not read again
    nxt = panel.controller.next_image  # b's was handed over; at most c's is held now
    assert nxt is None or nxt.index == 2
    click(qtbot, viewer, s.image_layer, 50, 70)
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    assert s.preview_mask[50, 70] and not s.preview_mask[5, 5]
    assert encodes.n == before  # the first click ran only the decoder

    _wait_prefetched(qtbot, w, "c.tif")  # then c, while the user is idle on b
    assert panel.controller.next_image.index == 2  # one image ahead, no more

    # off: remembered, what was read ahead dropped (c's embedding stays in the cache),
    # nothing more is prefetched, and the encoder runs after Next
    qtbot.mouseClick(panel.prefetch_check, Qt.MouseButton.LeftButton)
    assert not panel.prefetch_check.isChecked()
    assert get_setting("folder_prefetch_next_image") is False
    assert panel.controller.next_image is None
    qtbot.mouseClick(panel.next_button, Qt.MouseButton.LeftButton)
    _ready_on(qtbot, viewer, w, "c")
    n = len(w.prefetcher.requested)
    qtbot.wait(600)  # idle on c
    assert w.prefetcher.requested[n:] == [] and panel.controller.next_image is None
    before = encodes.n
    qtbot.mouseClick(panel.next_button, Qt.MouseButton.LeftButton)
    _ready_on(qtbot, viewer, w, "d")
    assert not s.embedding.embedding.cached
    assert encodes.n == before + 1
    assert reads == ["a.tif", "c.tif", "d.tif"]


def test_the_unticked_box_is_remembered(make_napari_viewer, npe2pm, qtbot):
    from napari_edgesam.engine.paths import set_setting

    set_setting("folder_prefetch_next_image", False)  # unticked in an earlier session
    _viewer, w = dock_panel(make_napari_viewer, npe2pm)
    assert not w.folder.prefetch_check.isChecked()
    assert not w.folder.controller.prefetch_next


def test_a_click_stops_the_next_image_prefetch_at_once(make_napari_viewer, npe2pm, qtbot,
                                                       tmp_path):
    from napari_edgesam.widget.dock import EdgeSamWidget

    raw = tmp_path / "raw"
    raw.mkdir()
    for i, name in enumerate(("a", "b")):
        tifffile.imwrite(raw / f"{name}.tif", _stack(i + 1, [0])[0])  # different pixels
    slow = SlowModel(2.0)
    slow._inner.load()
    npe2pm.register("napari")
    viewer = make_napari_viewer(show=True)
    w = EdgeSamWidget(viewer, model=slow)
    viewer.window.add_dock_widget(w, name="EdgeSAM")
    w.prefetch_check.setChecked(False)  # only the next image is prefetched
    w.folder.choose_images(str(raw))
    s = w.session
    _ready_on(qtbot, viewer, w, "a")
    ctl = w.prefetcher
    qtbot.waitUntil(lambda: ctl.prefetcher is not None and ctl.prefetcher.busy
                    and slow.calls >= 2, timeout=TIMEOUT)  # b's encoder run in flight
    assert ctl.requested[-1] == ("next image", "b.tif")
    # idle only: it did not start while a was encoded (a's run, then b's: 2 runs so far)
    assert slow.calls == 2 and slow.terminated == 0
    t0 = time.perf_counter()
    click(qtbot, viewer, s.image_layer, 50, 70)
    qtbot.waitUntil(lambda: s.preview_mask is not None, timeout=TIMEOUT)
    latency = time.perf_counter() - t0
    qtbot.waitUntil(lambda: ctl.prefetcher.stats["cancelled"] >= 1, timeout=TIMEOUT)
    assert slow.terminated == 1
    assert latency < 1.2, f"click answered after {latency:.2f} s (prefetch run is 2 s)"


def test_what_is_not_read_ahead(tmp_path, monkeypatch):
    from napari_edgesam.widget import next_image
    from napari_edgesam.widget.next_image import NextImage, NotPrefetched

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _stack(4, [1]))
    monkeypatch.setattr(next_image, "MAX_BYTES", 4 * 100 * 140 * 2 - 1)
    nxt = NextImage(path, 1, ("auto",))
    job = nxt.job()
    with pytest.raises(NotPrefetched, match="MiB"):
        job["mapping"]()
    assert nxt.job() is None and not nxt.ready  # not tried again
    assert nxt.take() is None

    monkeypatch.setattr(next_image, "MAX_BYTES", 4 * 100 * 140 * 2)
    nxt = NextImage(path, 1, ("auto",))
    mapping = nxt.job()["mapping"]()
    np.testing.assert_array_equal(nxt.job()["image"](), _stack(4, [1])[1])  # middle: 1
    assert mapping.key() and nxt.ready and nxt.nbytes == 5 * 100 * 140 * 2
    tifffile.imwrite(path, _stack(4, [2]))  # changed on disk meanwhile: read again at Next
    assert nxt.take() is None and nxt.nbytes == 0


class _Decodes:
    """Counts napari reads (``npe2.read``) and Pillow decodes (``ImageFile.load``)."""

    def __init__(self, monkeypatch):
        import npe2
        from PIL import ImageFile

        self.reads = self.decodes = 0
        read, load = npe2.read, ImageFile.ImageFile.load

        def counted_read(*args, **kwargs):
            self.reads += 1
            return read(*args, **kwargs)

        def counted_load(im, *args, **kwargs):
            self.decodes += 1
            return load(im, *args, **kwargs)

        monkeypatch.setattr(npe2, "read", counted_read)
        monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)


def _sparse(shape, dtype=np.uint8):
    """Mostly zeros (a few KiB as PNG however large), one bright square."""
    img = np.zeros(shape, dtype)
    img[10:60, 10:60] = 200
    return img


def test_a_large_png_is_judged_from_its_header_and_never_decoded(tmp_path, monkeypatch,
                                                                  npe2pm):
    """9000 x 9000 uint8 (77 MiB decoded, a few KiB on disk): tiled, so not read ahead;
    2000 x 2000 RGBA (15 MiB decoded) over a 8 MiB bound: not read ahead. Neither file is
    decoded to find out."""
    from PIL import Image

    from napari_edgesam.widget import next_image
    from napari_edgesam.widget.next_image import NextImage, NotPrefetched

    npe2pm.register("napari")  # napari's own readers, as in the viewer
    big = tmp_path / "big.png"
    Image.fromarray(_sparse((9000, 9000))).save(big)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(_sparse((2000, 2000, 4))).save(rgba)
    assert big.stat().st_size < 2**20 and rgba.stat().st_size < 2**20
    counts = _Decodes(monkeypatch)
    nxt = NextImage(big, 1, ("auto",))
    with pytest.raises(NotPrefetched, match="tiled"):
        nxt.job()["mapping"]()
    assert counts.reads == 0 and counts.decodes == 0
    monkeypatch.setattr(next_image, "MAX_BYTES", 8 * 2**20)
    nxt = NextImage(rgba, 1, ("auto",))
    with pytest.raises(NotPrefetched, match="15 MiB"):
        nxt.job()["mapping"]()
    assert counts.reads == 0 and counts.decodes == 0
    assert nxt.nbytes == 0 and nxt.take() is None
    assert next_image.image_header(big) == ((9000, 9000), 9000 * 9000)
    assert next_image.image_header(rgba) == ((2000, 2000, 4), 2000 * 2000 * 4)
    assert counts.reads == 0 and counts.decodes == 0


def test_headers_tell_the_size_napari_reads(tmp_path, monkeypatch, npe2pm):
    """The header's shape is what napari's reader gives and its size bounds what it holds
    (PNG grey and palette, JPEG, BMP, animated GIF, .npy, TIFF, OME-Zarr v3 with a channel
    axis: lazy, 0 bytes); a small PNG is read ahead, once."""
    import zarr
    from PIL import Image

    from napari_edgesam.widget.next_image import NextImage, image_header, read_layers

    npe2pm.register("napari")  # napari's own readers, as in the viewer
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    files = {"grey.png": Image.fromarray(_sparse((100, 140))),
             "palette.png": Image.fromarray(rgb).convert("P"),
             "photo.jpg": Image.fromarray(rgb), "photo.bmp": Image.fromarray(rgb)}
    for name, im in files.items():
        im.save(tmp_path / name)
    frames = [Image.fromarray(_sparse((50, 70)) // (i + 1)) for i in range(3)]
    frames[0].save(tmp_path / "movie.gif", save_all=True, append_images=frames[1:])
    np.save(tmp_path / "arr.npy", _sparse((3, 64, 80), np.uint16))
    tifffile.imwrite(tmp_path / "stack.tif", _stack(4, [1]))
    for path in sorted(tmp_path.iterdir()):
        shape, nbytes = image_header(path)
        (data, *_), *_ = read_layers(path)
        palette = path.name in ("palette.png", "movie.gif")  # RGB or RGBA: 4 counted
        assert shape == data.shape or (palette and shape[:-1] == data.shape[:-1]), path.name
        assert data.nbytes <= nbytes, path.name
    root = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=(2, 5, 3000, 200), dtype="uint16", chunks=(1, 1, 64, 64))
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
                 {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]}]}]}
    assert image_header(tmp_path / "cells.ome.zarr") == ((5, 3000, 200), 0)

    counts = _Decodes(monkeypatch)
    nxt = NextImage(tmp_path / "grey.png", 1, ("auto",))
    nxt.job()["mapping"]()
    assert nxt.ready and counts.reads == 1
    np.testing.assert_array_equal(nxt.take()[0][0], _sparse((100, 140)))


def test_next_during_the_read_ahead_waits_for_it_instead_of_reading_again(tmp_path,
                                                                          monkeypatch):
    """Next while the prefetch thread reads the next image: take() does not wait (GUI
    thread), the read after Next (read_layers, in the Folder tab's worker) waits for the
    read ahead and uses its pixels: one read, one copy."""
    import npe2

    from napari_edgesam.widget.next_image import NextImage, NotPrefetched, read_layers

    path = tmp_path / "b.tif"
    tifffile.imwrite(path, _stack(3, [1]))
    started, release = threading.Event(), threading.Event()
    reads = []
    real = npe2.read

    def slow_read(*args, **kwargs):
        reads.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(npe2, "read", slow_read)
    nxt = NextImage(path, 1, ("auto",))
    job = nxt.job()
    prefetch_error = []

    def prefetch():
        try:
            job["mapping"]()
        except Exception as exc:  # noqa: BLE001
            prefetch_error.append(exc)

    threading.Thread(target=prefetch, name="edgesam-prefetch").start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert nxt.take() is None  # GUI thread: does not wait for the read
    assert time.perf_counter() - t0 < 0.5
    got = []
    worker = threading.Thread(target=lambda: got.append(read_layers(path)), name="worker")
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()  # waits for the read ahead instead of reading again
    release.set()
    worker.join(10)
    assert not worker.is_alive() and reads == ["edgesam-prefetch"]
    np.testing.assert_array_equal(got[0][0][0], _stack(3, [1]))
    assert nxt.nbytes == 0  # handed over: the read-ahead holds nothing now
    assert isinstance(prefetch_error[0], NotPrefetched)  # its encoding is not needed now
    assert nxt.job() is None


def test_a_dropped_read_ahead_is_not_kept_alive_by_its_prefetch_job(tmp_path, monkeypatch,
                                                                      npe2pm):
    """The engine's Prefetcher may keep a finished job; the Folder tab dropping its
    NextImage (Next to another image, prefetch off) frees the pixels all the same. Pixels
    over the bound after reading (a header that said less) are not kept either."""
    import gc
    import weakref

    from napari_edgesam.widget import next_image
    from napari_edgesam.widget.next_image import NextImage, NotPrefetched

    npe2pm.register("napari")  # napari's own readers, as in the viewer
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, _stack(3, [1]))
    nxt = NextImage(path, 1, ("auto",))
    job = nxt.job()
    job["mapping"]()
    job["image"]()
    pixels = weakref.ref(nxt._layers[0][0])
    del nxt
    gc.collect()
    assert pixels() is None
    with pytest.raises(NotPrefetched):
        job["image"]()

    import npe2

    read, reads = npe2.read, []

    def watched(*args, **kwargs):
        out = read(*args, **kwargs)
        reads.append(weakref.ref(out[0][0]))
        return out

    monkeypatch.setattr(npe2, "read", watched)
    monkeypatch.setattr(next_image, "image_header", lambda p: ((3, 100, 140), 0))
    monkeypatch.setattr(next_image, "MAX_BYTES", 3 * 100 * 140 * 2 - 1)
    nxt = NextImage(path, 1, ("auto",))
    with pytest.raises(NotPrefetched, match="MiB"):
        nxt.job()["mapping"]()
    assert nxt.nbytes == 0 and nxt.take() is None
    gc.collect()
    assert len(reads) == 1 and reads[0]() is None  # not even through nxt.failed's traceback
