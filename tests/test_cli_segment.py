"""``napari-edgesam segment``: outputs, axes handling and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER, disc_image, iou

from napari_edgesam.cli.main import main

MODEL = ["--encoder", str(TEST_ENCODER), "--decoder", str(TEST_DECODER)]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_2d(tmp_path, capsys):
    img, truth = disc_image((300, 500), (90, 330), 40)
    tifffile.imwrite(tmp_path / "in.tif", img)
    out = tmp_path / "mask.tif"
    code, stdout, err = run(["segment", tmp_path / "in.tif", "--point", "330,90", "-o", out,
                             *MODEL], capsys)
    assert code == 0, err
    mask = tifffile.imread(out)
    assert mask.shape == (300, 500) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert iou(mask, truth) >= 0.9
    assert "pixels" in stdout


def test_segment_slice_of_zyx_stack(tmp_path, capsys):
    stack = np.zeros((5, 200, 260), np.uint16)
    truths = []
    for z in range(5):
        img, t = disc_image((200, 260), (60 + 20 * z, 100), 25, value=3000, background=200,
                            dtype=np.uint16)
        stack[z], _ = img, truths.append(t)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "m.tif"
    code, _, err = run(["segment", tmp_path / "stack.tif", "--slice", 3, "-p", "100,120",
                        "-o", out, *MODEL], capsys)
    assert code == 0, err
    assert iou(tifffile.imread(out), truths[3]) >= 0.9


def test_stack_without_slice_is_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 50, 50), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    code, _, err = run(["segment", tmp_path / "s.tif", "-p", "10,10", "-o", tmp_path / "o.tif",
                        *MODEL], capsys)
    assert code == 2
    assert "--slice" in err and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()


def test_rgb_tiff_and_channel_choice(tmp_path, capsys):
    img, truth = disc_image((200, 300), (100, 200), 30)
    rgb = np.stack([img, np.zeros_like(img), np.zeros_like(img)], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    code, _, err = run(["segment", tmp_path / "rgb.tif", "-p", "200,100", "-o", tmp_path / "a.tif",
                        *MODEL], capsys)
    assert code == 0, err
    assert iou(tifffile.imread(tmp_path / "a.tif"), truth) >= 0.9
    # Channel 1 is empty: the object is not there.
    code, _, err = run(["segment", tmp_path / "rgb.tif", "--channel", "1", "-p", "200,100",
                        "-o", tmp_path / "b.tif", *MODEL], capsys)
    assert code == 0, err
    assert iou(tifffile.imread(tmp_path / "b.tif"), truth) < 0.5


def test_multichannel_needs_channel(tmp_path, capsys):
    data = np.zeros((2, 60, 70), np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", data, imagej=True, metadata={"axes": "CYX"})
    code, _, err = run(["segment", tmp_path / "c.tif", "-p", "5,5", "-o", tmp_path / "o.tif",
                        *MODEL], capsys)
    assert code == 2 and "--channel" in err


def test_box_and_negative_point(tmp_path, capsys):
    img, truth = disc_image((300, 300), (150, 150), 60)
    tifffile.imwrite(tmp_path / "in.tif", img)
    code, _, err = run(["segment", tmp_path / "in.tif", "--box", "80,80,220,220",
                        "-o", tmp_path / "box.tif", *MODEL], capsys)
    assert code == 0, err
    assert iou(tifffile.imread(tmp_path / "box.tif"), truth) >= 0.9
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "150,150", "-p", "200,150,0",
                        "-o", tmp_path / "neg.tif", *MODEL], capsys)
    assert code == 0, err
    neg = tifffile.imread(tmp_path / "neg.tif")
    assert neg[150, 200] == 0 and neg[150, 120] == 1


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-p", "999,5"], "outside"),
        (["--box", "40,40,10,10"], "x1 < x0"),
        ([], "no prompt"),
        (["-p", "1,2,7"], "LABEL must be"),
        (["-p", "abc"], "expected X,Y"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, capsys, extra, message):
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((50, 60), np.uint8))
    with pytest.raises(SystemExit) if message in ("LABEL must be", "expected X,Y") else _null():
        code, _, err = run(["segment", tmp_path / "in.tif", *extra, "-o", tmp_path / "o.tif",
                            *MODEL], capsys)
        assert code == 2 and message in err
    assert not (tmp_path / "o.tif").exists()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_refuses_to_overwrite(tmp_path, capsys):
    img, _ = disc_image((100, 100), (50, 50), 20)
    tifffile.imwrite(tmp_path / "in.tif", img)
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "50,50", "-o", out, *MODEL], capsys)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "50,50", "-o", out, "--overwrite",
                        *MODEL], capsys)
    assert code == 0, err
    assert tifffile.imread(out).sum() > 0
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_missing_and_corrupt_model_exit_3(tmp_path, capsys):
    img, _ = disc_image((100, 100), (50, 50), 20)
    tifffile.imwrite(tmp_path / "in.tif", img)
    bad = tmp_path / "enc.onnx"
    bad.write_bytes(TEST_ENCODER.read_bytes()[:100])
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "50,50", "-o", tmp_path / "o.tif",
                        "--encoder", bad, "--decoder", TEST_DECODER], capsys)
    assert code == 3 and "not a loadable ONNX model" in err
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "50,50", "-o", tmp_path / "o.tif",
                        "--encoder", TEST_DECODER, "--decoder", TEST_DECODER], capsys)
    assert code == 3 and "swap" in err
    # A published model that is not on this machine (empty cache, no download asked).
    code, _, err = run(["segment", tmp_path / "in.tif", "-p", "50,50", "-o", tmp_path / "o.tif",
                        "--model", "edgesam-3x"], capsys)
    assert code == 3 and "NAPARI_EDGESAM_MODEL_DIR" in err


def test_unreadable_input_exit_2(tmp_path, capsys):
    (tmp_path / "x.tif").write_bytes(b"not a tiff at all")
    code, _, err = run(["segment", tmp_path / "x.tif", "-p", "1,1", "-o", tmp_path / "o.tif",
                        *MODEL], capsys)
    assert code == 2 and "cannot read" in err
    code, _, err = run(["segment", tmp_path / "missing.tif", "-p", "1,1", "-o",
                        tmp_path / "o.tif", *MODEL], capsys)
    assert code == 2 and "not found" in err


def test_installed_entry_point_no_traceback(tmp_path):
    """The console script exists, exits 2 on bad input, prints one line, no traceback."""
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((4, 50, 50), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    exe = os.path.join(os.path.dirname(sys.executable), "napari-edgesam")
    proc = subprocess.run([exe, "segment", str(tmp_path / "in.tif"), "-p", "1,1", "-o",
                           str(tmp_path / "o.tif"), *MODEL], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_tiled_segment_of_a_large_image(tmp_path, capsys):
    """Above 2048 px the CLI tiles: a 20 px object in a 3000 px image is found."""
    img = np.full((3000, 2600), 30, np.uint8)
    y, x = np.ogrid[:3000, :2600]
    truth = (y - 2100) ** 2 + (x - 700) ** 2 <= 24**2
    img[truth] = 90
    tifffile.imwrite(tmp_path / "big.tif", img)
    code, out, err = run(["segment", tmp_path / "big.tif", "-p", "700,2100", "--tile-size", 512,
                          "-o", tmp_path / "m.tif", *MODEL], capsys)
    assert code == 0, err
    assert "window(s) encoded" in out
    assert iou(tifffile.imread(tmp_path / "m.tif"), truth) >= 0.8
    code, out, err = run(["segment", tmp_path / "big.tif", "-p", "700,2100", "--tiles", "off",
                          "-o", tmp_path / "m2.tif", *MODEL], capsys)
    assert code == 0 and "window(s) encoded" not in out


def test_output_has_normal_permissions(tmp_path, capsys):
    import stat

    img, _ = disc_image((60, 60), (30, 30), 10)
    tifffile.imwrite(tmp_path / "in.tif", img)
    old = os.umask(0o022)
    try:
        code, _, err = run(["segment", tmp_path / "in.tif", "-p", "30,30", "-o",
                            tmp_path / "o.tif", *MODEL], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "o.tif").stat().st_mode) == 0o644


def _sparse_tiff(path, side: int, centre: tuple[int, int], radius: int, tile: int = 256):
    """A ``side`` x ``side`` uint8 tiled zlib TIFF, background 30 and one disc of 90, written
    tile by tile (a few hundred KiB on disk). Returns the disc's bounding box and mask."""
    cy, cx = centre
    box = (cy - radius, cx - radius, cy + radius + 1, cx + radius + 1)
    yy, xx = np.ogrid[box[0]:box[2], box[1]:box[3]]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    flat = np.full((tile, tile), 30, np.uint8)

    def tiles():
        for r in range(0, side, tile):
            for c in range(0, side, tile):
                if r >= box[2] or r + tile <= box[0] or c >= box[3] or c + tile <= box[1]:
                    yield flat
                    continue
                t = flat.copy()
                rows, cols = np.ogrid[r:r + tile, c:c + tile]
                t[((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2)] = 90
                yield t

    tifffile.imwrite(path, tiles(), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib")
    return box, disc


@pytest.mark.slow
def test_segment_of_a_huge_tiled_tiff_stays_within_the_tiles_it_touches(tmp_path, capsys):
    """Issue 16, point 8: a 20000 x 20000 compressed tiled TIFF (400 MB of pixels) is
    segmented with a peak of Python/numpy allocations far below one copy of the image: the
    input is read window by window and the mask written tile by tile into a tiled TIFF."""
    import tracemalloc

    side = 20000
    box, disc = _sparse_tiff(tmp_path / "huge.tif", side, (12345, 7000), 40)
    assert (tmp_path / "huge.tif").stat().st_size < 5 * 2**20
    out = tmp_path / "mask.tif"
    tracemalloc.start()
    try:
        code, stdout, err = run(["segment", tmp_path / "huge.tif", "-p", "7000,12345",
                                 "-o", out, *MODEL], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    # One copy of the image is 381 MiB, and reading it whole with a full-size mask peaked at
    # 807 MiB; window by window it is about 75 MiB (imports, one 1024 px tile through the
    # model, a 2048 px read chunk).
    assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert "window(s) encoded" in stdout
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape == (side, side) and page.dtype == np.uint8
        assert page.is_tiled and page.compression == 8  # zlib (ADOBE_DEFLATE)
        mask = page.asarray()
    r0, c0, r1, c1 = box
    assert iou(mask[r0:r1, c0:c1], disc) >= 0.9
    n = int(np.count_nonzero(mask))
    assert n == int(np.count_nonzero(mask[r0:r1, c0:c1]))  # nothing outside the object
    assert f"{n} pixels" in stdout
