"""The panel's model row (:class:`~napari_edgesam.widget.model_picker.ModelPicker`) in real
napari/Qt: remembering the model across sessions, download progress for the whole model,
Cancel, offline and licence messages.

Downloads go to a local HTTP server on 127.0.0.1 serving the committed test-double files
under a test model card ("Test double", never EdgeSAM); the real hosts are never contacted.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import shutil
import threading
import time

import pytest

import napari  # noqa: F401  (the testing extra: missing fails, never skips)
import pytestqt  # noqa: F401  (the testing extra: missing fails, never skips)

from conftest import TEST_DECODER, TEST_ENCODER  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 20_000
#: The URL path of the test files, shaped like a Hugging Face file URL.
REPO_PATH = "/someone/test-double/resolve/main"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def notes(monkeypatch):
    """Every notification shown, by kind (napari's functions replaced by recorders)."""
    import napari.utils.notifications as notifications

    seen = {"error": [], "warning": [], "info": []}
    monkeypatch.setattr(notifications, "show_error", seen["error"].append)
    monkeypatch.setattr(notifications, "show_warning", seen["warning"].append)
    monkeypatch.setattr(notifications, "show_info", seen["info"].append)
    return seen


class Host:
    """Plays the panel: start_worker and notify_error as the dock provides them."""

    def __init__(self):
        self.errors: list[str] = []
        self.statuses: list[str] = []
        self.loaded: list = []

    def start_worker(self, func, *args, returned=None, errored=None, finished=None,
                     desc=None, yielded=None, total=0):
        from napari.qt.threading import create_worker
        from superqt.utils import FunctionWorker

        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True,
                               _worker_class=FunctionWorker)
        if returned is not None:
            worker.returned.connect(returned)
        worker.errored.connect(errored or (lambda exc: self.notify_error(exc)))
        if finished is not None:
            worker.finished.connect(finished)
        worker.start()
        return worker

    def notify_error(self, exc, prefix=""):
        from napari.utils.notifications import show_error

        self.errors.append(f"{prefix}{exc}")
        show_error(f"EdgeSAM: {prefix}{exc}")

    def picker(self, viewer, qtbot):
        """A new picker docked in ``viewer`` (a new napari session's model row)."""
        from napari_edgesam.widget.model_picker import ModelPicker

        p = ModelPicker(self.start_worker, self.notify_error)
        p.status_changed.connect(self.statuses.append)
        p.model_loaded.connect(self.loaded.append)
        viewer.window.add_dock_widget(p, name="model")
        return p


@pytest.fixture
def host():
    return Host()


@pytest.fixture
def dialogs(monkeypatch):
    """The file dialogs: ``answers`` is what they return, ``calls`` (title, start folder)."""
    from qtpy.QtWidgets import QFileDialog

    state = {"answers": [], "calls": []}

    def fake(parent, title, start, filters):
        state["calls"].append((title, start))
        return (state["answers"].pop(0) if state["answers"] else ""), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake))
    return state


def _items(picker):
    return [picker.model_combo.itemText(i) for i in range(picker.model_combo.count())]


def _choose(picker, text):
    """Pick an entry of the combo box as a user does (``activated``)."""
    i = _items(picker).index(text)
    picker.model_combo.setCurrentIndex(i)
    picker.model_combo.activated.emit(i)


def _settings():
    from napari_edgesam.engine import paths

    return json.loads(paths.settings_path().read_text())


# -- A: the model used last is remembered -------------------------------------------------


def test_custom_pair_is_remembered_and_loaded_at_the_next_start(make_napari_viewer, qtbot,
                                                                host, dialogs, model_dir,
                                                                notes):
    from napari_edgesam.engine import paths

    # someone else's keys in the shared settings file survive
    paths.settings_path().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_path().write_text(json.dumps({"cache_disk_bytes": 12345, "x_other": [1]}))
    viewer = make_napari_viewer()
    first = host.picker(viewer, qtbot)
    enc, dec = model_dir / "enc.onnx", model_dir / "dec.onnx"
    dialogs["answers"] = [str(enc), str(dec)]
    _choose(first, "custom files...")
    qtbot.waitUntil(lambda: first.model is not None and not first.busy, timeout=TIMEOUT)
    assert len(dialogs["calls"]) == 2
    assert first.model.encoder_path == enc and first.model.name == "custom: enc.onnx"
    saved = _settings()
    assert saved["last_model"] == {"encoder": str(enc), "decoder": str(dec)}
    assert saved["cache_disk_bytes"] == 12345 and saved["x_other"] == [1]
    first.shutdown()

    # a new session: the same pair, loaded in a worker, no dialog
    dialogs["calls"].clear()
    host.loaded.clear()
    second = host.picker(viewer, qtbot)
    worker = second.restore_last()
    assert worker is not None and second.busy  # in a worker, not on the GUI thread
    assert "enc.onnx" in second.status and "used last time" in second.status
    qtbot.waitUntil(lambda: not second.busy, timeout=TIMEOUT)
    assert dialogs["calls"] == []
    assert len(host.loaded) == 1 and host.loaded[0] is second.model
    assert second.model.encoder_path == enc and second.model.decoder_path == dec
    assert second.model_combo.currentText() == "custom: enc.onnx"
    assert notes["warning"] == [] and notes["error"] == [] and host.errors == []


def test_moved_custom_pair_says_where_it_was_and_offers_the_choice(make_napari_viewer, qtbot,
                                                                   host, dialogs, tmp_path,
                                                                   notes):
    from napari_edgesam.engine.models import last_model, remember_last_model

    mine = tmp_path / "mine"
    mine.mkdir()
    enc, dec = mine / "enc.onnx", mine / "dec.onnx"
    shutil.copy(TEST_ENCODER, enc)
    shutil.copy(TEST_DECODER, dec)
    assert remember_last_model(encoder=enc, decoder=dec)
    moved = tmp_path / "moved"
    shutil.move(str(mine), str(moved))  # the whole folder went away

    viewer = make_napari_viewer()
    picker = host.picker(viewer, qtbot)
    assert picker.restore_last() is None
    assert not picker.busy and picker.model is None and host.loaded == []
    assert str(enc) in picker.status and str(dec) in picker.status
    assert "custom files..." in picker.status
    assert len(notes["warning"]) == 1 and str(enc) in notes["warning"][0]
    assert notes["error"] == [] and host.errors == [] and dialogs["calls"] == []
    # the choice: "custom files..." (selected) or a published model
    assert picker.model_combo.currentText() == "custom files..."
    assert any(t.startswith("EdgeSAM-3x") for t in _items(picker))
    # the setting is kept (the files may come back, e.g. a network drive)
    assert last_model().encoder == enc

    # "custom files..." opens where the files were (its nearest existing folder)
    dialogs["answers"] = [str(moved / "enc.onnx"), str(moved / "dec.onnx")]
    _choose(picker, "custom files...")
    assert dialogs["calls"][0][1] == str(tmp_path)
    qtbot.waitUntil(lambda: picker.model is not None and not picker.busy, timeout=TIMEOUT)
    assert last_model().encoder == moved / "enc.onnx"
    assert len(notes["warning"]) == 1


def test_remembered_pair_failing_the_contract_is_one_warning(make_napari_viewer, qtbot, host,
                                                             model_dir, notes):
    from napari_edgesam.engine.models import remember_last_model

    enc, dec = model_dir / "enc.onnx", model_dir / "dec.onnx"
    remember_last_model(encoder=enc, decoder=dec)
    shutil.copy(TEST_DECODER, enc)  # replaced by a file with the wrong signature
    viewer = make_napari_viewer()
    picker = host.picker(viewer, qtbot)
    assert picker.restore_last() is not None
    qtbot.waitUntil(lambda: not picker.busy, timeout=TIMEOUT)
    assert picker.model is None and host.loaded == []
    assert "cannot be used" in picker.status and str(enc) in picker.status
    assert "custom files..." in picker.status
    assert len(notes["warning"]) == 1
    assert notes["error"] == [] and host.errors == []
    assert picker.model_combo.currentText() == "custom files..."


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def test_cards(tmp_path, monkeypatch):
    """Model cards for the test double (never EdgeSAM), files fetched from ``base_url``."""

    def make(base_url, names=("test-double",)):
        from napari_edgesam.engine.models import PACKAGE_CARDS_DIR

        folder = tmp_path / "cards"
        folder.mkdir(exist_ok=True)
        for k, name in enumerate(names):
            card = json.loads((PACKAGE_CARDS_DIR / "edgesam-3x.json").read_text())
            suffix = name.removeprefix("test-double").strip("-").upper()
            display = " ".join(x for x in ("Test double", suffix, "(not EdgeSAM)") if x)
            card.update(name=name, display_name=display, default=k == 0, aliases=[])
            for role, path in (("encoder", TEST_ENCODER), ("decoder", TEST_DECODER)):
                card["files"][role] = {"filename": path.name, "size": path.stat().st_size,
                                       "sha256": _sha(path),
                                       "urls": [f"{base_url}{REPO_PATH}/{path.name}"]}
            card["licence"] = {"name": "Test Licence", "url": "https://example.invalid/lic",
                               "summary": "Test summary: non-commercial use only."}
            (folder / f"{name}.json").write_text(json.dumps(card))
        monkeypatch.setenv("NAPARI_EDGESAM_CARDS_DIR", str(folder))
        return folder

    return make


def test_remembered_card_is_loaded_rather_than_the_default(make_napari_viewer, qtbot, host,
                                                           test_cards, closed_url,
                                                           monkeypatch, notes):
    from napari_edgesam.engine.models import remember_last_model

    test_cards(closed_url, names=("test-double-a", "test-double-b"))
    monkeypatch.setenv("NAPARI_EDGESAM_MODEL_DIR", str(TEST_ENCODER.parent))
    viewer = make_napari_viewer()
    fresh = host.picker(viewer, qtbot)
    fresh.restore_last()  # nothing remembered: the default, as before
    qtbot.waitUntil(lambda: fresh.model is not None and not fresh.busy, timeout=TIMEOUT)
    assert fresh.model.name == "test-double-a"

    remember_last_model(card="test-double-b")
    picker = host.picker(viewer, qtbot)
    picker.restore_last()
    qtbot.waitUntil(lambda: picker.model is not None and not picker.busy, timeout=TIMEOUT)
    assert picker.model.name == "test-double-b"
    assert picker.model_combo.currentText() == "Test double B (not EdgeSAM)"
    assert notes["warning"] == [] and host.errors == []


# -- B: downloads ---------------------------------------------------------------------------


class _Slow(http.server.SimpleHTTPRequestHandler):
    """Serves the test files under REPO_PATH; the decoder only after a pause."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path.endswith(TEST_DECODER.name):
            time.sleep(0.8)
        self.path = self.path.replace(REPO_PATH, "", 1)
        super().do_GET()


@pytest.fixture
def slow_server():
    handler = functools.partial(_Slow, directory=str(TEST_ENCODER.parent))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_progress_is_one_bar_for_the_whole_model(make_napari_viewer, qtbot, host,
                                                          slow_server, test_cards,
                                                          monkeypatch, notes):
    from napari_edgesam.engine import paths
    from napari_edgesam.engine.models import last_model

    test_cards(slow_server)
    viewer = make_napari_viewer()
    picker = host.picker(viewer, qtbot)
    assert picker.model_combo.currentText() == "Test double (not EdgeSAM)  (not downloaded)"
    assert picker.download_button.isEnabled()
    monkeypatch.setattr(picker, "_ask_licence", lambda card: True)
    values, formats = [], []
    picker.download_progress.valueChanged.connect(
        lambda v: (values.append(v), formats.append(picker.download_progress.text())))
    picker.download_button.click()
    assert not picker.download_progress.isHidden() and picker.busy
    qtbot.waitUntil(lambda: not picker.busy, timeout=TIMEOUT)
    assert picker.model is not None and picker.model.name == "test-double"
    assert picker.download_progress.isHidden()

    enc, dec = TEST_ENCODER.stat().st_size, TEST_DECODER.stat().st_size
    after_encoder = int(1000 * enc / (enc + dec))
    # one bar: never back to 0 for the second file, the encoder's bytes counted while the
    # decoder is awaited
    assert values == sorted(values), values
    assert after_encoder in values, values
    assert all("Test double" in f and TEST_DECODER.name not in f for f in formats), formats
    assert (paths.models_cache_dir() / TEST_DECODER.name).is_file()
    assert last_model().card == "test-double"
    assert host.errors == [] and notes["error"] == []


def test_cancel_is_a_status_not_an_error(make_napari_viewer, qtbot, host, slow_server,
                                         test_cards, monkeypatch, notes):
    from napari_edgesam.engine import paths

    test_cards(slow_server)
    viewer = make_napari_viewer()
    picker = host.picker(viewer, qtbot)
    monkeypatch.setattr(picker, "_ask_licence", lambda card: True)
    worker = picker.download("test-double")
    assert worker is not None
    picker.cancel_download_button.click()
    qtbot.waitUntil(lambda: not picker.busy, timeout=TIMEOUT)
    assert picker.model is None
    assert picker.status == "Download cancelled."
    assert "Download cancelled." in host.statuses
    assert host.errors == [] and notes["error"] == []
    assert not any("Error" in s for s in host.statuses)
    assert picker.download_progress.isHidden() and picker.cancel_download_button.isHidden()
    assert picker.download_button.isEnabled()
    cache = paths.models_cache_dir()  # no decoder, no partial file (the encoder may be done)
    left = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert left in ([], [TEST_ENCODER.name]), left


def test_offline_download_points_to_custom_files_and_the_repository_page(
        make_napari_viewer, qtbot, host, test_cards, closed_url, monkeypatch, notes):
    test_cards(closed_url)
    viewer = make_napari_viewer()
    picker = host.picker(viewer, qtbot)
    monkeypatch.setattr(picker, "_ask_licence", lambda card: True)
    picker.download("test-double")
    qtbot.waitUntil(lambda: not picker.busy, timeout=TIMEOUT)
    assert picker.model is None
    assert len(host.errors) == 1
    msg = host.errors[0]
    assert msg.startswith("download failed: ")
    assert '"custom files..."' in msg
    assert "NAPARI_EDGESAM_MODEL_DIR" in msg
    assert f"{closed_url}/someone/test-double/tree/main" in msg
    assert "/resolve/" not in msg
    assert "no network" in msg
    assert picker.download_button.isEnabled()


def test_licence_link_is_readable_in_the_dark_theme(make_napari_viewer, qtbot, host):
    from qtpy.QtCore import QTimer
    from qtpy.QtGui import QColor, QPalette
    from qtpy.QtWidgets import QApplication, QLabel, QMessageBox

    from napari_edgesam.engine.models import get_card
    from napari_edgesam.widget.licence_dialog import ask_licence, contrast_ratio

    viewer = make_napari_viewer()
    assert viewer.theme == "dark"
    picker = host.picker(viewer, qtbot)
    card = get_card("edgesam-3x")
    seen = {}

    def answer():
        box = next(x for x in QApplication.topLevelWidgets()
                   if isinstance(x, QMessageBox) and x.isVisible())
        label = box.findChild(QLabel, "qt_msgbox_label")
        seen["text"] = box.text() + "\n" + box.informativeText()
        seen["background"] = label.palette().color(QPalette.ColorRole.Window)
        seen["link"] = label.palette().color(QPalette.ColorRole.Link)
        next(b for b in box.buttons() if b.text() == "Accept and download").click()

    QTimer.singleShot(200, answer)
    assert ask_licence(card, picker) is True
    assert "S-Lab License 1.0" in seen["text"] and card.licence_summary in seen["text"]
    assert seen["background"].lightness() < 80  # napari's dark theme reached the dialog
    anchor = re.search(r"<a [^>]*href=\"([^\"]+)\"[^>]*style=\"color: (#[0-9a-f]{6})",
                       seen["text"])
    assert anchor is not None and anchor.group(1) == card.licence_url
    colour = QColor(anchor.group(2))
    assert contrast_ratio(colour, seen["background"]) >= 4.5
    assert contrast_ratio(seen["link"], seen["background"]) >= 4.5


def test_link_colour_follows_the_palette():
    from qtpy.QtGui import QColor, QPalette

    from napari_edgesam.widget.licence_dialog import contrast_ratio, link_colour

    dark = QPalette()
    dark.setColor(QPalette.ColorRole.Window, QColor("#23242b"))
    dark.setColor(QPalette.ColorRole.Link, QColor("#0000ff"))  # Qt's default: unreadable
    assert contrast_ratio(QColor("#0000ff"), QColor("#23242b")) < 4.5
    assert contrast_ratio(QColor(link_colour(dark)), QColor("#23242b")) >= 4.5
    light = QPalette()
    light.setColor(QPalette.ColorRole.Window, QColor("#ffffff"))
    light.setColor(QPalette.ColorRole.Link, QColor("#0000ff"))
    assert link_colour(light) == "#0000ff"  # readable: the palette's own is kept
