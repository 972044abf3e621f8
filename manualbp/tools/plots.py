"""Plots and tables of a run: curves as PNG (matplotlib Agg, imported only then), tables as text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from manualbp._table import format_table

# Line styles per series, so coinciding curves (manual under autodiff) both stay visible.
_STYLES = (
    {"linestyle": "-", "linewidth": 2.5, "alpha": 0.6},
    {"linestyle": "--", "linewidth": 1.2},
    {"linestyle": ":", "linewidth": 1.5},
    {"linestyle": "-.", "linewidth": 1.2},
)


def plot_curves(
    path: str | Path,
    panels: Mapping[str, Mapping[str, Sequence]],
    *,
    x: Sequence | None = None,
    xlabel: str = "epoch",
    title: str | None = None,
    logy: Sequence[str] = (),
) -> Path:
    """One PNG with one axis per panel, every series of a panel on that axis.

    Args:
        path: the PNG to write.
        panels: {y label: {series label: y values}}, e.g.
            {"loss": {"manual": [...], "autodiff": [...]}}.
        x: the shared x values (default 1, 2, ...).
        xlabel: the x axis label.
        title: the figure title.
        logy: the panels drawn with a logarithmic y axis.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install manualbp[experiments]") from error
    figure = Figure(figsize=(4.2 * len(panels), 3.4), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, series) in zip(axes, panels.items(), strict=True):
        for (label, ys), style in zip(series.items(), _cycle(_STYLES, len(series)), strict=True):
            xs = x if x is not None else range(1, len(ys) + 1)
            ys = [np.nan if v is None else v for v in ys]
            ax.plot(list(xs), ys, label=label, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylabel in logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path)
    return path


def _cycle(items, n):
    return [items[i % len(items)] for i in range(n)]


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    print(format_table(rows, columns))
