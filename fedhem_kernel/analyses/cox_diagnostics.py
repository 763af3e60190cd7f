"""Checks of a fitted Cox model: concordance (Harrell's C) and the Schoenfeld proportional-hazards test.

Both run after the Newton iterations, on the design each site still holds for the fit, in two rounds:

``cox_score`` (site)
    For the final coefficients: the count, sum and sum of squares of the linear predictor over the
    site's rows (the coordinator places the score bins from them), and per stratum the number of
    rows in each merged time step (the at-risk table a Kaplan–Meier release would show; used for the
    ``km`` time transform).

``cox_diagnostics`` (site)
    *Concordance.* Pairs within the site are compared exactly, at the site: it releases three totals
    over all its comparable pairs (pairs, concordant, tied). For pairs across sites it releases, per
    merged time step, how many of its events and censorings fall in each score bin; bins are merged
    within a step until every released cell holds 0 or at least k events and 0 or at least k
    censorings (like the steps themselves). The coordinator compares cells of different sites: a pair
    whose cells do not overlap in score is resolved exactly; one in overlapping cells counts ½ (as a
    tie does), and the result carries the bounds such pairs allow.

    *Proportional hazards.* For weights g(t) - ḡ per pooled event time (the time transforms: rank,
    km, identity, log), the site releases Σ over its events of (g(tᵢ) - ḡ)·zᵢ: a weighted sum of its
    per-step event sums (each over 0 or at least k events), one p-vector per transform. With the
    pooled risk-set sums of the fit, the coordinator forms Σ (g - ḡ)·rᵢ over the Schoenfeld residuals
    rᵢ = zᵢ - z̄(tᵢ) (Efron's weighting of tied events, as lifelines) and the statistic lifelines'
    ``proportional_hazard_test`` computes from the scaled residuals, without any residual leaving a
    site.

Definitions follow lifelines: Harrell's C over pairs where the earlier time is an event (and, at equal
times, the other is censored), a tie in the score counting ½, strata ignored (``concordance_index_``
of ``CoxPHFitter``); the proportional-hazards statistic is lifelines' for every transform, with one
difference: ``rank`` gives tied event times their average rank (as R's ``cox.zph``), while lifelines
ranks tied events in row order (``cumsum``), which makes its statistic depend on how rows were sorted.
With distinct event times the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from fedhem_kernel.analyses.cox_site import SiteDesign, checked_coefficients, site_design
from fedhem_kernel.errors import FedHemError, ParameterError
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData

if TYPE_CHECKING:
    from fedhem_kernel.analyses.cox import CoxFit
    from fedhem_kernel.protocol.query import Ask

#: Score bins for pairs across sites (more bins: fewer unresolved pairs).
CONCORDANCE_BINS = 64
#: Most bins a site accepts.
MAX_BINS = 256
#: Time transforms of the proportional-hazards test (lifelines' names).
TRANSFORMS = ("rank", "km", "identity", "log")


# -- site side ------------------------------------------------------------------------------
def _linear_predictor(data: SiteData, design: SiteDesign, params: Payload) -> np.ndarray:
    """zβ per sorted row for the requested coefficients (checked like a ``cox_sums`` request)."""
    beta, _, _, zt = checked_coefficients(data, design, params)
    return np.einsum("i,in->n", beta, zt)


def _row_times(design: SiteDesign) -> np.ndarray:
    """Each sorted row's time: the time of its merged step."""
    times = np.empty(design.n_blocks)
    for s in design.strata:
        times[s.lo : s.hi] = s.block_times
    return times[design.row_block]


def site_cox_score(data: SiteData, params: Payload) -> Payload:
    """Moments of the linear predictor, and the rows per merged step of each stratum."""
    _, design = site_design(data, params)
    with design.lock:
        lp = _linear_predictor(data, design, params)
    counts = np.bincount(design.row_block, minlength=design.n_blocks)
    return {
        "n": design.n,
        "lp_sum": float(lp.sum()),
        "lp_sq": float((lp**2).sum()),
        "strata": [
            {"label": list(s.label), "steps": s.block_times, "counts": counts[s.lo : s.hi]}
            for s in design.strata
        ],
    }


def later_comparisons(ranks: np.ndarray, events: np.ndarray) -> tuple[int, int]:
    """For rows in order: Σ over events i of #{j after i: rank_j < rank_i} and of #{... = rank_i}.

    Bottom-up merge counting, vectorised per level (log₂ n levels of a stable sort and two
    searchsorted calls): O(n log² n) at worst, no Python loop over rows.
    """
    n = len(ranks)
    vals = np.asarray(ranks, dtype=np.int64)
    evs = np.asarray(events, dtype=bool)
    pos = np.arange(n, dtype=np.int64)
    big = np.int64(n + 1)
    smaller = equal = 0
    width = 1
    while width < n:
        run = pos // width
        pair = run >> 1
        left = (run & 1) == 0
        right = ~left
        key_right = pair[right] * big + vals[right]  # sorted: runs are sorted, pairs ascend
        probe = left & evs
        key_left = pair[probe] * big + vals[probe]
        lo = np.searchsorted(key_right, key_left, side="left")
        hi = np.searchsorted(key_right, key_left, side="right")
        base = np.searchsorted(key_right, pair[probe] * big, side="left")
        smaller += int((lo - base).sum())
        equal += int((hi - lo).sum())
        order = np.argsort(pair * big + vals, kind="stable")
        vals, evs = vals[order], evs[order]
        width <<= 1
    return smaller, equal


def _pairs_of_ties(*keys: np.ndarray) -> int:
    """Σ c(c-1)/2 over groups of equal keys."""
    if len(keys[0]) == 0:
        return 0
    _, counts = np.unique(np.column_stack(keys), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def within_concordance(times: np.ndarray, events: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """Harrell's counts over all pairs of these rows: (comparable pairs, concordant, tied score).

    A pair is comparable when the earlier time is an event, or both times are equal and only the
    first is an event; it is concordant when that event has the higher score (lifelines'
    ``concordance_index(times, -score, events)``).
    """
    n = len(times)
    if n == 0:
        return np.zeros(3, dtype=np.int64)
    rank = np.unique(lp, return_inverse=True)[1].ravel()
    ev = events.astype(bool)
    # time ascending; at a time, events before censorings, events by ascending score: every pair
    # (event i, row j after i) is comparable except events tied in time, and those add nothing to
    # "smaller" (a later event at the same time never has a lower score)
    order = np.lexsort((rank, ~ev, times))
    smaller, equal = later_comparisons(rank[order], ev[order])
    positions = np.flatnonzero(ev[order])
    after = int((n - 1 - positions).sum())
    tied_events = _pairs_of_ties(times[ev])
    tied_both = _pairs_of_ties(times[ev], rank[ev].astype(float))
    return np.array([after - tied_events, smaller, equal - tied_both], dtype=np.int64)


def merge_score_cells(
    bins: np.ndarray, events: np.ndarray, censored: np.ndarray, k: int
) -> list[tuple[int, int, int, int]]:
    """One step's nonzero cells (ascending bin) merged into runs of 0 or >= k events and censorings.

    Returns ``(first bin, last bin + 1, events, censored)`` per released cell. The step's totals
    obey the rule, so merging everything always works; a result that would not is an error.
    """

    def ok(e: int, c: int) -> bool:
        return (e == 0 or e >= k) and (c == 0 or c >= k)

    out: list[list[int]] = []
    cur: list[int] | None = None
    for b, e, c in zip(bins.tolist(), events.tolist(), censored.tolist(), strict=True):
        if cur is None:
            cur = [b, b + 1, e, c]
        else:
            cur[1], cur[2], cur[3] = b + 1, cur[2] + e, cur[3] + c
        if ok(cur[2], cur[3]):
            out.append(cur)
            cur = None
    if cur is not None:
        while out and not ok(cur[2], cur[3]):
            prev = out.pop()
            cur = [prev[0], cur[1], prev[2] + cur[2], prev[3] + cur[3]]
        out.append(cur)
    if not all(ok(c[2], c[3]) for c in out):
        raise RuntimeError("a concordance cell failed its release check")
    return [tuple(c) for c in out]  # type: ignore[misc]


#: Under a policy with k > 1, a site groups its steps into time bands of at least this many times
#: k rows before it splits them by score (so that a band can hold several score cells of k).
BAND_ROWS_PER_K = 8


def time_bands(times: np.ndarray, k: int) -> np.ndarray:
    """Band index per row: consecutive merged steps grouped to at least ``BAND_ROWS_PER_K·k`` rows.

    With k = 1 every step is its own band (exact times). Bands follow the site's own steps, so
    their limits are step times the setup round already released.
    """
    values, index, counts = np.unique(times, return_inverse=True, return_counts=True)
    index = index.ravel()
    if k <= 1:
        return index
    target = BAND_ROWS_PER_K * k
    band = np.cumsum(counts) // target  # band of each step by rows before and in it
    band = np.minimum(band, max(int(counts.sum()) // target - 1, 0))  # leftover joins the last
    return np.unique(band, return_inverse=True)[1].ravel()[index]


def score_cells(
    times: np.ndarray, events: np.ndarray, bins: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Counts of events and censorings per (time band, score bin), merged along bins to 0 or >= k.

    Every cell says the first and last time of its band (``t_lo``, ``t_hi``); with k = 1 bands are
    single times.
    """
    band = time_bands(times, k)
    n_bands = int(band.max()) + 1 if len(band) else 0
    t_lo = np.full(n_bands, np.inf)
    t_hi = np.full(n_bands, -np.inf)
    np.minimum.at(t_lo, band, times)
    np.maximum.at(t_hi, band, times)
    n_bins = int(bins.max()) + 1 if len(bins) else 1
    key = band.astype(np.int64) * n_bins + bins
    cells, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    ev = np.bincount(inverse, weights=events, minlength=len(cells)).astype(np.int64)
    ce = np.bincount(inverse, minlength=len(cells)).astype(np.int64) - ev
    cell_band, cell_bin = cells // n_bins, cells % n_bins
    if k > 1:  # events and censorings merged separately: every row is in one released cell
        starts = np.flatnonzero(np.concatenate(([True], cell_band[1:] != cell_band[:-1])))
        bounds = np.append(starts, len(cells))
        rows: list[tuple[int, int, int, int, int]] = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            for counts, is_event in ((ev[a:b], True), (ce[a:b], False)):
                has = counts > 0
                if not has.any():
                    continue
                zero = np.zeros(int(has.sum()), dtype=np.int64)
                for lo, hi, n, _ in merge_score_cells(cell_bin[a:b][has], counts[has], zero, k):
                    rows.append(
                        (int(cell_band[a]), lo, hi, n if is_event else 0, 0 if is_event else n)
                    )
        arr = np.array(rows, dtype=np.int64).reshape(-1, 5)
        cell_band, lo_bin, hi_bin, ev, ce = arr.T
    else:
        lo_bin, hi_bin = cell_bin, cell_bin + 1
    return {
        "t_lo": t_lo[cell_band],
        "t_hi": t_hi[cell_band],
        "lo": lo_bin,
        "hi": hi_bin,
        "events": ev,
        "censored": ce,
    }


def _edges(params: Payload) -> np.ndarray:
    edges = np.asarray(params.get("edges", []), dtype=float).ravel()
    if len(edges) + 1 > MAX_BINS or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise ParameterError(f"'edges' must be at most {MAX_BINS - 1} increasing finite numbers")
    return edges


def _ph_weights(design: SiteDesign, params: Payload) -> np.ndarray:
    """Per merged step (global id): its row of transform weights (zero for steps without events)."""
    entries = params.get("ph") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ParameterError("'ph' must be a list of strata")
    by_label = {tuple(str(v) for v in e.get("label", [])): e for e in entries}
    m = len(TRANSFORMS)
    out = np.zeros((design.n_blocks, m))
    for s in design.strata:
        item = by_label.get(s.label)
        if item is None:
            continue
        times = np.asarray(item.get("times"), dtype=float).ravel()
        weights = np.asarray(item.get("weights"), dtype=float)
        if weights.shape != (len(times), m) or not np.isfinite(weights).all():
            raise ParameterError("'ph' weights do not match their times")
        j = np.searchsorted(times, s.block_times)
        jc = np.clip(j, 0, max(len(times) - 1, 0))
        hit = (j < len(times)) & (times[jc] == s.block_times) if len(times) else j < 0
        out[s.lo : s.hi][hit] = weights[jc[hit]]
    return out


def site_cox_diagnostics(data: SiteData, params: Payload) -> Payload:
    """Concordance counts within the site, score cells for pairs across sites, PH weighted sums."""
    _, design = site_design(data, params)
    edges = _edges(params)
    with design.lock:
        lp = _linear_predictor(data, design, params)
        times = _row_times(design)
        events = design.row_event
        bins = np.searchsorted(edges, lp, side="right")
        within = np.zeros(3, dtype=np.int64)
        cells = []
        for s in design.strata:  # pairs are compared within a stratum only (as lifelines)
            a, b = np.searchsorted(design.row_block, (s.lo, s.hi))
            within += within_concordance(times[a:b], events[a:b], lp[a:b])
            cells.append(
                {"label": list(s.label), **score_cells(times[a:b], events[a:b], bins[a:b], data.k)}
            )
        weights = _ph_weights(design, params)[design.row_block] * events[:, None]
        # Σ over events of weight × z: per step, a weighted sum of that step's events only
        ph = np.einsum("nm,pn->mp", weights, design.xt)
    return {"within": within, "cells": cells, "ph": ph}


# -- coordinator side -----------------------------------------------------------------------
@dataclass(frozen=True)
class Concordance:
    """Harrell's C and what the binning of pairs across sites leaves open."""

    value: float
    lower: float
    upper: float
    pairs: int
    unresolved: int


@dataclass(frozen=True)
class ProportionalHazardTest:
    """lifelines' ``proportional_hazard_test`` result: one χ²(1) statistic per covariate and transform."""

    summary: pd.DataFrame
    time_transform: str

    @property
    def test_statistic(self) -> np.ndarray:
        return self.summary["test_statistic"].to_numpy()

    @property
    def p_value(self) -> np.ndarray:
        return self.summary["p"].to_numpy()

    def _repr_html_(self) -> str:
        caption = f"Proportional-hazards test (scaled Schoenfeld residuals, {self.time_transform})"
        return f"<b>{caption}</b>" + self.summary.to_html(float_format=lambda v: f"{v:.4g}")

    def __repr__(self) -> str:
        return f"ProportionalHazardTest({self.time_transform})\n{self.summary}"


@dataclass
class Diagnostics:
    concordance: Concordance | None
    ph_tests: dict[str, pd.DataFrame]


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
) -> dict[str, pd.DataFrame]:
    """lifelines' statistic per covariate and transform, from pooled sums (see module docstring)."""
    from fedhem_kernel.analyses.cox import time_weights

    # Σ (g - ḡ)·z over events, minus Σ_t (g_t - ḡ)·d_t·z̄(t) (Efron-weighted risk-set mean)
    total = np.sum(np.asarray(site_sums, dtype=float), axis=0)  # (transforms, p)
    for st, w in zip(fit.strata, weights, strict=True):
        cw = time_weights(st, ties)
        assert st.S1 is not None
        expected = cw.c1[:, None] * st.S1
        if ties == "efron" and st.tied.any():
            assert st.D1 is not None
            expected[st.tied] -= cw.c2[st.tied][:, None] * st.D1
        total -= w.T @ expected
    resid = total * fit.scale  # back to the covariates' units
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
