"""Combine step of ``crosstab``: the pooled table (NA where any site suppressed a cell)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.crosstab import HIDDEN
from fedhem_kernel.analyses.crosstab.result import CrosstabResult
from fedhem_kernel.analyses.levels import OTHER
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask, Payload


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


def run(q: Ask, row: str, col: str, margins: bool = False) -> CrosstabResult:
    """Counts by ``row`` and ``col`` (``"site"`` for one column per site)."""
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
