"""Corrections on the session API (widget/corrections.py): select, delete, merge,
re-segment, split on the slice shown, each ONE undo step of the Labels layer, with the
prompt log following undo and redo. Real napari, the panel's session, the test-double
model (not EdgeSAM) for the previews of re-segment and split."""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import make_widget

SHAPE = (120, 200)
#: name -> (centre, radius, brightness); D and E touch (one wrong object to split).
DISCS = {"A": ((30, 40), 11, 200), "B": ((30, 120), 11, 200), "C": ((90, 40), 11, 200),
         "D": ((90, 110), 11, 200), "E": ((90, 132), 11, 120), "F": ((90, 175), 10, 200)}
TIMEOUT = 20_000


def _disc(name):
    (r, c), rad, _ = DISCS[name]
    yy, xx = np.ogrid[:SHAPE[0], :SHAPE[1]]
    return (yy - r) ** 2 + (xx - c) ** 2 <= rad**2


def _image():
    img = np.full(SHAPE, 20, np.uint8)
    for name, (_, _, value) in DISCS.items():
        img[_disc(name)] = value
    return img


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_outline_is_each_objects_inner_border():
    from napari_edgesam.widget.corrections import outline

    ids = np.zeros((10, 14), np.uint32)
    ids[1:9, 1:7] = 3
    ids[1:9, 7:13] = 4  # touching: each keeps its own border
    edge = outline(ids)
    assert edge[1, 3] and edge[4, 1] and edge[4, 6] and edge[4, 7] and not edge[4, 3]
    assert not edge[0].any() and not edge[:, 0].any()
    thick = outline(ids, width=2)
    assert thick[4, 2] and not thick[4, 3] and (thick <= (ids > 0)).all()


def test_a_step_is_followed_through_undo_and_redo(viewer):
    """The tokens of widget/history.py follow napari's private queues (pinned here)."""
    from napari_edgesam.widget.commit import LabelsTarget
    from napari_edgesam.widget.history import last_step, step_state

    layer = viewer.add_labels(np.zeros((10, 10), np.uint8))
    assert last_step(layer) is None
    layer.data[2:5, 2:5] = 4
    assert LabelsTarget.relabel(layer, (), [4], 7) == 9
    token = last_step(layer)
    assert step_state(layer, token) == "applied"
    layer.undo()
    assert step_state(layer, token) == "undone" and (layer.data == 4).sum() == 9
    layer.redo()
    assert step_state(layer, token) == "applied" and (layer.data == 7).sum() == 9
    layer.undo()
    layer.data_setitem((np.array([0]), np.array([0])), 1)  # a new edit drops the redo
    assert step_state(layer, token) is None


def test_a_correction_undone_unseen_then_dropped_from_redo_is_undone(viewer):
    """napari's own undo on a hidden layer emits nothing; a new edit then drops the redo:
    the log still knows the merge was undone. A merge that fell off napari's 100-step
    history stays applied."""
    from napari_edgesam.widget.commit import LabelsTarget
    from napari_edgesam.widget.history import last_step, step_state
    from napari_edgesam.widget.prompt_record import PromptRecorder
    from napari_edgesam.workflows.prompt_log import LoggedObject

    def made():  # two logged objects on a hidden Labels layer
        layer = viewer.add_labels(np.zeros((10, 10), np.uint8))
        layer.visible = False  # napari's refresh, hence undo, emits nothing now
        layer.data[1:3, 1:3] = 1
        layer.data[5:7, 5:7] = 2
        rec = PromptRecorder()
        for v in (1, 2):
            rec.record(layer, LoggedObject(v, (), points=((float(v), 0.0),),
                                           point_labels=(1,)), (), None, None)
        return layer, rec

    def logged():
        return [o.label for o in rec.log(layer).objects]

    def merge():
        LabelsTarget.relabel(layer, (), [1, 2], 1)
        rec.merge(layer, (), [1, 2], 1, last_step(layer))
        assert logged() == [1, 1]
        return last_step(layer)

    layer, rec = made()
    token = merge()
    layer.undo()  # napari's own (no panel signal), on a hidden layer: no event
    layer.data_setitem((np.array([9]), np.array([9])), 3)  # drops the redo
    assert step_state(layer, token) is None and logged() == [1, 2]

    token = merge()
    for i in range(layer._history_limit):
        layer.data_setitem((np.array([9]), np.array([0])), 4 + i % 2)  # a step each
    assert step_state(layer, token) is None and logged() == [1, 1]


@pytest.fixture
def corrected(viewer, test_model, qtbot):
    """The panel on the discs: A and B committed by clicks (labels 1, 2, logged), then
    'Segment all'-like objects written as one step: C as a too-large square (3), D and E as
    one object (4), F (5)."""
    w = make_widget(viewer, test_model, prefetch=False)
    layer = viewer.add_image(_image(), name="discs")
    s = w.session
    qtbot.waitUntil(lambda: s.image_layer is layer and s.embedding is not None
                    and not w.busy, timeout=TIMEOUT)

    def click_commit(name):
        (r, c), _, _ = DISCS[name]
        s.add_point(layer.data_to_world((r, c)))
        qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
        return w.commit()

    assert click_commit("A") == 1 and click_commit("B") == 2
    labels = s.labels_layer
    ids = np.zeros(SHAPE, np.uint32)
    ids[75:106, 25:56] = 1  # C: a square around the disc
    ids[_disc("D") | _disc("E")] = 2
    ids[_disc("F")] = 3
    s.target.write_objects(labels, [((), ids)], 3, background_only=True)
    return w, layer, labels


def _select(w, layer, name, add=False):
    (r, c), _, _ = DISCS[name]
    return w.session.corrections.select_at(layer.data_to_world((r, c)), add=add)


def _logged(w):
    return sorted((o.label, o.points) for o in w.session.prompt_log().objects)


def test_delete_and_merge_are_one_undo_step_each(corrected, qtbot):
    w, layer, labels = corrected
    s, cor = w.session, w.session.corrections
    before = labels.data.copy()
    cor.start()
    assert cor.selecting and s.points_layer.mode == "pan_zoom"
    assert "click an object" in w.status
    assert _select(w, layer, "F") == 5 and cor.selected == [5]
    assert "label 5 selected" in w.status and "Del: delete" in w.status
    pv = s.preview_view.layer.data  # the selection outlined on the preview layer
    assert (pv == 3).sum() > 0 and not (pv == 3)[~_disc("F")].any()
    n_steps = len(labels._undo_history)

    assert cor.delete() == _disc("F").sum()
    assert not (labels.data == 5).any() and len(labels._undo_history) == n_steps + 1
    assert "Deleted label 5" in w.status and cor.selected == []
    w.undo()
    np.testing.assert_array_equal(labels.data, before)
    w.redo()
    assert not (labels.data == 5).any()
    w.undo()

    # merge: the two logged objects; the lowest id stays, both prompts go with it
    assert _logged(w) == [(1, ((40.0, 30.0),)), (2, ((120.0, 30.0),))]
    _select(w, layer, "B")
    _select(w, layer, "A", add=True)
    assert cor.selected == [2, 1] and "M: merge into 1" in w.status
    assert cor.merge() == 1
    np.testing.assert_array_equal(labels.data == 1, (before == 1) | (before == 2))
    assert _logged(w) == [(1, ((40.0, 30.0),)), (1, ((120.0, 30.0),))]
    w.undo()  # one step: the objects and their log entries as they were
    np.testing.assert_array_equal(labels.data, before)
    assert _logged(w) == [(1, ((40.0, 30.0),)), (2, ((120.0, 30.0),))]
    w.redo()
    assert _logged(w) == [(1, ((40.0, 30.0),)), (1, ((120.0, 30.0),))]
    w.undo()
    labels.data_setitem((np.array([0]), np.array([0])), 9)  # a new edit: no redo left
    assert _logged(w) == [(1, ((40.0, 30.0),)), (2, ((120.0, 30.0),))]

    # a deleted logged object drops out of the log; undo brings it back
    _select(w, layer, "B")
    cor.delete()
    assert _logged(w) == [(1, ((40.0, 30.0),))]
    w.undo()
    assert [v for v, _ in _logged(w)] == [1, 2]
    cor.stop()
    assert not cor.active and s.points_layer.mode == "add"
    assert not (s.preview_view.layer.data == 3).any()


def test_the_log_follows_the_panels_undo_on_a_hidden_layer(corrected):
    """The reviewer's sequence: merge 1 and 2, hide the layer, the panel's Undo (napari's
    refresh does nothing for a hidden layer: no paint or data event), a new edit (the
    redo dropped): each object is logged under its own id again."""
    w, layer, labels = corrected
    cor = w.session.corrections
    cor.start()
    _select(w, layer, "B")
    _select(w, layer, "A", add=True)
    assert cor.merge() == 1
    labels.visible = False
    w.undo()
    labels.data_setitem((np.array([0]), np.array([0])), 9)
    assert _logged(w) == [(1, ((40.0, 30.0),)), (2, ((120.0, 30.0),))]


def test_resegment_keeps_the_id_and_split_gives_a_new_one(corrected, qtbot):
    w, layer, labels = corrected
    s, cor = w.session, w.session.corrections
    before = labels.data.copy()
    cor.start()
    cor.resegment()  # nothing selected yet: says so
    assert cor.mode == "select" and "select one object" in w.status

    _select(w, layer, "C")
    cor.resegment()
    assert cor.pending == ("resegment", 3) and s.points_layer.mode == "add"
    assert "Re-segmenting label 3" in w.status
    (r, c), _, _ = DISCS["C"]
    s.add_point(layer.data_to_world((r, c)))
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    assert "C: replace label 3" in w.status
    n_steps = len(labels._undo_history)
    assert w.commit() == 3
    assert len(labels._undo_history) == n_steps + 1
    assert _iou(labels.data == 3, _disc("C")) > 0.85  # the square became the disc
    sq = labels.data[75:106, 25:56]  # the square's corners are background again
    assert sq[0, 0] == sq[0, -1] == sq[-1, 0] == sq[-1, -1] == 0 and labels.data.max() == 5
    assert cor.mode == "select" and cor.selected == [3] and not len(s.points_layer.data)
    assert (3, ((40.0, 90.0),)) in _logged(w)  # the new prompts are the object's entry
    w.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert 3 not in [v for v, _ in _logged(w)]
    w.redo()
    assert (3, ((40.0, 90.0),)) in _logged(w)

    # split: D and E are one object (4); a click on E gives E's pixels a new id
    _select(w, layer, "D")
    cor.split()
    assert cor.pending == ("split", 4)
    (r, c), _, _ = DISCS["E"]
    s.add_point(layer.data_to_world((r, c)))
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    assert w.commit() == 6
    assert _iou(labels.data == 6, _disc("E")) > 0.85
    assert _iou(labels.data == 4, _disc("D")) > 0.85
    assert cor.selected == [4, 6] and "Split label 4" in w.status
    entry = [o for o in s.prompt_log().objects if o.label == 6]
    assert len(entry) == 1 and entry[0].points == ((132.0, 90.0),)
    assert entry[0].background_only is False and entry[0].within == 4  # replayed inside 4
    w.undo()
    assert not (labels.data == 6).any() and (labels.data == 4).sum() == (before == 4).sum()
    assert 6 not in [v for v, _ in _logged(w)]


def test_the_edit_mode_toggles_on_and_off_again_and_again(corrected, qtbot):
    """E (and the Edit button) on, off, on, off, on...: each E turns the mode on again (the
    third E used to leave it off with the points layer in pan/zoom, clicks doing nothing)."""
    from qtpy.QtCore import Qt

    w, layer, labels = corrected
    s, cor = w.session, w.session.corrections
    for i in range(3):
        cor.toggle()  # E
        assert cor.active and s.points_layer.mode == "pan_zoom", (i, w.status)
        assert "Edit mode: click an object" in w.status, (i, w.status)
        assert _select(w, layer, "A") == 1 and cor.selected == [1]
        cor.toggle()
        assert not cor.active and s.points_layer.mode == "add", (i, w.status)
    for i in range(2):  # the panel's button goes the same way
        qtbot.mouseClick(w.edit_button, Qt.MouseButton.LeftButton)
        assert cor.active and w.edit_button.isChecked() and s.points_layer.mode == "pan_zoom"
        qtbot.mouseClick(w.edit_button, Qt.MouseButton.LeftButton)
        assert not cor.active and not w.edit_button.isChecked()


def test_resegment_puts_the_logged_prompts_back_for_editing(corrected, qtbot):
    """R on an object committed from clicks shows its logged prompts again (the log "shows
    the prompts again for editing"); a negative click added to them and C re-segment it
    with its id kept. An object without log entries (Segment all) starts from no prompts."""
    w, layer, labels = corrected
    s, cor = w.session, w.session.corrections
    cor.start()
    _select(w, layer, "A")
    cor.resegment()
    assert cor.pending == ("resegment", 1)
    (r, c), _, _ = DISCS["A"]
    assert len(s.points_layer.data) == 1  # A's own click, where it was made
    np.testing.assert_allclose(s.points_layer.data[0][-2:], (r, c))
    assert s.gather_prompts().points == ((float(c), float(r)),)
    assert "logged prompt" in w.status
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
    s.add_point(layer.data_to_world((r, c + 8)), positive=False)  # trim its right side
    qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None
                    and s.gather_prompts().labels == (1, 0), timeout=TIMEOUT)
    assert w.commit() == 1
    assert (1, ((float(c), float(r)), (float(c + 8), float(r)))) in _logged(w)

    _select(w, layer, "F")  # from 'Segment all': nothing logged, no prompts put back
    cor.resegment()
    assert cor.pending == ("resegment", 5) and not len(s.points_layer.data)


def test_selection_belongs_to_its_slice_and_esc_cancels(viewer, test_model, qtbot):
    """On a stack a selection is on the slice shown: another slice drops it; Esc goes
    from re-segmenting back to selecting, then deselects; Delete outside the mode removes
    napari's selected points as before."""
    w = make_widget(viewer, test_model, prefetch=False)
    stack = np.stack([_image()] * 3)
    layer = viewer.add_image(stack, name="stack")
    s, cor = w.session, w.session.corrections
    qtbot.waitUntil(lambda: s.image_layer is layer and s.embedding is not None
                    and not w.busy, timeout=TIMEOUT)
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint16), name="mine")
    labels.data[:, _disc("F")] = 8  # a 3D object
    s.set_labels_layer(labels)
    s.take_clicks()
    s.add_point(layer.data_to_world((0, 5, 5)))
    s.points_layer.selected_data = {0}
    cor.delete()  # not in the edit mode: napari's Delete (the selected point)
    assert len(s.points_layer.data) == 0 and (labels.data == 8).any()

    cor.start()
    (r, c), _, _ = DISCS["F"]
    z = s.lead[0]  # the slice shown (napari opens a stack on its middle slice)
    assert cor.select_at(layer.data_to_world((z, r, c))) == 8
    cor.resegment()
    assert cor.mode == "resegment"
    w.clear_prompts()  # Esc
    assert cor.mode == "select" and cor.selected == [8]
    w.clear_prompts()
    assert cor.selected == []
    cor.select_at(layer.data_to_world((z, r, c)))
    cor.delete()
    others = [i for i in range(3) if i != z]
    assert not (labels.data[z] == 8).any() and (labels.data[others] == 8).sum() == 2 * \
        _disc("F").sum()  # the other slices keep the 3D object's pixels
    w.undo()
    cor.select_at(layer.data_to_world((z, r, c)))
    viewer.dims.set_point(0, others[0])
    qtbot.waitUntil(lambda: s.lead == (others[0],) and not w.busy, timeout=TIMEOUT)
    assert "Edit mode: click an object" in w.status
    assert cor.selected == [] and cor.delete() == 0 and (labels.data[z] == 8).any()


def test_a_split_replays_as_it_was_made(viewer, test_model, qtbot, tmp_path, capsys):
    """A split whose preview reaches over the background and a neighbour: live, only the
    object's pixels take the new id; 'napari-edgesam replay' of the saved log gives the
    same labels, pixel for pixel."""
    import tifffile
    from conftest import TEST_DECODER, TEST_ENCODER

    from napari_edgesam.cli.main import main
    from napari_edgesam.widget.prompt_record import save_labels_and_log

    img = np.full((120, 400), 20, np.uint8)
    img[40:80, 20:380] = 200  # one bright bar: two objects boxed on it, a gap between
    w = make_widget(viewer, test_model, prefetch=False)
    layer = viewer.add_image(img, name="bar")
    s, cor = w.session, w.session.corrections
    qtbot.waitUntil(lambda: s.image_layer is layer and s.embedding is not None
                    and not w.busy, timeout=TIMEOUT)

    def preview():
        qtbot.waitUntil(lambda: not w.busy and s.preview_mask is not None, timeout=TIMEOUT)
        return np.asarray(s.preview_mask, bool).copy()

    for c0, c1, label in ((20, 300, 1), (306, 380, 2)):
        s.set_box(layer.data_to_world((34, c0)), layer.data_to_world((86, c1)))
        preview()
        assert w.commit() == label
    labels = s.labels_layer
    before = np.asarray(labels.data).copy()
    assert (before[60, 303] == 0) and before[60, 40] == 1 and before[60, 340] == 2

    cor.start()
    cor.select_at(layer.data_to_world((60, 40)))
    cor.split()
    s.add_point(layer.data_to_world((60, 290)))  # the right end of 1, near the gap and 2
    part = preview()
    assert (part & (before == 0)).any() and (part & (before == 2)).any()  # it leaks
    assert (before == 1).sum() > (part & (before == 1)).sum() > 0  # a part of 1
    assert w.commit() == 3
    np.testing.assert_array_equal(labels.data == 3, part & (before == 1))
    np.testing.assert_array_equal(labels.data == 2, before == 2)

    tifffile.imwrite(tmp_path / "bar.tif", img)
    saved, log_path = save_labels_and_log(tmp_path / "bar_labels.tif",
                                          np.asarray(labels.data), s.prompt_log())
    out = tmp_path / "again.tif"
    assert main(["replay", str(log_path), str(tmp_path / "bar.tif"), "-o", str(out),
                 "--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]) == 0
    assert "min IoU 1.000 over 3 object(s)" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out), labels.data)
