"""The outcome of a propagation run: :class:`ObjectResult` (one object's masks, stored
cropped per slice, and its records) and :class:`PropagationResult` (all objects of a run)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...engine.intensity import IntensityMapping
from ...engine.transforms import MaskCrop
from .settings import PropagationSettings

__all__ = ["ObjectResult", "PropagationResult"]


@dataclass
class ObjectResult:
    """One object's masks (stored cropped per slice) and records.

    Attributes
    ----------
    object_id : hashable
    annotations : dict of int -> SliceAnnotation
    records : dict of int -> SliceRecord
        Per slice: the record of the mask kept, or of the rejected slice where a chain
        stopped.
    ends : list of ChainEnd
    """

    object_id: object
    shape: tuple[int, int, int]
    annotations: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    ends: list = field(default_factory=list)
    _masks: dict = field(default_factory=dict, repr=False)

    # -- masks --------------------------------------------------------------------------
    def _set(self, z: int, mask: MaskCrop | np.ndarray | None) -> None:
        if mask is not None and not isinstance(mask, MaskCrop):
            mask = MaskCrop(mask)
        if mask is None or not mask.area:
            self._masks.pop(z, None)
            return
        self._masks[z] = (mask.row0, mask.col0, mask.crop)

    def slice_crop(self, z: int) -> MaskCrop | None:
        """The mask on slice ``z`` as a :class:`MaskCrop` (no slice-sized array), or None."""
        entry = self._masks.get(int(z))
        if entry is None:
            return None
        r0, c0, crop = entry
        return MaskCrop(crop, r0, c0, self.shape[1:])

    def slice_mask(self, z: int) -> np.ndarray | None:
        """The mask on slice ``z``: bool ``(Y, X)``, or None where the object is absent."""
        entry = self._masks.get(int(z))
        if entry is None:
            return None
        r0, c0, crop = entry
        out = np.zeros(self.shape[1:], dtype=bool)
        out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    @property
    def slices(self) -> list[int]:
        """Sorted slice indices where the object has a mask."""
        return sorted(self._masks)

    @property
    def extent(self) -> tuple[int, int] | None:
        """``(first, last)`` slice with a mask, or None."""
        s = self.slices
        return (s[0], s[-1]) if s else None

    def mask(self) -> np.ndarray:
        """The 3D mask: bool ``(Z, Y, X)``, slice axis first."""
        out = np.zeros(self.shape, dtype=bool)
        for z, (r0, c0, crop) in self._masks.items():
            out[z, r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    def area(self, z: int) -> int:
        """Pixels of the object on slice ``z`` (0 where it is absent)."""
        entry = self._masks.get(int(z))
        return int(np.count_nonzero(entry[2])) if entry else 0

    def copy(self) -> ObjectResult:
        """A copy whose containers can change without changing this one (masks shared)."""
        return ObjectResult(self.object_id, self.shape, dict(self.annotations),
                            dict(self.records), list(self.ends), dict(self._masks))


@dataclass
class PropagationResult:
    """The outcome of a run: one :class:`ObjectResult` per object.

    Attributes
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)`` of the stack, slice axis first.
    z_range : (int, int)
        Inclusive slice range the run was limited to.
    objects : dict
        ``object_id -> ObjectResult``, in the order given.
    cancelled : bool
        True when the run was cancelled; every mask present is still a complete, accepted
        slice, and the chains that were cut short end with reason ``'cancelled'``.
    mapping : IntensityMapping
        The stack-wide intensity mapping used for every slice.
    stats : dict
        ``embeddings`` (slices embedded), ``encoded`` (of which computed by the encoder, i.e.
        not found in the run's memo or the predictor's cache), ``decoder_calls``.
    """

    shape: tuple[int, int, int]
    z_range: tuple[int, int]
    objects: dict
    mapping: IntensityMapping
    cancelled: bool = False
    stats: dict = field(default_factory=dict)
    settings: PropagationSettings = field(default_factory=PropagationSettings)

    def mask(self, object_id) -> np.ndarray:
        """Bool ``(Z, Y, X)`` mask of one object."""
        return self.objects[object_id].mask()

    def labels(self, dtype=np.uint32) -> np.ndarray:
        """All objects as one label image ``(Z, Y, X)``.

        Integer object ids are used as labels; other ids get 1, 2, ... in order. Where
        objects overlap the later object wins.
        """
        out = np.zeros(self.shape, dtype=dtype)
        for i, (oid, obj) in enumerate(self.objects.items(), start=1):
            value = oid if isinstance(oid, (int, np.integer)) and not isinstance(oid, bool) else i
            for z, (r0, c0, crop) in obj._masks.items():
                view = out[z, r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
                view[crop] = value
        return out

    def summary(self) -> str:
        """Human-readable lines: extent and stop reasons per object."""
        lines = []
        for oid, obj in self.objects.items():
            ext = obj.extent
            span = f"slices {ext[0]}..{ext[1]} ({len(obj.slices)})" if ext else "no slice"
            ends = "; ".join(
                f"{'up' if e.direction > 0 else 'down'} from {e.start}: {e.reason}"
                + (f" at {e.at}" if e.at is not None else "")
                for e in sorted(obj.ends, key=lambda e: (e.start, e.direction))
            )
            lines.append(f"object {oid}: {span}; {ends}")
        if self.cancelled:
            lines.append("(cancelled: partial result)")
        return "\n".join(lines)

