"""Combine step of ``logrank``: observed minus expected and its variance over the pooled risk sets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_release
from fedhem_kernel.analyses.common.combine_grid import GridPlan, ask_pooled_grid, grid_plan
from fedhem_kernel.analyses.kaplan_meier.combine import (
    ask_dp_table,
    check_survival_params,
    dp_event_table,
    pool_tables,
)
from fedhem_kernel.analyses.levels import SITE_COLUMN
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.analyses.logrank import ALL, stratum_label
from fedhem_kernel.analyses.logrank.result import LogrankResult
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.query import Ask

# -- statistics -----------------------------------------------------------------------------
#: weightings (lifelines' names) and the name each test goes by in ``test_name``
WEIGHTINGS: dict[str | None, str] = {
    None: "logrank",
    "wilcoxon": "Wilcoxon",
    "tarone-ware": "Tarone-Ware",
    "peto": "Peto",
    "fleming-harrington": "Fleming-Harrington",
}


def event_time_weights(
    n_tot: np.ndarray,
    d_tot: np.ndarray,
    weightings: str | None = None,
    p: float | None = None,
    q: float | None = None,
) -> np.ndarray:
    """Weight of each event time from the pooled at-risk ``n_tot`` and events ``d_tot`` (ascending)."""
    n_tot = np.asarray(n_tot, dtype=float)
    d_tot = np.asarray(d_tot, dtype=float)
    if weightings is None:
        return np.ones(len(n_tot))
    if weightings == "wilcoxon":
        return n_tot
    if weightings == "tarone-ware":
        return np.sqrt(n_tot)
    if weightings == "peto":  # Peto-Peto's modified survival estimate, at t_i inclusive
        return np.cumprod(1.0 - d_tot / (n_tot + 1.0))
    if weightings == "fleming-harrington":  # left-continuous Kaplan-Meier
        with np.errstate(divide="ignore", invalid="ignore"):
            factors = np.where(n_tot > 0, 1.0 - d_tot / n_tot, 1.0)
        s = np.concatenate(([1.0], np.cumprod(factors)[:-1]))
        return np.power(s, p) * np.power(1.0 - s, q)
    raise ParameterError(f"unknown weightings {weightings!r}")


def stratum_statistics(
    n: np.ndarray, d: np.ndarray, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted O−E vector ``z``, its covariance ``V``, observed and expected events.

    ``n`` and ``d`` are at-risk and event counts (times × groups) of one stratum at its event times,
    ``w`` the weight of each time (1 for the log-rank test).
    """
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    n_tot = n.sum(axis=1)
    d_tot = d.sum(axis=1)
    w = np.ones(len(n_tot)) if w is None else np.asarray(w, dtype=float)
    keep = (d_tot > 0) & (n_tot > 0)
    n, d, n_tot, d_tot, w = n[keep], d[keep], n_tot[keep], d_tot[keep], w[keep]
    expected_t = n * (d_tot / n_tot)[:, None]
    z = (w[:, None] * (d - expected_t)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (n_tot - d_tot) / (n_tot - 1)
    ratio[~np.isfinite(ratio)] = 1.0  # lifelines' convention for a single patient at risk
    factor = w**2 * ratio * d_tot / n_tot**2
    # V = sum_t factor * (diag(n_g * n) - n_g n_h)
    weighted = n * np.sqrt(factor)[:, None]
    cov = -(weighted.T @ weighted)
    cov[np.diag_indices_from(cov)] += (n * (n_tot * factor)[:, None]).sum(axis=0)
    return z, cov, d.sum(axis=0), expected_t.sum(axis=0)


def chi2_statistic(z: np.ndarray, cov: np.ndarray) -> float:
    """``zᵀ V⁻ z`` over the first G-1 groups (generalised inverse, as lifelines)."""
    g = len(z)
    zz = z[: g - 1]
    return float(zz @ np.linalg.pinv(cov[: g - 1, : g - 1]) @ zz)


# -- combine --------------------------------------------------------------------------------
def _check_params(
    duration: Any,
    event: Any,
    group: Any,
    strata: Any,
    weightings: Any,
    p: Any,
    q: Any,
) -> list[str] | None:
    check_survival_params(duration, event, group)
    if group is None:
        raise ParameterError("the log-rank test needs a 'group' column")
    if weightings not in WEIGHTINGS:
        options = ", ".join(repr(w) for w in WEIGHTINGS)
        raise ParameterError(f"'weightings' must be one of {options}")
    for name, value in (("p", p), ("q", q)):
        if weightings == "fleming-harrington":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not np.isfinite(value) or value < 0:
                raise ParameterError(f"the Fleming–Harrington test needs '{name}', a number >= 0")
        elif value is not None:
            raise ParameterError(f"'{name}' applies only to weightings='fleming-harrington'")
    if strata is None:
        return None
    cols = [strata] if isinstance(strata, str) else strata
    if not isinstance(cols, list | tuple) or not cols:
        raise ParameterError("'strata' must be a column name, a list of column names, or 'site'")
    cols = list(cols)
    if not all(isinstance(c, str) and c for c in cols):
        raise ParameterError("'strata' must be a column name, a list of column names, or 'site'")
    if len(set(cols)) != len(cols):
        raise ParameterError("'strata' names a column twice")
    for c in cols:
        if c in (duration, event, group):
            raise ParameterError(
                f"'{c}' cannot be both a stratum and the duration, event or group column"
            )
    return cols


def _pooled_counts(
    tables: dict[str, dict[str, dict[str, np.ndarray]]], labels: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """At-risk and event counts (event times × groups) pooled over the sites of one stratum."""
    pooled = {g: pool_tables(tables[g]) for g in labels if tables.get(g)}
    if not pooled:
        return np.zeros((0, len(labels))), np.zeros((0, len(labels)))
    times = np.unique(np.concatenate([p.time[p.events > 0] for p in pooled.values()]))
    n = np.zeros((len(times), len(labels)))
    d = np.zeros_like(n)
    for j, g in enumerate(labels):
        if g not in pooled:
            continue
        p = pooled[g]
        n[:, j] = p.at_risk_at(times)
        idx = np.searchsorted(p.time, times)
        hit = (idx < len(p.time)) & (p.time[np.clip(idx, 0, len(p.time) - 1)] == times)
        d[hit, j] = p.events[idx[hit]]
    return n, d


def stratum_keys(
    site_cols: Sequence[str], strata_levels: Sequence[Sequence[str] | None]
) -> list[str]:
    """The strata's names, first column slowest (one stratum, ``all``, without strata)."""
    if not site_cols:
        return [ALL]
    return [stratum_label(site_cols, combo) for combo in itertools.product(*strata_levels)]


def _site_key(site: str, label: str) -> str:
    """The stratum of ``label`` at ``site`` when ``strata`` includes "site"."""
    return stratum_label([SITE_COLUMN], [site]) + ("" if label == ALL else f", {label}")


def _test_name(weightings: str | None, stratified: bool) -> str:
    name = f"multivariate_{WEIGHTINGS[weightings]}_test"
    return f"stratified_{name}" if stratified else name


def run(
    ask: Ask,
    duration: str,
    event: str,
    group: str,
    strata: str | Sequence[str] | None = None,
    weightings: str | None = None,
    p: float | None = None,
    q: float | None = None,
) -> LogrankResult:
    """Ask the sites for per-stratum event tables and run the (weighted, stratified) test."""
    strata_cols = _check_params(duration, event, group, strata, weightings, p, q)
    levels = require_levels(ask, group, minimum=2)
    by_site = bool(strata_cols) and SITE_COLUMN in strata_cols
    site_cols = [c for c in strata_cols or [] if c != SITE_COLUMN]
    strata_levels = [require_levels(ask, c) for c in site_cols]
    params = {
        "duration": duration,
        "event": event,
        "group": group,
        "levels": levels,
        "strata": site_cols,
        "strata_levels": strata_levels,
    }
    release = None if by_site else dp_release(ask)
    if release is not None:
        spec = LogrankSpec(group, site_cols, strata_levels, weightings, p, q)
        return run_dp(ask, params, release, spec)
    plan = None if by_site else grid_plan(ask, duration)
    if plan is not None:
        spec = LogrankSpec(group, site_cols, strata_levels, weightings, p, q)
        return run_pooled(ask, params, plan, spec)
    per_site = ask.ask("logrank_tables", params)

    # blocks: stratum -> group -> site -> released table
    blocks: dict[str, dict[str, dict[str, dict[str, np.ndarray]]]] = {}
    for site, payload in per_site.items():
        for label in payload["withheld"]:
            ask.note(
                f"{site}: {'the cohort' if label == ALL else f'stratum {label!r}'} left out of "
                "the test (not released by the site, see the privacy report)"
            )
        for s in payload["strata"]:
            key = s["stratum"]
            if by_site:
                key = _site_key(site, key)
            block = blocks.setdefault(key, {})
            for g in s["groups"]:
                if not g.get("empty") and not g.get("suppressed"):
                    block.setdefault(g["group"], {})[site] = g
    if not blocks:
        raise DisclosureError(
            "no site could release any stratum of this test (the sites withhold strata with too "
            "few patients, strata with a group too small to release, and strata whose release "
            "would let a small number of left-out patients be derived)",
            dataset=ask.dataset,
            rule="min_cell_count",
        )
    labels = [g for g in levels or [] if any(g in b for b in blocks.values())]
    if len(labels) < 2:
        raise DisclosureError(
            "fewer than two groups could be released", dataset=ask.dataset, rule="min_cell_count"
        )
    steps = {p_.get("time_step") for p_ in per_site.values()} - {None}
    if steps:
        ask.note(
            "times were coarsened up to each site's time grid before the test: the statistic is "
            "that of the coarsened times and may differ slightly from one on exact times"
        )

    order = stratum_keys(site_cols, strata_levels)
    if by_site:
        order = [_site_key(site, label) for site in per_site for label in order]
    counts = []
    for key in [k for k in order if k in blocks]:
        n, d = _pooled_counts(blocks[key], labels)
        present = [j for j, g in enumerate(labels) if blocks[key].get(g)]
        counts.append((key, n, d, present))
    return test_result(ask, counts, labels, group, strata_cols, weightings, p, q)


StratumCounts = tuple[str, np.ndarray, np.ndarray, list[int]]


def test_result(
    ask: Ask,
    counts: list[StratumCounts],
    labels: list[str],
    group: str,
    strata_cols: list[str] | None,
    weightings: str | None,
    p: float | None,
    q: float | None,
) -> LogrankResult:
    """The test from each stratum's pooled at-risk and event counts (times × groups) and the
    groups present in it."""
    g_count = len(labels)
    z_sum = np.zeros(g_count)
    v_sum = np.zeros((g_count, g_count))
    obs_sum = np.zeros(g_count)
    exp_sum = np.zeros(g_count)
    rows: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    for key, n, d, present in counts:
        w = event_time_weights(n.sum(axis=1), d.sum(axis=1), weightings, p, q)
        z, v, obs, exp = stratum_statistics(n, d, w)
        z_sum += z
        v_sum += v
        obs_sum += obs
        exp_sum += exp
        stat_s = chi2_statistic(z[present], v[np.ix_(present, present)])
        dof_s = len(present) - 1
        tests.append(
            {
                "stratum": key,
                "test_statistic": stat_s,
                "p": float(stats.chi2.sf(stat_s, dof_s)) if dof_s > 0 else float("nan"),
                "degrees_of_freedom": dof_s,
            }
        )
        for j in present:
            rows.append({"stratum": key, group: labels[j], "observed": obs[j], "expected": exp[j]})
    stat = chi2_statistic(z_sum, v_sum)
    dof = g_count - 1
    summary = pd.DataFrame(
        {"observed": obs_sum, "expected": exp_sum}, index=pd.Index(labels, name=group)
    )
    if weightings is not None:
        summary["weighted observed - expected"] = z_sum
    strata_summary = strata_tests = None
    if strata_cols:
        strata_summary = pd.DataFrame(rows).set_index(["stratum", group])
        strata_tests = pd.DataFrame(tests).set_index("stratum")
    return LogrankResult(
        test_statistic=stat,
        p_value=float(stats.chi2.sf(stat, dof)),
        degrees_of_freedom=dof,
        summary=summary,
        groups=tuple(labels),
        privacy=ask.report(),
        test_name=_test_name(weightings, bool(strata_cols)),
        weightings=weightings,
        strata=tuple(strata_cols) if strata_cols else None,
        p=p,
        q=q,
        strata_summary=strata_summary,
        strata_tests=strata_tests,
    )


@dataclass(frozen=True)
class LogrankSpec:
    """What a pooled test was asked for: the group column, the strata columns and their levels,
    and the weighting (lifelines' names and its p, q)."""

    group: str
    site_cols: list[str]
    strata_levels: list[list[str] | None]
    weightings: str | None = None
    p: float | None = None
    q: float | None = None

    def result(self, ask: Ask, counts: list[StratumCounts], labels: list[str]) -> LogrankResult:
        return test_result(
            ask,
            counts,
            labels,
            self.group,
            self.site_cols or None,
            self.weightings,
            self.p,
            self.q,
        )


def run_pooled(
    ask: Ask, params: dict[str, Any], plan: GridPlan, spec: LogrankSpec
) -> LogrankResult:
    """The test on tables pooled through secure sums on the sites' common grid: each stratum's
    groups up to the last step all of them reach with at least k at risk (a group's tail is not
    released), so events later than that are not in the test."""
    grid = ask_pooled_grid(ask, "logrank_risk", "logrank_grid", params, plan)
    labels = list(params["levels"] or [])
    keys = stratum_keys(spec.site_cols, spec.strata_levels)
    g_count = len(labels)
    counts: list[StratumCounts] = []
    shortened = False
    for s, key in enumerate(keys):
        rows = [s * g_count + j for j in range(g_count)]
        present = [j for j, r in enumerate(rows) if grid.cut[r] >= 0]
        if not present:
            continue
        last = min(int(grid.cut[rows[j]]) for j in present)
        shortened |= any(int(grid.cut[rows[j]]) > last for j in present)
        n = np.zeros((last + 1, g_count))
        d = np.zeros_like(n)
        for j in present:
            n[:, j] = grid.at_risk(rows[j])[: last + 1]
            d[:, j] = grid.events[rows[j], : last + 1]
        counts.append((key, n, d, present))
        missing = [labels[j] for j in range(g_count) if j not in present]
        if missing:
            ask.note(
                f"{'stratum ' + repr(key) if spec.site_cols else 'the cohort'}: groups "
                f"{missing} have fewer than {plan.k} patients at risk and are left out"
            )
    present_groups = {j for _, _, _, pres in counts for j in pres}
    if len(present_groups) < 2:
        raise DisclosureError(
            "fewer than two groups could be released", dataset=ask.dataset, rule="min_cell_count"
        )
    if shortened:
        ask.note(
            "each stratum's test runs up to the last time at which every group still has "
            f"at least {plan.k} patients at risk (later events are not in the test)"
        )
    return spec.result(ask, counts, labels)


def run_dp(
    ask: Ask, params: dict[str, Any], release: DPRelease, spec: LogrankSpec
) -> LogrankResult:
    """DP mode: the test on the noised event table of every stratum and group (one release, as
    Kaplan–Meier's in DP mode), each stratum up to the last step every group reaches above the
    noise floor; the numbers at risk rebuilt from the end, the events as released (the test
    sums them: unbiased)."""
    dpt = ask_dp_table(ask, "logrank_dp", params, release, params["duration"])
    events, censored, floor = dpt.events, dpt.censored, dpt.floor
    labels = list(params["levels"] or [])
    keys = stratum_keys(spec.site_cols, spec.strata_levels)
    g_count = len(labels)
    counts: list[StratumCounts] = []
    for s_index, key in enumerate(keys):
        tables = {}
        for j in range(g_count):
            row = s_index * g_count + j
            table = dp_event_table(events[row], censored[row], floor, smooth=False)
            if table is not None:
                tables[j] = table
        if len(tables) < 2:
            continue
        last = min(len(n) for n, _ in tables.values()) - 1
        n = np.zeros((last + 1, g_count))
        d = np.zeros_like(n)
        for j, (n_j, d_j) in tables.items():
            n[:, j], d[:, j] = n_j[: last + 1], d_j[: last + 1]
        counts.append((key, n, d, sorted(tables)))
    if not counts:
        raise DisclosureError(
            "fewer than two groups have enough patients above the noise",
            dataset=ask.dataset,
            rule="dp",
        )
    ask.note(release.note("the event table's counts"))
    ask.note(
        "each stratum's test runs up to the last step every group reaches with at least "
        f"{floor} at risk; the numbers at risk are rebuilt from the end (post-processing)"
    )
    return spec.result(ask, counts, labels)
