"""Site steps of ``cumulative_incidence``: the causes a site can name, and per group its cause-specific event table."""

from __future__ import annotations

import numpy as np

from fedhem_kernel.analyses.common.site_grid import (
    SiteGrid,
    dp_table_step,
    pooled_steps,
    site_dp_table,
    site_grid,
    site_release,
    site_risk,
)
from fedhem_kernel.analyses.cumulative_incidence import MAX_CAUSES, OTHER_CAUSE
from fedhem_kernel.analyses.kaplan_meier.site import release_group_tables
from fedhem_kernel.analyses.levels.site import agreed_levels, declared_levels, grouping
from fedhem_kernel.errors import ParameterError, SchemaError
from fedhem_kernel.privacy.survival import (
    cause_event_table,
    coarsen_to_policy,
    merge_small_cause_steps,
)
from fedhem_kernel.protocol.params import COLUMN, LEVELS, NONE, integer, list_of
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns


# -- site steps -------------------------------------------------------------------------------------
def competing_events(data: SiteData, duration: str, event: str) -> tuple[np.ndarray, np.ndarray]:
    """Durations and integer event codes (0 = censored, 1.. = cause) of the cohort, checked.

    Errors name the site, dataset and column, never a value.
    """
    t = data.numeric(duration)
    if np.isnan(t).any():
        raise SchemaError(
            "missing survival times (exclude them with where='... is not null')",
            **data.err(duration),
            rule="schema",
        )
    if (t < 0).any():
        raise SchemaError("negative survival times", **data.err(duration), rule="schema")
    coding = "event codes must be 0 = censored or 1, 2, ... = the cause of the event"
    if not data.schema.column(event).is_numeric:
        raise SchemaError(
            f"the event column is not numeric: {coding}", **data.err(event), rule="schema"
        )
    e = data.cohort[event].to_numpy(dtype=float)
    if np.isnan(e).any():
        raise SchemaError("missing event codes", **data.err(event), rule="schema")
    if (e < 0).any() or not np.array_equal(e, np.round(e)):
        raise SchemaError(coding, **data.err(event), rule="schema")
    codes = e.astype(np.int64)
    if len(np.unique(codes[codes > 0])) > data.policy.max_levels:
        raise SchemaError(
            f"more than {data.policy.max_levels} distinct causes: not a cause-of-event column",
            **data.err(event),
            rule="max_levels",
        )
    return t, codes


def site_causes(data: SiteData, params: Payload) -> Payload:
    """The causes this site can name: codes with at least ``min_cell_count`` events (DP mode:
    the codes above 0 the data steward declares for the event column)."""
    event = params["event"]
    if data.policy.dp:  # only the codes the data steward declared (nothing read from the data)
        return {"causes": sorted(int(v) for v in declared_levels(data, event) if int(v) > 0)}
    _, codes = competing_events(data, params["duration"], event)
    values, counts = np.unique(codes[codes > 0], return_counts=True)
    common = [int(v) for v, c in zip(values, counts, strict=True) if c >= data.k]
    if len(common) < len(values):
        data.log.suppressed(
            "min_cell_count",
            f"{len(values) - len(common)} cause(s) of '{event}' with fewer than {data.k} events "
            f"are not named (counted as '{OTHER_CAUSE}' unless another site names them)",
        )
    return {"causes": common}


def _cause_grid(data: SiteData, params: Payload) -> tuple[SiteGrid, int]:
    """The cohort on the site's grid with each row's cause column (the agreed causes in order,
    then ``(other)``; -1 if censored), and the number of cause columns."""
    causes = np.asarray([int(c) for c in params["causes"]], dtype=np.int64)
    if np.any(causes <= 0) or len(np.unique(causes)) != len(causes):
        raise ParameterError("'causes' must be distinct whole numbers >= 1", site=data.site)
    _, codes = competing_events(data, params["duration"], params["event"])
    column = cause_columns(codes, causes)
    return site_grid(data, params, events=column), len(causes) + 1


def cause_columns(codes: np.ndarray, causes: np.ndarray) -> np.ndarray:
    """Each row's cause column: the position of its code among ``causes``, ``len(causes)`` for
    a code none names (``(other)``), -1 for censored (code 0)."""
    column = np.where(codes == 0, -1, len(causes))
    if len(causes):
        order = np.argsort(causes)
        pos = np.minimum(np.searchsorted(causes[order], codes), len(causes) - 1)
        named = (codes > 0) & (causes[order][pos] == codes)
        column[named] = order[pos[named]]
    return column


def site_cif_risk(data: SiteData, params: Payload) -> Payload:
    grid, _ = _cause_grid(data, params)
    return site_risk(data, params, grid)


def site_cif_release(data: SiteData, params: Payload) -> Payload:
    grid, n_causes = _cause_grid(data, params)
    return site_release(data, params, "cif_risk", grid, n_causes)


def site_cif_dp(data: SiteData, params: Payload) -> Payload:
    """DP mode: per group and cause, its events at every grid step, and its censorings (each
    patient in one cell: L2 sensitivity 1; the executor adds the noise share)."""
    grid, n_causes = _cause_grid(data, params)
    return site_dp_table(data, params, grid, n_causes)


def site_cause_tables(data: SiteData, params: Payload) -> Payload:
    """Per group: the coarsened, merged event table with one event count per cause."""
    data.per_site_table("survival tables")
    duration, event, group = params["duration"], params["event"], params.get("group")
    causes = np.asarray([int(c) for c in params["causes"]], dtype=np.int64)
    if np.any(causes <= 0) or len(np.unique(causes)) != len(causes):
        raise ParameterError("'causes' must be distinct whole numbers >= 1")
    t, codes = competing_events(data, duration, event)
    unit = data.schema.column(duration).unit
    t, step = coarsen_to_policy(
        t, data.policy.time_resolution, unit, data.log.note, data.err(duration)
    )
    column = cause_columns(codes, causes)
    n_columns = len(causes) + 1
    levels = agreed_levels(data, params, "levels")
    groups = grouping(data, group, levels)
    out = release_group_tables(
        data,
        groups,
        levels,
        len(t),
        lambda sel: cause_event_table(t[sel], column[sel], n_columns),
        merge_small_cause_steps,
        too_small=(
            " (every cause and the censored count must be 0 or at least the minimum; "
            "combine_competing=True counts the other causes together)"
        ),
    )
    return {"groups": out, "time_step": step, "unit": unit}


STEPS = [
    SiteStep(
        "cif_causes",
        "cumulative_incidence",
        site_causes,
        param_columns("duration", "event"),
        params={"duration": COLUMN, "event": COLUMN},
        dp_free=True,
    ),
    SiteStep(
        "cif_tables",
        "cumulative_incidence",
        site_cause_tables,
        param_columns("duration", "event", "group"),
        params={
            "duration": COLUMN,
            "event": COLUMN,
            "group": (COLUMN, NONE),
            "levels": (LEVELS, NONE),
            "causes": list_of(integer(1, 2**31), MAX_CAUSES),
        },
    ),
    # pooled tables on the policy's grid, decided then released (analyses/common/site_grid.py)
    *pooled_steps(
        "cumulative_incidence",
        "cif_risk",
        "cif_grid",
        param_columns("duration", "event", "group"),
        site_cif_risk,
        site_cif_release,
        {"causes": list_of(integer(1, 2**31), MAX_CAUSES)},
    ),
    # DP mode: one noised secure sum of the cause-specific event table
    dp_table_step(
        "cif_dp",
        "cumulative_incidence",
        param_columns("duration", "event", "group"),
        site_cif_dp,
        {"causes": list_of(integer(1, 2**31), MAX_CAUSES)},
    ),
]
