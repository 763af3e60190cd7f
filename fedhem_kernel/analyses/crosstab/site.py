"""Site step of ``crosstab``: the site's table with small cells suppressed (and their complements)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.crosstab import HIDDEN
from fedhem_kernel.analyses.levels import OTHER, SITE_COLUMN
from fedhem_kernel.analyses.levels.site import agreed_levels, group_index
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.tables import suppress_table
from fedhem_kernel.protocol.params import COLUMN, LEVELS, NONE
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns, require_str


def _labels(data: SiteData, column: str, levels: list[str] | None) -> pd.Series:
    if column == SITE_COLUMN:
        return pd.Series(data.site, index=data.cohort.index, dtype=object)
    return group_index(data, column, levels)


def _dp_cells(
    data: SiteData, row: str, col: str, row_levels: list[str], col_levels: list[str]
) -> Payload:
    """DP mode: every cell of the agreed levels and ``(other)``, exact: the site adds its noise
    share and masks it (the executor). The shape does not depend on the data; patients with a
    missing value are left out (DP needs no ledger)."""
    if SITE_COLUMN in (row, col):
        raise ParameterError("a crosstab by site is not a sum over sites: not in DP mode")
    rows, cols = _labels(data, row, row_levels), _labels(data, col, col_levels)
    missing = (rows.isna() | cols.isna()).to_numpy()
    if missing.any():
        data.log.note(f"patients with a missing value in '{row}' or '{col}' are left out")
    row_cats, col_cats = [*row_levels, OTHER], [*col_levels, OTHER]
    r = pd.Categorical(rows[~missing], categories=row_cats).codes.astype(np.int64)
    c = pd.Categorical(cols[~missing], categories=col_cats).codes.astype(np.int64)
    counts = np.bincount(r * len(col_cats) + c, minlength=len(row_cats) * len(col_cats))
    return {"cells": counts.reshape(len(row_cats), len(col_cats))}


def site_crosstab(data: SiteData, params: Payload) -> Payload:
    row, col = require_str(params, "row"), require_str(params, "col")
    row_given = agreed_levels(data, params, "row_levels")
    col_given = agreed_levels(data, params, "col_levels")
    if data.policy.dp:
        if row_given is None or col_given is None:
            raise ParameterError("a crosstab of a column needs its agreed levels")
        return _dp_cells(data, row, col, row_given, col_given)
    rows = _labels(data, row, row_given)
    cols = _labels(data, col, col_given)
    # the rows left out for a missing value are snapped to the release ledger: else the table
    # against a one-way table of the same cohort shows the left-out patients' values
    missing = (rows.isna() | cols.isna()).to_numpy()
    first = row if rows.isna().any() else col
    complete = data.complete_rows(missing, first, f"'{row}' or '{col}'")
    rows, cols = rows[complete], cols[complete]
    if (row != SITE_COLUMN and row_given is None) or (col != SITE_COLUMN and col_given is None):
        raise ParameterError("a crosstab of a column needs its agreed levels")
    row_levels = [data.site] if row == SITE_COLUMN else list(row_given or [])
    col_levels = [data.site] if col == SITE_COLUMN else list(col_given or [])
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
    return {
        "row_levels": row_levels,
        "col_levels": col_levels,
        "cells": np.where(s.cells, HIDDEN, counts),
        "row_totals": np.where(s.row_totals, HIDDEN, counts.sum(axis=1)),
        "col_totals": np.where(s.col_totals, HIDDEN, counts.sum(axis=0)),
        "total": HIDDEN if s.total else int(counts.sum()),
    }


STEPS = [
    SiteStep(
        "crosstab",
        "crosstab",
        site_crosstab,
        param_columns("row", "col"),
        params={
            "row": COLUMN,
            "col": COLUMN,
            "row_levels": (LEVELS, NONE),
            "col_levels": (LEVELS, NONE),
        },
        sums={"cells": "count"},
        dp=("cells",),
    )
]
