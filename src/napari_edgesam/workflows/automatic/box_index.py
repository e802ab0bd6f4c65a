"""A spatial hash of boxes: which masks lie near a pixel or a box, without slice-sized maps.

Used by :mod:`.prompting` (which accepted mask covers a seed) and :mod:`.overlaps` (which
kept masks a candidate may overlap). Boxes are ``(row0, col0, row1, col1)``, half-open, in
pixels of the slice.
"""

from __future__ import annotations


class _BoxIndex:
    """Which boxes lie near a point or a box: a hash of ``cell`` x ``cell`` pixel cells.

    Replaces slice-sized "owner" maps and all-pairs comparisons, so memory grows with the
    number of objects, not with the slice. Boxes are ``(row0, col0, row1, col1)``, half-open.
    """

    def __init__(self, cell: int = 256):
        self.cell = int(cell)
        self._cells: dict[tuple[int, int], list[int]] = {}

    def _span(self, bbox):
        r0, c0, r1, c1 = bbox
        k = self.cell
        return range(r0 // k, (max(r1, r0 + 1) - 1) // k + 1), \
            range(c0 // k, (max(c1, c0 + 1) - 1) // k + 1)

    def add(self, key: int, bbox) -> None:
        """Record box ``bbox`` under ``key`` (keys are added in increasing order)."""
        rows, cols = self._span(bbox)
        for i in rows:
            for j in cols:
                self._cells.setdefault((i, j), []).append(key)

    def at(self, row: int, col: int) -> list[int]:
        """Keys (in the order added) of boxes whose cells include pixel ``(row, col)``."""
        return self._cells.get((row // self.cell, col // self.cell), [])

    def near(self, bbox) -> set[int]:
        """Keys of boxes sharing a cell with ``bbox``."""
        rows, cols = self._span(bbox)
        found: set[int] = set()
        for i in rows:
            for j in cols:
                found.update(self._cells.get((i, j), ()))
        return found
