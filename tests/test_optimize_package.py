"""The ``engine.optimize`` package as a whole: its facade and its lazy ``onnx`` import.

``engine/optimize`` is cut into one module per concept; these tests hold the promises the
package makes to its callers, without ``onnx`` and without building anything: every name
importable from ``napari_edgesam.engine.optimize`` before the split still is, the missing-
``onnx`` error is the one class of ``engine.errors``, and importing the package (everything
``load_optimized`` needs) does not import ``onnx``.
"""

from __future__ import annotations

import subprocess
import sys

from napari_edgesam.engine import errors
from napari_edgesam.engine import optimize as opt

#: Names callers (src, tests, benchmarks, docs) import from the package.
FACADE = [
    "Agreement", "BESIDE_DIR", "BuildContext", "DEFAULT_VARIANTS", "INSTALL_HINT",
    "ModelError", "OptimizationReport", "OptimizationUnavailableError",
    "OptimizedEdgeSamModel", "PREFERENCE", "RECORD_FORMAT", "Thresholds", "VARIANTS",
    "Variant", "VariantResult", "check_agreement", "find_variants", "fuse_gelu",
    "load_optimized", "load_variant", "merge_parts", "optimize_model",
    "optimized_or_original", "rewrite_count_casts", "rewrite_global_pool",
    "rewrite_upscaling", "sample_prompts", "split_decoder", "variant_folders", "_ort_version",
]


def test_facade_keeps_every_name():
    missing = [n for n in FACADE if not hasattr(opt, n)]
    assert not missing
    assert all(hasattr(opt, n) for n in opt.__all__)


def test_one_optimization_unavailable_error():
    assert opt.OptimizationUnavailableError is errors.OptimizationUnavailableError
    assert issubclass(opt.OptimizationUnavailableError, ImportError)


def test_importing_the_package_does_not_import_onnx():
    code = (
        "import sys\n"
        "import napari_edgesam.engine.optimize as opt\n"
        "assert callable(opt.load_optimized) and callable(opt.optimize_model)\n"
        "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
