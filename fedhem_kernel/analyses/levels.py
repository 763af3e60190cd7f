"""Agreeing on the categories of a grouping variable without naming rare ones.

Site step: the levels of a column that hold at least ``min_cell_count`` patients at this site (a rare
level's *name* could identify a patient, e.g. a free-text diagnosis). Combine: the sorted union. Every
grouped analysis (``by=``, ``group=``, crosstab) asks this first, so that all sites code the same levels;
a level rare at every site is left out (crosstab shows it as ``(other)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fedhem_kernel.errors import DisclosureError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns, require_str

OTHER = "(other)"
SITE_COLUMN = "site"


def site_levels(data: SiteData, params: Payload) -> Payload:
    column = require_str(params, "column")
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


def combine_levels(payloads: Sequence[Payload]) -> list[str]:
    return sorted({lv for p in payloads for lv in p["levels"]})


def agree_levels(q: Ask, column: str | None) -> list[str] | None:
    """Ask every site for its common levels of ``column``; None when there is no grouping."""
    if column is None or column == SITE_COLUMN:
        return None  # no grouping, or the site itself (handled by the caller)
    return combine_levels(list(q.ask("levels", {"column": column}).values()))


def require_levels(q: Ask, column: str | None, minimum: int = 1) -> list[str] | None:
    """:func:`agree_levels`, refusing when fewer than ``minimum`` levels can be named."""
    levels = agree_levels(q, column)
    if column is not None and column != SITE_COLUMN and len(levels or []) < minimum:
        what = "no level" if minimum == 1 else f"fewer than {minimum} levels"
        raise DisclosureError(
            f"{what} of '{column}' {'has' if minimum == 1 else 'have'} enough patients at any site",
            dataset=q.dataset,
            column=column,
            rule="min_cell_count",
        )
    return levels


def grouping(data: SiteData, column: str | None, levels: list[str] | None) -> pd.Series | None:
    """:func:`group_index` for analyses that leave out missing and ``(other)`` rows (with a note)."""
    if column is None:
        return None
    groups = group_index(data, column, levels)
    if groups.isna().any():
        data.log.note(f"patients with missing '{column}' are left out")
    if (groups == OTHER).any():
        data.log.note(f"levels of '{column}' rare at every site are left out")
    return groups


def group_index(data: SiteData, column: str | None, levels: list[str] | None) -> pd.Series:
    """Per cohort row: the level label, ``OTHER`` for a value outside ``levels``, NA if missing."""
    if column is None or levels is None:
        return pd.Series("all", index=data.cohort.index, dtype=object)
    labels = data.labels(column)
    known = labels.isin(levels)
    out = labels.where(known | labels.isna(), OTHER)
    return out


STEPS = [SiteStep("levels", "levels", site_levels, param_columns("column"))]
