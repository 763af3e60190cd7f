"""Combine step of ``cox`` in DP mode: a Cox model on categorical covariates from one noised
event table.

Side: researcher (combine). With categorical covariates the Cox partial likelihood on a time grid
depends on the data only through each covariate pattern's events and numbers at risk per grid
step. So DP mode releases exactly what a DP Kaplan–Meier by pattern releases — one secure sum of
every pattern's events and censorings per grid step, each patient in one cell (L2 sensitivity 1),
every site adding its share of the discrete Gaussian noise (``cox_dp``: the patterns are the
product of the covariates' declared levels) — and the fit is post-processing: the numbers at risk
summed from the end (kept from growing, at least 0), the events kept within [0, at risk], then
Newton–Raphson on the Breslow partial likelihood of the grouped times. Numeric covariates have no
DP version here (declare them as categories, or as ints with declared levels).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from fedhem_kernel.analyses.common.combine_catalog import catalog_columns
from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_bounds
from fedhem_kernel.analyses.common.combine_newton import newton_raphson
from fedhem_kernel.analyses.cox import MAX_COEFFICIENT
from fedhem_kernel.analyses.cox.combine_sums import CoxFit
from fedhem_kernel.analyses.kaplan_meier.combine import dp_grid
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask

#: Grid steps of a DP Cox fit over DP mode's horizon (every cell carries noise: few, wide steps).
DP_COX_STEPS = 20
#: Bins of a numeric covariate's declared range (each taking its midpoint).
DP_COX_BINS = 12
#: Refits on simulated noise for the standard errors (post-processing).
DP_COX_DRAWS = 50


def dp_design(
    q: Ask, covariates: tuple[str, ...]
) -> tuple[list[list[str]], list[list[float]], list[str], np.ndarray]:
    """Each covariate's levels (a number's: its bins), the bin edges ([] for a category), the
    design's column names (a category: every level but the first; a number: itself) and the
    design matrix of the patterns (their product, first covariate slowest). A number is cut into
    :data:`DP_COX_BINS` equal bins of the range the sites declare, each taking its midpoint."""
    declared = {r["column"]: r for r in catalog_columns(q)}
    levels: list[list[str]] = []
    edges: list[list[float]] = []
    values: list[list[float] | None] = []  # a number's bin midpoints (None: a category)
    for column in covariates:
        row = declared.get(column) or {}
        if row.get("dtype") in ("category", "bool") or row.get("levels"):
            levels.append(list(require_levels(q, column, minimum=2) or []))
            edges.append([])
            values.append(None)
        elif row.get("dtype") in ("float", "int"):
            ((low, high),) = dp_bounds(q, [column])
            cut = np.linspace(low, high, DP_COX_BINS + 1)
            levels.append([str(i) for i in range(DP_COX_BINS)])
            edges.append([float(e) for e in cut])
            values.append(list((cut[:-1] + cut[1:]) / 2))
        else:
            raise ParameterError(
                "DP mode fits Cox models on categories and numbers with declared ranges",
                dataset=q.dataset,
                column=column,
            )
    names: list[str] = []
    for c, lv, v in zip(covariates, levels, values, strict=True):
        names += [c] if v is not None else [f"{c}_{level}" for level in lv[1:]]
    rows = []
    for combo in itertools.product(*[range(len(lv)) for lv in levels]):
        row: list[float] = []
        for i, lv, v in zip(combo, levels, values, strict=True):
            row += [v[i]] if v is not None else [1.0 if i == j else 0.0 for j in range(1, len(lv))]
        rows.append(row)
    return levels, edges, names, np.asarray(rows, dtype=float)


def fit_cox_dp(q: Ask, spec, release: DPRelease) -> CoxFit:  # noqa: ANN001 - CoxSpec
    """The DP fit (see the module docstring). The objective is the Breslow form with each
    pattern's person-time per step in place of its number at risk: the piecewise-exponential
    model's likelihood with the step hazards profiled out."""
    strata = [spec.strata] if isinstance(spec.strata, str) else list(spec.strata or ())
    if "site" in strata:
        raise ParameterError(
            "DP mode pools every site's table in one noised sum: strata='site' needs each "
            "site's own (not in DP mode)",
            dataset=q.dataset,
        )
    levels, edges, names, x = dp_design(q, spec.covariates)
    strata_levels = [list(require_levels(q, c) or []) for c in strata]
    n_strata = math.prod(len(lv) for lv in strata_levels) if strata else 1
    most = min(int(e.get("policy", {}).get("max_levels", 40)) for e in q.catalog().values())
    if n_strata * len(x) > most:
        raise ParameterError(
            f"DP Cox: {n_strata * len(x)} covariate patterns (strata × levels, a number in "
            f"{DP_COX_BINS} bins) exceed the sites' limit of {most}: use fewer covariates or "
            "levels",
            dataset=q.dataset,
        )
    # the patterns: strata slowest, then the covariates' (the site's stratum product order)
    stratum = np.repeat(np.arange(n_strata), len(x))
    x = np.tile(x, (n_strata, 1))
    # few steps: every cell carries noise, and a pattern's number at risk sums a column of them
    plan, fine = dp_grid(q, spec.duration)
    factor = max(1, math.ceil(fine / DP_COX_STEPS))
    horizon = math.ceil(fine / factor)
    grid = plan.step * factor  # a numeric grid in the duration's unit, coarser than the sites'
    params = {
        "duration": spec.duration,
        "event": spec.event,
        "group": None,
        "levels": None,
        "strata": [*strata, *spec.covariates],
        "strata_levels": [*strata_levels, *levels],
        "strata_bins": [[] for _ in strata] + edges,
        "grid": grid if factor > 1 else plan.resolution,
        "horizon": horizon,
    }
    total = q.ask_sum("cox_dp", params, noise_scale=release.scale)
    events = np.asarray(total.totals["events"], dtype=float)  # patterns × (steps + beyond)
    censored = np.asarray(total.totals["censored"], dtype=float)
    newton = grouped_fit(events, censored, x, stratum)
    # the noise's share of the uncertainty, by refitting on tables with simulated noise of the
    # same SD added (post-processing of the release; this generator draws no privacy noise)
    sd = release.total_sd(len(total.sites))
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(DP_COX_DRAWS):
        again = grouped_fit(
            events + rng.normal(0.0, sd, events.shape),
            censored + rng.normal(0.0, sd, censored.shape),
            x,
            stratum,
        )
        if again.converged:
            draws.append(again.beta)
    covariance = -np.linalg.inv(newton.hessian)
    if len(draws) > x.shape[1] + 1:
        covariance = covariance + np.atleast_2d(np.cov(np.asarray(draws).T))
    hessian = -np.linalg.inv(covariance)  # the fit's information, the noise's variance added
    q.note(release.note("each covariate pattern's events and censorings per grid step"))
    q.note(
        "DP Cox: the piecewise-exponential likelihood (Breslow's form with each pattern's "
        f"person-time, numbers in {DP_COX_BINS} bins of their declared range at the bins' "
        "midpoints, "
        "the step hazards profiled out) of the noisy event table of every covariate "
        f"pattern ({len(x)} patterns of {', '.join([*strata, *spec.covariates])}; risk sets "
        f"within each of {n_strata} strata) on a grid of {grid:g} "
        f"{plan.unit or 'units'} over {horizon} steps; the standard errors include the noise "
        f"(refits on {DP_COX_DRAWS} tables with simulated noise of the release's SD added)"
    )
    fit = CoxFit.from_newton(
        newton,
        columns=names,
        center=np.zeros(len(names)),
        scale=np.ones(len(names)),
        strata=[],
        sites=total.sites,
        n=max(0, int(round(float((events + censored).sum())))),
        n_events=max(0, int(round(float(events[:, :-1].sum())))),
        time_step=grid,
        unit=plan.unit,
    )
    fit.hessian = hessian
    return fit


def grouped_fit(
    events: np.ndarray, censored: np.ndarray, x: np.ndarray, stratum: np.ndarray
) -> Any:
    """Newton–Raphson on the noisy tables (patterns × steps, the last column beyond the
    horizon; ``stratum``: each pattern's stratum, whose patterns share risk sets): each
    pattern's number at risk summed from the end (kept from growing, at least 0), its
    person-time per step that less half of those leaving, the events as released (unbiased: a
    count clipped at 0 would add events)."""
    leaving = events + censored
    at_risk = np.cumsum(leaving[:, ::-1], axis=1)[:, ::-1][:, :-1]  # the last column: beyond
    at_risk = np.maximum(np.maximum.accumulate(at_risk[:, ::-1], axis=1)[:, ::-1], 0.0)
    n_t = np.maximum(at_risk - leaving[:, :-1] / 2, 0.0)
    d_t = events[:, :-1]
    esum = d_t.sum(axis=1) @ x
    groups = [np.flatnonzero(stratum == h) for h in np.unique(stratum)]

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        eta = x @ beta
        ll = float(esum @ beta)
        grad = esum.copy()
        hess = np.zeros((len(beta), len(beta)))
        for rows in groups:  # each stratum's own risk sets
            xs, d_all = x[rows], d_t[rows].sum(axis=0)
            w = n_t[rows] * np.exp(eta[rows])[:, None]  # patterns × steps
            s0 = w.sum(axis=0)
            live = s0 > 0
            s1 = xs.T @ w  # p × steps
            ll -= float((d_all[live] * np.log(s0[live])).sum())
            mean = np.divide(s1, s0, out=np.zeros_like(s1), where=live)
            grad -= (mean * d_all).sum(axis=1)
            second = np.einsum("gp,gq,gt->pqt", xs, xs, w)
            var = np.divide(second, s0, out=np.zeros_like(second), where=live) - np.einsum(
                "pt,qt->pqt", mean, mean
            )
            hess -= (var * d_all).sum(axis=2)
        return ll, grad, hess

    return newton_raphson(
        objective, x.shape[1], max_coefficient=MAX_COEFFICIENT, what="partial likelihood"
    )
