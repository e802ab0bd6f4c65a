"""Batch automatic segmentation of TIFF files, resumable, locally or on dask.

One label TIFF (plus a JSON sidecar) per input TIFF, in an output folder. The unit of work
is one input file: a task reads its file lazily (memory-mapped or page by page), segments
every slice with :mod:`.automatic` (instances linked in 3D along Z), and writes its outputs
atomically (temporary name, then rename). A failed file never stops the others.

Where the tasks run:

- default: ``workers`` local worker processes (:class:`.worker_process.WorkerPool`, a
  process pool whose workers never re-import the calling script), one file at a time
  each, files started in the order given;
- ``scheduler="synchronous"``: in this process, on dask's synchronous scheduler
  (debugging, small jobs, the napari widget);
- ``scheduler="tcp://host:8786"`` (any dask.distributed scheduler address) or a
  ``distributed.Client``: the same tasks run on that cluster, unchanged.

Tasks carry the model's *file paths* (:class:`ModelSpec`), never an onnxruntime session: each
worker process builds its session once, on first use, and keeps it in a per-process cache
keyed by the paths (:func:`predictor_for`). On a cluster the model files, inputs and output
folder must be visible at the same paths on every worker (a shared file system).

Resuming: a sidecar records a fingerprint of the parameters and model hashes and one of the
input (name, size, modification time). A rerun skips inputs whose label TIFF and sidecar
exist and match; outputs of a killed run are either complete (with their sidecar) or absent.

Frames: label images are ``(..., Y, X)`` arrays; seeds and clicks are ``(x, y) = (col, row)``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..engine.errors import CancelledError, EdgeSamError, InvalidInputError, ModelError
from .automatic import AutoParams, label_dtype, segment_stack, stack_statistics
from .tiff_io import LazyTiff, TiffMetadata, rgb_axis, write_tiff_atomic

__all__ = [
    "AxisPlan",
    "BatchParams",
    "BatchSummary",
    "FileResult",
    "ModelSpec",
    "SIDECAR_FORMAT",
    "collect_inputs",
    "output_paths",
    "pixel_sizes",
    "plan_axes",
    "predictor_for",
    "process_file",
    "run_batch",
]

#: Identifies our sidecar files (and their version).
SIDECAR_FORMAT = "napari-edgesam-batch/1"
#: Suffix of label TIFFs and sidecars: ``<stem>_labels.tif`` / ``<stem>_labels.json``.
OUTPUT_SUFFIX = "_labels"
#: Run log in the output folder: one JSON line per input per run.
LOG_NAME = "napari-edgesam-batch.log.jsonl"
#: Label volumes larger than this are kept in a scratch memmap on disk, not in memory.
IN_MEMORY_LABELS_BYTES = 256 * 2**20
TIFF_SUFFIXES = (".tif", ".tiff")
#: Tile side of label TIFFs whose slices are larger than ``IN_MEMORY_LABELS_BYTES``.
OUTPUT_TILE = 1024


# ---------------------------------------------------------------------------------------
# Parameters, model, results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchParams:
    """What to segment in each file and how (everything recorded in the sidecar).

    Attributes
    ----------
    automatic : AutoParams
        Seeds, filters, overlap resolution and 3D linking.
    channel : int or None
        Channel to segment when the file has a channel axis that is not colour (see
        :func:`.tiff_io.rgb_axis`: an ``S`` axis, or a last ``C`` axis, of 3 or 4 is colour).
        Without it an RGB file is segmented as colour; other multichannel files fail with a
        message asking for it.
    z_axis, t_axis : str or None
        Which axis of the file is Z (slices linked into 3D objects) and which is T (frames
        segmented independently): an axis letter of the file (``"Q"``, ``"I"``, ``"T"``...)
        or its position as a string (``"0"``). Default: ``Z`` is Z, ``T`` is T, and a single
        other stack axis (e.g. ``Q`` of a TIFF without metadata) is Z. Saying
        ``z_axis="T"`` links objects over time instead.
    contrast : (float, float) or None
        Intensity limits mapped to 0..255; default identity for uint8, else percentiles
        0.5-99.8 over the whole file.
    """

    automatic: AutoParams = AutoParams()
    channel: int | None = None
    z_axis: str | None = None
    t_axis: str | None = None
    contrast: tuple[float, float] | None = None

    def __post_init__(self):
        if self.channel is not None and int(self.channel) < 0:
            raise InvalidInputError(f"channel must be >= 0, got {self.channel}")
        for name in ("z_axis", "t_axis"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, str(v))
        if self.z_axis is not None and self.z_axis == self.t_axis:
            raise InvalidInputError(f"the same axis {self.z_axis!r} cannot be both Z and T")
        if self.contrast is not None:
            lo, hi = (float(v) for v in self.contrast)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise InvalidInputError(f"contrast limits must be finite with HIGH > LOW: "
                                        f"{self.contrast}")
            object.__setattr__(self, "contrast", (lo, hi))

    def to_dict(self) -> dict:
        """All parameters, JSON-serialisable."""
        return {
            "automatic": self.automatic.to_dict(),
            "channel": self.channel,
            "z_axis": self.z_axis,
            "t_axis": self.t_axis,
            "contrast": list(self.contrast) if self.contrast else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BatchParams:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        auto = AutoParams.from_dict(data.pop("automatic", {}) or {})
        contrast = data.pop("contrast", None)
        return cls(automatic=auto, contrast=tuple(contrast) if contrast else None, **data)


@dataclass(frozen=True)
class ModelSpec:
    """A model as file paths (picklable, cheap to send to workers).

    Attributes
    ----------
    encoder, decoder : str
        Absolute paths of the ONNX files, valid on every worker.
    name : str
    encoder_sha256, decoder_sha256 : str
        Recorded in sidecars; part of the resume fingerprint.
    providers : str or None
        onnxruntime execution providers (``"cuda"``...), as for :class:`EdgeSamModel`.
    num_threads : int or None
        onnxruntime threads per worker process; default: the cores of the worker divided by
        its concurrent tasks.
    """

    encoder: str
    decoder: str
    name: str = "custom"
    encoder_sha256: str = ""
    decoder_sha256: str = ""
    providers: str | None = None
    num_threads: int | None = None

    @classmethod
    def from_model(cls, model, *, num_threads: int | None = None) -> ModelSpec:
        """Describe an :class:`EdgeSamModel` by its paths (hashes are memoised, cheap).

        Raises
        ------
        ModelNotAvailableError
            A file is missing.
        """
        from ..engine.errors import ModelNotAvailableError
        from ..engine.models import file_sha256

        enc, dec = Path(model.encoder_path).resolve(), Path(model.decoder_path).resolve()
        for role, p in (("encoder", enc), ("decoder", dec)):
            if not p.is_file():
                raise ModelNotAvailableError(f"{role} file not found: {p}")
        providers = model.providers
        if isinstance(providers, (list, tuple)):
            providers = ",".join(providers)
        return cls(
            encoder=str(enc), decoder=str(dec), name=model.name,
            encoder_sha256=model.identity, decoder_sha256=file_sha256(dec),
            providers=providers,
            num_threads=num_threads if num_threads is not None else model.num_threads,
        )

    def with_threads(self, num_threads: int | None) -> ModelSpec:
        """A copy with another thread count."""
        return ModelSpec(self.encoder, self.decoder, self.name, self.encoder_sha256,
                         self.decoder_sha256, self.providers, num_threads)

    def to_dict(self) -> dict:
        """For the sidecar (file names, not the machine-specific folders)."""
        return {
            "name": self.name,
            "encoder": Path(self.encoder).name,
            "decoder": Path(self.decoder).name,
            "encoder_sha256": self.encoder_sha256,
            "decoder_sha256": self.decoder_sha256,
        }


@dataclass
class FileResult:
    """What happened to one input.

    Attributes
    ----------
    input : str
    status : {"done", "skipped", "failed", "cancelled"}
    output, sidecar : str or None
        Paths of the label TIFF and its sidecar (set for done and skipped).
    n_objects : int or None
    seconds : float
        Wall time spent on the file (0 for skipped).
    error : str or None
        One-line reason for failed inputs.
    worker : str
        ``host:pid`` of the process that did the work.
    slices : int
        Number of 2D slices segmented.
    """

    input: str
    status: str
    output: str | None = None
    sidecar: str | None = None
    n_objects: int | None = None
    seconds: float = 0.0
    error: str | None = None
    worker: str = ""
    slices: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BatchSummary:
    """All results of a batch run, in input order.

    Attributes
    ----------
    results : list of FileResult
    out_dir : Path
    seconds : float
    cancelled : bool
        The run was cancelled (some inputs are ``"cancelled"``).
    """

    results: list[FileResult]
    out_dir: Path
    seconds: float = 0.0
    cancelled: bool = False

    def _with(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def succeeded(self) -> list[FileResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[FileResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[FileResult]:
        return self._with("failed")

    @property
    def not_done(self) -> list[FileResult]:
        """Inputs left undone by a cancellation."""
        return self._with("cancelled")

    @property
    def ok(self) -> bool:
        """True when every input has a valid output (done now or skipped as done before)."""
        return all(r.status in ("done", "skipped") for r in self.results)

    def format(self) -> str:
        """A human-readable summary: one line per failure, then the counts."""
        lines = [f"FAILED {r.input}: {r.error}" for r in self.failed]
        slices = sum(r.slices for r in self.succeeded)
        busy = sum(r.seconds for r in self.succeeded)
        rate = f", {slices / busy:.2f} slices/s per worker" if busy > 0 and slices else ""
        lines.append(
            f"{len(self.succeeded)} succeeded, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed"
            + (f", {len(self.not_done)} cancelled" if self.not_done else "")
            + f" in {self.seconds:.1f} s{rate}; outputs in {self.out_dir}"
        )
        return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------


def _is_tiff(p: Path) -> bool:
    return p.suffix.lower() in TIFF_SUFFIXES


def collect_inputs(inputs: Iterable, *, exclude_dir=None) -> list[Path]:
    """Expand files, folders and glob patterns into a list of input files.

    Parameters
    ----------
    inputs : iterable of str or Path
        A file (taken as is), a folder (its ``*.tif``/``*.tiff`` files, not recursive, hidden
        files skipped) or a glob pattern (``*``, ``?``, ``[``; ``**`` recurses; only files).
    exclude_dir : path, optional
        The output folder: label images written there (``*_labels.tif``) are left out, so
        the output folder may be the input folder.

    Returns
    -------
    list of Path
        Absolute, without duplicates, in the order given (folders and globs sorted).

    Raises
    ------
    InvalidInputError
        An input that does not exist or a pattern that matches nothing.
    """
    out: list[Path] = []
    seen = set()
    excl = Path(exclude_dir).resolve() if exclude_dir is not None else None

    def add(p: Path):
        p = p.resolve()
        if p in seen or (excl is not None and p.parent == excl
                         and _stem(p).endswith(OUTPUT_SUFFIX)):
            return
        seen.add(p)
        out.append(p)

    for item in inputs:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_file():
            add(p)
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and _is_tiff(f) and not f.name.startswith("."):
                    add(f)
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise InvalidInputError(f"no file matches {text!r}")
            for f in files:
                add(f)
        else:
            raise InvalidInputError(f"input not found: {text}")
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_paths(input_path, out_dir) -> tuple[Path, Path]:
    """``(<out_dir>/<stem>_labels.tif, <out_dir>/<stem>_labels.json)`` for an input."""
    stem = _stem(Path(input_path)) + OUTPUT_SUFFIX
    out_dir = Path(out_dir)
    return out_dir / f"{stem}.tif", out_dir / f"{stem}.json"


def _fingerprint(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _params_fingerprint(params: BatchParams, model: ModelSpec) -> str:
    return _fingerprint({"parameters": params.to_dict(),
                         "model": [model.encoder_sha256, model.decoder_sha256],
                         "format": SIDECAR_FORMAT})


def _input_identity(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None
    return data


def _existing_state(path: Path, out_dir: Path, params_fp: str) -> tuple[str, dict | None]:
    """``("done" | "conflict" | "todo", sidecar)`` for an input.

    done: label TIFF and sidecar exist and match the parameters and the input's size and
    mtime, and the label TIFF's SHA-256 is the one the sidecar recorded (a file emptied or
    torn by a power cut is redone); conflict: a sidecar of *other* parameters or model
    exists; todo: anything else (no output, a half-finished one, or an input that changed
    since).
    """
    out_tif, out_json = output_paths(path, out_dir)
    side = _read_sidecar(out_json) if out_json.exists() else None
    if side is None:
        return "todo", None
    if side.get("parameters_fingerprint") != params_fp:
        return "conflict", side
    try:
        ident = _input_identity(path)
        out_ok = out_tif.is_file() and out_tif.stat().st_size == side["output"]["bytes"]
    except (OSError, KeyError, TypeError):
        return "todo", side
    if side.get("status") == "done" and side.get("input", {}).get("identity") == ident and out_ok:
        want = side["output"].get("sha256")
        if want is not None:  # sidecars of earlier versions have sizes only
            from ..engine.models import file_sha256

            try:
                if file_sha256(out_tif, use_memo=False) != want:
                    return "todo", side
            except OSError:
                return "todo", side
        return "done", side
    return "todo", side


# ---------------------------------------------------------------------------------------
# Axes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisPlan:
    """How the axes of one file are used.

    Attributes
    ----------
    axes : str
        The file's axes (tifffile letters).
    shape : tuple of int
    y, x : int
        Positions of the spatial axes.
    z, t : int or None
        Positions of the axis linked in 3D and of the independent frame axis.
    channel_axis : int or None
        Position of the channel/sample axis (size > 1).
    channel : int or None
        The channel taken from it (None with ``rgb``).
    rgb : bool
        The channel axis holds RGB(A) colour, used whole.
    out_axes : str
        Axes of the label image: a subset of ``"TZYX"`` in that order.
    out_shape : tuple of int
    """

    axes: str
    shape: tuple
    y: int
    x: int
    z: int | None
    t: int | None
    channel_axis: int | None
    channel: int | None
    rgb: bool
    out_axes: str
    out_shape: tuple

    @property
    def n_z(self) -> int:
        return self.shape[self.z] if self.z is not None else 1

    @property
    def n_t(self) -> int:
        return self.shape[self.t] if self.t is not None else 1

    def index(self, t: int, z: int) -> tuple:
        """Index into the file's array of the slice at frame ``t``, depth ``z``."""
        idx: list = [0] * len(self.shape)
        idx[self.y] = slice(None)
        idx[self.x] = slice(None)
        if self.channel_axis is not None:
            idx[self.channel_axis] = slice(None) if self.rgb else int(self.channel)
        if self.z is not None:
            idx[self.z] = int(z)
        if self.t is not None:
            idx[self.t] = int(t)
        return tuple(idx)

    def plane(self, reader: LazyTiff, t: int, z: int) -> np.ndarray:
        """One slice as ``(Y, X)`` or ``(Y, X, 3)`` (RGB, alpha dropped): a view of a
        memory-mapped file (read window by window by tiled segmentation), else a copy."""
        arr = reader.view(self.index(t, z))
        kept = sorted([self.y, self.x] + ([self.channel_axis] if self.rgb else []))
        order = [kept.index(self.y), kept.index(self.x)]
        if self.rgb:
            order.append(kept.index(self.channel_axis))
        arr = np.transpose(arr, order)
        return arr[..., :3] if self.rgb else arr


def _find_axis(spec: str, axes: str, what: str) -> int:
    s = spec.strip()
    if s.lstrip("-").isdigit():
        i = int(s)
        if not -len(axes) <= i < len(axes):
            raise InvalidInputError(f"{what} {s} is outside the file's axes {axes!r}")
        return i % len(axes)
    matches = [i for i, a in enumerate(axes) if a == s.upper()]
    if len(matches) != 1:
        raise InvalidInputError(f"{what} {s!r} is not one of the file's axes {axes!r}")
    return matches[0]


def plan_axes(axes: str, shape, *, channel: int | None = None,
              z_axis: str | None = None, t_axis: str | None = None,
              name: str = "input") -> AxisPlan:
    """Decide how each axis of a file is used (see :class:`BatchParams` for the rules).

    Without ``channel``, the channel axis is used whole as colour when it is the colour axis
    of :func:`~napari_edgesam.workflows.tiff_io.rgb_axis` (an ``S`` axis, or a last ``C``
    axis, of size 3 or 4); any other channel axis of size > 1 needs ``channel``.

    Raises
    ------
    InvalidInputError
        Ambiguous or unsupported axes; the message names the option to use.
    """
    shape = tuple(int(n) for n in shape)
    axes = str(axes).upper()
    if len(axes) != len(shape):
        raise InvalidInputError(f"{name}: axes {axes!r} do not match shape {shape}")
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise InvalidInputError(f"{name}: axes {axes!r} lack one Y and one X axis")
    y, x = axes.index("Y"), axes.index("X")
    z = _find_axis(z_axis, axes, "--z-axis") if z_axis is not None else None
    t = _find_axis(t_axis, axes, "--t-axis") if t_axis is not None else None
    for pos, what in ((z, "--z-axis"), (t, "--t-axis")):
        if pos is not None and pos in (y, x):
            raise InvalidInputError(f"{name}: {what} cannot be a spatial axis (Y or X)")
    if z is not None and z == t:
        raise InvalidInputError(f"{name}: the same axis cannot be both Z and T")
    # Channel axis: C or S of size > 1 not claimed as Z/T.
    chans = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1 and i not in (z, t)]
    if len(chans) > 1:
        raise InvalidInputError(f"{name}: two channel axes in {axes!r} (shape {shape}) are not "
                                "supported")
    channel_axis = chans[0] if chans else None
    rgb = False
    if channel_axis is not None:
        n = shape[channel_axis]
        if channel is not None:
            if not 0 <= channel < n:
                raise InvalidInputError(f"{name}: --channel {channel} is outside 0..{n - 1} "
                                        f"(axes {axes}, shape {shape})")
        elif rgb_axis(axes, shape) == channel_axis:
            rgb = True
        else:
            raise InvalidInputError(
                f"{name} has {n} channels (axis {axes[channel_axis]}, axes {axes}, shape "
                f"{shape}); pass --channel C with C in 0..{n - 1}"
            )
    elif channel not in (None, 0):
        raise InvalidInputError(f"{name} has no channel axis (axes {axes}); --channel "
                                f"{channel} cannot be used")
    claimed = {y, x, channel_axis, z, t}
    if z is None and "Z" in axes and axes.index("Z") not in claimed:
        z = axes.index("Z")
    if t is None and "T" in axes and axes.index("T") not in claimed | {z}:
        t = axes.index("T")
    claimed = {y, x, channel_axis, z, t}
    left = [i for i, n in enumerate(shape) if i not in claimed and n > 1]
    if left and z is None:
        z = left.pop(0)
    if left:
        a = axes[left[0]]
        raise InvalidInputError(
            f"{name}: axis {a!r} (size {shape[left[0]]}, axes {axes}) is not understood; say "
            f"which axis is Z (--z-axis) and which is T (--t-axis)"
        )
    out_axes, out_shape = "", []
    if t is not None:
        out_axes += "T"
        out_shape.append(shape[t])
    if z is not None:
        out_axes += "Z"
        out_shape.append(shape[z])
    out_axes += "YX"
    out_shape += [shape[y], shape[x]]
    return AxisPlan(axes, shape, y, x, z, t, channel_axis,
                    None if rgb else (channel if channel_axis is not None else None), rgb,
                    out_axes, tuple(out_shape))


class _Planes:
    """The slices of one frame ``t`` (or of all frames, ``t=None``), read on access."""

    def __init__(self, reader: LazyTiff, plan: AxisPlan, t: int | None):
        self.reader, self.plan, self.t = reader, plan, t

    def __len__(self) -> int:
        return self.plan.n_z * (self.plan.n_t if self.t is None else 1)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.t is None:
            t, z = divmod(int(i), self.plan.n_z)
        else:
            t, z = self.t, int(i)
        return self.plan.plane(self.reader, t, z)


# ---------------------------------------------------------------------------------------
# Workers: per-process model cache and the per-file task
# ---------------------------------------------------------------------------------------

_PREDICTORS: dict = {}
_PREDICTORS_LOCK = threading.Lock()


def _worker_threads() -> int | None:
    """onnxruntime threads for a dask.distributed worker: its cores over its task slots."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    from ..engine.session import default_num_threads

    slots = getattr(getattr(worker, "state", worker), "nthreads", None) or 1
    return max(1, default_num_threads() // int(slots))


def predictor_for(spec: ModelSpec):
    """This process's :class:`Predictor` for a model, created on first use and kept.

    The onnxruntime sessions are created here, in the process that uses them (a dask
    worker), never pickled. Keyed by the model's paths, providers and threads.
    """
    from ..engine import EdgeSamModel, Predictor

    key = (spec.encoder, spec.decoder, spec.providers, spec.num_threads)
    with _PREDICTORS_LOCK:
        pred = _PREDICTORS.get(key)
        if pred is None:
            sha = {k: v for k, v in (("encoder", spec.encoder_sha256),
                                     ("decoder", spec.decoder_sha256)) if v}
            model = EdgeSamModel(spec.encoder, spec.decoder, name=spec.name,
                                 providers=spec.providers,
                                 num_threads=spec.num_threads or _worker_threads(), sha256=sha)
            model.load()
            pred = _PREDICTORS[key] = Predictor(model, cache=None)
    return pred


def _physical_sizes(meta: TiffMetadata) -> dict:
    """OME physical sizes for the output, from OME or ImageJ/TIFF calibration."""
    phys = dict(meta.physical_size or {})
    if phys:
        return phys
    ij = meta.imagej or {}
    unit = ij.get("unit")
    if unit and meta.resolution:
        u = "µm" if unit in ("um", "micron", "microns", "\\u00B5m") else unit
        try:
            (xn, xd), (yn, yd) = meta.resolution
            phys.update({"PhysicalSizeX": xd / xn, "PhysicalSizeXUnit": u,
                         "PhysicalSizeY": yd / yn, "PhysicalSizeYUnit": u})
        except ZeroDivisionError:
            pass
        if "spacing" in ij:
            phys.update({"PhysicalSizeZ": float(ij["spacing"]), "PhysicalSizeZUnit": u})
    if "finterval" in ij:
        phys.update({"TimeIncrement": float(ij["finterval"]), "TimeIncrementUnit": "s"})
    return phys


#: Micrometres per unit, for the length units TIFF metadata uses.
_MICROMETRES = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "å": 1e-4, "angstrom": 1e-4, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "in": 25400.0, "inch": 25400.0,
}


def pixel_sizes(meta: TiffMetadata) -> dict[str, float]:
    """Physical pixel size per axis, in micrometres, as far as a file's metadata says.

    Sources, first found wins per axis: OME ``PhysicalSizeX/Y/Z`` (with their units), ImageJ
    calibration (resolution tags in the ImageJ ``unit``, ``spacing`` for Z), then the TIFF
    resolution tags when their ``ResolutionUnit`` is inch or centimetre. Sizes in units
    that are not lengths (ImageJ's ``pixel``...) are left out.

    Parameters
    ----------
    meta : TiffMetadata
        As read by :class:`~napari_edgesam.workflows.tiff_io.LazyTiff`.

    Returns
    -------
    dict
        Some of ``"X"``, ``"Y"``, ``"Z"`` -> size in micrometres (> 0).
    """
    out: dict[str, float] = {}
    phys = _physical_sizes(meta)
    for axis in "XYZ":
        value = phys.get(f"PhysicalSize{axis}")
        factor = _MICROMETRES.get(str(phys.get(f"PhysicalSize{axis}Unit", "µm")).strip().lower())
        try:
            size = float(value) * factor if value is not None and factor else 0.0
        except (TypeError, ValueError):
            size = 0.0
        if math.isfinite(size) and size > 0:
            out[axis] = size
    if meta.resolution and meta.resolution_unit in (2, 3) and not ("X" in out and "Y" in out):
        per_unit = 25400.0 if meta.resolution_unit == 2 else 1e4
        try:
            (xn, xd), (yn, yd) = meta.resolution
            if xn > 0 and xd > 0 and yn > 0 and yd > 0:
                out.setdefault("X", per_unit * xd / xn)
                out.setdefault("Y", per_unit * yd / yn)
        except (TypeError, ValueError):
            pass
    return out


def _padded(block: np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    """``block`` as ``dtype`` in the top-left corner of a ``size`` x ``size`` tile of 0."""
    tile = np.zeros((size, size), dtype)
    tile[:block.shape[0], :block.shape[1]] = block
    return tile


def _write_labels(path: Path, labels: np.ndarray, out_axes: str, dtype: np.dtype,
                  meta: TiffMetadata) -> str:
    """Write the label image atomically with the input's calibration; returns the format."""
    kwargs: dict = {"compression": "zlib", "software": "napari-edgesam"}
    if meta.resolution:
        kwargs["resolution"] = tuple(tuple(r) for r in meta.resolution)
        if meta.resolution_unit is not None:
            kwargs["resolutionunit"] = meta.resolution_unit
    if meta.is_imagej and dtype == np.uint16:
        fmt = "imagej"
        kwargs["imagej"] = True
        kwargs["metadata"] = {"axes": out_axes, **(meta.imagej or {})}
    else:
        fmt = "ome"
        kwargs["ome"] = True
        kwargs["metadata"] = {"axes": out_axes, **_physical_sizes(meta)}
    lead = labels.shape[:-2]
    h, w = labels.shape[-2:]
    if labels.dtype == dtype and not isinstance(labels, np.memmap):
        data = labels
    elif labels.nbytes <= IN_MEMORY_LABELS_BYTES:
        data = np.asarray(labels, dtype=dtype)
    elif h * w * dtype.itemsize <= IN_MEMORY_LABELS_BYTES:  # page by page from the memmap
        data = (np.asarray(labels[i], dtype=dtype) for i in np.ndindex(*lead))
        kwargs.update(shape=labels.shape, dtype=dtype)
    else:  # slices larger than that: a tiled TIFF, written tile by tile
        t = OUTPUT_TILE
        data = (_padded(labels[i][r:r + t, c:c + t], t, dtype)
                for i in np.ndindex(*lead) for r in range(0, h, t) for c in range(0, w, t))
        kwargs.update(shape=labels.shape, dtype=dtype, tile=(t, t))
        if fmt == "imagej":  # ImageJ hyperstacks cannot be tiled
            fmt = "ome"
            kwargs.pop("imagej")
            kwargs.update(ome=True, metadata={"axes": out_axes, **_physical_sizes(meta)})
    write_tiff_atomic(path, data, overwrite=True, **kwargs)
    return fmt


def _atomic_json(path: Path, data: dict) -> None:
    from ..engine.paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")


def process_file(path, out_dir, model: ModelSpec, params: BatchParams, *,
                 overwrite: bool = False, stop_file: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> FileResult:
    """Segment one input file and write its label TIFF and sidecar (the unit of work).

    Runs in whatever process dask chooses. Never raises for a bad input: failures come back
    as ``FileResult(status="failed", error=...)``.

    Parameters
    ----------
    path : path
        Input TIFF (never modified).
    out_dir : path
        Existing output folder.
    model : ModelSpec
    params : BatchParams
    overwrite : bool
        Process even if a matching output exists; replace outputs of other parameters.
    stop_file : str, optional
        Cooperative cancellation: when this file exists the task stops between decoder
        calls and returns ``status="cancelled"`` without writing anything.
    progress : callable(done, total), optional
        Slices of this file segmented so far and in all (``total`` is all frames times all
        depths); called once with ``done=0`` when the file is opened, then after every
        slice, in the process running the task.

    Returns
    -------
    FileResult
    """
    t0 = time.perf_counter()
    from ..engine.models import file_sha256

    path, out_dir = Path(path), Path(out_dir)
    worker = _worker_name()
    out_tif, out_json = output_paths(path, out_dir)

    from ..engine.cancel import CancelToken

    token = CancelToken(stop_file=stop_file) if stop_file else CancelToken()

    def cancel() -> bool:
        return token.cancelled

    def result(status, **kw):
        return FileResult(str(path), status, seconds=time.perf_counter() - t0, worker=worker,
                          **kw)

    scratch = None
    # Whoever holds <output>.lock owns the output's temporary files: another run writing
    # the same output (two runs on one folder) is refused; leftovers of a killed run (its
    # lock died with it) are swept.
    from ..engine.paths import FileLock

    lock = FileLock(out_dir / f".{out_tif.name}.lock")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not lock.acquire(wait=False):
            return result("failed", error=f"another run is writing {out_tif.name} now")
    except OSError as exc:
        return result("failed", error=f"cannot write to {out_dir}: {exc.strerror or exc}")
    try:
        _leftovers(out_dir, path)
        if cancel():
            return result("cancelled")
        params_fp = _params_fingerprint(params, model)
        state, _ = _existing_state(path, out_dir, params_fp)
        if not overwrite:  # checked again here: another run may have finished it meanwhile
            if state == "done":
                return FileResult(str(path), "skipped", str(out_tif), str(out_json),
                                  worker=worker)
            if state == "conflict":
                return result("failed", error=f"{out_json.name} exists from other parameters "
                                              "or another model; pass --overwrite or use "
                                              "another output folder")
        started = _now()
        identity = _input_identity(path)
        predictor = predictor_for(model)
        with LazyTiff(path) as reader:
            plan = plan_axes(reader.axes, reader.shape,
                             channel=params.channel, z_axis=params.z_axis,
                             t_axis=params.t_axis, name=path.name)
            auto = params.automatic
            mapping = None
            if params.contrast is not None:
                from ..engine.intensity import stack_mapping

                mapping = stack_mapping(None, "contrast", rgb=plan.rgb,
                                        limits=params.contrast)
            mapping, threshold = stack_statistics(_Planes(reader, plan, None), params=auto,
                                                  mapping=mapping, rgb=plan.rgb)
            n_t, n_z = plan.n_t, plan.n_z
            h, w = plan.shape[plan.y], plan.shape[plan.x]
            nbytes = n_t * n_z * h * w * 4
            if nbytes > IN_MEMORY_LABELS_BYTES:
                scratch = out_dir / f".{out_tif.name}.{uuid.uuid4().hex[:8]}.scratch.npy"
                buf = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint32,
                                                shape=(n_t, n_z, h, w))
            else:
                buf = np.zeros((n_t, n_z, h, w), np.uint32)
            n_objects = 0
            calls = 0
            n_slices = n_t * n_z
            if progress is not None:
                progress(0, n_slices)
            for t in range(n_t):
                res = segment_stack(
                    predictor, _Planes(reader, plan, t), params=auto, mapping=mapping,
                    threshold=threshold, rgb=plan.rgb, link=True, out=buf[t], cancel=cancel,
                    progress=(None if progress is None else
                              lambda done, _n, t=t: progress(t * n_z + done, n_slices)))
                n_objects = max(n_objects, res.n_objects)
                calls += res.decoder_calls
            meta = reader.metadata
            in_axes, in_shape, in_dtype = reader.axes, reader.shape, str(reader.dtype)
        labels = buf.reshape(plan.out_shape)
        dtype = label_dtype(n_objects)
        fmt = _write_labels(out_tif, labels, plan.out_axes, dtype, meta)
        if scratch is not None:
            del buf, labels
        seconds = time.perf_counter() - t0
        from .. import __version__

        sidecar = {
            "format": SIDECAR_FORMAT,
            "status": "done",
            "plugin_version": __version__,
            "parameters": params.to_dict(),
            "parameters_fingerprint": params_fp,
            "model": model.to_dict(),
            "input": {
                "path": str(path),
                "identity": identity,
                "axes": in_axes,
                "shape": list(in_shape),
                "dtype": in_dtype,
                "metadata": meta.to_dict(),
            },
            "axes_used": {
                "z": in_axes[plan.z] if plan.z is not None else None,
                "t": in_axes[plan.t] if plan.t is not None else None,
                "channel": (in_axes[plan.channel_axis] if plan.channel_axis is not None
                            else None),
                "channel_index": plan.channel,
                "rgb": plan.rgb,
            },
            "intensity_mapping": {"low": list(mapping.low), "high": list(mapping.high)},
            "foreground_threshold": threshold if math.isfinite(threshold) else None,
            "output": {
                "path": out_tif.name,
                "axes": plan.out_axes,
                "shape": list(plan.out_shape),
                "dtype": dtype.name,
                "format": fmt,
                "n_objects": int(n_objects),
                "bytes": out_tif.stat().st_size,
                "sha256": file_sha256(out_tif, use_memo=False),  # resume verifies it
            },
            "run": {
                "started": started,
                "finished": _now(),
                "seconds": round(seconds, 3),
                "slices": n_t * n_z,
                "decoder_calls": calls,
                "worker": worker,
            },
        }
        _atomic_json(out_json, sidecar)
        return result("done", output=str(out_tif), sidecar=str(out_json),
                      n_objects=int(n_objects), slices=n_t * n_z)
    except CancelledError:
        return result("cancelled")
    except ModelError as exc:
        return result("failed", error=f"model not available: {exc}")
    except EdgeSamError as exc:
        return result("failed", error=str(exc))
    except MemoryError:
        return result("failed", error="out of memory")
    except Exception as exc:  # a broken input must never stop the batch
        return result("failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        if scratch is not None:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
        lock.release()


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------


def default_workers(n_files: int) -> int:
    """Local worker processes: half the cores (each gets two onnxruntime threads), at least
    one, at most one per file."""
    from ..engine.session import default_num_threads

    return max(1, min(n_files, default_num_threads() // 2))


def _append_log(out_dir: Path, run_id: str, res: FileResult) -> None:
    line = json.dumps({"time": _now(), "run": run_id, **res.to_dict()}, default=str)
    try:
        with open(out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


class _Canceller:
    """Polls a cancel hook in a thread; on cancel, creates the stop file the tasks watch."""

    def __init__(self, stop_file: Path, cancel: Callable[[], bool] | None, on_cancel=None):
        self.stop_file = stop_file
        self.cancel = cancel
        self.on_cancel = on_cancel
        self.fired = False
        self._done = threading.Event()
        self._thread = None

    def fire(self):
        if self.fired:
            return
        self.fired = True
        from ..engine.cancel import CancelToken

        CancelToken(stop_file=self.stop_file).cancel()  # creates the file the tasks watch
        if self.on_cancel is not None:
            with contextlib.suppress(Exception):
                self.on_cancel()

    def check(self) -> bool:
        if not self.fired and self.cancel is not None:
            try:
                if self.cancel():
                    self.fire()
            except Exception:  # a broken hook must not kill the run
                pass
        return self.fired

    def __enter__(self):
        if self.cancel is not None:
            def loop():
                while not self._done.wait(0.2):
                    if self.check():
                        return

            self._thread = threading.Thread(target=loop, name="edgesam-batch-cancel",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if exc[0] is not None:  # interrupted: tell running tasks to stop
            self.fire()
        elif self.fired:
            with contextlib.suppress(OSError):
                self.stop_file.unlink()


def _run_dask_synchronous(todo, out_dir, spec, params, overwrite, stop, report, canceller,
                          slice_progress):
    """All files in this process, one after the other, on dask's synchronous scheduler."""
    import dask
    from dask.callbacks import Callback

    tasks, keys = [], {}
    run = uuid.uuid4().hex[:8]
    for i, path in enumerate(todo):
        # dask's local scheduler runs independent tasks in descending key order: number the
        # keys backwards so that files are processed in the order given.
        key = f"napari-edgesam-batch-{run}-{len(todo) - 1 - i:07d}"
        keys[key] = i
        on_slices = None
        if slice_progress is not None:
            def on_slices(done, total, _name=str(path)):
                slice_progress(_name, done, total)
        tasks.append(dask.delayed(process_file, pure=False)(
            str(path), str(out_dir), spec, params, overwrite=overwrite, stop_file=str(stop),
            progress=on_slices, dask_key_name=key))

    def posttask(key, result, dsk, state, worker_id):
        if key in keys and isinstance(result, FileResult):
            report(keys[key], result)
        canceller.check()

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks, scheduler="synchronous"))


#: Seconds that running files get to stop at their next cancellation check before their
#: worker processes are terminated.
CANCEL_GRACE_S = 2.0


def _leftovers(out_dir: Path, path: Path, lock: bool = False) -> None:
    """Delete the temporary files a terminated or killed task left for ``path``'s outputs
    (the outputs themselves are only ever renamed into place, so they are complete). Call
    it holding the output's lock (:class:`~napari_edgesam.engine.paths.FileLock`), or once
    the task's process is gone (then with ``lock``: its lock file too)."""
    out_tif, out_json = output_paths(path, out_dir)
    patterns = [f".{out_tif.name}.*.partial", f".{out_tif.name}.*.scratch.npy",
                f".{out_json.name}.*.tmp"] + ([f".{out_tif.name}.lock"] if lock else [])
    for pattern in patterns:
        for stale in out_dir.glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()


def _run_local_processes(todo, out_dir, spec, params, overwrite, stop, workers, report,
                         canceller, slice_progress):
    """Files on local worker processes (:class:`.worker_process.WorkerPool`), in the order
    given, at most ``workers`` at a time.

    On cancellation (or an interruption of this thread) no further file starts, running
    ones get :data:`CANCEL_GRACE_S` seconds to stop at their next check, then their
    processes are terminated; their files come back ``"cancelled"``.
    """
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from .worker_process import WorkerPool, slice_reporter

    results: list[FileResult | None] = [None] * len(todo)
    running: dict = {}  # future -> index into todo
    terminated = False
    pool_broken = False

    def finish(j: int, res: FileResult):
        if results[j] is None:
            results[j] = res
            report(j, res)

    def on_message(kind, *payload):
        if kind == "slices" and slice_progress is not None and len(payload) == 3:
            j, done, total = payload
            if 0 <= j < len(todo) and results[j] is None:
                slice_progress(str(todo[j]), int(done), int(total))

    def outcome(fut, j: int) -> FileResult:
        if fut.cancelled():
            return FileResult(str(todo[j]), "cancelled")
        exc = fut.exception()
        if exc is None:
            return fut.result()
        if terminated or canceller.fired:
            return FileResult(str(todo[j]), "cancelled")
        return FileResult(str(todo[j]), "failed",
                          error=f"worker process ended unexpectedly (out of memory?): "
                                f"{type(exc).__name__}: {exc}")

    def collect(futures):
        nonlocal pool_broken
        for fut in futures:
            j = running.pop(fut)
            if not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool):
                pool_broken = True
            finish(j, outcome(fut, j))

    def stop_running(pool):
        """Give running files the grace period, then terminate their processes."""
        nonlocal terminated
        if running:
            done, _ = wait(list(running), timeout=CANCEL_GRACE_S)
            collect(done)
        if running:
            terminated = True
            pool.terminate()
            done, _ = wait(list(running), timeout=10)
            for fut in list(running):
                j = running.pop(fut)
                finish(j, outcome(fut, j) if fut in done else
                       FileResult(str(todo[j]), "cancelled"))
                _leftovers(out_dir, todo[j], lock=True)

    next_j = 0
    with WorkerPool(workers, on_message=on_message) as pool:
        try:
            while next_j < len(todo) or running:
                while (not canceller.fired and not pool_broken and next_j < len(todo)
                       and len(running) < workers):
                    try:
                        fut = pool.submit(process_file, str(todo[next_j]), str(out_dir), spec,
                                          params, overwrite=overwrite, stop_file=str(stop),
                                          progress=slice_reporter(next_j))
                    except BrokenProcessPool:
                        pool_broken = True
                        break
                    running[fut] = next_j
                    next_j += 1
                if canceller.fired or pool_broken:
                    for j in range(next_j, len(todo)):  # never started
                        finish(j, FileResult(str(todo[j]), "cancelled") if canceller.fired
                               else FileResult(str(todo[j]), "failed",
                                               error="not started: the worker processes "
                                                     "ended unexpectedly"))
                    next_j = len(todo)
                    if canceller.fired:
                        stop_running(pool)
                        break
                if not running:
                    continue
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                collect(done)
                canceller.check()
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop everything of ours now
            canceller.fire()
            for j in range(next_j, len(todo)):
                finish(j, FileResult(str(todo[j]), "cancelled"))
            next_j = len(todo)
            stop_running(pool)
            with contextlib.suppress(OSError):
                canceller.stop_file.unlink()
            raise
    return [r if r is not None else FileResult(str(todo[j]), "cancelled")
            for j, r in enumerate(results)]


def _run_distributed(todo, out_dir, spec, params, overwrite, stop, scheduler, report,
                     canceller):
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    if own:
        try:
            client = Client(scheduler, set_as_default=False, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InvalidInputError(f"cannot reach the dask scheduler {scheduler!r}: "
                                    f"{exc}") from None
    else:
        client = scheduler
    try:
        run = uuid.uuid4().hex[:8]
        futures = [
            client.submit(process_file, str(p), str(out_dir), spec, params, overwrite=overwrite,
                          stop_file=str(stop), key=f"napari-edgesam-batch-{run}-{i}", pure=False)
            for i, p in enumerate(todo)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        canceller.on_cancel = lambda: client.cancel([f for f in futures if not f.done()])
        results: list = [None] * len(todo)
        for fut in as_completed(futures, loop=client.loop):
            i = index[fut.key]
            if fut.cancelled():
                res = FileResult(str(todo[i]), "cancelled")
            else:
                try:
                    res = fut.result()
                except Exception as exc:  # a worker died (e.g. out of memory) on this file
                    res = FileResult(str(todo[i]), "failed",
                                     error=f"worker error: {type(exc).__name__}: {exc}")
            results[i] = res
            report(i, res)
            canceller.check()
        return results
    finally:
        if own:
            client.close()


def run_batch(inputs, out_dir, model, params: BatchParams | None = None, *,
              overwrite: bool = False, scheduler=None, workers: int | None = None,
              progress: Callable[[FileResult, int, int], None] | None = None,
              cancel: Callable[[], bool] | None = None,
              slice_progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Segment many TIFF files automatically; resumable; on dask.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        Files, folders and glob patterns (see :func:`collect_inputs`).
    out_dir : path
        Output folder (created if missing). Gets ``<stem>_labels.tif`` and
        ``<stem>_labels.json`` per input and a run log ``napari-edgesam-batch.log.jsonl``.
    model : EdgeSamModel or ModelSpec
        Only its file paths travel to the workers.
    params : BatchParams, optional
    overwrite : bool
        Recompute every input, replacing existing outputs (default: skip inputs already
        done with the same parameters; refuse to replace outputs of other parameters).
    scheduler : None, "synchronous", "processes", str address or distributed.Client
        None/"processes": local worker processes (:mod:`.worker_process`: they never
        re-import the calling script, so a script without an ``if __name__ ==
        "__main__"`` guard works); "synchronous": in this process, on dask's synchronous
        scheduler; an address such as ``"tcp://10.0.0.5:8786"``: that dask.distributed
        cluster (needs the ``distributed`` package); a Client: its cluster (left open).
    workers : int, optional
        Local worker processes (default :func:`default_workers`); ignored on a cluster.
    progress : callable(result, done, total), optional
        Called in the calling thread once per input, as it finishes (skipped inputs first).
    cancel : callable returning bool, optional
        Polled about 5 times a second; when it returns True, running tasks stop at the next
        decoder call, queued ones do nothing, and their inputs come back ``"cancelled"``.
        Local worker processes that have not stopped :data:`CANCEL_GRACE_S` seconds later
        are terminated. Finished outputs stay valid; a rerun resumes.
    slice_progress : callable(input, done, total), optional
        Progress inside a file: ``input`` as in ``FileResult.input``, slices segmented so
        far and in all; first called with ``done=0`` when the file is opened. Called in
        the calling thread (``"synchronous"``) or in a listener thread of this process
        (worker processes); not called for files running on a dask.distributed cluster
        (per-file ``progress`` only there). Messages may arrive late: ignore them for an
        input whose ``progress`` has been reported.

    Returns
    -------
    BatchSummary
        ``summary.ok`` is True when every input has a valid output.

    Raises
    ------
    InvalidInputError
        No inputs, missing inputs, two inputs that would write the same output, an output
        folder that is an input folder.
    ModelNotAvailableError
        Model files missing.
    """
    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a folder")
    for item in inputs:  # an input folder as the output folder (also through links)
        p = Path(str(item)).expanduser()
        if p.is_dir() and out_dir.exists() and os.path.samefile(p, out_dir):
            raise InvalidInputError(
                f"the output folder {out_dir} is an input folder: choose another output "
                "folder (inputs are never overwritten)")
    files = collect_inputs(inputs, exclude_dir=out_dir)
    if not files:
        raise InvalidInputError("no input TIFF files found")
    by_output: dict[Path, Path] = {}
    for f in files:
        o = output_paths(f, out_dir)[0]
        if o in by_output:
            raise InvalidInputError(f"{by_output[o]} and {f} would both write {o.name}; "
                                    "process them into different output folders")
        by_output[o] = f
    params = params or BatchParams()
    spec = model if isinstance(model, ModelSpec) else ModelSpec.from_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    stop = out_dir / f".napari-edgesam-stop-{run_id}"
    for old in out_dir.glob(".napari-edgesam-stop-*"):  # leftovers of interrupted runs
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink()

    total = len(files)
    results: list[FileResult | None] = [None] * total
    done_count = 0

    def report(i: int, res: FileResult):
        nonlocal done_count
        results[i] = res
        done_count += 1
        _append_log(out_dir, run_id, res)
        if progress is not None:
            progress(res, done_count, total)

    params_fp = _params_fingerprint(params, spec)
    todo_idx = []
    for i, f in enumerate(files):
        if overwrite:
            todo_idx.append(i)
            continue
        state, _ = _existing_state(f, out_dir, params_fp)
        o_tif, o_json = output_paths(f, out_dir)
        if state == "done":
            report(i, FileResult(str(f), "skipped", str(o_tif), str(o_json)))
        elif state == "conflict":
            report(i, FileResult(str(f), "failed",
                                 error=f"{o_json.name} exists from other parameters or another "
                                       "model; pass --overwrite or use another output folder"))
        else:
            todo_idx.append(i)

    cancelled = False
    if todo_idx:
        todo = [files[i] for i in todo_idx]

        def report_todo(j: int, res: FileResult):
            report(todo_idx[j], res)

        with _Canceller(stop, cancel) as canceller:
            if scheduler == "synchronous":
                out = _run_dask_synchronous(todo, out_dir, spec, params, overwrite, stop,
                                            report_todo, canceller, slice_progress)
            elif scheduler is None or scheduler == "processes":
                n_workers = min(len(todo), workers or default_workers(len(todo)))
                local_spec = spec
                if spec.num_threads is None:
                    from ..engine.session import default_num_threads

                    local_spec = spec.with_threads(max(1, default_num_threads() // n_workers))
                out = _run_local_processes(todo, out_dir, local_spec, params, overwrite, stop,
                                           n_workers, report_todo, canceller, slice_progress)
            else:
                out = _run_distributed(todo, out_dir, spec, params, overwrite, stop,
                                       scheduler, report_todo, canceller)
            cancelled = canceller.fired
        for j, res in enumerate(out):  # anything the callbacks did not see
            if results[todo_idx[j]] is None:
                report(todo_idx[j], res)
    final = [r if r is not None else FileResult(str(files[i]), "cancelled")
             for i, r in enumerate(results)]
    return BatchSummary(final, out_dir, time.perf_counter() - t0,
                        cancelled or any(r.status == "cancelled" for r in final))
