"""Command-line arguments a user gets wrong: the input is never overwritten, negative
coordinates are accepted, nonsense numbers are refused, unknown model names and unwritable
outputs are bad input (exit 2) with a one-line reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER, disc_image

from napari_edgesam.cli.main import EXIT_BAD_INPUT, EXIT_OK, main

MODEL = ["--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]


@pytest.fixture
def image(tmp_path):
    img, _ = disc_image((64, 80), (30, 40), 12)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, img)
    return path


@pytest.mark.parametrize("spelling", ["same", "dotted", "link"])
def test_segment_never_overwrites_its_input(image, tmp_path, capsys, spelling):
    before = image.read_bytes()
    if spelling == "same":
        out = image
    elif spelling == "dotted":
        out = image.parent / "." / ".." / image.parent.name / image.name
    else:
        out = tmp_path / "alias.tif"
        os.symlink(image, out)
    code = main(["segment", str(image), "--point", "40,30", "-o", str(out), "--overwrite",
                 *MODEL])
    assert code == EXIT_BAD_INPUT
    assert "is the input image" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_propagate_never_overwrites_its_input(tmp_path, capsys):
    stack = np.stack([disc_image((48, 48), (24, 24), 9)[0]] * 5)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    before = path.read_bytes()
    code = main(["propagate", str(path), "--slice", "2", "--point", "24,24", "-o", str(path),
                 "--overwrite", *MODEL])
    assert code == EXIT_BAD_INPUT and "is the input image" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_batch_refuses_an_output_folder_that_is_an_input_folder(image, tmp_path, capsys):
    link = tmp_path / "same-folder"
    os.symlink(image.parent, link)
    before = sorted(os.listdir(image.parent))
    code = main(["batch", str(image.parent), "--out", str(link), *MODEL])
    assert code == EXIT_BAD_INPUT
    assert "is an input folder" in capsys.readouterr().err
    assert sorted(os.listdir(image.parent)) == before


def test_negative_coordinates_after_a_space(image, tmp_path):
    """Documented as valid: a point or box corner outside the image on the left/top."""
    out = tmp_path / "mask.tif"
    code = main(["segment", str(image), "--point", "40,30", "--point", "-0.5,10,0",
                 "-o", str(out), *MODEL])
    assert code == EXIT_OK
    out2 = tmp_path / "mask2.tif"
    assert main(["segment", str(image), "--box", "-0.5,-0.5,60,55", "-o", str(out2),
                 *MODEL]) == EXIT_OK
    assert tifffile.imread(out2)[30, 40] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--tile-size", "0"], "must be 1 or more"),
    (["--threads", "0"], "must be 1 or more"),
    (["--threads", "-3"], "must be 1 or more"),
])
def test_nonsense_numbers_are_refused(image, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(image), "--point", "40,30", "-o", str(tmp_path / "m.tif"),
              *args, *MODEL])
    assert exc.value.code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()


def test_a_nan_threshold_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["propagate", "x.tif", "--slice", "0", "--point", "1,1", "-o",
              str(tmp_path / "m.tif"), "--min-score", "nan", *MODEL])
    assert exc.value.code == EXIT_BAD_INPUT and "finite" in capsys.readouterr().err


def test_an_unknown_model_name_is_a_bad_argument(image, tmp_path, capsys):
    code = main(["segment", str(image), "--point", "40,30", "-o", str(tmp_path / "m.tif"),
                 "--model", "nosuchmodel"])
    assert code == EXIT_BAD_INPUT  # as 'models fetch nosuchmodel'
    assert "nosuchmodel" in capsys.readouterr().err


def test_an_output_that_is_a_folder_is_bad_input(image, tmp_path, capsys):
    folder = tmp_path / "out.tif"
    folder.mkdir()
    assert main(["segment", str(image), "--point", "40,30", "-o", str(folder),
                 *MODEL]) == EXIT_BAD_INPUT
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("errno_", "text"), [(13, "Permission denied"),
                                              (28, "No space left on device")])
def test_a_read_only_folder_or_a_full_disk_is_bad_input_with_a_reason(
        image, tmp_path, capsys, monkeypatch, errno_, text):
    """What the OS says when the output cannot be written reaches the user in one line,
    exit 2 (not "unexpected error")."""
    import napari_edgesam.workflows.tiff_io as tiff_io

    out = tmp_path / "ro" / "m.tif"

    def refuse(path, *a, **k):
        raise OSError(errno_, text, str(path))

    monkeypatch.setattr(tiff_io, "write_tiff_atomic", refuse)
    code = main(["segment", str(image), "--point", "40,30", "-o", str(out), *MODEL])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unexpected" not in err and text in err and "m.tif" in err


def test_a_bad_setting_is_reported_once_and_its_default_used(image, tmp_path, capsys):
    """settings.json with "cache_disk_bytes": "lots": a warning naming the file and the key,
    the default bound, and the command works (it was 'unexpected error: ValueError')."""
    import json
    import warnings

    from napari_edgesam.engine import paths
    from napari_edgesam.engine.cache import default_cache

    path = paths.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cache_disk_bytes": "lots", "cache_disk_enabled": "no"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = paths.load_settings()
        paths.load_settings()  # reported once per file and key
        cache = default_cache()
    msgs = [str(w.message) for w in caught if issubclass(w.category, paths.SettingsWarning)]
    assert len(msgs) == 2, msgs
    assert any("'cache_disk_bytes'" in m and str(path) in m for m in msgs)
    assert settings["cache_disk_bytes"] == paths.DEFAULT_SETTINGS["cache_disk_bytes"]
    assert settings["cache_disk_enabled"] is True
    assert cache.disk_bytes == paths.DEFAULT_SETTINGS["cache_disk_bytes"]
    assert main(["segment", str(image), "--point", "40,30", "-o", str(tmp_path / "m.tif"),
                 *MODEL]) == EXIT_OK


def test_an_empty_tiff_is_named_empty(tmp_path, capsys):
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, np.zeros((0, 10), np.uint8))
    code = main(["segment", str(path), "--point", "1,1", "-o", str(tmp_path / "m.tif"),
                 *MODEL])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "no pixels" in err and "slices" not in err


def test_a_one_pixel_high_image_is_named_by_its_own_size(tmp_path, capsys):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.zeros((1, 20000), np.uint8))
    code = main(["segment", str(path), "--point", "10,0", "-o", str(tmp_path / "m.tif"),
                 *MODEL])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "1 x 20000" in err and "1024" not in err


def test_values_beyond_float32_are_a_clear_error(tmp_path, capsys):
    img = np.zeros((40, 40), np.float64)
    img[10:20, 10:20] = 1e300
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, img)
    code = main(["segment", str(path), "--point", "15,15", "-o", str(tmp_path / "m.tif"),
                 *MODEL])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "float32 range" in err


def test_a_zero_area_box_is_refused(image, tmp_path, capsys):
    code = main(["segment", str(image), "--box", "10,10,10,40", "-o",
                 str(tmp_path / "m.tif"), *MODEL])
    assert code == EXIT_BAD_INPUT and "zero area" in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()


def test_a_decoder_that_outputs_nan_is_a_model_error(predictor, monkeypatch):
    """Not "0 pixels (score nan)" with exit 0: the model is not usable."""
    from napari_edgesam.engine import ModelError

    img, _ = disc_image((64, 80), (30, 40), 12)
    predictor.set_image(img)
    real = predictor.model.decode

    def nan_decode(*a, **k):
        scores, masks = real(*a, **k)
        return scores, np.full_like(masks, np.nan)

    monkeypatch.setattr(predictor.model, "decode", nan_decode)
    with pytest.raises(ModelError, match="not numbers"):
        predictor.predict(points=[(40, 30)])


def test_an_all_nan_slice_ends_its_chain_and_the_run_goes_on(tmp_path, capsys, caplog):
    """Issue: one all-NaN slice aborted the whole propagation (exit 2, nothing written)."""
    zz, yy, xx = np.ogrid[:14, :56, :64]
    truth = ((zz - 7) / 4.6) ** 2 + ((yy - 28) / 13) ** 2 + ((xx - 30) / 15) ** 2 <= 1
    img = np.full(truth.shape, 100, np.float32)
    img[truth] = 420
    img[9] = np.nan
    path, out = tmp_path / "stack.tif", tmp_path / "obj.tif"
    tifffile.imwrite(path, img)
    with caplog.at_level("WARNING"):
        code = main(["propagate", str(path), "--slice", "7", "--point", "30,28", "-o",
                     str(out), *MODEL])
    assert code == EXIT_OK
    mask = tifffile.imread(out)
    assert mask[7].any() and mask[8].any() and mask[5].any()  # below went on as usual
    assert not mask[9:].any()  # the chain up ended at the unusable slice
    err = capsys.readouterr()
    assert "unusable slice at" in err.out + err.err
    assert any("slice 9" in r.getMessage() and "no finite values" in r.getMessage()
               for r in caplog.records)


def test_a_second_segment_of_the_same_image_runs_the_decoder_only(image, tmp_path,
                                                                   monkeypatch):
    """segment uses the embedding cache: a second prompt on the same image from a script
    costs a decoder run, not the encoder; and its mask equals a fresh run's (the cache
    stores the embedding exactly)."""
    from napari_edgesam.engine.cache import set_default_cache
    from napari_edgesam.engine.session import EdgeSamModel

    calls = []
    real = EdgeSamModel.encode
    monkeypatch.setattr(EdgeSamModel, "encode",
                        lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    out1, out2, out3 = (tmp_path / f"m{i}.tif" for i in (1, 2, 3))
    assert main(["segment", str(image), "--point", "40,30", "-o", str(out1), *MODEL]) == 0
    assert main(["segment", str(image), "--point", "41,31", "-o", str(out2), *MODEL]) == 0
    assert len(calls) == 1
    set_default_cache(None)  # a new process: the disk entry only
    assert main(["segment", str(image), "--point", "40,30", "-o", str(out3), *MODEL]) == 0
    assert len(calls) == 1
    np.testing.assert_array_equal(tifffile.imread(out3), tifffile.imread(out1))
