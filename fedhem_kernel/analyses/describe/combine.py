"""Combine step of ``describe``: exact pooled moments, quantiles from the pooled histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import columns_of_type, pooled_k, pooled_sums
from fedhem_kernel.analyses.common.combine_dp import DPRelease, bounds_text, dp_bounds, dp_release
from fedhem_kernel.analyses.describe import (
    DP_WEIGHTS,
    HIST_BINS,
    HIST_SPAN,
    QUANTILES,
    STAT_COLUMNS,
    histogram_edges,
    pooled_moments,
    shown_cells,
)
from fedhem_kernel.analyses.describe.result import DescribeResult
from fedhem_kernel.analyses.levels.combine import agree_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION, multiplier
from fedhem_kernel.protocol.query import Ask, Payload


def _bin_pieces(cell: dict) -> tuple[list[tuple[float, float, float]], list[tuple[float, float]]]:
    """Uniform pieces (lo, hi, count) and point masses (x, count) that model one site's values."""
    edges = np.asarray(cell["edges"], dtype=float)
    counts = np.asarray(cell["counts"], dtype=float)
    means = np.asarray(cell["means"], dtype=float)
    equal = np.asarray(cell["equal"], dtype=bool)
    sd = math.sqrt(cell["m2"] / (cell["n"] - 1)) if cell["n"] > 1 else 0.0
    uniform, masses = [], []
    for b in range(len(counts)):
        if equal[b]:
            masses.append((means[b], counts[b]))
            continue
        lo, hi = edges[b], edges[b + 1]
        if np.isnan(lo) and np.isnan(hi):  # a single bin: uniform with the same mean and SD
            lo, hi = means[b] - math.sqrt(3) * sd, means[b] + math.sqrt(3) * sd
        elif np.isnan(lo):  # first bin: mirror the inner edge about the bin mean
            lo = 2 * means[b] - hi
        elif np.isnan(hi):
            hi = 2 * means[b] - lo
        uniform.append((lo, max(hi, lo), counts[b]))
    return uniform, masses


def _pooled_quantiles(cells: list[dict]) -> list[float]:
    uniform, masses = [], []
    for cell in cells:
        u, m = _bin_pieces(cell)
        uniform += u
        masses += m
    n = sum(c for *_, c in uniform) + sum(c for _, c in masses)
    xs = np.unique(
        np.array([v for lo, hi, _ in uniform for v in (lo, hi)] + [x for x, _ in masses])
    )
    f_left = np.zeros(len(xs))
    jump = np.zeros(len(xs))
    for lo, hi, c in uniform:
        if hi > lo:
            f_left += c * np.clip((xs - lo) / (hi - lo), 0.0, 1.0)
        else:
            f_left += c * (xs > lo)
            jump += c * (xs == lo)
    for x, c in masses:
        f_left += c * (xs > x)
        jump += c * (xs == x)
    cdf = np.column_stack([f_left, f_left + jump]).ravel()
    at = np.repeat(xs, 2)
    return [float(np.interp(p * n, cdf, at)) for p in QUANTILES]


def combine_describe(per_site: dict[str, Payload]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled table and per-site table from the sites' released cells."""
    pooled: dict[tuple[str, str], list[dict]] = {}
    suppressed: set[tuple[str, str]] = set()
    site_rows = []
    for site, payload in per_site.items():
        for cell in payload["cells"]:
            key = (cell["group"], cell["column"])
            pooled.setdefault(key, [])
            row = {"site": site, "group": cell["group"], "variable": cell["column"]}
            if "suppressed" in cell:
                suppressed.add(key)
                site_rows.append({**row, "count": pd.NA, "suppressed": cell["suppressed"]})
                continue
            pooled[key].append(cell)
            n = cell["n"]
            site_rows.append(
                {
                    **row,
                    "count": n,
                    "mean": cell.get("mean", np.nan),
                    "std": math.sqrt(cell["m2"] / (n - 1)) if n > 1 else np.nan,
                    "suppressed": "",
                }
            )
    rows = []
    for (group, column), cells in pooled.items():
        cells = [c for c in cells if c["n"] > 0]
        row: dict = {"group": group, "variable": column, "n_sites": len(cells)}
        if not cells:  # none released: NA if a site suppressed it, else truly no values
            hidden = (group, column) in suppressed
            rows.append({**row, "count": pd.NA if hidden else 0})
            continue
        n = sum(c["n"] for c in cells)
        mean = sum(c["n"] * c["mean"] for c in cells) / n
        m2 = sum(c["m2"] + c["n"] * (c["mean"] - mean) ** 2 for c in cells)
        q = _pooled_quantiles(cells)
        row.update(count=n, mean=mean, std=math.sqrt(m2 / (n - 1)) if n > 1 else np.nan)
        row.update(dict(zip(("25%", "50%", "75%"), q, strict=True)))
        if all("min" in c for c in cells):
            row.update(min=min(c["min"] for c in cells), max=max(c["max"] for c in cells))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["group", "variable", *STAT_COLUMNS])
    table["count"] = table["count"].astype("Int64")
    table["n_sites"] = table["n_sites"].astype("Int64")
    by_site = pd.DataFrame(
        site_rows, columns=["site", "group", "variable", "count", "mean", "std", "suppressed"]
    )
    by_site["count"] = by_site["count"].astype("Int64")
    return table, by_site


def _histogram_quantiles(below: np.ndarray, n: float, mean: float, sd: float) -> list[float]:
    """Quartiles from a pooled histogram's perturbed numbers below each edge (made monotone and
    held within 0..n), linear between edges (the quartiles lie among them: Cantelli)."""
    at = histogram_edges(mean, sd)
    mass = np.maximum.accumulate(np.clip(np.asarray(below, dtype=float), 0, n))
    out = []
    for p in QUANTILES:
        target = p * n
        i = int(np.searchsorted(mass, target, "left"))
        if i == 0 or i == len(mass):
            out.append(float(at[min(i, len(at) - 1)]))
            continue
        lo, hi = mass[i - 1], mass[i]
        share = (target - lo) / (hi - lo) if hi > lo else 0.0
        out.append(float(at[i - 1] + share * (at[i] - at[i - 1])))
    return out


def combine_pooled(q: Ask, params: Payload) -> pd.DataFrame:
    """The pooled table through three secure sums (decide, then release: describe/site.py)."""
    labels, columns = params["levels"] or ["all"], params["columns"]
    k = pooled_k(q)
    risk = q.ask_sum("describe_risk", params)
    m = len(risk.sites)
    occupied = np.asarray(risk.totals["occupied"])
    empty = occupied == 0
    shown = shown_cells(risk.totals["counts"], empty, k, m)
    release = {**params, "decided": shown.astype(int).tolist(), "k": k, "evidence": risk.evidence}
    moments = q.ask_sum("describe_moments", release)
    n, mean, sd = pooled_moments(moments.totals)
    weight = n - np.asarray(moments.totals["unmeasured"])  # the share the histograms cover
    spread = shown & np.isfinite(sd) & (sd > 0)
    below = None
    if spread.any():
        histogram = {**release, "moments_evidence": moments.evidence}
        below = np.asarray(q.ask_sum("describe_histogram", histogram).totals["below"])
    rows = []
    for g, group in enumerate(labels):
        for j, column in enumerate(columns):
            # the sites with anyone in the cell (the risk round's total says how many)
            row: dict = {"group": group, "variable": column, "n_sites": int(occupied[g, j])}
            if empty[g, j]:  # no site has anyone there
                rows.append({**row, "count": 0, "n_sites": 0})
                continue
            if not shown[g, j]:
                rows.append({**row, "count": pd.NA})
                continue
            row.update(count=int(n[g, j]), mean=mean[g, j], std=sd[g, j])
            if spread[g, j]:
                assert below is not None
                q25, q50, q75 = _histogram_quantiles(
                    below[g, j], weight[g, j], mean[g, j], sd[g, j]
                )
            else:  # every value the same (or one patient's share unmeasured)
                q25 = q50 = q75 = mean[g, j]
            row.update({"25%": q25, "50%": q50, "75%": q75})
            rows.append(row)
    q.note(
        "pooled through secure sums: counts are within 2 of the truth (perturbed by two sites, "
        "as in a table of the same patients); a group is hidden when its perturbed count is "
        f"below {k + m}, and then another with it; means and SDs are exact over the patients "
        "the release ledger lets each site sum (a site's few patients of a group count with "
        "its overall mean); quartiles from perturbed counts of the patients below each "
        f"edge of a pooled histogram with bins of a tenth of an SD between the mean -{HIST_SPAN:g} and +{HIST_SPAN:g} SD; no minimum "
        "or maximum (a secure sum has none; quartiles lie within 1.8 SD of the mean)"
    )
    table = pd.DataFrame(rows, columns=["group", "variable", *STAT_COLUMNS])
    table["count"] = table["count"].astype("Int64")
    table["n_sites"] = table["n_sites"].astype("Int64")
    return table


#: DP mode: a cell's mean, SD and quartiles are shown where its noisy count is at least this many
#: SDs of the count's noise (and at least :data:`DP_MIN_COUNT`).
DP_SHOWN_SDS = 3.0
DP_MIN_COUNT = 10


def combine_dp(q: Ask, params: Payload, release: DPRelease) -> pd.DataFrame:
    """DP mode: one noised secure sum per request (describe/site.py, ``describe_dp``), decoded:
    the count, mean and SD from the noisy count, Σt and Σ(t-½)² (t: values clipped to the public
    bounds, mapped to [0, 1]), the quartiles from the noisy histogram made nonnegative and
    cumulative (post-processing, free). A cell's count is always shown (rounded, at least 0);
    its mean, SD and quartiles only where the count is well above its noise."""
    labels, columns = params["levels"] or ["all"], params["columns"]
    bounds = dp_bounds(q, columns)
    total = q.ask_sum("describe_dp", {**params, "bounds": bounds}, noise_scale=release.scale)
    m = multiplier(sum(w * w for w in DP_WEIGHTS.values()) * len(columns))
    count, s1, s2, histogram = (
        np.asarray(total.totals[f], dtype=float) / (w * m) for f, w in DP_WEIGHTS.items()
    )
    histogram = np.clip(histogram, 0, None)
    count_sd = release.total_sd(len(total.sites)) / (DP_WEIGHTS["count"] * m)
    enough = max(DP_MIN_COUNT, DP_SHOWN_SDS * count_sd)
    rows = []
    for g, group in enumerate(labels):
        for j, column in enumerate(columns):
            low, high = bounds[j]
            n = count[g, j]
            row: dict = {"group": group, "variable": column, "count": max(0, round(n))}
            if n >= enough:
                mean_t = float(np.clip(s1[g, j] / n, 0, 1))
                centred = s2[g, j] / (4 * n)  # the mean of (t - ½)²
                var_t = max(0.0, (centred - (mean_t - 0.5) ** 2) * n / (n - 1))
                width = high - low
                row.update(mean=low + width * mean_t, std=width * math.sqrt(var_t))
                quartiles = _bin_quantiles(histogram[g, j], low, high)
                row.update(dict(zip(("25%", "50%", "75%"), quartiles, strict=True)))
            rows.append(row)
    q.note(release.note("counts, sums and histograms"))
    spans = bounds_text(columns, bounds)
    q.note(
        f"values clipped to the bounds the sites declare ({spans}); the count carries noise "
        f"of SD {count_sd:.2g}, and a mean, SD and quartiles are shown where the count is at "
        f"least {enough:.0f}; quartiles from a histogram of {HIST_BINS} equal bins between the "
        "bounds; no minimum or maximum"
    )
    table = pd.DataFrame(rows, columns=["group", "variable", *STAT_COLUMNS])
    table["count"] = table["count"].astype("Int64")
    table["n_sites"] = pd.array([pd.NA] * len(table), dtype="Int64")
    return table


def _bin_quantiles(histogram: np.ndarray, low: float, high: float) -> list[float]:
    """Quartiles of a nonnegative histogram of equal bins between ``low`` and ``high`` (linear
    within a bin)."""
    edges = np.linspace(low, high, len(histogram) + 1)
    mass = np.concatenate(([0.0], np.cumsum(histogram)))
    if mass[-1] <= 0:
        return [float("nan")] * len(QUANTILES)
    return [float(np.interp(p * mass[-1], mass, edges)) for p in QUANTILES]


def run(
    q: Ask, columns: Sequence[str] | str | None = None, by: str | None = None
) -> DescribeResult:
    """Count, mean, SD and quantiles of ``columns`` (default: every numeric column), by ``by``."""
    if columns is None:
        numeric = columns_of_type(q, ("float", "int"))
        columns = [c for c in numeric if c != by]
    elif isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise ParameterError("no numeric columns to describe", dataset=q.dataset)
    if by == "site":
        raise ParameterError("describe by 'site': see the by_site table of any describe result")
    levels = agree_levels(q, by)
    params = {"columns": columns, "by": by, "levels": levels}
    release = dp_release(q, RESOLUTION)
    if release is not None:
        table = combine_dp(q, params, release)
        by_site = pd.DataFrame(columns=["site", "group", "variable", "count", "mean", "std"])
    elif pooled_sums(q, "describe"):
        table = combine_pooled(q, params)
        by_site = pd.DataFrame(columns=["site", "group", "variable", "count", "mean", "std"])
    else:
        table, by_site = combine_describe(q.ask("describe", params))
    if by is None:
        table = table.drop(columns="group").set_index("variable")
        by_site = by_site.drop(columns="group")
    else:
        table = table.set_index(["group", "variable"])
    return DescribeResult(table, by_site, q.report(), by)
