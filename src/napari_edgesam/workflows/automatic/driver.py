"""The driver of automatic segmentation: one slice (:func:`segment_slice`) or a stack.

Runs the steps of :mod:`napari_edgesam.workflows.automatic` in order: intensity mapping and
foreground (:mod:`.foreground`), seeds (:mod:`.seeds`), one decoder call per seed
(:mod:`.prompting`; many seeds per run with an optimised model's ``decoder-batch``), overlaps
(:mod:`.overlaps`) and, for stacks, 3D linking
(:mod:`.linking`); whole slices through one embedding, large slices tile by tile. Images are
indexed ``(row, col)``; seeds and clicks are ``(x, y) = (col, row)``, in pixels of the slice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...engine.cancel import CancelToken
from ...engine.intensity import IntensityMapping, stack_mapping, validate_image
from ...engine.tiling import TiledPredictor, Window, needs_tiling
from .foreground import _signal, _smooth, foreground_threshold, stack_statistics
from .linking import _row_blocks, link_ids
from .overlaps import Candidate, resolve_overlaps
from .lowres import FullMask, LowResMask, decode_low_res
from .params import AutoParams
from .prompting import _check_cancel, _collect_candidates
from .seeds import _block_signal, _detect, detection_factor, grid_seeds, seed_factor

__all__ = ["SliceSegmentation", "StackSegmentation", "segment_slice", "segment_stack"]

#: Seeds decoded per run by the prompt-batched decoder (``decoder-batch``) when it is there.
PROMPT_BATCH = 16


def _batch_decoder(predictor, batch_decoder):
    """The batched decoder to use: ``batch_decoder`` itself, or for ``"auto"`` the checked
    ``decoder-batch`` variant of an optimised model that carries it (None for the plain
    model or without it: one run per seed)."""
    if not (isinstance(batch_decoder, str) and batch_decoder == "auto"):
        return batch_decoder
    from ...engine.optimize.prompt_batch_runtime import batch_decoder_for

    model = getattr(predictor, "model", None)
    return None if model is None else batch_decoder_for(model)


@dataclass
class SliceSegmentation:
    """Result of :func:`segment_slice`.

    Attributes
    ----------
    labels : ndarray of uint32, shape (H, W)
        0 background, instances 1..n.
    scores : ndarray of float32, shape (n,)
        Stability score of instance ``i + 1``.
    seeds : ndarray of float64, shape (N, 2)
        All seeds tried, ``(x, y) = (col, row)``.
    n_candidates : int
        Masks that passed the per-mask filters (before overlap resolution).
    decoder_calls : int
    seconds : float
    """

    labels: np.ndarray
    scores: np.ndarray
    seeds: np.ndarray
    n_candidates: int
    decoder_calls: int
    seconds: float

    @property
    def n_objects(self) -> int:
        """Number of objects painted (one score each)."""
        return int(self.scores.shape[0])


@dataclass
class StackSegmentation:
    """Result of :func:`segment_stack`.

    Attributes
    ----------
    labels : ndarray (or memmap) of uint32, shape (Z, H, W)
        Ids are consistent across slices (one id per linked 3D object), 1..n_objects.
    n_objects : int
    per_slice : list of int
        Instances found in each slice (before linking).
    mapping : IntensityMapping
    threshold : float
        Foreground threshold used (0..255 scale, of the polarity-adjusted signal).
    decoder_calls : int
    seconds : float
    """

    labels: np.ndarray
    n_objects: int
    per_slice: list
    mapping: IntensityMapping
    threshold: float
    decoder_calls: int
    seconds: float


def _slice_result(candidates, seeds, calls, params: AutoParams, shape, out,
                  t0: float) -> SliceSegmentation:
    """Step 5 (overlaps and painting) and the result of :func:`segment_slice`."""
    labels, scores = resolve_overlaps(candidates, shape, nms_iou=params.nms_iou,
                                      min_kept_fraction=params.min_kept_fraction,
                                      min_area=params.area_limits[0], out=out)
    return SliceSegmentation(labels, scores, seeds, len(candidates), calls,
                             time.perf_counter() - t0)


class _ForegroundCrops:
    """The foreground of a whole slice, computed box by box when a mask asks for it.

    Equal, pixel for pixel, to the slice-wide foreground: the signal block-averaged by
    :func:`detection_factor`, smoothed (:func:`_smooth`), above ``threshold`` and repeated
    back to pixels. A box is computed from its blocks plus a margin wider than the
    Gaussian's reach (the same float operations per value), clamped at the slice's edges
    where the slice-wide filter's ``nearest`` mode and edge padding apply as before.

    Parameters
    ----------
    mapped : ndarray of uint8, shape (H, W) or (H, W, 3)
        The slice after the intensity mapping.
    params : AutoParams
    threshold : float
        On the 0..255 polarity-adjusted scale.
    """

    def __init__(self, mapped: np.ndarray, params: AutoParams, threshold: float):
        self.mapped = mapped
        self.params = params
        self.threshold = threshold
        h, w = mapped.shape[:2]
        self.shape = (h, w)
        self.factor = detection_factor((h, w), params.object_size)
        sigma = max(1.0, params.object_size / self.factor / 8.0)  # as _smooth
        self.margin = int(4.0 * sigma + 0.5) + 2  # scipy's truncate=4 radius, plus slack

    def crop(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        """Foreground (bool) of the half-open box ``[r0, r1) x [c0, c1)`` of the slice."""
        f, m = self.factor, self.margin
        h, w = self.shape
        nb_r, nb_c = -(-h // f), -(-w // f)
        b_r0, b_c0 = max(0, r0 // f - m), max(0, c0 // f - m)
        b_r1, b_c1 = min(nb_r, -(-r1 // f) + m), min(nb_c, -(-c1 // f) + m)
        win = self.mapped[b_r0 * f:min(h, b_r1 * f), b_c0 * f:min(w, b_c1 * f)]
        small = _block_signal(win, f, self.params.polarity)
        fg = _smooth(small, self.params.object_size / f) > self.threshold
        if f > 1:
            fg = np.repeat(np.repeat(fg, f, 0), f, 1)
        return fg[r0 - b_r0 * f:r1 - b_r0 * f, c0 - b_c0 * f:c1 - b_c0 * f]


def segment_slice(predictor, image, *, params: AutoParams | None = None,
                  mapping: IntensityMapping | None = None, threshold: float | None = None,
                  embedding=None, cancel: CancelToken | Callable[[], bool] | None = None,
                  rgb: bool | None = None, out: np.ndarray | None = None,
                  batch_decoder="auto") -> SliceSegmentation:
    """Segment all objects of one 2D slice without clicks.

    Slices larger than :data:`~napari_edgesam.engine.tiling.TILING_THRESHOLD` (or any, with
    ``params.tiles == "on"``) are segmented tile by tile at full resolution: the slice is
    then only ever read window by window (a memory-mapped TIFF, a dask or zarr array may be
    larger than memory) and the labels are painted into ``out`` box by box.

    Parameters
    ----------
    predictor : Predictor
        Its cache is used for the embedding (pass ``cache=None`` to the predictor to skip it).
    image : array-like, shape (H, W) or (H, W, 3|4)
        One slice, ``(row, col)`` order, any real dtype. numpy, memmap, dask or zarr; when
        tiled, read through ``image[r0:r1, c0:c1]`` windows only.
    params : AutoParams, optional
    mapping : IntensityMapping, optional
        The intensity mapping (stack-wide for slices of a stack). Default: identity for
        uint8, else robust percentiles of this slice (strided samples when tiled).
    threshold : float, optional
        Foreground threshold on the 0..255 polarity-adjusted scale (stack-wide for stacks).
        Default: ``params.threshold``, else Otsu's threshold of this slice.
    embedding : Embedding, optional
        Precomputed embedding of this slice (with this mapping; not used when tiled).
    cancel : CancelToken or callable returning bool, optional
        Polled between decoder calls; when it returns True, :class:`CancelledError` is raised.
    rgb : bool, optional
        Force the reading of a last axis of size 3 or 4 (default: colour).
    out : ndarray of uint32, shape (H, W), optional
        Where to write the labels (zeroed first), e.g. a slice of a disk memmap.
    batch_decoder : BatchDecoder, None or "auto"
        Decodes the seeds' clicks :data:`PROMPT_BATCH` per ``session.run`` (whole slices;
        tiles run one per seed). ``"auto"``: the ``decoder-batch`` variant when the
        predictor's model is an optimised model carrying it (the user asked for the
        optimised variants; :func:`~napari_edgesam.engine.optimize.batch_decoder_for`),
        never for the plain model; None: one decoder run per seed. The objects are the
        same within the variant's agreement check (the same graph, batched).

    Returns
    -------
    SliceSegmentation
        ``labels`` is ``out`` when given.
    """
    t0 = time.perf_counter()
    params = params or AutoParams()
    shape = tuple(image.shape)
    tiled = params.tiles == "on" or (params.tiles == "auto" and len(shape) >= 2
                                     and needs_tiling(shape[:2]))
    if tiled:
        return _segment_slice_tiled(predictor, image, params=params, mapping=mapping,
                                    threshold=threshold, cancel=cancel, rgb=rgb, out=out,
                                    t0=t0)
    image, is_rgb = validate_image(image, rgb=rgb)
    if mapping is None:
        mapping = stack_mapping(image, "auto", rgb=is_rgb)
    mapped = mapping.apply(image, expand=False)
    if threshold is None:
        threshold = params.threshold if params.threshold is not None else \
            foreground_threshold(_signal(mapped, params.polarity))
    h, w = mapped.shape[:2]
    if params.seeds == "detect":
        factor = seed_factor((h, w), params.object_size)
        seeds, _, _ = _detect(None, params, threshold, factor=factor, shape=(h, w),
                              small=_block_signal(mapped, factor, params.polarity))
    else:
        seeds = grid_seeds((h, w), params.grid_spacing or params.object_size / 2.0,
                           params.max_seeds)
    foreground = _ForegroundCrops(mapped, params, threshold)
    candidates: list[Candidate] = []
    calls = 0
    if len(seeds):
        _check_cancel(cancel)
        if embedding is None:
            embedding = predictor.embed(image, mapping, rgb=is_rgb)

        def run(points, labels):
            return decode_low_res(predictor, embedding, points, labels)

        run_batch = None
        bd = _batch_decoder(predictor, batch_decoder)
        if bd is not None:
            def run_batch(prompts):
                got = predictor.decode_low_res_batch(
                    embedding, [{"points": p, "labels": lab} for p, lab in prompts],
                    batch_decoder=bd, batch_size=PROMPT_BATCH)
                return [LowResMask(logits[k], embedding.original_size, scores[k])
                        for k, scores, logits, _ in got]

        candidates, calls = _collect_candidates(
            seeds, run, foreground.crop, params, (h, w), cancel, run_batch=run_batch,
            batch_size=PROMPT_BATCH)
    return _slice_result(candidates, seeds, calls, params, (h, w), out, t0)


def _segment_slice_tiled(predictor, image, *, params: AutoParams, mapping, threshold,
                         cancel, rgb, out, t0) -> SliceSegmentation:
    """:func:`segment_slice` on tiles, reading ``image`` one window at a time.

    Pass 1 detects seeds tile by tile: each tile detects in the pixels it owns (see
    :meth:`TileGrid.tile_indices`) plus a margin of two object sizes, so objects on a tile
    border are seen whole and found once. Pass 2 runs the decoder per seed, tile by tile,
    through :class:`TiledPredictor` (which re-centres windows on objects that reach a tile's
    side). The foreground test reads a small window around each mask. Nothing slice-sized is
    allocated except ``out`` (when not given).
    """
    validate_image(np.asarray(image[:2, :2]), rgb=rgb)  # dtype and axes, without a read
    tp = TiledPredictor(predictor, image, mapping, tile_size=params.tile_size, rgb=rgb)
    mapping, is_rgb, grid = tp.mapping, tp.rgb, tp.grid
    h, w = tp.image_shape
    if threshold is None:
        threshold = params.threshold if params.threshold is not None else \
            stack_statistics([image], params=params, mapping=mapping, rgb=is_rgb)[1]

    def signal_of(win: Window) -> np.ndarray:
        return _signal(mapping.apply(tp.read(win), expand=False), params.polarity)

    def clipped(r0, c0, r1, c1) -> Window:
        r0, c0, r1, c1 = max(0, r0), max(0, c0), min(h, r1), min(w, c1)
        return Window(r0, c0, r1 - r0, c1 - c0)

    if params.seeds == "detect":
        margin = int(math.ceil(2 * params.object_size)) + 4
        found = []
        for tile in grid.tiles:
            _check_cancel(cancel)
            own = grid.owned(tile)
            block = clipped(own.row0 - margin, own.col0 - margin, own.row1 + margin,
                            own.col1 + margin)
            seeds, _, _ = _detect(signal_of(block), params, threshold)
            seeds = seeds + [block.col0, block.row0]
            r = np.floor(seeds[:, 1] + 0.5)
            c = np.floor(seeds[:, 0] + 0.5)
            found.append(seeds[(r >= own.row0) & (r < own.row1)
                               & (c >= own.col0) & (c < own.col1)])
        seeds = np.concatenate(found) if found else np.zeros((0, 2))
    else:
        seeds = grid_seeds((h, w), params.grid_spacing or params.object_size / 2.0,
                           params.max_seeds)
    # Seeds tile by tile (stable within a tile): each tile's embedding is used while it is
    # at hand instead of being evicted and fetched again from the cache.
    seeds = seeds[np.argsort(grid.tile_indices(seeds), kind="stable")] if len(seeds) else seeds
    pad = int(math.ceil(4 * max(1.0, params.object_size / 8.0))) + 1

    def foreground_crop(r0, c0, r1, c1):
        win = clipped(r0 - pad, c0 - pad, r1 + pad, c1 + pad)
        fg = _smooth(signal_of(win), params.object_size) > threshold
        return fg[r0 - win.row0:r1 - win.row0, c0 - win.col0:c1 - win.col0]

    def run(points, labels):
        r = tp.predict(points=points, labels=labels)
        return FullMask(r.mask, r.window.row0, r.window.col0, r.score)

    candidates, calls = _collect_candidates(seeds, run, foreground_crop, params, (h, w),
                                            cancel)
    return _slice_result(candidates, seeds, calls, params, (h, w), out, t0)


def segment_stack(predictor, planes, *, params: AutoParams | None = None,
                  mapping: IntensityMapping | None = None, threshold: float | None = None,
                  rgb: bool = False, link: bool = True, out: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: CancelToken | Callable[[], bool] | None = None,
                  batch_decoder="auto") -> StackSegmentation:
    """Segment every slice of a stack and link instances into 3D objects.

    Parameters
    ----------
    predictor : Predictor
    planes : sequence of array-like
        ``len(planes)`` slices; ``planes[z]`` has shape (H, W) (or (H, W, 3) with ``rgb``).
        Read one at a time (a numpy array, a memmap, a dask array or any lazy sequence).
    params : AutoParams, optional
    mapping : IntensityMapping, optional
        Default: stack-wide (see :func:`stack_statistics`).
    threshold : float, optional
        Default: ``params.threshold`` or stack-wide Otsu.
    rgb : bool
    link : bool
        Link instances of neighbouring slices by IoU (``params.link_iou``); False numbers
        instances of every slice independently from 1 (e.g. time frames).
    out : ndarray of uint32, shape (Z, H, W), optional
        Where to write the labels (e.g. a disk memmap for big stacks); each slice is
        painted and linked in place, so a memmap is never loaded whole.
    progress : callable(done, total), optional
        Called after each slice.
    cancel : CancelToken or callable returning bool, optional
    batch_decoder : BatchDecoder, None or "auto"
        See :func:`segment_slice`.

    Returns
    -------
    StackSegmentation
    """
    t0 = time.perf_counter()
    params = params or AutoParams()
    n = len(planes)
    if mapping is None or (threshold is None and params.threshold is None):
        mapping, stack_thr = stack_statistics(planes, params=params, mapping=mapping, rgb=rgb)
        if threshold is None:
            threshold = stack_thr
    elif threshold is None:
        threshold = float(params.threshold)
    prev = None
    next_id = 1
    per_slice = []
    calls = 0
    n_max = 0
    for z in range(n):
        _check_cancel(cancel)
        plane = planes[z]  # not read here: large slices are read tile by tile
        if out is None:
            out = np.zeros((n, *tuple(plane.shape)[:2]), dtype=np.uint32)
        res = segment_slice(predictor, plane, params=params, mapping=mapping,
                            threshold=threshold, cancel=cancel, rgb=rgb, out=out[z],
                            batch_decoder=batch_decoder)
        calls += res.decoder_calls
        per_slice.append(res.n_objects)
        if link:
            ids, next_id = link_ids(prev, out[z], min_iou=params.link_iou, next_id=next_id,
                                    n_current=res.n_objects)
            for b in _row_blocks(out.shape[1:]):  # in place, a block at a time
                out[z, b] = ids[out[z, b]]
            prev = out[z]
            n_max = next_id - 1
        else:
            n_max = max(n_max, res.n_objects)
        if progress is not None:
            progress(z + 1, n)
    if out is None:
        out = np.zeros((0, 0, 0), np.uint32)
    return StackSegmentation(out, n_max, per_slice, mapping, float(threshold), calls,
                             time.perf_counter() - t0)
