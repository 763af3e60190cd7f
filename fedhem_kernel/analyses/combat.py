"""ComBat harmonisation of batch (scanner, site) effects, computed from per-batch moments.

``fed.combat(dataset, features, batch=None, covariates=(), ...)`` removes additive and
multiplicative batch effects from numeric features (e.g. radiomic features) while preserving the
effects of ``covariates``, as neuroCombat's parametric empirical-Bayes ComBat (Johnson et al. 2007,
Fortin et al. 2018) on the pooled rows. Each site keeps its harmonised values as derived columns
``<feature><suffix>`` (``"_combat"`` by default); only per-batch aggregates leave it.

Batches: with ``batch=None`` each site is one batch (the usual scanner/site effect). With
``batch="scanner"`` a batch is a (site, value) pair: a batch never spans sites, so the same scanner
model at two hospitals is two batches.

Design (as neuroCombat's ``make_design_matrix``): one 0/1 column per batch, then for each
categorical covariate (category or bool columns) a 0/1 column for every level but the first in
sorted order (levels agreed across sites by the ``levels`` step), then the continuous covariates
(numeric columns) rounded to single precision as neuroCombat does (``dtype='float32'``).

Protocol (k = ``min_cell_count``):

1. ``combat_stats``: per batch of the site its size, Σy and the centred Σ(y - ȳ)² of every feature
   and the sums of the covariate columns; over the site CᵀC and CᵀY (C: covariate columns). With
   the batch one-hots these are the blocks of XᵀX and XᵀY. The coordinator solves
   B̂ = (XᵀX)⁻¹XᵀY (as neuroCombat, per feature) and the grand mean Σ_b (n_b / n) B̂_b.
2. ``combat_residuals`` (B̂ sent): per batch Σe and Σ(e - ē)² of the residuals e = y - xB̂. The
   coordinator gets ``var_pooled`` = Σe² / n (neuroCombat divides by n), and for the standardised
   data s = (y - grand mean - covariate effect) / √var_pooled = (e + B̂_b - grand mean) / √var_pooled
   of each batch its mean γ̂ and variance δ̂ (ddof=1, zeros set to 1), the priors (γ̄, τ² across
   features; neuroCombat's ``aprior``/``bprior``), and runs neuroCombat's ``it_sol`` iteration from
   these moments alone: Σ(s - γ)² = Σ(s - γ̂)² + n(γ̂ - γ)². ``eb=False`` keeps γ̂, δ̂;
   ``mean_only=True`` sets δ = 1 (and neuroCombat's posterior mean with n = 1);
   ``parametric=False`` is neuroCombat's ``int_eprior`` from the same moments, evaluated in log
   space (neuroCombat's product of densities underflows to NaN for batches of more than a few dozen
   patients).
   (The textbook's rounds "pooled variance" and "standardised moments" in one message: Σe and
   Σ(e - ē)² per batch hold both.)
3. ``combat_apply`` (γ*, δ*, B̂ of the covariates, grand mean, var_pooled sent): each site computes
   ((s - γ*_b) / √δ*_b) √var_pooled + grand mean + covariate effect for its rows, keeps it as
   derived columns (dtype float, source ``combat <id>``; missing outside the cohort and for rows
   left out) and releases per batch the size, Σ and Σ(x - x̄)² of the harmonised values (the
   summary).

Under ``Policy.unrestricted()`` and under the default policy (nothing is coarsened) the harmonised
values equal ``neuroCombat(dat, covars, batch_col, categorical_cols, continuous_cols, eb,
parametric, mean_only)["data"]`` on the pooled rows (``tests/test_combat.py``).

Release rules at the site (unless the policy is unrestricted):

- features and continuous covariates as :mod:`fedhem_kernel.analyses.feature_matrix` (numeric; no
  column on which all but 1..k-1 patients share one value; at least k rows);
- rows with a missing feature, covariate or batch value are left out (their harmonised value is
  missing): 0 or at least k of them (``min_subset_size``), and the rows used must not differ from an
  earlier released row set by 1..k-1 patients (``differencing``);
- every batch at the site has at least k patients (``min_cell_count``, naming the batch column);
  every level of a categorical covariate has 0 or at least k patients in each batch, and no level
  outside the agreed ones (``min_cell_count``, naming the covariate): every Σ released is over 0
  or at least k rows;
- ``max_parameters``: at least 10 patients per design column the site's rows touch (its batches and
  the covariate columns), as Cox and PCA: XᵀX and XᵀY of few rows would pin those rows down;
- ``differencing``: each batch and each (batch, level) row set is a released row set: one that
  differs from an earlier released set by 1..k-1 patients is refused, then remembered;
- at most ``max_levels`` batches at a site.

Residual risks: every site is sent B̂, γ* and δ* of every batch (what the researcher sees in
``batch_effects``), i.e. covariate-adjusted batch means of the other sites.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.linalg as la
import pandas as pd
from scipy import sparse

from fedhem_kernel.analyses.feature_matrix import (
    check_features,
    check_matrix,
    check_numeric_features,
    check_vector,
    feature_matrix,
)
from fedhem_kernel.analyses.levels import SITE_COLUMN, agree_levels
from fedhem_kernel.errors import FedHemError, ParameterError, SchemaError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

CACHE = "combat"
SOURCE = "combat"
ROWS_PER_PARAMETER = 10
MAX_SUFFIX = 40
MAX_BATCHES = 10_000
MAX_IT_SOL = 10_000  # neuroCombat's it_sol has no cap; it converges in a few dozen rounds
CATEGORICAL_DTYPES = ("category", "bool")


# -- parameters (both sides) ----------------------------------------------------------------------
def _names(value: Any, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if names is None:
        return []
    if not isinstance(names, list | tuple) or not all(isinstance(c, str) and c for c in names):
        raise ParameterError(f"'{what}' must be a column name or a list of column names")
    if len(set(names)) != len(names):
        raise ParameterError(f"'{what}' names a column twice")
    return list(names)


@dataclass(frozen=True)
class _Spec:
    features: list[str]
    batch: str | None
    categorical: list[str]
    continuous: list[str]
    levels: dict[str, list[str]]

    @property
    def numeric(self) -> list[str]:
        return self.features + self.continuous

    @property
    def q(self) -> int:
        """Covariate columns of the design (one-hots of all levels but the first, then numbers)."""
        return sum(max(len(self.levels[c]) - 1, 0) for c in self.categorical) + len(self.continuous)


def _spec(params: Payload) -> _Spec:
    features = check_features(params.get("features"))
    batch = params.get("batch")
    if batch is not None and (not isinstance(batch, str) or not batch):
        raise ParameterError("'batch' must be a column name or None (each site is one batch)")
    categorical = _names(params.get("categorical"), "categorical")
    continuous = _names(params.get("continuous"), "continuous")
    used = features + categorical + continuous + ([batch] if batch else [])
    if len(set(used)) != len(used):
        raise ParameterError("a column is named twice among features, batch and covariates")
    if SITE_COLUMN in used:
        raise ParameterError("'site' is the batch when batch=None; it cannot be a feature")
    raw = params.get("levels") or {}
    if not isinstance(raw, Mapping):
        raise ParameterError("'levels' must map categorical covariates to lists of levels")
    levels: dict[str, list[str]] = {}
    for c in categorical:
        lv = raw.get(c)
        if not isinstance(lv, list | tuple) or not all(isinstance(v, str) for v in lv):
            raise ParameterError("'levels' must list the agreed levels of each categorical column")
        if len(set(lv)) != len(lv):
            raise ParameterError("'levels' names a level twice", column=c)
        levels[c] = list(lv)
    return _Spec(features, batch, categorical, continuous, levels)


def _combat_columns(params: Payload) -> list[str]:
    return param_columns("features", "batch", "categorical", "continuous")(params)


# -- site side ------------------------------------------------------------------------------------
@dataclass
class _Design:
    """A site's rows for ComBat (never leaves the site)."""

    spec: _Spec
    complete: np.ndarray  # (cohort rows,) bool: the rows used
    y: np.ndarray  # (n, p) features
    c: np.ndarray  # (n, q) covariate columns of the design
    batch: np.ndarray  # (n,) index into names
    names: list[str]  # this site's batches (sorted values; the site's name when batch=None)
    counts: np.ndarray  # (B_s,) rows per batch
    indicator: sparse.csr_matrix  # (B_s, n) batch membership

    def by_batch(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per batch: Σv and the centred Σ(v - v̄)² of every column (B_s x columns each)."""
        sums = np.asarray(self.indicator @ v)
        dev = v - (sums / self.counts[:, None])[self.batch]
        return sums, np.asarray(self.indicator @ (dev * dev))


def _batch_labels(data: SiteData, spec: _Spec) -> np.ndarray:
    """Each cohort row's batch name (object array, None where missing)."""
    if spec.batch is None:
        return np.full(len(data.cohort), data.site, dtype=object)
    labels = data.labels(spec.batch)  # refuses a continuous column, names it
    return labels.to_numpy(dtype=object)


def _members(d: _Design, rows: np.ndarray) -> np.ndarray:
    """Cohort-row flags of the given design rows."""
    sel = np.zeros(len(d.complete), dtype=bool)
    sel[np.flatnonzero(d.complete)[rows]] = True
    return sel


def _design(data: SiteData, params: Payload) -> _Design:
    """Check every release rule and build this site's design (raises on any refusal)."""
    spec = _spec(params)
    k = data.k
    labels = _batch_labels(data, spec)
    missing = pd.isna(labels)
    first = spec.batch if missing.any() else None
    cat_labels: dict[str, np.ndarray] = {}
    for column in spec.categorical:
        lab = data.labels(column).to_numpy(dtype=object)
        miss = pd.isna(lab)
        if first is None and miss.any():
            first = column
        missing |= miss
        cat_labels[column] = lab
    for column in spec.numeric:
        miss = np.isnan(data.numeric(column))  # raises for a text column, naming it
        if first is None and miss.any():
            first = column
        missing |= miss
    complete = data.complete_rows(missing, first, "the features, covariates and batch")
    dropped = int(np.count_nonzero(missing))
    sub = dataclasses.replace(data, cohort=data.cohort[complete]) if dropped else data
    fm = feature_matrix(sub, spec.numeric, CACHE)  # numeric checks, one-hot attack, n >= k
    p = len(spec.features)
    y = fm.x[:, :p]
    n = len(y)

    names_arr, batch = np.unique(labels[complete].astype(str), return_inverse=True)
    names = [str(v) for v in names_arr]
    n_batches = len(names)
    if n_batches > min(data.policy.max_levels, MAX_BATCHES) and not data.policy.is_unrestricted:
        raise data.refuse(
            "max_levels",
            f"more than {data.policy.max_levels} batches at this site: not a batch variable",
            spec.batch,
        )
    counts = np.bincount(batch, minlength=n_batches)
    if k > 1 and (counts < k).any():
        raise data.refuse(
            "min_cell_count",
            f"a batch has fewer than {k} patients with every feature and covariate at this site "
            "(merge it with another batch, or leave it out with where=)",
            spec.batch,
        )

    blocks: list[np.ndarray] = []
    cells: list[np.ndarray] = []  # (batch, level) codes of each categorical covariate
    for column in spec.categorical:
        levels = spec.levels[column]
        lab = cat_labels[column][complete]
        code = pd.Categorical(lab, categories=levels).codes.astype(np.intp)
        if (code < 0).any():
            raise data.refuse(
                "min_cell_count",
                f"a category of '{column}' has fewer than {k} patients at every site and is not "
                "named (merge rare categories, or leave the column out)",
                column,
            )
        cell = batch * len(levels) + code
        per_cell = np.bincount(cell, minlength=n_batches * len(levels))
        if k > 1 and ((per_cell > 0) & (per_cell < k)).any():
            raise data.refuse(
                "min_cell_count",
                f"a category of '{column}' has fewer than {k} patients in a batch at this site "
                "(merge rare categories, or leave the column out)",
                column,
            )
        cells.append(cell)
        if len(levels) > 1:  # neuroCombat: one-hot of the sorted levels without the first
            blocks.append((code[:, None] == np.arange(1, len(levels))).astype(float))
    if spec.continuous:  # neuroCombat builds these design columns with dtype='float32'
        blocks.append(fm.x[:, p:].astype(np.float32).astype(float))
    c = np.hstack(blocks) if blocks else np.empty((n, 0))
    if k > 1 and n < ROWS_PER_PARAMETER * (n_batches + c.shape[1]):
        raise data.refuse(
            "max_parameters",
            f"{n_batches + c.shape[1]} design columns need at least "
            f"{ROWS_PER_PARAMETER * (n_batches + c.shape[1])} patients with every feature and "
            "covariate at this site",
        )
    d = _Design(
        spec,
        complete,
        y,
        c,
        batch,
        names,
        counts,
        sparse.csr_matrix((np.ones(n), (batch, np.arange(n))), shape=(n_batches, n)),
    )
    _guard(data, d, cells)
    return d


def _guard(data: SiteData, d: _Design, cells: list[np.ndarray]) -> None:
    """Refuse when a batch or (batch, level) row set is within k of an earlier release."""
    if data.guard is None:
        return
    sets = [] if len(d.names) == 1 else [d.batch == b for b in range(len(d.names))]
    for cell in cells:
        sets += [cell == v for v in np.unique(cell)]
    flags = [_members(d, np.flatnonzero(s)) for s in sets]
    if any(data.near_released(f) for f in flags):
        raise data.refuse(
            "differencing",
            f"a batch or a category within a batch differs from an earlier released row set by "
            f"fewer than {data.k} patients",
        )
    if not d.complete.all():  # rows were left out: the kept ones are a released row set too
        flags.append(d.complete)
    for f in flags:
        data.remember_released(f)


def _check_names(data: SiteData, params: Payload, spec: _Spec) -> list[str]:
    """The derived column names (``<feature><suffix>``); none may be a loaded column here."""
    suffix = params.get("suffix")
    if not isinstance(suffix, str) or not suffix or len(suffix) > MAX_SUFFIX:
        raise ParameterError(
            f"'suffix' must be a non-empty text of at most {MAX_SUFFIX} characters"
        )
    out = [f + suffix for f in spec.features]
    for name in out:
        col = data.schema.columns.get(name)
        if col is not None and col.derived is None:
            raise SchemaError(
                "the dataset has a column of this name of its own: choose another suffix",
                **data.err(name),
                rule="schema",
            )
    return out


def _own_rows(data: SiteData, params: Payload, d: _Design) -> np.ndarray:
    """Index of each of this site's batches in the coordinator's batch list."""
    batches = params.get("batches")
    if not isinstance(batches, list | tuple) or not 2 <= len(batches) <= MAX_BATCHES:
        raise ParameterError("'batches' must list at least two [site, batch] pairs")
    index: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(batches):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(v, str) for v in pair)
        ):
            raise ParameterError("'batches' must list [site, batch] pairs")
        index[(pair[0], pair[1])] = i
    try:
        return np.array([index[(data.site, name)] for name in d.names], dtype=np.intp)
    except KeyError:
        raise ParameterError(
            "the batches of this site are not those of the first round", **data.err(d.spec.batch)
        ) from None


def site_combat_stats(data: SiteData, params: Payload) -> Payload:
    """Round 1: per batch size, Σy, Σ(y - ȳ)², covariate sums; CᵀC and CᵀY over the site."""
    d = _design(data, params)
    _check_names(data, params, d.spec)
    sum_y, m2_y = d.by_batch(d.y)
    return {
        "batches": d.names,
        "n": d.counts.astype(np.int64),
        "sum_y": sum_y,
        "m2_y": m2_y,
        "sum_c": np.asarray(d.indicator @ d.c),
        "ctc": d.c.T @ d.c,
        "cty": d.c.T @ d.y,
    }


def site_combat_residuals(data: SiteData, params: Payload) -> Payload:
    """Round 2: per batch Σe and Σ(e - ē)² of the residuals e = y - x B̂."""
    d = _design(data, params)
    rows = _own_rows(data, params, d)
    p, q = d.y.shape[1], d.c.shape[1]
    n_all = len(params["batches"])
    beta_batch = check_matrix(params, "beta_batch", p, n_all, n_all)
    beta_cov = check_matrix(params, "beta_cov", p, q, q)
    e = d.y - beta_batch[rows][d.batch] - d.c @ beta_cov
    sum_e, m2_e = d.by_batch(e)
    return {"batches": d.names, "sum_e": sum_e, "m2_e": m2_e}


def site_combat_apply(data: SiteData, params: Payload) -> Payload:
    """Round 3: harmonise this site's rows, keep them as derived columns; per batch moments."""
    d = _design(data, params)
    names = _check_names(data, params, d.spec)
    rows = _own_rows(data, params, d)
    p, q = d.y.shape[1], d.c.shape[1]
    n_all = len(params["batches"])
    gamma = check_matrix(params, "gamma_star", p, n_all, n_all)
    delta = check_matrix(params, "delta_star", p, n_all, n_all)
    if not (delta > 0).all():
        raise ParameterError("'delta_star' must hold positive numbers")
    beta_cov = check_matrix(params, "beta_cov", p, q, q)
    grand_mean = check_vector(params, "grand_mean", p)
    var_pooled = check_vector(params, "var_pooled", p, positive=True)
    source = str(params.get("source") or SOURCE)[:80]
    # neuroCombat's order of operations (standardize, adjust_data_final)
    mod_mean = d.c @ beta_cov
    sd = np.sqrt(var_pooled)
    s = (d.y - grand_mean - mod_mean) / sd
    out = (s - gamma[rows][d.batch]) / np.sqrt(delta[rows])[d.batch]
    out = out * sd + grand_mean + mod_mean
    where = np.flatnonzero(d.complete)
    for j, name in enumerate(names):
        values = np.full(len(d.complete), np.nan)
        values[where] = out[:, j]
        data.derive(name, values, "float", source)
    if not d.complete.all():
        data.log.note("patients left out have no harmonised value")
    sums, m2 = d.by_batch(out)
    data.scratch.pop(CACHE, None)  # the last round: do not keep the matrix
    return {"batches": d.names, "n": d.counts.astype(np.int64), "sum": sums, "m2": m2}


def site_combat_clear(data: SiteData, params: Payload) -> Payload:
    """Drop this site's derived columns of an earlier ComBat run (it is not in the new one)."""
    for name in _names(params.get("columns"), "columns"):
        spec = data.schema.columns.get(name)
        if spec is not None and (spec.derived or "").startswith(SOURCE):
            data.derive(name, None, "float", "")
    return {}


STEPS = [
    SiteStep(name, "combat", fn, _combat_columns)
    for name, fn in (
        ("combat_stats", site_combat_stats),
        ("combat_residuals", site_combat_residuals),
        ("combat_apply", site_combat_apply),
    )
] + [SiteStep("combat_clear", "combat", site_combat_clear, lambda params: [])]


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


@dataclass(frozen=True)
class CombatResult:
    """ComBat harmonisation; the harmonised values stay at the sites as derived columns.

    ``features`` (harmonised), ``columns`` (their derived column names at the sites,
    ``<feature><suffix>``), ``batch_effects`` (per batch: size ``n``, then ``gamma_star`` and
    ``delta_star`` per feature: the additive and multiplicative batch effects removed, in units
    of the pooled residual SD), ``summary`` (per batch and feature: ``n``, mean and SD before and
    after, from the sites' released moments), ``estimates`` (neuroCombat's names: ``B_hat``,
    ``grand_mean``, ``var_pooled``, ``gamma_hat``, ``delta_hat``, ``gamma_bar``, ``t2``,
    ``a_prior``, ``b_prior``) and ``privacy``. Use the columns in later queries:
    ``fed.describe(dataset, result.columns)``, ``fed.kmeans(dataset, result.columns, k=3)``.
    """

    features: tuple[str, ...]
    columns: tuple[str, ...]
    batch_effects: pd.DataFrame
    summary: pd.DataFrame
    estimates: dict[str, Any]
    privacy: PrivacyReport
    dataset: str
    batch: str | None
    covariates: tuple[str, ...]
    eb: bool
    parametric: bool
    mean_only: bool
    n_observations: int
    where: str | None = None
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_batches(self) -> int:
        return len(self.batch_effects)

    @property
    def gamma_star(self) -> pd.DataFrame:
        """Additive batch effects (batch x feature, standardised units)."""
        return self.batch_effects["gamma_star"]

    @property
    def delta_star(self) -> pd.DataFrame:
        """Multiplicative batch effects (batch x feature; variance ratios)."""
        return self.batch_effects["delta_star"]

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        method = (
            "no empirical Bayes"
            if not self.eb
            else ("parametric" if self.parametric else "non-parametric") + " empirical Bayes"
        )
        return result_html(
            f"ComBat on '{self.dataset}': {len(self.features)} features, {self.n_batches} "
            f"batches, {self.n_observations} patients ({method}"
            + (", mean only)" if self.mean_only else ")"),
            self.batch_effects,
            self.privacy,
            footnote=(
                "Batch effects: gamma_star (additive) and delta_star (multiplicative), in units "
                "of the pooled residual SD. Harmonised values are kept at each site as columns "
                + ", ".join(f"'{c}'" for c in self.columns)
                + ". "
                + " ".join(self.notes)
            ),
            extra_tables=[("before and after, per batch", self.summary)],
        )

    def __repr__(self) -> str:
        return (
            f"CombatResult(features={list(self.features)}, columns={list(self.columns)}, "
            f"n_batches={self.n_batches}, n_observations={self.n_observations}\n"
            f"{self.batch_effects.to_string()}\n{self.privacy!r})"
        )


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


def run_combat(
    q: Ask,
    features: Sequence[str] | str,
    batch: str | None = None,
    covariates: Sequence[str] | str = (),
    *,
    suffix: str = "_combat",
    eb: bool = True,
    parametric: bool = True,
    mean_only: bool = False,
    column_types: Mapping[str, tuple[str, str]] | None = None,
) -> CombatResult:
    """Coordinator side of ``fed.combat``; ``column_types`` maps a column to (dtype, a site)."""
    types = dict(column_types or {})
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
    covs = _names(covariates, "covariates")
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
    source = f"{SOURCE} {uuid.uuid4().hex[:12]}"
    base: Payload = {
        "features": feats,
        "batch": batch,
        "categorical": categorical,
        "continuous": continuous,
        "suffix": suffix,
    }
    _spec({**base, "levels": {c: [] for c in categorical}})  # names and overlaps, before asking
    levels = {c: agree_levels(q, c) or [] for c in categorical}
    base["levels"] = levels
    spec = _spec(base)
    p, qc = len(feats), spec.q
    owners = [c for c in categorical for _ in levels[c][1:]] + continuous

    # round 1: XᵀX and XᵀY from per-batch sums
    stats = q.ask("combat_stats", base)
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

    # round 2: residual moments per batch -> var_pooled, gamma_hat, delta_hat
    resid = q.ask(
        "combat_residuals",
        {**base, "batches": pairs, "beta_batch": beta[:n_batches], "beta_cov": beta[n_batches:]},
    )
    _same_sites(q, sites, resid)
    sum_e = _stack(resid, sites, "sum_e", p)
    m2_e = _stack(resid, sites, "m2_e", p)
    var_pooled = (m2_e + sum_e**2 / n_b[:, None]).sum(axis=0) / n
    mean_square = (m2_y + sum_y**2 / n_b[:, None]).sum(axis=0) / n
    flat = [
        f for f, v, ms in zip(feats, var_pooled, mean_square, strict=True) if not v > 1e-24 * ms
    ]
    if flat:
        raise ParameterError(
            "the batches and covariates explain this feature exactly: nothing to harmonise",
            dataset=q.dataset,
            column=flat[0],
        )
    if not mean_only and (n_b < 2).any():
        raise ParameterError(
            "a batch of one patient has no variance: use mean_only=True or merge batches",
            site=pairs[int(np.argmin(n_b))][0],
            dataset=q.dataset,
            column=batch,
        )
    sd = np.sqrt(var_pooled)
    gamma_hat = (sum_e / n_b[:, None] + beta[:n_batches] - grand_mean) / sd
    m2_s = m2_e / var_pooled
    if mean_only:
        delta_hat = np.ones((n_batches, p))
    else:
        delta_hat = m2_s / (n_b[:, None] - 1)
        delta_hat[delta_hat == 0] = 1  # neuroCombat's convert_zeroes
    gamma_bar = np.mean(gamma_hat, axis=1)
    t2 = np.var(gamma_hat, axis=1, ddof=1) if p > 1 else np.full(n_batches, np.nan)
    a_prior = b_prior = None
    if not mean_only and p > 1:
        a_prior = np.array([_aprior(d) for d in delta_hat])
        b_prior = np.array([_bprior(d) for d in delta_hat])
    gamma_star, delta_star = gamma_hat, delta_hat
    notes: list[str] = []
    if eb and parametric:
        if mean_only:
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
                    notes.append(f"The EB iteration for batch {pairs[i]} stopped at {rounds}.")
                gs.append(g)
                ds.append(d)
            gamma_star, delta_star = np.array(gs), np.array(ds)
    elif eb:
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

    # round 3: the sites harmonise their rows and keep them
    final = q.ask(
        "combat_apply",
        {
            **base,
            "batches": pairs,
            "gamma_star": gamma_star,
            "delta_star": delta_star,
            "grand_mean": grand_mean,
            "var_pooled": var_pooled,
            "beta_cov": beta[n_batches:],
            "source": source,
        },
    )
    missing_sites = [s for s in sites if s not in final]
    if missing_sites:
        notes.append(
            "Sites " + ", ".join(missing_sites) + " took part in the fit but did not keep "
            "harmonised columns (see the privacy report)."
        )
    for note in notes:
        q.note(note)
    return _result(
        q,
        spec,
        pairs,
        n_b,
        sum_y,
        m2_y,
        final,
        gamma_star,
        delta_star,
        columns=columns,
        estimates={
            "B_hat": pd.DataFrame(
                beta,
                index=[_batch_name(pr, batch) for pr in pairs] + _design_names(spec),
                columns=feats,
            ),
            "grand_mean": pd.Series(grand_mean, index=feats, name="grand_mean"),
            "var_pooled": pd.Series(var_pooled, index=feats, name="var_pooled"),
            "gamma_hat": gamma_hat,
            "delta_hat": delta_hat,
            "gamma_bar": gamma_bar,
            "t2": t2,
            "a_prior": a_prior,
            "b_prior": b_prior,
        },
        flags={"eb": eb, "parametric": parametric, "mean_only": mean_only},
        covariates=tuple(covs),
        source=source,
        notes=tuple(notes),
    )


def _batch_name(pair: list[str], batch: str | None) -> str:
    return pair[0] if batch is None else f"{pair[0]}/{pair[1]}"


def _design_names(spec: _Spec) -> list[str]:
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
    spec: _Spec,
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
