"""Combine step of ``pca``: the pooled covariance and its eigendecomposition."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import pooled_k, pooled_sums
from fedhem_kernel.analyses.common.combine_moments import pooled_moments, standard_scale
from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.pca import ROWS_PER_FEATURE
from fedhem_kernel.analyses.pca.result import PCAResult
from fedhem_kernel.errors import DisclosureError, ParameterError
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
    if pooled_sums(q, "pca"):
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
