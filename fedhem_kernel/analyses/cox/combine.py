"""Combine step of ``cox``: the setup round, the Newton iterations on the pooled partial likelihood, the
model checks and the result.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import columns_of_type, pooled_sums
from fedhem_kernel.analyses.common.combine_dp import dp_release
from fedhem_kernel.analyses.common.combine_grid import grid_plan
from fedhem_kernel.analyses.common.combine_newton import newton_raphson
from fedhem_kernel.analyses.cox import (
    CONCORDANCE_BINS,
    MAX_BINS,
    MAX_COEFFICIENT,
    SITE_STRATUM,
    TIES,
)
from fedhem_kernel.analyses.cox.combine_checks import run_diagnostics
from fedhem_kernel.analyses.cox.combine_dp import fit_cox_dp
from fedhem_kernel.analyses.cox.combine_pooled import (
    fit_cox_pooled,
    pooled_concordance,
    pooled_ph_tests,
)
from fedhem_kernel.analyses.cox.combine_sums import (
    CoxFit,
    _pool_strata,
    accumulate_from_end,
    check_variation,
    pool_steps,
    sum_bytes,
)
from fedhem_kernel.analyses.cox.likelihood import (
    PooledStratum,
    TimeWeights,
    evaluate,
    unpack_triangle,
)
from fedhem_kernel.analyses.cox.result import CoxResult, summary_frame
from fedhem_kernel.analyses.cox.result_checks import Diagnostics
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import FedHemError, ParameterError
from fedhem_kernel.protocol.query import Ask, Payload

BRESLOW_PRECISION = 1e-12


#: Largest per-site reply (bytes) for which the sites send per-time S2 in one round per iteration.
ONE_ROUND_MAX_BYTES = 1_000_000


# -- parameters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CoxSpec:
    """A checked model request."""

    duration: str
    event: str
    covariates: tuple[str, ...]
    strata: str | tuple[str, ...] | None
    ties: str
    categorical: tuple[str, ...] = ()

    def design(self, levels: dict[str, list[str]]) -> Payload:
        """What names the sites' design of this model (the categorical covariates' ``levels``)."""
        return {
            "duration": self.duration,
            "event": self.event,
            "covariates": list(self.covariates),
            "categorical": levels,
            "strata": list(self.strata) if isinstance(self.strata, tuple) else self.strata,
            "ties": self.ties,
        }


def check_cox_params(
    duration: Any,
    event: Any,
    covariates: Any,
    strata: Any,
    ties: Any,
    categorical: Sequence[str] = (),
) -> CoxSpec:
    """Validate what the researcher asked for (names only; sites check the columns)."""
    for name, value in (("duration", duration), ("event", event)):
        if not isinstance(value, str) or not value:
            raise ParameterError(f"'{name}' must be a column name")
    if isinstance(covariates, str):
        covariates = [covariates]
    if not isinstance(covariates, Sequence) or not covariates:
        raise ParameterError("'covariates' must be a list of column names")
    covs = list(covariates)
    if not all(isinstance(c, str) and c for c in covs):
        raise ParameterError("'covariates' must be a list of column names")
    if len(set(covs)) != len(covs):
        raise ParameterError("'covariates' lists a column twice")
    for c in covs:
        if c in (duration, event):
            raise ParameterError(f"'{c}' is the duration or event column, not a covariate")
        if c == SITE_STRATUM:
            raise ParameterError("'site' cannot be a covariate: use strata='site'")
    if isinstance(strata, str) and strata != SITE_STRATUM:
        strata = [strata]
    if strata is None or strata == SITE_STRATUM:
        strata_value: str | tuple[str, ...] | None = strata
    elif isinstance(strata, Sequence) and strata and all(isinstance(s, str) and s for s in strata):
        strata_value = tuple(strata)
        if SITE_STRATUM in strata_value:
            raise ParameterError("strata='site' cannot be combined with columns")
        overlap = set(strata_value) & {duration, event, *covs}
        if overlap:
            raise ParameterError(
                f"'{sorted(overlap)[0]}' cannot be both a stratum and in the model"
            )
    else:
        raise ParameterError("'strata' must be a column name, a list of them, 'site' or None")
    if ties not in TIES:
        raise ParameterError("'ties' must be 'efron' or 'breslow'")
    cats = tuple(c for c in covs if c in set(categorical))
    return CoxSpec(duration, event, tuple(covs), strata_value, ties, cats)


def _pool_moments(setups: dict[str, Payload]) -> tuple[int, np.ndarray, np.ndarray]:
    """Pooled count, mean and sample standard deviation (Chan et al.) of every design column."""
    n_tot = 0
    mean = None
    m2 = None
    for payload in setups.values():
        n = int(payload["n"])
        mu = np.asarray(payload["mean"], dtype=float)
        s2 = np.asarray(payload["m2"], dtype=float)
        if mean is None:
            n_tot, mean, m2 = n, mu, s2
            continue
        delta = mu - mean
        total = n_tot + n
        mean = mean + delta * n / total
        m2 = m2 + s2 + delta**2 * n_tot * n / total
        n_tot = total
    assert mean is not None and m2 is not None
    std = np.sqrt(m2 / (n_tot - 1)) if n_tot > 1 else np.zeros_like(mean)
    return n_tot, mean, std


def _release(q: Ask, base: Payload) -> None:
    try:
        q.ask("cox_release", base)
    except FedHemError:
        pass  # a site that cannot answer drops the design from its cache later (LRU)


class PooledCoxObjective:
    """The Cox log partial likelihood, gradient and Hessian at ``beta``, from the sites' sums.

    One ``cox_sums`` round per evaluation (``two_rounds``: then a ``cox_hessian`` round with the
    pooled per-time weights); the pooled risk-set sums of the last evaluation stay in ``strata``.
    """

    def __init__(
        self,
        q: Ask,
        base: Payload,
        strata: list[PooledStratum],
        sites: tuple[str, ...],
        center: np.ndarray,
        scale: np.ndarray,
        ties: str,
        split: bool,
        by_site: bool,
    ) -> None:
        self.q, self.base, self.strata, self.sites = q, base, strata, sites
        self.center, self.scale, self.ties, self.split = center, scale, ties, split
        self.by_site = by_site
        self.efron = ties == "efron"
        self.p = len(center)
        self.event_sums = [(st.event_sum - st.events.sum() * center) / scale for st in strata]
        self.tied = [{"label": list(st.label), "times": st.times[st.tied]} for st in strata]
        self.index = {st.label: st for st in strata}
        self.rows_at: dict[tuple[tuple[str, ...], str], np.ndarray] = {}

    def __call__(self, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        p = self.p
        self._ask_sums(beta)
        if not self.split:
            ll, grad, hess, _ = evaluate(self.strata, beta, self.event_sums, self.ties)
            return ll, grad, hess
        ll, grad, partial, weights = evaluate(
            self.strata, beta, self.event_sums, self.ties, np.zeros((p, p))
        )
        if not (np.isfinite(ll) and np.isfinite(grad).all()):
            return ll, grad, np.full((p, p), np.nan)
        # evaluate() returns -(info + weighted_s2): the same numbers without a second pass
        return ll, grad, partial - self._ask_hessian(beta, weights)

    def _params(self, beta: np.ndarray) -> Payload:
        return {
            **self.base,
            "beta": [float(b) for b in beta],
            "center": [float(c) for c in self.center],
            "scale": [float(s) for s in self.scale],
        }

    def _check(self, replies: dict[str, Payload]) -> None:
        gone = [s for s in self.sites if s not in replies]
        if gone:
            raise FedHemError(
                f"site(s) {', '.join(gone)} stopped answering during the fit: no consistent "
                "pooled fit is possible (see the privacy report)",
                dataset=self.q.dataset,
            )

    def _ask_sums(self, beta: np.ndarray) -> None:
        p, q_len = self.p, self.p * (self.p + 1) // 2
        params = {**self._params(beta), "parts": "first" if self.split else "all"}
        if self.efron:
            params["tied"] = self.tied
        for st in self.strata:  # the last iteration's sums are not needed during the round
            st.S0 = st.S1 = st.S2 = st.D0 = st.D1 = st.D2 = None
        replies = self.q.ask("cox_sums", params)
        self._check(replies)
        for st in self.strata:
            t, nt = len(st.times), int(st.tied.sum())
            st.S0, st.S1 = np.zeros(t), np.zeros((t, p))
            st.S2 = None if self.split else np.zeros((t, q_len))
            if self.efron:
                st.D0, st.D1 = np.zeros(nt), np.zeros((nt, p))
                st.D2 = None if self.split else np.zeros((nt, q_len))
        for site in list(replies):  # a site's reply is dropped as soon as it is pooled
            self._pool_reply(site, replies.pop(site))
        for st in self.strata:
            for pooled in (st.S0, st.S1, st.S2):
                if pooled is not None:
                    accumulate_from_end(pooled)

    def _pool_reply(self, site: str, payload: Payload) -> None:
        for item in payload["strata"]:
            st = self.index[(site,) if self.by_site else tuple(item["label"])]
            # the site's risk set at a pooled time: its steps at or after that time
            at = self.rows_at.get((st.label, site))
            if at is None:
                at = np.searchsorted(st.times, st.site_steps[site], side="right") - 1
                self.rows_at[(st.label, site)] = at
            for k in ("0", "1", "2"):
                pooled = getattr(st, "S" + k)
                if pooled is not None:
                    pool_steps(pooled, at, np.asarray(item["A" + k], dtype=float))
                pooled = getattr(st, "D" + k)
                if pooled is not None:
                    pooled += np.asarray(item["D" + k], dtype=float)

    def _ask_hessian(self, beta: np.ndarray, weights: list[TimeWeights]) -> np.ndarray:
        items = [
            {
                "label": list(st.label),
                "times": st.times,
                "c1": w.c1,
                **({"tied": st.times[st.tied], "c2": w.c2[st.tied]} if self.efron else {}),
            }
            for st, w in zip(self.strata, weights, strict=True)
        ]
        replies = self.q.ask("cox_hessian", {**self._params(beta), "weights": items})
        self._check(replies)
        total = sum(np.asarray(r["hessian"], dtype=float) for r in replies.values())
        return unpack_triangle(np.asarray(total), self.p)


def fit_cox(
    q: Ask,
    spec: CoxSpec,
    levels: dict[str, list[str]],
    *,
    precision: float = 1e-7,
    r_precision: float = 1e-9,
    max_steps: int = 500,
    protocol: str | None = None,
    after: Callable[[Payload, CoxFit], None] | None = None,
) -> CoxFit:
    """Run the setup round and the Newton iterations; return the pooled fit.

    ``protocol``: ``"one_round"`` (each site sends, per merged step, the sums of exp(zβ), z·exp(zβ)
    and zzᵀ·exp(zβ), and the Efron event sums at tied times: gradient and Hessian from one reply
    per iteration) or ``"two_rounds"`` (the same without the zzᵀ sums, then, for weights computed
    from the pooled S0, the contracted Σ c1·S2 - c2·D2 as one p×p matrix). ``None`` picks one
    round unless its replies would exceed :data:`ONE_ROUND_MAX_BYTES` for some site (exact times
    on large data: a reply then grows with B·p², B the site's distinct times).
    ``after(base, fit)`` runs once the fit is done, before the sites drop its cached design (``base``:
    the parameters that name the design, for further rounds on it).
    """
    base: Payload = {**spec.design(levels), "fit": uuid.uuid4().hex}
    setups = q.ask("cox_setup", base)
    try:
        columns = list(next(iter(setups.values()))["columns"])
        for site, payload in setups.items():
            if list(payload["columns"]) != columns:
                raise FedHemError(
                    "the sites coded the covariates differently", site=site, dataset=q.dataset
                )
        n, center, scale = _pool_moments(setups)
        check_variation(columns, scale, q.dataset)
        by_site = spec.strata == SITE_STRATUM
        strata = _pool_strata(setups, by_site)
        n_events = int(sum(int(st.events.sum()) for st in strata))
        if n_events == 0:
            raise ParameterError("no events in the cohort: nothing to fit", dataset=q.dataset)
        p = len(columns)
        if protocol is None:
            small = sum_bytes(strata, p, spec.ties) <= ONE_ROUND_MAX_BYTES
            protocol = "one_round" if small else "two_rounds"
        if protocol not in ("one_round", "two_rounds"):
            raise ParameterError("protocol must be 'one_round' or 'two_rounds'")
        objective = PooledCoxObjective(
            q,
            base,
            strata,
            tuple(setups),
            center,
            scale,
            spec.ties,
            protocol == "two_rounds",
            by_site,
        )
        try:
            newton = newton_raphson(
                objective,
                p,
                precision=precision,
                r_precision=r_precision,
                max_steps=max_steps,
                max_coefficient=MAX_COEFFICIENT,
                what="partial likelihood",
            )
        except FedHemError as exc:
            if exc.dataset is not None:
                raise
            raise type(exc)(exc.reason, dataset=q.dataset) from None
        if newton.diverged:
            q.note("the fit diverged (a coefficient grew without bound): complete separation?")
        if not newton.converged:
            q.note("Newton–Raphson did not converge: the coefficients are the last iterate")
        elif newton.norm_delta > 0.1:
            q.note("converged, but the last step was still large: collinearity or separation?")
        coarse = [x for x in setups.values() if x.get("time_step") is not None]
        step_info = coarse[0] if coarse else next(iter(setups.values()))
        fit = CoxFit.from_newton(
            newton,
            columns=columns,
            center=center,
            scale=scale,
            strata=strata,
            sites=tuple(setups),
            n=n,
            n_events=n_events,
            time_step=step_info.get("time_step"),
            unit=step_info.get("unit"),
        )
        if after is not None:  # e.g. model checks, while the sites still hold the design
            after(base, fit)
        return fit

    finally:  # the sites drop their cached design of this fit
        _release(q, base)


def raw_variance(fit: CoxFit) -> np.ndarray:
    """The coefficients' covariance in the covariates' own units (inverse information)."""
    return -np.linalg.inv(fit.hessian) / np.outer(fit.scale, fit.scale)


def build_cox_result(
    q: Ask, spec: CoxSpec, fit: CoxFit, diagnostics: Diagnostics | None = None
) -> CoxResult:
    pooled = any("time blocks" in n or n.startswith("DP Cox") for n in q.report().notes)
    index = pd.Index(fit.columns, name="covariate")
    params = pd.Series(fit.beta / fit.scale, index=index, name="coef")
    variance = raw_variance(fit)
    variance_df = pd.DataFrame(variance, index=index, columns=index)
    if fit.time_step is not None and not pooled:
        q.note(
            "times were coarsened to each site's grid and small steps merged before anything "
            "left a site: this is a Cox fit on grouped times and may differ from a fit on exact "
            "times (typically by a small fraction of a standard error; a finer time resolution "
            "at the sites brings it closer)"
        )
    report = q.report()
    return CoxResult(
        summary=summary_frame(params, variance_df),
        params_=params,
        variance_matrix_=variance_df,
        log_likelihood_=fit.log_likelihood,
        log_likelihood_null_=fit.log_likelihood_null,
        duration=spec.duration,
        event=spec.event,
        covariates=spec.covariates,
        strata=spec.strata,
        ties=spec.ties,
        iterations=fit.iterations,
        converged=fit.converged,
        n_sites=len(fit.sites),
        n_observations=fit.n,
        n_events=fit.n_events,
        privacy=report,
        notes=report.notes,
        time_step=fit.time_step,
        unit=fit.unit,
        fit=fit,
        concordance=diagnostics.concordance if diagnostics else None,
        ph_tests=diagnostics.ph_tests if diagnostics else {},
    )


def run(
    q: Ask,
    duration: str,
    event: str,
    covariates: str | Sequence[str],
    strata: str | Sequence[str] | None = None,
    ties: str = "efron",
    diagnostics: bool = True,
    concordance_bins: int = CONCORDANCE_BINS,
) -> CoxResult:
    """Fit the pooled Cox model; covariates any site's catalog types as categories are dummy-coded.

    With ``diagnostics`` (the default), two more rounds on the sites' designs compute the
    concordance index and the proportional-hazards test (:mod:`.combine_checks`).
    """
    covs = [covariates] if isinstance(covariates, str) else list(covariates)
    named = {c for c in covs if isinstance(c, str)}
    categorical = sorted(set(columns_of_type(q, ("category",))) & named)
    spec = check_cox_params(duration, event, covs, strata, ties, categorical)
    if not isinstance(concordance_bins, int) or not 1 <= concordance_bins <= MAX_BINS:
        raise ParameterError(f"'concordance_bins' must be an integer from 1 to {MAX_BINS}")
    release = dp_release(q)
    if release is not None:  # DP mode: categorical covariates, one noised event table
        return build_cox_result(q, spec, fit_cox_dp(q, spec, release))
    levels: dict[str, list[str]] = {}
    for column in spec.categorical:
        levels[column] = list(require_levels(q, column, minimum=2) or [])
    checks: list[Diagnostics] = []
    plan = (
        grid_plan(q, spec.duration)
        if pooled_sums(q, "cox") and spec.strata != SITE_STRATUM
        else None
    )
    if plan is not None:  # every site in secure sums: the pooled fit on time blocks
        strata_levels = [
            list(require_levels(q, c) or []) for c in spec.strata or () if c != SITE_STRATUM
        ]
        precise = BRESLOW_PRECISION if spec.ties == "breslow" else None
        fit = fit_cox_pooled(
            q,
            spec.design(levels),
            plan,
            strata_levels,
            precision=precise or 1e-7,
            r_precision=precise or 1e-9,
        )
        checked = None
        if diagnostics and np.isfinite(fit.hessian).all():
            concordance = pooled_concordance(q, fit)
            tests = pooled_ph_tests(q, fit, raw_variance(fit), spec.ties)
            checked = Diagnostics(concordance, tests)
        return build_cox_result(q, spec, fit, checked)

    def after(base: Payload, fit: CoxFit) -> None:
        if diagnostics and np.isfinite(fit.hessian).all():
            variance = raw_variance(fit)
            checks.append(run_diagnostics(q, base, fit, variance, spec.ties, concordance_bins))

    if spec.ties == "efron":
        fit = fit_cox(q, spec, levels, after=after)
    else:
        fit = fit_cox(
            q,
            spec,
            levels,
            precision=BRESLOW_PRECISION,
            r_precision=BRESLOW_PRECISION,
            after=after,
        )
    return build_cox_result(q, spec, fit, checks[0] if checks else None)
