"""The result of ``pca``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True, repr=False)
class PCAResult(Result):
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
