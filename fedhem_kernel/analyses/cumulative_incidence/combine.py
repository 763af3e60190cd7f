"""Combine step of ``cumulative_incidence``: pooled cause tables, Aalen–Johansen and Gray's test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_release
from fedhem_kernel.analyses.common.combine_grid import PooledGrid, ask_pooled_grid, grid_plan
from fedhem_kernel.analyses.cumulative_incidence import (
    _LOWER,
    _UPPER,
    COMPETING,
    CONF_LEVEL,
    OTHER_CAUSE,
)
from fedhem_kernel.analyses.cumulative_incidence.result import (
    CumulativeIncidenceResult,
    GrayTestResult,
)
from fedhem_kernel.analyses.kaplan_meier import ALL
from fedhem_kernel.analyses.kaplan_meier.combine import (
    ask_dp_table,
    check_survival_params,
    collect_group_tables,
    dp_cause_table,
)
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.query import Ask, Payload


# -- pooling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PooledCauseTable:
    """Pooled counts of one group at the union of the sites' released times."""

    time: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray  # times × causes
    sites: tuple[str, ...]

    def at_risk_at(self, times: np.ndarray) -> np.ndarray:
        """Number at risk just before each time (0 after the last released time)."""
        idx = np.searchsorted(self.time, times, side="left")
        return np.append(self.at_risk, 0)[idx]

    def events_at(self, times: np.ndarray) -> np.ndarray:
        """Events per cause at exactly these times (0 where the table has no row)."""
        idx = np.searchsorted(self.time, times)
        inside = idx < len(self.time)
        hit = np.zeros(len(times), dtype=bool)
        hit[inside] = self.time[idx[inside]] == times[inside]
        out = np.zeros((len(times), self.events.shape[1]), dtype=self.events.dtype)
        out[hit] = self.events[idx[hit]]
        return out


def pool_cause_tables(tables: Mapping[str, Mapping[str, np.ndarray]]) -> PooledCauseTable:
    """Sum site tables: at-risk as step functions, events per cause at matching times."""
    times = np.unique(
        np.concatenate([np.asarray(tab["time"], dtype=float) for tab in tables.values()])
    )
    n_causes = next(iter(tables.values()))["events"].shape[1]
    at_risk = np.zeros(len(times), dtype=np.int64)
    events = np.zeros((len(times), n_causes), dtype=np.int64)
    for tab in tables.values():
        site = PooledCauseTable(
            np.asarray(tab["time"], dtype=float),
            np.asarray(tab["at_risk"], dtype=np.int64),
            np.asarray(tab["events"], dtype=np.int64).reshape(len(tab["time"]), n_causes),
            (),
        )
        at_risk += site.at_risk_at(times)
        events += site.events_at(times)
    return PooledCauseTable(times, at_risk, events, tuple(tables))


def grid_cause_tables(
    grid: PooledGrid, labels: list[str]
) -> tuple[dict[str, PooledCauseTable], dict[str, PooledCauseTable]]:
    """Each group's pooled table at the grid steps where someone leaves (up to its own last
    step), and the same tables up to the last step every group reaches (for Gray's test)."""
    times = grid.times()
    present = [row for row in range(len(labels)) if grid.cut[row] >= 0]
    common = min((int(grid.cut[row]) for row in present), default=-1)

    def table(row: int, last: int) -> PooledCauseTable:
        at_risk = grid.at_risk(row)[: last + 1]
        events = grid.events[row][:, : last + 1].T  # steps × causes
        moved = events.sum(axis=1) + np.append(grid.censored[row, :last], 0)
        keep = (moved > 0) | (np.arange(last + 1) == last)
        return PooledCauseTable(times[: last + 1][keep], at_risk[keep], events[keep], grid.sites)

    curves = {labels[row]: table(row, int(grid.cut[row])) for row in present}
    compared = {labels[row]: table(row, common) for row in present}
    return curves, compared


# -- Aalen–Johansen ---------------------------------------------------------------------------------
def _ci_log_log(
    p: np.ndarray, sigma: np.ndarray, conf_level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise log(-log) interval of a probability ``p`` with ``sigma`` = SD of log(p).

    scikit-survival's rule: where ``p`` is 0 (up to machine epsilon) both bounds are 0.
    """
    eps = np.finfo(float).eps
    mask = p > eps
    log_p = np.zeros_like(p)
    np.log(p, where=mask, out=log_p)
    theta = np.zeros_like(p)
    np.true_divide(sigma, log_p, where=log_p < -eps, out=theta)
    z = stats.norm.isf((1.0 - conf_level) / 2.0)
    lower = np.where(mask, np.exp(np.exp(-z * theta) * log_p), 0.0)
    upper = np.where(mask, np.exp(np.exp(z * theta) * log_p), 0.0)
    return lower, upper


@dataclass(frozen=True)
class AalenJohansen:
    """The estimate at each pooled time (rows) for each cause (columns)."""

    time: np.ndarray
    cumulative_incidence: np.ndarray
    variance: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    survival: np.ndarray
    survival_lower: np.ndarray
    survival_upper: np.ndarray


def aalen_johansen(
    time: np.ndarray, at_risk: np.ndarray, events: np.ndarray, conf_level: float = CONF_LEVEL
) -> AalenJohansen:
    """Aalen–Johansen estimate from counts (times ascending; ``events`` times × causes).

    The same estimator, Aalen variance and log-log intervals as scikit-survival's
    ``cumulative_incidence_competing_risks(..., conf_type="log-log")``; its O(T²) variance sums
    are computed here with cumulative sums in O(T).
    """
    n = np.asarray(at_risk, dtype=float)
    d = np.asarray(events, dtype=float).reshape(len(n), -1)
    d_any = d.sum(axis=1)
    ratio = np.divide(d, n[:, None], out=np.zeros_like(d), where=d != 0)
    ratio_any = np.divide(d_any, n, out=np.zeros_like(n), where=d_any != 0)
    surv = np.cumprod(1.0 - ratio_any)
    surv_prime = np.concatenate(([1.0], surv[:-1]))  # S(t-)
    cif = np.cumsum(ratio * surv_prime[:, None], axis=0)

    # Aalen's variance (Pintilie 2006, eq. 4.5, as in scikit-survival):
    #   a: Σ_{k<=j} (F_j - F_k)² d_k / ((n_k - 1)(n_k - d_k))
    #   b: Σ_{k<=j} (n_k - d_rk) d_rk S(t_k-)² / ((n_k - 1) n_k²)
    #   c: -2 Σ_{k<=j} (F_j - F_k) d_rk (n_k - d_rk) S(t_k-) / (n_k (n_k - d_k)(n_k - 1))
    def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        num = np.broadcast_to(num, den.shape).astype(float)
        return np.divide(num, den, out=np.zeros_like(den, dtype=float), where=den > 0)

    va = safe_div(d_any, (n - 1) * (n - d_any))
    cum_va = np.cumsum(va)
    var_a = (
        cif**2 * cum_va[:, None]
        - 2 * cif * np.cumsum(cif * va[:, None], axis=0)
        + np.cumsum(cif**2 * va[:, None], axis=0)
    )
    vb = safe_div(np.ones_like(n), (n - 1) * n**2)
    var_b = np.cumsum((n[:, None] - d) * d * (vb * surv_prime**2)[:, None], axis=0)
    vc = (d * (n[:, None] - d)) * safe_div(surv_prime, n * (n - d_any) * (n - 1))[:, None]
    var_c = -2 * (cif * np.cumsum(vc, axis=0) - np.cumsum(cif * vc, axis=0))
    var = var_a + var_b + var_c
    eps = np.finfo(float).eps
    sigma = np.divide(
        np.sqrt(np.clip(var, 0.0, None)), cif, out=np.zeros_like(var), where=var > eps
    )
    lower, upper = _ci_log_log(cif, sigma, conf_level)

    # all-cause survival: Kaplan–Meier with the exponential Greenwood (log-log) interval
    green = np.divide(
        d_any, n * (n - d_any), out=np.zeros_like(n), where=(d_any != 0) & (n != d_any)
    )
    s_lower, s_upper = _ci_log_log(surv, np.sqrt(np.cumsum(green)), conf_level)
    return AalenJohansen(
        np.asarray(time, dtype=float), cif, var, lower, upper, surv, s_lower, s_upper
    )


# -- Gray's test ------------------------------------------------------------------------------------
def gray_score_variance(
    at_risk: np.ndarray, events_of_interest: np.ndarray, other_events: np.ndarray, rho: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gray's (1988) score for groups ``1..G-1`` and its covariance, from counts (times × groups).

    ``at_risk``, ``events_of_interest`` and ``other_events`` are per distinct time (ascending) and
    group; times with no event of any cause may be left out. The weight is ``(1 - F(t-))^rho`` (R
    cmprsk's ``rho``, default 0). Stratified tests sum the scores and covariances over strata. The
    loop over times of R cmprsk's ``crstm`` is written here with cumulative sums over times.
    """
    n = np.asarray(at_risk, dtype=float)
    d1 = np.asarray(events_of_interest, dtype=float)
    d2 = np.asarray(other_events, dtype=float)
    keep = (d1 + d2).sum(axis=1) > 0
    n, d1, d2 = n[keep], d1[keep], d2[keep]
    t_count, g = n.shape
    if t_count == 0:
        return np.zeros(g - 1), np.zeros((g - 1, g - 1))
    live = n > 0
    n_safe = np.where(live, n, 1.0)
    # per group: all-cause KM and CIF of the cause of interest, right- and left-continuous
    km = np.cumprod(np.where(live, 1.0 - (d1 + d2) / n_safe, 1.0), axis=0)
    km_prev = np.vstack([np.ones((1, g)), km[:-1]])
    f1 = np.cumsum(np.where(live, km_prev * d1 / n_safe, 0.0), axis=0)
    f1_prev = np.vstack([np.zeros((1, g)), f1[:-1]])
    # h_g = n_g / S_g(t-): the group's subdistribution risk set scaled by 1 / (1 - F_g(t-))
    h = np.divide(n, km_prev, out=np.zeros_like(n), where=live)
    tr = h.sum(axis=1)
    tq = (h * (1.0 - f1_prev)).sum(axis=1)
    nd1 = d1.sum(axis=1)
    pooled = np.cumsum(nd1 / tr)  # pooled subdistribution estimate F(t)
    pooled_prev = np.concatenate(([0.0], pooled[:-1]))
    weight = (1.0 - pooled_prev) ** rho

    score = (weight[:, None] * (d1 - nd1[:, None] * h * (1.0 - f1_prev) / tq[:, None])).sum(axis=0)

    # a_t = w (diag(h) - h hᵀ / tr); c_t = Σ_{s<=t} a_s nd1_s / (tr_s (1 - F(s-)))
    a = weight[:, None, None] * (
        np.einsum("ti,ij->tij", h, np.eye(g)) - h[:, :, None] * h[:, None, :] / tr[:, None, None]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        step_c = nd1 / (tr * (1.0 - pooled_prev))
    c = np.cumsum(a * step_c[:, None, None], axis=0)

    # events of the cause of interest
    with np.errstate(divide="ignore", invalid="ignore"):
        t4 = np.where(km > 0, 1.0 - (1.0 - pooled)[:, None] / km, 1.0)
        t5 = np.where(
            nd1[:, None] > 1, 1.0 - (nd1[:, None] - 1.0) / (tr[:, None] * km_prev - 1.0), 1.0
        )
        t3 = t5 * km_prev * nd1[:, None] / (tr[:, None] * n_safe)
    t3 = np.where(live & (nd1[:, None] > 0), t3, 0.0)
    b = a - t4[:, None, :] * c  # times × i × k
    v3 = (t4**2 * t3).sum(axis=0)
    v2 = np.einsum("tik,tk->ik", b, t4 * t3)
    v = np.einsum("tik,tjk,tk->ij", b, b, t3)

    # events of the competing causes
    with np.errstate(divide="ignore", invalid="ignore"):
        u4 = np.where(km > 0, (1.0 - pooled)[:, None] / km, 0.0)
        u5 = np.where(d2 > 1, 1.0 - (d2 - 1.0) / (n_safe - 1.0), 1.0)
        u3 = u5 * km_prev**2 * d2 / n_safe**2
    u3 = np.where((km > 0) & (d2 > 0), u3, 0.0)
    u4 = np.where((km > 0) & (d2 > 0), u4, 0.0)
    e = u4[:, None, :] * c
    v3 = v3 + (u4**2 * u3).sum(axis=0)
    v2 = v2 - np.einsum("tik,tk->ik", e, u4 * u3)
    v = v + np.einsum("tik,tjk,tk->ij", e, e, u3)

    c_end = c[-1]
    v = v + c_end @ np.diag(v3) @ c_end.T + c_end @ v2.T + v2 @ c_end.T
    return score[: g - 1], v[: g - 1, : g - 1]


def gray_statistic(score: np.ndarray, variance: np.ndarray) -> tuple[float, int, float]:
    """Chi-squared statistic ``sᵀ V⁻¹ s``, its degrees of freedom (groups - 1) and p-value.

    A singular covariance (e.g. a group without any event) gives a NaN statistic, as R's cuminc
    reports -1.
    """
    dof = len(score)
    try:
        stat = float(score @ np.linalg.solve(variance, score))
    except np.linalg.LinAlgError:
        stat = float("nan")
    p = float(stats.chi2.sf(stat, dof)) if np.isfinite(stat) else float("nan")
    return stat, dof, p


def _step_values(
    times: np.ndarray, values: np.ndarray, at: np.ndarray, before: float
) -> np.ndarray:
    idx = np.searchsorted(times, at, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], before)


def _gray_for_cause(
    pooled: Mapping[str, PooledCauseTable], column: int
) -> tuple[float, int, float]:
    labels = list(pooled)
    times = np.unique(np.concatenate([p.time for p in pooled.values()]))
    n = np.column_stack([pooled[g].at_risk_at(times) for g in labels])
    ev = np.stack([pooled[g].events_at(times) for g in labels], axis=1)  # times × groups × causes
    d1 = ev[:, :, column]
    d2 = ev.sum(axis=2) - d1
    score, var = gray_score_variance(n, d1, d2)
    return gray_statistic(score, var)


def build_cif_result(
    q: Ask,
    per_site: dict[str, Payload],
    *,
    duration: str,
    event: str,
    group: str | None,
    causes: list[int],
    event_of_interest: int | None,
    cause_names: Mapping[int, str],
    combine_competing: bool = False,
) -> CumulativeIncidenceResult:
    labels, by_group, withheld = collect_group_tables(per_site)
    pooled: dict[str, PooledCauseTable] = {}
    for label in labels:
        if withheld.get(label):
            q.note(
                f"group '{label}': not released by {', '.join(withheld[label])} "
                "(the pooled curves use the other sites)"
            )
        if by_group.get(label):
            pooled[label] = pool_cause_tables(by_group[label])
    if not pooled:
        hint = (
            "" if combine_competing else "; combine_competing=True counts the other causes together"
        )
        raise DisclosureError(
            "no site could release any step of these curves (at every step each cause and the "
            f"censored count must be 0 or at least the minimum{hint})",
            dataset=q.dataset,
            rule="min_cell_count",
        )
    gray_tables = _gray_tables(q, per_site) if group is not None else None
    first = next(iter(per_site.values()))
    step, unit = first.get("time_step"), first.get("unit")
    if step is None:
        note = "exact times: the pooled estimate equals the estimate on the pooled rows"
    else:
        note = (
            f"times coarsened at the sites up to a grid of {step:g} {unit or 'units'}, and steps "
            "with a count below the minimum merged into the next: a merged step puts its events at "
            "its last event time, so between released times a curve can lag the row-level "
            "estimate (on the demo AML by up to about 0.1, 0.04 on average at whole months)"
        )
    return cif_result(
        q,
        pooled,
        gray_tables,
        duration=duration,
        event=event,
        group=group,
        causes=causes,
        event_of_interest=event_of_interest,
        cause_names=cause_names,
        combine_competing=combine_competing,
        time_step=step,
        unit=unit,
        note=note,
    )


def cif_result(
    q: Ask,
    pooled: dict[str, PooledCauseTable],
    gray_tables: dict[str, PooledCauseTable] | None,
    *,
    duration: str,
    event: str,
    group: str | None,
    causes: list[int],
    event_of_interest: int | None,
    cause_names: Mapping[int, str],
    combine_competing: bool,
    time_step: float | None,
    unit: str | None,
    note: str,
) -> CumulativeIncidenceResult:
    """The result from each group's pooled table (and the tables Gray's test compares)."""
    # cause columns: the agreed causes, then (other) if any site counted an event there
    codes: list[int | None] = [*causes, None]
    keep = [j for j, code in enumerate(codes) if code is not None]
    other_label = COMPETING if combine_competing else OTHER_CAUSE
    if any(p.events[:, -1].sum() > 0 for p in pooled.values()):
        keep.append(len(codes) - 1)
        if not combine_competing:
            q.note(f"'{OTHER_CAUSE}': causes too rare at every site to be named, pooled as one")
    cause_labels = [
        other_label if codes[j] is None else str(cause_names.get(codes[j], codes[j])) for j in keep
    ]
    if len(set(cause_labels)) != len(cause_labels):
        raise ParameterError("'cause_names' must give each cause a different name")
    cause_codes = {lab: codes[j] for lab, j in zip(cause_labels, keep, strict=True)}
    interest = causes[0] if event_of_interest is None else event_of_interest
    interest_label = cause_labels[keep.index(codes.index(interest))]

    estimates = {g: aalen_johansen(p.time, p.at_risk, p.events[:, keep]) for g, p in pooled.items()}
    timeline = np.unique(np.concatenate([[0.0], *[p.time for p in pooled.values()]]))
    cif_cols: dict[tuple[str, str], np.ndarray] = {}
    ci_cols: dict[tuple[str, str, str], np.ndarray] = {}
    sf, sf_ci, risk, tables = {}, {}, {}, {}
    for g, est in estimates.items():
        t = est.time
        for j, cause in enumerate(cause_labels):
            cif_cols[(g, cause)] = _step_values(t, est.cumulative_incidence[:, j], timeline, 0.0)
            ci_cols[(g, cause, _LOWER)] = _step_values(t, est.lower[:, j], timeline, 0.0)
            ci_cols[(g, cause, _UPPER)] = _step_values(t, est.upper[:, j], timeline, 0.0)
        sf[g] = _step_values(t, est.survival, timeline, 1.0)
        sf_ci[f"{g}_{_LOWER}"] = _step_values(t, est.survival_lower, timeline, 1.0)
        sf_ci[f"{g}_{_UPPER}"] = _step_values(t, est.survival_upper, timeline, 1.0)
        risk[g] = pooled[g].at_risk_at(timeline)
        events = pooled[g].events[:, keep]
        tab = pd.DataFrame(
            {
                "at_risk": pooled[g].at_risk,
                "observed": events.sum(axis=1),
                **{f"observed_{c}": events[:, j] for j, c in enumerate(cause_labels)},
            },
            index=pd.Index(pooled[g].time, name="time"),
        )
        tab.attrs["cumulative_incidence"] = pd.DataFrame(
            est.cumulative_incidence, index=pd.Index(t, name="time"), columns=cause_labels
        )
        tables[g] = tab
    index = pd.Index(timeline, name="timeline")
    cif = pd.DataFrame(cif_cols, index=index)
    cif.columns = pd.MultiIndex.from_tuples(cif.columns, names=["group", "cause"])
    ci = pd.DataFrame(ci_cols, index=index)
    ci.columns = pd.MultiIndex.from_tuples(ci.columns, names=["group", "cause", "bound"])

    gray, gray_all = None, None
    if gray_tables is not None:
        gray, gray_all = _gray_tests(q, gray_tables, cause_labels, keep, interest_label)
    return CumulativeIncidenceResult(
        cumulative_incidence=cif,
        confidence_interval=ci,
        survival_function=pd.DataFrame(sf, index=index),
        survival_confidence_interval=pd.DataFrame(sf_ci, index=index),
        at_risk=pd.DataFrame(risk, index=index),
        event_tables=tables,
        causes=tuple(cause_labels),
        event_of_interest=interest_label,
        privacy=q.report(),
        duration=duration,
        event=event,
        group=group,
        gray_test=gray,
        gray_tests=gray_all,
        cause_codes=cause_codes,
        notes=(note,),
        time_step=time_step,
        unit=unit,
        contributing_sites={g: p.sites for g, p in pooled.items()},
    )


def _gray_tables(q: Ask, per_site: dict[str, Payload]) -> dict[str, PooledCauseTable]:
    """The groups Gray's test compares: pooled from the sites that released every group (others
    left out, noted)."""
    _, _, withheld = collect_group_tables(per_site)
    excluded = sorted({s for sites in withheld.values() for s in sites})
    for site in excluded:
        q.note(f"{site}: left out of Gray's test because it withheld at least one group")
    usable = {s: p for s, p in per_site.items() if s not in excluded}
    labels, by_group, _ = collect_group_tables(usable)
    return {g: pool_cause_tables(by_group[g]) for g in labels if by_group.get(g)}


def _gray_tests(
    q: Ask,
    pooled: dict[str, PooledCauseTable],
    cause_labels: list[str],
    keep: list[int],
    interest_label: str,
) -> tuple[GrayTestResult | None, pd.DataFrame | None]:
    """Gray's test per cause over the groups of ``pooled``."""
    labels = list(pooled)
    if len(labels) < 2:
        q.note("Gray's test needs at least two groups released by the same sites: not computed")
        return None, None
    rows = []
    for j in keep:
        stat, dof, p = _gray_for_cause(pooled, j)
        rows.append({"test_statistic": stat, "p_value": p, "degrees_of_freedom": dof})
    table = pd.DataFrame(rows, index=pd.Index(cause_labels, name="cause"))
    row = table.loc[interest_label]
    test = GrayTestResult(
        float(row["test_statistic"]),
        int(row["degrees_of_freedom"]),
        float(row["p_value"]),
        interest_label,
        tuple(labels),
    )
    return test, table


# -- researcher entry point -------------------------------------------------------------------------
def _interest_code(event_of_interest: Any, cause_names: Mapping[int, str]) -> int | None:
    if event_of_interest is None:
        return None
    if isinstance(event_of_interest, str):
        by_name = {str(v): c for c, v in cause_names.items()}
        if event_of_interest in by_name:
            return int(by_name[event_of_interest])
        if not event_of_interest.strip().isdigit():
            raise ParameterError(
                f"'event_of_interest' {event_of_interest!r} is neither a cause code nor a name "
                "given in 'cause_names'"
            )
        event_of_interest = int(event_of_interest)
    if isinstance(event_of_interest, bool) or not isinstance(event_of_interest, int | np.integer):
        raise ParameterError("'event_of_interest' must be a cause code (1, 2, ...) or its name")
    if event_of_interest <= 0:
        raise ParameterError("'event_of_interest' must be a cause code >= 1 (0 means censored)")
    return int(event_of_interest)


def run(
    q: Ask,
    duration: str,
    event: str,
    event_of_interest: int | str | None = None,
    group: str | None = None,
    cause_names: Mapping[int, str] | None = None,
    combine_competing: bool = False,
) -> CumulativeIncidenceResult:
    check_survival_params(duration, event, group)
    if not isinstance(combine_competing, bool):
        raise ParameterError("'combine_competing' must be True or False")
    names = {int(k): str(v) for k, v in (cause_names or {}).items()}
    interest = _interest_code(event_of_interest, names)
    levels = require_levels(q, group)
    replies = q.ask("cif_causes", {"duration": duration, "event": event})
    causes = sorted({int(c) for p in replies.values() for c in p["causes"]})
    if not causes:
        raise DisclosureError(
            f"no cause of '{event}' has at least the minimum number of events at any site",
            dataset=q.dataset,
            column=event,
            rule="min_cell_count",
        )
    if interest is not None and interest not in causes:
        raise DisclosureError(
            f"cause {interest} of '{event}' is not among the causes with enough events at any "
            f"site ({', '.join(map(str, causes))})",
            dataset=q.dataset,
            column=event,
            rule="min_cell_count",
        )
    if combine_competing:  # one column for the cause of interest, one for every other cause
        causes = [causes[0] if interest is None else interest]
    params = {
        "duration": duration,
        "event": event,
        "group": group,
        "levels": levels,
        "causes": causes,
    }
    described: dict[str, Any] = {  # what the result says of the request
        "duration": duration,
        "event": event,
        "group": group,
        "causes": causes,
        "event_of_interest": interest,
        "cause_names": names,
        "combine_competing": combine_competing,
    }
    release = dp_release(q)
    if release is not None:
        return run_dp(q, params, release, described)
    plan = grid_plan(q, duration)
    if plan is not None:
        grid = ask_pooled_grid(q, "cif_risk", "cif_grid", params, plan)
        labels = list(levels) if group is not None else [ALL]
        pooled, gray_tables = grid_cause_tables(grid, labels)
        for label in labels:
            if label not in pooled:
                q.note(f"group '{label}': fewer than {plan.k} patients at risk at its first step")
        if not pooled:
            raise DisclosureError(
                "no group has enough patients at risk for a curve",
                dataset=q.dataset,
                rule="min_cell_count",
            )
        return cif_result(
            q,
            pooled,
            gray_tables if group is not None else None,
            **described,
            time_step=plan.step,
            unit=plan.unit,
            note=(
                f"pooled through secure sums on the sites' grid of {plan.resolution}: exact "
                "counts of the coarsened times; each curve ends before fewer than about "
                f"{plan.k + len(grid.sites)} patients remain at risk"
            ),
        )
    per_site = q.ask("cif_tables", params)
    return build_cif_result(q, per_site, **described)


def run_dp(
    q: Ask, params: Payload, release: DPRelease, described: dict[str, Any]
) -> CumulativeIncidenceResult:
    """DP mode: one secure sum of every group's events per cause and censorings per grid step
    (each patient in one cell: L2 sensitivity 1), each site adding its share of the discrete
    Gaussian noise; then post-processing only (free): the numbers at risk rebuilt from the end,
    each cause's cumulative hazard fitted nondecreasing, each curve ending where fewer than
    ``floor`` remain. Gray's test is computed on these tables (a rough guide: the noise is in
    its inputs)."""
    dpt = ask_dp_table(q, "cif_dp", params, release, params["duration"])
    plan, floor, sd = dpt.plan, dpt.floor, dpt.sd
    events, censored = dpt.events, dpt.censored  # events: groups × causes × steps
    times = np.arange(dpt.horizon + 1) * plan.step
    group = params["group"]
    labels = list(params["levels"] or []) if group is not None else [ALL]
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row, label in enumerate(labels):
        table = dp_cause_table(events[row], censored[row], floor)
        if table is None:
            q.note(f"group '{label}': too few patients for a curve above the noise")
            continue
        n, d = table
        raw_other = events[row, -1, : len(n)].sum()  # its noise: SD sd·√steps
        if raw_other < 3 * sd * np.sqrt(len(n)):  # no (other) cause above the noise
            d[:, -1] = 0.0
        fitted[label] = (n, d)
    if not fitted:
        raise DisclosureError(
            "no group has enough patients for a curve above the noise",
            dataset=q.dataset,
            rule="dp",
        )

    def table(n: np.ndarray, d: np.ndarray, last: int) -> PooledCauseTable:
        keep = (d[: last + 1].sum(axis=1) > 0) | (np.arange(last + 1) == last)
        return PooledCauseTable(
            times[: last + 1][keep], n[: last + 1][keep], d[: last + 1][keep], dpt.sites
        )

    pooled = {g: table(n, d, len(n) - 1) for g, (n, d) in fitted.items()}
    common = min(len(n) for n, _ in fitted.values()) - 1
    compared = {g: table(n, d, common) for g, (n, d) in fitted.items()}
    q.note(release.note("the cause-specific event table's counts"))
    return cif_result(
        q,
        pooled,
        compared if group is not None else None,
        **described,
        time_step=plan.step,
        unit=plan.unit,
        note=(
            "post-processed (free): the number at risk rebuilt from the end and kept from "
            "growing, each cause's cumulative hazard fitted nondecreasing (isotonic), each curve "
            f"ending where fewer than {floor} remain (the noise would dominate); Gray's test is "
            "computed on these noisy tables (a rough guide)"
        ),
    )
