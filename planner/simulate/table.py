"""The tables `planner simulate` prints, laid out one way for both granularities."""

from __future__ import annotations


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Table rows as text lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
