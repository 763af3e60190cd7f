"""What the k-means and PCA widgets draw: plain JSON built from a result's released values only.

Three figures, drawn as SVG by ``renderScatter`` / ``renderHeatmap`` in ``static/fedhem_widgets.js``:

- *centres* (``kind="scatter"``, ``mode="centers"``): the k-means cluster centres on two principal
  components (``pca.transform(kmeans.cluster_centers)``), circle area proportional to the cluster's
  released size, each labelled with its cluster name. No patient's point exists anywhere in a
  result, so none can be plotted.
- *loadings* (``kind="scatter"``, ``mode="loadings"``): each feature's loading on PC1 and PC2, an
  arrow from the origin labelled with the feature name.
- *cluster profile* (``kind="heatmap"``): rows clusters, columns features; the colour is the centre's
  distance from the pooled mean in pooled SDs (``standardize=True``) or, when the clustering was not
  standardised (the result then holds no SDs), as a share of that feature's largest distance over
  the clusters. The hover text gives the centre in original units.

:func:`center_points` and :func:`loading_points` compute the points for both these states and the
matplotlib plots of :mod:`fedhem_kernel.display.cluster_plot`, so both show the same numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedhem_kernel.display.state import json_value, table_state
from fedhem_kernel.errors import ParameterError

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kmeans.result import KMeansResult
    from fedhem_kernel.analyses.pca.result import PCAResult


# -- shared with the matplotlib plots ----------------------------------------------------------
def check_components(pca: PCAResult, components: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """The two component positions (0-based), checked against the components the PCA kept."""
    n = pca.n_components
    if n < 2:
        raise ParameterError(
            "a plot on two components needs a PCA with n_components=2 or more (this one has 1)",
            dataset=pca.dataset,
        )
    i, j = components
    if not (0 <= i < n and 0 <= j < n) or i == j:
        raise ParameterError(
            f"components must be two different positions between 0 and {n - 1}",
            dataset=pca.dataset,
        )
    return int(i), int(j)


def center_points(
    pca: PCAResult, kmeans: KMeansResult, components: tuple[int, int] = (0, 1)
) -> pd.DataFrame:
    """Per cluster (index: cluster name): ``x``, ``y`` (its centre's scores on the two components,
    ``pca.transform(kmeans.cluster_centers)``), ``size`` (its released size, ``cluster_sizes``) and
    ``area`` (size / the largest size: the circle's area relative to the largest circle)."""
    i, j = check_components(pca, components)
    scores = pca.transform(kmeans.cluster_centers)
    sizes = kmeans.cluster_sizes.reindex(scores.index).fillna(0).to_numpy(dtype=np.int64)
    largest = sizes.max() if len(sizes) else 0
    area = sizes / largest if largest > 0 else np.zeros(len(sizes))
    return pd.DataFrame(
        {
            "x": scores.iloc[:, i].to_numpy(),
            "y": scores.iloc[:, j].to_numpy(),
            "size": sizes,
            "area": area,
        },
        index=scores.index,
    )


def loading_points(pca: PCAResult, components: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Per feature (index): its loadings ``x``, ``y`` on the two components (rows of
    ``pca.components``: unit vectors, so every point lies within the unit circle)."""
    i, j = check_components(pca, components)
    comp = pca.components
    return pd.DataFrame(
        {"x": comp.iloc[i].to_numpy(), "y": comp.iloc[j].to_numpy()}, index=comp.columns
    )


def axis_label(pca: PCAResult, i: int) -> str:
    """``"PC1 (62% of variance)"``: the component and its explained variance ratio."""
    name = str(pca.components.index[i])
    ratio = float(pca.explained_variance_ratio.iloc[i])
    return f"{name} ({ratio:.0%} of variance)" if math.isfinite(ratio) else name


def profile_values(kmeans: KMeansResult) -> tuple[pd.DataFrame, str, str]:
    """The heatmap's colour values (clusters x features), their scale and how to read them.

    ``standardize=True``: ``(centre - mean) / scale``, the distance from the pooled mean in pooled
    (population) SDs, scale ``"sd"``. ``standardize=False``: the result's ``scale`` is 1 (no SDs
    were computed), so each feature's ``centre - mean`` is divided by its largest absolute value over
    the clusters (scale ``"relative"``, values in [-1, 1], comparable within a feature only).
    """
    centres = kmeans.cluster_centers
    dev = centres - kmeans.mean.reindex(centres.columns)
    if kmeans.standardize:
        z = dev / kmeans.scale.reindex(centres.columns)
        return z, "sd", "centre − pooled mean, in pooled SDs"
    largest = dev.abs().max(axis=0).replace(0.0, np.nan)
    z = (dev / largest).fillna(0.0).where(dev.notna())
    return (
        z,
        "relative",
        "centre − pooled mean, as a share of the feature's largest distance over the clusters "
        "(features not standardised: compare colours within a column only)",
    )


# -- figure states --------------------------------------------------------------------------------
def scree_state(pca: PCAResult) -> list[dict[str, Any]]:
    """Explained variance ratio of each kept component (of the total variance)."""
    return [
        {"label": str(name), "ratio": json_value(r)}
        for name, r in pca.explained_variance_ratio.items()
    ]


def centers_figure(pca: PCAResult, kmeans: KMeansResult) -> dict[str, Any]:
    """Scatter of the cluster centres on PC1/PC2, area ~ released size (no patient points)."""
    pts = center_points(pca, kmeans)
    notes = []
    if (pca.dataset, pca.where) != (kmeans.dataset, kmeans.where):
        notes.append(
            f"components from a PCA on '{pca.dataset}'"
            + (f" where {pca.where}" if pca.where else "")
            + f"; clusters from '{kmeans.dataset}'"
            + (f" where {kmeans.where}" if kmeans.where else "")
        )
    if (pts["size"] == 0).any():
        notes.append("hollow circle: no released members (centre kept from earlier rounds)")
    return {
        "kind": "scatter",
        "mode": "centers",
        "title": "cluster centres on the principal components (area ~ released cluster size; "
        "no patient is plotted)",
        "x_label": axis_label(pca, 0),
        "y_label": axis_label(pca, 1),
        "points": [
            {
                "label": str(name),
                "x": json_value(x),
                "y": json_value(y),
                "size": int(size),
                "area": json_value(area),
            }
            for name, x, y, size, area in zip(
                pts.index, pts["x"], pts["y"], pts["size"], pts["area"], strict=True
            )
        ],
        "arrows": False,
        "unit_circle": False,
        "scree": scree_state(pca),
        "notes": notes,
    }


def loadings_figure(pca: PCAResult) -> dict[str, Any]:
    """Each feature's loadings on PC1/PC2 as an arrow from the origin; {} with one component."""
    if pca.n_components < 2:
        return {}
    pts = loading_points(pca)
    return {
        "kind": "scatter",
        "mode": "loadings",
        "title": "loadings of each feature on the first two components",
        "x_label": axis_label(pca, 0),
        "y_label": axis_label(pca, 1),
        "points": [
            {"label": str(name), "x": json_value(x), "y": json_value(y)}
            for name, x, y in zip(pts.index, pts["x"], pts["y"], strict=True)
        ],
        "arrows": True,
        "unit_circle": True,
        "scree": scree_state(pca),
        "notes": [],
    }


def profile_figure(kmeans: KMeansResult) -> dict[str, Any]:
    """Heatmap of the cluster centres: rows clusters, columns features (see :func:`profile_values`)."""
    z, scale, label = profile_values(kmeans)
    centres = kmeans.cluster_centers
    finite = np.abs(z.to_numpy(dtype=float))
    finite = finite[np.isfinite(finite)]
    limit = 1.0 if scale == "relative" or not finite.size or finite.max() == 0 else finite.max()
    sizes = kmeans.cluster_sizes.reindex(centres.index).fillna(0)
    return {
        "kind": "heatmap",
        "title": "cluster profiles: centres against the pooled mean",
        "scale": scale,
        "label": label,
        "limit": float(limit),
        "rows": [str(r) for r in centres.index],
        "sizes": [int(s) for s in sizes],
        "columns": [str(c) for c in centres.columns],
        "z": [[json_value(v) for v in row] for row in z.to_numpy(dtype=float)],
        "values": [[json_value(v) for v in row] for row in centres.to_numpy(dtype=float)],
        "means": [json_value(kmeans.mean.get(c, np.nan)) for c in centres.columns],
    }


# -- whole widgets' content ----------------------------------------------------------------------
def kmeans_title(kmeans: KMeansResult) -> str:
    status = "converged" if kmeans.converged else "stopped at max_iter"
    return (
        f"k-means on '{kmeans.dataset}': {kmeans.n_clusters} clusters, "
        f"{kmeans.n_iter} rounds ({status})"
    )


def kmeans_footnote(kmeans: KMeansResult, figure: dict[str, Any] | None = None) -> str:
    """The HTML view's footnote, plus how to read the figure."""
    units = "standardised" if kmeans.standardize else "original"
    text = (
        f"Centres in original units; inertia {kmeans.inertia:.6g} ({units} units). "
        f"Labels are kept at each site as column '{kmeans.column}'. " + " ".join(kmeans.notes)
    ).strip()
    if figure and figure.get("kind") == "heatmap":
        text += " Hover a heatmap cell for the centre in original units."
    return text


def kmeans_tables(kmeans: KMeansResult) -> list[dict[str, Any]]:
    """The centres with sizes, then (where sites released their own) per site and cluster the
    released size (or why not)."""
    tables = [table_state(kmeans.summary, "centres (original units) and released sizes")]
    if len(kmeans.by_site):  # pooled through secure sums: no site's own clusters were seen
        tables.append(table_state(kmeans.by_site.set_index(["site", "cluster"]), "per site"))
    return tables


def kmeans_figure(kmeans: KMeansResult, pca: PCAResult | None = None) -> dict[str, Any]:
    """The centres on PC1/PC2 with ``pca``, else the cluster-profile heatmap."""
    return profile_figure(kmeans) if pca is None else centers_figure(pca, kmeans)


def pca_title(pca: PCAResult) -> str:
    return (
        f"PCA on '{pca.dataset}': {pca.n_components} components of "
        f"{len(pca.features)} features, {pca.n_samples} patients"
    )


def pca_footnote(pca: PCAResult) -> str:
    return (
        "From the pooled covariance"
        + (" of standardised features (correlation)." if pca.standardize else ".")
        + " Signs as scikit-learn (largest loading positive)."
    )


def pca_figure(pca: PCAResult, kmeans: KMeansResult | None = None) -> dict[str, Any]:
    """The loadings on PC1/PC2, or with ``kmeans`` its centres there (as ``kmeans.widget(pca)``)."""
    return loadings_figure(pca) if kmeans is None else centers_figure(pca, kmeans)
