"""The engine: numpy + onnxruntime only (no Qt, no napari).

Public API::

    from napari_edgesam.engine import EdgeSamModel, Predictor
    model = EdgeSamModel("encoder.onnx", "decoder.onnx")      # or EdgeSamModel.from_name()
    predictor = Predictor(model)                              # cache="default" | None
    predictor.set_image(slice_2d)                             # (H, W) or (H, W, 3)
    result = predictor.predict(points=[(x, y)], labels=[1])   # x = column, y = row
    result.mask                                               # (H, W) bool

onnxruntime is imported only when a session is first needed.
"""

from .contract import IMAGE_SIZE, LOW_RES_SIZE
from .errors import (
    CacheBoundError,
    CancelledError,
    ChecksumError,
    DownloadError,
    EdgeSamError,
    InvalidInputError,
    ModelError,
    ModelNotAvailableError,
    ModelSignatureError,
    UnknownModelError,
)
from .intensity import IntensityMapping, default_mapping, mapping_from_percentiles
from .predictor import Embedding, Prediction, Predictor, stability_scores
from .session import EdgeSamModel

__all__ = [
    "IMAGE_SIZE",
    "LOW_RES_SIZE",
    "CacheBoundError",
    "CancelledError",
    "ChecksumError",
    "DownloadError",
    "EdgeSamError",
    "EdgeSamModel",
    "Embedding",
    "IntensityMapping",
    "InvalidInputError",
    "ModelError",
    "ModelNotAvailableError",
    "ModelSignatureError",
    "Prediction",
    "Predictor",
    "UnknownModelError",
    "default_mapping",
    "mapping_from_percentiles",
    "stability_scores",
]
