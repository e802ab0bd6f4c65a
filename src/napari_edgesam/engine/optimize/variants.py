"""Building variants: the kinds of optimised variant (:data:`VARIANTS`) and their builders.

A :class:`Variant` names a kind, its role (encoder or decoder) and a builder that writes a
contract-compatible ONNX file from the user's own float32 original (:class:`BuildContext`).
The built-in builders combine the exact rewrites (:mod:`.rewrites`, :mod:`.reparam`), the
decoder split (:mod:`.decoder_split`) and onnxruntime's int8 quantisation.

The encoder has two: ``encoder-fold`` (exact, float32: RepViT's parallel depthwise branches
folded, :func:`~.reparam.fold_parallel_depthwise`) and ``encoder-int8`` (static int8, built
on the folded graph). Both are built by default; int8 comes first in :data:`PREFERENCE`
(about twice as fast), so ``encoder-fold`` runs when int8 did not pass its check (or was
not built). A graph with nothing to fold gives ``encoder-fold`` no file: the builder raises
:class:`NotApplicable` ("0 folds ..."), reported as ``skipped`` with that reason.

``decoder-batch`` (role ``prompt-batch``, built by default) is the float32 decoder
rewritten to take a batch of prompt sets (:mod:`.prompt_batch`); it is used beside the
decoder variant by batch work (:mod:`.prompt_batch_runtime`), never in its place. A decoder
graph the rewrite does not recognise gives no file (``skipped``, with the node and why).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .decoder_split import merge_parts, split_decoder
from .dependencies import _import_onnx, _import_quantization
from .graph_matching import _remove_dead
from .prompt_batch import PromptBatchUnavailable, batch_prompts
from .reparam import fold_parallel_depthwise
from .rewrites import (
    _ort_offline,
    fuse_gelu,
    rewrite_count_casts,
    rewrite_global_pool,
    rewrite_upscaling,
)

#: Variants built by default.
DEFAULT_VARIANTS = ("decoder-int8", "decoder-batch", "encoder-fold", "encoder-int8")
#: When several variants of one role passed, the first one of this order is used: int8
#: (built on the folded encoder, so it has the fold's gain too) before the exact fold.
PREFERENCE = ("decoder-int8", "decoder-fast", "encoder-int8", "encoder-fold")


class NotApplicable(ModelError):
    """Raised by a builder when the variant would be the original itself (nothing in the
    graph to rewrite): the variant is reported ``skipped`` with the message as its reason,
    and no file nor record is written."""


@dataclass
class BuildContext:
    """What a variant builder gets.

    Attributes
    ----------
    source : pathlib.Path
        The original (float32) ONNX file of the variant's role.
    output : pathlib.Path
        Where to write the variant (a contract-compatible ONNX file).
    work_dir : pathlib.Path
        A scratch folder (deleted afterwards).
    calibration : callable
        ``calibration() -> list of ndarray (1, 3, 1024, 1024) float32``: the user's slices
        through the engine's preprocessing (computed on first use).
    log : callable
        ``log(message)`` for progress messages.
    image_output, prompt_output : pathlib.Path
        Decoder builders that split the decoder themselves write the two parts here (see
        :func:`split_decoder`); otherwise the framework splits ``output`` when the
        variant asks for it.
    """

    source: Path
    output: Path
    work_dir: Path
    calibration: Callable[[], list]
    log: Callable[[str], None]
    image_output: Path | None = None
    prompt_output: Path | None = None


@dataclass(frozen=True)
class Variant:
    """A kind of optimised variant.

    Attributes
    ----------
    kind : str
        Name, used for files and records (``"decoder-int8"``).
    role : {"encoder", "decoder", "prompt-batch"}
    build : callable
        ``build(ctx: BuildContext) -> dict`` writes ``ctx.output`` and returns details for
        the record.
    split : bool
        For decoders: also split the result into image and prompt parts.
    description : str
    """

    kind: str
    role: str
    build: Callable[[BuildContext], dict]
    split: bool = True
    description: str = ""


def _quantize_dynamic(src: Path, dst: Path) -> int:
    """Dynamic int8 quantisation of the weight MatMuls; returns how many were quantised."""
    onnx = _import_onnx()
    q = _import_quantization()
    with _quiet_quantizer():
        q.quantize_dynamic(
            str(src), str(dst), weight_type=q.QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    qm = onnx.load(str(dst))
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in qm.graph.node)


def _build_decoder(ctx: BuildContext, quantize: bool) -> dict:
    """Fold constants, rewrite the upscaling, split, quantise each part, merge."""
    onnx = _import_onnx()
    details: dict = {}
    folded = ctx.work_dir / "folded.onnx"
    _ort_offline(ctx.source, folded, "basic")
    model = onnx.load(str(folded))
    model, detail = rewrite_upscaling(model)
    model, detail2 = rewrite_count_casts(model)
    details["rewrites"] = ["onnxruntime basic offline optimisation (constant folding)", detail,
                           detail2]
    ctx.log(f"{detail}; {detail2}")
    parts = split_decoder(model)
    if quantize:
        details["quantization"] = "dynamic, int8 per-channel weights, MatMul"
    if parts is None:
        details["split"] = "not split (nothing prompt-independent)"
        if quantize:
            fp = ctx.work_dir / "float.onnx"
            onnx.save(model, str(fp))
            details["quantized_matmuls"] = _quantize_dynamic(fp, ctx.output)
        else:
            onnx.save(model, str(ctx.output))
        return details
    img, prm, boundary = parts
    details["split"] = f"split into image and prompt parts ({len(boundary)} boundary tensors)"
    ctx.log(f"split: {len(boundary)} tensor(s) computed once per image")
    onnx.save(img, str(ctx.image_output))
    onnx.save(prm, str(ctx.prompt_output))
    if quantize:
        n = 0
        for part in (ctx.image_output, ctx.prompt_output):
            fp = ctx.work_dir / ("float-" + part.name)
            os.replace(part, fp)
            n += _quantize_dynamic(fp, part)
        details["quantized_matmuls"] = n
        img, prm = onnx.load(str(ctx.image_output)), onnx.load(str(ctx.prompt_output))
    onnx.save(merge_parts(img, prm, boundary), str(ctx.output))
    return details


@contextlib.contextmanager
def _quiet_quantizer():
    """Hide onnxruntime.quantization's chatter (it logs through the root logger)."""

    def drop(record):
        return not (record.levelno < logging.ERROR
                    and "onnxruntime" in record.pathname.replace("\\", "/"))

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _build_encoder_fold(ctx: BuildContext) -> dict:
    """The exact float32 re-parameterisation (see :func:`fold_parallel_depthwise`)."""
    onnx = _import_onnx()
    model, summary = fold_parallel_depthwise(onnx.load(str(ctx.source)))
    text = summary.describe()
    ctx.log(text)
    if not summary.folds:
        raise NotApplicable(
            f"{text}: the encoder has no parallel depthwise branches to fold (already "
            "re-parameterised, or another export), so this variant would be the original "
            "itself; not offered as a speed-up")
    onnx.save(model, str(ctx.output))
    return {"rewrites": [text], "folds": summary.folds,
            "ops_before": summary.ops_before, "ops_after": summary.ops_after}


def _build_encoder_int8(ctx: BuildContext) -> dict:
    onnx = _import_onnx()
    q = _import_quantization()
    from onnxruntime.quantization import registry

    model = onnx.load(str(ctx.source))
    # quantise the folded graph: one int8 convolution per block instead of two and the Adds
    model, fold = fold_parallel_depthwise(model)
    ctx.log(fold.describe())
    model, n_pool = rewrite_global_pool(model)
    model, n_gelu = fuse_gelu(model)
    pre = ctx.work_dir / "fused.onnx"
    onnx.save(model, str(pre))
    tensors = ctx.calibration()
    if not tensors:
        raise ModelError("no calibration images")

    class _Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(tensors)

        def get_next(self):
            t = next(self._it, None)
            return None if t is None else {"image": t}

    ops = sorted(set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry) | {"Gelu"})
    ctx.log(f"calibrating the int8 encoder on {len(tensors)} slice(s)")
    with _quiet_quantizer():
        q.quantize_static(
            str(pre), str(ctx.output), _Reader(), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            per_channel=True, op_types_to_quantize=ops,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    qm = onnx.load(str(ctx.output))
    _remove_dead(qm)
    onnx.save(qm, str(ctx.output))
    return {
        "quantization": "static QDQ, uint8 activations (MinMax calibration), int8 "
                        "per-channel weights",
        "folds": fold.folds,
        "fused_gelu": n_gelu,
        "global_pools": n_pool,
        "calibration_slices": len(tensors),
    }


def _build_prompt_batch(ctx: BuildContext) -> dict:
    """The prompt-batched decoder (:func:`~.prompt_batch.batch_prompts`) of the float32
    original; a graph that does not match gives no variant, with the reason
    (``skipped``)."""
    onnx = _import_onnx()
    try:
        model, summary = batch_prompts(onnx.load(str(ctx.source)))
    except PromptBatchUnavailable as exc:
        raise NotApplicable(str(exc)) from exc
    text = summary.describe()
    ctx.log(text)
    onnx.save(model, str(ctx.output))
    return {"rewrites": [text], "reshapes": summary.reshapes, "expanded": summary.expanded,
            "batched_nodes": summary.batched_nodes, "shared_nodes": summary.shared_nodes}


#: The built-in variants, by kind.
VARIANTS: dict[str, Variant] = {
    "decoder-fast": Variant(
        "decoder-fast", "decoder", lambda ctx: _build_decoder(ctx, quantize=False),
        description="exact float32 rewrites (constant folding, channels-last upscaling) and "
                    "a prompt-independent part computed once per image",
    ),
    "decoder-int8": Variant(
        "decoder-int8", "decoder", lambda ctx: _build_decoder(ctx, quantize=True),
        description="decoder-fast with dynamic int8 quantisation of the weight MatMuls",
    ),
    "encoder-fold": Variant(
        "encoder-fold", "encoder", _build_encoder_fold, split=False,
        description="exact float32 re-parameterisation: RepViT's parallel depthwise branches "
                    "(3x3, 1x1, identity, BatchNorms) folded into one depthwise convolution",
    ),
    "encoder-int8": Variant(
        "encoder-int8", "encoder", _build_encoder_int8, split=False,
        description="static int8 (QDQ) quantisation, calibrated on your own images, of the "
                    "encoder with its parallel depthwise branches folded",
    ),
    # role "prompt-batch": used beside the decoder variant, by batch work (automatic
    # segmentation's seeds), never in its place; see .prompt_batch_runtime
    "decoder-batch": Variant(
        "decoder-batch", "prompt-batch", _build_prompt_batch, split=False,
        description="the float32 decoder rewritten to take many prompt sets of one length "
                    "in one run, the image side computed once per run",
    ),
}
