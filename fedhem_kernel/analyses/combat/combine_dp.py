"""Combine step of ``combat`` in DP mode: every batch (a site, or a site's declared batch level)
a slot of one noised secure sum, ComBat's estimates from them (post-processing), the harmonising at the sites.

Side: researcher (combine). One release (``combat_dp_stats``): per site (batch) the count, Σt
and Σ(2t-1)² of each feature, values clipped to the bounds the sites declare. Without
covariates the batch means are neuroCombat's B̂, the residuals' moments are the batches' own
spread, and everything after (pooled variance, γ̂, δ̂, the empirical Bayes γ*, δ*, and the
harmonised batches' means and SDs shown in the summary) is computed from those noisy moments,
which costs nothing more. ``combat_dp_apply`` sends the estimates; each site keeps its
harmonised rows and releases nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.combat import SOURCE, dp_fields
from fedhem_kernel.analyses.combat.params import CombatSpec
from fedhem_kernel.analyses.common.combine_dp import DPRelease, bounds_text, dp_bounds
from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import multiplier
from fedhem_kernel.protocol.query import Ask

#: A batch's noisy count must be at least this many noise SDs (and 10) for its moments to be used.
FLOOR_SDS = 3.0


def run_dp(
    q: Ask,
    features: Sequence[str] | str,
    batch: str | None,
    covariates: Sequence[str],
    suffix: str,
    eb: bool,
    parametric: bool,
    mean_only: bool,
    release: DPRelease,
) -> object:
    """DP ComBat (see the module docstring): each site one batch, or batches by site and a
    batch column's declared levels; no covariates."""
    from fedhem_kernel.analyses.combat.combine import _Fit, _Request, _result, batch_effects

    if list(covariates):
        raise ParameterError(
            "DP mode harmonises batches without covariates (covariates=()): per-batch "
            "covariate blocks have no DP version yet",
            dataset=q.dataset,
        )
    feats = check_features(features)
    p = len(feats)
    sites = sorted(q.catalog())
    batch_levels = list(require_levels(q, batch) or []) if batch is not None else None
    slots = (
        [[s, s] for s in sites]
        if batch is None
        else [[s, level] for s in sites for level in batch_levels or []]
    )
    bounds = dp_bounds(q, feats)
    low = np.array([lo for lo, _ in bounds])
    width = np.array([hi - lo for lo, hi in bounds])
    request = {"features": feats, "sites": sites, "batch": batch, "batch_levels": batch_levels}
    total = q.ask_sum("combat_dp_stats", {**request, "bounds": bounds}, noise_scale=release.scale)
    if sorted(total.sites) != sites:
        raise ParameterError(
            "every site must take part in a DP ComBat (its batches are slots of one sum)",
            dataset=q.dataset,
        )
    m = multiplier(dp_fields(p))
    count = np.asarray(total.totals["count"], dtype=float) / m
    noise = release.total_sd(len(total.sites)) / m
    floor = max(10.0, FLOOR_SDS * noise)
    keep = count >= floor  # post-processing: a batch below the noise floor is left out
    dropped = [
        f"{a}/{b}" if batch is not None else a
        for (a, b), k in zip(slots, keep, strict=True)
        if not k
    ]
    if keep.sum() < 2:
        raise ParameterError(
            f"DP mode: fewer than two batches have patients above the noise (at least "
            f"{floor:.0f} with every feature)",
            dataset=q.dataset,
            column=batch,
        )
    if dropped:
        q.note(
            f"batches below the noise floor ({floor:.0f} patients) left out, their rows not "
            "harmonised: " + ", ".join(dropped)
        )
    pairs = [pair for pair, k in zip(slots, keep, strict=True) if k]
    count = count[keep]
    sums = np.asarray(total.totals["sum"], dtype=float)[keep]
    squares = np.asarray(total.totals["sumsq"], dtype=float)[keep]
    mean_t = np.clip(sums / (m * count[:, None]), 0, 1)
    centred = squares / (4 * m * count[:, None])
    # the population variance in t units, kept at least twice its own noise's SD (a variance
    # the noise can wipe out would make a batch's δ̂ meaningless: post-processing)
    noise_var = np.sqrt(
        (noise / (4 * count[:, None])) ** 2
        + (2 * np.abs(mean_t - 0.5) * noise / count[:, None]) ** 2
    )
    var_t = np.maximum(centred - (mean_t - 0.5) ** 2, 2 * noise_var)
    mean_x = low + width * mean_t
    m2_x = var_t * count[:, None] * width**2
    n_b = count
    grand = (n_b / n_b.sum()) @ mean_x
    spec = CombatSpec(feats, batch, [], [], {})
    columns = [f + suffix for f in feats]
    req = _Request({}, spec, batch, (), columns, eb, parametric, mean_only)
    fit = _Fit(sites, pairs, n_b, mean_x * n_b[:, None], m2_x, mean_x, grand)
    effects = batch_effects(q, req, fit, np.zeros_like(mean_x), m2_x)
    source = f"{SOURCE} {uuid.uuid4().hex[:12]}"
    q.ask(
        "combat_dp_apply",
        {
            **request,
            "keep": [bool(k) for k in keep],
            "gamma_star": effects.gamma_star,
            "delta_star": effects.delta_star,
            "grand_mean": grand,
            "var_pooled": effects.var_pooled,
            "suffix": suffix,
            "source": source,
        },
    )
    sd = np.sqrt(effects.var_pooled)
    after_mean = grand + sd * (effects.gamma_hat - effects.gamma_star) / np.sqrt(effects.delta_star)
    after_m2 = m2_x / effects.delta_star
    q.note(release.note("each site's count, sums and sums of squares"))
    spans = bounds_text(feats, bounds)
    q.note(
        f"DP ComBat: {'each site one batch' if batch is None else 'batches by site and ' + batch}; values clipped to the bounds the sites declare "
        f"({spans}) for the estimates (the harmonised values are the sites' own, unclipped); "
        "the batch sizes, means and SDs before and after come from the noisy moments; a "
        "batch's variance is kept at least twice its noise's SD (tight bounds make it exact)"
    )
    notes = tuple(effects.notes)
    for note in notes:
        q.note(note)
    index = [f"{a}/{b}" if batch is not None else a for a, b in pairs]
    return _result(
        q,
        spec,
        pairs,
        np.maximum(np.rint(n_b), 0).astype(np.int64),
        mean_x * n_b[:, None],
        m2_x,
        {},
        effects.gamma_star,
        effects.delta_star,
        columns=columns,
        estimates={
            "B_hat": pd.DataFrame(mean_x, index=index, columns=feats),
            **effects.estimates(grand, feats),
        },
        flags={"eb": eb, "parametric": parametric, "mean_only": mean_only},
        covariates=(),
        source=source,
        notes=notes,
        after=(after_mean, after_m2),
    )
