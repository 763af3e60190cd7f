"""Log-rank test and its weighted and stratified variants, from per-site event tables.

Site step (``logrank_tables``): per stratum (one stratum ``all`` when the test is not stratified), the
Kaplan–Meier event tables of every group, built by :func:`site_survival_tables` (durations coarsened to
the policy's grid, small steps merged so every released count is 0 or at least ``min_cell_count``). A
stratum with fewer than ``min_cell_count`` patients at a site is not released by that site, and neither
is a stratum in which one group's table cannot be released (the other groups would be compared against
an incomplete risk set); the site says so in its privacy report, without any count.

Combine: per stratum, the pooled at-risk and event counts of every group at the union of event times;
per event time ``t_i`` a weight ``w_i`` (computed from the stratum's pooled table), the weighted
observed-minus-expected vector ``Z = Σ w_i (d_ij - n_ij d_i / n_i)`` and its covariance
``V = Σ w_i² d_i (n_i - d_i) / (n_i - 1) · (n_ij / n_i)(δ_jh - n_ih / n_i)``; ``Z`` and ``V`` are summed
over strata (as R's ``survdiff(... + strata())``) and the statistic ``Zᵀ V⁻ Z`` over the first G-1
groups is chi-squared with G-1 degrees of freedom. Weights, as in lifelines'
``multivariate_logrank_test(weightings=...)``:

========================  =====================================================================
``None`` (log-rank)       1
``"wilcoxon"``            ``n_i`` (Gehan–Breslow)
``"tarone-ware"``         ``sqrt(n_i)``
``"peto"``                ``Π_{t_j <= t_i} (1 - d_j / (n_j + 1))`` (Peto–Peto's modified survival)
``"fleming-harrington"``  ``S(t_i-)^p (1 - S(t_i-))^q``, S the pooled Kaplan–Meier (left limit)
========================  =====================================================================

``n_i``, ``d_i`` are the stratum's pooled numbers at risk and events over all groups. Under
``Policy.unrestricted()`` each equals lifelines on the pooled rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.kaplan_meier import (
    check_survival_params,
    pool_tables,
    site_survival_tables,
)
from fedhem_kernel.analyses.levels import OTHER, SITE_COLUMN, group_index, require_levels
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport, ReleaseLog
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

ALL = "all"

#: weightings (lifelines' names) and the name each test goes by in ``test_name``
WEIGHTINGS: dict[str | None, str] = {
    None: "logrank",
    "wilcoxon": "Wilcoxon",
    "tarone-ware": "Tarone-Ware",
    "peto": "Peto",
    "fleming-harrington": "Fleming-Harrington",
}

_TITLES = {
    None: "log-rank test",
    "wilcoxon": "Wilcoxon (Gehan–Breslow) test",
    "tarone-ware": "Tarone–Ware test",
    "peto": "Peto–Peto test",
    "fleming-harrington": "Fleming–Harrington test",
}


# -- result ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogrankResult:
    """A (weighted, stratified) log-rank test; lifelines' ``StatisticalResult`` naming.

    ``test_statistic``, ``p_value`` and ``degrees_of_freedom`` are those of lifelines'
    ``multivariate_logrank_test`` with the same ``weightings``. ``summary`` has per group the
    observed and expected numbers of events (summed over strata) and, for a weighted test, the
    weighted observed minus expected. A stratified test also has ``strata_summary`` (observed and
    expected per stratum and group) and ``strata_tests`` (the test within each stratum alone).
    ``test_name`` says which test was run, e.g. ``stratified_multivariate_Wilcoxon_test``.
    """

    test_statistic: float
    p_value: float
    degrees_of_freedom: int
    summary: pd.DataFrame
    groups: tuple[str, ...]
    privacy: PrivacyReport
    test_name: str = "multivariate_logrank_test"
    weightings: str | None = None
    strata: tuple[str, ...] | None = None
    p: float | None = None
    q: float | None = None
    strata_summary: pd.DataFrame | None = None
    strata_tests: pd.DataFrame | None = None

    @property
    def title(self) -> str:
        """What the display calls this test, e.g. "stratified Peto–Peto test on 'aml' (strata: sex)"."""
        name = _TITLES.get(self.weightings, "log-rank test")
        if self.weightings == "fleming-harrington":
            name = f"Fleming–Harrington (p={self.p:g}, q={self.q:g}) test"
        if self.strata:
            name = "stratified " + name
        title = f"{name} on '{self.privacy.dataset}'"
        if self.strata:
            title += f" (strata: {', '.join(self.strata)})"
        return title

    def _head(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"value": [self.test_statistic, self.p_value, self.degrees_of_freedom]},
            index=pd.Index(["test_statistic", "p", "degrees_of_freedom"], name=self.test_name),
            dtype=object,
        )

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        what = "Observed and expected events" + (" (summed over strata)" if self.strata else "")
        extra = [(what, self.summary)]
        if self.strata_tests is not None:
            extra.append(("Test within each stratum", self.strata_tests))
        return result_html(self.title, self._head(), self.privacy, extra_tables=extra)

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
            f"LogrankResult({self.test_name}: test_statistic={self.test_statistic:.4f}, "
            f"p_value={self.p_value:.4g}, degrees_of_freedom={self.degrees_of_freedom}; "
            f"{self.privacy!r})"
        )


# -- statistics -----------------------------------------------------------------------------
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


def logrank_from_counts(n: np.ndarray, d: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Statistic, observed and expected from at-risk ``n`` and events ``d`` (times × groups)."""
    z, cov, observed, expected = stratum_statistics(n, d)
    return chi2_statistic(z, cov), observed, expected


# -- site step ------------------------------------------------------------------------------
def _stratum_codes(data: SiteData, columns: list[str], levels: list[list[str]]) -> np.ndarray:
    """Per cohort row: the index of its stratum in the product of ``levels``, -1 if left out."""
    codes = []
    for column, lv in zip(columns, levels, strict=True):
        labels = group_index(data, column, lv)
        if labels.isna().any():
            data.log.note(f"patients with missing '{column}' are left out")
        if (labels == OTHER).any():
            data.log.note(f"levels of '{column}' rare at every site are left out")
        codes.append(pd.Categorical(labels, categories=lv).codes.astype(np.int64))
    stacked = np.vstack(codes)
    valid = (stacked >= 0).all(axis=0)
    out = np.full(stacked.shape[1], -1, dtype=np.int64)
    if valid.any():
        out[valid] = np.ravel_multi_index(stacked[:, valid], [len(lv) for lv in levels])
    return out


def stratum_label(columns: Sequence[str], values: Sequence[str]) -> str:
    """``"wexp=1"``, ``"wexp=1, race=0"``: how a stratum is named in payloads and results."""
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True))


def site_logrank_tables(data: SiteData, params: Payload) -> Payload:
    """Per stratum, every group's releasable event table; small strata are not released.

    A stratum is withheld when it has fewer than k patients at this site, or when one of its groups
    cannot be released. The patients left out of the test by strata (withheld strata, missing or
    rare stratum values) must number 0 or at least k, or the unstratified test would give their
    number away by difference: if they are 1..k-1, the smallest released strata are withheld too.
    """
    columns: list[str] = list(params.get("strata") or [])
    levels: list[list[str]] = [list(lv) for lv in params.get("strata_levels") or []]
    if len(columns) != len(levels):
        raise ParameterError("'strata' and 'strata_levels' do not match")
    k = data.k
    if columns:
        codes = _stratum_codes(data, columns, levels)
        size = int(np.prod([len(v) for v in levels]))
        strata = [
            (stratum_label(columns, combo), i) for i, combo in enumerate(itertools.product(*levels))
        ]
    else:
        codes = np.zeros(len(data.cohort), dtype=np.int64)
        size = 1
        strata = [(ALL, 0)]
    counts = np.bincount(codes[codes >= 0], minlength=size)
    group_levels = list(params.get("levels") or [])
    tested = group_index(data, params.get("group"), group_levels).isin(group_levels).to_numpy()
    in_test = np.bincount(codes[(codes >= 0) & tested], minlength=size)
    left_out = int((tested & (codes < 0)).sum())

    released: list[tuple[int, dict[str, Any]]] = []
    withheld: list[str] = []
    time_step = unit = None
    for label, i in strata:
        where = f"stratum '{label}': " if columns else "cohort: "
        if counts[i] < k:
            if k > 1:  # 0 and 1..k-1 patients look the same from outside
                data.log.suppressed(
                    "min_cell_count",
                    f"{where}fewer than {k} patients at this site",
                    action="withheld",
                )
                withheld.append(label)
                left_out += int(in_test[i])
            continue
        sub = SiteData(
            data.site, data.dataset, data.cohort[codes == i], data.schema, data.policy, ReleaseLog()
        )
        tables = site_survival_tables(sub, params)
        time_step, unit = tables["time_step"], tables["unit"]
        for note in sub.log.notes:
            data.log.note(note)
        blocked = {str(g["group"]) for g in tables["groups"] if g.get("suppressed")}
        prefix = where if columns else ""
        for d in sub.log.suppressions:
            if not blocked or d.group in blocked:
                data.log.suppressed(
                    d.rule,
                    prefix + d.text,
                    group=d.group,
                    action=d.action or "suppressed",
                    **d.counts,
                )
        if blocked:
            data.log.suppressed(
                "min_cell_count",
                f"{where}not released (a group could not be released, "
                "so the others would be compared against an incomplete risk set)",
                action="withheld",
            )
            withheld.append(label)
            left_out += int(in_test[i])
            continue
        released.append((i, {"stratum": label, "groups": tables["groups"]}))
    while 0 < left_out < k and released:
        pos = min(range(len(released)), key=lambda r: in_test[released[r][0]])
        i, smallest = released.pop(pos)
        withheld.append(smallest["stratum"])
        left_out += int(in_test[i])
        data.log.suppressed(
            "min_cell_count",
            f"stratum '{smallest['stratum']}': not released, so that the patients left out by "
            f"strata number 0 or at least {k} (their number could otherwise be derived)",
            action="withheld",
        )
    return {
        "strata": [r for _, r in released],
        "withheld": withheld,
        "time_step": time_step,
        "unit": unit,
    }


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


def _site_key(site: str, label: str) -> str:
    """The stratum of ``label`` at ``site`` when ``strata`` includes "site"."""
    return stratum_label([SITE_COLUMN], [site]) + ("" if label == ALL else f", {label}")


def _test_name(weightings: str | None, stratified: bool) -> str:
    name = f"multivariate_{WEIGHTINGS[weightings]}_test"
    return f"stratified_{name}" if stratified else name


def run_logrank(
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

    g_count = len(labels)
    z_sum = np.zeros(g_count)
    v_sum = np.zeros((g_count, g_count))
    obs_sum = np.zeros(g_count)
    exp_sum = np.zeros(g_count)
    rows: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    order = (
        [stratum_label(site_cols, combo) for combo in itertools.product(*strata_levels)]
        if site_cols
        else [ALL]
    )
    if by_site:
        order = [_site_key(site, label) for site in per_site for label in order]
    for key in [k for k in order if k in blocks]:
        n, d = _pooled_counts(blocks[key], labels)
        w = event_time_weights(n.sum(axis=1), d.sum(axis=1), weightings, p, q)
        z, v, obs, exp = stratum_statistics(n, d, w)
        z_sum += z
        v_sum += v
        obs_sum += obs
        exp_sum += exp
        present = [j for j, g in enumerate(labels) if blocks[key].get(g)]
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


STEPS = [
    SiteStep(
        "logrank_tables",
        "logrank",
        site_logrank_tables,
        param_columns("duration", "event", "group", "strata"),
    )
]
