"""Log-rank test across two or more groups, from the same per-site event tables as Kaplan–Meier.

Site step (``logrank_tables``): identical to ``km_tables`` (coarsened, merged event tables per group).
Combine: pooled at-risk and event counts per group at the union of event times, then the observed minus
expected vector and its covariance exactly as lifelines' ``multivariate_logrank_test`` (chi-squared with
G-1 degrees of freedom). A site that withheld any group is left out of the test entirely (its other
groups would otherwise be compared against an incomplete risk set); the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.base import Ask, SiteStep, param_columns
from fedhem_kernel.analyses.kaplan_meier import (
    check_survival_params,
    collect_group_tables,
    pool_tables,
    site_survival_tables,
)
from fedhem_kernel.analyses.levels import require_levels
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.report import PrivacyReport


@dataclass(frozen=True)
class LogrankResult:
    """lifelines' ``StatisticalResult`` naming: test_statistic, p_value, degrees_of_freedom."""

    test_statistic: float
    p_value: float
    degrees_of_freedom: int
    summary: pd.DataFrame
    groups: tuple[str, ...]
    privacy: PrivacyReport
    test_name: str = "multivariate_logrank_test"

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        head = pd.DataFrame(
            {
                "test_statistic": [self.test_statistic],
                "p": [self.p_value],
                "degrees_of_freedom": [self.degrees_of_freedom],
            },
            index=[self.test_name],
        )
        return result_html(
            f"log-rank test on '{self.privacy.dataset}'",
            pd.concat([head.T.rename(columns={self.test_name: "value"})]),
            self.privacy,
            extra_tables=[("Observed and expected events", self.summary)],
        )

    def widget(self) -> Any:
        """This result as an interactive widget: the test, observed and expected events, and the privacy panel."""
        from fedhem_kernel.display.widgets import logrank_widget

        return logrank_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return (
            f"LogrankResult(test_statistic={self.test_statistic:.4f}, p_value={self.p_value:.4g}, "
            f"degrees_of_freedom={self.degrees_of_freedom}; {self.privacy!r})"
        )


def logrank_from_counts(n: np.ndarray, d: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Statistic, observed and expected from at-risk ``n`` and events ``d`` (times × groups)."""
    n_tot = n.sum(axis=1)
    d_tot = d.sum(axis=1)
    keep = d_tot > 0
    n, d, n_tot, d_tot = n[keep], d[keep], n_tot[keep], d_tot[keep]
    expected = n * (d_tot / n_tot)[:, None]
    observed = d.sum(axis=0)
    z = observed - expected.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (n_tot - d_tot) / (n_tot - 1)
    ratio[~np.isfinite(ratio)] = 1.0
    factor = ratio * d_tot / n_tot**2
    # V = sum_t factor * (diag(n_g * n) - n_g n_h)
    weighted = n * np.sqrt(factor)[:, None]
    cov = -(weighted.T @ weighted)
    cov[np.diag_indices_from(cov)] += (n * (n_tot * factor)[:, None]).sum(axis=0)
    g = n.shape[1]
    zz = z[: g - 1]
    stat = float(zz @ np.linalg.pinv(cov[: g - 1, : g - 1]) @ zz)
    return stat, observed, expected.sum(axis=0)


def run_logrank(q: Ask, duration: str, event: str, group: str) -> LogrankResult:
    check_survival_params(duration, event, group)
    if group is None:
        raise ParameterError("the log-rank test needs a 'group' column")
    levels = require_levels(q, group, minimum=2)
    params = {"duration": duration, "event": event, "group": group, "levels": levels}
    per_site = q.ask("logrank_tables", params)
    labels, _, withheld = collect_group_tables(per_site)
    excluded = sorted({s for sites in withheld.values() for s in sites})
    for site in excluded:
        q.note(f"{site}: left out of the test because it withheld at least one group")
    usable = {s: p for s, p in per_site.items() if s not in excluded}
    labels, by_group, _ = collect_group_tables(usable)
    labels = [g for g in labels if by_group.get(g)]
    if len(labels) < 2:
        raise DisclosureError(
            "fewer than two groups could be released", dataset=q.dataset, rule="min_cell_count"
        )
    pooled = {g: pool_tables(by_group[g]) for g in labels}
    times = np.unique(np.concatenate([p.time[p.events > 0] for p in pooled.values()]))
    n = np.column_stack([pooled[g].at_risk_at(times) for g in labels]).astype(float)
    d = np.zeros_like(n)
    for j, g in enumerate(labels):
        p = pooled[g]
        idx = np.searchsorted(p.time, times)
        hit = (idx < len(p.time)) & (p.time[np.clip(idx, 0, len(p.time) - 1)] == times)
        d[hit, j] = p.events[idx[hit]]
    stat, observed, expected = logrank_from_counts(n, d)
    dof = len(labels) - 1
    summary = pd.DataFrame(
        {"observed": observed, "expected": expected}, index=pd.Index(labels, name=group)
    )
    return LogrankResult(
        stat, float(stats.chi2.sf(stat, dof)), dof, summary, tuple(labels), q.report()
    )


STEPS = [
    SiteStep(
        "logrank_tables",
        "logrank",
        site_survival_tables,
        param_columns("duration", "event", "group"),
    )
]
