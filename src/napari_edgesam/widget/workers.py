"""Background work of the dock widget: the jobs (plain functions, no Qt, no napari) and
:class:`WorkerRunner`, which runs them in worker threads.

The jobs are shared by the click path (whole slices and tiles) and the propagation panel;
the model row (:mod:`.model_picker`) loads and downloads models with :func:`load_model_job`,
:func:`resolve_card_job` and :func:`download_job`, and the batch tab (:mod:`._batch_panel`)
runs :func:`batch_job` and reads results with :func:`load_batch_results_job`.

Why not napari's ``create_worker`` / ``thread_worker``: napari registers every worker's
``quit`` with the window's task registry and never removes it, so each finished worker (and
its arguments: images, predictors, embeddings) stays alive as long as the window. The
runner uses superqt's workers directly, keeps a reference to running workers only, and
drives napari's :class:`~napari.utils.progress` on the GUI thread (created, advanced and
closed from the workers' Qt signals), so the activity panel shows the work and nothing is
printed to the terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ._geometry import ImageGeometry
from ._lazy import SubArray

__all__ = [
    "WorkerRunner",
    "Decoded",
    "encode_job",
    "decode_job",
    "max_label_job",
    "propagation_prepare_job",
    "propagation_steps_job",
    "choose_mapping",
    "prepare_tiles_job",
    "load_model_job",
    "resolve_card_job",
    "download_job",
    "batch_job",
    "load_batch_results_job",
]


class WorkerRunner:
    """Runs jobs in superqt worker threads on behalf of one panel.

    Parameters
    ----------
    alive : callable
        ``alive() -> bool``: False once the panel is gone; callbacks are then dropped.

    Only running workers are referenced (:attr:`running`); a finished worker, its
    arguments and its result are released as soon as its callbacks have run.
    """

    def __init__(self, alive):
        self._alive = alive
        self._running: set = set()

    @property
    def running(self) -> int:
        """The number of workers started and not finished yet."""
        return len(self._running)

    def start(self, func, *args, returned=None, errored=None, finished=None, desc=None,
              yielded=None, total=0):
        """Run ``func(*args)`` in a worker thread; callbacks run on the GUI thread.

        Parameters
        ----------
        func : callable
            A plain function, or a generator function (its yielded values go to
            ``yielded`` and advance the progress bar by one each).
        returned, errored, finished, yielded : callable, optional
            Called with the result, the exception, nothing, a yielded value. Errors go to
            ``errored`` only (never re-raised, never a second notification).
        desc : str, optional
            Shows a progress bar with this text in napari's activity panel while the job
            runs (``total`` steps for a generator, else an indeterminate bar).

        Returns
        -------
        superqt.utils.WorkerBase
            The started worker (``quit()`` asks a generator worker to stop).
        """
        import inspect

        from superqt.utils import create_worker

        generator = inspect.isgeneratorfunction(func)
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        alive = self._alive

        def guard(cb):
            def call(*a):
                if not alive():
                    return
                try:
                    cb(*a)
                except RuntimeError as exc:  # the panel's Qt objects were deleted
                    if "deleted" not in str(exc):
                        raise
            return call

        pbar = None
        if desc:
            from napari.utils import progress

            pbar = progress(total=int(total) if generator else 0, desc=desc)
            if generator and total:
                worker.yielded.connect(lambda *_: pbar.increment_with_overflow())
        if returned is not None:
            worker.returned.connect(guard(returned))
        if yielded is not None and generator:
            worker.yielded.connect(guard(yielded))
        if errored is not None:
            worker.errored.connect(guard(errored))
        running = self._running

        def done():
            running.discard(worker)
            if pbar is not None:
                pbar.close()

        worker.finished.connect(done)
        if finished is not None:
            worker.finished.connect(guard(finished))
        running.add(worker)
        worker.start()
        return worker

    def quit_all(self) -> None:
        """Ask every running worker to stop (generator workers stop at their next step;
        jobs given a CancelToken are stopped by their owner cancelling it)."""
        for worker in list(self._running):
            try:
                worker.quit()
            except RuntimeError:  # pragma: no cover - already deleted
                pass


@dataclass(frozen=True)
class Decoded:
    """A preview mask as the GUI thread gets it.

    Attributes
    ----------
    mask : ndarray of uint8 (0/1)
        The whole slice ``(H, W)`` (offset ``(0, 0)``), or for tiled slices the mask's
        bounding-box crop placed at ``offset`` (``(1, 1)`` zeros when empty).
    offset : (int, int)
        ``(row, col)`` of ``mask[0, 0]`` in the slice.
    bbox : (r0, c0, r1, c1) or None
        The mask's bounding box in slice pixels (half-open); None when empty.
    score : float
    seconds : float
    window : object
        The tile/window that answered (tiled images), else None.
    area : int
        Mask pixels (counted in the worker, not on the GUI thread).
    """

    mask: np.ndarray
    offset: tuple
    bbox: tuple | None
    score: float
    seconds: float
    window: object = None
    area: int = 0


def choose_mapping(data, geom: ImageGeometry, key, spec, known=None):
    """The intensity mapping for slices of ``data`` (the same for every slice of a stack):
    the engine's one policy, :func:`~napari_edgesam.engine.intensity.stack_mapping`.

    ``spec`` is ``("contrast", (lo, hi))``, ``("auto",)`` or ``("percentiles",)``;
    ``known`` a mapping chosen before for this stack (returned as is). Only the channel
    being segmented is sampled (RGBA: without the alpha channel), never the whole stack.
    """
    from napari_edgesam.engine.intensity import stack_mapping

    if spec[0] != "contrast" and known is not None:
        return known
    stack = data
    if geom.channel_axis is not None:
        stack = SubArray(data, {geom.channel_axis: key[geom.channel_axis]})
    limits = spec[1] if spec[0] == "contrast" else None
    return stack_mapping(stack, spec[0], rgb=geom.rgb, limits=limits)


def prepare_tiles_job(predictor, data, geom: ImageGeometry, key, spec, stack_mapping,
                      tile_size, halo, token):
    """A :class:`~napari_edgesam.engine.tiling.TiledPredictor` for one slice of a big image.

    Nothing is encoded here: tiles are encoded when a prompt needs them. Only the intensity
    mapping is chosen (sampled). Returns ``(tiled_predictor, mapping, seconds)`` or None
    when ``token`` (a :class:`~napari_edgesam.engine.cancel.CancelToken`) is cancelled.
    """
    from napari_edgesam.engine.tiling import TiledPredictor

    t0 = time.perf_counter()
    if token.cancelled:
        return None
    mapping = choose_mapping(data, geom, key, spec, stack_mapping)
    view = SubArray(data, dict(enumerate(key))) if key else data
    tp = TiledPredictor(predictor, view, mapping, tile_size=tile_size, halo=halo,
                        rgb=geom.rgb)
    return tp, mapping, time.perf_counter() - t0


def encode_job(predictor, data, geom: ImageGeometry, key, spec, stack_mapping, token):
    """Read one slice, choose the intensity mapping and embed it (cache first).

    ``key`` is the slice's index into ``data`` (see :meth:`ImageGeometry.slice_key`),
    ``spec`` and ``stack_mapping`` as in :func:`choose_mapping`. Cancelling ``token`` (a
    :class:`~napari_edgesam.engine.cancel.CancelToken`) stops a stale encoder run at once.
    Returns ``(slice_predictor, mapping, seconds)`` (an
    :class:`~napari_edgesam.engine.slice_predictor.EmbeddedSlice`), or None when cancelled.
    """
    from napari_edgesam.engine.slice_predictor import EmbeddedSlice

    run_options = token.run_options()
    if token.cancelled:
        return None
    t0 = time.perf_counter()
    image = geom.read_slice(data, key)
    mapping = choose_mapping(data, geom, key, spec, stack_mapping)
    if token.cancelled:
        return None
    try:
        embedding = predictor.embed(image, mapping, rgb=geom.rgb, run_options=run_options)
    except Exception:
        if token.cancelled:  # onnxruntime stopped the run on our request
            return None
        raise
    return EmbeddedSlice(predictor, embedding), mapping, time.perf_counter() - t0


def decode_job(slice_predictor, prompts, token):
    """Answer ``prompts`` (:class:`~.prompt_layers.Prompts`, original pixels) on a slice.

    ``slice_predictor`` is the slice's
    :class:`~napari_edgesam.engine.slice_predictor.SlicePredictor`: a whole-slice embedding
    (decoder only) or tiles (the window the prompts need is encoded first, terminable
    through ``token``). Returns a :class:`Decoded` (uint8 0/1: the whole slice for a
    whole-slice embedding, the bounding-box crop for tiles), or None when ``token`` is
    cancelled.
    """
    run_options = token.run_options()
    if token.cancelled:
        return None
    t0 = time.perf_counter()
    try:
        pred = slice_predictor.predict_slice(
            points=list(prompts.points) or None, labels=list(prompts.labels) or None,
            box=prompts.box, run_options=run_options)
    except Exception:
        if token.cancelled:  # onnxruntime stopped the run on our request
            return None
        raise
    if token.cancelled:
        return None
    m = pred.mask
    bbox = None if m.area == 0 else (m.row0, m.col0, m.row0 + m.crop.shape[0],
                                     m.col0 + m.crop.shape[1])
    if not slice_predictor.tiled:  # the whole slice, made here: shown without a copy
        mask, offset = m.full().view(np.uint8), (0, 0)
    elif bbox is None:
        mask, offset = np.zeros((1, 1), np.uint8), (0, 0)
    else:
        mask, offset = m.crop.view(np.uint8), (m.row0, m.col0)
    return Decoded(mask, offset, bbox, pred.score, time.perf_counter() - t0, pred.window,
                   pred.area)


# ---------------------------------------------------------------------------------------
# The model row: loading and downloading models
# ---------------------------------------------------------------------------------------


def load_model_job(model):
    """Open both sessions of ``model`` (the contract check) and hash its encoder (the
    model's identity).

    Parameters
    ----------
    model : EdgeSamModel

    Returns
    -------
    EdgeSamModel
        ``model``, loaded.
    """
    model.load()
    _ = model.identity
    return model


def resolve_card_job(card):
    """Find a published model's files on this machine (verified) and load them.

    Parameters
    ----------
    card : ModelCard

    Returns
    -------
    EdgeSamModel
        The loaded model, named after the card.
    """
    from napari_edgesam.engine import EdgeSamModel
    from napari_edgesam.engine.models import resolve_model

    resolved = resolve_model(card)
    model = EdgeSamModel(resolved.encoder, resolved.decoder, name=resolved.name,
                         sha256=resolved.sha256)
    return load_model_job(model)


def download_job(card, state):
    """Download ``card`` into the user cache and load it.

    The licence was shown and accepted in a dialog before the worker started.

    Parameters
    ----------
    card : ModelCard
    state : dict
        Shared with the GUI thread: the job writes the progress of the whole model
        (``done`` bytes, ``filename``); setting ``state["cancel"]`` stops it at its next
        block of bytes.

    Returns
    -------
    EdgeSamModel
        The loaded model.

    Raises
    ------
    CancelledError
        When cancelled.
    """
    from napari_edgesam.engine import CancelledError, EdgeSamModel, paths
    from napari_edgesam.engine.models import cached_sha256, download_model

    dest = paths.models_cache_dir()
    done: dict[str, int] = {}
    for f in card.files.values():  # files already here (memo only) count as done
        if cached_sha256(dest / f.filename) == f.sha256:
            done[f.filename] = f.size
    state["done"] = sum(done.values())

    def progress(filename, got, total):
        if state.get("cancel"):
            raise CancelledError("download cancelled")
        done[filename] = got
        state.update(filename=filename, done=sum(done.values()))

    resolved = download_model(card, progress=progress, licence_notice=lambda text: None)
    if state.get("cancel"):
        raise CancelledError("download cancelled")
    model = EdgeSamModel(resolved.encoder, resolved.decoder, name=resolved.name,
                         sha256=resolved.sha256)
    return load_model_job(model)


# ---------------------------------------------------------------------------------------
# The batch tab: running a batch, reading its results
# ---------------------------------------------------------------------------------------


def batch_job(inputs, out_dir, model, params, overwrite, scheduler, workers, relay, token):
    """Run :func:`~napari_edgesam.workflows.batch.run_batch` (the command line's engine).

    Parameters
    ----------
    inputs : list of str
        Files, folders and glob patterns.
    out_dir : str
    model : EdgeSamModel
    params : BatchParams
    overwrite : bool
    scheduler : str or None
    workers : int or None
        As ``run_batch``'s arguments of these names.
    relay : object
        Carries the callbacks to the GUI thread through its signals ``started(files)``
        (the input files, before the first one starts), ``progress(result, done, total)``
        and ``slices(input, done, total)``.
    token : CancelToken
        Cancelling it asks the run to stop.

    Returns
    -------
    BatchSummary
    """
    from pathlib import Path

    from napari_edgesam.workflows.batch import collect_inputs, run_batch

    # the file list first, so that the panel can show "0 done of N" before any file ends
    files = collect_inputs(inputs, exclude_dir=Path(out_dir).expanduser().resolve())
    relay.started.emit([str(f) for f in files])
    return run_batch(
        inputs, out_dir, model, params, overwrite=overwrite, scheduler=scheduler,
        workers=workers,
        progress=lambda res, done, total: relay.progress.emit(res, done, total),
        cancel=token,
        slice_progress=lambda name, done, total: relay.slices.emit(name, done, total),
    )


def load_batch_results_job(results):
    """Read the label images (and their inputs) of finished batch files, one file at a time
    (see :func:`~.result_layers.read_pair`); only the last file's layers are visible.

    Parameters
    ----------
    results : list of FileResult

    Yields
    ------
    (int, list or None, str or None)
        The file's index, its layers ``[(data, kwargs, layer_type), ...]`` (None when it
        could not be read) and the error text (None when read).
    """
    from pathlib import Path

    from .result_layers import read_pair

    for i, res in enumerate(results):
        try:
            yield i, read_pair(res, visible=i == len(results) - 1), None
        except Exception as exc:  # noqa: BLE001 - one unreadable file, the others load
            yield i, None, f"{Path(res.output).name}: {exc}"


# ---------------------------------------------------------------------------------------
# The propagation tab's run (its types: .propagation_run)
# ---------------------------------------------------------------------------------------
def propagation_prepare_job(data, geom: ImageGeometry, ctx, spec, known, predictor,
                settings, ann, z_range, previous, token=None):
    """Choose the mapping and plan the run (worker thread; the stack may be sampled).

    Parameters
    ----------
    data : array-like
        The image layer's data (level 0 of a multiscale image).
    geom : ImageGeometry
    ctx : ~.propagation_run.RunContext
    spec : tuple
        The session's mapping spec (``("contrast", (lo, hi))``, ``("auto",)``, ...).
    known : IntensityMapping or None
        A mapping already chosen for this stack.
    predictor : Predictor
    settings : PropagationSettings
    ann : tuple
        The object on slice ``ctx.lead[ctx.axis]``: ``("mask", bool crop, (row0, col0))``,
        ``("prompts", points, labels, box)`` (points ``(x, y)`` = (column, row) in slice
        pixels) or ``("label", labels_layer, value)``.
    z_range : (int, int) or None
        Slice limits of a new run (None for a re-propagation).
    previous : PropagationResult or None
        The result a re-propagation corrects.
    token : CancelToken, optional
        The panel's cancellation: the run is started with it, so *Cancel* stops the run
        (and a running encoder) through this one token.

    Returns
    -------
    run : PropagationRun
    seed : (bool crop, (row0, col0)) or None
        The given mask of a mask seed (its slice is decided without the model and yields no
        engine step); None for prompts.
    mapping : IntensityMapping
    """
    from napari_edgesam.engine import InvalidInputError
    from napari_edgesam.engine.transforms import MaskCrop
    from napari_edgesam.workflows.propagation import Propagator, SliceAnnotation

    from ._lazy import stack_view

    hw = geom.spatial_shape
    z = ctx.lead[ctx.axis]
    mapping = choose_mapping(data, geom, ctx.key, spec, known)
    stack = stack_view(data, ctx.key, ctx.axis)
    prop = Propagator(predictor, stack, axis=0, mapping=mapping, settings=settings)
    seed = None
    if ann[0] == "prompts":
        _, points, labels, box = ann
        annotation = SliceAnnotation(z, points=list(points) or None,
                                     labels=list(labels) or None, box=box)
    else:
        if ann[0] == "mask":
            mask = MaskCrop(ann[1], *ann[2], hw)
        else:
            _, lab_layer, value = ann
            plane = np.asarray(lab_layer.data[ctx.labels_lead(z)]) == value
            if previous is None and not plane.any():
                raise InvalidInputError(
                    f"label {value} is not on slice {z} of '{lab_layer.name}'")
            mask = MaskCrop(plane)
        annotation = SliceAnnotation(z, mask=mask)
        seed = (mask.crop, mask.offset)
    if previous is None:
        run = prop.start({ctx.object_id: annotation}, z_range=z_range, token=token)
    else:
        run = prop.start_repropagation(previous, ctx.object_id, annotation, token=token)
    return run, seed, mapping


def propagation_steps_job(run, z: int, seed, oid, previous_crops):
    """Iterate ``run`` (generator run in a worker thread).

    Yields a :class:`~.propagation_run.RunStep` per decided slice, the seed mask's slice
    ``z`` first (when
    ``seed`` is given), so that the number of yielded values is the number of slices decided
    and never exceeds the first step's ``total``.

    Returns
    -------
    result : PropagationResult
    crops : dict
        ``{z: (bool crop, (row0, col0))}`` of the object's kept masks.
    changed : list of int
        Slices that differ from ``previous_crops`` (empty when it is None).
    """
    from .propagation_run import RunStep

    extra = 0 if seed is None else 1
    if seed is not None:
        live = {z: seed} if seed[0].any() else {}
        yield RunStep(1, run.total + 1, z, live)
    for step in run:
        live = {}
        for obj_id, rec, mask in step.updates:
            if obj_id == oid and mask is not None and rec.accepted and mask.area:
                live[step.z] = (mask.crop, mask.offset)  # an engine MaskCrop
        yield RunStep(step.done + extra, step.total + extra, step.z, live)
    result = run.result()
    obj = result.objects.get(oid)
    crops = {}
    if obj is not None:
        for zz in obj.slices:  # slices with a (non-empty) mask
            m = obj.slice_crop(zz)
            crops[zz] = (m.crop, m.offset)
    changed = []
    if previous_crops is not None:
        for zz in sorted(set(crops) | set(previous_crops)):
            a, b = crops.get(zz), previous_crops.get(zz)
            if a is None or b is None or a[1] != b[1] or a[0].shape != b[0].shape \
                    or not np.array_equal(a[0], b[0]):
                changed.append(zz)
    return result, crops, changed


# ---------------------------------------------------------------------------------------
# Labels layers
# ---------------------------------------------------------------------------------------
def save_labels_job(path, labels, log, indices):
    """Write a label image and its prompt log beside it (see
    :func:`~.prompt_record.save_labels_and_log`), keeping only the log's objects still in
    ``labels`` (:func:`~.prompt_record.present`: read here, not on the GUI thread);
    returns ``(labels_path, log_path, objects_logged)``."""
    from .prompt_record import present, save_labels_and_log

    log = present(log, indices, labels)
    return (*save_labels_and_log(path, labels, log), len(log.objects))


def max_label_job(data, token=None) -> int:
    """The largest value in ``data``, read slice by slice and in row blocks (never the
    whole array at once; numpy, memmap, dask and zarr). Runs in a worker thread; stops
    early (returning the maximum so far) when ``token``, a CancelToken, is cancelled."""
    shape = tuple(int(s) for s in data.shape)
    if len(shape) < 2:
        return int(np.max(np.asarray(data))) if data.size else 0
    lead = shape[:-2]
    h, w = shape[-2:]
    rows = max(1, (1 << 22) // max(1, w))
    best = 0
    for idx in np.ndindex(*lead) if lead else [()]:
        for r in range(0, h, rows):
            if token is not None and token.cancelled:
                return best
            block = np.asarray(data[(*idx, slice(r, min(h, r + rows)))])
            if block.size:
                best = max(best, int(block.max()))
    return best
