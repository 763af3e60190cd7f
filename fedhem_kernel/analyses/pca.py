"""PCA from the federated covariance matrix.

Site step (``pca_stats``): for the patients with every feature, their number ``n``, the feature means
and the centred cross-product matrix ``(X - mean)ᵀ(X - mean)`` (p x p). Combine: the exact pooled mean
and covariance (Chan's formula for matrices), then the eigendecomposition of the covariance, as
scikit-learn's ``PCA`` does with its ``covariance_eigh`` solver (chosen by ``svd_solver="auto"`` when
there are at least 10 rows per feature): eigenvalues in decreasing order, clipped at 0, and each
component's sign fixed so that its largest-magnitude loading is positive (``svd_flip`` with
``u_based_decision=False``). ``standardize=True`` divides by the pooled population SD first
(``StandardScaler``), i.e. PCA of the correlation structure. Under ``Policy.unrestricted()`` the
components, explained variance (ratio) and mean equal scikit-learn's on the pooled rows.

Release rules (at the site, unless the policy is unrestricted): the rules of
:mod:`fedhem_kernel.analyses.feature_matrix` (numeric features, 0 or >= k rows left out for missing
values, no feature singling out 1..k-1 patients, n >= k), and ``max_parameters``: at least 10 patients
per feature at the site (the same 1-in-10 rule as Cox). ``XᵀX`` and the sums of few rows determine much
of those rows; with 10 rows per feature they do not.

:meth:`PCAResult.transform` maps points given in the original units (e.g. k-means cluster centres) to
component scores; :meth:`PCAResult.plot_centers` draws the centres of a k-means result on two
components (no patient is plotted: only centres, sized by their cluster's released size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.feature_matrix import (
    check_features,
    feature_matrix,
    pooled_moments,
    standard_scale,
)
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

ROWS_PER_FEATURE = 10
CACHE = "pca"


def site_pca_stats(data: SiteData, params: Payload) -> Payload:
    features = check_features(params.get("features"))
    fm = feature_matrix(data, features, CACHE)
    data.scratch.pop(CACHE, None)  # one round only: do not keep the matrix
    p = len(features)
    if data.k > 1 and fm.n < ROWS_PER_FEATURE * p:
        raise data.refuse(
            "max_parameters",
            f"{p} features need at least {ROWS_PER_FEATURE * p} patients with every feature at "
            "this site",
        )
    mean = fm.x.mean(axis=0)
    centred = fm.x - mean
    return {"n": fm.n, "mean": mean, "m2": centred.T @ centred}


STEPS = [SiteStep("pca_stats", "pca", site_pca_stats, param_columns("features"))]


def _svd_flip_rows(v: np.ndarray) -> np.ndarray:
    """scikit-learn's ``svd_flip(None, v, u_based_decision=False)``: largest |loading| positive."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.sign(v[np.arange(v.shape[0]), idx])
    signs[signs == 0] = 1.0
    return v * signs[:, None]


@dataclass(frozen=True)
class PCAResult:
    """Principal components of the pooled rows (scikit-learn naming without the underscore).

    ``components`` (n_components x features, unit rows), ``explained_variance`` (eigenvalues of the
    covariance with ddof=1), ``explained_variance_ratio`` (of the total variance), ``mean`` (pooled
    feature means, original units), ``scale`` (pooled population SDs when ``standardize=True``,
    else 1), ``n_samples`` and ``privacy``.
    """

    components: pd.DataFrame
    explained_variance: pd.Series
    explained_variance_ratio: pd.Series
    mean: pd.Series
    scale: pd.Series
    n_samples: int
    standardize: bool
    privacy: PrivacyReport
    dataset: str
    where: str | None = None

    @property
    def features(self) -> list[str]:
        return list(self.components.columns)

    @property
    def n_components(self) -> int:
        return len(self.components)

    def transform(self, points: Any) -> pd.DataFrame:
        """Component scores of points given in original units (a DataFrame with the features as
        columns, e.g. ``kmeans_result.cluster_centers``, or an array with them in order)."""
        if isinstance(points, pd.DataFrame):
            missing = [f for f in self.features if f not in points.columns]
            if missing:
                raise ParameterError("the points lack a feature of this PCA", column=missing[0])
            index = points.index
            x = points[self.features].to_numpy(dtype=float)
        else:
            x = np.atleast_2d(np.asarray(points, dtype=float))
            index = pd.RangeIndex(len(x))
            if x.shape[1] != len(self.features):
                raise ParameterError(f"points must have {len(self.features)} columns")
        scores = ((x - self.mean.to_numpy()) / self.scale.to_numpy()) @ self.components.T.to_numpy()
        return pd.DataFrame(scores, index=index, columns=self.components.index)

    def plot_centers(
        self, kmeans: Any, ax: Any = None, components: tuple[int, int] = (0, 1)
    ) -> Any:
        """Scatter of a k-means result's cluster centres on two components (no patient points)."""
        from fedhem_kernel.display.cluster_plot import plot_centers

        return plot_centers(self, kmeans, ax=ax, components=components)

    @property
    def summary(self) -> pd.DataFrame:
        """Explained variance (ratio) per component, then the loadings."""
        return pd.concat(
            [
                self.explained_variance.rename("explained_variance"),
                self.explained_variance_ratio.rename("explained_variance_ratio"),
                self.components,
            ],
            axis=1,
        )

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.cluster_plot import loadings_html
        from fedhem_kernel.display.cluster_state import pca_footnote, pca_title
        from fedhem_kernel.display.html import result_html

        return result_html(
            pca_title(self),
            self.summary,
            self.privacy,
            footnote=pca_footnote(self),
            figure=loadings_html(self),
        )

    def widget(self, kmeans: Any = None) -> Any:
        """This result as an interactive widget: the components table, the privacy panel and a
        plot of each feature's loadings on PC1/PC2, or with ``kmeans=`` (a k-means result on
        these features) its cluster centres there instead, as ``kmeans.widget(pca=...)``."""
        from fedhem_kernel.display.cluster_state import (
            pca_figure,
            pca_footnote,
            pca_title,
        )
        from fedhem_kernel.display.state import table_state
        from fedhem_kernel.display.widgets import ResultTableWidget

        return ResultTableWidget(
            pca_title(self),
            [table_state(self.summary, "explained variance and loadings")],
            self.privacy,
            footnote=pca_footnote(self),
            figure=pca_figure(self, kmeans),
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"PCAResult(\n{self.summary.to_string()}\n{self.privacy!r})"


def run_pca(
    q: Ask,
    features: Sequence[str] | str,
    n_components: int | None,
    standardize: bool = True,
) -> PCAResult:
    feats = check_features(features)
    p = len(feats)
    if n_components is None:
        n_components = p
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, int)
        or not 1 <= n_components <= p
    ):
        raise ParameterError(f"'n_components' must be a whole number between 1 and {p}")
    if not isinstance(standardize, bool):
        raise ParameterError("'standardize' must be True or False")
    payloads = q.ask("pca_stats", {"features": feats})
    n, mean, m2 = pooled_moments([payloads[s] for s in sorted(payloads)])
    if n < 2:
        raise ParameterError("PCA needs at least two patients", dataset=q.dataset)
    cov = m2 / (n - 1)
    scale = np.ones(p)
    if standardize:
        var = np.diag(m2) / n  # population variance, as StandardScaler
        scale = standard_scale(feats, var, q.dataset)
        cov = cov / np.outer(scale, scale)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    values = np.flip(values)
    vectors = np.flip(vectors, axis=1)
    values[values < 0.0] = 0.0
    components = _svd_flip_rows(vectors.T)
    total = float(values.sum())
    names = [f"PC{i + 1}" for i in range(n_components)]
    ratio = values / total if total > 0 else np.full(p, math.nan)
    return PCAResult(
        components=pd.DataFrame(components[:n_components], index=names, columns=feats),
        explained_variance=pd.Series(values[:n_components], index=names),
        explained_variance_ratio=pd.Series(ratio[:n_components], index=names),
        mean=pd.Series(mean, index=feats, name="mean"),
        scale=pd.Series(scale, index=feats, name="scale"),
        n_samples=n,
        standardize=standardize,
        privacy=q.report(),
        dataset=q.dataset,
        where=q.where,
    )
