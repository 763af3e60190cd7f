"""Combine step of the Cox model checks: Harrell's C across sites from score cells (with bounds) and the
Schoenfeld proportional-hazards test from residual sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.cox import TRANSFORMS
from fedhem_kernel.analyses.cox.combine_sums import CoxFit
from fedhem_kernel.analyses.cox.likelihood import expected_ph
from fedhem_kernel.analyses.cox.result_checks import (
    Concordance,
    Diagnostics,
    ProportionalHazardTest,
)
from fedhem_kernel.errors import FedHemError, ParameterError
from fedhem_kernel.protocol.query import Payload

if TYPE_CHECKING:
    from fedhem_kernel.protocol.query import Ask


def score_edges(n: int, total: float, squares: float, bins: int) -> np.ndarray:
    """Inner edges at the normal quantiles of the pooled linear predictor (equal expected counts)."""
    mean = total / n
    var = max(squares / n - mean**2, 0.0)
    if not var > 0 or bins < 2:
        return np.zeros(0)
    q = stats.norm.ppf(np.arange(1, bins) / bins)
    return mean + np.sqrt(var) * q


def _cell_grids(cells: Payload, n_bins: int) -> dict[str, np.ndarray]:
    """Cumulative counts of one site's cells by (band start, score bin), for dominance lookups."""
    t = np.asarray(cells["t_lo"], dtype=float)
    point = t == np.asarray(cells["t_hi"], dtype=float)
    lo = np.asarray(cells["lo"], dtype=np.int64)
    hi = np.asarray(cells["hi"], dtype=np.int64)
    ev = np.asarray(cells["events"], dtype=np.int64)
    ce = np.asarray(cells["censored"], dtype=np.int64)
    if len(t) and (lo.min() < 0 or hi.max() > n_bins or (hi <= lo).any()):
        raise FedHemError("a site's concordance cells do not fit the requested bins")
    times, ti = np.unique(t, return_inverse=True)
    ti = ti.ravel()
    u = len(times)

    def grid(weights: np.ndarray, col: np.ndarray) -> np.ndarray:
        g = np.zeros((u + 1, n_bins + 1), dtype=np.int32)  # counts of one site's rows
        np.add.at(g, (ti, col), weights)
        return g

    def later(g: np.ndarray) -> np.ndarray:  # rows at or after, in place
        np.cumsum(g[::-1], axis=0, out=g[::-1])
        return g

    def upto(g: np.ndarray) -> np.ndarray:  # bins up to x, in place
        np.cumsum(g, axis=1, out=g)
        return g

    def from_(g: np.ndarray) -> np.ndarray:  # bins from x on, in place
        np.cumsum(g[:, ::-1], axis=1, out=g[:, ::-1])
        return g

    total = ev + ce
    ce0 = np.where(point, ce, 0)  # censorings at one exact time (comparable with events there)
    # hi <= x: all below bin x; lo >= x: at or above bin x (one grid alive at a time per kind)
    return {
        "times": times,
        "below": upto(later(grid(total, hi))),
        "above": from_(later(grid(total, lo))),
        "below0": upto(grid(ce0, hi)),
        "above0": from_(grid(ce0, lo)),
    }


def cross_concordance(cells: dict[str, Payload], n_bins: int) -> tuple[int, int]:
    """(concordant, discordant) pairs of rows at different sites that the cells resolve.

    A pair (event in cell A of one site, row in cell B of another) is resolved when B's band starts
    after A's ends (or both are the same single time and the row is censored) and their score
    ranges do not overlap. Every other comparable pair stays open.
    """
    events: dict[str, tuple[np.ndarray, ...]] = {}
    for a, ca in cells.items():
        ev = np.asarray(ca["events"], dtype=np.int64)
        has = ev > 0
        t_hi = np.asarray(ca["t_hi"], dtype=float)[has]
        point = np.asarray(ca["t_lo"], dtype=float)[has] == t_hi
        la = np.asarray(ca["lo"], dtype=np.int64)[has]
        ha = np.asarray(ca["hi"], dtype=np.int64)[has]
        events[a] = (t_hi, point, la, ha, ev[has])
    conc = disc = 0
    for b, cb in cells.items():  # one site's grids at a time: (times × bins) each
        g = _cell_grids(cb, n_bins)
        for a, (t_hi, point, la, ha, ea) in events.items():
            if b == a or not len(ea):
                continue
            times = g["times"]
            after = np.searchsorted(times, t_hi, side="right")
            at = np.searchsorted(times, t_hi, side="left")
            same = point & (at < len(times)) & (times[np.minimum(at, len(times) - 1)] == t_hi)
            at = np.where(same, at, len(times))  # the zero row: nothing at that time
            conc += int((ea * (g["below"][after, la] + g["below0"][at, la])).sum())
            disc += int((ea * (g["above"][after, ha] + g["above0"][at, ha])).sum())
    return conc, disc


def comparable_pairs(
    fit: CoxFit, counts: dict[tuple[str, ...], list[tuple[np.ndarray, np.ndarray]]]
) -> int:
    """Harrell's comparable pairs within strata from the pooled tables: Σ_t d_t·(n_t - d_t)."""
    total = 0.0
    for st in fit.strata:
        _, _, at_risk = event_table_all(fit, counts.get(st.label, []), st.times)
        total += float((st.events * (at_risk - st.events)).sum())
    return int(np.round(total))


def combine_concordance(replies: dict[str, Payload], n_bins: int, pairs: int) -> Concordance:
    """Harrell's C from exact within-site counts, resolved pairs across sites and all pairs."""
    within = sum(np.asarray(r["within"], dtype=np.int64) for r in replies.values())
    w_pairs, w_conc, w_tied = (int(v) for v in within)
    by_stratum: dict[tuple[str, ...], dict[str, Payload]] = {}
    for site, r in replies.items():
        for item in r["cells"]:
            by_stratum.setdefault(tuple(item["label"]), {})[site] = item
    x_conc = x_disc = 0
    for cells in by_stratum.values():  # pairs across sites, within one stratum
        c, d = cross_concordance(cells, n_bins)
        x_conc, x_disc = x_conc + c, x_disc + d
    open_ = pairs - w_pairs - x_conc - x_disc
    if pairs <= 0:
        return Concordance(float("nan"), float("nan"), float("nan"), 0, 0)
    if open_ < 0:
        raise FedHemError("the sites' concordance counts do not add up")
    sure = w_conc + 0.5 * w_tied + x_conc
    return Concordance(
        value=(sure + 0.5 * open_) / pairs,
        lower=sure / pairs,
        upper=(sure + open_) / pairs,
        pairs=pairs,
        unresolved=open_,
    )


def event_table_all(
    fit: CoxFit,
    counts: Sequence[tuple[np.ndarray, np.ndarray]],
    times: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled distinct event times (strata ignored), deaths and number at risk at each.

    ``counts`` holds (steps, rows per step) tables; the number at risk sums them all. ``times``
    (default: every stratum's event times) says where to count.
    """
    all_times = np.unique(np.concatenate([st.times for st in fit.strata]))
    deaths = np.zeros(len(all_times))
    for st in fit.strata:
        deaths[np.searchsorted(all_times, st.times)] += st.events
    if times is not None:
        all_times = times
    at_risk = np.zeros(len(all_times))
    for steps, n in counts:  # every site's rows per merged step, per stratum
        upto = np.searchsorted(steps, all_times, side="left")
        at_risk += np.concatenate((np.cumsum(n[::-1])[::-1], [0]))[upto]
    return all_times, deaths, at_risk


def transform_values(
    fit: CoxFit, all_times: np.ndarray, deaths: np.ndarray, at_risk: np.ndarray
) -> list[np.ndarray]:
    """Per stratum, per pooled event time: the four transformed times (columns of TRANSFORMS)."""
    before = np.cumsum(deaths) - deaths
    mid_rank = before + (deaths + 1) / 2  # tied event times get their average rank
    with np.errstate(divide="ignore", invalid="ignore"):
        km = 1 - np.cumprod(1 - deaths / at_risk)  # pooled Kaplan–Meier, strata ignored
        log_t = np.where(all_times > 0, np.log(np.where(all_times > 0, all_times, 1)), np.nan)
    table = np.column_stack((mid_rank, km, all_times, log_t))
    return [table[np.searchsorted(all_times, st.times)] for st in fit.strata]


def ph_weights(fit: CoxFit, values: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Demeaned transforms per stratum (g - ḡ, ḡ over all events) and Σ d·(g - ḡ)² per transform."""
    d = np.concatenate([st.events for st in fit.strata]).astype(float)
    g = np.concatenate(values)
    mean = (d[:, None] * g).sum(axis=0) / d.sum()
    out = [v - mean for v in values]
    spread = (d[:, None] * (g - mean) ** 2).sum(axis=0)
    return out, spread


def combine_ph(
    fit: CoxFit,
    weights: list[np.ndarray],
    spread: np.ndarray,
    site_sums: Sequence[np.ndarray],
    variance: np.ndarray,
    ties: str,
    expected: np.ndarray | None = None,
    n_deaths: float | None = None,
) -> dict[str, pd.DataFrame]:
    """lifelines' statistic per covariate and transform, from pooled sums (see module docstring).

    ``expected`` (the pooled fit: computed by the sites from sums only they see) and ``n_deaths``
    default to those of the fit's risk-set sums."""
    # Σ (g - ḡ)·z over events, minus Σ_t (g_t - ḡ)·d_t·z̄(t) (Efron-weighted risk-set mean)
    total = np.sum(np.asarray(site_sums, dtype=float), axis=0)  # (transforms, p)
    if expected is None:
        expected = expected_ph(fit.strata, weights, ties)
    total = total - expected
    resid = total * fit.scale  # back to the covariates' units
    if n_deaths is None:
        n_deaths = float(sum(st.events.sum() for st in fit.strata))
    u = n_deaths * resid @ variance
    se2 = np.diag(variance)
    out = {}
    for i, name in enumerate(TRANSFORMS):
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = u[i] ** 2 / (n_deaths * se2 * spread[i])
        p = stats.chi2.sf(stat, 1)
        with np.errstate(divide="ignore"):
            out[name] = pd.DataFrame(
                {"test_statistic": stat, "p": p, "-log2(p)": -np.log2(p)},
                index=pd.Index(fit.columns, name="covariate"),
            )
    return out


def run_diagnostics(
    q: Ask, base: Payload, fit: CoxFit, variance: np.ndarray, ties: str, bins: int
) -> Diagnostics:
    """The two diagnostic rounds on the sites' cached designs, at the fit's final coefficients."""
    params = {
        **base,
        "beta": [float(b) for b in fit.beta],
        "center": [float(c) for c in fit.center],
        "scale": [float(s) for s in fit.scale],
    }
    scores = q.ask("cox_score", params)
    if set(scores) != set(fit.sites):
        q.note("a site did not answer the model checks: no concordance or PH test")
        return Diagnostics(None, {})
    n = sum(int(r["n"]) for r in scores.values())
    edges = score_edges(
        n,
        sum(float(r["lp_sum"]) for r in scores.values()),
        sum(float(r["lp_sq"]) for r in scores.values()),
        bins,
    )
    by_site = base.get("strata") == "site"
    per_stratum: dict[tuple[str, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
    for site, r in scores.items():
        for item in r["strata"]:
            label = (site,) if by_site else tuple(str(v) for v in item["label"])
            per_stratum.setdefault(label, []).append(
                (np.asarray(item["steps"], dtype=float), np.asarray(item["counts"], dtype=float))
            )
    counts = [c for parts in per_stratum.values() for c in parts]
    all_times, deaths, at_risk = event_table_all(fit, counts)
    values = transform_values(fit, all_times, deaths, at_risk)
    weights, spread = ph_weights(fit, values)
    ph = [
        {"label": list(st.label), "times": st.times, "weights": np.nan_to_num(w)}
        for st, w in zip(fit.strata, weights, strict=True)
    ]
    replies = q.ask("cox_diagnostics", {**params, "edges": edges, "ph": ph})
    if set(replies) != set(fit.sites):
        q.note("a site did not answer the model checks: no concordance or PH test")
        return Diagnostics(None, {})
    concordance = combine_concordance(replies, len(edges) + 1, comparable_pairs(fit, per_stratum))
    tests = combine_ph(
        fit,
        weights,
        spread,
        [np.asarray(r["ph"], dtype=float) for r in replies.values()],
        variance,
        ties,
    )
    return Diagnostics(concordance, tests)


def ph_test_result(tests: dict[str, pd.DataFrame], time_transform: str | Sequence[str]) -> Any:
    """The stored statistics for one transform, a list of them, or ``"all"``."""
    names: list[str]
    if time_transform == "all":
        names = list(TRANSFORMS)
    elif isinstance(time_transform, str):
        names = [time_transform]
    else:
        names = list(time_transform)
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown:
        raise ParameterError(f"time_transform must be one of {', '.join(TRANSFORMS)} or 'all'")
    if not tests:
        raise FedHemError("the proportional-hazards test was not computed for this fit")
    if len(names) == 1:
        return ProportionalHazardTest(tests[names[0]], names[0])
    first = tests[names[0]]
    order = pd.MultiIndex.from_product([first.index, names], names=["covariate", "transform"])
    both = pd.concat({t: tests[t] for t in names}, names=["transform"]).swaplevel(0, 1)
    return ProportionalHazardTest(both.reindex(order), ", ".join(names))
