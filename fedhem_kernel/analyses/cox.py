"""Cox proportional hazards, fitted by Newton–Raphson on the pooled partial likelihood.

Rounds: ``levels`` for each categorical covariate (every site codes the same dummies; the first level
in sorted order is the reference, as ``pd.get_dummies(..., drop_first=True)`` does), ``cox_setup``
(each site checks its rules and releases its event steps, see :mod:`~fedhem_kernel.analyses.cox_site`),
then one ``cox_sums`` round per Newton iteration. The coordinator pools the risk-set sums per stratum
(sums across sites are additive at each pooled event time), evaluates the log partial likelihood, its
gradient and Hessian with Efron's or Breslow's handling of ties, and steps exactly as lifelines'
``CoxPHFitter`` does: covariates standardised with the pooled mean and standard deviation, β = 0 to
start, lifelines' step-size schedule and its three stopping rules (step norm, relative change of the
log-likelihood, Newton decrement). Standard errors come from the inverse Hessian.

Under ``Policy.unrestricted()`` the sites' steps are their exact distinct times and the fit equals
lifelines on the pooled rows; under a coarser policy it is a Cox fit on the sites' released time
steps (grouped times, ties by Efron) and the result says so.

Extension points: :func:`fit_cox` returns a :class:`CoxFit` with the pooled per-stratum sums at the
final coefficients (``CoxFit.strata``) and :func:`evaluate` computes log-likelihood, gradient and
Hessian from such sums; ``CoxResult.fit`` keeps the :class:`CoxFit`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, stats

from fedhem_kernel.analyses.base import Ask, Payload, SiteStep, param_columns
from fedhem_kernel.analyses.cox_site import (
    MAX_COEFFICIENT,
    SITE_STRATUM,
    site_cox_hessian,
    site_cox_setup,
    site_cox_sums,
)
from fedhem_kernel.analyses.levels import require_levels
from fedhem_kernel.errors import FedHemError, ParameterError
from fedhem_kernel.privacy.report import PrivacyReport

TIES = ("efron", "breslow")
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


# -- likelihood from pooled sums -------------------------------------------------------------
def unpack_triangle(packed: np.ndarray, p: int) -> np.ndarray:
    """A symmetric p×p matrix from its row-major upper triangle."""
    out = np.zeros((p, p))
    iu = np.triu_indices(p)
    out[iu] = packed
    out.T[iu] = packed
    return out


@dataclass
class PooledStratum:
    """One stratum's pooled event steps, and (after an iteration) its pooled risk-set sums."""

    label: tuple[str, ...]
    times: np.ndarray
    events: np.ndarray
    event_sum: np.ndarray  # Σ over events of the raw covariates
    sites: tuple[str, ...]
    n: int
    S0: np.ndarray | None = None
    S1: np.ndarray | None = None
    S2: np.ndarray | None = None  # packed upper triangle per time
    D0: np.ndarray | None = None  # Efron: event sums at tied times only
    D1: np.ndarray | None = None
    D2: np.ndarray | None = None

    @property
    def tied(self) -> np.ndarray:
        return self.events > 1


@dataclass(frozen=True)
class TimeWeights:
    """Per grid time of one stratum: the coefficients of the sums in gradient and Hessian.

    With φ_l = S0 - a_l·D0 for the l-th of the d events at a time (a_l = l/d under Efron, 0 under
    Breslow): c1 = Σ 1/φ, c3 = Σ 1/φ², and at tied times c2 = Σ a/φ, c4 = Σ a/φ², c5 = Σ a²/φ²
    (zero elsewhere). ``log_phi`` is Σ log φ over the stratum.
    """

    c1: np.ndarray
    c2: np.ndarray
    c3: np.ndarray
    c4: np.ndarray
    c5: np.ndarray
    log_phi: float


def time_weights(st: PooledStratum, ties: str) -> TimeWeights:
    """:class:`TimeWeights` from a stratum's pooled S0 (and D0 at tied times), vectorised."""
    s0, d = st.S0, st.events.astype(float)
    assert s0 is not None
    t = len(d)
    c1, c3 = d / s0, d / s0**2
    c2, c4, c5 = np.zeros(t), np.zeros(t), np.zeros(t)
    log_phi = float((d * np.log(s0)).sum())
    if ties == "efron" and st.tied.any():
        tied = st.tied
        assert st.D0 is not None
        dt = st.events[tied].astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(dt)[:-1]))
        rep = np.repeat(np.arange(len(dt)), dt)
        a = (np.arange(int(dt.sum())) - starts[rep]) / dt[rep]
        phi = s0[tied][rep] - a * st.D0[rep]
        inv = 1.0 / phi
        sums = np.add.reduceat(
            np.stack([inv, a * inv, inv**2, a * inv**2, a**2 * inv**2]), starts, axis=1
        )
        c1[tied], c2[tied], c3[tied], c4[tied], c5[tied] = sums
        log_phi += float(np.log(phi).sum()) - float((d[tied] * np.log(s0[tied])).sum())
    return TimeWeights(c1, c2, c3, c4, c5, log_phi)


def _wsum(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Σ_t c_t·a_t (einsum's own loops: a multithreaded BLAS call would cost more here)."""
    return np.einsum("t,tk->k", c, a)


def _wouter(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_t c_t·a_t·b_tᵀ."""
    return np.einsum("t,ti,tj->ij", c, a, b)


def evaluate(
    strata: Sequence[PooledStratum],
    beta: np.ndarray,
    event_sums: Sequence[np.ndarray],
    ties: str,
    weighted_s2: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, list[TimeWeights]]:
    """Log partial likelihood, gradient and Hessian (standardised units) from pooled sums.

    ``event_sums[i]`` is Σ over the events of stratum i of the standardised covariates. The Hessian
    needs Σ_t c1·S2 - c2·D2: from the pooled per-time S2 and D2 when the sites sent them, else
    ``weighted_s2`` (the sites' ``cox_hessian`` replies, summed) for the weights returned here.
    """
    p = len(beta)
    ll = 0.0
    grad = np.zeros(p)
    info = np.zeros((p, p))  # minus the Hessian
    weights = []
    for st, esum in zip(strata, event_sums, strict=True):
        assert st.S1 is not None
        cw = time_weights(st, ties)
        weights.append(cw)
        s1 = st.S1
        ll += float(beta @ esum) - cw.log_phi
        grad += esum - _wsum(cw.c1, s1)
        info -= _wouter(cw.c3, s1, s1)
        if weighted_s2 is None:
            assert st.S2 is not None
            info += unpack_triangle(_wsum(cw.c1, st.S2), p)
        if ties == "efron" and st.tied.any():
            tied = st.tied
            e1 = st.D1
            assert e1 is not None
            grad += _wsum(cw.c2[tied], e1)
            cross = _wouter(cw.c4[tied], s1[tied], e1)
            info += cross + cross.T - _wouter(cw.c5[tied], e1, e1)
            if weighted_s2 is None:
                assert st.D2 is not None
                info -= unpack_triangle(_wsum(cw.c2[tied], st.D2), p)
    if weighted_s2 is not None:
        info += weighted_s2
    return ll, grad, -info, weights


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


# -- the fit ---------------------------------------------------------------------------------
@dataclass
class CoxFit:
    """The pooled fit in standardised units (``beta``; ``params = beta / scale``)."""

    columns: list[str]
    beta: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    log_likelihood: float
    log_likelihood_null: float
    iterations: int
    converged: bool
    strata: list[PooledStratum]
    sites: tuple[str, ...]
    n: int
    n_events: int
    time_step: float | None
    unit: str | None


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


def _pool_strata(setups: dict[str, Payload], by_site: bool) -> list[PooledStratum]:
    grouped: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for site, payload in setups.items():
        for st in payload["strata"]:
            label = (site,) if by_site else tuple(st["label"])
            grouped.setdefault(label, []).append((site, st))
    out = []
    for label in sorted(grouped):
        parts = grouped[label]
        times = np.unique(np.concatenate([np.asarray(st["times"], float) for _, st in parts]))
        events = np.zeros(len(times), dtype=np.int64)
        event_sum = None
        for _, st in parts:
            t = np.asarray(st["times"], dtype=float)
            events[np.searchsorted(times, t)] += np.asarray(st["events"], dtype=np.int64)
            es = np.asarray(st["event_sum"], dtype=float)
            event_sum = es if event_sum is None else event_sum + es
        out.append(
            PooledStratum(
                label=label,
                times=times,
                events=events,
                event_sum=event_sum,  # type: ignore[arg-type]
                sites=tuple(s for s, _ in parts),
                n=int(sum(int(st["n"]) for _, st in parts)),
            )
        )
    return out


def sum_bytes(strata: Sequence[PooledStratum], p: int, ties: str) -> int:
    """Bytes of one site's one-round reply per iteration: 8·(T·(1+p+q) + T_tied·(1+p+q) for Efron)."""
    per_time = 1 + p + p * (p + 1) // 2
    times = sum(len(st.times) for st in strata)
    tied = sum(int(st.tied.sum()) for st in strata) if ties == "efron" else 0
    return 8 * per_time * (times + tied)


def fit_cox(
    q: Ask,
    spec: CoxSpec,
    levels: dict[str, list[str]],
    *,
    precision: float = 1e-7,
    r_precision: float = 1e-9,
    max_steps: int = 500,
    protocol: str | None = None,
) -> CoxFit:
    """Run the setup round and the Newton iterations; return the pooled fit.

    ``protocol``: ``"one_round"`` (each site sends S0, S1, S2 and the Efron event sums at every
    grid time: gradient and Hessian in one reply per iteration) or ``"two_rounds"`` (the sites send
    S0, S1 (and D0, D1), then, for weights computed from the pooled S0, the contracted
    Σ c1·S2 - c2·D2 as one p×p matrix). ``None`` picks one round unless its replies would exceed
    :data:`ONE_ROUND_MAX_BYTES` per site (exact times on large data).
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
    grid = None
    if not by_site:
        grid = [
            {"label": list(st.label), "times": st.times, **({"tied": st.tied} if efron else {})}
            for st in strata
        ]
    index = {st.label: st for st in strata}
    p = len(columns)
    q_len = p * (p + 1) // 2
    if protocol is None:
        protocol = (
            "one_round" if sum_bytes(strata, p, spec.ties) <= ONE_ROUND_MAX_BYTES else "two_rounds"
        )
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
            "grid": grid,
        }

    def ask_sums(beta: np.ndarray) -> None:
        replies = q.ask("cox_sums", {**step_params(beta), "parts": "first" if split else "all"})
        check_replies(replies)
        for st in strata:
            t, nt = len(st.times), int(st.tied.sum())
            st.S0, st.S1 = np.zeros(t), np.zeros((t, p))
            st.S2 = None if split else np.zeros((t, q_len))
            if efron:
                st.D0, st.D1 = np.zeros(nt), np.zeros((nt, p))
                st.D2 = None if split else np.zeros((nt, q_len))
        for site, payload in replies.items():
            for item in payload["strata"]:
                st = index[(site,) if by_site else tuple(item["label"])]
                for name in ("S0", "S1", "S2", "D0", "D1", "D2"):
                    if getattr(st, name) is not None:
                        getattr(st, name)[...] += np.asarray(item[name], dtype=float)

    def ask_hessian(beta: np.ndarray, weights: list[TimeWeights]) -> np.ndarray:
        items = [
            {"label": list(st.label), "c1": w.c1, **({"c2": w.c2[st.tied]} if efron else {})}
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
        ll, grad, _, weights = evaluate(strata, beta, event_sums, spec.ties, np.zeros((p, p)))
        if not (np.isfinite(ll) and np.isfinite(grad).all()):
            return ll, grad, np.full((p, p), np.nan)
        weighted = ask_hessian(beta, weights)
        _, _, hess, _ = evaluate(strata, beta, event_sums, spec.ties, weighted)
        return ll, grad, hess

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
    step_info = next(iter(setups.values()))
    return CoxFit(
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


# -- result ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LikelihoodRatioTest:
    """lifelines' ``StatisticalResult`` naming: the model against the model without covariates."""

    test_statistic: float
    degrees_of_freedom: int
    p_value: float
    test_name: str = "log-likelihood ratio test"

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "test_statistic": [self.test_statistic],
                "p": [self.p_value],
                "-log2(p)": [-np.log2(self.p_value) if self.p_value > 0 else np.inf],
            }
        )


def summary_frame(params: pd.Series, variance: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """lifelines' ``CoxPHFitter.summary`` columns from coefficients and their covariance."""
    se = np.sqrt(np.diag(variance.to_numpy()))
    z_crit = stats.norm.ppf(1 - alpha / 2)
    ci = f"{100 * (1 - alpha):g}%"
    coef = params.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        z = coef / se
        p = stats.chi2.sf(z**2, 1)
        df = pd.DataFrame(index=params.index)
        df["coef"] = coef
        df["exp(coef)"] = np.exp(coef)
        df["se(coef)"] = se
        df[f"coef lower {ci}"] = coef - z_crit * se
        df[f"coef upper {ci}"] = coef + z_crit * se
        df[f"exp(coef) lower {ci}"] = np.exp(coef) * np.exp(-z_crit * se)
        df[f"exp(coef) upper {ci}"] = np.exp(coef) * np.exp(z_crit * se)
        df["cmp to"] = np.zeros_like(coef)
        df["z"] = z
        df["p"] = p
        df["-log2(p)"] = -np.log2(p)
    return df


@dataclass(frozen=True)
class CoxResult:
    """A pooled Cox proportional-hazards fit, named as lifelines' ``CoxPHFitter``.

    ``summary`` (coef, exp(coef), se(coef), 95 % intervals, z, p), ``params_``, ``variance_matrix_``,
    ``log_likelihood_`` and :meth:`log_likelihood_ratio_test`; ``privacy`` says what each site
    released, and ``notes`` how the fit may differ from one on the pooled rows.
    """

    summary: pd.DataFrame
    params_: pd.Series
    variance_matrix_: pd.DataFrame
    log_likelihood_: float
    log_likelihood_null_: float
    duration: str
    event: str
    covariates: tuple[str, ...]
    strata: str | tuple[str, ...] | None
    ties: str
    iterations: int
    converged: bool
    n_sites: int
    n_observations: int
    n_events: int
    privacy: PrivacyReport
    notes: tuple[str, ...] = ()
    time_step: float | None = None
    unit: str | None = None
    fit: CoxFit | None = field(default=None, repr=False, compare=False)

    @property
    def params(self) -> pd.Series:
        """The coefficients (log hazard ratios), one per design column."""
        return self.params_

    @property
    def standard_errors_(self) -> pd.Series:
        return self.summary["se(coef)"].rename("se")

    @property
    def hazard_ratios_(self) -> pd.Series:
        return np.exp(self.params_).rename("exp(coef)")

    @property
    def confidence_intervals_(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "95% lower-bound": self.summary["coef lower 95%"],
                "95% upper-bound": self.summary["coef upper 95%"],
            }
        )

    @property
    def log_likelihood(self) -> float:
        return self.log_likelihood_

    @property
    def columns(self) -> list[str]:
        """The design columns (a categorical covariate gives one per non-reference level)."""
        return list(self.params_.index)

    def log_likelihood_ratio_test(self) -> LikelihoodRatioTest:
        """The fitted model against the model without covariates (chi-squared, df = #params)."""
        stat = 2 * self.log_likelihood_ - 2 * self.log_likelihood_null_
        dof = len(self.params_)
        return LikelihoodRatioTest(float(stat), dof, float(stats.chi2.sf(stat, dof)))

    def _model_table(self) -> pd.DataFrame:
        lr = self.log_likelihood_ratio_test()
        rows = {
            "duration / event": f"{self.duration} / {self.event}",
            "strata": self.strata if isinstance(self.strata, str) else ", ".join(self.strata or ()),
            "ties": self.ties,
            "sites": self.n_sites,
            "observations": self.n_observations,
            "events": self.n_events,
            "partial log-likelihood": round(self.log_likelihood_, 4),
            "LR test (df)": f"{lr.test_statistic:.4g} ({lr.degrees_of_freedom})",
            "LR test p": f"{lr.p_value:.4g}",
            "iterations": self.iterations,
        }
        if not self.strata:
            rows.pop("strata")
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def _title(self) -> str:
        return f"Cox model: {self.duration} / {self.event} on '{self.privacy.dataset}'"

    def _footnote(self) -> str:
        grid = (
            "exact times"
            if self.time_step is None
            else f"times on each site's grid of {self.time_step:g} {self.unit or 'units'}"
        )
        return f"{grid}; ties by {self.ties.capitalize()}; pooled from the sites' risk-set sums."

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        return result_html(
            self._title(),
            self.summary,
            self.privacy,
            extra_tables=[("Model", self._model_table())],
            footnote=self._footnote(),
        )

    def widget(self) -> Any:
        """This result as an interactive widget: the coefficients table, the model and the privacy panel."""
        from fedhem_kernel.display.state import table_state
        from fedhem_kernel.display.widgets import ResultTableWidget

        return ResultTableWidget(
            self._title(),
            [table_state(self.summary, "coefficients"), table_state(self._model_table(), "model")],
            self.privacy,
            footnote=self._footnote(),
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        coefs = ", ".join(f"{c}={v:.4g}" for c, v in self.params_.items())
        return (
            f"CoxResult({self.duration}, {self.event}; {coefs}; "
            f"log-likelihood {self.log_likelihood_:.4f}; {self.privacy!r})"
        )


def build_cox_result(q: Ask, spec: CoxSpec, fit: CoxFit) -> CoxResult:
    index = pd.Index(fit.columns, name="covariate")
    params = pd.Series(fit.beta / fit.scale, index=index, name="coef")
    variance = -np.linalg.inv(fit.hessian) / np.outer(fit.scale, fit.scale)
    variance_df = pd.DataFrame(variance, index=index, columns=index)
    if fit.time_step is not None:
        q.note(
            "times were coarsened to each site's grid and small steps merged before anything "
            "left a site: this is a Cox fit on grouped times and may differ from a fit on exact "
            "times (on public data, by a small fraction of a standard error; see the docs)"
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
    )


def run_cox(
    q: Ask,
    duration: str,
    event: str,
    covariates: Sequence[str],
    strata: str | Sequence[str] | None = None,
    ties: str = "efron",
    categorical: Sequence[str] = (),
) -> CoxResult:
    """Fit the pooled Cox model; ``categorical`` names the covariates to dummy-code."""
    spec = check_cox_params(duration, event, covariates, strata, ties, categorical)
    levels: dict[str, list[str]] = {}
    for column in spec.categorical:
        levels[column] = list(require_levels(q, column, minimum=2) or [])
    if spec.ties == "efron":
        fit = fit_cox(q, spec, levels)
    else:
        fit = fit_cox(q, spec, levels, precision=BRESLOW_PRECISION, r_precision=BRESLOW_PRECISION)
    return build_cox_result(q, spec, fit)


STEPS = [
    SiteStep(
        "cox_setup",
        "cox",
        site_cox_setup,
        param_columns("duration", "event", "covariates", "strata"),
    ),
    SiteStep(
        "cox_sums",
        "cox",
        site_cox_sums,
        param_columns("duration", "event", "covariates", "strata"),
    ),
    SiteStep(
        "cox_hessian",
        "cox",
        site_cox_hessian,
        param_columns("duration", "event", "covariates", "strata"),
    ),
]
