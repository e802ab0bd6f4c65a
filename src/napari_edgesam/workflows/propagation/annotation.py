"""What the user gives for one object on one slice: :class:`SliceAnnotation` (a mask, or
clicks and/or a box), the input of a propagation run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...engine.errors import InvalidInputError
from ...engine.transforms import MaskCrop

__all__ = ["SliceAnnotation"]


@dataclass(frozen=True)
class SliceAnnotation:
    """What the user gave for one object on one slice: a mask, or prompts.

    Parameters
    ----------
    z : int
        Slice index along the slice axis.
    mask : ndarray of bool, shape (Y, X), or MaskCrop, optional
        The object's mask on this slice (used as is, no prediction).
    points : array-like, shape (N, 2), optional
        Clicks as ``(x, y) = (col, row)`` in slice pixels.
    labels : array-like, shape (N,), optional
        1 positive (default), 0 negative.
    box : array-like, shape (4,), optional
        ``(x0, y0, x1, y1)`` in slice pixels, ``x0 <= x1``, ``y0 <= y1``.

    Give either ``mask`` or prompts (points and/or a box), not both.
    """

    z: int
    mask: np.ndarray | None = field(default=None, repr=False)
    points: object = None
    labels: object = None
    box: object = None

    def __post_init__(self):
        object.__setattr__(self, "z", int(self.z))
        has_prompt = self.points is not None or self.box is not None
        if self.mask is not None and has_prompt:
            raise InvalidInputError(f"slice {self.z}: give a mask or prompts, not both")
        if self.mask is None and not has_prompt:
            raise InvalidInputError(f"slice {self.z}: an annotation needs a mask, points or a box")
        if self.mask is not None and not isinstance(self.mask, MaskCrop):
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise InvalidInputError(f"slice {self.z}: a mask must be 2D (Y, X), got {m.shape}")
            object.__setattr__(self, "mask", m.astype(bool, copy=False))

    @property
    def is_mask(self) -> bool:
        """Whether the annotation is a mask (else prompts)."""
        return self.mask is not None

