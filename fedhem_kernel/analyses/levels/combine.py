"""Combine step of ``levels``: the sorted union of the levels the sites name."""

from __future__ import annotations

from collections.abc import Sequence

from fedhem_kernel.analyses.levels import SITE_COLUMN
from fedhem_kernel.errors import DisclosureError
from fedhem_kernel.protocol.query import Ask, Payload


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
