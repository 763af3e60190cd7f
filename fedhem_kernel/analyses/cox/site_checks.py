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

from typing import TYPE_CHECKING

import numpy as np

from fedhem_kernel.analyses.cox import MAX_BINS, TRANSFORMS
from fedhem_kernel.analyses.cox.site_design import SiteDesign, checked_coefficients, site_design
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData

if TYPE_CHECKING:
    pass


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
