"""Pooled survival tables on the sites' common time grid, on the researcher's side.

Side: researcher (combine). Two secure sums (:mod:`fedhem_kernel.analyses.common.site_grid`):
the perturbed numbers at risk, from which the last step of each group's table is chosen by the
rule every site checks again, then the exact events and censorings up to it. Used when every site
keeps the same time grid, takes part in secure sums and is not in DP mode; otherwise an analysis
falls back to tables thresholded at each site (and says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhem_kernel.privacy.policy import time_step
from fedhem_kernel.privacy.survival import default_horizon, grid_cut
from fedhem_kernel.protocol.query import Ask, Payload


@dataclass(frozen=True)
class GridPlan:
    """The grid the sites share: their ``time_resolution``, the duration's unit, the step in that
    unit, the horizon in steps, and the largest ``min_cell_count`` among them."""

    resolution: str | float
    unit: str | None
    step: float
    horizon: int
    k: int


@dataclass(frozen=True)
class PooledGrid:
    """Per group (rows): its size, events (per cause with competing risks: groups × causes ×
    steps) and censorings at grid steps ``0..horizon`` up to the group's last step ``cut`` (-1:
    no step has enough patients at risk), over ``sites``."""

    n: np.ndarray
    events: np.ndarray
    censored: np.ndarray
    cut: np.ndarray
    sites: tuple[str, ...]
    plan: GridPlan

    def all_events(self, row: int) -> np.ndarray:
        """The group's events at each step (of every cause, with competing risks)."""
        events = self.events[row]
        return events.sum(axis=0) if events.ndim == 2 else events

    def at_risk(self, row: int) -> np.ndarray:
        """Patients at risk at each step up to the group's cut."""
        last = int(self.cut[row])
        leaving = self.all_events(row)[:last] + self.censored[row, :last]
        return self.n[row] - np.concatenate(([0], np.cumsum(leaving)))

    def times(self) -> np.ndarray:
        """The time of every grid step, in the duration's unit."""
        return np.arange(self.events.shape[-1]) * self.plan.step


def grid_plan(q: Ask, duration: str, dp: bool = False) -> GridPlan | None:
    """The common grid, or None (with a note saying why) when the sites do not share one.
    ``dp``: for DP mode's own version (otherwise sites in DP mode get None)."""
    catalog = q.catalog()
    if not catalog:
        return None
    policies = [entry.get("policy", {}) for entry in catalog.values()]
    why = None
    units = set()
    for entry in catalog.values():
        columns = entry.get("datasets", {}).get(q.dataset, [])
        units.update(c.get("unit") for c in columns if c.get("column") == duration)
    if any(p.get("dp") for p in policies) and not dp:
        return None  # DP mode has its own versions
    if not all(entry.get("secure_sum") for entry in catalog.values()):
        why = "not every site takes part in secure sums"
    elif len(catalog) < len(q.sites) // 2 + 1:
        why = "fewer than a majority of the sites are still taking part (no secure sum)"
    elif len(units) != 1:
        why = f"the sites declare different units for '{duration}'"
    if why is not None:
        q.note(f"{why}: each site's table is thresholded on its own (less faithful)")
        return None
    unit = next(iter(units))
    # the coarsest of the sites' grids (each site accepts a grid no finer than its own)
    grids = [
        (time_step(p.get("time_resolution"), unit), p.get("time_resolution")) for p in policies
    ]
    gridded = [(step, res) for step, res in grids if step is not None]
    if not gridded:  # exact times everywhere (unrestricted): per-site tables are exact
        return None
    step, resolution = max(gridded, key=lambda g: g[0])
    if len({s for s, _ in gridded}) > 1:
        q.note(f"the sites keep different time grids: pooled on the coarsest, {resolution}")
    k = max(int(p.get("min_cell_count", 1)) for p in policies)
    return GridPlan(resolution, unit, step, default_horizon(resolution, unit), k)


def ask_pooled_grid(
    q: Ask, risk_step: str, release_step: str, params: Payload, plan: GridPlan
) -> PooledGrid:
    """Decide each group's last step from the perturbed pooled numbers at risk, then release."""
    params = {**params, "grid": plan.resolution, "horizon": plan.horizon}
    risk = q.ask_sum(risk_step, params)
    cut = grid_cut(risk.totals["at_risk"], plan.k, len(risk.sites))
    released = q.ask_sum(
        release_step, {**params, "decided": cut.tolist(), "evidence": risk.evidence}
    )
    totals = released.totals
    q.note(
        f"pooled counts are exact on the sites' grid of {plan.resolution}; each curve ends "
        f"before the first step with fewer than about {plan.k + len(risk.sites)} patients at "
        "risk over the sites (decided from perturbed counts, checked by every site)"
    )
    if (cut == plan.horizon).any():
        q.note(f"curves are cut at the horizon of {plan.horizon} grid steps")
    return PooledGrid(totals["n"], totals["events"], totals["censored"], cut, released.sites, plan)
