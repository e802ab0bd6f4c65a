"""Verified downloads against a local HTTP server (the real hosts are never contacted).

The server on 127.0.0.1 (ephemeral port, a thread) serves small fake "model" files:
``/good/<f>`` the right bytes, ``/bad/<f>`` same size but other bytes, ``/trunc/<f>`` a
Content-Length larger than the body then a closed connection, ``/short/<f>`` and ``/long/<f>``
complete transfers of another size than the card's, ``/missing/<f>`` a 404. A
closed port stands for "no network". After each case the test checks what lies on disk: a
file under its final name is always complete and verified; no temporary file is left.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from napari_edgesam.engine import models, paths
from napari_edgesam.engine.download import DownloadError, TextProgress, fetch_file
from napari_edgesam.engine.errors import (
    CancelledError,
    ChecksumError,
    ModelError,
    ModelNotAvailableError,
)

ENC = "fake_encoder.onnx"
DEC = "fake_decoder.onnx"


def _payload(name: str, size: int) -> bytes:
    block = hashlib.sha256(name.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


CONTENT = {ENC: _payload(ENC, 300_000), DEC: _payload(DEC, 70_001)}


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    user = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE_DIR", str(user / "cache"))
    monkeypatch.setenv("NAPARI_EDGESAM_CONFIG_DIR", str(user / "config"))
    for var in ("NAPARI_EDGESAM_MODEL_DIR", "NAPARI_EDGESAM_CARDS_DIR", "HTTP_PROXY",
                "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests.append(self.path)
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[1] not in CONTENT or parts[0] == "missing":
            self.send_error(404, "Not Found")
            return
        mode, name = parts
        if mode == "loop":  # a redirect loop
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = CONTENT[name]
        if mode == "bad":
            body = bytes(b ^ 0x5A for b in body)
        elif mode == "short":
            body = body[:-100]
        elif mode == "long":
            body = body + b"x" * 10
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("stall", "drip"):
            import time

            if mode == "stall":  # half the body, then nothing
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                time.sleep(3.0)
                return
            for i in range(0, len(body), 4096):  # steady but slow: 40 kB/s
                time.sleep(0.1)
                try:
                    self.wfile.write(body[i:i + 4096])
                    self.wfile.flush()
                except OSError:
                    return
            return
        if mode == "trunc":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def make_card(*bases: str, name: str = "fake") -> models.ModelCard:
    """A test card for the fake files, fetched from ``<base>/<filename>`` for each base."""
    real = models.get_card("edgesam-3x")
    files = {
        role: {
            "filename": fname,
            "size": len(CONTENT[fname]),
            "sha256": hashlib.sha256(CONTENT[fname]).hexdigest(),
            "urls": [f"{b}/{fname}" for b in bases],
        }
        for role, fname in (("encoder", ENC), ("decoder", DEC))
    }
    data = real.to_dict()
    data.update(name=name, display_name="Fake", aliases=[], default=True, files=files)
    return models.ModelCard.from_dict(data)


def spec(card, role="encoder"):
    return card.files[role]


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` other than complete model files (temporary/partial files)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in CONTENT)


def assert_complete(path: Path):
    assert path.is_file()
    assert path.read_bytes() == CONTENT[path.name]


# -- single files ----------------------------------------------------------------------


def test_good_file(server, tmp_path):
    card = make_card(server.url + "/good")
    seen = []
    out = fetch_file(spec(card), tmp_path / "dest", progress=lambda *a: seen.append(a))
    assert out == tmp_path / "dest" / ENC
    assert_complete(out)
    assert leftovers(tmp_path / "dest") == []
    # progress: monotonic, with the total, ending at the total
    dones = [d for _, d, _ in seen]
    assert dones == sorted(dones) and len(seen) > 2
    assert seen[-1] == (ENC, len(CONTENT[ENC]), len(CONTENT[ENC]))
    # the hash was remembered: no re-hash at the next start-up
    assert models.cached_sha256(out) == card.encoder.sha256


def test_already_verified_file_is_not_downloaded_again(server, tmp_path):
    card = make_card(server.url + "/good")
    fetch_file(spec(card), tmp_path)
    n = len(server.requests)
    fetch_file(spec(card), tmp_path)
    assert len(server.requests) == n


def test_wrong_hash_is_refused(server, tmp_path):
    card = make_card(server.url + "/bad")
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError) as info:
        fetch_file(spec(card), dest)
    msg = str(info.value)
    bad = bytes(b ^ 0x5A for b in CONTENT[ENC])
    assert ENC in msg
    assert card.encoder.sha256 in msg
    assert hashlib.sha256(bad).hexdigest() in msg
    assert not (dest / ENC).exists()
    assert leftovers(dest) == []


@pytest.mark.parametrize("primary", ["bad", "missing", "trunc"])
def test_failing_primary_falls_back_to_mirror(server, tmp_path, primary):
    """A wrong hash, a 404 or a truncated transfer on the first URL: the mirror's file."""
    card = make_card(server.url + f"/{primary}", server.url + "/good")
    out = fetch_file(spec(card), tmp_path)
    assert_complete(out)
    assert server.requests == [f"/{primary}/{ENC}", f"/good/{ENC}"]
    assert leftovers(tmp_path) == []


def test_truncated_response_leaves_nothing_complete(server, tmp_path):
    card = make_card(server.url + "/trunc")
    with pytest.raises(DownloadError) as info:
        fetch_file(spec(card), tmp_path, help_message="HELP")
    assert isinstance(info.value, ModelNotAvailableError)
    assert ENC in str(info.value) and "HELP" in str(info.value)
    assert not (tmp_path / ENC).exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode, delta", [("short", -100), ("long", 10)])
def test_complete_transfer_of_another_size(server, tmp_path, mode, delta):
    """The server sent all it announced, but not the card's size: not "incomplete"."""
    card = make_card(server.url + f"/{mode}")
    with pytest.raises(DownloadError) as info:
        fetch_file(spec(card), tmp_path)
    msg = str(info.value)
    size = len(CONTENT[ENC])
    assert f"size differs from the model card's: expected {size} bytes, got {size + delta}" in msg
    assert "incomplete" not in msg
    assert leftovers(tmp_path) == [] and not (tmp_path / ENC).exists()


def test_failure_message_names_hosts_not_file_urls(server, closed_url, tmp_path):
    card = make_card(closed_url + "/owner/repo/resolve/main", server.url + "/missing")
    with pytest.raises(DownloadError) as info:
        fetch_file(spec(card), tmp_path, timeout=5)
    msg = str(info.value)
    host = closed_url.removeprefix("http://")
    assert f"{host}: cannot connect (no network?)" in msg
    assert f"{server.url.removeprefix('http://')}: HTTP 404" in msg
    assert "/resolve/" not in msg and "/missing/" not in msg
    assert [u for u, _ in info.value.attempts] == list(card.encoder.urls)  # kept for logs


def test_404_everywhere(server, tmp_path):
    card = make_card(server.url + "/missing", server.url + "/missing")
    with pytest.raises(DownloadError) as info:
        fetch_file(spec(card), tmp_path)
    assert "404" in str(info.value)
    assert [u for u, _ in info.value.attempts] == list(card.encoder.urls)
    assert leftovers(tmp_path) == [] and not (tmp_path / ENC).exists()


def test_no_server(closed_url, tmp_path):
    card = make_card(closed_url, closed_url + "/mirror")
    with pytest.raises(ModelNotAvailableError) as info:
        fetch_file(spec(card), tmp_path, timeout=5)
    assert "no network" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cancel_from_progress_leaves_nothing(server, tmp_path):
    card = make_card(server.url + "/good")

    def cancel(name, done, total):
        if done > 0:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        fetch_file(spec(card), tmp_path, progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_existing_file_is_replaced(server, tmp_path):
    card = make_card(server.url + "/good")
    (tmp_path / ENC).write_bytes(CONTENT[ENC][:1000])  # a partial file from elsewhere
    out = fetch_file(spec(card), tmp_path)
    assert_complete(out)


def test_unwritable_destination(server, tmp_path):
    card = make_card(server.url + "/good")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ModelNotAvailableError, match="Cannot create the model folder"):
        fetch_file(spec(card), not_a_dir / "sub")


def test_text_progress_output():
    import io

    buf = io.StringIO()
    p = TextProgress(buf)
    for done in range(0, 101, 5):
        p("f.onnx", done * 1000, 100_000)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("f.onnx:   0%") and "100%" in lines[-1]
    assert len(lines) == 5  # not a terminal: every 25%


# -- whole models ----------------------------------------------------------------------


def test_resolve_downloads_into_user_cache_and_shows_licence_once(server):
    card = make_card(server.url + "/missing", server.url + "/good")
    notices, progress = [], []
    with pytest.raises(ModelNotAvailableError):
        models.resolve_model(card, download=False)
    res = models.resolve_model(card, download=True, licence_notice=notices.append,
                               progress=lambda *a: progress.append(a))
    cache = paths.models_cache_dir()
    assert res.encoder == cache / ENC and res.decoder == cache / DEC
    assert_complete(res.encoder)
    assert_complete(res.decoder)
    assert leftovers(cache) == []
    assert len(notices) == 1
    assert card.licence_url in notices[0] and card.licence_name in notices[0]
    assert {p[0] for p in progress} == {ENC, DEC}
    # recorded in the config folder
    settings = json.loads(paths.settings_path().read_text())
    assert card.licence_url in settings[models.LICENCE_SHOWN_KEY]
    # later: found locally, no request, no notice
    n = len(server.requests)
    again = models.resolve_model(card, download=True, licence_notice=notices.append)
    assert again == res and len(server.requests) == n and len(notices) == 1
    assert models.model_status(card).state == "verified"


def test_resolve_downloads_only_what_is_missing(server, tmp_path):
    card = make_card(server.url + "/good")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ENC).write_bytes(CONTENT[ENC])
    res = models.resolve_model(card, model_dir=mine, download=True, licence_notice=print)
    assert res.encoder == mine / ENC
    assert res.decoder == paths.models_cache_dir() / DEC
    assert server.requests == [f"/good/{DEC}"]


def test_download_model_into_folder(server, tmp_path):
    card = make_card(server.url + "/good")
    res = models.download_model(card, dest=tmp_path / "d", licence_notice=lambda t: None)
    assert res.encoder == tmp_path / "d" / ENC
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted([ENC, DEC])


def test_download_model_no_network_message(closed_url, tmp_path):
    card = make_card(closed_url + "/owner/repo/resolve/main")  # shaped like Hugging Face
    with pytest.raises(ModelNotAvailableError) as info:
        models.download_model(card, licence_notice=lambda t: None, timeout=5)
    msg = str(info.value)
    assert "\n" not in msg
    assert ENC in msg and DEC in msg
    assert "NAPARI_EDGESAM_MODEL_DIR" in msg
    assert str(paths.models_cache_dir()) in msg
    # the repository's browsable page, not a file URL
    assert f"{closed_url}/owner/repo/tree/main " in msg
    assert "/resolve/" not in msg
    assert leftovers(paths.models_cache_dir()) == []


def test_licence_notice_default_logs(server, caplog):
    card = make_card(server.url + "/good")
    with caplog.at_level("WARNING"):
        models.download_model(card)
    assert card.licence_url in caplog.text


def test_all_model_errors_are_model_errors():
    assert issubclass(DownloadError, ModelError)
    assert issubclass(ChecksumError, ModelError)


# -- command line ----------------------------------------------------------------------


def _write_cards(folder: Path, card: models.ModelCard) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{card.name}.json").write_text(json.dumps(card.to_dict()))
    return folder


def _cli(*argv, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "napari_edgesam.cli.models_cmd", *argv],
        capture_output=True, text=True, env=e, stdin=subprocess.DEVNULL, timeout=120,
    )


def test_cli_fetch_from_local_server(server, tmp_path):
    cards = _write_cards(tmp_path / "cards", make_card(server.url + "/missing",
                                                       server.url + "/good"))
    r = _cli("fetch", env={"NAPARI_EDGESAM_CARDS_DIR": str(cards)})
    assert r.returncode == 0, r.stderr
    assert "S-Lab License 1.0" in r.stderr and "LICENSE" in r.stderr
    assert "100%" in r.stderr  # text progress
    assert "verified" in r.stdout
    cache = paths.models_cache_dir()
    assert_complete(cache / ENC)
    assert_complete(cache / DEC)
    r = _cli("list", env={"NAPARI_EDGESAM_CARDS_DIR": str(cards)})
    assert r.returncode == 0 and "verified" in r.stdout
    r = _cli("path", env={"NAPARI_EDGESAM_CARDS_DIR": str(cards)})
    assert r.returncode == 0
    assert r.stdout.split() == [str(cache / ENC), str(cache / DEC)]


def test_cli_fetch_wrong_hash_exits_3(server, tmp_path):
    cards = _write_cards(tmp_path / "cards", make_card(server.url + "/bad"))
    r = _cli("fetch", "--quiet", env={"NAPARI_EDGESAM_CARDS_DIR": str(cards)})
    assert r.returncode == 3
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("napari-edgesam models:")]
    assert len(err) == 1 and ENC in err[0] and "expected" in err[0]
    assert not (paths.models_cache_dir() / ENC).exists()


def test_cli_fetch_no_network_exits_3(closed_url, tmp_path):
    cards = _write_cards(tmp_path / "cards", make_card(closed_url))
    r = _cli("fetch", "--timeout", "5", env={"NAPARI_EDGESAM_CARDS_DIR": str(cards)})
    assert r.returncode == 3
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("napari-edgesam models:")
    assert "NAPARI_EDGESAM_MODEL_DIR" in last and ENC in last and DEC in last


@pytest.mark.parametrize(("mode", "kwargs", "reason"), [
    ("stall", {"timeout": 0.5}, "the server stopped sending (no data for 0.5 s)"),
    ("loop", {}, "too many redirects"),
    ("drip", {"timeout": 5, "max_seconds": 1.0}, "took longer than 1 s in all"),
])
def test_failed_transfers_name_their_real_cause(server, tmp_path, mode, kwargs, reason):
    """A server that stalls mid-body is not "no network"; a redirect loop is not a disk
    error; a slow but steady server is given up on after ``max_seconds`` in all."""
    import time

    card = make_card(f"{server.url}/{mode}")
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as exc:
        fetch_file(card.files["encoder"], tmp_path, **kwargs)
    assert reason in str(exc.value)
    assert "cannot connect" not in str(exc.value) and "cannot write" not in str(exc.value)
    assert time.monotonic() - t0 < 4.0
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
