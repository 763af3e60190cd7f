"""Site step of ``crosstab``: the site's table with small cells suppressed (and their complements)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.site_grid import key_sums, risk_total
from fedhem_kernel.analyses.crosstab import HIDDEN
from fedhem_kernel.analyses.levels import MISSING, OTHER, SITE_COLUMN
from fedhem_kernel.analyses.levels.site import agreed_levels, group_index
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.tables import pooled_cells_shown, suppress_table
from fedhem_kernel.protocol.params import (
    BOOL,
    COLUMN,
    LEVELS,
    NONE,
    instance,
    integer,
    matrix,
)
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
    missing value are left out (DP needs no ledger). By ``site`` (its levels: every site), each
    site fills its own row or column, and the sum is every site's table, each cell noised."""
    rows, cols = _labels(data, row, row_levels), _labels(data, col, col_levels)
    missing = (rows.isna() | cols.isna()).to_numpy()
    if missing.any():
        data.log.note(f"patients with a missing value in '{row}' or '{col}' are left out")
    row_cats, col_cats = [*row_levels, OTHER], [*col_levels, OTHER]
    r = pd.Categorical(rows[~missing], categories=row_cats).codes.astype(np.int64)
    c = pd.Categorical(cols[~missing], categories=col_cats).codes.astype(np.int64)
    counts = np.bincount(r * len(col_cats) + c, minlength=len(row_cats) * len(col_cats))
    return {"cells": counts.reshape(len(row_cats), len(col_cats))}


# -- pooled through secure sums: decide, then release (analyses/common/site_grid.py) ------------
#: The rule a site refuses a cell (or a total) the risk round does not allow with.
POOLED_CELLS = "crosstab_cells"


def _pooled_codes(
    data: SiteData, params: Payload
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per cohort row its cell (row and column code on the agreed levels, ``(other)`` and
    ``(missing)``), the cohort positions of those rows, and the table's shape (which does not
    depend on the data)."""
    row, col = require_str(params, "row"), require_str(params, "col")
    if not data.secure:
        raise ParameterError("a pooled crosstab is asked only as a secure sum", site=data.site)
    if row == SITE_COLUMN:
        raise ParameterError("by site: the sites are the columns (col='site')", site=data.site)
    row_levels = agreed_levels(data, params, "row_levels")
    col_levels = agreed_levels(data, params, "col_levels")
    if row_levels is None or col_levels is None:
        raise ParameterError("a crosstab of a column needs its agreed levels", site=data.site)
    if col == SITE_COLUMN and data.site not in col_levels:
        raise ParameterError("a table by site names this site among its columns", site=data.site)
    # a missing value is a level of its own, "(missing)", counted under the same rules as any
    # cell (leaving the patients out would need the ledger to leave k out, and skew the margins)
    rows = _labels(data, row, row_levels).astype(object).fillna(MISSING)
    cols = _labels(data, col, col_levels).astype(object).fillna(MISSING)
    row_cats, col_cats = [*row_levels, OTHER, MISSING], [*col_levels, OTHER, MISSING]
    r = pd.Categorical(rows, categories=row_cats).codes.astype(np.int64)
    c = pd.Categorical(cols, categories=col_cats).codes.astype(np.int64)
    shape = (len(row_cats), len(col_cats))
    return r * shape[1] + c, np.arange(len(rows)), shape


def site_crosstab_risk(data: SiteData, params: Payload) -> Payload:
    """Round 1: every cell plus a perturbation in {-1, 0, 1}, the same whenever the same rows
    fall in the same cell of the same two columns (nothing to average by asking again)."""
    cell, where, shape = _pooled_codes(data, params)
    size = shape[0] * shape[1]
    counts = np.bincount(cell, minlength=size)
    # keyed by the cell's own patients (the sum of their row keys): the same patients, the same
    # perturbation, whichever table or cohort they are counted in
    rows_keys = key_sums(cell, data.row_keys()[where], size, False)
    tag = f"{data.dataset}\0{params['row']}\0{params['col']}\0".encode()
    noise = data.count_noise(rows_keys, counts, tag)
    # whether this site has anyone in a cell (a 0 is released exactly, as "0 or >= k" always
    # allowed): summed, the number of sites with someone there; none means the cell is 0
    return {
        "cells": (counts + noise).reshape(shape),
        "occupied": (counts > 0).astype(np.int64).reshape(shape),
    }


def site_crosstab_cells(data: SiteData, params: Payload) -> Payload:
    """Round 2: the cells the coordinator decided to show, and (``with_total``) the grand total,
    perturbed by two sites (:func:`releases_perturbation`); checked against the risk round's total: the cells shown must be those
    :func:`~fedhem_kernel.privacy.tables.pooled_cells_shown` shows for the request's ``k`` (at
    least this site's ``min_cell_count``), ``m`` sites each perturbing by at most one; the grand
    total only if the hidden cells together pass the same bound (their sum, all it reveals of
    them, is at least k)."""
    cell, _, shape = _pooled_codes(data, params)
    first = {key: v for key, v in params.items() if key not in ("with_total", "k")}
    noisy, m, totals = risk_total(data, first, "crosstab_risk", "cells", shape)
    occupied = totals.get("occupied")
    if occupied is None or occupied.shape != shape:
        raise ParameterError("the release does not match its risk round", site=data.site)
    empty = occupied == 0  # no site has anyone there: known zeros
    shown = np.asarray(params["decided"], dtype=float)
    if shown.shape != shape or not np.isin(shown, (0.0, 1.0)).all():
        raise ParameterError("the release does not match its risk round", site=data.site)
    shown = shown.astype(bool)
    hidden = ~shown & ~empty
    k = params["k"]
    if (
        k < data.k
        or not np.array_equal(shown, pooled_cells_shown(noisy, k, m, empty))
        or (params["with_total"] and hidden.any() and noisy[hidden].sum() < k + m * hidden.sum())
    ):
        raise DisclosureError(
            "the crosstab shows a cell (or a total) its risk round does not allow",
            site=data.site,
            dataset=data.dataset,
            rule=POOLED_CELLS,
        )
    size = shape[0] * shape[1]
    counts = np.bincount(cell, minlength=size).reshape(shape)
    if releases_perturbation(data):
        # the released counts carry two sites' perturbations (the same as in the risk round:
        # keyed by each cell's patients), so a count is within 2 of the truth, never known exact, and
        # a difference with another query's count of nearly the same patients says little
        rows_keys = key_sums(cell, data.row_keys(), size, False).reshape(shape)
        tag = f"{data.dataset}\0{params['row']}\0{params['col']}\0".encode()
        counts = counts + data.count_noise(rows_keys, counts, tag)
    out = {"cells": np.where(shown, counts, 0)}
    # margins (each perturbed as a count of its own patients), only of rows and columns with
    # no hidden cell; the grand total only if the hidden cells' sum passed the bound
    r, c = np.divmod(cell, shape[1])
    lines = (
        ("row_totals", r, shape[0], ~(hidden.any(axis=1))),
        ("col_totals", c, shape[1], ~(hidden.any(axis=0))),
        ("total", np.zeros(len(cell), dtype=np.int64), 1, np.array([bool(params["with_total"])])),
    )
    for name, index, size, allowed in lines:
        totals_ = np.bincount(index, minlength=size)
        if releases_perturbation(data):
            keys = key_sums(index, data.row_keys(), size, False)
            totals_ = totals_ + data.count_noise(keys, totals_, name.encode())
        out[name] = np.where(allowed, totals_, 0)
    return out


def releases_perturbation(data: SiteData) -> bool:
    """Whether this site is one of the two (the first in name order) whose perturbations the
    released counts of a pooled table carry: within 2 of the truth over any number of sites."""
    return data.site in sorted(data.sum_sites)[:2]


def site_crosstab(data: SiteData, params: Payload) -> Payload:
    data.per_site_table("tables of counts")
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


XTAB_PARAMS = {
    "row": COLUMN,
    "col": COLUMN,
    "row_levels": (LEVELS, NONE),
    "col_levels": (LEVELS, NONE),
}
#: Most levels a pooled table may have per side (a site's ``max_levels`` bounds it further).
MAX_LEVELS = 1000

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
    ),
    SiteStep(
        "crosstab_risk",
        "crosstab",
        site_crosstab_risk,
        param_columns("row", "col"),
        params=XTAB_PARAMS,
        sums={"cells": "count", "occupied": "count"},
    ),
    SiteStep(
        "crosstab_cells",
        "crosstab",
        site_crosstab_cells,
        param_columns("row", "col"),
        params={
            **XTAB_PARAMS,
            "decided": matrix(max_cells=(MAX_LEVELS + 1) ** 2),
            "with_total": BOOL,
            "k": integer(1, 10**6),
            "evidence": instance(dict, "the signed replies of the risk round"),
        },
        sums={"cells": "count", "row_totals": "count", "col_totals": "count", "total": "count"},
    ),
]
