"""Site step of ``levels``: the levels of a column a site can name, and the grouping helpers every grouped site step uses."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.levels import OTHER
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.params import COLUMN
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns, require_str


def site_levels(data: SiteData, params: Payload) -> Payload:
    column = require_str(params, "column")
    if data.policy.dp:  # only what the data steward declared: nothing read from the data
        return {"levels": sorted(declared_levels(data, column))}
    labels = data.labels(column).dropna()
    counts = labels.value_counts()
    if len(counts) > data.policy.max_levels:
        raise data.refuse(
            "max_levels",
            f"more than {data.policy.max_levels} distinct values: not a grouping variable",
            column,
        )
    common = sorted(str(v) for v, c in counts.items() if c >= data.k)
    if len(common) < len(counts):
        data.log.suppressed(
            "min_cell_count",
            f"{len(counts) - len(common)} level(s) of '{column}' with fewer than {data.k} "
            "patients are not named",
        )
    return {"levels": common}


def declared_levels(data: SiteData, column: str) -> tuple[str, ...]:
    """DP mode: the levels declared for ``column`` (public), or a refusal naming it."""
    declared = data.schema.column(column).levels
    if declared is None:
        raise DisclosureError(
            "DP mode names only the levels a data steward declares for a grouping column "
            f'({column} = {{ type = "category", levels = [...] }}); none are declared here',
            **data.err(column),
            rule="dp",
        )
    return declared


def grouping(data: SiteData, column: str | None, levels: list[str] | None) -> pd.Series | None:
    """:func:`group_index` for analyses that leave out missing and ``(other)`` rows (with a note),
    the groups snapped to the release ledger (:meth:`SiteData.release_groups`): a group is a row set
    the analysis sums over, so a piece of fewer than k patients of an atom joins the atom's largest
    piece (another group, or the rows left out); rows without a level stay out. Rows that leave
    their group are NA; rows that join another group carry its label."""
    if column is None:
        return None
    groups = group_index(data, column, levels)
    if groups.isna().any():
        data.log.note(f"patients with missing '{column}' are left out")
    if (groups == OTHER).any():
        data.log.note(f"levels of '{column}' rare at every site are left out")
    return snap_groups(data, groups, levels or [])


def snap_groups(data: SiteData, groups: pd.Series, levels: list[str]) -> pd.Series:
    """Level labels per cohort row (NA or ``(other)``: in no group) snapped to the ledger."""
    if data.ledger is None:
        return groups
    codes = pd.Categorical(groups, categories=levels).codes.astype(np.int64)
    snapped = data.release_groups(codes, fixed=codes < 0)
    names = np.array([*levels, None], dtype=object)
    return pd.Series(names[np.where(snapped >= 0, snapped, len(levels))], index=groups.index)


def group_index(data: SiteData, column: str | None, levels: list[str] | None) -> pd.Series:
    """Per cohort row: the level label, ``OTHER`` for a value outside ``levels``, NA if missing."""
    if column is None or levels is None:
        return pd.Series("all", index=data.cohort.index, dtype=object)
    labels = data.labels(column)
    known = labels.isin(levels)
    out = labels.where(known | labels.isna(), OTHER)
    return out


def stratum_codes(
    data: SiteData,
    columns: list[str],
    levels: list[list[str]],
    bins: list[list[float]] | None = None,
) -> np.ndarray:
    """Per cohort row: the index of its stratum in the product of ``levels``, -1 if left out.

    ``bins`` (one list per column; empty: none): a numeric column's values clipped to the first
    and last edge and labelled by their bin ("0", "1", ...; DP mode's Cox on numbers)."""
    codes = []
    for i, (column, lv) in enumerate(zip(columns, levels, strict=True)):
        edges = list(bins[i]) if bins is not None and i < len(bins) else []
        labels = binned(data, column, edges) if edges else group_index(data, column, lv)
        if labels.isna().any():
            data.log.note(f"patients with missing '{column}' are left out")
        if (labels == OTHER).any():
            data.log.note(f"levels of '{column}' rare at every site are left out")
        codes.append(pd.Categorical(labels, categories=lv).codes.astype(np.int64))
    stacked = np.vstack(codes)
    valid = (stacked >= 0).all(axis=0)
    out = np.full(stacked.shape[1], -1, dtype=np.int64)
    if valid.any():
        out[valid] = np.ravel_multi_index(stacked[:, valid], [len(lv) for lv in levels])
    # the strata are row sets the test sums over: snapped to the release ledger
    return data.release_groups(out, fixed=out < 0)


def binned(data: SiteData, column: str, edges: list[float]) -> pd.Series:
    """A numeric column's bin labels ("0" .. "B-1") for increasing finite ``edges`` (values
    clipped to the outer edges; missing stays missing)."""
    e = np.asarray(edges, dtype=float)
    if len(e) < 2 or not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise ParameterError("bin edges must be increasing finite numbers", **data.err(column))
    x = data.numeric(column)
    index = np.clip(np.searchsorted(e, np.clip(x, e[0], e[-1]), side="right") - 1, 0, len(e) - 2)
    text = np.where(np.isnan(x), None, index.astype(str))
    return pd.Series(text, index=data.cohort.index, dtype=object)


def agreed_levels(data: SiteData, params: Payload, key: str) -> list[str] | None:
    """The level list a request carries under ``key`` (None without one), held to this site's
    ``max_levels``: a crafted list of thousands of levels would make the step's work grow with it.
    (Its type was checked against the step's ``params``.)"""
    levels = params.get(key)
    if levels is None:
        return None
    if len(levels) > data.policy.max_levels:
        raise data.refuse("max_levels", f"'{key}' lists more than {data.policy.max_levels} levels")
    return [str(v) for v in levels]


STEPS = [
    SiteStep("levels", "levels", site_levels, param_columns("column"), params={"column": COLUMN})
]
