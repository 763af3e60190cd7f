"""Combine step of ``pca``: the pooled covariance and its eigendecomposition."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import pooled_k, pooled_sums
from fedhem_kernel.analyses.common.combine_dp import DPRelease, bounds_text, dp_bounds, dp_release
from fedhem_kernel.analyses.common.combine_moments import pooled_moments, standard_scale
from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.pca import ROWS_PER_FEATURE, dp_fields
from fedhem_kernel.analyses.pca.result import PCAResult
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION, multiplier
from fedhem_kernel.privacy.tables import singled_out
from fedhem_kernel.protocol.query import Ask


def _svd_flip_rows(v: np.ndarray) -> np.ndarray:
    """scikit-learn's ``svd_flip(None, v, u_based_decision=False)``: largest |loading| positive."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.sign(v[np.arange(v.shape[0]), idx])
    signs[signs == 0] = 1.0
    return v * signs[:, None]


def _pooled_stats(q: Ask, feats: list[str]) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and centred cross-products through two secure sums (pca/site.py): the
    coordinator checks the first round's total as every site will (10 rows per feature, no
    feature singling out a few patients) and asks for the sums only then."""
    params = {"features": feats}
    setup = q.ask_sum("pca_pool_setup", params)
    n = int(np.asarray(setup.totals["n"]).sum())
    k, p = pooled_k(q), len(feats)
    if k > 1 and n < ROWS_PER_FEATURE * p:
        raise ParameterError(
            f"{p} features need at least {ROWS_PER_FEATURE * p} patients with every feature "
            "over the sites",
            dataset=q.dataset,
        )
    bad = singled_out(setup.totals, k, len(setup.sites)) if k > 1 else None
    if bad is not None:
        raise DisclosureError(
            f"feature '{feats[bad]}' singles out fewer than {k} patients over the sites (all "
            "others share one value): their values would show in the sums",
            dataset=q.dataset,
            column=feats[bad],
            rule="min_cell_count",
        )
    sums = q.ask_sum("pca_pool_sums", {**params, "evidence": setup.evidence}).totals
    mean = np.asarray(sums["sum"]) / n
    m2 = np.asarray(sums["cross"]) - n * np.outer(mean, mean)
    q.note(
        f"pooled through secure sums: the count, sums and cross-products of {n} patients over "
        "the sites (no site's own seen); at least 10 per feature over the sites"
    )
    return n, mean, m2


def _dp_stats(q: Ask, feats: list[str], release: DPRelease) -> tuple[int, np.ndarray, np.ndarray]:
    """DP mode: count, mean and centred cross-products decoded from one noised secure sum
    (pca/site.py, ``pca_dp``) of values clipped to the sites' public bounds; the covariance is
    made positive semi-definite afterwards (eigenvalues clipped at 0: post-processing)."""
    bounds = dp_bounds(q, feats)
    total = q.ask_sum("pca_dp", {"features": feats, "bounds": bounds}, noise_scale=release.scale)
    p = len(feats)
    m = multiplier(dp_fields(p))
    n = float(np.asarray(total.totals["count"]).sum()) / m
    noise = release.total_sd(len(total.sites)) / m  # SD of every decoded field's noise
    floor = max(ROWS_PER_FEATURE * p, 3 * noise)
    if n < floor:
        raise ParameterError(
            f"DP mode: too few patients with every feature for a PCA above the noise (at least "
            f"{floor:.0f} needed)",
            dataset=q.dataset,
        )
    mean_t = np.clip(np.asarray(total.totals["sum"], dtype=float) / (m * n), 0, 1)
    cross = np.zeros((p, p))
    cross[np.triu_indices(p)] = np.asarray(total.totals["cross"], dtype=float) / m
    cross = cross + np.triu(cross, 1).T
    centre = 2 * mean_t - 1  # the mean of c = 2(t - ½)
    cov_c = (cross / n - np.outer(centre, centre)) * n / (n - 1)
    width = np.array([hi - lo for lo, hi in bounds])
    cov = cov_c / 4 * np.outer(width, width)
    mean = np.array([lo for lo, _ in bounds]) + width * mean_t
    flat = [f for f, v in zip(feats, np.diag(cov), strict=True) if not v > 0]
    if flat:
        raise ParameterError(
            "DP mode: this feature shows no variation above the noise",
            dataset=q.dataset,
            column=flat[0],
        )
    q.note(release.note("the count, sums and cross-products"))
    spans = bounds_text(feats, bounds)
    q.note(
        f"values clipped to the bounds the sites declare ({spans}); the count ({n:.0f}) carries "
        f"noise of SD {noise:.2g}, each cross-product of values mapped to [-1, 1] the same, so "
        "the covariance is off by about that over the count, times the bounds' widths"
    )
    return int(round(n)), mean, cov * (n - 1)


def run(
    q: Ask,
    features: Sequence[str] | str,
    n_components: int | None = None,
    standardize: bool = True,
) -> PCAResult:
    feats = check_features(features)
    p = len(feats)
    if n_components is None:
        n_components = p
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, int)
        or not 1 <= n_components <= p
    ):
        raise ParameterError(f"'n_components' must be a whole number between 1 and {p}")
    if not isinstance(standardize, bool):
        raise ParameterError("'standardize' must be True or False")
    release = dp_release(q, RESOLUTION)
    if release is not None:
        n, mean, m2 = _dp_stats(q, feats, release)
    elif pooled_sums(q, "pca"):
        n, mean, m2 = _pooled_stats(q, feats)
    else:
        payloads = q.ask("pca_stats", {"features": feats})
        n, mean, m2 = pooled_moments([payloads[s] for s in sorted(payloads)])
    if n < 2:
        raise ParameterError("PCA needs at least two patients", dataset=q.dataset)
    cov = m2 / (n - 1)
    scale = np.ones(p)
    if standardize:
        var = np.diag(m2) / n  # population variance, as StandardScaler
        scale = standard_scale(feats, var, q.dataset)
        cov = cov / np.outer(scale, scale)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    values = np.flip(values)
    vectors = np.flip(vectors, axis=1)
    values[values < 0.0] = 0.0
    components = _svd_flip_rows(vectors.T)
    total = float(values.sum())
    names = [f"PC{i + 1}" for i in range(n_components)]
    ratio = values / total if total > 0 else np.full(p, math.nan)
    return PCAResult(
        components=pd.DataFrame(components[:n_components], index=names, columns=feats),
        explained_variance=pd.Series(values[:n_components], index=names),
        explained_variance_ratio=pd.Series(ratio[:n_components], index=names),
        mean=pd.Series(mean, index=feats, name="mean"),
        scale=pd.Series(scale, index=feats, name="scale"),
        n_samples=n,
        standardize=standardize,
        privacy=q.report(),
        dataset=q.dataset,
        where=q.where,
    )
