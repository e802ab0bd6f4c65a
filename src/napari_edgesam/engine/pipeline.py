"""Preprocessing off the critical path: a one-slot look-ahead for runs over many slices.

While the encoder runs on slice ``z`` (onnxruntime releases the GIL), a background thread
prepares the slice expected next (:meth:`Predictor.prepare <.predictor.Predictor.prepare>`:
reading it, its cache key and cache lookup, and on a miss the intensity mapping, the
Pillow resize and the normalisation into the encoder's input tensor). When that slice is
asked for, its encoder starts at once. A guess that turns out wrong costs only the
background work (the slice asked for is prepared as usual); the prepared tensor is the one
:meth:`~.predictor.Predictor.embed` would have made, so the results are bit-identical with
and without the pipeline.

Propagation (:mod:`napari_edgesam.workflows.propagation`) guesses the next slice of its
sweep, the prefetcher (:mod:`.prefetch`) the next queued slice.

Examples
--------
>>> with SlicePipeline(predictor) as pipe:                               # doctest: +SKIP
...     for z in range(len(stack)):
...         nxt = Ahead(z + 1, stack[z + 1], mapping) if z + 1 < len(stack) else None
...         emb = pipe.embed(stack[z], mapping, tag=z, ahead=nxt)
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass

__all__ = ["Ahead", "SlicePipeline"]


@dataclass(frozen=True)
class Ahead:
    """The slice expected next.

    Attributes
    ----------
    tag : hashable
        Names the slice (its index, a job): :meth:`SlicePipeline.embed` uses the prepared
        slice only when asked with the same tag, mapping, ``rgb`` and ``tile``.
    image : array-like or callable
        The slice, ``(H, W)`` or ``(H, W, 3|4)``, or a zero-argument callable returning it
        (read in the background thread).
    mapping : IntensityMapping or None
    rgb : bool or None
    tile : str
    """

    tag: object
    image: object
    mapping: object = None
    rgb: bool | None = None
    tile: str = "full"


def _signature(mapping, rgb, tile) -> tuple:
    return (None if mapping is None else mapping.key(), rgb, tile)


class SlicePipeline:
    """Embed slices one after the other, preparing the next one while the encoder runs.

    Parameters
    ----------
    predictor : Predictor
        Anything with ``embed``; with ``prepare`` too the look-ahead is used (otherwise
        :meth:`embed` is a plain ``predictor.embed``).
    initializer : callable, optional
        Run once in the background thread when it starts (the prefetcher lowers its
        priority there).

    Attributes
    ----------
    stats : dict
        ``submitted`` (slices prepared ahead), ``used`` (of those, taken by :meth:`embed`),
        ``wasted`` (guessed wrong or left at :meth:`close`).
    """

    def __init__(self, predictor, *, initializer=None):
        self.predictor = predictor
        self._initializer = initializer
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slot: tuple | None = None  # (tag, signature, future)
        self._lock = threading.Lock()
        self.stats = {"submitted": 0, "used": 0, "wasted": 0}

    @property
    def enabled(self) -> bool:
        """Whether the predictor supports preparing ahead."""
        return hasattr(self.predictor, "prepare")

    def embed(self, image, mapping=None, *, rgb: bool | None = None, tile: str = "full",
              run_options=None, tag=None, ahead: Ahead | None = None):
        """The embedding of one slice, and the preparation of the next one started.

        Parameters
        ----------
        image : array-like or callable
            The slice (original frame) or a zero-argument callable returning it (not called
            when the slice was prepared ahead).
        mapping, rgb, tile, run_options
            As for :meth:`Predictor.embed <.predictor.Predictor.embed>`.
        tag : hashable, optional
            This slice's :attr:`Ahead.tag` (None: never taken from the slot).
        ahead : Ahead, optional
            The slice expected next: prepared in the background while this slice's
            encoder runs.

        Returns
        -------
        Embedding

        Raises
        ------
        Exception
            What ``predictor.embed`` raises for this slice (an error met while preparing it
            ahead is raised here, when it is asked for).
        """
        if not self.enabled:
            return self.predictor.embed(image() if callable(image) else image, mapping,
                                        rgb=rgb, tile=tile, run_options=run_options)
        prepared = self._take(tag, _signature(mapping, rgb, tile))
        if prepared is None:  # not guessed: prepared here, before the next one starts
            prepared = self.predictor.prepare(image() if callable(image) else image, mapping,
                                              rgb=rgb, tile=tile)
        if ahead is not None:
            self._submit(ahead)
        return self.predictor.embed(None, mapping, rgb=rgb, tile=tile,
                                    run_options=run_options, prepared=prepared)

    def close(self) -> None:
        """Drop a slice prepared ahead and stop the background thread."""
        with self._lock:
            slot, self._slot = self._slot, None
            executor, self._executor = self._executor, None
        if slot is not None:
            slot[2].cancel()
            self.stats["wasted"] += 1
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _take(self, tag, signature):
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is None:
            return None
        if tag is None or slot[0] != tag or slot[1] != signature:
            slot[2].cancel()
            self.stats["wasted"] += 1
            return None
        self.stats["used"] += 1
        return slot[2].result()  # raises what preparing the slice raised

    def _submit(self, ahead: Ahead) -> None:
        def prepare():
            image = ahead.image() if callable(ahead.image) else ahead.image
            return self.predictor.prepare(image, ahead.mapping, rgb=ahead.rgb, tile=ahead.tile)

        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="edgesam-preprocess", initializer=self._initializer)
            old = self._slot
            self._slot = (ahead.tag, _signature(ahead.mapping, ahead.rgb, ahead.tile),
                          self._executor.submit(prepare))
            self.stats["submitted"] += 1
        if old is not None:
            old[2].cancel()
            self.stats["wasted"] += 1
