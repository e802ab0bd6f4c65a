"""The prompt log: the prompts that made each committed object, to save and to replay.

Every object committed into a label image keeps what made its mask: the slice, the clicks
and box, the intensity mapping, whether tiles answered, and the model (files' SHA-256,
optimised variants, thread count). Saved as JSON beside the labels, the log re-creates the
labels (:func:`replay`): with the same model files, variants and thread count the masks are
the same pixels; with another model, :func:`agreement` compares each object with the
labels the log was saved with.

Frames: a slice is ``key``, its index into the image data's leading axes (data
coordinates: the axes before ``(Y, X)``, and before the RGB axis of colour images); prompts
are in that slice's pixels, ``(x, y) = (column, row)``; a box is ``(x0, y0, x1, y1)``.

The file (``FORMAT``, version ``VERSION``)::

    {"format": "napari-edgesam prompt log", "version": 1,
     "model": {"name": ..., "encoder_sha256": ..., "decoder_sha256": ...,
               "variants": [...], "threads": 2},
     "image": {"name": ..., "shape": [...], "dtype": ...},
     "objects": [{"label": 3, "key": [12], "points": [[140.0, 88.0]], "point_labels": [1],
                  "box": null, "mapping": {"low": [0.0], "high": [255.0]}, "rgb": false,
                  "tiles": null, "background_only": true}, ...]}

An object split off another one (the panel's split correction) also has ``"within": 4``,
the id of the object it came from: replay gives its label only to the pixels that carry
``within`` in the labels replayed so far, as the split did (its mask may reach over the
background and neighbours). Logs without the field (older ones, and every other object)
are replayed as before; see :func:`replay` for a ``within`` object not there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..engine.errors import InvalidInputError
from ..engine.intensity import IntensityMapping

FORMAT = "napari-edgesam prompt log"
VERSION = 1

#: A label image's prompt log is saved beside it under this suffix: ``cells.tif`` ->
#: ``cells.prompts.json``.
SUFFIX = ".prompts.json"

__all__ = ["FORMAT", "SUFFIX", "VERSION", "LoggedObject", "ModelRecord", "PromptLog",
           "ReplayedObject", "agreement", "labels_for_log", "log_path_for", "replay"]


def log_path_for(labels_path) -> Path:
    """Where the prompt log of a label image is saved: ``cells.tif`` ->
    ``cells.prompts.json`` beside it."""
    from .batch.files import TIFF_SUFFIXES, stem

    p = Path(labels_path)
    name = stem(p) if p.name.lower().endswith(TIFF_SUFFIXES) else p.name
    return p.with_name(name + SUFFIX)


def labels_for_log(log_path) -> Path | None:
    """The label image a log was saved beside (``cells.prompts.json`` -> ``cells.tif`` or
    ``cells.tiff``), or None when there is none."""
    p = Path(log_path)
    if not p.name.endswith(SUFFIX):
        return None
    stem = p.name[: -len(SUFFIX)]
    for ext in (".tif", ".tiff"):
        if (p.parent / (stem + ext)).is_file():
            return p.parent / (stem + ext)
    return None


@dataclass(frozen=True)
class LoggedObject:
    """One committed object and the prompts that made it.

    Attributes
    ----------
    label : int
        Its id in the label image (> 0).
    key : tuple of int
        The slice: index into the image data's leading axes (``()`` for a 2D image).
    points : tuple of (float, float)
        Clicks, ``(x, y) = (column, row)`` in the slice's pixels.
    point_labels : tuple of int
        1 (positive) or 0 (negative), one per click.
    box : (float, float, float, float) or None
        ``(x0, y0, x1, y1)`` in the slice's pixels.
    low, high : tuple of float
        The intensity mapping (:class:`~napari_edgesam.engine.intensity.IntensityMapping`).
    rgb : bool
        Whether the slice's last axis is colour.
    tiles : (int, int) or None
        ``(tile_size, halo)`` when the slice was answered from full-resolution tiles.
    background_only : bool
        Whether the mask was painted only on background (unlabelled) pixels.
    within : int or None
        The object it was split off (> 0): painted only on that object's pixels. None (the
        default, and in logs without the field): painted as ``background_only`` says.
    """

    label: int
    key: tuple[int, ...]
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (255.0,)
    rgb: bool = False
    tiles: tuple[int, int] | None = None
    background_only: bool = True
    within: int | None = None

    def __post_init__(self):
        if int(self.label) <= 0:
            raise InvalidInputError(f"a logged object needs a label id > 0, got {self.label}")
        if self.within is not None and int(self.within) <= 0:
            raise InvalidInputError(f"object {self.label}: 'within' must be a label id > 0, "
                                    f"got {self.within}")
        if len(self.points) != len(self.point_labels):
            raise InvalidInputError(f"object {self.label}: {len(self.points)} points but "
                                    f"{len(self.point_labels)} point labels")
        if not self.points and self.box is None:
            raise InvalidInputError(f"object {self.label}: no prompt (no point, no box)")

    @property
    def mapping(self) -> IntensityMapping:
        """The intensity mapping the slice was encoded with."""
        return IntensityMapping(self.low, self.high)

    def to_dict(self) -> dict:
        """Plain JSON values (see the module docstring; ``within`` only when set)."""
        d = {"label": int(self.label), "key": [int(k) for k in self.key],
             "points": [[float(x), float(y)] for x, y in self.points],
             "point_labels": [int(v) for v in self.point_labels],
             "box": None if self.box is None else [float(v) for v in self.box],
             "mapping": {"low": list(self.low), "high": list(self.high)},
             "rgb": bool(self.rgb),
             "tiles": None if self.tiles is None else [int(v) for v in self.tiles],
             "background_only": bool(self.background_only)}
        if self.within is not None:
            d["within"] = int(self.within)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoggedObject:
        """The inverse of :meth:`to_dict` (raises InvalidInputError on a malformed entry)."""
        try:
            return cls(
                label=int(d["label"]), key=tuple(int(k) for k in d["key"]),
                points=tuple((float(x), float(y)) for x, y in d.get("points", [])),
                point_labels=tuple(int(v) for v in d.get("point_labels", [])),
                box=None if d.get("box") is None else tuple(float(v) for v in d["box"]),
                low=tuple(float(v) for v in d["mapping"]["low"]),
                high=tuple(float(v) for v in d["mapping"]["high"]),
                rgb=bool(d.get("rgb", False)),
                tiles=None if d.get("tiles") is None else tuple(int(v) for v in d["tiles"]),
                background_only=bool(d.get("background_only", True)),
                within=None if d.get("within") is None else int(d["within"]))
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed prompt-log entry {d!r}: {exc}") from exc


@dataclass(frozen=True)
class ModelRecord:
    """Which model made the masks: everything that shapes them.

    Attributes
    ----------
    name : str
        The model's name (a published name such as ``"edgesam-3x"``, or ``"custom"``), of
        the original model when optimised variants ran.
    encoder_sha256, decoder_sha256 : str
        SHA-256 of the files that ran (an optimised variant's own files when one ran).
    variants : tuple of str
        Optimised variants in use for clicks (empty for the original model; the
        prompt-batched ``decoder-batch``, used by batch work only, is not listed).
    threads : int or None
        onnxruntime intra-op threads (results can differ in the last bits between thread
        counts).
    """

    name: str
    encoder_sha256: str
    decoder_sha256: str
    variants: tuple[str, ...] = ()
    threads: int | None = None

    @classmethod
    def of(cls, model) -> ModelRecord:
        """The record of a loaded :class:`~napari_edgesam.engine.session.EdgeSamModel` (or
        an optimised one)."""
        from ..engine.file_hash import file_sha256
        from ..engine.session import default_num_threads

        source = getattr(model, "source", None) or model  # an optimised model's original
        return cls(name=str(source.name),
                   encoder_sha256=file_sha256(model.encoder_path),
                   decoder_sha256=file_sha256(model.decoder_path),
                   # the prompt-batched decoder runs batch work only, never a click's
                   # prompts: it does not shape a logged object's mask
                   variants=tuple(sorted(v for v in getattr(model, "variants", {}) or ()
                                         if v != "decoder-batch")),
                   threads=int(model.num_threads or default_num_threads()))

    def differences(self, other: ModelRecord) -> list[str]:
        """What differs from ``other`` (empty: masks are reproduced exactly)."""
        out = []
        for name in ("encoder_sha256", "decoder_sha256", "variants", "threads"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name}: {getattr(self, name)} vs {getattr(other, name)}")
        return out


@dataclass
class PromptLog:
    """The prompts of every committed object of one label image.

    Attributes
    ----------
    model : ModelRecord or None
    image : dict
        ``{"name", "shape", "dtype", "channel_axis"}`` of the image data the keys index
        (``channel_axis``: the leading axis holding channels, absent or None when none).
    objects : list of LoggedObject
        In commit order (a later object is painted after an earlier one).
    """

    model: ModelRecord | None = None
    image: dict = field(default_factory=dict)
    objects: list[LoggedObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON values (see the module docstring)."""
        return {"format": FORMAT, "version": VERSION,
                "model": None if self.model is None else {
                    **asdict(self.model), "variants": list(self.model.variants)},
                "image": dict(self.image),
                "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> PromptLog:
        """The inverse of :meth:`to_dict`.

        Raises
        ------
        InvalidInputError
            Not a prompt log, a newer version, or a malformed entry.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InvalidInputError("not a napari-edgesam prompt log (no 'format' field "
                                    f"saying {FORMAT!r})")
        if d.get("version") != VERSION:
            raise InvalidInputError(f"prompt log version {d.get('version')!r}: this "
                                    f"napari-edgesam reads version {VERSION}")
        m = d.get("model")
        try:
            model = None if m is None else ModelRecord(
                name=str(m["name"]), encoder_sha256=str(m["encoder_sha256"]),
                decoder_sha256=str(m["decoder_sha256"]),
                variants=tuple(m.get("variants", ())), threads=m.get("threads"))
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"malformed model record {m!r}: {exc}") from exc
        return cls(model=model, image=dict(d.get("image") or {}),
                   objects=[LoggedObject.from_dict(o) for o in d.get("objects", [])])

    def save(self, path) -> Path:
        """Write the log as JSON, atomically and durably (a temporary file, flushed, then
        renamed); returns the path."""
        from ..engine.paths import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> PromptLog:
        """Read a log written by :meth:`save`.

        Raises
        ------
        InvalidInputError
            Missing, unreadable, not JSON, or not a prompt log.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInputError(f"prompt log not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot read {path} as a prompt log: {exc}") from exc
        return cls.from_dict(d)


@dataclass(frozen=True)
class ReplayedObject:
    """What replaying one logged object gave.

    Attributes
    ----------
    label : int
    key : tuple of int
        The slice's index in the labels (the image's channel axis left out).
    area : int
        Pixels of the predicted mask.
    painted : int
        Pixels written into the labels (fewer than ``area`` where ``background_only`` kept
        earlier objects, or ``within`` kept the split to its object).
    score : float
        Stability score of the chosen mask.
    """

    label: int
    key: tuple[int, ...]
    area: int
    painted: int
    score: float


def _slice_predictor(predictor, data, obj: LoggedObject):
    from ..engine.slice_predictor import EmbeddedSlice
    from ..engine.tiling import TiledPredictor

    view = data[obj.key] if obj.key else data
    if obj.tiles is not None:
        size, halo = obj.tiles
        return TiledPredictor(predictor, view, obj.mapping, tile_size=size, halo=halo,
                              rgb=obj.rgb)
    emb = predictor.embed(np.asarray(view), obj.mapping, rgb=obj.rgb)
    return EmbeddedSlice(predictor, emb)


def replay(log: PromptLog, data, predictor, *, labels: np.ndarray | None = None,
           progress=None) -> tuple[np.ndarray, list[ReplayedObject]]:
    """Re-create the labels of a prompt log.

    Parameters
    ----------
    log : PromptLog
    data : array-like
        The image the log was made on, as its keys index it: shape ``(*lead, H, W)`` or
        ``(*lead, H, W, 3|4)`` for colour.
    predictor : Predictor
        Its model should be the log's (:meth:`ModelRecord.differences` says what differs).
    labels : ndarray of int, shape (*lead, H, W), optional
        Painted into (default: a new zero array of the smallest unsigned dtype holding the
        largest label). ``lead`` leaves out the image's channel axis
        (``log.image["channel_axis"]``) when it has one.
    progress : callable, optional
        ``progress(done, total)`` after each object.

    Returns
    -------
    labels : ndarray
    objects : list of ReplayedObject
        One per logged object, in order.

    Notes
    -----
    Objects are painted in log order, each over the labels painted so far. An object with
    ``within`` (a split) takes only the pixels of its mask that carry ``within`` at that
    point, as the split did live: exact when the object it came from is replayed before it
    (its entries precede the split in the log). When no pixel of ``within`` is on the slice
    at that point (that object was made by *Segment all*, or deleted since: not in the log;
    or re-segmented since: its new entry comes later), the mask is painted on background
    only: it never takes another object's pixels, and may cover background the split did
    not.

    Raises
    ------
    InvalidInputError
        A key or prompt that does not fit the image.
    """
    shape = tuple(data.shape)
    rgb_axis = 1 if log.objects and log.objects[0].rgb else 0
    plane_shape = shape[len(shape) - 2 - rgb_axis:len(shape) - rgb_axis]
    lead_shape = shape[:len(shape) - 2 - rgb_axis]
    channel_axis = log.image.get("channel_axis")

    def labels_key(key):  # the slice in the labels: the image's channel axis left out
        return tuple(k for i, k in enumerate(key) if i != channel_axis)

    if labels is None:
        top = max((o.label for o in log.objects), default=0)
        dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
        labels = np.zeros(labels_key(lead_shape) + plane_shape, dtype)
    done: list[ReplayedObject] = []
    predictors: dict = {}
    for i, obj in enumerate(log.objects):
        if len(obj.key) != len(lead_shape) or any(
                not 0 <= k < n for k, n in zip(obj.key, lead_shape, strict=True)):
            raise InvalidInputError(f"object {obj.label}: slice {list(obj.key)} is not in an "
                                    f"image of shape {shape}")
        pkey = (obj.key, obj.tiles, obj.low, obj.high, obj.rgb)
        sp = predictors.get(pkey)
        if sp is None:
            sp = predictors[pkey] = _slice_predictor(predictor, data, obj)
        pred = sp.predict_slice(points=list(obj.points) or None,
                                labels=list(obj.point_labels) or None, box=obj.box)
        m = pred.mask
        painted = 0
        lkey = labels_key(obj.key)
        if m.area:
            h, w = m.crop.shape
            target = labels[lkey] if lkey else labels
            window = target[m.row0:m.row0 + h, m.col0:m.col0 + w]
            if obj.within is not None and np.any(target == obj.within):
                where = m.crop & (window == obj.within)
            elif obj.background_only or obj.within is not None:
                where = m.crop & (window == 0)
            else:
                where = m.crop.copy()
            window[where] = obj.label
            painted = int(np.count_nonzero(where))
        done.append(ReplayedObject(obj.label, lkey, m.area, painted, float(pred.score)))
        if progress is not None:
            progress(i + 1, len(log.objects))
    return labels, done


def agreement(labels: np.ndarray, reference: np.ndarray, objects) -> list[dict]:
    """Per-object agreement of replayed labels with reference labels.

    Parameters
    ----------
    labels, reference : ndarray of int, same shape ``(*lead, H, W)``
    objects : iterable of LoggedObject or ReplayedObject
        Each object's ``label`` and ``key`` (the slice compared).

    Returns
    -------
    list of dict
        ``{"label", "key", "area", "reference_area", "iou"}`` per object (IoU 1.0 when both
        are empty).
    """
    from ..engine.mask_crop import mask_iou

    if labels.shape != reference.shape:
        raise InvalidInputError(f"labels of shape {labels.shape} cannot be compared with "
                                f"reference labels of shape {reference.shape}")
    rows = []
    for o in objects:
        a = (labels[o.key] if o.key else labels) == o.label
        b = (reference[o.key] if o.key else reference) == o.label
        rows.append({"label": int(o.label), "key": list(o.key),
                     "area": int(np.count_nonzero(a)), "reference_area": int(np.count_nonzero(b)),
                     "iou": float(mask_iou(a, b, empty=1.0))})
    return rows
