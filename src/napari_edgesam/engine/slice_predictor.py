"""One interface for "answer prompts on this slice": :class:`SlicePredictor`.

A slice is answered either from one whole-slice embedding (:class:`EmbeddedSlice`: the
slice shrunk to the model's 1024 frame) or from full-resolution tiles
(:class:`~.tiling.TiledPredictor`: big images). Callers (the widget's click path,
propagation) hold a ``SlicePredictor`` per slice and never ask which kind it is; the answer
is a :class:`SlicePrediction` whose mask is a :class:`~.transforms.MaskCrop` (a bounding
crop), so big slices never get a slice-sized mask.

Coordinates: prompts in the slice's original pixels, ``(x, y) = (column, row)``; masks in
``(row, col)`` of the slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .transforms import MaskCrop

__all__ = ["EmbeddedSlice", "SlicePrediction", "SlicePredictor"]


@dataclass(frozen=True)
class SlicePrediction:
    """One mask answering prompts on a slice.

    Attributes
    ----------
    mask : MaskCrop
        The mask as a crop of the slice (original pixels).
    score : float
        Stability score of the chosen mask (NaN when undefined).
    window : Window or None
        The tile that answered (tiled slices), else None.
    """

    mask: MaskCrop
    score: float
    window: object = None

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return self.mask.area


@runtime_checkable
class SlicePredictor(Protocol):
    """Answers prompts on one 2D slice."""

    #: True when the slice is answered from full-resolution tiles.
    tiled: bool

    def predict_slice(self, points=None, labels=None, box=None, *,
                      run_options=None) -> SlicePrediction:
        """One mask from clicks (``points`` ``(N, 2)`` as ``(x, y)``, ``labels`` 1/0) and/or
        a ``box`` ``(x0, y0, x1, y1)``; ``run_options`` (onnxruntime) lets another thread
        terminate an encoder run the answer needs."""
        ...


class EmbeddedSlice:
    """A slice answered from its whole-slice embedding.

    Parameters
    ----------
    predictor : Predictor
        Runs the decoder.
    embedding : Embedding
        The slice's embedding (from ``predictor.embed``).
    """

    tiled = False

    def __init__(self, predictor, embedding):
        self.predictor = predictor
        self.embedding = embedding

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the slice."""
        return tuple(self.embedding.original_size)

    def predict_slice(self, points=None, labels=None, box=None, *,
                      run_options=None) -> SlicePrediction:
        """See :meth:`SlicePredictor.predict_slice` (the embedding is there: no encoder run,
        ``run_options`` is not needed)."""
        r = self.predictor.predict(points=points, labels=labels, box=box,
                                   embedding=self.embedding)
        return SlicePrediction(MaskCrop(r.mask), float(r.score))
