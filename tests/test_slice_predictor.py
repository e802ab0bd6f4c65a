"""engine.slice_predictor: whole-slice embeddings and tiles answer prompts through one
interface, with the mask as a crop of the slice."""

from __future__ import annotations

import numpy as np
from conftest import disc_image, iou

from napari_edgesam.engine.slice_predictor import EmbeddedSlice, SlicePredictor
from napari_edgesam.engine.tiling import TiledPredictor


def test_whole_slice_and_tiles_answer_through_one_interface(predictor):
    img, truth = disc_image((700, 900), (300, 420), 40)
    whole = EmbeddedSlice(predictor, predictor.embed(img))
    tiles = TiledPredictor(predictor, img, None, tile_size=400, halo=64)
    for sp, tiled in ((whole, False), (tiles, True)):
        assert isinstance(sp, SlicePredictor) and sp.tiled is tiled
        r = sp.predict_slice(points=[(420, 300)], labels=[1])
        full = np.asarray(r.mask)  # the crop placed in the slice
        assert full.shape == img.shape and r.area == full.sum() > 0
        assert iou(full, truth) > 0.85
        assert (r.window is None) is (not tiled)
    # the whole-slice answer is exactly the Predictor's
    want = predictor.predict(points=[(420, 300)], labels=[1], embedding=whole.embedding).mask
    np.testing.assert_array_equal(np.asarray(whole.predict_slice(points=[(420, 300)],
                                                                 labels=[1]).mask), want)
