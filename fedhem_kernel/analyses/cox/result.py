"""The result of a federated Cox fit: lifelines' ``CoxPHFitter`` names, display and privacy report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.common.result_base import Result, time_grid
from fedhem_kernel.protocol.report import PrivacyReport

if TYPE_CHECKING:
    from fedhem_kernel.analyses.cox.combine_sums import CoxFit
    from fedhem_kernel.analyses.cox.result_checks import Concordance, ProportionalHazardTest


@dataclass(frozen=True)
class LikelihoodRatioTest:
    """lifelines' ``StatisticalResult`` naming: the model against the model without covariates."""

    test_statistic: float
    degrees_of_freedom: int
    p_value: float
    test_name: str = "log-likelihood ratio test"

    @property
    def degrees_freedom(self) -> int:
        """lifelines' spelling of :attr:`degrees_of_freedom`."""
        return self.degrees_of_freedom

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "test_statistic": [self.test_statistic],
                "p": [self.p_value],
                "-log2(p)": [-np.log2(self.p_value) if self.p_value > 0 else np.inf],
            }
        )


def summary_frame(params: pd.Series, variance: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """lifelines' ``CoxPHFitter.summary`` columns from coefficients and their covariance."""
    se = np.sqrt(np.diag(variance.to_numpy()))
    z_crit = stats.norm.ppf(1 - alpha / 2)
    ci = f"{100 * (1 - alpha):g}%"
    coef = params.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        z = coef / se
        p = stats.chi2.sf(z**2, 1)
        df = pd.DataFrame(index=params.index)
        df["coef"] = coef
        df["exp(coef)"] = np.exp(coef)
        df["se(coef)"] = se
        df[f"coef lower {ci}"] = coef - z_crit * se
        df[f"coef upper {ci}"] = coef + z_crit * se
        df[f"exp(coef) lower {ci}"] = np.exp(coef) * np.exp(-z_crit * se)
        df[f"exp(coef) upper {ci}"] = np.exp(coef) * np.exp(z_crit * se)
        df["cmp to"] = np.zeros_like(coef)
        df["z"] = z
        df["p"] = p
        df["-log2(p)"] = -np.log2(p)
    return df


@dataclass(frozen=True, repr=False)
class CoxResult(Result):
    """A pooled Cox proportional-hazards fit, named as lifelines' ``CoxPHFitter``.

    ``summary`` (coef, exp(coef), se(coef), 95 % intervals, z, p), ``params_``, ``variance_matrix_``,
    ``log_likelihood_`` and :meth:`log_likelihood_ratio_test`; ``privacy`` says what each site
    released, and ``notes`` how the fit may differ from one on the pooled rows.
    """

    summary: pd.DataFrame
    params_: pd.Series
    variance_matrix_: pd.DataFrame
    log_likelihood_: float
    log_likelihood_null_: float
    duration: str
    event: str
    covariates: tuple[str, ...]
    strata: str | tuple[str, ...] | None
    ties: str
    iterations: int
    converged: bool
    n_sites: int
    n_observations: int
    n_events: int
    privacy: PrivacyReport
    notes: tuple[str, ...] = ()
    time_step: float | None = None
    unit: str | None = None
    fit: CoxFit | None = field(default=None, repr=False, compare=False)
    concordance: Concordance | None = field(default=None, repr=False, compare=False)
    ph_tests: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    @property
    def params(self) -> pd.Series:
        """The coefficients (log hazard ratios), one per design column."""
        return self.params_

    @property
    def standard_errors_(self) -> pd.Series:
        return self.summary["se(coef)"].rename("se")

    @property
    def hazard_ratios_(self) -> pd.Series:
        return np.exp(self.params_).rename("exp(coef)")

    @property
    def confidence_intervals_(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "95% lower-bound": self.summary["coef lower 95%"],
                "95% upper-bound": self.summary["coef upper 95%"],
            }
        )

    @property
    def log_likelihood(self) -> float:
        return self.log_likelihood_

    @property
    def columns(self) -> list[str]:
        """The design columns (a categorical covariate gives one per non-reference level)."""
        return list(self.params_.index)

    @property
    def concordance_index_(self) -> float:
        """Harrell's C of the fitted scores, over all pooled pairs (lifelines' definition).

        Pairs within a site are compared exactly; pairs across sites from binned scores, a pair in
        overlapping bins counting ½ (a pooled fit: every pair, by the sites, on binned scores). :attr:`concordance_bounds_` gives the range those pairs allow.
        """
        return self.concordance.value if self.concordance else float("nan")

    @property
    def concordance_index(self) -> float:
        """Alias of :attr:`concordance_index_` (the name used in FedHem's architecture notes)."""
        return self.concordance_index_

    @property
    def concordance_bounds_(self) -> tuple[float, float]:
        """The lowest and highest C the pairs left unresolved by binning allow (exact C is inside)."""
        if self.concordance is None:
            return (float("nan"), float("nan"))
        return (self.concordance.lower, self.concordance.upper)

    def proportional_hazard_test(
        self, time_transform: str | list[str] = "rank"
    ) -> ProportionalHazardTest:
        """Schoenfeld-residual test of proportional hazards, as lifelines' ``proportional_hazard_test``.

        ``time_transform``: ``"rank"`` (default, tied times get their average rank), ``"km"``,
        ``"identity"``, ``"log"``, a list of them, or ``"all"``. Computed at fit time from
        aggregated residual sums; no residual left a site.
        """
        from fedhem_kernel.analyses.cox.combine_checks import ph_test_result

        return ph_test_result(self.ph_tests, time_transform)

    def plot(self, ax: Any = None, hazard_ratios: bool = False, **errorbar_kwargs: Any) -> Any:
        """Forest plot of the coefficients (or hazard ratios, log axis) with 95 % intervals."""
        from fedhem_kernel.display.forest import plot_forest

        return plot_forest(self, ax=ax, hazard_ratios=hazard_ratios, **errorbar_kwargs)

    def log_likelihood_ratio_test(self) -> LikelihoodRatioTest:
        """The fitted model against the model without covariates (chi-squared, df = #params)."""
        stat = 2 * self.log_likelihood_ - 2 * self.log_likelihood_null_
        dof = len(self.params_)
        return LikelihoodRatioTest(float(stat), dof, float(stats.chi2.sf(stat, dof)))

    def _concordance_text(self) -> str:
        c = self.concordance
        if c is None:
            return ""
        if c.unresolved == 0:  # (None: not released; the bounds say what binning left open)
            return f"{c.value:.4f}"
        return f"{c.value:.4f} (between {c.lower:.4f} and {c.upper:.4f})"

    @property
    def title(self) -> str:
        return f"Cox model: {self.duration} / {self.event} on '{self.privacy.dataset}'"

    @property
    def footnote(self) -> str:
        grid = time_grid(self.time_step, self.unit, "each site's grid")
        return f"{grid}; ties by {self.ties.capitalize()}; pooled from the sites' risk-set sums."

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        return [("Model", self.model_table())]

    def model_table(self) -> pd.DataFrame:
        """The model as a one-column table: data, fit, likelihood-ratio test, concordance."""
        lr = self.log_likelihood_ratio_test()
        rows = {
            "duration / event": f"{self.duration} / {self.event}",
            "strata": self.strata if isinstance(self.strata, str) else ", ".join(self.strata or ()),
            "ties": self.ties,
            "sites": self.n_sites,
            "observations": self.n_observations,
            "events": self.n_events,
            "partial log-likelihood": round(self.log_likelihood_, 4),
            "LR test (df)": f"{lr.test_statistic:.4g} ({lr.degrees_of_freedom})",
            "LR test p": f"{lr.p_value:.4g}",
            "concordance (Harrell's C)": self._concordance_text(),
            "iterations": self.iterations,
        }
        if self.concordance is None:
            rows.pop("concordance (Harrell's C)")
        if not self.strata:
            rows.pop("strata")
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def _headline(self) -> str:
        coefs = ", ".join(f"{c}={v:.4g}" for c, v in self.params_.items())
        return f"{self.duration}, {self.event}; {coefs}; log-likelihood {self.log_likelihood_:.4f}"
