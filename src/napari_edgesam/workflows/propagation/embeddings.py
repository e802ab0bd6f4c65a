"""The embeddings of a propagation run: :class:`SliceEmbeddings`, one lazily made
:class:`~napari_edgesam.engine.slice_predictor.SlicePredictor` per slice (a whole-slice
embedding, or tiles around the object for large slices) behind a small LRU memo and the
predictor's :class:`~napari_edgesam.engine.cache.EmbeddingCache`. Whole slices go through
a :class:`~napari_edgesam.engine.pipeline.SlicePipeline`: the slice the run expects next is
read, mapped and resized while the encoder runs on this one."""

from __future__ import annotations

from collections import OrderedDict

from ...engine.contract import EMBEDDING_SHAPE
from ...engine.intensity import IntensityMapping
from ...engine.pipeline import Ahead, SlicePipeline
from ...engine.predictor import without_decoder_part
from ...engine.slice_predictor import EmbeddedSlice
from .slice_source import SliceSource

__all__ = ["EMBEDDING_BYTES", "SliceEmbeddings"]

#: Bytes of one whole-slice embedding (float32 ``[1, 256, 64, 64]``: 4 MiB).
EMBEDDING_BYTES = 4 * int(EMBEDDING_SHAPE[0] * EMBEDDING_SHAPE[1] * EMBEDDING_SHAPE[2])


class SliceEmbeddings:
    """Lazy per-slice :class:`~napari_edgesam.engine.slice_predictor.SlicePredictor` s (a
    whole-slice embedding, or tiles for large slices): the run's small LRU memo, then the
    predictor (and its cache). Counts what the encoder really computed.

    Parameters
    ----------
    predictor : Predictor
        Encodes the slices (through its embedding cache, if any).
    source : SliceSource
        The stack's slices, ``(Y, X)`` or ``(Y, X, 3)``.
    mapping : IntensityMapping
        The one stack-wide mapping used for every slice.
    memo_slices : int
        Slices kept in the LRU memo (0: none).
    tiles : bool
        Full-resolution tiles around the object instead of the whole slice shrunk to the
        model's 1024 frame.
    tile_size : int, optional
        Tile side in original pixels (default that of
        :class:`~napari_edgesam.engine.tiling.TiledPredictor`).
    """

    def __init__(self, predictor, source: SliceSource, mapping: IntensityMapping,
                 memo_slices: int, tiles: bool = False, tile_size: int | None = None):
        self.predictor = predictor
        self.source = source
        self.mapping = mapping
        self.tiles = tiles
        self.tile_size = tile_size
        self.tiled: list = []  # the TiledPredictors made, for the statistics
        self.memo: OrderedDict[int, object] = OrderedDict()
        self.memo_slices = max(0, int(memo_slices))
        self.embeddings = 0
        self.encoded = 0
        #: onnxruntime RunOptions passed to every encoder run (``terminate`` stops it).
        self.run_options = None
        #: Prepares the slice expected next while the encoder runs (whole slices only).
        self.pipeline = SlicePipeline(predictor)

    def close(self) -> None:
        """Stop the pipeline's background thread (a slice prepared ahead is dropped)."""
        self.pipeline.close()

    def get(self, z: int, ahead: int | None = None):
        """The slice predictor of slice ``z`` (memo, then cache, then the encoder).

        Parameters
        ----------
        z : int
        ahead : int, optional
            The slice the run expects to ask for next: prepared (read, mapped, resized, or
            found in the cache) in the background while the encoder runs on ``z``.

        Raises :class:`~napari_edgesam.engine.errors.InvalidInputError` when the model cannot
        take the slice (no finite values, say)."""
        emb = self.memo.get(z)
        if emb is not None:
            self.memo.move_to_end(z)
            if not self.tiles:  # the decoder image part, left out of the memo (below)
                emb = EmbeddedSlice(self.predictor, self.predictor.with_decoder_part(
                    emb.embedding, run_options=self.run_options))
            return emb
        if self.tiles:
            # Large slices: full-resolution windows around the object, encoded when a
            # prediction needs them (the object's tiles only), read lazily from the stack.
            from ...engine.tiling import TiledPredictor

            emb = TiledPredictor(self.predictor, self.source.lazy(z), self.mapping,
                                 tile_size=self.tile_size, rgb=self.source.rgb)
            self.tiled.append(emb)
        else:
            emb = self._embed(z, ahead)
        if self.memo_slices:
            # With a split decoder the embedding carries its decoder image part (about
            # 10 MiB); the memo keeps it without (4 MiB a slice), a hit takes the part
            # from the cache's store of parts or computes it again.
            self.memo[z] = (emb if self.tiles else
                            EmbeddedSlice(self.predictor, without_decoder_part(emb.embedding)))
            while len(self.memo) > self.memo_slices:
                self.memo.popitem(last=False)
        return emb

    def counts(self) -> tuple[int, int]:
        """``(embeddings used, embeddings the encoder computed)``."""
        if self.tiles:
            return (sum(len(t.windows) for t in self.tiled),
                    sum(len(t.encoded) for t in self.tiled))
        return self.embeddings, self.encoded

    def _embed(self, z: int, ahead: int | None):
        nxt = None
        if (ahead is not None and ahead not in self.memo and ahead != z
                and 0 <= ahead < len(self.source)):
            nxt = Ahead(ahead, lambda: self.source[ahead], self.mapping, self.source.rgb)
        emb = self.pipeline.embed(lambda: self.source[z], self.mapping, rgb=self.source.rgb,
                                  run_options=self.run_options, tag=z, ahead=nxt)
        self.embeddings += 1
        self.encoded += int(not emb.cached)
        return EmbeddedSlice(self.predictor, emb)

