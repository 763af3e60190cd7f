"""describe: count, mean, SD and quantiles of numeric columns, optionally by a grouping column.

Site step: per (group, column) the count, mean and sum of squared deviations (combined exactly with
Chan's parallel formula) and a histogram whose bins each hold at least ``min_cell_count`` patients
(at most 50 bins): inner edges midway between neighbouring values, per bin its count, mean and whether
all its values are equal (then k or more patients share that value, as in a category). Min and max are
released only where the policy allows. A cell whose count, or whose number of missing values, is
between 1 and k-1 is suppressed at that site.

Combine: exact pooled count, mean and SD; quantiles by inverting the pooled CDF in which each bin is
uniform between its edges (an outer bin is mirrored about its mean) or a point mass when its values are
equal. Quantiles are approximate: the error is bounded by the width of the bins around them (about
1/50 of a site's patients per bin), and no released quantile is a patient's own value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.levels import agree_levels, group_index, grouping
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

MAX_BINS = 50
QUANTILES = (0.25, 0.5, 0.75)
STAT_COLUMNS = ["count", "mean", "std", "min", "25%", "50%", "75%", "max", "n_sites"]


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


def site_describe(data: SiteData, params: Payload) -> Payload:
    columns = list(params["columns"])
    by = params.get("by")
    groups = grouping(data, by, params.get("levels"))
    if groups is None:
        groups = group_index(data, None, None)
    k = data.k
    labels = params.get("levels") or ["all"]
    cells = []
    for g in labels:
        in_group = (groups == g).to_numpy()
        n_group = int(in_group.sum())
        for col in columns:
            values = data.numeric(col)[in_group]
            x = np.sort(values[~np.isnan(values)])
            n = len(x)
            cell: dict = {"group": g, "column": col}
            if 0 < n_group < k:
                data.log.suppressed(
                    "min_cell_count", f"a group of '{by}' has fewer than {k} patients"
                )
                cell["suppressed"] = "min_cell_count"
            elif 0 < n < k or 0 < n_group - n < k:
                what = "values" if 0 < n < k else "missing values"
                data.log.suppressed(
                    "min_cell_count", f"'{col}' has fewer than {k} {what} in a group"
                )
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


@dataclass(frozen=True)
class DescribeResult:
    """Pooled summary statistics (``table``), per-site releases (``by_site``) and ``privacy``."""

    table: pd.DataFrame
    by_site: pd.DataFrame
    privacy: PrivacyReport
    by: str | None = None

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        return result_html(
            f"describe '{self.privacy.dataset}'" + (f" by '{self.by}'" if self.by else ""),
            self.table,
            self.privacy,
            footnote="Quantiles from pooled site histograms (no patient's own value is released).",
        )

    def widget(self) -> Any:
        """This result as an interactive widget: pooled and per-site tables (suppressed cells marked) and the privacy panel."""
        from fedhem_kernel.display.widgets import describe_widget

        return describe_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"DescribeResult(\n{self.table.to_string()}\n{self.privacy!r})"


def run_describe(
    q: Ask, columns: Sequence[str] | str | None, by: str | None, catalog_numeric: list[str]
) -> DescribeResult:
    if columns is None:
        columns = [c for c in catalog_numeric if c != by]
    elif isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise ParameterError("no numeric columns to describe", dataset=q.dataset)
    if by == "site":
        raise ParameterError("describe by 'site': see the by_site table of any describe result")
    levels = agree_levels(q, by)
    payloads = q.ask("describe", {"columns": columns, "by": by, "levels": levels})
    table, by_site = combine_describe(payloads)
    if by is None:
        table = table.drop(columns="group").set_index("variable")
        by_site = by_site.drop(columns="group")
    else:
        table = table.set_index(["group", "variable"])
    return DescribeResult(table, by_site, q.report(), by)


STEPS = [SiteStep("describe", "describe", site_describe, param_columns("columns", "by"))]
