"""Model cards, the memoised file hash, model resolution (search order, status) and the
``models`` command line. No network: local folders and fake model files only."""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_edgesam.cli import models_cmd
from napari_edgesam.engine import contract, file_hash, model_cards, models, paths
from napari_edgesam.engine.errors import ChecksumError, ModelError, ModelNotAvailableError

LICENCE_URL = "https://github.com/chongzhou96/EdgeSAM/blob/master/LICENSE"
PINNED = {  # from the model contract
    "edge_sam_3x_encoder.onnx": (22098300, "719a498cf5b3fe9be9f01ee513e13d3915f9028aa4f23dfd30eaaa0a17143159"),
    "edge_sam_3x_decoder.onnx": (15937006, "83a2174d54571596913dcb7455d021e713623c3dca30a31c8c41ab98c9fb0863"),
    "edge_sam_encoder.onnx": (22098300, "c051e69a2a16ca8f5e09583ca18420ef0e75a67387dd90228ac9438f7f01357a"),
    "edge_sam_decoder.onnx": (15937006, "e820af76837271db87478851603c6ce855906ca96baae2238217c2d5a38e0926"),
}

ENC, DEC = "tiny_encoder.onnx", "tiny_decoder.onnx"
CONTENT = {ENC: b"encoder bytes " * 1000, DEC: b"decoder bytes " * 500}


def tiny_card(name="tiny", **overrides) -> models.ModelCard:
    data = models.get_card("edgesam-3x").to_dict()
    data.update(name=name, display_name=name.title(), aliases=[], default=True)
    data["files"] = {
        role: {"filename": f, "size": len(CONTENT[f]),
               "sha256": hashlib.sha256(CONTENT[f]).hexdigest(),
               "urls": [f"http://127.0.0.1:9/{f}"]}
        for role, f in (("encoder", ENC), ("decoder", DEC))
    }
    data.update(overrides)
    return models.ModelCard.from_dict(data)


def put_files(folder: Path, *names, corrupt=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names or CONTENT:
        data = CONTENT[n]
        if n in corrupt:
            data = data[:-1] + b"X"  # same size, other hash
        (folder / n).write_bytes(data)
    return folder


# -- cards -------------------------------------------------------------------------------


def test_packaged_cards_match_the_contract():
    cards = models.list_cards()
    assert [c.name for c in cards] == ["edgesam-3x", "edgesam"]
    assert cards[0].default and not cards[1].default
    for card in cards:
        for f in card.files.values():
            assert (f.size, f.sha256) == PINNED[f.filename]
            assert f.urls == (
                f"https://huggingface.co/chongzhou/EdgeSAM/resolve/main/{f.filename}",
                f"https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights/{f.filename}",
            )
        assert card.licence_name == "S-Lab License 1.0"
        assert card.licence_url == LICENCE_URL
        assert LICENCE_URL in card.licence_summary and "non-commercial" in card.licence_summary
        assert LICENCE_URL in card.licence_notice
        # the expected ONNX signature is the contract's
        for role, ins, outs in (
            ("encoder", contract.ENCODER_INPUTS, contract.ENCODER_OUTPUTS),
            ("decoder", contract.DECODER_INPUTS, contract.DECODER_OUTPUTS),
        ):
            sig = card.signature[role]
            assert {k: (v["dtype"], tuple(v["shape"])) for k, v in sig["inputs"].items()} == ins
            assert {k: (v["dtype"], tuple(v["shape"])) for k, v in sig["outputs"].items()} == outs
    assert cards[0].filenames == ["edge_sam_3x_encoder.onnx", "edge_sam_3x_decoder.onnx"]


def test_cards_ship_inside_the_package():
    res = importlib.resources.files("napari_edgesam") / "models"
    names = {p.name for p in res.iterdir()}
    assert {"edgesam-3x.json", "edgesam.json"} <= names
    assert Path(models.PACKAGE_CARDS_DIR, "edgesam-3x.json").is_file()


@pytest.mark.parametrize(
    "name, expected",
    [(None, "edgesam-3x"), ("", "edgesam-3x"), ("EdgeSAM-3x", "edgesam-3x"),
     ("EDGESAM_3X", "edgesam-3x"), ("3x", "edgesam-3x"), ("edgesam", "edgesam"),
     (" Edge_SAM ", "edgesam")],
)
def test_get_card_names(name, expected):
    assert models.get_card(name).name == expected


def test_unknown_model_name():
    with pytest.raises(models.UnknownModelError, match="known models: edgesam-3x, edgesam"):
        models.get_card("sam-vit-h")
    assert issubclass(models.UnknownModelError, ModelError)


def test_card_roundtrip_and_validation(tmp_path):
    card = models.get_card()
    again = models.ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.files == card.files and again.licence_summary == card.licence_summary
    bad = card.to_dict()
    bad["files"]["encoder"]["sha256"] = "abc"
    with pytest.raises(ModelError, match="sha256"):
        models.ModelCard.from_dict(bad)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelError, match="broken.json"):
        models.list_cards(tmp_path)


def test_custom_cards_by_argument_and_env(tmp_path, monkeypatch):
    card = tiny_card()
    assert models.get_card(None, cards=[card]) is card
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "tiny.json").write_text(json.dumps(card.to_dict()))
    assert [c.name for c in models.list_cards(folder)] == ["tiny"]
    monkeypatch.setenv("NAPARI_EDGESAM_CARDS_DIR", str(folder))
    assert models.get_card().name == "tiny"


def test_with_base_urls():
    card = models.get_card().with_base_urls("http://a/x/", "http://b")
    assert card.encoder.urls == ("http://a/x/edge_sam_3x_encoder.onnx",
                                 "http://b/edge_sam_3x_encoder.onnx")


# -- paths and settings ------------------------------------------------------------------


def test_paths_env_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    assert paths.models_cache_dir() == tmp_path / "c" / "models"
    assert paths.embeddings_cache_dir() == tmp_path / "c" / "embeddings"
    monkeypatch.delenv("NAPARI_EDGESAM_CACHE_DIR")
    monkeypatch.delenv("NAPARI_EDGESAM_CONFIG_DIR")
    assert "napari-edgesam" in str(paths.cache_dir())
    assert "napari-edgesam" in str(paths.config_dir())


def test_settings_roundtrip_and_corrupt_file():
    assert paths.load_settings()["cache_disk_bytes"] == 2 * 2**30
    paths.set_setting("model_dir", "/somewhere")
    assert paths.get_setting("model_dir") == "/somewhere"
    paths.set_setting("model_dir", None)
    assert paths.get_setting("model_dir") is None
    paths.settings_path().write_text("{corrupt")
    assert paths.load_settings() == paths.DEFAULT_SETTINGS
    paths.set_setting("cache_disk_bytes", 123)  # a corrupt file is replaced
    assert paths.get_setting("cache_disk_bytes") == 123


# -- file_sha256 -------------------------------------------------------------------------


def test_file_sha256_is_memoised(tmp_path, monkeypatch):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100_000)
    expected = hashlib.sha256(f.read_bytes()).hexdigest()
    calls = []
    real = file_hash._hash_file
    monkeypatch.setattr(file_hash, "_hash_file", lambda p: calls.append(p) or real(p))
    assert models.file_sha256(f) == expected
    assert models.file_sha256(str(f)) == expected
    assert len(calls) == 1
    memo = json.loads((paths.cache_dir() / models.HASH_MEMO_FILE).read_text())
    entry = memo[str(f.resolve())]
    assert entry["sha256"] == expected and entry["size"] == 100_000
    # a new process (empty in-memory memo) reads the memo file: still no re-hash
    monkeypatch.setattr(file_hash, "_memo", None)
    assert models.file_sha256(f) == expected
    assert len(calls) == 1
    # a changed file (same size, new mtime) is hashed again
    f.write_bytes(b"y" * 100_000)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert models.file_sha256(f) == hashlib.sha256(b"y" * 100_000).hexdigest()
    assert len(calls) == 2
    assert models.file_sha256(f, use_memo=False) and len(calls) == 3


def test_file_sha256_corrupt_memo_and_unwritable_cache(tmp_path, monkeypatch):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    memo_file = paths.cache_dir() / models.HASH_MEMO_FILE
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    memo_file.write_text("{ this is not json")
    monkeypatch.setattr(file_hash, "_memo", None)
    assert models.file_sha256(f) == expected
    assert json.loads(memo_file.read_text())[str(f.resolve())]["sha256"] == expected
    # the cache folder is a file: nothing can be written, hashing still works
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE_DIR", str(blocker / "cache"))
    assert models.file_sha256(f) == expected
    assert models.cached_sha256(f) == expected  # remembered in memory
    with pytest.raises(FileNotFoundError):
        models.file_sha256(tmp_path / "nope")


def test_memo_forgets_deleted_files(tmp_path, monkeypatch):
    monkeypatch.setattr(file_hash, "_MEMO_PRUNE_AT", 3)
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]))
        models.file_sha256(f)
        files.append(f)
    for f in files[:3]:
        f.unlink()
    models.file_sha256(files[4], use_memo=False)
    memo = json.loads((paths.cache_dir() / models.HASH_MEMO_FILE).read_text())
    assert sorted(memo) == sorted(str(f.resolve()) for f in files[3:])


# -- search order and status -------------------------------------------------------------


def test_search_order(tmp_path, monkeypatch):
    arg, env, setting = tmp_path / "arg", tmp_path / "env", tmp_path / "setting"
    monkeypatch.setenv("NAPARI_EDGESAM_MODEL_DIR", str(env))
    paths.set_setting("model_dir", str(setting))
    assert models.search_dirs(arg) == [
        ("argument", arg), ("NAPARI_EDGESAM_MODEL_DIR", env), ("setting", setting),
        ("cache", paths.models_cache_dir()),
    ]
    assert paths.configured_model_dir() == env
    card = tiny_card()
    for folder in (setting, env, arg):  # each earlier folder wins once it has the files
        put_files(folder)
        res = models.resolve_model(card, model_dir=arg)
        assert res.encoder == folder / ENC and res.decoder == folder / DEC


def test_cache_folder_is_last(tmp_path):
    card = tiny_card()
    put_files(paths.models_cache_dir())
    assert models.resolve_model(card).encoder == paths.models_cache_dir() / ENC
    put_files(tmp_path / "mine")
    assert models.resolve_model(card, model_dir=tmp_path / "mine").encoder == tmp_path / "mine" / ENC


def test_status_states(tmp_path):
    card = tiny_card()
    folder = tmp_path / "m"
    assert models.model_status(card, folder).state == "missing"
    put_files(folder, ENC)
    st = models.model_status(card, folder)
    assert st.state == "incomplete" and st.files["decoder"].state == "missing"
    put_files(folder, DEC)
    assert models.model_status(card, folder, verify=False).state == "present"
    st = models.model_status(card, folder)
    assert st.state == "verified" and st.ok
    assert st.files["encoder"].path == folder / ENC
    # verified once: a quick status now knows it from the memo
    assert models.model_status(card, folder, verify=False).state == "verified"
    # a truncated file is never "present"
    (folder / DEC).write_bytes(CONTENT[DEC][:10])
    st = models.model_status(card, folder, verify=False)
    assert st.state == "corrupt" and "10 bytes" in st.files["decoder"].detail


def test_changed_file_is_reverified(tmp_path):
    card = tiny_card()
    folder = put_files(tmp_path / "m")
    assert models.model_status(card, folder).ok
    put_files(folder, ENC, corrupt=[ENC])  # same size, different content, new mtime
    st = os.stat(folder / ENC)
    os.utime(folder / ENC, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert models.model_status(card, folder).files["encoder"].state == "corrupt"


def test_missing_model_message(tmp_path):
    card = tiny_card()
    with pytest.raises(ModelNotAvailableError) as info:
        models.resolve_model(card, model_dir=tmp_path / "mine")
    msg = str(info.value)
    assert "\n" not in msg
    for needle in (ENC, DEC, "NAPARI_EDGESAM_MODEL_DIR", str(tmp_path / "mine"),
                   str(paths.models_cache_dir()), "models fetch tiny"):
        assert needle in msg


def test_corrupt_file_message(tmp_path):
    card = tiny_card()
    folder = put_files(tmp_path / "m", corrupt=[DEC])
    with pytest.raises(ChecksumError) as info:
        models.resolve_model(card, model_dir=folder)
    msg = str(info.value)
    actual = hashlib.sha256(CONTENT[DEC][:-1] + b"X").hexdigest()
    assert DEC in msg and card.decoder.sha256 in msg and actual in msg


def test_bad_file_in_explicit_folder_falls_back_to_good_copy(tmp_path):
    card = tiny_card()
    put_files(tmp_path / "mine", corrupt=[ENC])
    put_files(paths.models_cache_dir())
    res = models.resolve_model(card, model_dir=tmp_path / "mine")
    assert res.encoder == paths.models_cache_dir() / ENC
    assert res.decoder == tmp_path / "mine" / DEC


def test_resolved_model_api(tmp_path):
    card = tiny_card()
    res = models.resolve_model(card, model_dir=put_files(tmp_path / "m"))
    assert res.name == "tiny"
    assert res.sha256 == {"encoder": card.encoder.sha256, "decoder": card.decoder.sha256}


def test_licence_notice_recorded_once(tmp_path):
    card = tiny_card()
    shown = []
    assert not models.licence_notice_shown(card)
    models._show_licence_notice(card, shown.append)
    models._show_licence_notice(card, shown.append)
    assert len(shown) == 1 and models.licence_notice_shown(card)


@pytest.mark.parametrize("url, page", [
    ("https://huggingface.co/chongzhou/EdgeSAM/resolve/main/edge_sam_3x_encoder.onnx",
     "https://huggingface.co/chongzhou/EdgeSAM/tree/main"),
    ("https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights/edge_sam.onnx",
     "https://huggingface.co/spaces/chongzhou/EdgeSAM/tree/main/weights"),
    ("https://example.org/files/model.onnx", "https://example.org/files/"),
])
def test_browse_page(url, page):
    assert models.browse_page(url) == page


def test_where_to_put_points_at_the_repository_page():
    msg = models.where_to_put_message(models.get_card("edgesam-3x"))
    assert "https://huggingface.co/chongzhou/EdgeSAM/tree/main " in msg
    assert "/resolve/" not in msg
    assert "edge_sam_3x_encoder.onnx and edge_sam_3x_decoder.onnx" in msg
    assert "NAPARI_EDGESAM_MODEL_DIR" in msg and str(paths.models_cache_dir()) in msg


# -- the model used last (settings.json) --------------------------------------------------


def test_last_model_roundtrip_keeps_other_settings(tmp_path):
    assert models.last_model() is None
    paths.settings_path().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_path().write_text(json.dumps({"cache_disk_bytes": 7, "not_ours": {"a": 1}}))
    assert models.remember_last_model(card=models.get_card("3x"))
    assert models.last_model() == models.LastModel(card="edgesam-3x")
    assert not models.last_model().custom
    enc, dec = tmp_path / "e.onnx", tmp_path / "d.onnx"
    assert models.remember_last_model(encoder=enc, decoder=dec)
    last = models.last_model()
    assert last.custom and (last.encoder, last.decoder) == (enc, dec)
    data = json.loads(paths.settings_path().read_text())
    assert data == {"cache_disk_bytes": 7, "not_ours": {"a": 1},
                    "last_model": {"encoder": str(enc), "decoder": str(dec)}}
    with pytest.raises(ValueError):
        models.remember_last_model(encoder=enc)


def test_last_model_relative_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models.remember_last_model(encoder="e.onnx", decoder="sub/d.onnx")
    last = models.last_model()
    assert last.encoder == tmp_path / "e.onnx" and last.decoder == tmp_path / "sub" / "d.onnx"


@pytest.mark.parametrize("value", [None, "edgesam", 3, {"card": ""}, {"encoder": "/e.onnx"},
                                   {"encoder": 1, "decoder": 2}])
def test_malformed_last_model_is_none(value):
    paths.set_setting(models.LAST_MODEL_KEY, value)
    assert models.last_model() is None


def test_last_model_is_written_atomically(monkeypatch):
    """Through a temporary file and os.replace: a failed write leaves the old file."""
    models.remember_last_model(card="edgesam")
    before = paths.settings_path().read_text()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", broken_replace)
        assert models.remember_last_model(card="edgesam-3x") is False  # reported, not raised
    assert paths.settings_path().read_text() == before  # never half-written
    assert [p.name for p in paths.settings_path().parent.iterdir()] == ["settings.json"]
    assert models.last_model().card == "edgesam"


# -- command line ------------------------------------------------------------------------


def run_cli(*argv, capsys):
    parser = argparse.ArgumentParser(prog="napari-edgesam")
    models_cmd.add_parser(parser.add_subparsers(dest="command"))
    code = models_cmd.run(parser.parse_args(["models", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_fresh_install(capsys):
    code, out, err = run_cli("list", capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "VARIANT", "STATUS"]
    assert lines[1].split()[:3] == ["edgesam-3x*", "EdgeSAM-3x", "missing"]
    assert lines[2].split()[:3] == ["edgesam", "EdgeSAM", "missing"]
    assert LICENCE_URL in out


def test_cli_list_shows_present_and_verified(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "tiny.json").write_text(json.dumps(tiny_card().to_dict()))
    monkeypatch.setenv("NAPARI_EDGESAM_CARDS_DIR", str(folder))
    put_files(tmp_path / "m")
    code, out, _ = run_cli("list", "--no-verify", "--model-dir", str(tmp_path / "m"),
                           capsys=capsys)
    assert code == 0 and out.splitlines()[1].split()[2] == "present"
    code, out, _ = run_cli("list", "--model-dir", str(tmp_path / "m"), capsys=capsys)
    assert code == 0 and out.splitlines()[1].split()[2] == "verified"
    assert str(tmp_path / "m") in out


def test_cli_path(tmp_path, monkeypatch, capsys):
    card = tiny_card()
    monkeypatch.setattr(model_cards, "list_cards", lambda cards=None: [card])
    code, out, err = run_cli("path", capsys=capsys)
    assert code == 3 and out == "", err
    assert len(err.strip().splitlines()) == 1 and ENC in err
    folder = put_files(tmp_path / "m")
    monkeypatch.setenv("NAPARI_EDGESAM_MODEL_DIR", str(folder))
    code, out, err = run_cli("path", "tiny", capsys=capsys)
    assert code == 0 and out.split() == [str(folder / ENC), str(folder / DEC)]
    code, out, err = run_cli("path", "--role", "decoder", capsys=capsys)
    assert code == 0 and out.strip() == str(folder / DEC)


def test_cli_bad_arguments(capsys):
    code, _, err = run_cli("path", "no-such-model", capsys=capsys)
    assert code == 2 and "Unknown model" in err
    code, _, err = run_cli(capsys=capsys)
    assert code == 2 and "missing action" in err
    with pytest.raises(SystemExit) as info:
        run_cli("frobnicate", capsys=capsys)
    assert info.value.code == 2


def test_cli_unexpected_error_is_one_line(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(models, "model_status", boom)
    code, _, err = run_cli("list", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "disk on fire second line" in err


def test_cli_through_main_entry_point():
    env = dict(os.environ)
    r = subprocess.run(
        [sys.executable, "-m", "napari_edgesam.cli.main", "models", "list"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "edgesam-3x*" in r.stdout and "missing" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "napari_edgesam.cli.main", "models", "path", "edgesam"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "edge_sam_encoder.onnx" in r.stderr
