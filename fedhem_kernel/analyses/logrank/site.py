"""Site step of ``logrank``: per stratum every group's releasable event table."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from fedhem_kernel.analyses.common.site_grid import (
    dp_table_step,
    pooled_steps,
)
from fedhem_kernel.analyses.kaplan_meier.site import site_survival_tables
from fedhem_kernel.analyses.levels.site import agreed_levels, group_index, stratum_codes
from fedhem_kernel.analyses.logrank import ALL, MAX_STRATA_COLUMNS, stratum_label
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.params import COLUMN, LEVELS, NONE, list_of
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.protocol.report import ReleaseLog
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns


# -- site step ------------------------------------------------------------------------------
def site_logrank_tables(data: SiteData, params: Payload) -> Payload:
    """
    data.per_site_table("survival tables")Per stratum, every group's releasable event table; small strata are not released.

    A stratum is withheld when it has fewer than k patients at this site, or when one of its groups
    cannot be released. The patients left out of the test by strata (withheld strata, missing or
    rare stratum values) must number 0 or at least k, or the unstratified test would give their
    number away by difference: if they are 1..k-1, the smallest released strata are withheld too.
    """
    columns: list[str] = list(params.get("strata") or [])
    levels: list[list[str]] = [list(lv) for lv in params.get("strata_levels") or []]
    if len(columns) != len(levels):
        raise ParameterError("'strata' and 'strata_levels' do not match")
    if math.prod(len(v) for v in levels) > data.policy.max_levels:
        raise data.refuse("max_levels", f"more than {data.policy.max_levels} strata")
    k = data.k
    if columns:
        codes = stratum_codes(data, columns, levels)
        size = int(np.prod([len(v) for v in levels]))
        strata = [
            (stratum_label(columns, combo), i) for i, combo in enumerate(itertools.product(*levels))
        ]
    else:
        codes = np.zeros(len(data.cohort), dtype=np.int64)
        size = 1
        strata = [(ALL, 0)]
    counts = np.bincount(codes[codes >= 0], minlength=size)
    group_levels = agreed_levels(data, params, "levels") or []
    tested = group_index(data, params.get("group"), group_levels).isin(group_levels).to_numpy()
    in_test = np.bincount(codes[(codes >= 0) & tested], minlength=size)
    left_out = int((tested & (codes < 0)).sum())

    released: list[tuple[int, dict[str, Any]]] = []
    withheld: list[str] = []
    time_step = unit = None
    for label, i in strata:
        where = f"stratum '{label}': " if columns else "cohort: "
        if counts[i] < k:
            if k > 1:  # 0 and 1..k-1 patients look the same from outside
                data.log.suppressed(
                    "min_cell_count",
                    f"{where}fewer than {k} patients at this site",
                    action="withheld",
                )
                withheld.append(label)
                left_out += int(in_test[i])
            continue
        sub = dataclasses.replace(
            data, cohort=data.cohort[codes == i], log=ReleaseLog(), derived={}
        )
        tables = site_survival_tables(sub, params)
        time_step, unit = tables["time_step"], tables["unit"]
        for note in sub.log.notes:
            data.log.note(note)
        blocked = {str(g["group"]) for g in tables["groups"] if g.get("suppressed")}
        prefix = where if columns else ""
        for d in sub.log.suppressions:
            if not blocked or d.group in blocked:
                data.log.suppressed(
                    d.rule,
                    prefix + d.text,
                    group=d.group,
                    action=d.action or "suppressed",
                    **d.counts,
                )
        if blocked:
            data.log.suppressed(
                "min_cell_count",
                f"{where}not released (a group could not be released, "
                "so the others would be compared against an incomplete risk set)",
                action="withheld",
            )
            withheld.append(label)
            left_out += int(in_test[i])
            continue
        released.append((i, {"stratum": label, "groups": tables["groups"]}))
    while 0 < left_out < k and released:
        pos = min(range(len(released)), key=lambda r: in_test[released[r][0]])
        i, smallest = released.pop(pos)
        withheld.append(smallest["stratum"])
        left_out += int(in_test[i])
        data.log.suppressed(
            "min_cell_count",
            f"stratum '{smallest['stratum']}': not released, so that the patients left out by "
            f"strata number 0 or at least {k} (their number could otherwise be derived)",
            action="withheld",
        )
    return {
        "strata": [r for _, r in released],
        "withheld": withheld,
        "time_step": time_step,
        "unit": unit,
    }


STEPS = [
    SiteStep(
        "logrank_tables",
        "logrank",
        site_logrank_tables,
        param_columns("duration", "event", "group", "strata"),
        params={
            "duration": COLUMN,
            "event": COLUMN,
            "group": COLUMN,
            "levels": LEVELS,
            "strata": (list_of(COLUMN, MAX_STRATA_COLUMNS), NONE),
            "strata_levels": (list_of(LEVELS, MAX_STRATA_COLUMNS), NONE),
        },
    ),
    # pooled tables on the policy's grid, decided then released (analyses/common/site_grid.py)
    # DP mode: one noised secure sum of the event table (analyses/common/site_grid.py)
    dp_table_step("logrank_dp", "logrank", param_columns("duration", "event", "group", "strata")),
    *pooled_steps(
        "logrank",
        "logrank_risk",
        "logrank_grid",
        param_columns("duration", "event", "group", "strata"),
    ),
]
