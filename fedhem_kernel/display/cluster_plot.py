"""k-means cluster centres on two principal components (matplotlib, imported lazily).

Only centres are drawn (each a mean over released clusters), sized by the cluster's released size:
no patient's point is ever plotted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kmeans import KMeansResult
    from fedhem_kernel.analyses.pca import PCAResult


def plot_centers(
    pca: PCAResult, kmeans: KMeansResult, ax: Any = None, components: tuple[int, int] = (0, 1)
) -> Any:
    import matplotlib.pyplot as plt

    i, j = components
    if not (0 <= i < pca.n_components and 0 <= j < pca.n_components):
        raise ValueError(f"components must be between 0 and {pca.n_components - 1}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    scores = pca.transform(kmeans.cluster_centers)
    sizes = kmeans.cluster_sizes.reindex(scores.index).fillna(0).to_numpy(dtype=float)
    area = 60 + 600 * np.sqrt(sizes / sizes.max()) if sizes.max() > 0 else np.full(len(sizes), 80)
    x, y = scores.iloc[:, i], scores.iloc[:, j]
    ax.scatter(x, y, s=area, alpha=0.6, c=[f"C{n % 10}" for n in range(len(scores))])
    for name, xi, yi in zip(scores.index, x, y, strict=True):
        ax.annotate(str(name), (xi, yi), ha="center", va="center", fontweight="bold")
    ratio = pca.explained_variance_ratio
    ax.set_xlabel(f"{scores.columns[i]} ({ratio.iloc[i]:.0%} of variance)")
    ax.set_ylabel(f"{scores.columns[j]} ({ratio.iloc[j]:.0%} of variance)")
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_title("cluster centres (area ~ cluster size)")
    return ax
