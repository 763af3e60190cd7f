"""Site steps of ``combat``: per batch sums for the design's blocks, the residual moments, and the
harmonised values kept at the site as derived columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from fedhem_kernel.analyses.combat import MAX_SUFFIX, SOURCE
from fedhem_kernel.analyses.combat.params import CombatSpec, column_names, combat_spec
from fedhem_kernel.analyses.combat.site_dp import STEPS as DP_STEPS
from fedhem_kernel.analyses.common.params import MAX_FEATURES, check_matrix, check_vector
from fedhem_kernel.analyses.common.site_features import feature_matrix
from fedhem_kernel.errors import ParameterError, SchemaError
from fedhem_kernel.protocol.params import (
    COLUMN,
    LEVELS,
    NONE,
    Params,
    list_of,
    mapping,
    matrix,
    text,
    vector,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

CACHE = "combat"


ROWS_PER_PARAMETER = 10


MAX_BATCHES = 10_000


def _combat_columns(params: Payload) -> list[str]:
    return param_columns("features", "batch", "categorical", "continuous")(params)


# -- site side ------------------------------------------------------------------------------------
@dataclass
class _Design:
    """A site's rows for ComBat (never leaves the site)."""

    spec: CombatSpec
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


def _batch_labels(data: SiteData, spec: CombatSpec) -> np.ndarray:
    """Each cohort row's batch name (object array, None where missing)."""
    if spec.batch is None:
        return np.full(len(data.cohort), data.site, dtype=object)
    labels = data.labels(spec.batch)  # refuses a continuous column, names it
    return labels.to_numpy(dtype=object)


def _design(data: SiteData, params: Payload) -> _Design:
    """Check every release rule and build this site's design (raises on any refusal)."""
    spec = combat_spec(params)
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
    complete = _ledger_batches(data, labels, complete)
    dropped = int(np.count_nonzero(~complete))
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
    return _Design(
        spec,
        complete,
        y,
        c,
        batch,
        names,
        counts,
        sparse.csr_matrix((np.ones(n), (batch, np.arange(n))), shape=(n_batches, n)),
    )


#: Rounds of :func:`_ledger_batches` (each leaves out more rows; then every row is left out).
MAX_PASSES = 8


def _ledger_batches(data: SiteData, labels: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """The complete rows the fit harmonises: the batches are row sets the fit sums over, so they
    go through the release ledger; a patient the ledger would move into another batch (a piece
    of fewer than k of an earlier released group, or a batch of fewer than k) is left out
    instead (a harmonisation needs every patient in their own batch), and with them as many
    more as the ledger needs to make what is left out k. Nothing is refused: a refusal would
    say that a batch and an earlier group meet in fewer than k patients."""
    if data.ledger is None:
        return complete
    codes = np.full(len(complete), -1, dtype=np.int64)
    _, codes[complete] = np.unique(labels[complete].astype(str), return_inverse=True)
    fixed = ~complete
    for _ in range(MAX_PASSES):
        preview = data.release_groups(codes, fixed=fixed, preview=True)
        moved = (preview >= 0) & (preview != codes)
        if not moved.any():
            break
        fixed = fixed | moved
    else:
        fixed = np.ones(len(complete), dtype=bool)
    kept = data.release_groups(codes, fixed=fixed) >= 0
    if (complete & ~kept).any():
        data.log.note(
            "patients the release ledger would have moved to another batch are left out (with "
            f"others, to make {data.k}): they keep no harmonised value"
        )
    return kept


def _check_names(data: SiteData, params: Payload, spec: CombatSpec) -> list[str]:
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
    for name in column_names(params.get("columns"), "columns"):
        spec = data.schema.columns.get(name)
        if spec is not None and (spec.derived or "").startswith(SOURCE):
            data.derive(name, None, "float", "")
    return {}


#: What names a ComBat design (every request but the clear carries it).
DESIGN: Params = {
    "features": list_of(COLUMN, MAX_FEATURES, least=1),
    "batch": (COLUMN, NONE),
    "categorical": (list_of(COLUMN, MAX_FEATURES), NONE),
    "continuous": (list_of(COLUMN, MAX_FEATURES), NONE),
    "suffix": (text(MAX_SUFFIX), NONE),
    "levels": (mapping(COLUMN, LEVELS, most=MAX_FEATURES), NONE),
}
BATCHES = list_of(list_of(text(), 2, least=2), MAX_BATCHES, least=1)
ESTIMATES = matrix(MAX_BATCHES * MAX_FEATURES, empty=True)

STEPS = [
    SiteStep(name, "combat", fn, _combat_columns, params)
    for name, fn, params in (
        ("combat_stats", site_combat_stats, DESIGN),
        (
            "combat_residuals",
            site_combat_residuals,
            {**DESIGN, "batches": BATCHES, "beta_batch": ESTIMATES, "beta_cov": ESTIMATES},
        ),
        (
            "combat_apply",
            site_combat_apply,
            {
                **DESIGN,
                "batches": BATCHES,
                "gamma_star": ESTIMATES,
                "delta_star": ESTIMATES,
                "grand_mean": vector(MAX_FEATURES, 1),
                "var_pooled": vector(MAX_FEATURES, 1),
                "beta_cov": ESTIMATES,
                "source": (text(80), NONE),
            },
        ),
    )
] + [
    SiteStep(
        "combat_clear",
        "combat",
        site_combat_clear,
        lambda params: [],
        {"columns": list_of(COLUMN, MAX_FEATURES)},
        dp_free=True,  # releases nothing
    )
]
STEPS += DP_STEPS  # DP mode (combat/site_dp.py)
