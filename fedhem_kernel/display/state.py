"""The synced state of the result widgets: plain JSON built only from what a result already holds.

Everything returned here reaches the browser, so it is built from released values only: the pooled
tables, curves and the privacy report of a result object. A suppressed cell is sent as ``null`` with
the flag ``"suppressed"``; its value never enters the state (it never reached the coordinator either:
a site sends ``HIDDEN`` = -1 and the result holds NA). Non-finite numbers become ``null`` so that the
state is strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
    from fedhem_kernel.protocol.report import PrivacyReport

#: How a site sends a suppressed count (see ``fedhem_kernel.analyses.crosstab``).
HIDDEN = -1

SUPPRESSED = "suppressed"  # the cell was withheld by a site's privacy policy
NOT_AVAILABLE = "na"  # no value: not released (e.g. min/max), or not defined (SD of one patient)


# -- JSON-safe scalars -----------------------------------------------------------------------------
def json_value(value: Any) -> Any:
    """A JSON scalar: ints and finite floats as numbers, NA/NaN/inf as None, others as text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return str(value)


def _floats(values: Iterable[Any]) -> list[float | None]:
    return [json_value(v) for v in values]


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def _label(value: Any) -> str:
    if isinstance(value, tuple):
        return " / ".join(str(v) for v in value)
    return str(value)


# -- privacy report --------------------------------------------------------------------------------
def budget_state(budget: Any) -> dict[str, float] | None:
    """A site's DP budget for the panel: spent, cap and left in ρ, spent and cap as ε."""
    if not budget:
        return None
    keys = ("rho_spent", "rho_cap", "rho_left", "epsilon_spent", "epsilon_cap")
    return {k: float(budget[k]) for k in keys if k in budget}


def privacy_state(report: PrivacyReport) -> dict[str, Any]:
    """The privacy report as the panel shows it: per site the outcome, rules and reasons; notes."""
    return {
        "analysis": report.analysis,
        "dataset": report.dataset,
        "outcomes": [
            {
                "site": o.site,
                "status": o.status,
                "rules": list(o.rules),
                "details": list(o.details),
                "budget": budget_state(o.budget),
            }
            for o in report.outcomes
        ],
        "notes": list(report.notes),
    }


# -- tables ----------------------------------------------------------------------------------------
def _is_count_column(series: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype
    )


def table_state(
    df: pd.DataFrame, caption: str = "", suppressed: pd.DataFrame | None = None
) -> dict[str, Any]:
    """A DataFrame as rows of cells, each with a flag ``""``, ``"suppressed"`` or ``"na"``.

    A cell is *suppressed* when ``suppressed`` (a boolean frame aligned with ``df``) says so, when
    it is missing in a count (integer) column, or when it holds ``HIDDEN`` in a count column; its
    value is then ``None``. Any other missing value is ``"na"`` (not released or not defined).
    """
    mask = None
    if suppressed is not None:
        mask = suppressed.reindex(index=df.index, columns=df.columns, fill_value=False).astype(bool)
    count_cols = [_is_count_column(df[c]) for c in df.columns]
    rows = []
    for i, (idx, row) in enumerate(df.iterrows()):
        values: list[Any] = []
        flags: list[str] = []
        for j, raw in enumerate(row.tolist()):
            missing = raw is None or raw is pd.NA or (isinstance(raw, float) and math.isnan(raw))
            hidden = count_cols[j] and not missing and int(raw) == HIDDEN
            if (mask is not None and bool(mask.iat[i, j])) or (count_cols[j] and missing) or hidden:
                values.append(None)
                flags.append(SUPPRESSED)
                continue
            value = json_value(raw)
            values.append(value)
            flags.append(NOT_AVAILABLE if value is None else "")
        index = list(idx) if isinstance(idx, tuple) else [idx]
        rows.append({"index": [_label(v) for v in index], "values": values, "flags": flags})
    names = [n for n in df.index.names]
    return {
        "caption": caption,
        "index_names": ["" if n is None else str(n) for n in names],
        "columns": [_label(c) for c in df.columns],
        "columns_name": "" if df.columns.name is None else str(df.columns.name),
        "rows": rows,
    }


# -- Kaplan–Meier ----------------------------------------------------------------------------------
def km_marks(report: PrivacyReport) -> dict[str, Any]:
    """From the privacy report: per group the sites that merged steps (how many) or withheld it."""
    merged: dict[str, dict[str, int]] = {}
    withheld: dict[str, list[str]] = {}
    for o in report.outcomes:
        for d in o.entries:  # structured details: the wording is for people only
            if d.group is None:
                continue
            if d.action == "merged" and "steps" in d.counts:
                merged.setdefault(d.group, {})[o.site] = int(d.counts["steps"])
            elif d.action == "withheld" and o.site not in withheld.get(d.group, []):
                withheld.setdefault(d.group, []).append(o.site)
    return {"merged": merged, "withheld": withheld}


def km_state(result: KaplanMeierResult) -> dict[str, Any]:
    """Curves, bands, event tables and medians of a KM result, with merged/withheld marks."""
    sf, ci = result.survival_function, result.confidence_interval
    marks = km_marks(result.privacy)
    groups = []
    for g in result.groups:
        tab = result.event_tables[g]
        median = result.median_survival.get(g, np.nan)
        groups.append(
            {
                "name": str(g),
                "survival": _floats(sf[g]),
                "lower": _floats(ci[f"{g}_lower_0.95"]),
                "upper": _floats(ci[f"{g}_upper_0.95"]),
                "table": {
                    "time": _floats(tab.index),
                    "at_risk": _ints(tab["at_risk"]),
                    "observed": _ints(tab["observed"]),
                    # pooled curves end before few remain: past the end, not known (not 0)
                    "cut": bool(getattr(result, "pooled", False)),
                },
                "median": json_value(median),
                "merged": marks["merged"].get(str(g), {}),
                "withheld_by": marks["withheld"].get(str(g), []),
            }
        )
    shown = {str(g) for g in result.groups}
    not_shown = [
        {"name": g, "withheld_by": sites}
        for g, sites in marks["withheld"].items()
        if g not in shown
    ]
    title = f"Kaplan–Meier: {result.duration} / {result.event}"
    if result.group:
        title += f" by {result.group}"
    return {
        "title": title + f" on '{result.privacy.dataset}'",
        "duration": result.duration,
        "event": result.event,
        "group": result.group,
        "unit": result.unit,
        "time_step": json_value(result.time_step),
        "timeline": _floats(sf.index),
        "groups": groups,
        "not_shown": not_shown,
        "source": result.source,
    }
