"""Parameters of automatic segmentation: :class:`AutoParams`, validated and JSON-serialisable.

Every step of the pipeline (:mod:`.seeds`, :mod:`.prompting`, :mod:`.overlaps`,
:mod:`.linking`, :mod:`.driver`) reads its settings from one :class:`AutoParams`; batch
settings files store it through :meth:`AutoParams.to_dict` / :meth:`AutoParams.from_dict`.
Lengths and areas are in pixels of the input slice; thresholds on the model's 0..255 scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ...engine.errors import InvalidInputError

__all__ = ["AutoParams"]


@dataclass(frozen=True)
class AutoParams:
    """Parameters of automatic segmentation (all JSON-serialisable, see :meth:`to_dict`).

    Attributes
    ----------
    object_size : float
        Expected object diameter in pixels of the input slice. Sets the smoothing and the
        spacing of detected seeds, the default grid spacing and the default area limits.
    seeds : {"detect", "grid"}
        ``"detect"``: local maxima of the smoothed image in the foreground (about one decoder
        call per object). ``"grid"``: a regular grid of ``grid_spacing`` pixels.
    grid_spacing : float or None
        Grid step in pixels (default ``object_size / 2``).
    polarity : {"bright", "dark"}
        Objects brighter (fluorescence) or darker (bright field) than the background.
    threshold : float or None
        Foreground threshold on the model's 0..255 scale (after the intensity mapping).
        Default: Otsu's threshold, computed over the whole stack when segmenting a stack.
    min_stability : float
        Masks with a lower stability score (``count(logit > 1) / count(logit > -1)``) are
        dropped; NaN scores are always dropped.
    min_area, max_area : int or None
        Area limits in pixels; defaults ``0.1 * A`` (at least 4) and ``10 * A`` with
        ``A = pi * object_size**2 / 4``.
    min_foreground : float
        Minimum fraction of a mask's pixels that must be foreground (0 disables the check).
    nms_iou : float
        A mask whose IoU with a better-scored kept mask exceeds this is suppressed.
    min_kept_fraction : float
        When painting, a mask that keeps less than this fraction of its pixels (the rest
        being taken by better masks) is dropped.
    split_merged : bool
        Re-predict masks covering distant seeds with those seeds as negative clicks.
    seed_component : bool
        Keep only the connected component of a mask that contains its seed.
    max_seeds : int
        At most this many seeds per slice (the brightest first for detection); per tile
        when the slice is tiled.
    link_iou : float
        Stacks: minimum IoU between instances of neighbouring slices to give them one id.
    tiles : {"auto", "on", "off"}
        Segment large slices tile by tile at full resolution (``"auto"``: slices larger
        than :data:`~napari_edgesam.engine.tiling.TILING_THRESHOLD` on a side), reading
        them window by window; see :func:`segment_slice`.
    tile_size : int or None
        Tile side in pixels (default :data:`~napari_edgesam.engine.tiling.DEFAULT_TILE_SIZE`).
    """

    object_size: float = 30.0
    seeds: str = "detect"
    grid_spacing: float | None = None
    polarity: str = "bright"
    threshold: float | None = None
    min_stability: float = 0.85
    min_area: int | None = None
    max_area: int | None = None
    min_foreground: float = 0.5
    nms_iou: float = 0.5
    min_kept_fraction: float = 0.5
    split_merged: bool = True
    seed_component: bool = True
    max_seeds: int = 2000
    link_iou: float = 0.3
    tiles: str = "auto"
    tile_size: int | None = None

    def __post_init__(self):
        if not (np.isfinite(self.object_size) and self.object_size >= 2):
            raise InvalidInputError(
                f"object size must be at least 2 pixels, got {self.object_size}")
        if self.seeds not in ("detect", "grid"):
            raise InvalidInputError(f"seeds must be 'detect' or 'grid', got {self.seeds!r}")
        if self.polarity not in ("bright", "dark"):
            raise InvalidInputError(f"polarity must be 'bright' or 'dark', got {self.polarity!r}")
        if self.grid_spacing is not None and not self.grid_spacing >= 1:
            raise InvalidInputError(f"grid spacing must be >= 1 pixel, got {self.grid_spacing}")
        for name in ("min_stability", "min_foreground", "nms_iou", "min_kept_fraction",
                     "link_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInputError(f"{name} must be in 0..1, got {v}")
        if self.max_seeds < 1:
            raise InvalidInputError(f"max_seeds must be >= 1, got {self.max_seeds}")
        if self.tiles not in ("auto", "on", "off"):
            raise InvalidInputError(f"tiles must be 'auto', 'on' or 'off', got {self.tiles!r}")
        if self.tile_size is not None and self.tile_size < 64:
            raise InvalidInputError(f"tile size must be at least 64 pixels, got {self.tile_size}")
        lo, hi = self.area_limits
        if hi < lo:
            raise InvalidInputError(f"max_area {hi} is below min_area {lo}")

    @property
    def expected_area(self) -> float:
        """Area in pixels of a disc of diameter ``object_size``."""
        return math.pi * self.object_size**2 / 4.0

    @property
    def area_limits(self) -> tuple[int, int]:
        """``(min_area, max_area)`` in pixels, defaults filled in."""
        lo = self.min_area if self.min_area is not None else max(4, int(0.1 * self.expected_area))
        hi = self.max_area if self.max_area is not None else int(math.ceil(10 * self.expected_area))
        return int(lo), int(hi)

    def to_dict(self) -> dict:
        """All parameters as a JSON-serialisable dict (defaults filled in as given)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AutoParams:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        return cls(**data)
