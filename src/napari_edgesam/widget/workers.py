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
        The whole slice ``(H, W)`` (offset ``(0, 0)``), or a crop (tiled images).
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
    through ``token``). Returns a :class:`Decoded` with the mask cropped to its bounding
    box (uint8 0/1), or None when ``token`` is cancelled.
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
    if m.area == 0:
        mask, offset, bbox = np.zeros((1, 1), np.uint8), (0, 0), None
    else:
        mask, offset = m.crop.view(np.uint8), (m.row0, m.col0)
        bbox = (m.row0, m.col0, m.row0 + m.crop.shape[0], m.col0 + m.crop.shape[1])
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
        cancel=lambda: token.cancelled,
        slice_progress=lambda name, done, total: relay.slices.emit(name, done, total),
    )


def load_batch_results_job(results):
    """Read the label images (and their inputs) of finished batch files, one file at a time
    (see :func:`~.batch_results.read_pair`); only the last file's layers are visible.

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

    from .batch_results import read_pair

    for i, res in enumerate(results):
        try:
            yield i, read_pair(res, visible=i == len(results) - 1), None
        except Exception as exc:  # noqa: BLE001 - one unreadable file, the others load
            yield i, None, f"{Path(res.output).name}: {exc}"
