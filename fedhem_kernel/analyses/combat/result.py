"""The result of ``combat``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True, repr=False)
class CombatResult(Result):
    """ComBat harmonisation; the harmonised values stay at the sites as derived columns.

    ``features`` (harmonised), ``columns`` (their derived column names at the sites,
    ``<feature><suffix>``), ``batch_effects`` (per batch: size ``n``, then ``gamma_star`` and
    ``delta_star`` per feature: the additive and multiplicative batch effects removed, in units
    of the pooled residual SD), ``summary`` (per batch and feature: ``n``, mean and SD before and
    after, from the sites' released moments), ``estimates`` (neuroCombat's names: ``B_hat``,
    ``grand_mean``, ``var_pooled``, ``gamma_hat``, ``delta_hat``, ``gamma_bar``, ``t2``,
    ``a_prior``, ``b_prior``) and ``privacy``. Use the columns in later queries:
    ``fed.describe(dataset, result.columns)``, ``fed.kmeans(dataset, result.columns, k=3)``.
    """

    features: tuple[str, ...]
    columns: tuple[str, ...]
    batch_effects: pd.DataFrame
    summary: pd.DataFrame
    estimates: dict[str, Any]
    privacy: PrivacyReport
    dataset: str
    batch: str | None
    covariates: tuple[str, ...]
    eb: bool
    parametric: bool
    mean_only: bool
    n_observations: int
    where: str | None = None
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_batches(self) -> int:
        return len(self.batch_effects)

    @property
    def gamma_star(self) -> pd.DataFrame:
        """Additive batch effects (batch x feature, standardised units)."""
        return self.batch_effects["gamma_star"]

    @property
    def delta_star(self) -> pd.DataFrame:
        """Multiplicative batch effects (batch x feature; variance ratios)."""
        return self.batch_effects["delta_star"]

    @property
    def title(self) -> str:
        method = (
            "no empirical Bayes"
            if not self.eb
            else ("parametric" if self.parametric else "non-parametric") + " empirical Bayes"
        )
        return (
            f"ComBat on '{self.dataset}': {len(self.features)} features, {self.n_batches} "
            f"batches, {self.n_observations} patients ({method}"
            + (", mean only)" if self.mean_only else ")")
        )

    @property
    def footnote(self) -> str:
        return (
            "Batch effects: gamma_star (additive) and delta_star (multiplicative), in units "
            "of the pooled residual SD. Harmonised values are kept at each site as columns "
            + ", ".join(f"'{c}'" for c in self.columns)
            + ". "
            + " ".join(self.notes)
        )

    def _headline(self) -> str:
        return (
            f"features={list(self.features)}, columns={list(self.columns)}, "
            f"n_batches={self.n_batches}, n_observations={self.n_observations}"
        )
