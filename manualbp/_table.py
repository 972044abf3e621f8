"""The one plain-text table renderer, for reports, experiment summaries and the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cell(value: Any) -> str:
    """A value as table text: floats with 4 significant digits, None as empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    rule: bool = True,
    align: str = "right",
) -> str:
    """A table with one row per mapping, columns padded to their widest cell.

    Args:
        rows: the rows; a missing key is an empty cell.
        columns: the column order (default: first appearance across rows).
        rule: draw a dashed line under the header.
        align: ``"right"`` (numbers line up) or ``"left"`` for the cells.
    """
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    pad = str.rjust if align == "right" else str.ljust
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(pad(v, w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
