"""Disclosure control for survival tables: time coarsening and merging of small KM steps.

A site releases, per group, an *event table*: rows ``(time, at_risk, events, censored)``. Before release
times are coarsened up to the policy's grid, then consecutive rows are merged until every released
count is either 0 or at least ``k`` (the site's ``min_cell_count``):

- ``at_risk`` of every row >= k;
- ``events`` and ``censored`` of every row are 0 or >= k (the censored count is derivable from
  consecutive at-risk counts, so it is held to the same rule).

A merged row covers source rows ``a..b``: it carries ``at_risk`` of row ``a`` (patients at risk when the
interval opens), the summed events and censorings, and the time of the last event in the interval (the
last time if it has no event). Its KM factor is ``1 - events / at_risk``; the table stays consistent
(``at_risk[r+1] = at_risk[r] - events[r] - censored[r]``). Rows that cannot stand on their own at the
tail are merged backwards; when even a single row for the whole group breaks a rule, nothing is released
for that group. With ``k == 1`` and exact times the table is the exact event table (lifelines'
``event_table``), so pooled results equal the pooled reference.

Competing risks (:class:`CauseEventTable`) follow the same rules with one event count per cause: a row
is released only when every cause count and the censored count are 0 or >= k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fedhem_kernel.errors import SchemaError


def coarsen_times(times: np.ndarray, step: float | None) -> np.ndarray:
    """Round times *up* to the grid ``step, 2*step, ...`` (0 stays 0); ``None`` keeps them exact."""
    t = np.asarray(times, dtype=float)
    if step is None:
        return t
    # rounding guards against 3.0000000001 * step landing on the next grid point
    return np.ceil(np.round(t / step, 9)) * step


def coarsen_to_policy(
    times: np.ndarray,
    resolution: str | float,
    unit: str | None,
    note: Callable[[str], None],
    where: Mapping[str, str | None] | None = None,
) -> tuple[np.ndarray, float | None]:
    """Times rounded up to the policy's grid (and the step), saying so through ``note``.

    A grid in calendar words ("1 month") needs the duration's unit: without one the site refuses
    (a :class:`SchemaError` at ``where``: site, dataset, column) rather than guess, since a guess of
    whole units would release durations in days exactly. A numeric grid is in the column's unit.
    """
    from fedhem_kernel.privacy.policy import time_step

    step = time_step(resolution, unit)
    if step is None:
        return np.asarray(times, dtype=float), None
    if unit is None and isinstance(resolution, str):
        raise SchemaError(
            f"the policy's time grid is '{resolution}', but this duration has no declared unit: "
            "declare it in the site's config (days, weeks, months or years)",
            **dict(where or {}),
            rule="schema",
        )
    note(f"times coarsened up to a grid of {resolution}")
    return coarsen_times(times, step), step


@dataclass(frozen=True)
class EventTable:
    """Event table of one group at one site (distinct times ascending)."""

    time: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    censored: np.ndarray

    @property
    def n(self) -> int:
        return int(self.at_risk[0]) if len(self.at_risk) else 0

    def __len__(self) -> int:
        return len(self.time)


def event_table(times: np.ndarray, events: np.ndarray) -> EventTable:
    """Distinct times with at-risk, event and censored counts (vectorised)."""
    t = np.asarray(times, dtype=float)
    e = np.asarray(events).astype(bool)
    uniq, inverse = np.unique(t, return_inverse=True)
    d = np.bincount(inverse, weights=e, minlength=len(uniq)).astype(np.int64)
    total = np.bincount(inverse, minlength=len(uniq)).astype(np.int64)
    c = total - d
    leaving_before = np.concatenate(([0], np.cumsum(total)[:-1]))
    at_risk = len(t) - leaving_before
    return EventTable(uniq, at_risk.astype(np.int64), d, c)


def _ok(x: int, k: int) -> bool:
    return x == 0 or x >= k


def merge_small_steps(table: EventTable, k: int) -> tuple[EventTable | None, int]:
    """Merge rows until every released count obeys ``k``.

    Returns the releasable table (``None`` when nothing can be released) and the number of source rows
    that were merged into a neighbour.
    """
    if len(table) == 0:
        return None, 0
    if k <= 1:
        return table, 0
    t, n, d, c = table.time, table.at_risk, table.events, table.censored
    rows = len(t)
    blocks: list[list[float]] = []  # [time, at_risk, events, censored, first, last]

    def block_time(first: int, last: int) -> float:
        ev = np.flatnonzero(d[first : last + 1])
        return float(t[first + ev[-1]]) if len(ev) else float(t[last])

    i = 0
    while i < rows and n[i] >= k:
        dd = cc = 0
        j = i
        while j < rows:
            dd += int(d[j])
            cc += int(c[j])
            j += 1
            if _ok(dd, k) and _ok(cc, k):
                break
        if not (_ok(dd, k) and _ok(cc, k)):
            break  # rows i.. form an incomplete tail
        blocks.append([block_time(i, j - 1), int(n[i]), dd, cc, i, j - 1])
        i = j
    if i < rows:  # tail: rows that cannot stand alone join the previous block
        dd, cc = int(d[i:].sum()), int(c[i:].sum())
        if blocks:
            last = blocks[-1]
            last[2] += dd
            last[3] += cc
            last[5] = rows - 1
            last[0] = block_time(int(last[4]), rows - 1)
        else:
            blocks.append([block_time(0, rows - 1), int(n[0]), dd, cc, 0, rows - 1])
    while len(blocks) > 1 and not (_ok(blocks[-1][2], k) and _ok(blocks[-1][3], k)):
        last = blocks.pop()
        prev = blocks[-1]
        prev[2] += last[2]
        prev[3] += last[3]
        prev[5] = last[5]
        prev[0] = block_time(int(prev[4]), int(prev[5]))
    b = blocks[-1]
    if b[1] < k or not (_ok(int(b[2]), k) and _ok(int(b[3]), k)):
        return None, rows
    out = EventTable(
        np.array([x[0] for x in blocks], dtype=float),
        np.array([x[1] for x in blocks], dtype=np.int64),
        np.array([x[2] for x in blocks], dtype=np.int64),
        np.array([x[3] for x in blocks], dtype=np.int64),
    )
    return out, rows - len(blocks)


def check_event_table(table: EventTable | CauseEventTable, k: int) -> list[str]:
    """Rules a table breaks (empty list = releasable). Used as a last gate before release.

    Works for plain tables and for competing-risks tables (one event column per cause).
    """
    problems = []
    if k <= 1:
        return problems
    if np.any(table.at_risk < k):
        problems.append("at-risk count below minimum")
    for name, values in (("event", table.events), ("censored", table.censored)):
        if np.any((values > 0) & (values < k)):
            problems.append(f"{name} count below minimum")
    events = table.events if table.events.ndim == 1 else table.events.sum(axis=1)
    leaving = events + table.censored
    if np.any(table.at_risk[:-1] - leaving[:-1] != table.at_risk[1:]):
        problems.append("inconsistent table")
    return problems


# -- competing risks: event tables with one event count per cause ----------------------------------
@dataclass(frozen=True)
class CauseEventTable:
    """Event table of one group at one site with competing causes (distinct times ascending).

    ``events`` has one column per cause (times × causes); a row's events of any cause are the row
    sum. The same rules as :class:`EventTable` hold for every cause column and the censored count.
    """

    time: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    censored: np.ndarray

    def __len__(self) -> int:
        return len(self.time)


def cause_event_table(times: np.ndarray, cause: np.ndarray, n_causes: int) -> CauseEventTable:
    """Distinct times with at-risk, per-cause event and censored counts (vectorised).

    ``cause`` holds, per patient, the column of the cause of the event (``0 .. n_causes - 1``) or -1
    for a censored patient.
    """
    t = np.asarray(times, dtype=float)
    c = np.asarray(cause, dtype=np.int64)
    uniq, inverse = np.unique(t, return_inverse=True)
    total = np.bincount(inverse, minlength=len(uniq)).astype(np.int64)
    has_event = c >= 0
    flat = inverse[has_event] * n_causes + c[has_event]
    events = np.bincount(flat, minlength=len(uniq) * n_causes).astype(np.int64)
    events = events.reshape(len(uniq), n_causes)
    censored = total - events.sum(axis=1)
    at_risk = len(t) - np.concatenate(([0], np.cumsum(total)[:-1]))
    return CauseEventTable(uniq, at_risk.astype(np.int64), events, censored)


def _all_ok(values: np.ndarray, k: int) -> bool:
    return bool(np.all((values == 0) | (values >= k)))


def merge_small_cause_steps(table: CauseEventTable, k: int) -> tuple[CauseEventTable | None, int]:
    """:func:`merge_small_steps` for competing causes: every cause count of every released row and
    every censored count is 0 or at least ``k``, every at-risk count at least ``k``.

    A merged row carries the at-risk count at its start, the summed counts per cause and censored,
    and the time of its last event of any cause (its last time if it has none). Returns the
    releasable table (``None`` when nothing can be released) and the number of source rows merged
    into a neighbour.
    """
    rows = len(table)
    if rows == 0:
        return None, 0
    if k <= 1:
        return table, 0
    t, n, d, c = table.time, table.at_risk, table.events, table.censored
    cum_d = np.vstack([np.zeros((1, d.shape[1]), dtype=np.int64), np.cumsum(d, axis=0)])
    cum_c = np.concatenate(([0], np.cumsum(c)))

    def block_ok(first: int, last: int) -> bool:
        return _all_ok(cum_d[last + 1] - cum_d[first], k) and _all_ok(
            np.asarray(cum_c[last + 1] - cum_c[first]), k
        )

    blocks: list[list[int]] = []  # [first, last] source rows
    i = 0
    while i < rows and n[i] >= k:
        j = i
        while j < rows and not block_ok(i, j):
            j += 1
        if j == rows:
            break  # rows i.. form an incomplete tail
        blocks.append([i, j])
        i = j + 1
    if i < rows:  # tail: rows that cannot stand alone join the previous block
        if blocks:
            blocks[-1][1] = rows - 1
        else:
            blocks.append([0, rows - 1])
    while len(blocks) > 1 and not block_ok(*blocks[-1]):
        last = blocks.pop()
        blocks[-1][1] = last[1]
    first, last = blocks[-1]
    if n[first] < k or not block_ok(first, last):
        return None, rows
    starts = np.array([b[0] for b in blocks])
    ends = np.array([b[1] for b in blocks])
    any_event = d.sum(axis=1) > 0
    # time of the last event in each block: the last source row with an event, else the block's end
    last_event = np.maximum.accumulate(np.where(any_event, np.arange(rows), -1))[ends]
    time = t[np.where(last_event >= starts, last_event, ends)]
    out = CauseEventTable(
        time.astype(float),
        n[starts].astype(np.int64),
        (cum_d[ends + 1] - cum_d[starts]).astype(np.int64),
        (cum_c[ends + 1] - cum_c[starts]).astype(np.int64),
    )
    return out, rows - len(blocks)


# -- pooled event tables on a common grid (secure sums) -----------------------------------------
#: Most grid steps a pooled survival request may ask for (per group and field).
MAX_HORIZON = 2400
#: Follow-up a default horizon covers (months).
HORIZON_MONTHS = 600.0


def default_horizon(resolution: str | float, unit: str | None) -> int:
    """Grid steps covering :data:`HORIZON_MONTHS` of follow-up (all allowed steps when the
    column's unit is not known)."""
    from fedhem_kernel.privacy.policy import MONTHS_PER_UNIT, time_step

    step = time_step(resolution, unit)
    if step is None or unit not in MONTHS_PER_UNIT:
        return MAX_HORIZON
    months = step * MONTHS_PER_UNIT[unit]
    return int(min(MAX_HORIZON, math.ceil(HORIZON_MONTHS / months)))


def grid_index(times: np.ndarray, step: float, horizon: int) -> np.ndarray:
    """The grid step each time is rounded up to (0 stays 0), ``horizon + 1`` for any beyond."""
    g = np.ceil(np.round(np.asarray(times, dtype=float) / step, 9))
    return np.minimum(g, horizon + 1).astype(np.int64)


def grid_counts(
    index: np.ndarray, events: np.ndarray, selected: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At risk, events and censored at grid steps ``0..horizon`` of the ``selected`` rows (a
    row beyond the horizon is at risk at every step and leaves at none)."""
    idx = np.asarray(index)[selected]
    e = np.asarray(events).astype(bool)[selected]
    size = horizon + 2
    leaving = np.bincount(idx, minlength=size)[:size]
    died = np.bincount(idx[e], minlength=size)[:size]
    at_risk = len(idx) - np.concatenate(([0], np.cumsum(leaving)[:-1]))
    keep = slice(0, horizon + 1)
    return at_risk[keep], died[keep], (leaving - died)[keep]


def grid_cut(noisy_at_risk: np.ndarray, k: int, n_sites: int) -> np.ndarray:
    """Per group (rows of ``noisy_at_risk``): the last grid step of a pooled curve, -1 for none.

    ``noisy_at_risk`` is the total over ``n_sites`` sites of each site's at-risk counts plus a
    perturbation in {-1, 0, 1}: a step whose noisy count is at least ``k + n_sites`` has at least
    ``k`` patients at risk, and a curve runs up to the step before the first that has not.
    """
    noisy = np.atleast_2d(np.asarray(noisy_at_risk, dtype=np.int64))
    enough = noisy >= k + n_sites
    first_short = np.where(enough.all(axis=1), noisy.shape[1], np.argmin(enough, axis=1))
    return first_short.astype(np.int64) - 1
