"""Constants of the published EdgeSAM ONNX contract.

Everything here comes from the EdgeSAM paper (arXiv 2312.06660), its public code and the
published ONNX exports. The encoder expects a normalised, zero-padded NCHW float32 image in
the *1024 frame*; the decoder takes prompts in the same frame and returns 256 x 256 mask
logits of the padded 1024 frame.
"""

from __future__ import annotations

#: Side of the square model input (the "1024 frame").
IMAGE_SIZE = 1024
#: Side of the low-resolution mask logits returned by the decoder (1/4 of the 1024 frame).
LOW_RES_SIZE = 256
#: Shape of one image embedding, without the batch axis.
EMBEDDING_SHAPE = (256, 64, 64)

#: Per-channel normalisation on the 0..255 RGB scale (the model's training statistics).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

#: Point label values understood by the decoder.
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
LABEL_PADDING = -1

#: Mask threshold on the logits, and the offset used by the stability score.
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0

#: Version of our preprocessing (intensity mapping, resize, normalisation). It is part of
#: every embedding cache key: bump it whenever preprocessing changes its output.
PREPROCESSING_VERSION = 1

#: The expected signatures: name -> (dtype, shape); ``None`` marks a dynamic axis.
ENCODER_INPUTS = {"image": ("float32", (1, 3, IMAGE_SIZE, IMAGE_SIZE))}
ENCODER_OUTPUTS = {"image_embeddings": ("float32", (1, *EMBEDDING_SHAPE))}
DECODER_INPUTS = {
    "image_embeddings": ("float32", (1, *EMBEDDING_SHAPE)),
    "point_coords": ("float32", (1, None, 2)),
    "point_labels": ("float32", (1, None)),
}
DECODER_OUTPUTS = {
    "scores": ("float32", (1, 4)),
    "masks": ("float32", (1, 4, LOW_RES_SIZE, LOW_RES_SIZE)),
}
