"""Combine step of ``pca``: the pooled covariance and its eigendecomposition."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_moments import pooled_moments, standard_scale
from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.pca.result import PCAResult
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask


def _svd_flip_rows(v: np.ndarray) -> np.ndarray:
    """scikit-learn's ``svd_flip(None, v, u_based_decision=False)``: largest |loading| positive."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.sign(v[np.arange(v.shape[0]), idx])
    signs[signs == 0] = 1.0
    return v * signs[:, None]


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
