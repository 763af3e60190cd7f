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

- features and continuous covariates as :mod:`fedhem_kernel.analyses.common.site_features` (numeric; no
  column on which all but 1..k-1 patients share one value; at least k rows);
- rows with a missing feature, covariate or batch value are left out (their harmonised value is
  missing): the rows used are a row set snapped to the release ledger (rows left out are 0 or at
  least k of every atom; a few complete rows may join them);
- every batch at the site has at least k patients (``min_cell_count``, naming the batch column);
  every level of a categorical covariate has 0 or at least k patients in each batch, and no level
  outside the agreed ones (``min_cell_count``, naming the covariate): every Σ released is over 0
  or at least k rows;
- ``max_parameters``: at least 10 patients per design column the site's rows touch (its batches and
  the covariate columns), as Cox and PCA: XᵀX and XᵀY of few rows would pin those rows down;
- ``differencing``: the batches are row sets released through the ledger; a fit is refused when
  the ledger would move a patient to another batch (the refusal depends on the data: kept until
  batches are decided from noisy counts); covariate levels are values of the design, as Cox's;
- at most ``max_levels`` batches at a site.

Residual risks: every site is sent B̂, γ* and δ* of every batch (what the researcher sees in
``batch_effects``), i.e. covariate-adjusted batch means of the other sites.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import (
    BOOL,
    COLUMN,
    COLUMNS,
    NO_COLUMNS,
    NONE,
    Constraint,
    Params,
)

SOURCE = "combat"


MAX_SUFFIX = 40


CATEGORICAL_DTYPES = ("category", "bool")

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "features": (COLUMNS,),
    "batch": (COLUMN, NONE),
    "covariates": (COLUMNS, NO_COLUMNS),
    "suffix": (
        Constraint(
            lambda v: isinstance(v, str) and 0 < len(v) <= MAX_SUFFIX,
            f"a text of 1 to {MAX_SUFFIX} characters",
        ),
    ),
    "eb": (BOOL,),
    "parametric": (BOOL,),
    "mean_only": (BOOL,),
}


def dp_fields(p: int) -> int:
    """DP mode: fields per patient of a batch's moments (the count, Σt and Σ(2t-1)² of ``p``
    features, each of weight 1: privacy/dp_values.py)."""
    return 1 + 2 * p
