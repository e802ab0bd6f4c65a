"""The one commit path (widget/commit.py) on a bare napari Labels layer: one commit is one
undo step, "paint only on background" keeps other labels, a re-propagated object's old
pixels are erased, and the undo/redo adapter reads napari's private history queues (this
test fails if napari renames or changes them)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _target(viewer):
    from napari_edgesam.widget.commit import LabelsTarget

    return LabelsTarget(viewer, start_worker=None)


def test_one_commit_is_one_undo_step_and_the_history_adapter_follows(viewer):
    from napari_edgesam.widget.commit import SliceEdit, can_redo, can_undo

    layer = viewer.add_labels(np.zeros((3, 20, 30), np.uint16))
    layer.data[1, 2:4, 2:4] = 7  # an existing object
    target = _target(viewer)
    target.set_layer(layer)
    assert not can_undo(layer) and not can_redo(layer)
    # napari's queues, which can_undo/can_redo read: pinned here
    assert hasattr(layer, "_undo_history") and hasattr(layer, "_redo_history")

    crop = np.ones((4, 5), bool)
    edits = [SliceEdit((0,), paint=(crop, (1, 1))), SliceEdit((1,), paint=(crop, (1, 1)))]
    painted, erased = target.write(layer, 9, edits, background_only=True)
    assert (painted, erased) == (20 + 20 - 4, 0)  # the 2x2 of label 7 on slice 1 kept
    assert (layer.data[1, 2:4, 2:4] == 7).all()
    assert (layer.data[0, 1:5, 1:6] == 9).all() and layer.data[2].max() == 0
    assert layer.selected_label == 9
    assert can_undo(layer) and not can_redo(layer)

    assert target.undo()
    assert layer.data.max() == 7 and (layer.data == 7).sum() == 4  # both slices reverted
    assert not can_undo(layer) and can_redo(layer)
    assert target.redo()
    assert (layer.data == 9).sum() == painted
    assert not target.redo()


def test_erase_clears_the_old_pixels_of_a_replaced_object(viewer):
    from napari_edgesam.widget.commit import SliceEdit

    layer = viewer.add_labels(np.zeros((1, 10, 10), np.uint8))
    layer.data[0, 0:6, 0:6] = 3
    target = _target(viewer)
    new = np.zeros((6, 6), bool)
    new[2:6, 2:6] = True
    painted, erased = target.write(
        layer, 3, [SliceEdit((0,), paint=(new, (0, 0)), erase=(np.ones((6, 6), bool), (0, 0)))],
        background_only=True)
    assert erased == 36 - 16 and painted == 0  # the kept pixels already had label 3
    np.testing.assert_array_equal(layer.data[0, :6, :6] == 3, new)


def test_a_label_id_beyond_the_dtype_is_refused(viewer):
    from napari_edgesam.widget.commit import SliceEdit

    layer = viewer.add_labels(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="no free label id"):
        _target(viewer).write(layer, 300, [SliceEdit((), paint=(np.ones((2, 2), bool), (0, 0)))],
                              background_only=True)
    assert not layer.data.any()
