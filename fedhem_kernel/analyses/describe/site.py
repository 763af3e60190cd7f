"""Site step of ``describe``: per group and column the moments and a histogram of >= k patients per bin."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.describe import MAX_BINS
from fedhem_kernel.analyses.levels import OTHER
from fedhem_kernel.analyses.levels.site import agreed_levels, group_index
from fedhem_kernel.protocol.params import COLUMN, LEVELS, MAX_COLUMNS, NONE, list_of
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
    by = params.get("by")
    levels = agreed_levels(data, params, "levels")
    labels = levels or ["all"]
    if by is None:
        codes = np.zeros(len(data.cohort), dtype=np.int64)
    else:
        raw = group_index(data, by, levels)
        if raw.isna().any():
            data.log.note(f"patients with missing '{by}' are left out")
        if (raw == OTHER).any():
            data.log.note(f"levels of '{by}' rare at every site are left out")
        codes = pd.Categorical(raw, categories=labels).codes.astype(np.int64)
    k = data.k
    cells = []
    per_column = {}
    for col in columns:
        values = data.numeric(col)
        missing = np.isnan(values)
        out = missing | (codes < 0)
        member = data.release_groups(np.where(out, -1, codes), fixed=out)
        per_column[col] = (values, member)
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


STEPS = [
    SiteStep(
        "describe",
        "describe",
        site_describe,
        param_columns("columns", "by"),
        params={
            "columns": list_of(COLUMN, MAX_COLUMNS, least=1),
            "by": (COLUMN, NONE),
            "levels": (LEVELS, NONE),
        },
    )
]
