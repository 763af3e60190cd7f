"""The pooled Cox fit on the researcher's side: blocks decided from the setup round, then Newton.

Side: researcher (combine). See :mod:`~fedhem_kernel.analyses.cox.site_pooled` for what each site
sends. The coordinator sees only totals over the sites: per stratum, the perturbed numbers at
risk and of events up to each grid step (from which it cuts the grid into blocks that at least k
patients leave, by the rule every site checks), then per Newton iteration the pooled risk-set and
event sums per block.
The partial likelihood is the pooled rows' on those blocks (the events of a block tied, Efron's
or Breslow's way), evaluated by the same code as the per-site protocol
(:func:`~fedhem_kernel.analyses.cox.combine_sums.evaluate`).
"""

from __future__ import annotations

import math
import uuid

import numpy as np

from fedhem_kernel.analyses.common.combine_grid import GridPlan
from fedhem_kernel.analyses.common.combine_newton import newton_raphson
from fedhem_kernel.analyses.cox import (
    BLOCK_COUNTS,
    MAX_COEFFICIENT,
    ph_weights,
    pooled_scaling,
    time_blocks,
)
from fedhem_kernel.analyses.cox.combine_checks import combine_ph
from fedhem_kernel.analyses.cox.combine_sums import CoxFit, check_variation
from fedhem_kernel.analyses.cox.likelihood import PooledStratum, block_likelihood
from fedhem_kernel.errors import DisclosureError, FedHemError, ParameterError
from fedhem_kernel.privacy.tables import singled_out
from fedhem_kernel.protocol.query import Ask, Payload


class BlockObjective:
    """Log partial likelihood, gradient and Hessian at β from one ``cox_pool_sums`` round."""

    def __init__(self, q: Ask, params: Payload, labels: list[tuple[str, ...]], plan: GridPlan):
        self.q, self.params, self.labels, self.plan = q, params, labels, plan
        self.blocks: list[list[int]] = params["decided"]
        self.center, self.scale = np.zeros(0), np.zeros(0)
        self.strata: list[PooledStratum] = []
        self.sites: tuple[str, ...] = ()
        #: the signed replies of the last round (the sites check the next β against them)
        self.previous: dict | None = None

    def __call__(self, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        asked = {**self.params, "beta": [float(b) for b in beta]}
        if self.previous is not None:  # every site checks β is the Newton step from there
            asked["path"] = {"evidence": self.previous}
        total = self.q.ask_sum("cox_pool_sums", asked)
        if self.sites and set(total.sites) != set(self.sites):
            raise FedHemError(
                "a site stopped answering during the fit: no consistent pooled fit is possible",
                dataset=self.q.dataset,
            )
        self.sites, self.previous = total.sites, total.evidence
        ll, grad, hess, self.strata = block_likelihood(
            total.totals,
            self.blocks,
            step=self.plan.step,
            horizon=self.plan.horizon,
            center=self.center,
            scale=self.scale,
            ties=self.params["ties"],
            beta=beta,
            labels=self.labels,
            sites=total.sites,
        )
        return ll, grad, hess


def fit_cox_pooled(
    q: Ask,
    design: Payload,
    plan: GridPlan,
    strata_levels: list[list[str]],
    *,
    precision: float,
    r_precision: float,
) -> CoxFit:
    """The pooled fit: the setup round, the blocks, then Newton–Raphson on the blocks' sums."""
    base: Payload = {
        **design,
        "strata_levels": strata_levels or None,
        "grid": plan.resolution,
        "horizon": plan.horizon,
        "fit": uuid.uuid4().hex,
    }
    setup = q.ask_sum("cox_pool_setup", base)
    m, k = len(setup.sites), plan.k
    below = np.asarray(setup.totals["events_below"])
    decided = [
        time_blocks({f: setup.totals[f][s] for f in BLOCK_COUNTS}, k, m) for s in range(len(below))
    ]
    blocks = [starts for starts, _ in decided]
    labels = [tuple(v) for v in _product(strata_levels)]
    if not any(blocks):
        raise ParameterError(
            f"too few patients for a pooled fit (each time block needs at least {k} over the "
            "sites)",
            dataset=q.dataset,
        )
    empty = sum(1 for b in blocks if not b)
    if empty:
        q.note(f"{empty} stratum/strata with too few events over the sites are left out")
    columns = design_columns(design)
    bad = singled_out(setup.totals, k, m)
    if bad is not None:
        source = _sources(design)[bad]
        q.note(f"covariate '{columns[bad]}' singles out fewer than {k} patients over the sites")
        raise DisclosureError(
            f"covariate '{columns[bad]}' singles out fewer than {k} patients over the sites (all "
            "others share one value): their survival could be read from the fit",
            dataset=q.dataset,
            column=source,
            rule="min_cell_count",
        )
    center, scale = pooled_scaling(setup.totals)
    n = int(np.asarray(setup.totals["n"]).sum())
    p = len(center)
    check_variation(columns, scale, q.dataset)
    if 10 * p > n:
        raise ParameterError(
            f"the model has {p} parameters: the pooled rows need at least 10 patients per "
            "parameter",
            dataset=q.dataset,
        )
    params = {**base, "decided": blocks, "k": k, "evidence": setup.evidence}
    objective = BlockObjective(q, params, labels, plan)
    objective.center, objective.scale = center, scale
    newton = newton_raphson(
        objective,
        p,
        precision=precision,
        r_precision=r_precision,
        max_steps=500,
        max_coefficient=MAX_COEFFICIENT,
        what="partial likelihood",
    )
    n_blocks = sum(len(b) for b in blocks)
    q.note(
        f"pooled through secure sums: the Cox fit of the pooled rows on {n_blocks} time blocks "
        f"of the sites' grid of {plan.resolution}, at least {k} patients leaving each over the "
        "sites (decided from perturbed counts, checked by every site); the events of a block "
        f"are tied (Efron's way where a block surely holds {k} events, else Breslow's). No "
        "site's own sums were seen for the fit"
    )
    if not newton.converged:
        q.note("Newton–Raphson did not converge: the coefficients are the last iterate")
    fit = CoxFit.from_newton(
        newton,
        columns=columns,
        center=center,
        scale=scale,
        strata=objective.strata,
        sites=objective.sites or setup.sites,
        n=n,
        n_events=int(sum(int(st.events.sum()) for st in objective.strata)),
        time_step=plan.step,
        unit=plan.unit,
    )
    fit.pooled_plan = (params, setup.totals, len(setup.sites))
    return fit


def pooled_ph_tests(q: Ask, fit: CoxFit, variance: np.ndarray, ties: str) -> dict:
    """Lifelines' proportional-hazards statistics of a pooled fit: one secure sum of Σ w·z over
    the events (``cox_pool_ph``: weights each site derives from the setup round), less the
    expected part from the fit's last risk-set sums (:func:`~.combine_checks.combine_ph`)."""
    params, totals, m = fit.pooled_plan
    weights, spread = ph_weights(totals, params["decided"], fit.time_step, params["k"], m)
    asked = {k: v for k, v in params.items() if k not in ("beta", "path")}
    total = q.ask_sum("cox_pool_ph", asked)
    if set(total.sites) != set(fit.sites):
        q.note("a site did not answer the proportional-hazards test: not computed")
        return {}
    q.note(
        "proportional hazards: lifelines' statistic from pooled sums, each event weighted by "
        "its time block's transform (rank, Kaplan–Meier, time, log time of the block's end, "
        "from the setup round's perturbed counts), blocks grouped until they surely hold "
        f"{params['k']} events; within-stratum ranks"
    )
    return combine_ph(fit, weights, spread, [np.asarray(total.totals["ph"])], variance, ties)


def design_columns(design: Payload) -> list[str]:
    """The design's column names: numeric covariates as they are, a categorical one as a 0/1
    column per agreed level but the first (as ``pd.get_dummies(drop_first=True)``)."""
    levels = design.get("categorical") or {}
    out: list[str] = []
    for column in design["covariates"]:
        if column in levels:
            out += [f"{column}_{lv}" for lv in levels[column][1:]]
        else:
            out.append(column)
    return out


def _sources(design: Payload) -> list[str]:
    """The covariate each design column comes from."""
    levels = design.get("categorical") or {}
    out: list[str] = []
    for column in design["covariates"]:
        out += [column] * (len(levels[column]) - 1 if column in levels else 1)
    return out


def _product(levels: list[list[str]]) -> list[list[str]]:
    """Every combination of the strata's levels, the first column slowest ([[]] without)."""
    out: list[list[str]] = [[]]
    for lv in levels:
        out = [[*row, v] for row in out for v in lv]
    assert len(out) == math.prod(len(lv) for lv in levels)
    return out
