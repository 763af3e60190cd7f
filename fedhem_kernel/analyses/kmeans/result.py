"""The result of ``kmeans``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.analyses.kmeans import COLUMN
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True)
class ClusterProfile:
    """Per-cluster describe of chosen variables and a Kaplan–Meier curve per cluster."""

    describe: Any
    kaplan_meier: Any | None

    def _repr_html_(self) -> str:
        parts = [self.describe._repr_html_()]
        if self.kaplan_meier is not None:
            parts.append(self.kaplan_meier._repr_html_())
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ClusterProfile(\n{self.describe!r}\n{self.kaplan_meier!r})"


@dataclass(frozen=True, repr=False)
class KMeansResult(Result):
    """Federated k-means (scikit-learn naming without the trailing underscore).

    ``cluster_centers`` (k x features, original units), ``cluster_sizes`` (patients per cluster in
    the released clusters), ``inertia`` (sum of squared distances to the nearest centre, in the units
    the clustering used: standardised when ``standardize=True``), ``n_iter``, ``by_site`` (per site
    and cluster: size or withheld), ``history`` (per Lloyd round: centre shift and inertia) and
    ``privacy``. The labels stay at the sites as column ``cluster`` of the dataset.
    """

    cluster_centers: pd.DataFrame
    cluster_sizes: pd.Series
    inertia: float
    n_iter: int
    converged: bool
    by_site: pd.DataFrame
    history: pd.DataFrame
    privacy: PrivacyReport
    dataset: str
    features: tuple[str, ...]
    standardize: bool
    mean: pd.Series
    scale: pd.Series
    init: str
    seed: int
    where: str | None = None
    column: str = COLUMN
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_centers)

    @property
    def n_observations(self) -> int:
        return int(self.cluster_sizes.sum())

    @property
    def n_sites(self) -> int:
        return len(self.privacy.released_sites)

    @property
    def summary(self) -> pd.DataFrame:
        """Centres (original units) with each cluster's size."""
        return self.cluster_centers.assign(size=self.cluster_sizes)

    def profile(
        self,
        fed: Any,
        variables: Sequence[str] | str | None = None,
        survival: tuple[str, str] | None = ("os_months", "os_status"),
    ) -> ClusterProfile:
        """Describe ``variables`` per cluster and a Kaplan–Meier curve per cluster (``survival``
        is ``(duration, event)`` or None), from the sites' ``cluster`` column.
        """
        self._check_current(fed)
        desc = fed.describe(self.dataset, variables, by=self.column, where=self.where)
        km = None
        if survival is not None:
            duration, event = survival
            km = fed.kaplan_meier(
                self.dataset, duration, event, group=self.column, where=self.where
            )
        return ClusterProfile(desc, km)

    def _check_current(self, fed: Any) -> None:
        """Refuse when the sites' column holds another clustering (a later k-means replaced it)."""
        catalog = fed.catalog(self.dataset)  # names and sources of columns, never values
        for site, columns in catalog.groupby("site", sort=False):
            if site not in self.privacy.released_sites:
                continue
            derived = dict(zip(columns["column"], columns["derived"], strict=True))
            if derived.get(self.column) != self.source:
                raise ParameterError(
                    f"the '{self.column}' column now holds another clustering (a later k-means "
                    "replaced it): profile that result, or run this k-means again",
                    site=site,
                    dataset=self.dataset,
                    column=self.column,
                )

    def _headline(self) -> str:
        return (
            f"n_clusters={self.n_clusters}, inertia={self.inertia:.6g}, "
            f"n_iter={self.n_iter}, converged={self.converged}"
        )
