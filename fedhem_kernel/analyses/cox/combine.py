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
from scipy import linalg

from fedhem_kernel.analyses.common.combine_catalog import columns_of_type
from fedhem_kernel.analyses.cox import (
    CONCORDANCE_BINS,
    MAX_BINS,
    MAX_COEFFICIENT,
    SITE_STRATUM,
    TIES,
)
from fedhem_kernel.analyses.cox.combine_checks import run_diagnostics
from fedhem_kernel.analyses.cox.combine_sums import (
    CoxFit,
    TimeWeights,
    _pool_strata,
    accumulate_from_end,
    evaluate,
    pool_steps,
    sum_bytes,
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


class StepSizer:
    """lifelines' step-size schedule (``lifelines.utils.StepSizer``), so the iterates match."""

    def __init__(self, initial: float = 0.95) -> None:
        self.initial = initial
        self.step_size = initial
        self.temper_back_up = False
        self.norms: list[float] = []

    def update(self, norm_of_delta: float) -> float:
        self.norms.append(norm_of_delta)
        if self.temper_back_up:
            self.step_size = min(self.step_size * 1.3, self.initial)
        if norm_of_delta >= 15.0:
            self.step_size *= 0.1
            self.temper_back_up = True
        elif 15.0 > norm_of_delta > 5.0:
            self.step_size *= 0.25
            self.temper_back_up = True
        recent = self.norms[-3:]
        if len(self.norms) >= 3:
            if np.all(np.diff(recent) < 0):
                self.step_size = min(self.step_size * 1.3, 1.0)
            else:
                self.step_size *= 0.98
        return self.step_size


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
    base: Payload = {
        "duration": spec.duration,
        "event": spec.event,
        "covariates": list(spec.covariates),
        "categorical": levels,
        "strata": list(spec.strata) if isinstance(spec.strata, tuple) else spec.strata,
        "ties": spec.ties,
        "fit": uuid.uuid4().hex,
    }
    setups = q.ask("cox_setup", base)
    try:
        columns = list(next(iter(setups.values()))["columns"])
        for site, payload in setups.items():
            if list(payload["columns"]) != columns:
                raise FedHemError(
                    "the sites coded the covariates differently", site=site, dataset=q.dataset
                )
        sites = tuple(setups)
        n, center, scale = _pool_moments(setups)
        flat = [c for c, s in zip(columns, scale, strict=True) if not s > 0]
        if flat:
            raise ParameterError(
                f"covariate '{flat[0]}' has no variation in the pooled cohort",
                dataset=q.dataset,
                column=flat[0],
            )
        by_site = spec.strata == SITE_STRATUM
        strata = _pool_strata(setups, by_site)
        n_events = int(sum(int(st.events.sum()) for st in strata))
        if n_events == 0:
            raise ParameterError("no events in the cohort: nothing to fit", dataset=q.dataset)
        event_sums = [(st.event_sum - st.events.sum() * center) / scale for st in strata]
        efron = spec.ties == "efron"
        tied = [{"label": list(st.label), "times": st.times[st.tied]} for st in strata]
        index = {st.label: st for st in strata}
        p = len(columns)
        q_len = p * (p + 1) // 2
        if protocol is None:
            small = sum_bytes(strata, p, spec.ties) <= ONE_ROUND_MAX_BYTES
            protocol = "one_round" if small else "two_rounds"
        if protocol not in ("one_round", "two_rounds"):
            raise ParameterError("protocol must be 'one_round' or 'two_rounds'")
        split = protocol == "two_rounds"

        def check_replies(replies: dict[str, Payload]) -> None:
            gone = [s for s in sites if s not in replies]
            if gone:
                raise FedHemError(
                    f"site(s) {', '.join(gone)} stopped answering during the fit: no consistent "
                    "pooled fit is possible (see the privacy report)",
                    dataset=q.dataset,
                )

        def step_params(beta: np.ndarray) -> Payload:
            return {
                **base,
                "beta": [float(b) for b in beta],
                "center": [float(c) for c in center],
                "scale": [float(s) for s in scale],
            }

        def ask_sums(beta: np.ndarray) -> None:
            params = {**step_params(beta), "parts": "first" if split else "all"}
            if efron:
                params["tied"] = tied
            for st in strata:  # the last iteration's sums are not needed during the round
                st.S0 = st.S1 = st.S2 = st.D0 = st.D1 = st.D2 = None
            replies = q.ask("cox_sums", params)
            check_replies(replies)
            for st in strata:
                t, nt = len(st.times), int(st.tied.sum())
                st.S0, st.S1 = np.zeros(t), np.zeros((t, p))
                st.S2 = None if split else np.zeros((t, q_len))
                if efron:
                    st.D0, st.D1 = np.zeros(nt), np.zeros((nt, p))
                    st.D2 = None if split else np.zeros((nt, q_len))
            for site in list(replies):  # a site's reply is dropped as soon as it is pooled
                pool_reply(site, replies.pop(site))
            for st in strata:
                for pooled in (st.S0, st.S1, st.S2):
                    if pooled is not None:
                        accumulate_from_end(pooled)

        rows_at: dict[tuple[tuple[str, ...], str], np.ndarray] = {}

        def pool_reply(site: str, payload: Payload) -> None:
            for item in payload["strata"]:
                st = index[(site,) if by_site else tuple(item["label"])]
                # the site's risk set at a pooled time: its steps at or after that time
                at = rows_at.get((st.label, site))
                if at is None:
                    at = np.searchsorted(st.times, st.site_steps[site], side="right") - 1
                    rows_at[(st.label, site)] = at
                for k in ("0", "1", "2"):
                    pooled = getattr(st, "S" + k)
                    if pooled is not None:
                        pool_steps(pooled, at, np.asarray(item["A" + k], dtype=float))
                    pooled = getattr(st, "D" + k)
                    if pooled is not None:
                        pooled += np.asarray(item["D" + k], dtype=float)

        def ask_hessian(beta: np.ndarray, weights: list[TimeWeights]) -> np.ndarray:
            items = [
                {
                    "label": list(st.label),
                    "times": st.times,
                    "c1": w.c1,
                    **({"tied": st.times[st.tied], "c2": w.c2[st.tied]} if efron else {}),
                }
                for st, w in zip(strata, weights, strict=True)
            ]
            replies = q.ask("cox_hessian", {**step_params(beta), "weights": items})
            check_replies(replies)
            total = sum(np.asarray(r["hessian"], dtype=float) for r in replies.values())
            return unpack_triangle(np.asarray(total), p)

        def evaluate_at(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
            ask_sums(beta)
            if not split:
                ll, grad, hess, _ = evaluate(strata, beta, event_sums, spec.ties)
                return ll, grad, hess
            ll, grad, partial, weights = evaluate(
                strata, beta, event_sums, spec.ties, np.zeros((p, p))
            )
            if not (np.isfinite(ll) and np.isfinite(grad).all()):
                return ll, grad, np.full((p, p), np.nan)
            # evaluate() returns -(info + weighted_s2): the same numbers without a second pass
            return ll, grad, partial - ask_hessian(beta, weights)

        # lifelines' Newton–Raphson (CoxPHFitter._newton_raphson_for_efron_model), step by step
        beta = np.zeros(p)
        delta = np.zeros(p)
        sizer = StepSizer(0.95)
        step_size = sizer.step_size
        previous_ll = 0.0
        ll_null = 0.0
        converged = False
        i = 0
        evaluated = beta
        hessian = gradient = np.zeros(0)
        log_lik = norm_delta = 0.0
        while True:
            candidate = beta + step_size * delta
            if np.abs(candidate).max(initial=0.0) > MAX_COEFFICIENT:
                q.note("the fit diverged (a coefficient grew without bound): complete separation?")
                break
            beta = candidate
            i += 1
            ll, grad, hess = evaluate_at(beta)
            if i == 1:
                ll_null = ll
            if not (np.isfinite(ll) and np.isfinite(grad).all() and np.isfinite(hess).all()):
                raise FedHemError(
                    "the partial likelihood is not finite at this step: the model does not converge",
                    dataset=q.dataset,
                )
            try:
                delta = linalg.solve(-hess, grad, assume_a="pos", check_finite=False)
            except (ValueError, linalg.LinAlgError):
                raise FedHemError(
                    "the Hessian is singular: covariates are collinear (or a covariate separates "
                    "events completely)",
                    dataset=q.dataset,
                ) from None
            evaluated, hessian, gradient, log_lik = beta, hess, grad, ll
            norm_delta = float(np.linalg.norm(delta))
            decrement = float(grad @ delta) / 2
            if (
                norm_delta < precision
                or (previous_ll != 0 and abs(ll - previous_ll) / (-previous_ll) < r_precision)
                or decrement < precision
            ):
                converged = True
                break
            if i >= max_steps or step_size <= 1e-5 or (abs(ll) < 1e-4 and norm_delta > 1.0):
                break
            previous_ll = ll
            step_size = sizer.update(norm_delta)
        if not converged:
            q.note("Newton–Raphson did not converge: the coefficients are the last iterate")
        elif norm_delta > 0.1:
            q.note("converged, but the last step was still large: collinearity or separation?")
        coarse = [x for x in setups.values() if x.get("time_step") is not None]
        step_info = coarse[0] if coarse else next(iter(setups.values()))
        fit = CoxFit(
            columns=columns,
            beta=evaluated,
            center=center,
            scale=scale,
            hessian=hessian,
            gradient=gradient,
            log_likelihood=log_lik,
            log_likelihood_null=ll_null,
            iterations=i,
            converged=converged,
            strata=strata,
            sites=sites,
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
    index = pd.Index(fit.columns, name="covariate")
    params = pd.Series(fit.beta / fit.scale, index=index, name="coef")
    variance = raw_variance(fit)
    variance_df = pd.DataFrame(variance, index=index, columns=index)
    if fit.time_step is not None:
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
    levels: dict[str, list[str]] = {}
    for column in spec.categorical:
        levels[column] = list(require_levels(q, column, minimum=2) or [])
    checks: list[Diagnostics] = []

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
