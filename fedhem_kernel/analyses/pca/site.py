"""Site steps of ``pca``: n, column means and the centred cross-product matrix (sites outside secure
sums), or the pooled count, sums and cross-products in two secure sums."""

from __future__ import annotations

import numpy as np

from fedhem_kernel.analyses.common.params import MAX_FEATURES, check_features
from fedhem_kernel.analyses.common.site_features import (
    dp_unit_rows,
    feature_matrix,
    minority_counts,
    pooled_rows,
    require_dp,
)
from fedhem_kernel.analyses.pca import ROWS_PER_FEATURE, dp_fields
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION, encode, multiplier
from fedhem_kernel.privacy.tables import singled_out
from fedhem_kernel.protocol.params import COLUMN, instance, list_of, number
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

CACHE = "pca"


def site_pca_stats(data: SiteData, params: Payload) -> Payload:
    # its own XᵀX, against the pooled one, would give a small site's (pooled_only)
    data.per_site_table("PCA statistics")
    features = check_features(params.get("features"))
    fm = feature_matrix(data, features, CACHE)
    data.scratch.pop(CACHE, None)  # one round only: do not keep the matrix
    p = len(features)
    if data.k > 1 and fm.n < ROWS_PER_FEATURE * p:
        raise data.refuse(
            "max_parameters",
            f"{p} features need at least {ROWS_PER_FEATURE * p} patients with every feature at "
            "this site",
        )
    mean = fm.x.mean(axis=0)
    centred = fm.x - mean
    return {"n": fm.n, "mean": mean, "m2": centred.T @ centred}


# -- pooled through secure sums: decide, then release ---------------------------------------------
def site_pca_pool_setup(data: SiteData, params: Payload) -> Payload:
    """Round 1 (a secure sum): how many complete rows (the release ledger's), and the one-hot
    check's counts per feature."""
    x, keys = _pooled(data, params)
    return {"n": np.array([len(x)], dtype=np.int64), **minority_counts(data, x, keys)}


def site_pca_pool_sums(data: SiteData, params: Payload) -> Payload:
    """Round 2 (a secure sum): Σx and Σxxᵀ over the same rows, once every site has checked the
    first round's signed total: at least 10 rows per feature over the sites, and no feature
    singling out 1..k-1 of them (else refused: XᵀX of few rows determines much of them)."""
    x, _ = _pooled(data, params)
    p = x.shape[1]
    first = {key: v for key, v in params.items() if key != "evidence"}
    totals = data.earlier_total(params["evidence"], "pca_pool_setup", first)
    n = int(np.asarray(totals.get("n", [0])).sum())
    if np.shape(totals.get("others")) != (p,) or np.shape(totals.get("varied")) != (p,):
        raise ParameterError("the sums do not match their first round", site=data.site)
    if data.k > 1 and n < ROWS_PER_FEATURE * p:
        raise data.refuse(
            "max_parameters",
            f"{p} features need at least {ROWS_PER_FEATURE * p} patients with every feature over "
            "the sites",
        )
    bad = singled_out(totals, data.k, len(params["evidence"]["replies"]))
    if data.k > 1 and bad is not None:
        feature = params["features"][bad]
        raise data.refuse(
            "min_cell_count",
            f"feature '{feature}' singles out fewer than {data.k} patients over the sites (all "
            "others share one value): their values would show in the sums",
            feature,
        )
    return {"sum": x.sum(axis=0), "cross": x.T @ x}


# -- DP mode: one noised secure sum (privacy/dp_values.py) --------------------------------------
def site_pca_dp(data: SiteData, params: Payload) -> Payload:
    """DP mode: ``M`` times the count, Σt and the upper triangle of Σ 4(t-½)(t-½)ᵀ of the
    complete rows (``t``: values clipped to the request's bounds, mapped to [0, 1]; every field
    in [-1, 1]), ``M = ⌊R/√(fields)⌋``: one patient moves the release by at most ``R`` (L2)."""
    require_dp(data, "PCA sums")
    features = check_features(params.get("features"))
    t = dp_unit_rows(data, params, features)
    p = len(features)
    m = multiplier(dp_fields(p))
    c = 2 * (t - 0.5)  # in [-1, 1]: products of two are too
    upper = np.triu_indices(p)
    products = c[:, upper[0]] * c[:, upper[1]]
    return {
        "count": np.array([m * len(t)], dtype=np.int64),
        "sum": encode(t, m).sum(axis=0),
        "cross": encode(products, m).sum(axis=0),
    }


def _pooled(data: SiteData, params: Payload) -> tuple[np.ndarray, np.ndarray]:
    if not data.secure:
        raise ParameterError("a pooled PCA is asked only as a secure sum", site=data.site)
    return pooled_rows(data, check_features(params.get("features")))


FEATURES = {"features": list_of(COLUMN, MAX_FEATURES, least=1)}

STEPS = [
    SiteStep(
        "pca_stats",
        "pca",
        site_pca_stats,
        param_columns("features"),
        params=FEATURES,
    ),
    SiteStep(
        "pca_pool_setup",
        "pca",
        site_pca_pool_setup,
        param_columns("features"),
        params=FEATURES,
        sums={"n": "count", "others": "count", "varied": "count"},
    ),
    SiteStep(
        "pca_pool_sums",
        "pca",
        site_pca_pool_sums,
        param_columns("features"),
        params={**FEATURES, "evidence": instance(dict, "the signed replies of the first round")},
        sums={"sum": "real", "cross": "real"},
    ),
    SiteStep(
        "pca_dp",
        "pca",
        site_pca_dp,
        param_columns("features"),
        params={
            **FEATURES,
            "bounds": list_of(list_of(number(), 2, least=2), MAX_FEATURES, least=1),
        },
        sums={"count": "count", "sum": "count", "cross": "count"},
        dp=("count", "sum", "cross"),
        dp_sensitivity=RESOLUTION,
    ),
]
