"""crosstab: counts of patients by two categorical columns (or one column by site).

Site step: the site's table on the agreed levels (values outside them go to ``(other)``), with its row,
column and grand totals; cells between 1 and k-1 are suppressed (primary) and further cells are
suppressed until an LP audit shows that no suppressed cell or margin can be pinned down from what is
released (secondary; :mod:`fedhem_kernel.privacy.tables`). A suppressed value never leaves the site: it
travels as -1 and becomes NA.

Combine: per-site tables (``by_site``) and the pooled table, whose cell is the sum over sites or NA when
any site suppressed it (a pooled cell computed from unsuppressed sites only would understate it, and
adding a suppressed site's value would let the others subtract it back out). ``col="site"`` (or
``row="site"``) tabulates one column with one table column per site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.levels import OTHER, SITE_COLUMN, group_index, require_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.tables import suppress_table
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns, require_str

HIDDEN = -1


def _labels(data: SiteData, column: str, levels: list[str] | None) -> pd.Series:
    if column == SITE_COLUMN:
        return pd.Series(data.site, index=data.cohort.index, dtype=object)
    return group_index(data, column, levels)


def site_crosstab(data: SiteData, params: Payload) -> Payload:
    row, col = require_str(params, "row"), require_str(params, "col")
    rows = _labels(data, row, params.get("row_levels"))
    cols = _labels(data, col, params.get("col_levels"))
    # 0 or >= k patients with a missing value may be left out, and the rest must not difference
    # an earlier release: else the table against a one-way table of the same cohort shows the
    # left-out patients' values in the other column
    missing = (rows.isna() | cols.isna()).to_numpy()
    first = row if rows.isna().any() else col
    complete = data.complete_rows(missing, first, f"'{row}' or '{col}'")
    rows, cols = rows[complete], cols[complete]
    row_levels = [data.site] if row == SITE_COLUMN else list(params["row_levels"])
    col_levels = [data.site] if col == SITE_COLUMN else list(params["col_levels"])
    if (rows == OTHER).any():
        row_levels.append(OTHER)
    if (cols == OTHER).any():
        col_levels.append(OTHER)
    r = pd.Categorical(rows, categories=row_levels).codes.astype(np.int64)
    c = pd.Categorical(cols, categories=col_levels).codes.astype(np.int64)
    counts = np.bincount(r * len(col_levels) + c, minlength=len(row_levels) * len(col_levels))
    counts = counts.reshape(len(row_levels), len(col_levels))
    k = data.k
    s = suppress_table(counts, k)
    n_primary = int(s.primary.sum())
    if s.any_suppressed:
        data.log.suppressed(
            "min_cell_count",
            f"{n_primary} cell(s) below {k} suppressed"
            + (
                f", {s.n_secondary} more so that none can be derived from the margins"
                if s.n_secondary
                else ""
            ),
        )
    if not complete.all():
        data.remember_released(complete)
    return {
        "row_levels": row_levels,
        "col_levels": col_levels,
        "cells": np.where(s.cells, HIDDEN, counts),
        "row_totals": np.where(s.row_totals, HIDDEN, counts.sum(axis=1)),
        "col_totals": np.where(s.col_totals, HIDDEN, counts.sum(axis=0)),
        "total": HIDDEN if s.total else int(counts.sum()),
    }


def _frame(values: np.ndarray, index: list[str], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(values, index=index, columns=columns).astype("Int64")
    return df.mask(df == HIDDEN)


def _with_margins(
    cells: pd.DataFrame, row_tot: pd.Series, col_tot: pd.Series, total: object
) -> pd.DataFrame:
    out = cells.copy()
    out["All"] = row_tot
    out.loc["All"] = [*col_tot.tolist(), total]
    return out.astype("Int64")


@dataclass(frozen=True)
class CrosstabResult:
    """Pooled counts (``table``: NA where suppressed), per-site tables and the privacy report."""

    table: pd.DataFrame
    by_site: dict[str, pd.DataFrame]
    privacy: PrivacyReport
    row: str
    col: str

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        return result_html(
            f"crosstab '{self.row}' × '{self.col}' on '{self.privacy.dataset}'",
            self.table,
            self.privacy,
            footnote="NA: suppressed at a site (a cell below the minimum count, or a cell "
            "withheld so that it cannot be derived from the totals).",
        )

    def widget(self) -> Any:
        """This result as an interactive widget: pooled and per-site tables (suppressed cells marked) and the privacy panel."""
        from fedhem_kernel.display.widgets import crosstab_widget

        return crosstab_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"CrosstabResult(\n{self.table.to_string()}\n{self.privacy!r})"


def combine_crosstab(
    per_site: dict[str, Payload], row: str, col: str, margins: bool
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    by_site: dict[str, pd.DataFrame] = {}
    row_labels: list[str] = []
    col_labels: list[str] = []
    parts = {}
    for site, p in per_site.items():
        rl, cl = list(p["row_levels"]), list(p["col_levels"])
        row_labels += [x for x in rl if x not in row_labels]
        col_labels += [x for x in cl if x not in col_labels]
        cells = _frame(np.asarray(p["cells"]), rl, cl)
        rt = pd.Series(np.asarray(p["row_totals"]), index=rl).astype("Int64")
        ct = pd.Series(np.asarray(p["col_totals"]), index=cl).astype("Int64")
        rt, ct = rt.mask(rt == HIDDEN), ct.mask(ct == HIDDEN)
        total = pd.NA if p["total"] == HIDDEN else int(p["total"])
        parts[site] = (cells, rt, ct, total)
        by_site[site] = _with_margins(cells, rt, ct, total) if margins else cells
    for label in (OTHER,):  # keep "(other)" last
        for labels in (row_labels, col_labels):
            if label in labels:
                labels.remove(label)
                labels.append(label)

    def pooled_sum(frames: list) -> object:
        total = frames[0]
        for f in frames[1:]:
            total = total + f  # NA propagates: a pooled cell is NA if any site hid it
        return total

    cells = pooled_sum(
        [c.reindex(index=row_labels, columns=col_labels, fill_value=0) for c, *_ in parts.values()]
    )
    table = cells.astype("Int64")
    if margins:
        rt = pooled_sum([r.reindex(row_labels, fill_value=0) for _, r, _, _ in parts.values()])
        ct = pooled_sum([c.reindex(col_labels, fill_value=0) for _, _, c, _ in parts.values()])
        totals = [t for *_, t in parts.values()]
        total = pd.NA if any(t is pd.NA for t in totals) else sum(totals)
        table = _with_margins(table, rt, ct, total)
    table.index.name = row
    table.columns.name = col
    return table, by_site


def run_crosstab(q: Ask, row: str, col: str, margins: bool = False) -> CrosstabResult:
    for name, value in (("row", row), ("col", col)):
        if not isinstance(value, str) or not value:
            raise ParameterError(f"'{name}' must be a column name (or 'site')")
    if row == col:
        raise ParameterError("'row' and 'col' must be different columns")
    params = {
        "row": row,
        "col": col,
        "row_levels": require_levels(q, row),
        "col_levels": require_levels(q, col),
    }
    per_site = q.ask("crosstab", params)
    table, by_site = combine_crosstab(per_site, row, col, margins)
    return CrosstabResult(table, by_site, q.report(), row, col)


STEPS = [SiteStep("crosstab", "crosstab", site_crosstab, param_columns("row", "col"))]
