"""Combine step of ``kaplan_meier``: pooled event tables, the Kaplan–Meier estimate and Greenwood intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_release
from fedhem_kernel.analyses.common.combine_grid import (
    GridPlan,
    PooledGrid,
    ask_pooled_grid,
    grid_plan,
)
from fedhem_kernel.analyses.kaplan_meier import ALL
from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.policy import MONTHS_PER_UNIT
from fedhem_kernel.protocol.query import Ask, Payload


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
    pooled: dict[str, PooledTable] = {}
    for label in labels:
        if withheld.get(label):
            q.note(
                f"group '{label}': not released by {', '.join(withheld[label])} "
                "(the pooled curve uses the other sites)"
            )
        if by_group.get(label):
            pooled[label] = pool_tables(by_group[label])
    first = next(iter(per_site.values()))
    return km_result(q, pooled, duration, event, group, first.get("time_step"), first.get("unit"))


def grid_tables(grid: PooledGrid, labels: list[str]) -> dict[str, PooledTable]:
    """Each group's pooled table at the grid steps where someone leaves (and its last step)."""
    out: dict[str, PooledTable] = {}
    times = grid.times()
    for row, label in enumerate(labels):
        last = int(grid.cut[row])
        if last < 0:  # the caller reports it
            continue
        at_risk = grid.at_risk(row)
        events = grid.events[row, : last + 1]
        moved = events + np.append(grid.censored[row, :last], 0)
        keep = (moved > 0) | (np.arange(last + 1) == last)
        out[label] = PooledTable(times[: last + 1][keep], at_risk[keep], events[keep], grid.sites)
    return out


def km_result(
    q: Ask,
    pooled: dict[str, PooledTable],
    duration: str,
    event: str,
    group: str | None,
    time_step: float | None,
    unit: str | None,
    pooled_sums: bool = False,
) -> KaplanMeierResult:
    """The result from each group's pooled table (``pooled_sums``: from secure sums)."""
    estimates = {label: km_estimate(table) for label, table in pooled.items()}
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
        time_step=time_step,
        unit=unit,
        contributing_sites={g: p.sites for g, p in pooled.items()},
        pooled=pooled_sums,
    )


def check_survival_params(duration: Any, event: Any, group: Any) -> None:
    for name, value in (("duration", duration), ("event", event)):
        if not isinstance(value, str) or not value:
            raise ParameterError(f"'{name}' must be a column name")
    if group is not None and not isinstance(group, str):
        raise ParameterError("'group' must be a column name or None")
    if group == "site":
        raise ParameterError("group='site' is not supported yet: compare sites with crosstab")


def run(q: Ask, duration: str, event: str, group: str | None = None) -> KaplanMeierResult:
    """Pooled Kaplan–Meier curves, one per level of ``group``."""
    check_survival_params(duration, event, group)
    levels = require_levels(q, group)
    params = {"duration": duration, "event": event, "group": group, "levels": levels}
    release = dp_release(q)
    if release is not None:
        return run_dp(q, params, release, duration, event, group)
    plan = grid_plan(q, duration)
    if plan is None:
        per_site = q.ask("km_tables", params)
        return build_km_result(q, per_site, duration, event, group)
    labels = levels if group is not None else [ALL]
    grid = ask_pooled_grid(q, "km_risk", "km_grid", params, plan)
    pooled = grid_tables(grid, list(labels or []))
    for label in labels or []:
        if label not in pooled:
            q.note(f"group '{label}': fewer than {plan.k} patients at risk at its first step")
    return km_result(q, pooled, duration, event, group, plan.step, plan.unit, pooled_sums=True)


#: DP mode: follow-up the noised event table covers (months; its noise grows with its length).
DP_HORIZON_MONTHS = 120.0


def run_dp(
    q: Ask,
    params: Payload,
    release: DPRelease,
    duration: str,
    event: str,
    group: str | None,
) -> KaplanMeierResult:
    """DP mode: one secure sum of every group's events and censorings per grid step (each
    patient in one cell: L2 sensitivity 1), each site adding its share of the discrete Gaussian
    noise. Post-processing only (free): negative counts become 0, the number at risk is rebuilt
    from the end (so it never grows), and a curve ends where fewer than ``floor`` remain."""
    dpt = ask_dp_table(q, "km_dp", params, release, duration)
    plan, events, censored, floor = dpt.plan, dpt.events, dpt.censored, dpt.floor
    times = np.arange(dpt.horizon + 1) * plan.step
    labels = list(params["levels"] or []) if group is not None else [ALL]
    pooled: dict[str, PooledTable] = {}
    for row, label in enumerate(labels):
        table = dp_event_table(events[row], censored[row], floor)
        if table is None:
            q.note(f"group '{label}': too few patients for a curve above the noise")
            continue
        at_risk, ev = table
        last = len(at_risk) - 1
        keep = (ev > 0) | (np.arange(last + 1) == last)
        pooled[label] = PooledTable(times[: last + 1][keep], at_risk[keep], ev[keep], dpt.sites)
    q.note(release.note("the event table's counts"))
    q.note(
        "post-processed (free): the number at risk rebuilt from the end and kept from growing, "
        "the cumulative hazard fitted nondecreasing (isotonic), each curve ending where fewer "
        f"than {floor} remain (the noise would dominate)"
    )
    return km_result(q, pooled, duration, event, group, plan.step, plan.unit, pooled_sums=True)


def dp_event_table(
    events: np.ndarray, censored: np.ndarray, floor: int, smooth: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """Numbers at risk and events up to the last step with ``floor`` at risk, from noisy counts
    (the last column: those beyond the horizon): :func:`dp_cause_table` with one cause."""
    table = dp_cause_table(np.asarray(events, dtype=float)[None], censored, floor, smooth)
    return None if table is None else (table[0], table[1][:, 0])


def dp_cause_table(
    events: np.ndarray, censored: np.ndarray, floor: int, smooth: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """Numbers at risk and events per cause (steps × causes) up to the last step with ``floor``
    at risk, from noisy counts (``events``: causes × steps; the last column: those beyond the
    horizon). Post-processing of a DP release: the number at risk is the sum from the end of
    everyone leaving (unbiased), kept from growing; each cause's hazard increments d/n are
    fitted to a nondecreasing cumulative hazard (isotonic regression, so no negative event and
    no bias from clipping each count at 0), their sum at a step kept at most 1; events are n
    times the fitted increments (``smooth=False``: the noisy events as they are, for statistics
    that are sums of them). None when even the first step has fewer than ``floor``."""
    from sklearn.isotonic import IsotonicRegression

    events = np.asarray(events, dtype=float)
    leaving = events.sum(axis=0) + np.asarray(censored, dtype=float)
    at_risk = np.cumsum(leaving[::-1])[::-1][:-1]  # the beyond-horizon column is not a step
    at_risk = np.maximum.accumulate(at_risk[::-1])[::-1]  # never growing with time
    enough = at_risk >= floor
    if not enough[0]:
        return None
    last = int(np.argmin(enough)) - 1 if not enough.all() else len(at_risk) - 1
    n = at_risk[: last + 1]
    d = events[:, : last + 1].T
    if not smooth:  # the noisy counts as they are (unbiased; a test statistic sums them)
        return n, d
    steps = np.arange(last + 1)
    increments = np.empty_like(d)
    for j in range(d.shape[1]):
        hazard = np.cumsum(d[:, j] / n)
        fitted = IsotonicRegression(increasing=True).fit_transform(steps, hazard)
        increments[:, j] = np.diff(np.concatenate(([0.0], np.clip(fitted, 0, None))))
    increments = np.clip(increments, 0, 1)
    total = increments.sum(axis=1)
    increments[total > 1] /= total[total > 1, None]  # no more leave by any cause than are there
    return n, n[:, None] * increments


@dataclass(frozen=True)
class DPTable:
    """A DP release of event tables (per group, and cause: ``events``; ``censored``), the grid
    it is on, the sites it is over, and the noise it carries: its SD and the floor below which a
    curve ends."""

    plan: GridPlan
    horizon: int
    events: np.ndarray
    censored: np.ndarray
    sites: tuple[str, ...]
    sd: float
    floor: int


def ask_dp_table(q: Ask, step: str, params: Payload, release: DPRelease, duration: str) -> DPTable:
    """The one noised secure sum of a DP event table (``step``: the analysis's
    :func:`~fedhem_kernel.analyses.common.site_grid.site_dp_table` step) on DP mode's grid."""
    plan, horizon = dp_grid(q, duration)
    total = q.ask_sum(
        step, {**params, "grid": plan.resolution, "horizon": horizon}, noise_scale=release.scale
    )
    sd = release.total_sd(len(total.sites))
    return DPTable(
        plan,
        horizon,
        np.asarray(total.totals["events"], dtype=float),
        np.asarray(total.totals["censored"], dtype=float),
        total.sites,
        sd,
        dp_floor(sd),
    )


def dp_grid(q: Ask, duration: str) -> tuple[GridPlan, int]:
    """DP mode's grid (the sites' common one) and horizon in its steps; a clear error when the
    sites have none (a duration without a unit, or a site without a grid)."""
    plan = grid_plan(q, duration, dp=True)
    if plan is None:
        raise ParameterError(
            "DP mode pools survival tables on the sites' time grid: the duration needs a unit "
            "and every site a grid",
            dataset=q.dataset,
        )
    return plan, dp_horizon(plan)


def dp_horizon(plan: GridPlan) -> int:
    """DP mode's horizon in grid steps: :data:`DP_HORIZON_MONTHS` of follow-up (the noise of
    the number at risk grows with the table's length)."""
    months = plan.step * MONTHS_PER_UNIT.get(plan.unit or "", float("nan"))
    if np.isfinite(months) and months > 0:
        return int(min(plan.horizon, np.ceil(DP_HORIZON_MONTHS / months)))
    return plan.horizon


def dp_floor(scale: float) -> int:
    """Fewest at risk at a step a DP curve shows (below it the noise would dominate)."""
    return max(10, int(np.ceil(3 * scale * np.sqrt(2))))
