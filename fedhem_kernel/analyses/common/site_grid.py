"""Site steps of pooled survival tables: "decide, then release" over two secure sums.

Side: site. A survival curve pooled from per-site tables thresholded site by site is biased (each
site merges its own small steps, so events move late); pooled through secure sums it is exact on
the policy's time grid. What must still not leave is the tail, where few patients remain: the
pooled at-risk count of a step is a single patient's follow-up once it is small. So a pooled
table is released in two rounds, both secure sums:

1. *risk*: per group and grid step, the number at risk plus a perturbation in {-1, 0, 1} keyed by
   the patients at risk there (the sum of their secret row keys, the ABS's cell-key method): the
   same patients get the same perturbation however they are asked for (another cohort, group,
   horizon or analysis with the same patients at risk), so there is nothing to average. Only the
   total over the sites is seen.
2. *release*: per group, the exact events and censorings up to a last step (the *cut*) and the
   group's size. The coordinator chooses the cut from the first total; every site checks it: it is
   shown the first round's signed masked replies (every site's, for this very request), adds them
   up itself and applies the rule of :func:`~fedhem_kernel.privacy.survival.grid_cut` with its own
   ``min_cell_count``; a cut beyond it is refused. With ``m`` sites in the first sum, a noisy count
   of at least ``k + m`` means at least ``k`` patients at risk over those sites, and the second sum
   must include all of them. The censorings of the last step are not released (they would say
   how many remain beyond it).

The grid is the site's own (its policy's ``time_resolution`` in the column's declared unit) or a
coarser one (sites with different grids pool on the coarsest): a finer grid is refused, and so
is a horizon beyond :data:`~fedhem_kernel.privacy.survival.MAX_HORIZON` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedhem_kernel.analyses.levels.site import agreed_levels, grouping, stratum_codes
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.policy import time_step
from fedhem_kernel.privacy.survival import (
    MAX_HORIZON,
    coarsen_to_policy,
    grid_counts,
    grid_cut,
    grid_index,
)
from fedhem_kernel.protocol.params import (
    COLUMN,
    LEVELS,
    MAX_LEVELS,
    NONE,
    TEXT,
    Params,
    instance,
    integer,
    list_of,
    number,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteFn, SiteStep

#: Most stratum columns a pooled table may be split by.
MAX_STRATA = 10
#: The rule a site refuses a cut beyond what the first round's total allows with.
GRID_CUT = "survival_grid"

#: What a risk round asks (the release round adds ``decided``: the cut, and ``evidence``).
RISK_PARAMS = {
    "duration": COLUMN,
    "event": COLUMN,
    "group": (COLUMN, NONE),
    "levels": (LEVELS, NONE),
    "strata": (list_of(COLUMN, most=MAX_STRATA), NONE),
    "strata_levels": (list_of(LEVELS, most=MAX_STRATA), NONE),
    # DP mode's Cox on numbers: a stratum column's bin edges ([] for none)
    "strata_bins": (list_of(list_of(number(), most=101), most=MAX_STRATA), NONE),
    "grid": (TEXT, number(low=0)),
    "horizon": integer(1, MAX_HORIZON),
}
RELEASE_PARAMS = {
    **RISK_PARAMS,
    "decided": list_of(integer(-1, MAX_HORIZON), most=MAX_LEVELS, least=1),
    "evidence": instance(dict, "the signed replies of the risk round"),
}


@dataclass(frozen=True)
class SiteGrid:
    """A request's rows on the site's grid: each row's grid step, its event flag (or cause), and
    per group the rows in it."""

    index: np.ndarray
    events: np.ndarray
    groups: list[np.ndarray]
    horizon: int


def site_grid(data: SiteData, params: Payload, events: np.ndarray | None = None) -> SiteGrid:
    """The cohort on the grid of this site's policy (refusing a request for another grid).

    ``events`` (one per cohort row) replaces the 0/1 event column (competing risks: a cause)."""
    if not data.secure:  # one site's counts, tail and all, would leave
        raise ParameterError(
            "a pooled survival table is asked only as a secure sum",
            site=data.site,
            dataset=data.dataset,
        )
    duration, event = params["duration"], params["event"]
    unit = data.schema.column(duration).unit
    asked = params["grid"]
    asked_grid_step(data, asked, unit)
    t, e = data.survival(duration, event) if events is None else (data.numeric(duration), events)
    _, step = coarsen_to_policy(t, asked, unit, data.log.note, data.err(duration))
    assert step is not None
    horizon = int(params["horizon"])
    levels = agreed_levels(data, params, "levels")
    groups = grouping(data, params.get("group"), levels)
    n = len(t)
    by_group = (
        [np.ones(n, dtype=bool)]
        if groups is None
        else [(groups == label).to_numpy(dtype=bool) for label in levels or []]
    )
    # strata (log-rank): every stratum's groups, stratum by stratum
    selections = [s & g for s in strata_selections(data, params) for g in by_group]
    return SiteGrid(grid_index(t, step, horizon), np.asarray(e), selections, horizon)


def asked_grid_step(data: SiteData, asked: object, unit: str | None) -> float:
    """The step of the grid a request asks for, in the duration's ``unit``: this site's own
    grid (its policy's ``time_resolution``) or a coarser one; a finer grid is refused."""
    try:
        asked_step = time_step(asked, unit)  # type: ignore[arg-type]
    except ParameterError:
        raise ParameterError(
            "'grid' must be a time resolution such as '3 months'", site=data.site
        ) from None
    own_step = time_step(data.policy.time_resolution, unit)
    if asked_step is None or (own_step is not None and asked_step < own_step * (1 - 1e-9)):
        raise ParameterError(
            f"this site counts on a grid of {data.policy.time_resolution!r} or coarser",
            site=data.site,
            dataset=data.dataset,
        )
    return asked_step


def strata_selections(data: SiteData, params: Payload) -> list[np.ndarray]:
    """Per stratum (the product of the strata columns' agreed levels, first column slowest), its
    cohort rows, snapped to the release ledger; one stratum of everyone without strata."""
    columns = list(params.get("strata") or [])
    levels = [list(lv) for lv in params.get("strata_levels") or []]
    n = len(data.cohort)
    if not columns:
        return [np.ones(n, dtype=bool)]
    if len(columns) != len(levels):
        raise ParameterError("'strata' and 'strata_levels' do not match", site=data.site)
    if math.prod(len(v) for v in levels) > data.policy.max_levels:
        raise data.refuse("max_levels", f"more than {data.policy.max_levels} strata")
    bins = [list(b) for b in params.get("strata_bins") or []]
    if bins and not data.policy.dp:  # elsewhere a continuous column never groups
        raise ParameterError(
            "'strata_bins' (a number cut into bins) is DP mode's only", site=data.site
        )
    if bins and len(bins) != len(columns):
        raise ParameterError("'strata_bins' must give edges (or none) per stratum column")
    out = stratum_codes(data, columns, levels, bins or None)
    return [out == i for i in range(math.prod(len(v) for v in levels))]


def key_sums(index: np.ndarray, keys: np.ndarray, size: int, at_risk: bool) -> np.ndarray:
    """The sum (mod 2^64) of the row keys at each of ``size`` places: of the rows at each index,
    or (``at_risk``) of the rows at that index or later."""
    out = np.zeros(size, dtype=np.uint64)
    np.add.at(out, index, keys)
    if at_risk:
        out = np.cumsum(out[::-1], dtype=np.uint64)[::-1]
    return out


def site_risk(data: SiteData, params: Payload, grid: SiteGrid | None = None) -> Payload:
    """Round 1: per group and grid step, the number at risk plus a consistent perturbation."""
    grid = site_grid(data, params) if grid is None else grid
    width = grid.horizon + 1
    out = np.zeros((len(grid.groups), width), dtype=np.int64)
    keys = data.row_keys()
    place = f"{data.dataset}\0{params['duration']}\0{params['grid']!r}\0".encode()
    for row, selected in enumerate(grid.groups):
        at_risk, _, _ = grid_counts(grid.index, grid.events, selected, grid.horizon)
        # each count is perturbed by its own rows (those at risk there): however a cohort,
        # group or horizon is asked, the same patients at risk get the same perturbation
        rows_keys = key_sums(grid.index[selected], keys[selected], grid.horizon + 2, True)
        noise = data.count_noise(rows_keys[:width], at_risk, place + row.to_bytes(4, "little"))
        out[row] = at_risk + noise
    return {"at_risk": out}


def risk_total(
    data: SiteData, params: Payload, risk_step: str, field: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """The perturbed total ``field`` of the risk round a release builds on, checked (every site's
    signed reply, for the same request without the release's ``decided`` and ``evidence``), the
    number of sites it was summed over, and all the round's totals."""
    first = {k: v for k, v in params.items() if k not in ("decided", "evidence")}
    totals = data.earlier_total(params["evidence"], risk_step, first)
    noisy = totals.get(field)
    if noisy is None or noisy.shape != shape:
        raise ParameterError(
            "the release does not match its risk round", site=data.site, dataset=data.dataset
        )
    return noisy, len(params["evidence"]["replies"]), totals


def checked_cut(data: SiteData, params: Payload, risk_step: str, groups: int) -> np.ndarray:
    """The cut a release request carries, checked against the risk round's total (refused when
    it goes beyond what that total allows by this site's ``min_cell_count``)."""
    width = int(params["horizon"]) + 1
    noisy, n_sites, _ = risk_total(data, params, risk_step, "at_risk", (groups, width))
    cut = np.asarray(params["decided"], dtype=np.int64)
    if cut.shape != (groups,):
        raise ParameterError(
            "the release does not match its risk round", site=data.site, dataset=data.dataset
        )
    allowed = grid_cut(noisy, data.k, n_sites)
    if (cut > allowed).any():
        raise DisclosureError(
            "the curve's last step goes beyond where the risk round shows at least "
            f"{data.k} patients at risk",
            site=data.site,
            dataset=data.dataset,
            rule=GRID_CUT,
        )
    return cut


def site_release(
    data: SiteData,
    params: Payload,
    risk_step: str,
    grid: SiteGrid | None = None,
    causes: int | None = None,
) -> Payload:
    """Round 2: per group its size, and the exact events (and censorings but the last step's)
    up to the checked cut. With ``causes`` (competing risks: ``grid.events`` holds each row's
    cause, 0.., or -1 if censored) the events are counted per cause."""
    grid = site_grid(data, params) if grid is None else grid
    cut = checked_cut(data, params, risk_step, len(grid.groups))
    width = grid.horizon + 1
    shape = (len(grid.groups), width) if causes is None else (len(grid.groups), causes, width)
    events = np.zeros(shape, dtype=np.int64)
    censored = np.zeros((len(grid.groups), width), dtype=np.int64)
    size = np.zeros(len(grid.groups), dtype=np.int64)
    left_by = grid.events if causes is None else grid.events >= 0
    for row, selected in enumerate(grid.groups):
        last = int(cut[row])
        if last < 0:
            continue
        at_risk, died, left = grid_counts(grid.index, left_by, selected, grid.horizon)
        size[row] = at_risk[0]
        censored[row, :last] = left[:last]
        if causes is None:
            events[row, : last + 1] = died[: last + 1]
            continue
        for cause in range(causes):
            _, of_cause, _ = grid_counts(grid.index, grid.events == cause, selected, grid.horizon)
            events[row, cause, : last + 1] = of_cause[: last + 1]
    return {"n": size, "events": events, "censored": censored}


def pooled_steps(
    analysis: str,
    risk: str,
    release: str,
    columns: Callable[[Payload], Sequence[str]],
    run_risk: SiteFn = site_risk,
    run_release: SiteFn | None = None,
    extra: Params | None = None,
) -> list[SiteStep]:
    """The two steps of an analysis's pooled tables: ``risk`` (perturbed numbers at risk) and
    ``release`` (exact counts up to the checked cut), both secure sums only."""
    extra = dict(extra or {})

    def default_release(data: SiteData, params: Payload) -> Payload:
        return site_release(data, params, risk)

    return [
        SiteStep(
            risk,
            analysis,
            run_risk,
            columns,
            params={**RISK_PARAMS, **extra},
            sums={"at_risk": "count"},
        ),
        SiteStep(
            release,
            analysis,
            run_release or default_release,
            columns,
            params={**RELEASE_PARAMS, **extra},
            sums={"n": "count", "events": "count", "censored": "count"},
        ),
    ]


def site_dp_table(
    data: SiteData, params: Payload, grid: SiteGrid | None = None, n_causes: int | None = None
) -> Payload:
    """DP mode: per group, its events and censorings at every grid step, those beyond the horizon
    counted as censored in one last column. One patient is in exactly one of these cells (L2
    sensitivity 1); the executor adds this site's share of the noise. Asked of sites in DP mode
    only: elsewhere it would be every exact count, tail and all.

    ``grid`` with ``n_causes`` (competing risks): each row's event is its cause column (-1:
    censored), and ``events`` has one row per cause within each group (groups × causes × steps).
    """
    if not data.policy.dp:
        raise DisclosureError(
            "this site is not in DP mode: its pooled tables are decided, then released",
            site=data.site,
            dataset=data.dataset,
            rule="dp",
        )
    grid = site_grid(data, params) if grid is None else grid
    width = grid.horizon + 2
    causes = 1 if n_causes is None else n_causes
    events = np.zeros((len(grid.groups), causes, width), dtype=np.int64)
    censored = np.zeros((len(grid.groups), width), dtype=np.int64)
    cause = (
        np.where(np.asarray(grid.events).astype(bool), 0, -1)
        if n_causes is None
        else np.asarray(grid.events, dtype=np.int64)
    )
    beyond = grid.index > grid.horizon
    for row, selected in enumerate(grid.groups):
        idx, code = grid.index[selected], cause[selected]
        for j in range(causes):
            events[row, j] = np.bincount(idx[code == j], minlength=width)[:width]
        censored[row] = np.bincount(idx[code < 0], minlength=width)[:width]
        # beyond the horizon: no event is counted, only that they were there
        events[row, :, -1] = 0
        censored[row, -1] = int((selected & beyond).sum())
    return {"events": events[:, 0] if n_causes is None else events, "censored": censored}


def dp_table_step(
    name: str,
    analysis: str,
    columns: Callable[[Payload], Sequence[str]],
    run: SiteFn = site_dp_table,
    extra: Params | None = None,
) -> SiteStep:
    """DP mode's step of an analysis built on event tables: one noised secure sum of the events
    and censorings per group (or pattern) and grid step (:func:`site_dp_table`)."""
    return SiteStep(
        name,
        analysis,
        run,
        columns,
        params={**RISK_PARAMS, **(extra or {})},
        sums={"events": "count", "censored": "count"},
        dp=("events", "censored"),
    )
