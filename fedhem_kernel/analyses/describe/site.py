"""Site step of ``describe``: per group and column the moments and a histogram of >= k patients per bin."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.site_features import dp_bounds_param, require_dp
from fedhem_kernel.analyses.common.site_grid import key_sums, risk_total
from fedhem_kernel.analyses.crosstab.site import releases_perturbation
from fedhem_kernel.analyses.describe import (
    DP_WEIGHTS,
    HIST_BINS,
    MAX_BINS,
    MAX_POOLED_CELLS,
    histogram_edges,
    pooled_moments,
    shown_cells,
)
from fedhem_kernel.analyses.levels import OTHER
from fedhem_kernel.analyses.levels.site import agreed_levels, group_index
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.dp_values import (
    RESOLUTION,
    bins_of,
    encode,
    multiplier,
    unit_values,
)
from fedhem_kernel.protocol.params import (
    COLUMN,
    LEVELS,
    MAX_COLUMNS,
    NONE,
    instance,
    integer,
    list_of,
    matrix,
    number,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns


def _histogram(x: np.ndarray, k: int, allow_min_max: bool) -> dict[str, np.ndarray]:
    """Bins of >= k sorted values each: edges (B+1), counts, within-bin means, all-equal flags.

    Inner edges lie midway between neighbouring values (tied values never straddle an edge); outer
    edges are min/max only where the policy allows, otherwise the outer bins are placed by their mean.
    """
    n = len(x)
    target = max(k, math.ceil(n / MAX_BINS))
    cuts: list[int] = []
    i = target
    while n - i >= target:
        while i < n and x[i - 1] == x[i]:
            i += 1  # never split tied values across bins
        if n - i < target:
            break
        cuts.append(i)
        i += target
    bounds = np.array([0, *cuts, n])
    inner = [(x[c - 1] + x[c]) / 2.0 for c in cuts]
    lo, hi = (float(x[0]), float(x[-1])) if allow_min_max else (np.nan, np.nan)
    sums = np.add.reduceat(x, bounds[:-1])
    counts = np.diff(bounds)
    equal = np.array([x[a] == x[b - 1] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return {
        "edges": np.array([lo, *inner, hi], dtype=float),
        "counts": counts.astype(np.int64),
        "means": sums / counts,
        "equal": equal,
    }


def site_describe(data: SiteData, params: Payload) -> Payload:
    """Per group and column: n, mean, Σ(x - x̄)² and a histogram of >= k values per bin.

    The rows each cell sums over (a group's patients with a value in the column) are a row set
    of the release ledger, per column: pieces of fewer than k patients of an atom join the atom's
    largest piece (another group, or the rows left out), and rows without a value are left out in
    groups of at least k. So a cell is over 0 or at least k patients, and no two cells of any
    releases difference to fewer.
    """
    columns = list(params["columns"])
    labels, codes = _group_codes(data, params)
    k = data.k
    cells = []
    per_column = {col: _snapped(data, codes, data.numeric(col)) for col in columns}
    for gi, g in enumerate(labels):
        for col in columns:
            values, member = per_column[col]
            x = np.sort(values[member == gi])
            cell: dict = {"group": g, "column": col}
            n = len(x)
            if 0 < n < k:  # cannot happen through the ledger (checked anyway)
                data.log.suppressed("min_cell_count", f"'{col}' has fewer than {k} values")
                cell["suppressed"] = "min_cell_count"
            elif n == 0:
                cell.update(n=0)
            else:
                mean = float(x.mean())
                cell.update(n=n, mean=mean, m2=float(((x - mean) ** 2).sum()))
                cell.update(_histogram(x, k, data.policy.allow_min_max))
                if data.policy.allow_min_max:
                    cell.update(min=float(x[0]), max=float(x[-1]))
            cells.append(cell)
    return {"cells": cells}


def site_describe_own(data: SiteData, params: Payload) -> Payload:
    """:func:`site_describe` as a request of its own: refused where summaries are pooled only."""
    data.per_site_table("summaries")
    return site_describe(data, params)


def _group_codes(data: SiteData, params: Payload) -> tuple[list[str], np.ndarray]:
    """The group labels and, per cohort row, its group (-1: a missing or rare ``by`` value)."""
    by = params.get("by")
    levels = agreed_levels(data, params, "levels")
    if by is None:
        return ["all"], np.zeros(len(data.cohort), dtype=np.int64)
    if levels is None:
        raise ParameterError("describe by a column needs its agreed levels", site=data.site)
    raw = group_index(data, by, levels)
    if raw.isna().any():
        data.log.note(f"patients with missing '{by}' are left out")
    if (raw == OTHER).any():
        data.log.note(f"levels of '{by}' rare at every site are left out")
    return levels, pd.Categorical(raw, categories=levels).codes.astype(np.int64)


def _snapped(
    data: SiteData, codes: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The values and, per row, the group its value is summed in: the groups of rows with a
    value, snapped to the release ledger (-1: left out)."""
    out = np.isnan(values) | (codes < 0)
    return values, data.release_groups(np.where(out, -1, codes), fixed=out)


# -- pooled through secure sums: decide, then release (analyses/common/site_grid.py) ------------
#: The rule a site refuses cells its risk round does not allow with.
POOLED_CELLS = "describe_cells"


def _pooled_request(data: SiteData, params: Payload) -> tuple[list[str], np.ndarray, list[str]]:
    """Group labels, per-row groups and the columns of a pooled request (refused in the clear)."""
    if not data.secure:
        raise ParameterError("a pooled describe is asked only as a secure sum", site=data.site)
    labels, codes = _group_codes(data, params)
    columns = list(params["columns"])
    if len(labels) * len(columns) > MAX_POOLED_CELLS:
        raise data.refuse("max_levels", f"more than {MAX_POOLED_CELLS} groups x columns")
    return labels, codes, columns


def _counts(
    data: SiteData, params: Payload, codes: np.ndarray, col: str, size: int, perturb: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the patients with a value in ``col`` (their values, not ledger groups) and
    the count plus its perturbation (``perturb``; else exact): keyed by those patients, so the
    same patients give the same number here as in a table of the same groups."""
    values = data.numeric(col)
    has = ~np.isnan(values) & (codes >= 0)
    counts = np.bincount(codes[has], minlength=size)
    if not perturb:
        return counts, counts
    keys = key_sums(codes[has], data.row_keys()[has], size, False)
    tag = f"{data.dataset}\0describe\0{col}\0".encode()
    return counts, counts + data.count_noise(keys, counts, tag)


def site_describe_risk(data: SiteData, params: Payload) -> Payload:
    """Round 1: per (group, column) the patients with a value, plus a perturbation in {-1, 0, 1}
    keyed by them, and whether this site has anyone there."""
    labels, codes, columns = _pooled_request(data, params)
    shape = (len(labels), len(columns))
    noisy = np.zeros(shape, dtype=np.int64)
    occupied = np.zeros(shape, dtype=np.int64)
    for j, col in enumerate(columns):
        counts, noisy[:, j] = _counts(data, params, codes, col, len(labels), True)
        occupied[:, j] = counts > 0
    return {"counts": noisy, "occupied": occupied}


def _checked_cells(data: SiteData, params: Payload, shape: tuple[int, int]) -> np.ndarray:
    """The cells a moments or histogram request shows, checked against the risk round: the same
    as :func:`~fedhem_kernel.analyses.describe.shown_cells` decides for ``k`` (at least this
    site's ``min_cell_count``); otherwise refused."""
    first = {key: v for key, v in params.items() if key in RISK_PARAMS or key == "decided"}
    first["evidence"] = params["evidence"]
    noisy, m, totals = risk_total(data, first, "describe_risk", "counts", shape)
    occupied = totals.get("occupied")
    shown = np.asarray(params["decided"], dtype=float)
    if occupied is None or occupied.shape != shape or shown.shape != shape:
        raise ParameterError("the release does not match its risk round", site=data.site)
    decided = shown_cells(noisy, occupied == 0, params["k"], m)
    if params["k"] < data.k or not np.array_equal(shown, decided):
        raise DisclosureError(
            "the summary shows a cell its risk round does not allow",
            site=data.site,
            dataset=data.dataset,
            rule=POOLED_CELLS,
        )
    return decided


@dataclass(frozen=True)
class _Share:
    """One site's share of a shown cell: its weight (its part of the released count), the rows
    its mean and histogram are taken over (None: it has no such rows, the weight is
    ``unmeasured``, perturbed by the site itself)."""

    group: int
    weight: int
    rows: np.ndarray | None
    unmeasured: int


def _shares(
    data: SiteData, params: Payload, codes: np.ndarray, col: str, shown: np.ndarray
) -> tuple[np.ndarray, list[_Share]]:
    """The column's values and this site's share of each shown group that it has patients of.

    The rows are the group's as the release ledger allows them (:meth:`SiteData.release_groups`:
    two cohorts or groups differ by none of them or by at least k); where the ledger moved this
    site's few patients of a group into another, they count with all its patients with a value
    (their share of the count is never left out: that would show how many moved)."""
    groups = len(shown)
    exact, counts = _counts(data, params, codes, col, groups, releases_perturbation(data))
    _, own = _counts(data, params, codes, col, groups, True)
    values, member = _snapped(data, codes, data.numeric(col))
    everyone = member >= 0
    out = []
    for g in np.flatnonzero(shown & (exact > 0)):
        rows = member == g
        rows = rows if rows.any() else everyone
        measured = bool(rows.any())
        out.append(
            _Share(int(g), int(counts[g]), rows if measured else None, 0 if measured else own[g])
        )
    return values, out


def site_describe_moments(data: SiteData, params: Payload) -> Payload:
    """Round 2: for the cells shown, the count (perturbed by two sites: within 2 of the truth,
    the same as a table's margin of the same patients) and this site's mean and mean square
    (exact, over the rows of :func:`_shares`) weighted by its share of that count."""
    labels, codes, columns = _pooled_request(data, params)
    shape = (len(labels), len(columns))
    shown = _checked_cells(data, params, shape)
    out = {name: np.zeros(shape) for name in ("sum", "sumsq")}
    n = np.zeros(shape, dtype=np.int64)
    unmeasured = np.zeros(shape, dtype=np.int64)
    for j in np.flatnonzero(shown.any(axis=0)):
        values, shares = _shares(data, params, codes, columns[j], shown[:, j])
        for share in shares:
            g = share.group
            n[g, j], unmeasured[g, j] = share.weight, share.unmeasured
            if share.rows is not None:
                x = values[share.rows]
                out["sum"][g, j] = share.weight * x.mean()
                out["sumsq"][g, j] = share.weight * (x**2).mean()
    return {"n": n, "unmeasured": unmeasured, **out}


def site_describe_histogram(data: SiteData, params: Payload) -> Payload:
    """Round 3: per cell shown, how many of its patients lie below each edge of a histogram whose
    edges this site derives itself from the moments round's total (checked: every site's signed
    reply).

    The cells are those of the moments round (its signed replies bind them, and this site
    signed its own after checking them against the risk round). The patients are those its
    moments were taken over (:func:`_shares`); each count is
    perturbed in {-1, 0, 1} keyed by them, then scaled to the site's share of the released
    count and rounded (so the histogram adds up as the count does, and says nothing more of
    how many rows the ledger let the site sum). Cumulative counts: a quartile read from them
    carries one count's perturbation, not the sum of many bins'."""
    labels, codes, columns = _pooled_request(data, params)
    shape = (len(labels), len(columns))
    earlier = {key: v for key, v in params.items() if key != "moments_evidence"}
    totals = data.earlier_total(params["moments_evidence"], "describe_moments", earlier)
    # the moments round was this very request's cells, signed by this site (earlier_total holds
    # every reply to it, this site's included), which signs only after checking them
    shown = np.asarray(params["decided"], dtype=float)
    if shown.shape != shape or not np.isin(shown, (0.0, 1.0)).all():
        raise ParameterError("the release does not match its risk round", site=data.site)
    shown = shown.astype(bool)
    if any(np.shape(totals.get(f)) != shape for f in ("n", "sum", "sumsq", "unmeasured")):
        raise ParameterError("the histogram does not match its moments round", site=data.site)
    _, mean, sd = pooled_moments(totals)
    below = np.zeros((*shape, HIST_BINS + 1), dtype=np.int64)
    keys = data.row_keys()
    spread = shown & np.isfinite(sd) & (sd > 0)
    # an empty count is perturbed by its place: the column and the edge (not the group or
    # request, so the same patients below an edge read the same however grouped)
    for j in np.flatnonzero(spread.any(axis=0)):
        col = columns[j]
        values, shares = _shares(data, params, codes, col, spread[:, j])
        tag = f"{data.dataset}\0describe-cdf\0{col}\0".encode()
        for share in shares:
            if share.rows is None:
                continue
            g, rows = share.group, share.rows
            edges = histogram_edges(mean[g, j], sd[g, j])
            where = np.searchsorted(edges, values[rows], "right")  # 0: below the first edge
            counts = np.cumsum(np.bincount(where, minlength=HIST_BINS + 2))[: HIST_BINS + 1]
            nested = np.cumsum(key_sums(where, keys[rows], HIST_BINS + 2, False), dtype=np.uint64)
            noisy = counts + data.count_noise(nested[: HIST_BINS + 1], counts, tag)
            below[g, j] = np.rint(noisy * (share.weight / int(rows.sum()))).astype(np.int64)
    return {"below": below}


# -- DP mode: one noised secure sum (privacy/dp_values.py) --------------------------------------
def site_describe_dp(data: SiteData, params: Payload) -> Payload:
    """DP mode: per (group, column), the count, Σt, Σ4(t-½)² and the histogram of ``t`` (``t``:
    the value clipped to the request's bounds, mapped to [0, 1]; ``HIST_BINS`` equal bins), each
    field times its weight (:data:`DP_WEIGHTS`) times ``M = ⌊R/√(10 · columns)⌋``: one patient
    moves the whole release by at most ``R`` (L2), the sensitivity the executor's noise is for.
    No ledger: the noise protects."""
    require_dp(data, "summaries")
    labels, codes, columns = _pooled_request(data, params)
    bounds = dp_bounds_param(data, params, columns)
    m = multiplier(sum(w * w for w in DP_WEIGHTS.values()) * len(columns))
    w = {name: weight * m for name, weight in DP_WEIGHTS.items()}
    shape = (len(labels), len(columns))
    count = np.zeros(shape, dtype=np.int64)
    total = np.zeros(shape, dtype=np.int64)
    square = np.zeros(shape, dtype=np.int64)
    histogram = np.zeros((*shape, HIST_BINS), dtype=np.int64)
    for j, (col, (low, high)) in enumerate(zip(columns, bounds, strict=True)):
        t = unit_values(data.numeric(col), low, high)
        has = ~np.isnan(t) & (codes >= 0)
        g, t = codes[has], t[has]
        count[:, j] = w["count"] * np.bincount(g, minlength=len(labels))
        total[:, j] = np.bincount(g, encode(t, w["sum"]), minlength=len(labels))
        square[:, j] = np.bincount(g, encode(4 * (t - 0.5) ** 2, w["sumsq"]), minlength=len(labels))
        cell = g * HIST_BINS + bins_of(t, HIST_BINS)
        histogram[:, j] = w["histogram"] * np.bincount(
            cell, minlength=len(labels) * HIST_BINS
        ).reshape(len(labels), HIST_BINS)
    return {"count": count, "sum": total, "sumsq": square, "histogram": histogram}


RISK_PARAMS = {
    "columns": list_of(COLUMN, MAX_COLUMNS, least=1),
    "by": (COLUMN, NONE),
    "levels": (LEVELS, NONE),
}
RELEASE_PARAMS = {
    **RISK_PARAMS,
    "decided": matrix(max_cells=MAX_POOLED_CELLS),
    "k": integer(1, 10**6),
    "evidence": instance(dict, "the signed replies of the risk round"),
}


STEPS = [
    SiteStep(
        "describe",
        "describe",
        site_describe_own,
        param_columns("columns", "by"),
        params=RISK_PARAMS,  # the same request as the pooled risk round's
    ),
    SiteStep(
        "describe_risk",
        "describe",
        site_describe_risk,
        param_columns("columns", "by"),
        params=RISK_PARAMS,
        sums={"counts": "count", "occupied": "count"},
    ),
    SiteStep(
        "describe_moments",
        "describe",
        site_describe_moments,
        param_columns("columns", "by"),
        params=RELEASE_PARAMS,
        sums={"n": "count", "unmeasured": "count", "sum": "real", "sumsq": "real"},
    ),
    SiteStep(
        "describe_histogram",
        "describe",
        site_describe_histogram,
        param_columns("columns", "by"),
        params={
            **RELEASE_PARAMS,
            "moments_evidence": instance(dict, "the signed replies of the moments round"),
        },
        sums={"below": "count"},
    ),
    SiteStep(
        "describe_dp",
        "describe",
        site_describe_dp,
        param_columns("columns", "by"),
        params={
            **RISK_PARAMS,
            "bounds": list_of(list_of(number(), 2, least=2), MAX_COLUMNS, least=1),
        },
        sums={"count": "count", "sum": "count", "sumsq": "count", "histogram": "count"},
        dp=("count", "sum", "sumsq", "histogram"),
        dp_sensitivity=RESOLUTION,
    ),
]
