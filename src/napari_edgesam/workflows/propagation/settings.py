"""The settings of a propagation run: :class:`PropagationSettings` (the stop rules'
thresholds and how the next slice's prompts are derived)."""

from __future__ import annotations

from dataclasses import dataclass

from ...engine.errors import InvalidInputError

__all__ = ["PropagationSettings"]


@dataclass(frozen=True)
class PropagationSettings:
    """Stop rules and prompt derivation of a propagation run.

    Stop rules (checked in this order on every propagated slice by
    :func:`~.stop_rules.stop_reason`; the first that fires rejects the slice and ends that
    direction):

    Attributes
    ----------
    min_area : int
        ``'vanished'`` when the mask has fewer pixels than this. Default 4.
    min_score : float
        ``'low score'`` when the stability score of the chosen mask is below this (or NaN).
        Default 0.70.
    min_overlap : float
        ``'overlap collapsed'`` when ``|M_new & M_prev| / min(|M_new|, |M_prev|)`` (the
        overlap coefficient: 1 when one mask contains the other, so an object shrinking
        towards its end is not penalised) falls below this. Default 0.5. Lower it for
        2D+t movies of fast-moving objects.
    max_growth : float
        ``'area jump'`` when ``area_new > max_growth * area_prev + growth_slack``.
        Default 1.8.
    growth_slack : int
        Pixels of growth always allowed (small objects change area fast). Default 30.

    Prompt derivation:

    box_margin : float
        Box prompt = bounding box of the previous mask grown on every side by
        ``max(box_margin * max(height, width), box_margin_px)``. Default 0.05 (larger
        margins let masks creep outwards slice by slice; see ``docs/propagation.md``).
        ``box_margin < 0`` disables the box (clicks only).
    box_margin_px : float
        Minimum margin in pixels. Default 3.
    positive_points : int
        Number of positive clicks at the deepest points of the previous mask (0 for none).
        Default 1.
    click_min_depth : float
        With a box, give a positive click only where the previous mask is at least this many
        pixels deep (distance to its edge): on thin or tiny cross-sections (an object's last
        slices) a click adds nothing the box does not say and can outweigh it. Without a box
        the deepest point is always clicked. Default 5.
    neighbour_negatives : bool
        Add a negative click at the deepest point of any *other* object of the run whose
        mask on the previous slice reaches into this object's box. Default True.
    keep_connected : bool
        Keep only the parts of the predicted mask that touch the previous mask grown by the
        box margin (drops pieces of other structures caught in the box). Default True.
    gap_fill : {"best", "middle"}
        Between two annotated slices of one object both ends propagate across the whole gap;
        per slice keep the candidate with the better stability score (``"best"``) or the one
        from the nearer annotated slice (``"middle"``). Default ``"best"``.
    memo_slices : int
        Embeddings a run keeps in its own memory for slices it visits twice (gaps, several
        objects), on top of the predictor's cache. Default 16 (16 x 4 MiB).
    """

    min_area: int = 4
    min_score: float = 0.70
    min_overlap: float = 0.5
    max_growth: float = 1.8
    growth_slack: int = 30
    box_margin: float = 0.05
    box_margin_px: float = 3.0
    positive_points: int = 1
    click_min_depth: float = 5.0
    neighbour_negatives: bool = True
    keep_connected: bool = True
    gap_fill: str = "best"
    memo_slices: int = 16

    def __post_init__(self):
        if self.gap_fill not in ("best", "middle"):
            raise InvalidInputError(f"gap_fill must be 'best' or 'middle', got {self.gap_fill!r}")
        if self.positive_points < 0:
            raise InvalidInputError("positive_points must be >= 0")
        if self.box_margin < 0 and self.positive_points == 0:
            raise InvalidInputError("with no box (box_margin < 0) positive_points must be >= 1")
        if not self.max_growth > 0:
            raise InvalidInputError("max_growth must be > 0")

