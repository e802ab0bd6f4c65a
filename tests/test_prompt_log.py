"""The prompt log (workflows.prompt_log) and ``napari-edgesam replay``: every committed
object's prompts saved as JSON and replayed into the same labels. Test double (not EdgeSAM).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER

from napari_edgesam.cli.main import main
from napari_edgesam.engine import InvalidInputError, Predictor
from napari_edgesam.workflows.prompt_log import (
    LoggedObject,
    ModelRecord,
    PromptLog,
    agreement,
    labels_for_log,
    log_path_for,
    replay,
)

MODEL = ["--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]
IDENTITY = {"low": (0.0,), "high": (255.0,)}


def _stack():
    """(3, 120, 160) uint8: background 20, on slice 1 a disc of 200 at (row 40, col 50) and
    a square of 120 at rows 70-99, cols 100-139; on slice 2 the disc only."""
    data = np.full((3, 120, 160), 20, np.uint8)
    yy, xx = np.ogrid[:120, :160]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 15**2
    data[1][disc] = 200
    data[2][disc] = 200
    data[1, 70:100, 100:140] = 120
    return data, disc


def _log(model) -> PromptLog:
    objs = [LoggedObject(1, (1,), points=((50.0, 40.0),), point_labels=(1,), **IDENTITY),
            LoggedObject(2, (1,), box=(98.0, 68.0, 141.0, 101.0), **IDENTITY),
            LoggedObject(3, (2,), points=((50.0, 40.0), (5.0, 5.0)), point_labels=(1, 0),
                         **IDENTITY)]
    return PromptLog(model=ModelRecord.of(model),
                     image={"name": "stack", "shape": [3, 120, 160], "dtype": "uint8"},
                     objects=objs)


def test_replay_paints_each_object_with_its_id_where_its_prompts_say(test_model):
    data, disc = _stack()
    labels, objs = replay(_log(test_model), data, Predictor(test_model, cache=None))
    assert labels.shape == (3, 120, 160) and labels.dtype == np.uint8
    assert not labels[0].any()
    d1 = labels[1] == 1
    assert (d1 & disc).sum() / (d1 | disc).sum() >= 0.9
    sq = np.zeros((120, 160), bool)
    sq[70:100, 100:140] = True
    assert ((labels[1] == 2) & sq).sum() / ((labels[1] == 2) | sq).sum() >= 0.9
    assert ((labels[2] == 3) & disc).sum() / ((labels[2] == 3) | disc).sum() >= 0.9
    assert [(o.label, o.key) for o in objs] == [(1, (1,)), (2, (1,)), (3, (2,))]
    assert all(o.painted == o.area > 0 for o in objs)


def test_background_only_keeps_earlier_objects_and_overwrite_replaces_them(test_model):
    data, disc = _stack()
    pred = Predictor(test_model, cache=None)
    first = LoggedObject(1, (1,), points=((50.0, 40.0),), point_labels=(1,), **IDENTITY)
    over = LoggedObject(2, (1,), box=(30.0, 20.0, 70.0, 60.0), **IDENTITY)  # the same disc
    kept, objs = replay(PromptLog(objects=[first, over]), data, pred)
    assert (kept[1][disc] == 1).mean() > 0.95 and objs[1].painted < objs[1].area
    over_all = LoggedObject(2, (1,), box=(30.0, 20.0, 70.0, 60.0), background_only=False,
                            **IDENTITY)
    replaced, _ = replay(PromptLog(objects=[first, over_all]), data, pred)
    assert (replaced[1][disc] == 2).mean() > 0.9


def test_the_log_round_trips_through_json_and_refuses_what_it_is_not(tmp_path, test_model):
    log = _log(test_model)
    path = log.save(tmp_path / "cells.prompts.json")
    again = PromptLog.load(path)
    assert again == log
    assert json.loads(path.read_text())["format"] == "napari-edgesam prompt log"
    bad = tmp_path / "bad.json"
    for content, message in [("{", "cannot read"), ('{"format": "x"}', "not a napari-edgesam"),
                             ('{"format": "napari-edgesam prompt log", "version": 99}',
                              "version 99"),
                             ('{"format": "napari-edgesam prompt log", "version": 1, '
                              '"objects": [{"label": 1}]}', "malformed")]:
        bad.write_text(content)
        with pytest.raises(InvalidInputError, match=message):
            PromptLog.load(bad)
    with pytest.raises(InvalidInputError, match="no prompt"):
        LoggedObject(1, (0,), **IDENTITY)


def test_a_split_entry_is_replayed_on_the_object_it_came_from_only(tmp_path, test_model):
    """``within`` (a split's parent id) survives JSON, is absent from older logs, and
    restricts the split's new id to the parent's pixels replayed so far; a parent that is
    not there leaves other objects alone (background only)."""
    data, disc = _stack()
    pred = Predictor(test_model, cache=None)
    parent = LoggedObject(1, (1,), points=((50.0, 40.0),), point_labels=(1,), **IDENTITY)
    square = LoggedObject(2, (1,), box=(98.0, 68.0, 141.0, 101.0), **IDENTITY)
    # the split's box covers the disc and the square: its mask is both
    split = LoggedObject(3, (1,), box=(30.0, 20.0, 150.0, 110.0), background_only=False,
                         within=1, **IDENTITY)
    log = PromptLog(objects=[parent, square, split])
    again = PromptLog.load(log.save(tmp_path / "s.prompts.json"))
    assert again == log and again.objects[2].within == 1
    saved = json.loads((tmp_path / "s.prompts.json").read_text())["objects"]
    assert "within" not in saved[0] and saved[2]["within"] == 1
    older = {k: v for k, v in split.to_dict().items() if k != "within"}
    assert LoggedObject.from_dict(older).within is None
    with pytest.raises(InvalidInputError, match="within"):
        LoggedObject(3, (1,), box=(0.0, 0.0, 5.0, 5.0), within=0, **IDENTITY)

    plain, _ = replay(PromptLog(objects=[parent, square]), data, pred)
    labels, objs = replay(log, data, pred)
    mask = replay(PromptLog(objects=[split]), data, pred)[0][1] == 3
    assert (mask & (plain[1] == 2)).any() and (mask & (plain[1] == 1)).any()
    want = plain.copy()
    want[1][mask & (plain[1] == 1)] = 3
    np.testing.assert_array_equal(labels, want)  # the square kept, the disc split
    assert objs[2].painted == int((mask & (plain[1] == 1)).sum()) < objs[2].area
    # the parent not replayed (Segment all's, deleted): background only
    gone, _ = replay(PromptLog(objects=[square, split]), data, pred)
    np.testing.assert_array_equal(gone[1] == 2, plain[1] == 2)
    np.testing.assert_array_equal(gone[1] == 3, mask & (plain[1] != 2))


def test_the_log_lives_beside_its_labels(tmp_path):
    assert log_path_for(tmp_path / "cells.tif") == tmp_path / "cells.prompts.json"
    assert labels_for_log(tmp_path / "cells.prompts.json") is None
    (tmp_path / "cells.tif").write_bytes(b"")
    assert labels_for_log(tmp_path / "cells.prompts.json") == tmp_path / "cells.tif"


def test_agreement_is_one_per_object_for_identical_labels(test_model):
    data, _ = _stack()
    labels, objs = replay(_log(test_model), data, Predictor(test_model, cache=None))
    rows = agreement(labels, labels.copy(), objs)
    assert [r["iou"] for r in rows] == [1.0, 1.0, 1.0]
    shifted = np.roll(labels, 5, axis=2)
    assert all(r["iou"] < 1.0 for r in agreement(labels, shifted, objs))


def test_cli_replay_gives_identical_labels_with_the_logs_model(tmp_path, test_model, capsys):
    """The journey of a log: saved beside its labels; 'replay' re-creates the same pixels
    with the same model, and says so; with another model it prints the agreement table."""
    data, _ = _stack()
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack",
                     metadata={"axes": "ZYX"})
    log = _log(test_model)
    labels, _ = replay(log, data, Predictor(test_model, cache=None))
    tifffile.imwrite(tmp_path / "cells.tif", labels, photometric="minisblack")
    log.save(tmp_path / "cells.prompts.json")
    out = tmp_path / "again.tif"
    code = main(["replay", str(tmp_path / "cells.prompts.json"), str(tmp_path / "stack.tif"),
                 "-o", str(out), *MODEL])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(out), labels)
    with tifffile.TiffFile(out) as tif:  # a label volume, never taken for an RGB image
        assert tif.series[0].axes == "ZYX" and tif.pages[0].photometric == 1
    assert "the log's model exactly" in stdout
    assert "min IoU 1.000 over 3 object(s)" in stdout
    # another thread count is another model as far as exactness goes: it is said
    code = main(["replay", str(tmp_path / "cells.prompts.json"), str(tmp_path / "stack.tif"),
                 "-o", str(tmp_path / "t1.tif"), "--threads", "1", *MODEL])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "another model than the log's: threads" in stdout
    # inputs are never overwritten, shapes must match
    assert main(["replay", str(tmp_path / "cells.prompts.json"), str(tmp_path / "stack.tif"),
                 "-o", str(tmp_path / "stack.tif"), "--overwrite", *MODEL]) == 2
    tifffile.imwrite(tmp_path / "other.tif", data[:2])
    assert main(["replay", str(tmp_path / "cells.prompts.json"), str(tmp_path / "other.tif"),
                 "-o", str(tmp_path / "o.tif"), *MODEL]) == 2
    assert "the log was made on an image of shape" in capsys.readouterr().err


def test_a_channel_axis_is_left_out_of_the_labels(test_model):
    """A (C, Y, X) image with the panel on channel 1: the log's keys hold the channel, the
    replayed labels are (Y, X)."""
    data, disc = _stack()
    two = np.stack([data[0], data[1]])  # channel 0 empty, channel 1 has the disc
    log = PromptLog(objects=[LoggedObject(1, (1,), points=((50.0, 40.0),), point_labels=(1,),
                                          **IDENTITY)],
                    image={"shape": [2, 120, 160], "channel_axis": 0})
    labels, objs = replay(log, two, Predictor(test_model, cache=None))
    assert labels.shape == (120, 160) and objs[0].key == ()
    got = labels == 1
    assert (got & disc).sum() / (got | disc).sum() >= 0.9
    assert agreement(labels, labels.copy(), objs)[0]["iou"] == 1.0


def test_dotted_names_get_their_own_log(tmp_path):
    assert log_path_for(tmp_path / "img.01_labels.tif").name == "img.01_labels.prompts.json"
    assert log_path_for(tmp_path / "img.02_labels.tif") != \
        log_path_for(tmp_path / "img.01_labels.tif")
    assert log_path_for(tmp_path / "a.ome.tif").name == "a.prompts.json"


def test_the_model_record_lists_the_variants_that_shape_a_click(test_model):
    """The prompt-batched decoder runs batch work only: a log made with it among the
    optimised model's variants records (and replays as) the click variants alone."""
    import types

    model = types.SimpleNamespace(
        name="opt", encoder_path=test_model.encoder_path, decoder_path=test_model.decoder_path,
        num_threads=1, source=test_model,
        variants={"decoder-int8": object(), "decoder-batch": object()})
    record = ModelRecord.of(model)
    assert record.variants == ("decoder-int8",)
    assert record.name == test_model.name
