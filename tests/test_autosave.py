"""The autosave store (workflows.autosave) and the panel's controller (widget.autosave):
round trip, incremental writes (files and bytes counted), a write killed in the middle
(raised inside the chunk writer, and a real SIGKILL of a writing process), a read-only
folder, a failed manifest write, a listing testing the lock, listing and discarding; in
napari: edits, undo (also of a hidden layer) and a failed write found and written, Save...
discarding the autosave (and keeping it for an edit made while the save runs), data
replaced during a full write, closing (every change written, a write in flight redone),
Restore after the image was closed or the session moved on. Jobs are held and run by the
test (HeldWorkers) where the order of a worker and an event matters."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_edgesam.workflows import autosave as store_mod
from napari_edgesam.workflows.autosave import AutosaveError, AutosaveStore
from napari_edgesam.workflows.prompt_log import LoggedObject, PromptLog

IDENTITY = {"shape": [3, 700, 1100], "dtype": "uint16", "sample": ["test", "stack"]}


def labels_with_objects(shape=(3, 700, 1100)) -> np.ndarray:
    lab = np.zeros(shape, np.uint32)
    lab[0, 10:60, 20:90] = 1          # chunk (0, 0, 0)
    lab[1, 600:690, 1030:1090] = 2    # chunk (1, 1, 2) (an edge tile: 188 x 76)
    lab[2, 500:530, 500:530] = 3      # four chunks of slice 2
    return lab


def log_of(*labels) -> PromptLog:
    return PromptLog(image={"name": "x", "shape": [3, 700, 1100], "dtype": "uint16"},
                     objects=[LoggedObject(label=v, key=(0,), points=((5.0, 6.0),),
                                           point_labels=(1,)) for v in labels])


def files(store) -> set[str]:
    return {p.name for p in store.folder.iterdir()}


def new_store(tmp_path, shape=(3, 700, 1100)) -> AutosaveStore:
    return AutosaveStore.create(IDENTITY, "x labels", shape, np.uint32, root=tmp_path)


def test_round_trip_of_labels_and_prompt_log(tmp_path):
    lab = labels_with_objects()
    store = new_store(tmp_path)
    rep = store.write({}, log=log_of(1, 2), source=lab)
    assert rep.chunks_written == 1 + 1 + 4  # chunks of 0 have no file
    got, log = AutosaveStore.open(store.folder).read()
    assert got.dtype == np.uint32 and got.shape == lab.shape
    np.testing.assert_array_equal(got, lab)
    assert [o.label for o in log.objects] == [1, 2]
    info = store.info()
    assert (info.labels_name, info.shape, info.chunks, info.objects) == (
        "x labels", lab.shape, 6, 2)


def test_the_first_write_needs_the_whole_labels(tmp_path):
    with pytest.raises(AutosaveError, match="first autosave"):
        new_store(tmp_path).write({(0, 0, 0): np.ones((512, 512), np.uint32)})


def test_only_changed_chunks_are_written(tmp_path):
    lab = labels_with_objects()
    store = new_store(tmp_path)
    store.write({}, log=log_of(1), source=lab)
    before = files(store)
    lab[1, 650, 1050] = 7  # one pixel of chunk (1, 1, 2)
    key = (1, 1, 2)
    block = lab[store_mod.chunk_index(lab.shape, key)].copy()
    rep = store.write({key: block}, log=log_of(1))
    assert (rep.chunks_written, rep.chunks_dropped, rep.log_written) == (1, 0, False)
    assert rep.bytes_written < 2000  # one compressed 188 x 76 chunk, not the stack
    after = files(store)
    assert len(after) == len(before)  # the chunk's old file replaced by its new one
    assert len(after - before) == 1 and (after - before).pop().startswith("1.1.2.g2")
    lab[0, 10:60, 20:90] = 0  # chunk (0, 0, 0) now empty: its file goes
    rep = store.write({(0, 0, 0): lab[0, :512, :512].copy()}, log=log_of(2))
    assert (rep.chunks_written, rep.chunks_dropped, rep.log_written) == (0, 1, True)
    assert not any(n.startswith("0.0.0.") for n in files(store))
    got, log = store.read()
    np.testing.assert_array_equal(got, lab)
    assert [o.label for o in log.objects] == [2]
    names = files(store)  # only what the manifest names, its lock and itself
    assert names == {"manifest.json", "owner.lock", "prompts.g3.json",
                     "1.1.2.g2.zz", "2.0.0.g1.zz", "2.0.1.g1.zz", "2.1.0.g1.zz",
                     "2.1.1.g1.zz"}


def test_a_write_failing_in_the_middle_leaves_the_last_consistent_state(tmp_path,
                                                                       monkeypatch):
    lab = labels_with_objects()
    store = new_store(tmp_path)
    store.write({}, log=log_of(1, 2), source=lab)
    real = store_mod._write_chunk
    calls = []

    def dies_after_one(path, data):
        if calls:
            raise KeyboardInterrupt  # as a kill between two chunk files
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(store_mod, "_write_chunk", dies_after_one)
    changed = lab.copy()
    changed[:, :, :] = 5
    with pytest.raises(KeyboardInterrupt):
        store.write({}, log=log_of(5), source=changed)
    assert len(calls) == 1  # one new chunk file was written, the manifest was not
    got, log = AutosaveStore.open(store.folder).read()
    np.testing.assert_array_equal(got, lab)
    assert [o.label for o in log.objects] == [1, 2]
    monkeypatch.setattr(store_mod, "_write_chunk", real)
    leftover = calls[0].name
    assert leftover in files(store)
    key = (1, 1, 2)
    store.write({key: changed[store_mod.chunk_index(lab.shape, key)].copy()}, log=log_of(1))
    assert leftover not in files(store)  # swept by the next write
    lab[store_mod.chunk_index(lab.shape, key)] = 5
    np.testing.assert_array_equal(store.read()[0], lab)


KILLED_WRITER = textwrap.dedent('''
    import sys, time
    import numpy as np
    from napari_edgesam.workflows import autosave as m

    root, done = sys.argv[1], sys.argv[2]
    identity = {"shape": [4, 1024, 1024], "dtype": "uint8", "sample": ["t", "k"]}
    store = m.AutosaveStore.create(identity, "k", (4, 1024, 1024), np.uint32, root=root)
    store.write({}, source=np.full((4, 1024, 1024), 1, np.uint32))
    open(done, "w").write(str(store.folder))
    real = m._write_chunk

    def slow(path, data):
        real(path, data)
        time.sleep(0.3)

    m._write_chunk = slow
    store.write({}, source=np.full((4, 1024, 1024), 2, np.uint32))
    open(done, "a").write("\\nfinished")
''')


def test_a_writer_killed_mid_write_leaves_the_last_consistent_state(tmp_path):
    done = tmp_path / "done.txt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "root"),
                             str(done)])
    try:
        deadline = time.monotonic() + 60
        folder = None
        while time.monotonic() < deadline:
            if folder is None and done.exists() and done.read_text():
                from pathlib import Path

                folder = Path(done.read_text().splitlines()[0])
            if folder is not None and any(".g2." in p.name for p in folder.iterdir()):
                break
            time.sleep(0.02)
        assert folder is not None, "the writer did not start"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert "finished" not in done.read_text()
    got, _ = AutosaveStore.open(folder).read()
    np.testing.assert_array_equal(got, np.full((4, 1024, 1024), 1, np.uint32))
    infos = store_mod.list_autosaves({"shape": [4, 1024, 1024], "dtype": "uint8",
                                      "sample": ["t", "k"]}, root=tmp_path / "root")
    assert [i.folder for i in infos] == [folder]  # the killed process owns it no more


def test_a_read_only_folder_is_a_clear_error_and_keeps_the_last_state(tmp_path,
                                                                      monkeypatch):
    from napari_edgesam.engine import paths

    lab = labels_with_objects()
    store = new_store(tmp_path)
    store.write({}, source=lab)

    def refuse(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(paths.tempfile, "mkstemp", refuse)
    with pytest.raises(AutosaveError) as exc:
        store.write({(0, 0, 0): np.ones((512, 512), np.uint32)})
    assert str(store.folder) in str(exc.value) and "Read-only" in str(exc.value)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.read()[0], lab)


def test_listing_skips_stores_a_live_process_writes_and_discard_removes(tmp_path):
    lab = labels_with_objects()
    a = new_store(tmp_path)
    a.write({}, source=lab)
    assert store_mod.list_autosaves(IDENTITY, root=tmp_path) == []  # ours, still open
    a.close()
    time.sleep(0.01)
    b = new_store(tmp_path)
    b.write({}, source=lab)
    b.close()
    infos = store_mod.list_autosaves(IDENTITY, root=tmp_path)
    assert [i.folder for i in infos] == [b.folder, a.folder]  # newest first
    other = dict(IDENTITY, sample=["test", "other"])
    assert store_mod.list_autosaves(other, root=tmp_path) == []
    assert store_mod.discard_autosaves(IDENTITY, root=tmp_path, keep=[b.folder]) == 1
    assert [i.folder for i in store_mod.list_autosaves(IDENTITY, root=tmp_path)] == [
        b.folder]
    image_folder = b.folder.parent
    assert image_folder.is_dir()  # b is still in it
    b.discard()  # the last store of the image: its folder goes too, the root stays
    assert not image_folder.exists() and tmp_path.is_dir()


def test_an_image_file_changed_on_disk_has_another_identity(tmp_path):
    p = tmp_path / "a.tif"
    p.write_bytes(b"x" * 10)
    one = store_mod.image_identity(shape=(5, 5), dtype=np.uint8, path=p)
    os.utime(p, ns=(1, 1))
    assert store_mod.image_identity(shape=(5, 5), dtype=np.uint8, path=p) != one
    assert store_mod.image_identity(shape=(5, 5), dtype=np.uint8) is None
    assert store_mod.image_identity(shape=(5, 5), dtype="uint8", path=tmp_path / "no") is None


def test_chunks_of_a_box():
    shape = (3, 700, 1100)
    assert store_mod.chunks_in_box(shape, [(1, 2), (0, 1), (511, 513)]) == {(1, 0, 0),
                                                                           (1, 0, 1)}
    assert store_mod.chunks_in_box(shape, [(0, 3), (600, 10**9), (1050, 1100)]) == {
        (z, 1, 2) for z in range(3)}
    assert store_mod.chunks_in_box(shape, [(0, 1), (5, 5), (0, 10)]) == set()
    assert len(list(store_mod.chunk_keys(shape))) == 3 * 2 * 3


def test_a_manifest_write_failing_does_not_keep_the_old_prompt_log(tmp_path, monkeypatch):
    """The log written by a write whose manifest failed is not the one the store holds:
    the next write with that log writes it again (else the manifest would name the
    previous generation's log beside the new labels)."""
    from napari_edgesam.engine import paths

    lab = labels_with_objects()
    store = new_store(tmp_path)
    store.write({}, log=log_of(1), source=lab)
    real = paths.atomic_write_text

    def refuse(path, *a, **k):
        raise PermissionError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths, "atomic_write_text", refuse)
    with pytest.raises(AutosaveError, match="No space"):
        store.write({}, log=log_of(1, 2))
    monkeypatch.setattr(paths, "atomic_write_text", real)
    rep = store.write({}, log=log_of(1, 2))
    assert rep.log_written
    _, log = AutosaveStore.open(store.folder).read()
    assert [o.label for o in log.objects] == [1, 2]


def test_a_listing_testing_the_lock_does_not_fail_the_first_write(tmp_path):
    """list_autosaves (any process) takes an unowned store's lock for a moment; the
    owner's first write waits for it instead of reporting another napari."""
    import threading

    from napari_edgesam.engine import paths

    store = new_store(tmp_path)
    store.folder.mkdir(parents=True)
    probe = paths.FileLock(store.folder / store_mod.LOCK)
    assert probe.acquire(wait=False)  # as _owned_elsewhere does
    threading.Timer(0.15, probe.release).start()
    store.write({}, source=labels_with_objects())  # waits, then owns it
    assert store_mod.list_autosaves(IDENTITY, root=tmp_path) == []  # owned: not listed
    other = AutosaveStore.open(store.folder)
    t0 = time.monotonic()
    with pytest.raises(AutosaveError, match="another napari"):  # a real owner: refused
        other.write({}, source=labels_with_objects())
    assert time.monotonic() - t0 < 5


def test_an_autosave_is_offered_only_when_newer_than_the_saved_labels_and_different(
        tmp_path):
    import tifffile

    from napari_edgesam.widget.autosave_restore import find_job

    lab = np.zeros((2, 40, 50), np.uint32)
    lab[1, 5:9, 7:30] = 3
    identity = dict(IDENTITY, shape=[2, 40, 50])
    saved = tmp_path / "x_labels.tif"

    def autosave(values):
        s = AutosaveStore.create(identity, "x labels", values.shape, np.uint32)
        s.write({}, source=values)
        s.close()
        return s

    tifffile.imwrite(saved, lab)
    os.utime(saved, (time.time() + 5,) * 2)  # saved after the autosave below
    autosave(lab + 1)
    assert find_job(identity, saved) is None and store_mod.list_autosaves(identity) == []
    os.utime(saved, (time.time() - 60,) * 2)
    autosave(lab)  # newer, but the same labels: nothing to offer
    assert find_job(identity, saved) is None and store_mod.list_autosaves(identity) == []
    older = autosave(lab + 1)
    time.sleep(0.01)
    newer = autosave(lab + 2)  # newer and different: offered, the older one discarded
    info = find_job(identity, saved)
    assert info is not None and info.folder == newer.folder and not older.folder.exists()
    assert find_job(identity, None).folder == newer.folder  # no labels file (viewer.open)


def test_saved_labels_newer_than_an_autosave_discard_only_that_layers_autosaves(tmp_path):
    """Another Labels layer of the same image keeps its unsaved autosave when the Folder
    tab's labels file is newer than the newest autosave (of its own labels layer)."""
    import tifffile

    from napari_edgesam.widget.autosave_restore import find_job

    identity = dict(IDENTITY, shape=[2, 40, 50])
    lab = np.zeros((2, 40, 50), np.uint32)
    lab[0, 3:9, 4:20] = 2

    def autosave(name):
        s = AutosaveStore.create(identity, name, lab.shape, np.uint32)
        s.write({}, source=lab)
        s.close()
        return s

    scratch = autosave("scratch")
    time.sleep(0.01)
    autosave("x labels")
    saved = tmp_path / "x_labels.tif"
    tifffile.imwrite(saved, lab + 1)
    os.utime(saved, (time.time() + 5,) * 2)
    assert find_job(identity, saved) is None
    assert [i.folder for i in store_mod.list_autosaves(identity)] == [scratch.folder]


# ------------------------------------------------------------------ the controller ----
@pytest.fixture
def panel_on_file(make_napari_viewer, npe2pm, tmp_path):
    """A panel on an image opened from a file, its target a Labels layer of 2 slices."""
    import tifffile
    from widget_support import make_widget

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.full((2, 600, 700), 30, np.uint8))
    npe2pm.register("napari")  # the builtin readers (viewer.open)
    viewer = make_napari_viewer()
    w = make_widget(viewer, prefetch=False)
    (image,) = viewer.open(str(path), plugin="napari")
    labels = viewer.add_labels(np.zeros((2, 600, 700), np.uint32), name="ann")
    w.session.set_labels_layer(labels)
    w.autosave.idle_ms = 50
    return viewer, w, image, labels


def paint(layer, z, rows, cols, value):
    with layer.block_history():
        r, c = np.meshgrid(np.arange(*rows), np.arange(*cols), indexing="ij")
        layer.data_setitem((np.full(r.size, z), r.ravel(), c.ravel()), value)


def stored(w, layer):
    t = w.autosave.tracker(layer)
    return t.store.read()[0] if t.store.info() is not None else None


def settle(qtbot, w, layer):
    """Wait until every change of ``layer`` is written."""
    t = w.autosave.tracker(layer)
    qtbot.waitUntil(lambda: not t.pending() and not t.writing
                    and not w.autosave._timer.isActive(), timeout=10_000)


@pytest.mark.gui
def test_edits_and_undo_reach_the_autosave(panel_on_file, qtbot):
    viewer, w, image, labels = panel_on_file
    t = w.autosave.tracker(labels)
    assert t is not None and t.store.info() is None  # nothing written before a change
    paint(labels, 1, (10, 20), (600, 690), 4)
    settle(qtbot, w, labels)
    np.testing.assert_array_equal(stored(w, labels), labels.data)
    paint(labels, 0, (100, 110), (100, 110), 5)
    settle(qtbot, w, labels)
    rep = w.autosave.last_report
    assert rep.chunks_written == 1  # incremental: only the chunk of the edit
    assert w.autosave.last_gui_seconds is not None
    labels.undo()  # napari's undo: no paint event, a refresh
    settle(qtbot, w, labels)
    np.testing.assert_array_equal(stored(w, labels), labels.data)
    assert not (stored(w, labels) == 5).any()
    labels.visible = False  # a hidden layer's undo emits nothing: the poll finds it
    labels.undo()
    assert not labels.data.any()
    qtbot.waitUntil(lambda: t.pending() or t.writing or not stored(w, labels).any(),
                    timeout=5000)
    settle(qtbot, w, labels)
    assert not stored(w, labels).any()


@pytest.mark.gui
def test_a_failed_write_warns_once_and_loses_nothing(panel_on_file, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    from napari_edgesam.engine import paths

    viewer, w, image, labels = panel_on_file
    paint(labels, 0, (5, 9), (5, 9), 1)
    settle(qtbot, w, labels)
    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)

    def refuse(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(paths.tempfile, "mkstemp", refuse)
    paint(labels, 1, (5, 9), (5, 9), 2)
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=5000)
    paint(labels, 1, (50, 59), (5, 9), 3)
    qtbot.wait(300)
    assert len(shown) == 1 and "Read-only" in shown[0] and "unchanged" in shown[0]
    assert (labels.data == 2).sum() == 16 and (labels.data == 3).sum() == 36
    monkeypatch.undo()  # the folder writable again
    paint(labels, 0, (300, 301), (300, 301), 4)
    settle(qtbot, w, labels)
    np.testing.assert_array_equal(stored(w, labels), labels.data)  # both kept edits too


@pytest.mark.gui
def test_save_discards_the_autosave(panel_on_file, qtbot, tmp_path):
    viewer, w, image, labels = panel_on_file
    paint(labels, 0, (5, 9), (5, 9), 1)
    settle(qtbot, w, labels)
    folder = w.autosave.tracker(labels).store.folder
    assert folder.is_dir()
    w.save_labels(tmp_path / "saved.tif")
    qtbot.waitUntil(lambda: not folder.exists(), timeout=10_000)
    identity = w.autosave.tracker(labels).identity
    w.autosave.close(flush=False)
    assert store_mod.list_autosaves(identity) == []


class HeldWorkers:
    """A ``start_worker`` that keeps the jobs it is given; :meth:`run` runs one (in this
    thread) and calls its ``returned`` callback: the test orders workers and events."""

    def __init__(self):
        self.jobs = []

    def __call__(self, func, *args, returned=None, errored=None, **kwargs):
        self.jobs.append((func, args, returned, errored))

    def run(self, i=0):
        func, args, returned, errored = self.jobs.pop(i)
        out = func(*args)
        if returned is not None:
            returned(out)
        return out


@pytest.mark.gui
def test_an_edit_made_while_save_runs_stays_autosaved(panel_on_file, qtbot, tmp_path,
                                                      monkeypatch):
    """Save... snapshots; the user paints E; the autosave writes E; the save ends: E is
    not in the saved file, so the autosave keeps it and is written again after the
    save (newer than the file)."""
    import tifffile

    viewer, w, image, labels = panel_on_file
    paint(labels, 0, (5, 9), (5, 9), 1)
    settle(qtbot, w, labels)
    saves = HeldWorkers()
    monkeypatch.setattr(w, "start_worker", saves)
    path = tmp_path / "saved.tif"
    w.save_labels(path)
    paint(labels, 1, (40, 50), (40, 50), 2)  # E, after the snapshot
    settle(qtbot, w, labels)
    saves.run()
    assert not (tifffile.imread(path) == 2).any()  # E is not in the saved file
    t = w.autosave.tracker(labels)
    settle(qtbot, w, labels)
    info = t.store.info()
    assert info is not None and info.written >= path.stat().st_mtime
    np.testing.assert_array_equal(stored(w, labels), labels.data)  # E included


@pytest.mark.gui
def test_data_replaced_during_a_full_write_is_written_whole_again(panel_on_file, qtbot,
                                                                  monkeypatch):
    viewer, w, image, labels = panel_on_file
    held = HeldWorkers()
    monkeypatch.setattr(w.autosave, "start_worker", held)
    paint(labels, 0, (5, 9), (5, 9), 1)
    w.autosave.autosave_now()  # the first write: the whole layer, read in the worker
    assert len(held.jobs) == 1
    new = np.zeros_like(labels.data)
    new[1, 100:140, 200:260] = 7
    labels.data = new  # replaced while the full write runs
    held.run()  # it wrote the old data
    t = w.autosave.tracker(labels)
    assert t.pending()
    monkeypatch.undo()
    w.autosave._timer.start(0)
    settle(qtbot, w, labels)
    np.testing.assert_array_equal(stored(w, labels), new)


@pytest.mark.gui
def test_closing_writes_every_change(panel_on_file, qtbot):
    """At closing all changed chunks are written (no budget), also the whole layer when
    nothing was written yet."""
    viewer, w, image, labels = panel_on_file
    paint(labels, 0, (5, 9), (5, 9), 1)
    settle(qtbot, w, labels)
    w.autosave.copy_budget = 1  # one chunk per autosave
    w.autosave.idle_ms = 10**8
    for z in range(2):
        for r, c in ((10, 10), (10, 600), (550, 10), (550, 600)):
            paint(labels, z, (r, r + 20), (c, c + 20), 3 + z)
    other = viewer.add_labels(np.zeros((2, 600, 700), np.uint32), name="second")
    w.session.set_labels_layer(other)
    paint(other, 1, (300, 340), (300, 340), 9)  # never autosaved before closing
    t, t2 = w.autosave.tracker(labels), w.autosave.tracker(other)
    assert t2 is not None and t2.store.info() is None
    w.autosave.close(flush=True)
    np.testing.assert_array_equal(t.store.read()[0], labels.data)
    np.testing.assert_array_equal(t2.store.read()[0], other.data)


@pytest.mark.gui
def test_closing_redoes_a_write_in_flight_and_a_queued_one_does_nothing(
        panel_on_file, qtbot, monkeypatch):
    viewer, w, image, labels = panel_on_file
    held = HeldWorkers()
    monkeypatch.setattr(w.autosave, "start_worker", held)
    paint(labels, 0, (5, 9), (5, 9), 1)
    w.autosave.autosave_now()  # queued, not run
    t = w.autosave.tracker(labels)
    w.autosave.close(flush=True)
    np.testing.assert_array_equal(t.store.read()[0], labels.data)
    paint(labels, 0, (5, 9), (5, 9), 0)  # after closing: not followed any more
    func, args, returned, errored = held.jobs.pop()
    assert func(*args) is None  # the queued write runs late and writes nothing
    assert (t.store.read()[0] == 1).sum() == 16


def autosave_of(image, labels_value, name="ann"):
    """A closed autosave of ``image``'s labels (another napari's, killed)."""
    from napari_edgesam.widget.autosave_restore import image_identity_of

    identity = image_identity_of(image)
    lab = np.zeros(image.data.shape, np.uint32)
    lab[0, 20:30, 40:60] = labels_value
    s = AutosaveStore.create(identity, name, lab.shape, np.uint32)
    s.write({}, source=lab)
    s.close()
    return s.info(), lab


@pytest.mark.gui
def test_restore_after_the_image_was_closed_keeps_the_autosave(panel_on_file, qtbot):
    viewer, w, image, labels = panel_on_file
    info, _ = autosave_of(image, 6)
    viewer.layers.remove(image)
    before = len(viewer.layers)
    w.autosave.restore(image, info)
    qtbot.wait(100)
    assert len(viewer.layers) == before  # nothing added for an image that is gone
    assert "no longer open" in w.status
    assert [i.folder for i in store_mod.list_autosaves(info.identity)] == [info.folder]


@pytest.mark.gui
def test_restore_into_an_image_that_is_no_longer_the_sessions_is_followed(
        panel_on_file, qtbot):
    viewer, w, image, labels = panel_on_file
    info, lab = autosave_of(image, 6)
    second = viewer.add_image(np.zeros((2, 600, 700), np.uint8), name="other")
    w.session.set_image_layer(second)  # the user moved on before pressing Restore
    w.autosave.restore(image, info)
    qtbot.waitUntil(lambda: "Restored" in w.status, timeout=10_000)
    restored = [ly for ly in viewer.layers if ly.name.startswith("ann") and ly is not labels]
    assert len(restored) == 1 and (restored[0].data == lab).all()
    t = w.autosave.tracker(restored[0])
    assert t is not None and t.store.folder == info.folder  # goes on in that store
    assert info.folder.is_dir()
    paint(restored[0], 1, (5, 9), (5, 9), 8)
    settle(qtbot, w, restored[0])
    np.testing.assert_array_equal(stored(w, restored[0]), restored[0].data)
