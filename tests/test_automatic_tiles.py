"""Automatic segmentation of a large image on tiles: small objects found, one id each,
also for objects on tile borders (test double, not EdgeSAM; see tests/test_tiling.py for why
the tiles are 400 px)."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from conftest import TEST_DECODER, TEST_ENCODER, iou
from scipy import ndimage as ndi

from napari_edgesam.cli.main import main
from napari_edgesam.engine import Predictor
from napari_edgesam.engine.tiling import TileGrid
from napari_edgesam.workflows.automatic import AutoParams, segment_slice

TILE = 400


def _scene(shape=(2600, 2600), n=24, seed=3):
    rng = np.random.default_rng(seed)
    grid = TileGrid(shape, TILE, 50)
    seams = np.array(sorted(set(grid.col_starts[1:] + [c + TILE for c in grid.col_starts[:-1]])))
    img = np.full(shape, 30, np.float32)
    truth = np.zeros(shape, np.int32)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    cells = [(r, c) for r in range(9) for c in range(9)]
    rng.shuffle(cells)
    for i, (r, c) in enumerate(cells[:n]):
        rad = rng.uniform(9, 15)
        cy, cx = 150 + 290 * r + rng.uniform(-20, 20), 150 + 290 * c + rng.uniform(-20, 20)
        if i < 8:  # straddling a tile edge
            cx = seams[np.argmin(np.abs(seams - cx))] + rng.uniform(-3, 3)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad
        img[disc] = 90
        truth[disc] = i + 1
    return ndi.gaussian_filter(img, 0.7).round().astype(np.uint8), truth


def _match(labels, truth):
    ious = []
    for t in range(1, truth.max() + 1):
        obj = truth == t
        ids, counts = np.unique(labels[obj], return_counts=True)
        best = ids[np.argmax(counts)]
        ious.append(iou(labels == best, obj) if best else 0.0)
    return np.array(ious)


def test_tiled_automatic_one_id_per_object(test_model):
    img, truth = _scene()
    params = AutoParams(object_size=24, tiles="on", tile_size=TILE)
    res = segment_slice(Predictor(test_model, cache=None), img, params=params)
    n = int(res.labels.max())
    assert n == truth.max(), (n, truth.max())
    ious = _match(res.labels, truth)
    assert ious.min() >= 0.8, np.round(ious, 2)
    # Each object one id: no two labels inside one true object.
    for t in range(1, truth.max() + 1):
        ids = np.unique(res.labels[truth == t])
        assert len(ids[ids > 0]) == 1


def test_batch_cli_with_tiles(tmp_path, capsys):
    img, truth = _scene((2200, 2300), n=12, seed=5)
    tifffile.imwrite(tmp_path / "big.tif", img)
    code = main(["batch", str(tmp_path / "big.tif"), "--out", str(tmp_path / "out"),
                 "--object-size", "24", "--tiles", "on", "--tile-size", str(TILE),
                 "--scheduler", "synchronous", "--encoder", str(TEST_ENCODER),
                 "--decoder", str(TEST_DECODER), "-q"])
    assert code == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "out" / "big_labels.tif")
    assert labels.max() == truth.max()
    assert _match(labels, truth).min() >= 0.8
    side = json.loads((tmp_path / "out" / "big_labels.json").read_text())
    assert "on" in json.dumps(side)
