"""A batch file's slices with the next one prepared while the encoder runs.

:class:`LookAhead` wraps a predictor and the planes of one frame for
:func:`~napari_edgesam.workflows.automatic.segment_stack`: when the whole slice ``z`` is
embedded, plane ``z + 1`` is read, mapped and resized in a background thread
(:class:`~napari_edgesam.engine.pipeline.SlicePipeline`) while the encoder runs on ``z``,
then the decoder runs and the next slice's seeds are detected. The prepared tensor is the one
the predictor would have made, so labels are bit-identical. Tiled slices (large planes) are
embedded window by window as before, without look-ahead (a whole plane is never read for
them). Reads of the planes are serialised by a lock (a TIFF read page by page shares one file
handle).
"""

from __future__ import annotations

import threading

from ...engine.pipeline import Ahead, SlicePipeline

__all__ = ["LookAhead"]


class LookAhead:
    """A predictor and the planes of one frame, wrapped for look-ahead.

    Parameters
    ----------
    predictor : Predictor
    planes : sequence of array-like
        ``planes[z]``: one slice ``(H, W)`` or ``(H, W, 3)``, read on access.

    Attributes
    ----------
    predictor : object
        Pass this to ``segment_stack`` as its predictor: ``embed`` of a whole slice goes
        through the pipeline, everything else to the wrapped predictor.
    planes : object
        Pass this as its planes: records which slice is being segmented.
    pipeline : SlicePipeline
    """

    def __init__(self, predictor, planes):
        self._predictor = predictor
        self._planes = planes
        self._lock = threading.Lock()
        self._z: int | None = None
        self._last: tuple | None = None  # (z, plane)
        self.pipeline = SlicePipeline(predictor)
        self.predictor = _Predictor(self)
        self.planes = _Planes(self)

    def read(self, z: int):
        """Plane ``z`` (under the read lock; the last plane read is kept, so the plane
        prepared ahead is not read again when its turn comes)."""
        with self._lock:
            if self._last is None or self._last[0] != z:
                self._last = (z, self._planes[z])
            return self._last[1]

    def close(self) -> None:
        """Stop the background thread (a plane prepared ahead is dropped)."""
        self.pipeline.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Planes:
    def __init__(self, owner: LookAhead):
        self._owner = owner

    def __len__(self) -> int:
        return len(self._owner._planes)

    def __getitem__(self, z):
        plane = self._owner.read(z)
        self._owner._z = int(z)
        return plane


class _Predictor:
    def __init__(self, owner: LookAhead):
        self._owner = owner

    def __getattr__(self, name):
        return getattr(self._owner._predictor, name)

    def embed(self, image, mapping=None, *, rgb=None, tile: str = "full", run_options=None,
              **kwargs):
        owner = self._owner
        z = owner._z
        if tile != "full" or kwargs or z is None:  # tiles, or cache flags: as before
            return owner._predictor.embed(image, mapping, rgb=rgb, tile=tile,
                                          run_options=run_options, **kwargs)
        nxt = None
        if z + 1 < len(owner._planes):
            nxt = Ahead(z + 1, lambda: owner.read(z + 1), mapping, rgb)
        return owner.pipeline.embed(image, mapping, rgb=rgb, run_options=run_options, tag=z,
                                    ahead=nxt)
