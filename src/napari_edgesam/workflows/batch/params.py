"""The parameters of a batch run: what to segment in each file and how.

One concept: :class:`BatchParams`, the options every file of a run is segmented with (the
automatic-segmentation parameters, channel, axes, contrast). They are recorded in each
output's sidecar and are part of the resume fingerprint (:mod:`.resume`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...engine.errors import InvalidInputError
from ..automatic import AutoParams

__all__ = ["BatchParams"]


@dataclass(frozen=True)
class BatchParams:
    """What to segment in each file and how (everything recorded in the sidecar).

    Attributes
    ----------
    automatic : AutoParams
        Seeds, filters, overlap resolution and 3D linking.
    channel : int or None
        Channel to segment when the file has a channel axis that is not colour (see
        :func:`~napari_edgesam.workflows.tiff_io.rgb_axis`: an ``S`` axis, or a last ``C``
        axis, of 3 or 4 is colour). Without it an RGB file is segmented as colour; other
        multichannel files fail with a message asking for it.
    z_axis, t_axis : str or None
        Which axis of the file is Z (slices linked into 3D objects) and which is T (frames
        segmented independently): an axis letter of the file (``"Q"``, ``"I"``, ``"T"``...)
        or its position as a string (``"0"``). Default: ``Z`` is Z, ``T`` is T, and a single
        other stack axis (e.g. ``Q`` of a TIFF without metadata) is Z. Saying
        ``z_axis="T"`` links objects over time instead. Applied by
        :func:`~napari_edgesam.workflows.axes.plan_axes`.
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
