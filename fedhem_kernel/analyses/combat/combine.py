"""Combine step of ``combat``: B̂, the empirical-Bayes batch effects (neuroCombat's it_sol and int_eprior)
from per-batch moments, and the harmonisation round.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.linalg as la
import pandas as pd

from fedhem_kernel.analyses.combat import CATEGORICAL_DTYPES, MAX_SUFFIX, SOURCE
from fedhem_kernel.analyses.combat.combine_dp import run_dp
from fedhem_kernel.analyses.combat.params import CombatSpec, column_names, combat_spec
from fedhem_kernel.analyses.combat.result import CombatResult
from fedhem_kernel.analyses.common.combine_catalog import catalog_columns
from fedhem_kernel.analyses.common.combine_dp import dp_release
from fedhem_kernel.analyses.common.params import check_features, check_numeric_features
from fedhem_kernel.analyses.levels import SITE_COLUMN
from fedhem_kernel.analyses.levels.combine import agree_levels
from fedhem_kernel.errors import FedHemError, ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION
from fedhem_kernel.protocol.query import Ask, Payload

MAX_IT_SOL = 10_000  # neuroCombat's it_sol has no cap; it converges in a few dozen rounds


# -- combine side: neuroCombat's estimates from per-batch moments ---------------------------------
def _aprior(delta_hat: np.ndarray) -> float:
    m = np.mean(delta_hat)
    s2 = np.var(delta_hat, ddof=1)
    return (2 * s2 + m**2) / float(s2)


def _bprior(delta_hat: np.ndarray) -> float:
    m = delta_hat.mean()
    s2 = np.var(delta_hat, ddof=1)
    return (m * s2 + m**3) / s2


def _postmean(g_hat: Any, g_bar: Any, n: Any, d_star: Any, t2: Any) -> Any:
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _postvar(sum2: np.ndarray, n: float, a: float, b: float) -> np.ndarray:
    return (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)


def it_sol(
    n: int,
    g_hat: np.ndarray,
    m2: np.ndarray,
    d_hat: np.ndarray,
    g_bar: float,
    t2: float,
    a: float,
    b: float,
    conv: float = 0.0001,
) -> tuple[np.ndarray, np.ndarray, int]:
    """neuroCombat's ``it_sol`` for one batch from its moments: n rows, per feature the mean
    ``g_hat`` and the centred sum of squares ``m2`` of the standardised data.

    Returns γ*, δ* and the number of rounds run.
    """
    g_old = g_hat.copy()
    d_old = d_hat.copy()
    change = 1.0
    count = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while change > conv and count < MAX_IT_SOL:
            g_new = _postmean(g_hat, g_bar, n, d_old, t2)
            sum2 = m2 + n * (g_hat - g_new) ** 2  # = Σ(s - g_new)² over the batch's rows
            d_new = _postvar(sum2, n, a, b)
            change = max((abs(g_new - g_old) / g_old).max(), (abs(d_new - d_old) / d_old).max())
            g_old = g_new
            d_old = d_new
            count += 1
    return g_new, d_new, count


def int_eprior(
    n: int, g_hat: np.ndarray, m2: np.ndarray, d_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """neuroCombat's non-parametric ``int_eprior`` for one batch, from its moments.

    For feature i, the likelihood of its rows under every other feature's (γ̂_j, δ̂_j) with
    Σ(s_i - γ̂_j)² = m2_i + n(γ̂_i - γ̂_j)², weights normalised in log space.
    """
    p = len(g_hat)
    sum2 = m2[:, None] + n * (g_hat[:, None] - g_hat[None, :]) ** 2  # (i, j)
    log_lh = -(n / 2.0) * np.log(2 * math.pi * d_hat)[None, :] - sum2 / (2 * d_hat[None, :])
    log_lh[np.arange(p), np.arange(p)] = -np.inf  # feature i leaves itself out
    w = np.exp(log_lh - log_lh.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w @ g_hat, w @ d_hat


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"'{name}' must be True or False")
    return value


def _stack(payloads: dict[str, Payload], sites: list[str], key: str, width: int) -> np.ndarray:
    parts = []
    for s in sites:
        arr = np.asarray(payloads[s][key], dtype=float)
        parts.append(arr.reshape(len(payloads[s]["batches"]), width))
    return np.vstack(parts)


def _sd(n: np.ndarray, m2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n[:, None] > 1, np.sqrt(m2 / (n[:, None] - 1)), np.nan)


def _confounded(xtx: np.ndarray, n_batches: int, owners: list[str]) -> str | None:
    """The first covariate whose design columns make XᵀX singular (None: full rank)."""
    size = len(xtx)
    if np.linalg.matrix_rank(xtx) == size:
        return None
    for j in range(n_batches, size):
        sub = xtx[: j + 1, : j + 1]
        if np.linalg.matrix_rank(sub) < j + 1:
            return owners[j - n_batches]
    return owners[-1] if owners else None


def run(
    q: Ask,
    features: Sequence[str] | str,
    batch: str | None = None,
    covariates: Sequence[str] | str = (),
    *,
    suffix: str = "_combat",
    eb: bool = True,
    parametric: bool = True,
    mean_only: bool = False,
) -> CombatResult:
    """ComBat across the sites' batches; the harmonised values stay at the sites as columns.

    Sites that dropped out of this run keep no columns of it: they are told to drop those of an
    earlier run (``combat_clear``).
    """
    feats = [features] if isinstance(features, str) else features
    feats = list(feats) if hasattr(feats, "__iter__") else feats  # else: an error names it
    covs = [covariates] if isinstance(covariates, str) else covariates
    covs = list(covs) if hasattr(covs, "__iter__") else covs
    types: dict[str, tuple[str, str]] = {}
    for row in catalog_columns(q):
        known = types.get(row["column"], ("", ""))[0] in CATEGORICAL_DTYPES
        if row["column"] not in types or (row["dtype"] in CATEGORICAL_DTYPES and not known):
            types[row["column"]] = (str(row["dtype"]), str(row["site"]))  # first site saying so
    release = dp_release(q, RESOLUTION)
    if release is not None:
        result = run_dp(q, feats, batch, covs, suffix, eb, parametric, mean_only, release)
    else:
        result = _harmonise(
            q, feats, batch, covs, suffix, eb, parametric, mean_only, column_types=types
        )
    q.tell("combat_clear", {"columns": list(result.columns)}, q.dropped)
    return result


@dataclass(frozen=True)
class _Request:
    """A checked ComBat request: what the sites are asked (``base``) and how to combine."""

    base: Payload
    spec: CombatSpec
    batch: str | None
    covariates: tuple[str, ...]
    columns: list[str]
    eb: bool
    parametric: bool
    mean_only: bool


@dataclass(frozen=True)
class _Fit:
    """Round 1: the batches, their sizes and moments, and B̂ = (XᵀX)⁻¹XᵀY."""

    sites: list[str]
    pairs: list[list[str]]
    n_b: np.ndarray
    sum_y: np.ndarray
    m2_y: np.ndarray
    beta: np.ndarray
    grand_mean: np.ndarray

    @property
    def n_batches(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class _Effects:
    """Round 2: the pooled residual variance, the batch effects and their EB estimates."""

    var_pooled: np.ndarray
    gamma_hat: np.ndarray
    delta_hat: np.ndarray
    gamma_bar: np.ndarray
    t2: np.ndarray
    a_prior: np.ndarray | None
    b_prior: np.ndarray | None
    gamma_star: np.ndarray
    delta_star: np.ndarray
    notes: tuple[str, ...]

    def estimates(self, grand_mean: np.ndarray, features: list[str]) -> dict[str, Any]:
        """The result's estimates besides B̂ (the grand mean, pooled variance and EB pieces)."""
        return {
            "grand_mean": pd.Series(grand_mean, index=features, name="grand_mean"),
            "var_pooled": pd.Series(self.var_pooled, index=features, name="var_pooled"),
            "gamma_hat": self.gamma_hat,
            "delta_hat": self.delta_hat,
            "gamma_bar": self.gamma_bar,
            "t2": self.t2,
            "a_prior": self.a_prior,
            "b_prior": self.b_prior,
        }


def _harmonise(
    q: Ask,
    features: Sequence[str] | str,
    batch: str | None,
    covariates: Sequence[str] | str,
    suffix: str,
    eb: bool,
    parametric: bool,
    mean_only: bool,
    *,
    column_types: Mapping[str, tuple[str, str]],
) -> CombatResult:
    """``column_types`` maps a column to (dtype, a site that says so)."""
    req = _checked_request(
        q, features, batch, covariates, suffix, eb, parametric, mean_only, dict(column_types)
    )
    fit = _fit_design(q, req)
    effects = _batch_effects(q, req, fit)
    source = f"{SOURCE} {uuid.uuid4().hex[:12]}"
    # round 3: the sites harmonise their rows and keep them
    final = q.ask(
        "combat_apply",
        {
            **req.base,
            "batches": fit.pairs,
            "gamma_star": effects.gamma_star,
            "delta_star": effects.delta_star,
            "grand_mean": fit.grand_mean,
            "var_pooled": effects.var_pooled,
            "beta_cov": fit.beta[fit.n_batches :],
            "source": source,
        },
    )
    notes = list(effects.notes)
    missing_sites = [s for s in fit.sites if s not in final]
    if missing_sites:
        notes.append(
            "Sites " + ", ".join(missing_sites) + " took part in the fit but did not keep "
            "harmonised columns (see the privacy report)."
        )
    for note in notes:
        q.note(note)
    feats = req.spec.features
    return _result(
        q,
        req.spec,
        fit.pairs,
        fit.n_b,
        fit.sum_y,
        fit.m2_y,
        final,
        effects.gamma_star,
        effects.delta_star,
        columns=req.columns,
        estimates={
            "B_hat": pd.DataFrame(
                fit.beta,
                index=[_batch_name(pr, req.batch) for pr in fit.pairs] + _design_names(req.spec),
                columns=feats,
            ),
            **effects.estimates(fit.grand_mean, feats),
        },
        flags={"eb": req.eb, "parametric": req.parametric, "mean_only": req.mean_only},
        covariates=req.covariates,
        source=source,
        notes=tuple(notes),
    )


def _checked_request(
    q: Ask,
    features: Sequence[str] | str,
    batch: str | None,
    covariates: Sequence[str] | str,
    suffix: str,
    eb: bool,
    parametric: bool,
    mean_only: bool,
    types: dict[str, tuple[str, str]],
) -> _Request:
    """Check the researcher's arguments and agree the categorical covariates' levels."""
    feats = check_features(features)
    categorical_feats = [f for f in feats if types.get(f, ("", ""))[0] in CATEGORICAL_DTYPES]
    try:
        check_numeric_features(feats, categorical_feats, "ComBat", q.dataset)
    except ParameterError as exc:
        raise exc.with_site(types[exc.column][1]) if exc.column in types else exc from None
    if batch == SITE_COLUMN:
        batch = None
    if batch is not None and (not isinstance(batch, str) or not batch):
        raise ParameterError("'batch' must be a column name, or None for one batch per site")
    covs = column_names(covariates, "covariates")
    if not isinstance(suffix, str) or not suffix or len(suffix) > MAX_SUFFIX:
        raise ParameterError(
            f"'suffix' must be a non-empty text of at most {MAX_SUFFIX} characters"
        )
    eb = _bool(eb, "eb")
    parametric = _bool(parametric, "parametric")
    mean_only = _bool(mean_only, "mean_only")
    if eb and len(feats) < 2:
        raise ParameterError(
            "empirical Bayes pools each batch's effects across features: give at least two "
            "features, or eb=False",
            dataset=q.dataset,
        )
    columns = [f + suffix for f in feats]
    used = {*feats, *covs, *([batch] if batch else [])}
    clash = [c for c in columns if c in used]
    if clash:
        raise ParameterError(
            "a harmonised column would replace a feature or covariate: choose another suffix",
            dataset=q.dataset,
            column=clash[0],
        )
    categorical = [c for c in covs if types.get(c, ("", ""))[0] in CATEGORICAL_DTYPES]
    continuous = [c for c in covs if c not in categorical]
    base: Payload = {
        "features": feats,
        "batch": batch,
        "categorical": categorical,
        "continuous": continuous,
        "suffix": suffix,
    }
    combat_spec({**base, "levels": {c: [] for c in categorical}})  # names and overlaps first
    base["levels"] = {c: agree_levels(q, c) or [] for c in categorical}
    return _Request(base, combat_spec(base), batch, tuple(covs), columns, eb, parametric, mean_only)


def _fit_design(q: Ask, req: _Request) -> _Fit:
    """Round 1: XᵀX and XᵀY from per-batch sums; B̂ and the grand mean."""
    spec, batch = req.spec, req.batch
    p, qc = len(spec.features), spec.q
    owners = [c for c in spec.categorical for _ in spec.levels[c][1:]] + spec.continuous
    stats = q.ask("combat_stats", req.base)
    sites = sorted(stats)
    pairs = [[s, str(b)] for s in sites for b in stats[s]["batches"]]
    n_batches = len(pairs)
    if n_batches < 2:
        only = f"only site '{sites[0]}' released its data" if batch is None else "only one batch"
        raise ParameterError(
            f"ComBat needs at least two batches, {only} (see the privacy report)",
            site=sites[0],
            dataset=q.dataset,
            column=batch,
        )
    n_b = np.concatenate([np.asarray(stats[s]["n"], dtype=np.int64) for s in sites])
    n = int(n_b.sum())
    sum_y = _stack(stats, sites, "sum_y", p)
    m2_y = _stack(stats, sites, "m2_y", p)
    sum_c = _stack(stats, sites, "sum_c", qc)
    xtx = np.zeros((n_batches + qc, n_batches + qc))
    xtx[:n_batches, :n_batches] = np.diag(n_b.astype(float))
    xtx[:n_batches, n_batches:] = sum_c
    xtx[n_batches:, :n_batches] = sum_c.T
    xtx[n_batches:, n_batches:] = sum(
        np.asarray(stats[s]["ctc"], dtype=float).reshape(qc, qc) for s in sites
    )
    xty = np.vstack(
        [sum_y, sum(np.asarray(stats[s]["cty"], dtype=float).reshape(qc, p) for s in sites)]
    )
    culprit = _confounded(xtx, n_batches, owners)
    if culprit is not None:
        raise ParameterError(
            "this covariate is confounded with the batches or the other covariates (the design "
            "matrix is singular): ComBat cannot tell its effect from a batch effect",
            dataset=q.dataset,
            column=culprit,
        )
    beta = la.inv(xtx) @ xty  # neuroCombat: inv(XᵀX) Xᵀy per feature
    grand_mean = (n_b / float(n)) @ beta[:n_batches]
    return _Fit(sites, pairs, n_b, sum_y, m2_y, beta, grand_mean)


def _batch_effects(q: Ask, req: _Request, fit: _Fit) -> _Effects:
    """Round 2: residual moments per batch -> var_pooled, gamma_hat, delta_hat; then the EB
    estimates gamma_star, delta_star (neuroCombat's it_sol or int_eprior)."""
    p, n_batches = len(req.spec.features), fit.n_batches
    resid = q.ask(
        "combat_residuals",
        {
            **req.base,
            "batches": fit.pairs,
            "beta_batch": fit.beta[:n_batches],
            "beta_cov": fit.beta[n_batches:],
        },
    )
    _same_sites(q, fit.sites, resid)
    sum_e = _stack(resid, fit.sites, "sum_e", p)
    m2_e = _stack(resid, fit.sites, "m2_e", p)
    return batch_effects(q, req, fit, sum_e, m2_e)


def batch_effects(
    q: Ask, req: _Request, fit: _Fit, sum_e: np.ndarray, m2_e: np.ndarray
) -> _Effects:
    """var_pooled, gamma_hat, delta_hat and their EB estimates from the batches' residual sums
    (Σe, Σ(e - ē)² per batch and feature)."""
    feats, batch, n_b, n_batches = req.spec.features, req.batch, fit.n_b, fit.n_batches
    p, n = len(feats), float(fit.n_b.sum())
    var_pooled = (m2_e + sum_e**2 / n_b[:, None]).sum(axis=0) / n
    mean_square = (fit.m2_y + fit.sum_y**2 / n_b[:, None]).sum(axis=0) / n
    flat = [
        f for f, v, ms in zip(feats, var_pooled, mean_square, strict=True) if not v > 1e-24 * ms
    ]
    if flat:
        raise ParameterError(
            "the batches and covariates explain this feature exactly: nothing to harmonise",
            dataset=q.dataset,
            column=flat[0],
        )
    if not req.mean_only and (n_b < 2).any():
        raise ParameterError(
            "a batch of one patient has no variance: use mean_only=True or merge batches",
            site=fit.pairs[int(np.argmin(n_b))][0],
            dataset=q.dataset,
            column=batch,
        )
    sd = np.sqrt(var_pooled)
    gamma_hat = (sum_e / n_b[:, None] + fit.beta[:n_batches] - fit.grand_mean) / sd
    m2_s = m2_e / var_pooled
    if req.mean_only:
        delta_hat = np.ones((n_batches, p))
    else:
        delta_hat = m2_s / (n_b[:, None] - 1)
        delta_hat[delta_hat == 0] = 1  # neuroCombat's convert_zeroes
    gamma_bar = np.mean(gamma_hat, axis=1)
    t2 = np.var(gamma_hat, axis=1, ddof=1) if p > 1 else np.full(n_batches, np.nan)
    a_prior = b_prior = None
    if not req.mean_only and p > 1:
        a_prior = np.array([_aprior(d) for d in delta_hat])
        b_prior = np.array([_bprior(d) for d in delta_hat])
    gamma_star, delta_star = gamma_hat, delta_hat
    notes: list[str] = []
    if req.eb and req.parametric:
        if req.mean_only:
            gamma_star = np.array(
                [_postmean(gamma_hat[i], gamma_bar[i], 1, 1, t2[i]) for i in range(n_batches)]
            )
        else:
            gs, ds = [], []
            for i in range(n_batches):
                g, d, rounds = it_sol(
                    int(n_b[i]),
                    gamma_hat[i],
                    m2_s[i],
                    delta_hat[i],
                    gamma_bar[i],
                    t2[i],
                    a_prior[i],  # type: ignore[index]
                    b_prior[i],  # type: ignore[index]
                )
                if rounds >= MAX_IT_SOL:
                    notes.append(f"The EB iteration for batch {fit.pairs[i]} stopped at {rounds}.")
                gs.append(g)
                ds.append(d)
            gamma_star, delta_star = np.array(gs), np.array(ds)
    elif req.eb:
        gs, ds = [], []
        for i in range(n_batches):
            g, d = int_eprior(int(n_b[i]), gamma_hat[i], m2_s[i], delta_hat[i])
            gs.append(g)
            ds.append(d)
        gamma_star, delta_star = np.array(gs), np.array(ds)
    if not (
        np.isfinite(gamma_star).all() and np.isfinite(delta_star).all() and (delta_star > 0).all()
    ):
        raise ParameterError(
            "the empirical Bayes estimates are not finite (too few features or no spread of the "
            "batch effects across features): try eb=False",
            dataset=q.dataset,
        )
    return _Effects(
        var_pooled,
        gamma_hat,
        delta_hat,
        gamma_bar,
        t2,
        a_prior,
        b_prior,
        gamma_star,
        delta_star,
        tuple(notes),
    )


def _batch_name(pair: list[str], batch: str | None) -> str:
    return pair[0] if batch is None else f"{pair[0]}/{pair[1]}"


def _design_names(spec: CombatSpec) -> list[str]:
    return [f"{c}_{lv}" for c in spec.categorical for lv in spec.levels[c][1:]] + spec.continuous


def _same_sites(q: Ask, sites: list[str], payloads: dict[str, Payload]) -> None:
    gone = [s for s in sites if s not in payloads]
    if gone:
        raise FedHemError(
            "ComBat needs the same sites in every round; "
            + ", ".join(gone)
            + " stopped answering after the first (see the privacy report)",
            site=gone[0],
            dataset=q.dataset,
        )


def _result(
    q: Ask,
    spec: CombatSpec,
    pairs: list[list[str]],
    n_b: np.ndarray,
    sum_y: np.ndarray,
    m2_y: np.ndarray,
    final: dict[str, Payload],
    gamma_star: np.ndarray,
    delta_star: np.ndarray,
    *,
    columns: list[str],
    estimates: dict[str, Any],
    flags: dict[str, bool],
    covariates: tuple[str, ...],
    source: str,
    notes: tuple[str, ...],
    after: tuple[np.ndarray, np.ndarray] | None = None,
) -> CombatResult:
    feats = spec.features
    p = len(feats)
    if spec.batch is None:
        index = pd.Index([pr[0] for pr in pairs], name="site")
    else:
        index = pd.MultiIndex.from_tuples([tuple(pr) for pr in pairs], names=["site", spec.batch])
    effects = pd.concat(
        {
            "n": pd.DataFrame({"": n_b}, index=index),
            "gamma_star": pd.DataFrame(gamma_star, index=index, columns=feats),
            "delta_star": pd.DataFrame(delta_star, index=index, columns=feats),
        },
        axis=1,
    )
    for key in ("gamma_hat", "delta_hat"):
        estimates[key] = pd.DataFrame(estimates[key], index=index, columns=feats)
    for key in ("gamma_bar", "t2", "a_prior", "b_prior"):
        if estimates[key] is not None:
            estimates[key] = pd.Series(estimates[key], index=index, name=key)
    # before: round 1's moments; after: the final round's (sites that kept their columns)
    after_mean = np.full((len(pairs), p), np.nan)
    after_m2 = np.full((len(pairs), p), np.nan)
    if after is not None:  # DP mode: derived from the released moments (post-processing)
        after_mean, after_m2 = after
    row = {tuple(pr): i for i, pr in enumerate(pairs)}
    for site, payload in final.items():
        sums = np.asarray(payload["sum"], dtype=float).reshape(-1, p)
        m2 = np.asarray(payload["m2"], dtype=float).reshape(-1, p)
        counts = np.asarray(payload["n"], dtype=float)
        for j, name in enumerate(payload["batches"]):
            i = row[(site, str(name))]
            after_mean[i] = sums[j] / counts[j]
            after_m2[i] = m2[j]
    summary = pd.concat(
        {
            "n": pd.DataFrame(np.repeat(n_b[:, None], p, axis=1), index=index, columns=feats),
            "mean_before": pd.DataFrame(sum_y / n_b[:, None], index=index, columns=feats),
            "sd_before": pd.DataFrame(_sd(n_b, m2_y), index=index, columns=feats),
            "mean_after": pd.DataFrame(after_mean, index=index, columns=feats),
            "sd_after": pd.DataFrame(_sd(n_b, after_m2), index=index, columns=feats),
        },
        axis=1,
    )
    summary = summary.stack(level=1, future_stack=True)
    summary.index = summary.index.set_names([*index.names, "feature"])
    summary["n"] = summary["n"].astype("int64")
    return CombatResult(
        features=tuple(feats),
        columns=tuple(columns),
        batch_effects=effects,
        summary=summary,
        estimates=estimates,
        privacy=q.report(),
        dataset=q.dataset,
        batch=spec.batch,
        covariates=covariates,
        eb=flags["eb"],
        parametric=flags["parametric"],
        mean_only=flags["mean_only"],
        n_observations=int(n_b.sum()),
        where=q.where,
        source=source,
        notes=notes,
    )
