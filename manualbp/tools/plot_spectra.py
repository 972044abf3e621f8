"""Draw a spectral density from stochastic Lanczos quadrature (`mbp.extensions.spectral_density`).

matplotlib is imported here only, and only when a plot is drawn.

    density = mbp.extensions.spectral_density(net, params, X, Y, probes=10, steps=40)
    plot_density(density, "density.png", title="Hessian at step 1000")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manualbp.extensions.spectra import SpectralDensity


def default_grid(density: SpectralDensity, points: int = 500) -> tuple[np.ndarray, float]:
    """A grid over the nodes with a margin, and a kernel width of 1/100 of their range."""
    low, high = float(np.min(density.nodes)), float(np.max(density.nodes))
    span = max(high - low, 1e-12)
    width = span / 100
    return np.linspace(low - 5 * width, high + 5 * width, points), width


def plot_density(
    density: SpectralDensity,
    path: str | Path,
    *,
    grid=None,
    width: float | None = None,
    title: str | None = None,
) -> Path:
    """One PNG: the smoothed density on a log scale, with the nodes' weights as a rug.

    Args:
        density: nodes and weights per probe.
        path: the PNG to write.
        grid, width: the points and the Gaussian kernel's standard deviation
            (default: `default_grid`).
        title: the figure title.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install manualbp[experiments]") from error
    auto_grid, auto_width = default_grid(density)
    grid = auto_grid if grid is None else np.asarray(grid, np.float64)
    width = auto_width if width is None else width
    values = density.on_grid(grid, width)
    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    # The density spans many decades (a spike at 0, a few outliers): a log axis shows both.
    axis.semilogy(grid, np.maximum(values, 1e-12), label=f"Gaussian width {width:.3g}")
    nodes, weights = density.nodes.ravel(), density.weights.ravel()
    axis.vlines(nodes, 1e-12, np.maximum(weights, 1e-12), alpha=0.3, color="gray", label="nodes")
    axis.set_ylim(max(1e-8, float(values.max()) * 1e-8), float(values.max()) * 2)
    axis.set_xlabel("eigenvalue")
    axis.set_ylabel("density")
    axis.legend()
    if title:
        axis.set_title(title)
    path = Path(path)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
