"""Site steps of ``kmeans`` in DP mode: noised secure sums over values clipped to public bounds.

Side: site. Every release is one secure sum to which this site adds its share of discrete
Gaussian noise (the executor), of fields whose weight keeps one patient's whole contribution
within ``RESOLUTION`` in L2 norm (privacy/dp_values.py), whatever the coordinator sends: the
bounds, centres and scales only decide where a row's fields go, never how large they are.

- ``kmeans_dp_stats``: per feature the count, Σt and Σ(2t-1)² of the complete rows (``t``: the
  value clipped to the bounds, mapped to [0, 1]), for the coordinator's units and start.
- ``kmeans_dp_step``: a Lloyd round: each complete row goes to its nearest centre (distances in
  the coordinator's units), and per cluster its count and Σt are released; with ``source`` the
  labels stay at the site as the derived column ``cluster`` (the final round).
"""

from __future__ import annotations

import numpy as np

from fedhem_kernel.analyses.common.params import MAX_FEATURES, check_features, check_matrix
from fedhem_kernel.analyses.common.site_features import dp_unit_rows, require_dp
from fedhem_kernel.analyses.kmeans import COLUMN, MAX_CLUSTERS, stats_fields, step_fields
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION, encode, multiplier
from fedhem_kernel.protocol.params import COLUMN as COLUMN_NAME
from fedhem_kernel.protocol.params import NONE, integer, list_of, matrix, number, text, vector
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: Largest ratio between the coordinator's per-feature scales (bounds any weighting it asks for).
MAX_SCALE_RATIO = 1e6


def site_kmeans_dp_stats(data: SiteData, params: Payload) -> Payload:
    """The count, Σt and Σ(2t-1)² per feature of the complete rows, each field of weight ``M``."""
    require_dp(data, "k-means statistics")
    features = check_features(params.get("features"))
    t = dp_unit_rows(data, params, features)
    m = multiplier(stats_fields(len(features)))
    return {
        "count": np.array([m * len(t)], dtype=np.int64),
        "sum": encode(t, m).sum(axis=0),
        "sumsq": encode((2 * t - 1) ** 2, m).sum(axis=0),
    }


def site_kmeans_dp_step(data: SiteData, params: Payload) -> Payload:
    """One Lloyd round in DP mode: per cluster ``M`` times its count and Σt (every row in one
    cluster: one patient moves the release by at most ``R``); with ``source``, the labels stay
    at the site as ``cluster`` (rows missing a feature have none)."""
    require_dp(data, "k-means rounds")
    features = check_features(params.get("features"))
    p = len(features)
    t = dp_unit_rows(data, params, features)
    centres = check_matrix(params, "centers", p, MAX_CLUSTERS, 1)
    scale = np.asarray(params["scale"], dtype=float)
    if scale.shape != (p,) or not (scale > 0).all() or scale.max() / scale.min() > MAX_SCALE_RATIO:
        raise ParameterError(
            f"'scale' must be {p} positive numbers within a factor {MAX_SCALE_RATIO:g}",
            site=data.site,
        )
    k = len(centres)
    a, c = t / scale, centres / scale
    distances = (a**2).sum(axis=1)[:, None] - 2 * a @ c.T + (c**2).sum(axis=1)[None, :]
    labels = np.argmin(distances, axis=1) if len(t) else np.zeros(0, dtype=np.int64)
    m = multiplier(step_fields(p))
    counts = m * np.bincount(labels, minlength=k).astype(np.int64)
    encoded = encode(t, m)
    sums = np.zeros((k, p), dtype=np.int64)
    np.add.at(sums, labels, encoded)
    source = params.get("source")
    if source:
        missing = _missing(data, features)
        names = np.array([str(j + 1) for j in range(k)], dtype=object)
        column = np.full(len(missing), None, dtype=object)
        column[~missing] = names[labels]
        data.derive(COLUMN, column, "category", str(source)[:80], levels=list(names))
    return {"counts": counts, "sums": sums}


def _missing(data: SiteData, features: list[str]) -> np.ndarray:
    """Which cohort rows miss a feature (the rows ``dp_unit_rows`` leaves out)."""
    missing = np.zeros(len(data.cohort), dtype=bool)
    for f in features:
        missing |= np.isnan(data.numeric(f))
    return missing


FEATURES = {
    "features": list_of(COLUMN_NAME, MAX_FEATURES, least=1),
    "k": integer(1, MAX_CLUSTERS),
    "bounds": list_of(list_of(number(), 2, least=2), MAX_FEATURES, least=1),
}

STEPS = [
    SiteStep(
        "kmeans_dp_stats",
        "kmeans",
        site_kmeans_dp_stats,
        param_columns("features"),
        FEATURES,
        sums={"count": "count", "sum": "count", "sumsq": "count"},
        dp=("count", "sum", "sumsq"),
        dp_sensitivity=RESOLUTION,
    ),
    SiteStep(
        "kmeans_dp_step",
        "kmeans",
        site_kmeans_dp_step,
        param_columns("features"),
        {
            **FEATURES,
            "centers": matrix(MAX_CLUSTERS * MAX_FEATURES),
            "scale": vector(MAX_FEATURES, 1),
            "source": (text(80), NONE),
        },
        sums={"counts": "count", "sums": "count"},
        dp=("counts", "sums"),
        dp_sensitivity=RESOLUTION,
    ),
]
