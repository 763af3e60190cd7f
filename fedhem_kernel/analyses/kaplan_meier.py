"""Kaplan–Meier survival curves, pooled exactly from per-site event tables.

Site step (``km_tables``): per group, durations coarsened up to the policy's time grid, the event table
(time, at risk, events, censored), and small steps merged until every released count is 0 or at least
``min_cell_count`` (see :mod:`fedhem_kernel.privacy.survival`). Combine: each site's table is a step
function of the number at risk; summing them at the union of released times gives the pooled at-risk
and event counts, from which the product-limit estimate, Greenwood variance, exponential-Greenwood
("log-log") confidence interval and median follow exactly as in lifelines' ``KaplanMeierFitter``.
Under ``Policy.unrestricted()`` the pooled curve equals lifelines on the pooled rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.levels import grouping, require_levels
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.survival import (
    check_event_table,
    coarsen_to_policy,
    event_table,
    merge_small_steps,
)
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

ALL = "all"


# -- site step ------------------------------------------------------------------------------
def release_group_tables(
    data: SiteData,
    groups: pd.Series | None,
    levels: list[str] | None,
    n: int,
    table_of: Callable[[np.ndarray], Any],
    merge: Callable[[Any, int], tuple[Any, int]],
    too_small: str = "",
) -> list[dict[str, Any]]:
    """Per group: the merged event table a site may release, or why it is withheld.

    ``table_of(selection)`` builds the group's event table, ``merge`` merges small steps;
    every table passes :func:`check_event_table` before it can leave the site.
    """
    k = data.k
    out: list[dict[str, Any]] = []
    for label in levels or [ALL]:
        sel = np.ones(n, dtype=bool) if groups is None else (groups == label).to_numpy()
        if not sel.any():
            out.append({"group": label, "empty": True})
            continue
        merged, n_merged = merge(table_of(sel), k)
        if merged is None:
            data.log.suppressed(
                "min_cell_count",
                f"group '{label}': too few patients or events for any step of at least {k}"
                + too_small,
                group=str(label),
                action="withheld",
                k=k,
            )
            out.append({"group": label, "suppressed": True})
            continue
        problems = check_event_table(merged, k)
        if problems:  # a bug in merging must never become a release
            raise RuntimeError("event table failed its release check: " + ", ".join(problems))
        if n_merged:
            data.log.suppressed(
                "min_cell_count",
                f"group '{label}': {n_merged} steps with counts below {k} merged into neighbours",
                group=str(label),
                action="merged",
                steps=int(n_merged),
                k=k,
            )
        out.append(
            {
                "group": label,
                "time": merged.time,
                "at_risk": merged.at_risk,
                "events": merged.events,
                "censored": merged.censored,
            }
        )
    return out


def site_survival_tables(data: SiteData, params: Payload) -> Payload:
    duration, event = params["duration"], params["event"]
    group = params.get("group")
    t, e = data.survival(duration, event)
    unit = data.schema.column(duration).unit
    t, step = coarsen_to_policy(t, data.policy.time_resolution, unit, data.log.note)
    groups = grouping(data, group, params.get("levels"))
    out = release_group_tables(
        data,
        groups,
        params.get("levels"),
        len(t),
        lambda sel: event_table(t[sel], e[sel]),
        merge_small_steps,
    )
    return {"groups": out, "time_step": step, "unit": unit}


# -- combine --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PooledTable:
    """Pooled counts of one group at the union of the sites' released times."""

    time: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    sites: tuple[str, ...]

    def at_risk_at(self, times: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.time, times, side="left")
        padded = np.append(self.at_risk, 0)
        return padded[idx]


def pool_tables(tables: dict[str, dict[str, np.ndarray]]) -> PooledTable:
    """Sum site event tables (each a step function of the number at risk)."""
    times = np.unique(np.concatenate([tab["time"] for tab in tables.values()]))
    at_risk = np.zeros(len(times), dtype=np.int64)
    events = np.zeros(len(times), dtype=np.int64)
    for tab in tables.values():
        t_s = np.asarray(tab["time"], dtype=float)
        idx = np.searchsorted(t_s, times, side="left")
        inside = idx < len(t_s)
        at_risk[inside] += np.asarray(tab["at_risk"])[idx[inside]]
        exact = np.zeros(len(times), dtype=bool)
        exact[inside] = t_s[idx[inside]] == times[inside]
        events[exact] += np.asarray(tab["events"])[idx[exact]]
    return PooledTable(times, at_risk, events, tuple(tables))


def collect_group_tables(
    per_site: dict[str, Payload],
) -> tuple[list[str], dict[str, dict[str, dict[str, np.ndarray]]], dict[str, list[str]]]:
    """Released tables by group and site; and, per group, the sites that suppressed it."""
    labels: list[str] = []
    by_group: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    withheld: dict[str, list[str]] = {}
    for site, payload in per_site.items():
        for g in payload["groups"]:
            label = g["group"]
            if label not in labels:
                labels.append(label)
            by_group.setdefault(label, {})
            if g.get("suppressed"):
                withheld.setdefault(label, []).append(site)
            elif not g.get("empty"):
                by_group[label][site] = g
    return labels, by_group, withheld


def km_estimate(table: PooledTable, alpha: float = 0.05) -> pd.DataFrame:
    """Product-limit estimate with lifelines' exponential Greenwood interval, indexed by time."""
    n, d = table.at_risk.astype(float), table.events.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s = np.cumsum(np.log(n - d) - np.log(n))
        var_terms = d / (n * (n - d))
    var_terms[~np.isfinite(var_terms)] = 0.0
    cum_sq = np.cumsum(var_terms)
    times = table.time
    if len(times) == 0 or times[0] > 0:
        times = np.concatenate(([0.0], times))
        log_s = np.concatenate(([0.0], log_s))
        cum_sq = np.concatenate(([0.0], cum_sq))
    surv = np.exp(log_s)
    z = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(surv)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(cum_sq) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(cum_sq) / v))
    lower = np.where(np.isnan(lower), 1.0, lower)
    upper = np.where(np.isnan(upper), 1.0, upper)
    return pd.DataFrame({"survival": surv, "lower": lower, "upper": upper}, index=times)


def median_time(survival: pd.Series) -> float:
    """lifelines' rule: the first time at which S(t) <= 0.5 (inf if never)."""
    if survival.iloc[-1] > 0.5:
        return float("inf")
    return float(survival.index[(-survival).searchsorted([-0.5])[0]])


@dataclass(frozen=True)
class KaplanMeierResult:
    """Pooled Kaplan–Meier estimate, one column per group (lifelines naming)."""

    survival_function: pd.DataFrame
    confidence_interval: pd.DataFrame
    at_risk: pd.DataFrame
    event_tables: dict[str, pd.DataFrame]
    median_survival: pd.Series
    privacy: PrivacyReport
    duration: str
    event: str
    group: str | None = None
    time_step: float | None = None
    unit: str | None = None
    contributing_sites: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return list(self.survival_function.columns)

    def survival_function_at_times(self, times: Any, group: str | None = None) -> pd.Series:
        """S(t) at arbitrary times (right-continuous steps), like lifelines."""
        label = group if group is not None else self.groups[0]
        curve = self._curves()[label]
        t = np.atleast_1d(np.asarray(times, dtype=float))
        idx = np.searchsorted(curve.index.to_numpy(), t, side="right") - 1
        values = np.where(idx >= 0, curve.to_numpy()[np.clip(idx, 0, None)], 1.0)
        return pd.Series(values, index=t, name=label)

    def _curves(self) -> dict[str, pd.Series]:
        return {g: self.event_tables[g].attrs["survival"] for g in self.groups}

    def plot(self, ax: Any = None, ci: bool = True, at_risk_counts: bool = True) -> Any:
        from fedhem_kernel.display.km_plot import plot_km

        return plot_km(self, ax=ax, ci=ci, at_risk_counts=at_risk_counts)

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import km_html

        return km_html(self)

    def widget(self) -> Any:
        """This result as an interactive widget: the curves with 95 % bands, numbers at risk, hover values and the privacy panel."""
        from fedhem_kernel.display.widgets import km_widget

        return km_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        med = ", ".join(f"{g}: {v:.4g}" for g, v in self.median_survival.items())
        return (
            f"KaplanMeierResult({self.duration}, {self.event}"
            + (f", group={self.group}" if self.group else "")
            + f"; median survival {med}; {self.privacy!r})"
        )


def _step_values(
    times: np.ndarray, values: np.ndarray, at: np.ndarray, before: float
) -> np.ndarray:
    """Right-continuous step function (value at the last time <= t; ``before`` earlier)."""
    idx = np.searchsorted(times, at, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], before)


def build_km_result(
    q: Ask, per_site: dict[str, Payload], duration: str, event: str, group: str | None
) -> KaplanMeierResult:
    labels, by_group, withheld = collect_group_tables(per_site)
    estimates: dict[str, pd.DataFrame] = {}
    pooled: dict[str, PooledTable] = {}
    for label in labels:
        if withheld.get(label):
            q.note(
                f"group '{label}': not released by {', '.join(withheld[label])} "
                "(the pooled curve uses the other sites)"
            )
        if by_group.get(label):
            pooled[label] = pool_tables(by_group[label])
            estimates[label] = km_estimate(pooled[label])
    if not estimates:
        raise DisclosureError(
            "no site could release any step of this curve", dataset=q.dataset, rule="min_cell_count"
        )
    timeline = np.unique(np.concatenate([est.index.to_numpy() for est in estimates.values()]))
    sf, ci, risk, tables, medians = {}, {}, {}, {}, {}
    for label, est in estimates.items():
        t = est.index.to_numpy()
        sf[label] = _step_values(t, est["survival"].to_numpy(), timeline, 1.0)
        ci[f"{label}_lower_0.95"] = _step_values(t, est["lower"].to_numpy(), timeline, 1.0)
        ci[f"{label}_upper_0.95"] = _step_values(t, est["upper"].to_numpy(), timeline, 1.0)
        risk[label] = pooled[label].at_risk_at(timeline)
        medians[label] = median_time(est["survival"])
        tab = pd.DataFrame(
            {"at_risk": pooled[label].at_risk, "observed": pooled[label].events},
            index=pd.Index(pooled[label].time, name="time"),
        )
        tab.attrs["survival"] = est["survival"]
        tables[label] = tab
    index = pd.Index(timeline, name="timeline")
    first = next(iter(per_site.values()))
    return KaplanMeierResult(
        survival_function=pd.DataFrame(sf, index=index),
        confidence_interval=pd.DataFrame(ci, index=index),
        at_risk=pd.DataFrame(risk, index=index),
        event_tables=tables,
        median_survival=pd.Series(medians, name="median_survival"),
        privacy=q.report(),
        duration=duration,
        event=event,
        group=group,
        time_step=first.get("time_step"),
        unit=first.get("unit"),
        contributing_sites={g: p.sites for g, p in pooled.items()},
    )


def check_survival_params(duration: Any, event: Any, group: Any) -> None:
    for name, value in (("duration", duration), ("event", event)):
        if not isinstance(value, str) or not value:
            raise ParameterError(f"'{name}' must be a column name")
    if group is not None and not isinstance(group, str):
        raise ParameterError("'group' must be a column name or None")
    if group == "site":
        raise ParameterError("group='site' is not supported yet: compare sites with crosstab")


def run_kaplan_meier(q: Ask, duration: str, event: str, group: str | None) -> KaplanMeierResult:
    check_survival_params(duration, event, group)
    levels = require_levels(q, group)
    params = {"duration": duration, "event": event, "group": group, "levels": levels}
    per_site = q.ask("km_tables", params)
    return build_km_result(q, per_site, duration, event, group)


STEPS = [
    SiteStep(
        "km_tables",
        "kaplan_meier",
        site_survival_tables,
        param_columns("duration", "event", "group"),
    )
]
