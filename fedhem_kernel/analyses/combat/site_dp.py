"""Site steps of ``combat`` in DP mode: each site is a batch, and its moments are one slot of a
noised secure sum.

Side: site. ``combat_dp_stats``: the request lists the sites of the sum (one batch each); this
site fills its own slot with the count, Σt and Σ(2t-1)² of every feature over its complete rows
(``t``: the value clipped to the request's bounds, mapped to [0, 1]; weight ``M`` each, so one
patient moves the release by at most ``R``: privacy/dp_values.py), zeros elsewhere; every site
adds its noise share to every slot, so each batch's moments carry one release's noise.
``combat_dp_apply`` harmonises this site's rows with the estimates sent (in the features' units)
and keeps them as derived columns: it releases nothing (``dp_free``).
"""

from __future__ import annotations

import numpy as np

from fedhem_kernel.analyses.combat import SOURCE, dp_fields
from fedhem_kernel.analyses.common.params import (
    MAX_FEATURES,
    check_features,
    check_matrix,
    check_vector,
)
from fedhem_kernel.analyses.common.site_features import dp_unit_rows, require_dp
from fedhem_kernel.errors import ParameterError, SchemaError
from fedhem_kernel.privacy.dp_values import RESOLUTION, encode, multiplier
from fedhem_kernel.protocol.params import (
    COLUMN,
    NONE,
    list_of,
    matrix,
    number,
    text,
    vector,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: Most sites (batches) of a DP ComBat.
MAX_SITES = 1000


def _slot(data: SiteData, params: Payload) -> tuple[int, int]:
    """This site's place among the request's sites, and how many there are."""
    sites = params.get("sites")
    if (
        not isinstance(sites, list | tuple)
        or len(set(sites)) != len(sites)
        or not 2 <= len(sites) <= MAX_SITES
        or list(sites).count(data.site) != 1
    ):
        raise ParameterError(
            "'sites' must list each site of the sum once, this one among them", site=data.site
        )
    return list(sites).index(data.site), len(sites)


def site_combat_dp_stats(data: SiteData, params: Payload) -> Payload:
    """This site's slot: ``M`` times the count, Σt and Σ(2t-1)² per feature of its complete rows."""
    require_dp(data, "batch moments")
    features = check_features(params.get("features"))
    slot, n_sites = _slot(data, params)
    t = dp_unit_rows(data, params, features)
    p = len(features)
    m = multiplier(dp_fields(p))
    count = np.zeros(n_sites, dtype=np.int64)
    total = np.zeros((n_sites, p), dtype=np.int64)
    square = np.zeros((n_sites, p), dtype=np.int64)
    count[slot] = m * len(t)
    total[slot] = encode(t, m).sum(axis=0)
    square[slot] = encode((2 * t - 1) ** 2, m).sum(axis=0)
    return {"count": count, "sum": total, "sumsq": square}


def site_combat_dp_apply(data: SiteData, params: Payload) -> Payload:
    """Harmonise this site's complete rows with the estimates sent and keep them as columns
    ``<feature><suffix>``; nothing is released (the estimates came from a DP release)."""
    require_dp(data, "harmonised values")
    features = check_features(params.get("features"))
    slot, n_sites = _slot(data, params)
    p = len(features)
    gamma = check_matrix(params, "gamma_star", p, n_sites, n_sites)[slot]
    delta = check_matrix(params, "delta_star", p, n_sites, n_sites)[slot]
    grand = check_vector(params, "grand_mean", p)
    var_pooled = check_vector(params, "var_pooled", p, positive=True)
    if not (delta > 0).all():
        raise ParameterError("'delta_star' must hold positive numbers", site=data.site)
    suffix = str(params.get("suffix") or "_combat")
    x = np.column_stack([data.numeric(f) for f in features])
    sd = np.sqrt(var_pooled)
    out = ((x - grand) / sd - gamma) / np.sqrt(delta) * sd + grand  # NaN stays NaN
    source = str(params.get("source") or SOURCE)[:80]
    for j, f in enumerate(features):
        name = f + suffix
        spec = data.schema.columns.get(name)
        if spec is not None and spec.derived is None:
            raise SchemaError(
                "the dataset has a column of this name of its own: choose another suffix",
                **data.err(name),
                rule="schema",
            )
        data.derive(name, out[:, j], "float", source)
    return {}


SITES = list_of(text(), MAX_SITES, least=2)
BOUNDS = list_of(list_of(number(), 2, least=2), MAX_FEATURES, least=1)
FEATURES = list_of(COLUMN, MAX_FEATURES, least=1)

STEPS = [
    SiteStep(
        "combat_dp_stats",
        "combat",
        site_combat_dp_stats,
        param_columns("features"),
        {"features": FEATURES, "bounds": BOUNDS, "sites": SITES},
        sums={"count": "count", "sum": "count", "sumsq": "count"},
        dp=("count", "sum", "sumsq"),
        dp_sensitivity=RESOLUTION,
    ),
    SiteStep(
        "combat_dp_apply",
        "combat",
        site_combat_dp_apply,
        param_columns("features"),
        {
            "features": FEATURES,
            "sites": SITES,
            "gamma_star": matrix(MAX_SITES * MAX_FEATURES),
            "delta_star": matrix(MAX_SITES * MAX_FEATURES),
            "grand_mean": vector(MAX_FEATURES, 1),
            "var_pooled": vector(MAX_FEATURES, 1),
            "suffix": (text(40), NONE),
            "source": (text(80), NONE),
        },
        dp_free=True,
    ),
]
