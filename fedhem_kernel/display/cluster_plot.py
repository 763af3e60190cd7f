"""k-means cluster centres and PCA loadings on two principal components (matplotlib, imported lazily).

Only centres are drawn (each a mean over released clusters), their area proportional to the
cluster's released size: no patient's point is ever plotted. The points come from
:func:`~fedhem_kernel.display.cluster_state.center_points` and
:func:`~fedhem_kernel.display.cluster_state.loading_points`, the same numbers the widgets draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedhem_kernel.display.cluster_state import (
    axis_label,
    center_points,
    check_components,
    loading_points,
)

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kmeans.result import KMeansResult
    from fedhem_kernel.analyses.pca.result import PCAResult

#: marker area (points²) of the largest cluster; a cluster's area is this times its relative size
LARGEST_AREA = 900.0
#: smallest marker area drawn, so that a small released cluster stays visible
SMALLEST_AREA = 30.0


def plot_centers(
    pca: PCAResult, kmeans: KMeansResult, ax: Any = None, components: tuple[int, int] = (0, 1)
) -> Any:
    """Scatter of the cluster centres on two components, area ~ released cluster size."""
    i, j = check_components(pca, components)
    pts = center_points(pca, kmeans, (i, j))
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5.5, 4.5))
    area = np.maximum(SMALLEST_AREA, LARGEST_AREA * pts["area"].to_numpy())
    colours = [f"C{n % 10}" for n in range(len(pts))]
    empty = pts["size"].to_numpy() == 0
    ax.scatter(
        pts["x"],
        pts["y"],
        s=area,
        alpha=0.6,
        c=colours,
        edgecolors=["k" if e else "none" for e in empty],
        linestyle="--",
    )
    for name, xi, yi in zip(pts.index, pts["x"], pts["y"], strict=True):
        ax.annotate(str(name), (xi, yi), ha="center", va="center", fontweight="bold")
    ax.set_xlabel(axis_label(pca, i))
    ax.set_ylabel(axis_label(pca, j))
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_title("cluster centres (area ~ cluster size)")
    return ax


def plot_loadings(pca: PCAResult, ax: Any = None, components: tuple[int, int] = (0, 1)) -> Any:
    """Each feature's loadings on two components: an arrow from the origin, labelled."""
    i, j = check_components(pca, components)
    pts = loading_points(pca, (i, j))
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 5))
    t = np.linspace(0, 2 * np.pi, 181)
    ax.plot(np.cos(t), np.sin(t), color="0.8", lw=0.8, ls="--")
    for name, xi, yi in zip(pts.index, pts["x"], pts["y"], strict=True):
        ax.annotate(
            "", (xi, yi), (0, 0), arrowprops={"arrowstyle": "->", "color": "#1f4e79", "lw": 1.2}
        )
        ax.annotate(
            str(name),
            (xi, yi),
            textcoords="offset points",
            xytext=(4 if xi >= 0 else -4, 4 if yi >= 0 else -10),
            ha="left" if xi >= 0 else "right",
            fontsize=9,
        )
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.15)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel(axis_label(pca, i))
    ax.set_ylabel(axis_label(pca, j))
    ax.set_title("loadings")
    return ax


def loadings_html(pca: PCAResult) -> str | None:
    """The loadings plot as an inline PNG (the HTML view's figure); None with one component."""
    if pca.n_components < 2:
        return None
    from matplotlib.figure import Figure  # not pyplot: the notebook's backend is left alone

    from fedhem_kernel.display.html import figure_png

    fig = Figure(figsize=(5, 5))
    plot_loadings(pca, ax=fig.subplots())
    return figure_png(fig, alt="PCA loadings on the first two components")
