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
from fedhem_kernel.analyses.cox.result_checks import Concordance
from fedhem_kernel.errors import DisclosureError, FedHemError, ParameterError
from fedhem_kernel.privacy.tables import singled_out
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.secure_sum import SecureTotal


class BlockObjective:
    """Log partial likelihood, gradient and Hessian at β, as the sites evaluate them.

    The sites seal each round's per-block sums (only they can open the total) and evaluate them
    in the next round: a call at β sends the signed replies of the round that sealed the sums at
    β and gets back, from every site, the same likelihood, gradient and Hessian there, and the
    next β of the Newton path, where the sites have already sealed their sums. The first call
    takes one more round (the sums at β = 0)."""

    def __init__(self, q: Ask, params: Payload, p: int):
        self.q, self.params = q, params
        self.sites: tuple[str, ...] = ()
        #: the signed replies of the last round, and the β its sums were sealed at
        self.previous: dict | None = None
        self.sealed_at: np.ndarray | None = np.zeros(p)
        #: the signed replies of the round whose sums were evaluated last (the PH test opens them)
        self.evaluated: dict | None = None

    def _round(self, path: dict | None) -> SecureTotal:
        total = self.q.ask_sum("cox_pool_sums", {**self.params, "path": path})
        if self.sites and set(total.sites) != set(self.sites):
            raise FedHemError(
                "a site stopped answering during the fit: no consistent pooled fit is possible",
                dataset=self.q.dataset,
            )
        self.sites = total.sites
        return total

    def __call__(self, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.previous is None:
            self.previous = self._round(None).evidence
        if self.sealed_at is None or not np.allclose(beta, self.sealed_at, rtol=1e-9, atol=1e-12):
            raise FedHemError(
                "the sites' Newton path and the coordinator's differ", dataset=self.q.dataset
            )
        total = self._round({"evidence": self.previous})
        ll, grad, hess, following = _agreed(total, len(beta), self.q.dataset)
        self.evaluated, self.previous = self.previous, total.evidence
        self.sealed_at = following
        return ll, grad, hess


def _agreed(
    total: SecureTotal, p: int, dataset: str | None
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
    """The likelihood, gradient and Hessian every site evaluated (the same numbers: each opened
    the same total with the same code), and the β they sealed next (None: the path ended)."""
    seen = []
    for site, shared in total.shared.items():
        try:
            got = shared["evaluated"]
            ll = float(got["ll"])
            grad = np.asarray(got["grad"], dtype=float).reshape(p)
            hess = np.asarray(got["hess"], dtype=float).reshape(p, p)
            following = got["next"]
            nxt = None if following is None else np.asarray(following, dtype=float).reshape(p)
        except (KeyError, TypeError, ValueError):
            raise FedHemError(
                "malformed evaluation of the pooled sums", site=site, dataset=dataset
            ) from None
        seen.append((ll, grad, hess, nxt))
    ll, grad, hess, nxt = seen[0]
    ended = {v[3] is None for v in seen}
    flat = [
        np.concatenate([[v[0]], v[1], v[2].ravel(), [] if v[3] is None else v[3]]) for v in seen
    ]
    if len(ended) > 1 or not _same(flat):
        raise FedHemError(
            "the sites evaluated the pooled sums differently: no consistent fit", dataset=dataset
        )
    return ll, grad, hess, nxt


def _same(values: list) -> bool:
    """Whether every site sent the same numbers (each computed them from the same opened total
    with the same code: they differ only by another machine's floating point)."""
    first = np.asarray(values[0], dtype=float)
    return all(
        np.shape(v) == first.shape
        and np.allclose(np.asarray(v, dtype=float), first, rtol=1e-9, atol=1e-9, equal_nan=True)
        for v in values[1:]
    )


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
    objective = BlockObjective(q, params, p)
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
        "site's own sums were seen for the fit, nor any block's: the sites sealed them, and "
        "sent per iteration the likelihood, gradient and Hessian summed over every block"
    )
    if not newton.converged:
        q.note("Newton–Raphson did not converge: the coefficients are the last iterate")
    fit = CoxFit.from_newton(
        newton,
        columns=columns,
        center=center,
        scale=scale,
        strata=[],
        sites=objective.sites or setup.sites,
        n=n,
        n_events=_events_in_blocks(below, blocks),
        time_step=plan.step,
        unit=plan.unit,
    )
    fit.pooled_plan = (
        {**params, "path": {"evidence": objective.evaluated}},
        setup.totals,
        len(setup.sites),
    )
    return fit


def _events_in_blocks(below: np.ndarray, blocks: list[list[int]]) -> int:
    """The events the blocks hold, from the setup's perturbed numbers of events up to each step
    (an exact count over the cohort would be a count of its atoms' events)."""
    total = 0
    for s, starts in enumerate(blocks):
        if starts:
            total += int(below[s][-1]) - (int(below[s][starts[0] - 1]) if starts[0] > 0 else 0)
    return max(total, 0)


def pooled_ph_tests(q: Ask, fit: CoxFit, variance: np.ndarray, ties: str) -> dict:
    """Lifelines' proportional-hazards statistics of a pooled fit: one secure sum of Σ w·z over
    the events (``cox_pool_ph``: weights each site derives from the setup round), less the
    expected part from the fit's last risk-set sums (:func:`~.combine_checks.combine_ph`)."""
    params, totals, m = fit.pooled_plan
    weights, spread = ph_weights(totals, params["decided"], fit.time_step, params["k"], m)
    total = q.ask_sum("cox_pool_ph", params)
    if set(total.sites) != set(fit.sites):
        q.note("a site did not answer the proportional-hazards test: not computed")
        return {}
    expected = [np.asarray(s["expected"], dtype=float) for s in total.shared.values()]
    if not _same(expected):
        q.note("the sites computed the proportional-hazards test differently: not computed")
        return {}
    q.note(
        "proportional hazards: lifelines' statistic from pooled sums, each event weighted by "
        "its time block's transform (rank, Kaplan–Meier, time, log time of the block's end, "
        "from the setup round's perturbed counts), blocks grouped until they surely hold "
        f"{params['k']} events; within-stratum ranks"
    )
    return combine_ph(
        fit,
        weights,
        spread,
        [np.asarray(total.totals["ph"])],
        variance,
        ties,
        expected=expected[0],
        n_deaths=float(fit.n_events),
    )


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


def pooled_concordance(q: Ask, fit: CoxFit) -> Concordance | None:
    """Harrell's C of a pooled fit, computed by the sites on sealed tables (three rounds,
    :mod:`~fedhem_kernel.analyses.cox.site_pooled_concordance`): only C and its bounds come back."""
    params, _, _ = fit.pooled_plan
    asked = {**params, "path": None, "stage": "moments"}
    total = q.ask_sum("cox_pool_concordance", asked)
    for stage in ("table", "value"):
        asked = {**params, "path": {"evidence": total.evidence}, "stage": stage}
        total = q.ask_sum("cox_pool_concordance", asked)
        if set(total.sites) != set(fit.sites):
            q.note("a site did not answer the concordance rounds: not computed")
            return None
    values = [shared["concordance"] for shared in total.shared.values()]
    if not _same(values):
        q.note("the sites computed the concordance differently: not computed")
        return None
    value, lower, upper = (float(v) for v in values[0])
    q.note(
        "concordance (Harrell's C): computed by the sites on tables only they see (events and "
        "censored per grid step and bin of the linear predictor, 256 bins over its pooled "
        "mean ± 5 SD); pairs in one bin count ½ (the bounds: all discordant, all concordant); "
        "strata ignored, as lifelines does; only C and its bounds were released"
    )
    return Concordance(value, lower, upper, pairs=None, unresolved=None)  # not released
