"""The query dataset's columns as the sites' catalogs list them (names, types, units; never values)."""

from __future__ import annotations

from typing import Any

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.query import Ask


def catalog_columns(q: Ask) -> list[dict[str, Any]]:
    """One entry per (site, column) of ``q.dataset``, in site order: ``site``, ``column``,
    ``dtype``, ``unit``, ``derived``. Raises :class:`SchemaError` when no site has the dataset."""
    rows = [
        {"site": site, **column}
        for site, payload in q.catalog().items()
        for column in payload["datasets"].get(q.dataset, [])
    ]
    if not rows:
        raise SchemaError("no such dataset at any site", dataset=q.dataset)
    return rows


def columns_of_type(q: Ask, dtypes: tuple[str, ...]) -> list[str]:
    """The dataset's columns that some site types as one of ``dtypes``, in catalog order."""
    return list(dict.fromkeys(r["column"] for r in catalog_columns(q) if r["dtype"] in dtypes))


def pooled_sums(q: Ask, analysis: str | None = None) -> bool:
    """Whether every site takes part in secure sums (then tables are pooled before any rule)
    and, with ``analysis``, answers it (a site that does not would stop every secure sum: the
    others answer per site, and the report says who refused)."""
    catalog = q.catalog()
    enough = len(catalog) >= len(q.sites) // 2 + 1  # a secure sum needs a majority
    policies = [Policy.from_dict(entry.get("policy", {})) for entry in catalog.values()]
    if all(p.is_unrestricted for p in policies):  # no thresholds: the exact per-site tables
        return False
    if analysis is not None and any(
        p.allowed_analyses is not None and analysis not in p.allowed_analyses for p in policies
    ):
        return False
    return enough and all(entry.get("secure_sum") for entry in catalog.values())


def pooled_k(q: Ask) -> int:
    """The largest ``min_cell_count`` among the sites (a pooled rule must satisfy every site)."""
    return max(int(e.get("policy", {}).get("min_cell_count", 1)) for e in q.catalog().values())
