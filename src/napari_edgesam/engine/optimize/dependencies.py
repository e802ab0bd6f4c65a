"""The optional dependencies of building variants: ``onnx`` and ``onnxruntime.quantization``.

Both are imported lazily, only when a variant is built, and a missing ``onnx`` raises
:class:`~napari_edgesam.engine.errors.OptimizationUnavailableError` with the command that
installs it. Loading variants already built needs only onnxruntime (:func:`_ort_version`
imports it, it is always installed).
"""

from __future__ import annotations

from ..errors import OptimizationUnavailableError

INSTALL_HINT = "pip install 'napari-edgesam[optimize]'  (or: pip install 'onnx>=1.15')"


def _import_onnx():
    """Import ``onnx`` lazily, with a clear message when it is missing."""
    try:
        import onnx
    except ImportError as exc:
        raise OptimizationUnavailableError(
            "Making optimised model variants needs the 'onnx' package, which is not "
            f"installed. Install it with: {INSTALL_HINT}. napari-edgesam works without it, "
            "with the original float32 models."
        ) from exc
    return onnx


def _import_quantization():
    """Import ``onnxruntime.quantization`` lazily (it needs ``onnx``)."""
    _import_onnx()
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - onnxruntime builds without it are rare
        raise OptimizationUnavailableError(
            "This onnxruntime build lacks onnxruntime.quantization, needed for int8 variants "
            f"({exc}). Install the standard onnxruntime wheel and {INSTALL_HINT}."
        ) from exc
    return quantization


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
