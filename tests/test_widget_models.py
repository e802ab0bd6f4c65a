"""The widget's model handling (download with licence dialog, progress, errors), the npe2
contribution, the 3D-view guard and closing the viewer while a worker runs.

Downloads go to a local HTTP server on 127.0.0.1 that serves the committed test-double
files under a test model card; the real hosts are never contacted.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import time

import numpy as np
import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from conftest import MODELS, TEST_DECODER, TEST_ENCODER, disc_image  # noqa: E402

pytestmark = pytest.mark.gui

from widget_support import make_widget  # noqa: E402
TIMEOUT = 20_000


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    from napari_edgesam.engine.cache import EmbeddingCache, set_default_cache

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    set_default_cache(EmbeddingCache(disk_dir=tmp_path / "embeddings"))
    yield
    set_default_cache(None)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def model_server():
    handler = functools.partial(_Quiet, directory=str(MODELS))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def test_card_dir(tmp_path, monkeypatch):
    """A model-card folder with one card for the test double, downloaded from a URL."""

    def make(base_url, default=True):
        from napari_edgesam.engine.models import PACKAGE_CARDS_DIR

        card = json.loads((PACKAGE_CARDS_DIR / "edgesam-3x.json").read_text())
        card.update(name="test-double", display_name="Test double (not EdgeSAM)",
                    default=default, aliases=[])
        for role, path in (("encoder", TEST_ENCODER), ("decoder", TEST_DECODER)):
            card["files"][role] = {"filename": path.name, "size": path.stat().st_size,
                                   "sha256": _sha(path), "urls": [f"{base_url}/{path.name}"]}
        card["licence"] = {"name": "Test Licence", "url": "https://example.invalid/licence",
                           "summary": "Test summary: non-commercial use only."}
        folder = tmp_path / "cards"
        folder.mkdir(exist_ok=True)
        (folder / "test-double.json").write_text(json.dumps(card))
        monkeypatch.setenv("NAPARI_EDGESAM_CARDS_DIR", str(folder))
        return folder

    return make


def test_published_models_listed_not_downloaded(make_napari_viewer):
    viewer = make_napari_viewer()
    w = make_widget(viewer)
    combo = w.model_picker.model_combo
    items = [combo.itemText(i) for i in range(combo.count())]
    assert items[0] == "EdgeSAM-3x  (not downloaded)"
    assert "EdgeSAM  (not downloaded)" in items
    assert items[-1] == "custom files..."
    assert w.model is None
    assert w.model_picker.download_button.isEnabled()
    assert "No model" in w.status


def test_download_shows_licence_then_uses_the_model(make_napari_viewer, qtbot, model_server,
                                                    test_card_dir, monkeypatch):
    from qtpy.QtCore import Qt

    test_card_dir(model_server)
    viewer = make_napari_viewer()
    img, truth = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img)
    w = make_widget(viewer)
    assert w.model_picker.model_combo.currentText() == "Test double (not EdgeSAM)  (not downloaded)"
    asked = []

    def ask(card):
        asked.append(card.licence_url)
        return False  # first: declined

    monkeypatch.setattr(w.model_picker, "_ask_licence", ask)
    qtbot.mouseClick(w.model_picker.download_button, Qt.MouseButton.LeftButton)
    assert asked == ["https://example.invalid/licence"]
    assert not w.model_picker.downloading and w.model is None
    assert "not accepted" in w.status

    monkeypatch.setattr(w.model_picker, "_ask_licence", lambda card: asked.append("again") or True)
    seen = []
    w.model_picker.download_progress.valueChanged.connect(seen.append)
    qtbot.mouseClick(w.model_picker.download_button, Qt.MouseButton.LeftButton)
    assert not w.model_picker.download_progress.isHidden()
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)
    assert w.model is not None and w.model.name == "test-double"
    assert w.model_picker.download_progress.isHidden()
    assert w.model_picker.model_combo.currentText() == "Test double (not EdgeSAM)"
    assert not w.model_picker.download_button.isEnabled()

    from napari_edgesam.engine import paths
    from napari_edgesam.engine.models import get_card, licence_notice_shown

    assert licence_notice_shown(get_card("test-double"))
    assert (paths.models_cache_dir() / TEST_ENCODER.name).read_bytes() == TEST_ENCODER.read_bytes()

    # it segments
    w.session.add_point((32, 32))
    qtbot.waitUntil(lambda: not w.busy and w.session.preview_mask is not None, timeout=TIMEOUT)
    assert w.commit() == 1

    # a new widget finds the downloaded default model by itself, without asking again
    w2 = make_widget(viewer)
    qtbot.waitUntil(lambda: w2.model is not None and not w2.busy, timeout=TIMEOUT)
    assert w2.model.name == "test-double"
    assert asked == ["https://example.invalid/licence", "again"]


def test_download_failure_is_a_notification(make_napari_viewer, qtbot, test_card_dir,
                                            closed_url, monkeypatch):
    import napari.utils.notifications as notifications

    errors = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    test_card_dir(closed_url)
    viewer = make_napari_viewer()
    viewer.add_image(disc_image((64, 64), (32, 32), 10)[0], name="img")
    w = make_widget(viewer)
    monkeypatch.setattr(w.model_picker, "_ask_licence", lambda card: True)
    w.model_picker.download(w.model_picker.model_combo.currentData()[1])
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.model is None
    assert errors and "download failed" in errors[0]
    assert "Error" in w.status
    assert [lay.name for lay in viewer.layers] == ["img", "EdgeSAM preview", "EdgeSAM box",
                                                   "EdgeSAM points"]
    assert w.model_picker.download_button.isEnabled()


def test_npe2_contribution_opens_the_widget(make_napari_viewer, npe2pm, qtbot, test_model):
    """Through npe2, as napari's Plugins menu opens it (the viewer comes wrapped in napari's
    PublicOnlyProxy), the widget segments and commits like the directly built one."""
    import npe2

    from napari_edgesam.widget.dock import EdgeSamWidget

    manifest = npe2.PluginManifest.from_distribution("napari-edgesam")
    assert manifest.display_name == "EdgeSAM"
    assert [w.display_name for w in manifest.contributions.widgets] == ["EdgeSAM"]
    assert {s.key for s in manifest.contributions.sample_data} >= {"cell", "coins", "nuclei3d"}
    npe2pm.register(manifest)
    viewer = make_napari_viewer()
    img, truth = disc_image((64, 64), (32, 32), 10)
    viewer.add_image(img, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-edgesam", "EdgeSAM")
    assert isinstance(widget, EdgeSamWidget)
    assert widget.viewer is viewer
    assert widget.session.image_layer is viewer.layers["img"]
    widget.session.set_model(test_model)
    qtbot.waitUntil(lambda: not widget.busy and widget.session.embedding is not None,
                    timeout=TIMEOUT)
    widget.session.add_point((32, 32))
    qtbot.waitUntil(lambda: not widget.busy and widget.session.preview_mask is not None,
                    timeout=TIMEOUT)
    assert widget.commit() == 1
    data = widget.session.labels_layer.data
    assert data.sum() == data.astype(bool).sum() > 50
    viewer.layers.remove("img")  # no error from the widget's layer bookkeeping
    assert widget.session.image_layer is None


def test_3d_view_is_refused_politely(make_napari_viewer, qtbot, test_model):
    viewer = make_napari_viewer()
    stack = np.zeros((4, 32, 32), np.uint8)
    viewer.add_image(stack)
    w = make_widget(viewer, test_model)
    qtbot.waitUntil(lambda: not w.busy and w.session.embedding is not None, timeout=TIMEOUT)
    viewer.dims.ndisplay = 3
    qtbot.waitUntil(lambda: "2D view" in w.status, timeout=TIMEOUT)
    viewer.dims.ndisplay = 2
    qtbot.waitUntil(lambda: "Ready" in w.status, timeout=TIMEOUT)


def test_viewer_closed_while_encoding(make_napari_viewer, qtbot):
    """Closing the viewer while a worker runs: no exception when the worker returns."""
    from conftest import SlowModel

    viewer = make_napari_viewer()
    viewer.add_image(disc_image((64, 64), (32, 32), 10)[0])
    slow = SlowModel(0.5)
    w = make_widget(viewer, slow)
    assert w.session.encoder.worker is not None
    worker = w.session.encoder.worker
    done = []
    worker.finished.connect(lambda: done.append(True))
    w.session.add_point((32, 32))
    viewer.close()
    t0 = time.time()
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)
    qtbot.wait(100)
    assert time.time() - t0 < 10
    assert not w.session.alive


@pytest.mark.parametrize("accept", [True, False])
def test_licence_dialog_shows_summary_and_link(make_napari_viewer, qtbot, accept):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from napari_edgesam.engine.models import get_card
    from napari_edgesam.widget.licence_dialog import ask_licence

    viewer = make_napari_viewer()
    w = make_widget(viewer)
    card = get_card("edgesam-3x")
    seen = {}

    def answer():
        box = next(x for x in QApplication.topLevelWidgets()
                   if isinstance(x, QMessageBox) and x.isVisible())
        seen["text"] = box.text() + "\n" + box.informativeText()
        button = next(b for b in box.buttons()
                      if (b.text() == "Accept and download") == accept
                      and box.buttonRole(b) in (QMessageBox.ButtonRole.AcceptRole,
                                                QMessageBox.ButtonRole.RejectRole))
        button.click()

    QTimer.singleShot(200, answer)
    assert ask_licence(card, w.model_picker) is accept
    assert "S-Lab License 1.0" in seen["text"]
    assert card.licence_url in seen["text"]
    assert card.licence_summary in seen["text"]
