"""Site step of ``pca``: n, column means and the centred cross-product matrix."""

from __future__ import annotations

from fedhem_kernel.analyses.common.params import MAX_FEATURES, check_features
from fedhem_kernel.analyses.common.site_features import feature_matrix
from fedhem_kernel.analyses.pca import ROWS_PER_FEATURE
from fedhem_kernel.protocol.params import COLUMN, list_of
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

CACHE = "pca"


def site_pca_stats(data: SiteData, params: Payload) -> Payload:
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


STEPS = [
    SiteStep(
        "pca_stats",
        "pca",
        site_pca_stats,
        param_columns("features"),
        params={"features": list_of(COLUMN, MAX_FEATURES, least=1)},
    )
]
