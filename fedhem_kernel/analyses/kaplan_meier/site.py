"""Site step of ``kaplan_meier``: per group the event table with small steps merged, or withheld."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.site_grid import (
    dp_table_step,
    pooled_steps,
)
from fedhem_kernel.analyses.kaplan_meier import ALL
from fedhem_kernel.analyses.levels.site import agreed_levels, grouping
from fedhem_kernel.privacy.survival import (
    check_event_table,
    coarsen_to_policy,
    event_table,
    merge_small_steps,
)
from fedhem_kernel.protocol.params import COLUMN, LEVELS, NONE
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns


# -- site step ------------------------------------------------------------------------------
def release_group_tables(
    data: SiteData,
    groups: pd.Series | None,
    levels: list[str] | None,
    n: int,
    table_of: Callable[[np.ndarray], Any],
    merge: Callable[[Any, int], tuple[Any, int]],
    too_small: str = "",
) -> list[dict[str, Any]]:
    """Per group: the merged event table a site may release, or why it is withheld.

    ``table_of(selection)`` builds the group's event table, ``merge`` merges small steps;
    every table passes :func:`check_event_table` before it can leave the site.
    """
    k = data.k
    out: list[dict[str, Any]] = []
    for label in levels or [ALL]:
        sel = np.ones(n, dtype=bool) if groups is None else (groups == label).to_numpy()
        if not sel.any():
            out.append({"group": label, "empty": True})
            continue
        merged, n_merged = merge(table_of(sel), k)
        if merged is None:
            data.log.suppressed(
                "min_cell_count",
                f"group '{label}': too few patients or events for any step of at least {k}"
                + too_small,
                group=str(label),
                action="withheld",
                k=k,
            )
            out.append({"group": label, "suppressed": True})
            continue
        problems = check_event_table(merged, k)
        if problems:  # a bug in merging must never become a release
            raise RuntimeError("event table failed its release check: " + ", ".join(problems))
        if n_merged:
            data.log.suppressed(
                "min_cell_count",
                f"group '{label}': {n_merged} steps with counts below {k} merged into neighbours",
                group=str(label),
                action="merged",
                steps=int(n_merged),
                k=k,
            )
        out.append(
            {
                "group": label,
                "time": merged.time,
                "at_risk": merged.at_risk,
                "events": merged.events,
                "censored": merged.censored,
            }
        )
    return out


def site_survival_tables(data: SiteData, params: Payload) -> Payload:
    data.per_site_table("survival tables")
    duration, event = params["duration"], params["event"]
    group = params.get("group")
    t, e = data.survival(duration, event)
    unit = data.schema.column(duration).unit
    t, step = coarsen_to_policy(
        t, data.policy.time_resolution, unit, data.log.note, data.err(duration)
    )
    levels = agreed_levels(data, params, "levels")
    groups = grouping(data, group, levels)
    out = release_group_tables(
        data,
        groups,
        levels,
        len(t),
        lambda sel: event_table(t[sel], e[sel]),
        merge_small_steps,
    )
    return {"groups": out, "time_step": step, "unit": unit}


STEPS = [
    SiteStep(
        "km_tables",
        "kaplan_meier",
        site_survival_tables,
        param_columns("duration", "event", "group"),
        params={
            "duration": COLUMN,
            "event": COLUMN,
            "group": (COLUMN, NONE),
            "levels": (LEVELS, NONE),
        },
    ),
    # pooled tables on the policy's grid, decided then released (analyses/common/site_grid.py)
    *pooled_steps(
        "kaplan_meier", "km_risk", "km_grid", param_columns("duration", "event", "group")
    ),
    # DP mode: one noised secure sum of the event table (analyses/common/site_grid.py)
    dp_table_step("km_dp", "kaplan_meier", param_columns("duration", "event", "group")),
]
