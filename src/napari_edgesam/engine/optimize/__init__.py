"""Optimised model variants, made on the user's machine and enabled only after a check.

The published EdgeSAM files are float32 graphs exported from PyTorch. This package derives
faster variants *from the user's own downloaded files* (nothing optimised is ever
downloaded or shipped), stores them beside the originals, and enables a variant only after
an automatic **agreement check** against the float32 original on the user's own images.

Variants (see :data:`VARIANTS`):

``decoder-fast``
    Exact float32 rewrites of the decoder: onnxruntime's offline constant folding, the
    output upscaling (two 2x2 stride-2 transposed convolutions, a channel LayerNorm, GELUs
    and the mask product) rewritten as per-pixel matrix products in channels-last layout,
    and a **split** into a prompt-independent part (run once per image embedding and
    remembered) and a prompt part (run per click). Mathematically exact; only rounding
    differs (the split itself is bit-exact).
``decoder-int8``
    ``decoder-fast`` plus dynamic int8 quantisation of the weight matrix products
    (``onnxruntime.quantization.quantize_dynamic``, per-channel int8 weights).
``encoder-fold``
    Exact float32 re-parameterisation of the encoder: each RepViT token mixer that the
    published export keeps as parallel branches (3x3 and 1x1 depthwise convolutions and the
    identity, summed; BatchNorms left on them folded too) becomes one 3x3 depthwise
    convolution. The build reports how many it folded (23 on EdgeSAM's architecture); a
    graph with nothing to fold gives no variant (``skipped``, "0 folds").
``decoder-batch`` (built by default)
    The float32 decoder rewritten to take a batch of prompt sets of one length in one
    ``session.run`` (:mod:`.prompt_batch`); the image side stays batch 1 and broadcasts.
    Used beside the decoder variant by batch work (automatic segmentation's seeds, through
    :func:`batch_decoder_for`), checked against one-by-one runs of the original decoder
    (:func:`check_batch_agreement`). A decoder graph it does not recognise gives no variant
    (``skipped``, naming the node and why).
``encoder-int8``
    The folded encoder, then static int8 QDQ quantisation calibrated on the user's own slices, fed
    through the engine's own preprocessing (``quantize_static`` with a
    ``CalibrationDataReader``); GELUs are first fused into onnxruntime's ``Gelu`` so they
    stay float and fast between quantised convolutions.

Every variant is checked with :func:`check_agreement`: random positive clicks and boxes on
the given images, mask IoU between the variant and the float32 original (the variant's mask
at the mask index the original chose). A variant is enabled when the mean IoU is at least
0.95 and the smallest at least 0.80 (:class:`Thresholds`). The verdict, figures, source
hash, variant hashes and the onnxruntime version are written to a JSON record beside the
variant, so the check is not repeated at each start; a changed source file (new SHA-256) or
another onnxruntime version makes the record stale and the variant is rebuilt and checked
again. Anything that goes wrong falls back to the original model with a reason.

Storage: ``<folder of the source file>/edgesam-optimized/<sha256 of the source>/`` when
that folder is writable, else ``<user cache>/optimized/<sha256 of the source>/``.

``onnx`` (and ``onnxruntime.quantization``, which needs it) are imported lazily, only when a
variant is built: they are not run-time dependencies of the plugin. Install them with
``pip install 'napari-edgesam[optimize]'``. Loading variants already built needs only
onnxruntime.

Package layout (one concept per module; the package re-exports their public names)::

    dependencies     lazy imports of onnx / onnxruntime.quantization
    graph_matching   finding patterns in ONNX graphs
    rewrites         the exact graph rewrites (upscaling, counts, pooling, GELU fusion)
    decoder_split    splitting a decoder into image and prompt parts, and merging them
    reparam          folding parallel depthwise branches (encoder-fold)
    prompt_batch     the prompt-batch rewrite (decoder-batch)
    variants         the variant kinds (VARIANTS) and their builders
    agreement        the agreement check (prompt sampling, mask IoU)
    records          the store on disk: folders, JSON records, VariantResult
    runtime          what the predictor loads (OptimizedEdgeSamModel, load_optimized, ...)
    orchestration    optimize_model: build, check, record, report
    prompt_batch_runtime  BatchDecoder, batch_decoder_for: running decoder-batch

Examples
--------
>>> report = optimize_model(model, [slice_a, slice_b])   # doctest: +SKIP
>>> print(report.summary())                              # doctest: +SKIP
>>> fast = load_optimized(model)                         # doctest: +SKIP
>>> Predictor(fast).set_image(slice_a)                   # doctest: +SKIP
"""

from __future__ import annotations

from ..errors import OptimizationUnavailableError
from .agreement import Agreement, Thresholds, check_agreement, check_batch_agreement
from .orchestration import OptimizationReport, optimize_model
from .prompt_batch import PromptBatchSummary, PromptBatchUnavailable, batch_prompts
from .prompt_batch_runtime import BatchDecoder, batch_decoder_for
from .records import VariantResult, find_variants
from .runtime import (
    OptimizedEdgeSamModel,
    load_optimized,
    load_variant,
    optimized_or_original,
)
from .variants import DEFAULT_VARIANTS, VARIANTS, Variant

# Importable from here as before the split, outside __all__ (``X as X``: a re-export): the
# constants, the building blocks, ModelError (raised by these functions) and _ort_version.
from ..errors import ModelError as ModelError
from .agreement import sample_prompts as sample_prompts
from .decoder_split import merge_parts as merge_parts
from .decoder_split import split_decoder as split_decoder
from .dependencies import INSTALL_HINT as INSTALL_HINT
from .dependencies import _ort_version as _ort_version
from .records import BESIDE_DIR as BESIDE_DIR
from .records import RECORD_FORMAT as RECORD_FORMAT
from .records import variant_folders as variant_folders
from .rewrites import fuse_gelu as fuse_gelu
from .rewrites import rewrite_count_casts as rewrite_count_casts
from .rewrites import rewrite_global_pool as rewrite_global_pool
from .rewrites import rewrite_upscaling as rewrite_upscaling
from .variants import PREFERENCE as PREFERENCE
from .variants import BuildContext as BuildContext

__all__ = [
    "optimized_or_original",
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "Agreement",
    "BatchDecoder",
    "PromptBatchSummary",
    "PromptBatchUnavailable",
    "batch_decoder_for",
    "batch_prompts",
    "check_batch_agreement",
    "OptimizationReport",
    "OptimizationUnavailableError",
    "OptimizedEdgeSamModel",
    "Thresholds",
    "Variant",
    "VariantResult",
    "check_agreement",
    "find_variants",
    "load_optimized",
    "load_variant",
    "optimize_model",
]
