"""Orchestration: :func:`optimize_model` builds the requested variants, checks each against
the original, writes the records and reports (:class:`OptimizationReport`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CancelledError, ModelError, OptimizationUnavailableError
from ..session import EdgeSamModel
from .agreement import Agreement, Thresholds, _Reference, check_agreement, check_batch_agreement
from .decoder_split import _split_files
from .dependencies import _import_onnx, _ort_version
from .records import (
    RECORD_FORMAT,
    VariantResult,
    _file_list,
    _lookup,
    _source_sha,
    _target_folder,
    _write_record,
)
from .runtime import _model_with
from .variants import (
    DEFAULT_VARIANTS,
    PREFERENCE,
    VARIANTS,
    BuildContext,
    NotApplicable,
    Variant,
)

_log = logging.getLogger(__name__)


@dataclass
class OptimizationReport:
    """What :func:`optimize_model` did.

    Attributes
    ----------
    results : list of VariantResult
    combined : Agreement or None
        Agreement of all enabled variants used together (encoder and decoder variant), when
        both roles have one; information only.
    """

    results: list[VariantResult] = field(default_factory=list)
    combined: Agreement | None = None

    @property
    def enabled(self) -> list[str]:
        """Kinds that passed the check."""
        return [r.kind for r in self.results if r.enabled]

    def summary(self) -> str:
        """A few lines for the user."""
        lines = []
        for r in self.results:
            head = f"{r.kind}: {r.status}" + (" (remembered)" if r.cached else "")
            if r.agreement is not None:
                head += f" - {r.agreement.describe()}"
            if r.reason and not r.enabled:
                head += f" - {r.reason}"
            lines.append(head)
        if self.combined is not None:
            lines.append(f"all enabled variants together: {self.combined.describe()}")
        return "\n".join(lines)


def _preprocessed(images, mapping) -> list[np.ndarray]:
    from ..intensity import as_model_image
    from ..transforms import preprocess

    out = []
    for im in images:
        rgb, _ = as_model_image(im, mapping)
        out.append(preprocess(rgb)[0])
    return out


def optimize_model(
    model: EdgeSamModel,
    images,
    *,
    variants: Sequence[str | Variant] = DEFAULT_VARIANTS,
    mapping=None,
    check: bool = True,
    force: bool = False,
    thresholds: Thresholds | None = None,
    n_clicks: int = 8,
    n_boxes: int = 4,
    seed: int = 0,
    max_images: int = 4,
    progress=None,
) -> OptimizationReport:
    """Build optimised variants of ``model`` from its files and check them on ``images``.

    A variant whose record (beside the files) already fits the current source file and
    onnxruntime version is not built nor checked again (``cached=True``) unless ``force``.
    Building and checking errors are caught: the variant is reported ``failed`` with the
    reason, and the original keeps being used. A builder that finds nothing to rewrite
    (:class:`~.variants.NotApplicable`, e.g. ``encoder-fold`` with "0 folds") gives a
    ``skipped`` result with that reason, no file and no record (it is looked at again next
    time, which costs a graph load). Cancelling (``progress`` raising
    :class:`CancelledError`) leaves no record of the variant in progress.

    Parameters
    ----------
    model : EdgeSamModel
        The float32 original (an :class:`OptimizedEdgeSamModel` is traced to its source).
    images : sequence of ndarray, each (H, W), (H, W, 3) or (H, W, 4)
        A few of the user's slices (any real dtype): calibration of the int8 encoder and
        the agreement check. At most ``max_images`` are used (evenly spaced).
    variants : sequence of str or Variant
        Kinds from :data:`VARIANTS` (default :data:`DEFAULT_VARIANTS`) or custom
        :class:`Variant` objects.
    mapping : IntensityMapping, optional
        Stack-wide intensity mapping for the slices; default per slice.
    check : bool
        Run the agreement check (without it variants are ``unchecked`` and never enabled
        by :func:`load_optimized`).
    force : bool
        Rebuild and re-check even when a fitting record exists.
    thresholds : Thresholds, optional
        Default: mean IoU >= 0.95 and min IoU >= 0.80.
    n_clicks, n_boxes, seed : int
        Prompts per image for the check.
    max_images : int
    progress : callable, optional
        ``progress(message: str, done: int, total: int)``.

    Returns
    -------
    OptimizationReport

    Raises
    ------
    OptimizationUnavailableError
        When ``onnx`` is not installed (and something must be built).
    """
    source = getattr(model, "source", None) or model
    images = list(images)
    if not images:
        raise ModelError("optimize_model needs at least one image of yours")
    if len(images) > max_images:
        idx = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images = [images[i] for i in idx]
    specs = [VARIANTS[v] if isinstance(v, str) else v for v in variants]
    thresholds = thresholds or Thresholds()
    report = OptimizationReport()
    ref: _Reference | None = None
    calib: list | None = None

    def get_ref() -> _Reference:
        nonlocal ref
        if ref is None:
            ref = _Reference(source, images, mapping, n_clicks, n_boxes, seed)
        return ref

    def calibration() -> list:
        nonlocal calib
        if calib is None:
            calib = _preprocessed(images, mapping)
        return calib

    def say(msg, done=0, total=0):
        _log.info("%s", msg)
        if progress is not None:
            progress(msg, done, total)

    for spec in specs:
        t0 = time.perf_counter()
        if not force:
            prev = _lookup(source, spec.kind, spec.role)
            if prev.cached and (prev.status != "unchecked" or not check):
                report.results.append(prev)
                continue
        try:
            res = _build_and_check(source, spec, get_ref, calibration, check, thresholds,
                                   say, progress)
        except CancelledError:
            raise
        except OptimizationUnavailableError:
            raise
        except NotApplicable as exc:  # nothing to rewrite: no variant, and the reason why
            _log.info("optimised variant %s skipped: %s", spec.kind, exc)
            res = VariantResult(spec.kind, spec.role, "skipped", str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the original
            _log.warning("optimised variant %s failed: %s", spec.kind, exc, exc_info=True)
            res = VariantResult(spec.kind, spec.role, "failed",
                                f"{type(exc).__name__}: {exc}".strip()[:500])
        res.seconds = time.perf_counter() - t0
        report.results.append(res)
    # combined agreement of the enabled encoder + decoder variants (information)
    enabled = [r for r in report.results if r.enabled]
    # the encoder and decoder variant load_optimized would pick
    enabled.sort(key=lambda r: PREFERENCE.index(r.kind) if r.kind in PREFERENCE
                 else len(PREFERENCE))
    enabled = [r for r in enabled if r.role in ("encoder", "decoder")]
    if check and {r.role for r in enabled} == {"encoder", "decoder"}:
        try:
            both = _model_with(source, enabled)
            report.combined = check_agreement(source, both, images, thresholds=thresholds,
                                              _ref=get_ref())
        except Exception as exc:  # noqa: BLE001
            _log.warning("combined agreement check failed: %s", exc)
    return report


def _build_and_check(source: EdgeSamModel, spec: Variant, get_ref, calibration, check,
                     thresholds, say, progress) -> VariantResult:
    onnx = _import_onnx()
    role = spec.role
    src = Path(source.encoder_path if role == "encoder" else source.decoder_path)
    sha = _source_sha(source, role)
    folder = _target_folder(src, sha)
    kind = spec.kind
    for stale in (folder / f"{kind}.json",):
        with contextlib.suppress(OSError):
            stale.unlink()
    say(f"building {kind}")
    for name in (f"{kind}.onnx", f"{kind}.image.onnx", f"{kind}.prompt.onnx"):
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    work = Path(tempfile.mkdtemp(prefix=f"nes-{kind}-"))
    try:
        ctx = BuildContext(src, work / f"{kind}.onnx", work, calibration,
                           lambda m: say(f"{kind}: {m}"),
                           image_output=work / f"{kind}.image.onnx",
                           prompt_output=work / f"{kind}.prompt.onnx")
        details = dict(spec.build(ctx) or {})
        if not ctx.output.is_file():
            raise ModelError(f"the {kind} builder wrote no file")
        has_parts = ctx.image_output.is_file() and ctx.prompt_output.is_file()
        if role == "decoder" and spec.split and not has_parts:
            try:
                details["split"] = _split_files(ctx.output, ctx.image_output,
                                                ctx.prompt_output)
                has_parts = ctx.image_output.is_file() and ctx.prompt_output.is_file()
            except Exception as exc:  # noqa: BLE001 - the one-file variant still works
                details["split"] = f"not split: {exc}"
        produced = [ctx.output] + ([ctx.image_output, ctx.prompt_output] if has_parts else [])
        for p in produced:  # into place: copy to a temporary name, then an atomic rename
            tmp = folder / f".{p.name}.tmp"
            shutil.copyfile(p, tmp)
            os.replace(tmp, folder / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = _file_list(folder, kind)
    result = VariantResult(kind, role, "unchecked", "built; not checked", folder=folder,
                           files=files, details=details)
    if role == "prompt-batch":
        _check_prompt_batch(source, result, get_ref, check, thresholds, say, progress)
    else:
        _check_variant(source, result, files, details, get_ref, check, thresholds, say,
                       progress)
    from ..models import file_sha256

    rec = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "role": role,
        "status": result.status,
        "reason": result.reason,
        "description": spec.description,
        "source": {"path": str(src.resolve()), "sha256": sha},
        "files": files,
        "file_sha256": {name: file_sha256(folder / name) for name in files.values()},
        "agreement": None if result.agreement is None else asdict(result.agreement),
        "build": details,
        "onnxruntime": _ort_version(),
        "onnx": getattr(onnx, "__version__", "?"),
        "napari_edgesam": _package_version(),
        "machine": {"system": platform.system(), "machine": platform.machine(),
                    "processor": platform.processor()},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_record(folder, kind, rec)
    return result


def _package_version() -> str:
    try:
        from napari_edgesam import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "?"


def _check_variant(source, result: VariantResult, files, details, get_ref, check, thresholds,
                   say, progress) -> None:
    """Load an encoder or decoder variant (it must honour the contract) and check it."""
    kind = result.kind
    # the variant must load and honour the contract
    candidate = _model_with(source, [result])
    candidate.load()
    if check:
        ref = get_ref()
        say(f"checking {kind} against the original")
        ag = check_agreement(source, candidate, ref.images, thresholds=thresholds,
                             _ref=ref, progress=progress)
        if files.get("image"):
            # The one-file variant (used by other processes, e.g. batch workers) is the same
            # graph, but onnxruntime fuses across the split differently, and with int8 the
            # tiny float differences can flip quantisation steps: check it too.
            say(f"checking the one-file {kind} against the original")
            one = check_agreement(source, _model_with(source, [result], use_split=False),
                                  ref.images, thresholds=thresholds, _ref=ref,
                                  progress=progress)
            details["agreement_split"] = asdict(ag)
            details["agreement_one_file"] = asdict(one)
            ag = Agreement(
                mean_iou=min(ag.mean_iou, one.mean_iou), min_iou=min(ag.min_iou, one.min_iou),
                same_choice=min(ag.same_choice, one.same_choice), n_prompts=ag.n_prompts,
                n_images=ag.n_images, passed=ag.passed and one.passed,
                thresholds=ag.thresholds)
        result.agreement = ag
        _verdict(result, ag, thresholds)


def _check_prompt_batch(source, result: VariantResult, get_ref, check, thresholds, say,
                        progress) -> None:
    """Load the batched decoder and check it against one-by-one runs of the original."""
    from .prompt_batch_runtime import BatchDecoder

    bd = BatchDecoder(result.path("model"), source)
    bd.session  # noqa: B018 - it must load
    if not check:
        return
    ref = get_ref()
    say(f"checking {result.kind} against the original, one prompt set per run")
    ag = check_batch_agreement(bd, ref.images, thresholds=thresholds, _ref=ref,
                               progress=progress)
    result.agreement = ag
    _verdict(result, ag, thresholds)


def _verdict(result: VariantResult, ag: Agreement, thresholds: Thresholds) -> None:
    if ag.passed:
        result.status, result.reason = "enabled", f"agrees with the original: {ag.describe()}"
    else:
        result.status = "refused"
        result.reason = (
            f"does not agree closely enough with the original ({ag.describe()}; needs "
            f"mean >= {thresholds.mean_iou}, min >= {thresholds.min_iou}); the original "
            "is used")
