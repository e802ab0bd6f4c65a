"""``napari-edgesam optimize`` and ``--optimized``: variants made from the model files,
checked on the user's images, then used by segment (test double, not EdgeSAM)."""

from __future__ import annotations


import numpy as np
import pytest
import tifffile
from conftest import disc_image, iou

from napari_edgesam.cli.main import main

import onnx  # noqa: F401  (the testing extra: missing fails, never skips)


@pytest.fixture
def model_files(model_dir):
    return ["--encoder", str(model_dir / "enc.onnx"), "--decoder", str(model_dir / "dec.onnx")]


def test_optimize_then_segment_with_the_variant(tmp_path, capsys, model_files):
    img, truth = disc_image((300, 400), (120, 250), 40)
    stack = np.stack([img, np.roll(img, 30, axis=1), img])
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    code = main(["optimize", str(tmp_path / "stack.tif"), "--variants", "decoder-fast",
                 *model_files])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "decoder-fast: enabled" in out and "IoU" in out
    assert "[" in err  # progress lines
    # The variant is remembered: segment --optimized uses it and gives the same mask.
    tifffile.imwrite(tmp_path / "in.tif", img)
    code = main(["segment", str(tmp_path / "in.tif"), "-p", "250,120", "-o",
                 str(tmp_path / "a.tif"), "--optimized", *model_files])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "decoder-fast" in err
    code = main(["segment", str(tmp_path / "in.tif"), "-p", "250,120", "-o",
                 str(tmp_path / "b.tif"), *model_files])
    assert code == 0
    a, b = tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif")
    assert iou(a, truth) >= 0.9 and iou(a, b) >= 0.99


def test_optimized_without_variants_uses_the_original(tmp_path, capsys, model_files):
    img, truth = disc_image((200, 200), (100, 100), 30)
    tifffile.imwrite(tmp_path / "in.tif", img)
    code = main(["segment", str(tmp_path / "in.tif"), "-p", "100,100", "-o",
                 str(tmp_path / "a.tif"), "--optimized", *model_files])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "none" in err
    assert iou(tifffile.imread(tmp_path / "a.tif"), truth) >= 0.9


def test_unknown_variant_exit_2(tmp_path, capsys, model_files):
    img, _ = disc_image((100, 100), (50, 50), 20)
    tifffile.imwrite(tmp_path / "in.tif", img)
    code = main(["optimize", str(tmp_path / "in.tif"), "--variants", "turbo", *model_files])
    assert code == 2 and "unknown variant" in capsys.readouterr().err


def test_batch_optimized_runs_the_variant_files(tmp_path, capsys, model_files):
    """Batch workers rebuild the model from paths: with --optimized those are the variant's
    files, named in the sidecar, and the labels agree with the original model's."""
    import json

    img, truth = disc_image((300, 400), (120, 250), 40)
    tifffile.imwrite(tmp_path / "in.tif", img)
    assert main(["optimize", str(tmp_path / "in.tif"), "--variants", "decoder-fast",
                 *model_files]) == 0
    runs = {}
    for name, extra in (("opt", ["--optimized"]), ("orig", [])):
        code = main(["batch", str(tmp_path / "in.tif"), "--out", str(tmp_path / name),
                     "--object-size", "80", "--scheduler", "synchronous", "-q", *extra,
                     *model_files])
        assert code == 0, capsys.readouterr().err
        runs[name] = (tifffile.imread(tmp_path / name / "in_labels.tif"),
                      json.loads((tmp_path / name / "in_labels.json").read_text())["model"])
    (opt, opt_model), (orig, orig_model) = runs["opt"], runs["orig"]
    assert "decoder-fast" in opt_model["name"] and "decoder-fast" not in orig_model["name"]
    assert opt_model["decoder_sha256"] != orig_model["decoder_sha256"]
    assert iou(opt > 0, truth) >= 0.9 and iou(opt > 0, orig > 0) >= 0.99
