"""``napari-edgesam propagate``: the 3D mask file, axes handling, limits and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER
from test_propagation import OBJECTS, SHAPE, dice, make_stack, z_extent

from napari_edgesam.cli.main import main

MODEL = ["--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]


def run(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors exit (with code 2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    stack, truths = make_stack()
    folder = tmp_path_factory.mktemp("propagate")
    tifffile.imwrite(folder / "zyx.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    return folder, stack, truths


def test_propagate_writes_the_3d_mask(synth_files, tmp_path, capsys):
    folder, stack, truths = synth_files
    out = tmp_path / "mask.tif"
    (cz, cy, cx), _, _ = OBJECTS[0]
    code, stdout, err = run(["propagate", folder / "zyx.tif", "--slice", cz,
                             "--point", f"{cx},{cy}", "-o", out, "--no-cache", *MODEL], capsys)
    assert code == 0, err
    mask = tifffile.imread(out)
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert dice(mask, truths[0]) >= 0.9
    (t0, t1), (g0, g1) = z_extent(truths[0]), z_extent(mask)
    assert abs(g0 - t0) <= 1 and abs(g1 - t1) <= 1
    # A per-slice table, then the summary line with the stop reasons.
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["z", "status", "score"]
    rows = {int(line.split()[0]): line.split()[1] for line in lines[1:-1]}
    assert rows[cz] == "annotated"
    assert all(rows[z] == "kept" for z in range(g0, g1 + 1) if z != cz)
    assert rows[g0 - 1] == "stopped" and rows[g1 + 1] == "stopped"
    assert "voxels" in lines[-1] and "down:" in lines[-1] and "up:" in lines[-1]
    assert not list(tmp_path.glob("*.partial"))


def test_z_range_box_and_quiet(synth_files, tmp_path, capsys):
    folder, stack, truths = synth_files
    out = tmp_path / "m.tif"
    code, stdout, err = run(["propagate", folder / "zyx.tif", "--slice", 20,
                             "--box", "30,25,70,75", "--z-range", "17,24", "-q",
                             "-o", out, "--no-cache", *MODEL], capsys)
    assert code == 0, err
    mask = tifffile.imread(out)
    assert z_extent(mask) == (17, 24)
    assert dice(mask[17:25], truths[0][17:25]) >= 0.9
    assert len(stdout.strip().splitlines()) == 1 and "z-limit" in stdout


def test_object_cut_by_the_stack_bottom(synth_files, tmp_path, capsys):
    folder, stack, truths = synth_files
    out = tmp_path / "m.tif"
    (cz, cy, cx), _, _ = OBJECTS[1]
    code, stdout, err = run(["propagate", folder / "zyx.tif", "--slice", cz, "-p",
                             f"{cx},{cy},1", "-o", out, "--no-cache", *MODEL], capsys)
    assert code == 0, err
    mask = tifffile.imread(out)
    assert z_extent(mask)[0] == 0 and dice(mask, truths[1]) >= 0.9
    assert "down: stack end" in stdout


def test_channels_and_time_axis(synth_files, tmp_path, capsys):
    folder, stack, truths = synth_files
    sub = stack[12:29]
    # ImageJ hyperstack (Z, C, Y, X) with the object in channel 1.
    zcyx = np.stack([np.zeros_like(sub), sub], axis=1)
    tifffile.imwrite(tmp_path / "zcyx.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    code, _, err = run(["propagate", tmp_path / "zcyx.tif", "--slice", 8, "-p", "50,50",
                        "-o", tmp_path / "a.tif", "--no-cache", *MODEL], capsys)
    assert code == 2 and "--channel" in err
    code, _, err = run(["propagate", tmp_path / "zcyx.tif", "--slice", 8, "-p", "50,50",
                        "--channel", 1, "-o", tmp_path / "a.tif", "--no-cache", *MODEL], capsys)
    assert code == 0, err
    a = tifffile.imread(tmp_path / "a.tif")
    assert a.shape == sub.shape and dice(a, truths[0][12:29]) >= 0.9
    # A 2D+t movie (T, Y, X): the same machinery along time.
    tifffile.imwrite(tmp_path / "tyx.tif", sub, imagej=True, metadata={"axes": "TYX"})
    code, _, err = run(["propagate", tmp_path / "tyx.tif", "--slice", 8, "-p", "50,50",
                        "-o", tmp_path / "t.tif", "--no-cache", *MODEL], capsys)
    assert code == 0, err
    assert np.array_equal(tifffile.imread(tmp_path / "t.tif"), a)


@pytest.mark.parametrize("extra, message", [
    ([], "no prompt"),
    (["-p", "50,50", "--slice", 40], "outside 0..39"),
    (["-p", "500,50", "--slice", 20], "outside"),
    (["-p", "50,50", "--slice", 20, "--z-range", "0,10"], "z-range"),
    (["-p", "50,50", "--slice", 20, "--channel", 0], "no channel axis"),
    (["-p", "50,50", "--slice", 20, "--gap", "1"], "unrecognized"),
])
def test_bad_input_exits_2(synth_files, tmp_path, capsys, extra, message):
    folder, _, _ = synth_files
    out = tmp_path / "o.tif"
    args = ["propagate", folder / "zyx.tif", "-o", out, "--no-cache", *MODEL, *extra]
    if "--slice" not in extra:
        args += ["--slice", 20]
    code, _, err = run(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_refuses_2d_images_and_existing_outputs(synth_files, tmp_path, capsys):
    folder, stack, _ = synth_files
    tifffile.imwrite(tmp_path / "flat.tif", stack[20])
    code, _, err = run(["propagate", tmp_path / "flat.tif", "--slice", 0, "-p", "50,50",
                        "-o", tmp_path / "o.tif", *MODEL], capsys)
    assert code == 2 and "segment" in err
    out = tmp_path / "exists.tif"
    out.write_bytes(b"keep me")
    code, _, err = run(["propagate", folder / "zyx.tif", "--slice", 20, "-p", "50,50",
                        "-o", out, *MODEL], capsys)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"keep me"


def test_missing_model_exits_3(synth_files, tmp_path, capsys):
    folder, _, _ = synth_files
    code, _, err = run(["propagate", folder / "zyx.tif", "--slice", 20, "-p", "50,50",
                        "-o", tmp_path / "o.tif", "--encoder", tmp_path / "nope.onnx",
                        "--decoder", TEST_DECODER], capsys)
    assert code == 3 and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()


def test_second_cli_run_reuses_the_cache(synth_files, tmp_path, capsys):
    folder, _, _ = synth_files
    args = ["propagate", folder / "zyx.tif", "--slice", 30, "-p", "120,38", "-q", *MODEL]
    code, first, err = run([*args, "-o", tmp_path / "a.tif"], capsys)
    assert code == 0, err
    code, second, err = run([*args, "-o", tmp_path / "b.tif"], capsys)
    assert code == 0, err
    assert " 0 slices encoded" in second and " 0 slices encoded" not in first
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))


def test_installed_command(synth_files, tmp_path):
    """The console script from the install runs the subcommand (a fresh process)."""
    folder, _, _ = synth_files
    exe = os.path.join(os.path.dirname(sys.executable), "napari-edgesam")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "napari_edgesam.cli.main"]
    proc = subprocess.run(
        [*cmd, "propagate", str(folder / "zyx.tif"), "--slice", "20", "-p", "50,50", "-q",
         "-o", str(tmp_path / "o.tif"), "--no-cache", *MODEL],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(tmp_path / "o.tif").shape == SHAPE


def test_the_mask_carries_the_inputs_pixel_size(tmp_path, capsys):
    """The 3D mask is written like batch's labels (labels_tiff.write_labels): the input's
    physical pixel size goes with it, so the mask lies over its stack in napari or Fiji."""
    stack, _ = make_stack()
    src = tmp_path / "calibrated.tif"
    tifffile.imwrite(src, stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    out = tmp_path / "mask.tif"
    (cz, cy, cx), _, _ = OBJECTS[0]
    code, _, err = run(["propagate", src, "--slice", cz, "--point", f"{cx},{cy}", "-o", out,
                        "--no-cache", *MODEL], capsys)
    assert code == 0, err
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == SHAPE
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(4.0)  # 0.25 um pixels
        assert 'PhysicalSizeZ="2.0"' in tif.ome_metadata  # the slice spacing
