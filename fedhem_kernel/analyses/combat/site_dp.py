"""Site steps of ``combat`` in DP mode: each batch's moments are one slot of a noised secure sum.

Side: site. ``combat_dp_stats``: the request lists the sites of the sum and, with a batch column,
its declared levels: the slots are sites × levels (one per site without a batch column); this
site fills its own slots with the count, Σt and Σ(2t-1)² of every feature over its complete rows
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
from fedhem_kernel.analyses.levels.site import declared_levels
from fedhem_kernel.errors import ParameterError, SchemaError
from fedhem_kernel.privacy.dp_values import RESOLUTION, encode, multiplier
from fedhem_kernel.protocol.params import (
    BOOL,
    COLUMN,
    LEVELS,
    NONE,
    list_of,
    matrix,
    number,
    text,
    vector,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: Most sites of a DP ComBat, and most declared batch levels at each.
MAX_SITES = 1000
MAX_DECLARED = 1000


def _slots(data: SiteData, params: Payload, n_rows: int) -> tuple[np.ndarray, int]:
    """Each complete row's slot (-1: in no batch) among ``sites × batch levels`` (the batch
    column's declared levels, or one batch per site), and how many slots there are."""
    sites = params.get("sites")
    if (
        not isinstance(sites, list | tuple)
        or len(set(sites)) != len(sites)
        or not 1 <= len(sites) <= MAX_SITES
        or list(sites).count(data.site) != 1
    ):
        raise ParameterError(
            "'sites' must list each site of the sum once, this one among them", site=data.site
        )
    me = list(sites).index(data.site)
    batch = params.get("batch")
    if batch is None:
        return np.full(n_rows, me, dtype=np.int64), len(sites)
    levels = list(params.get("batch_levels") or [])
    if levels != sorted(declared_levels(data, batch)):
        raise ParameterError(
            "'batch_levels' must be the batch column's declared levels", **data.err(batch)
        )
    labels = data.labels(batch).to_numpy(dtype=object)
    position = {name: j for j, name in enumerate(levels)}
    slot = np.array([position.get(v, -1) if v is not None else -1 for v in labels])
    return np.where(slot >= 0, me * len(levels) + slot, -1), len(sites) * len(levels)


def site_combat_dp_stats(data: SiteData, params: Payload) -> Payload:
    """This site's slots: ``M`` times the count, Σt and Σ(2t-1)² per feature of its complete
    rows in each of its batches."""
    require_dp(data, "batch moments")
    features = check_features(params.get("features"))
    x = np.column_stack([data.numeric(f) for f in features])
    complete = ~np.isnan(x).any(axis=1)
    slot, n_slots = _slots(data, params, len(x))
    slot = slot[complete]
    t = dp_unit_rows(data, params, features)
    inside = slot >= 0
    slot, t = slot[inside], t[inside]
    p = len(features)
    m = multiplier(dp_fields(p))
    count = m * np.bincount(slot, minlength=n_slots).astype(np.int64)
    total = np.zeros((n_slots, p), dtype=np.int64)
    square = np.zeros((n_slots, p), dtype=np.int64)
    np.add.at(total, slot, encode(t, m))
    np.add.at(square, slot, encode((2 * t - 1) ** 2, m))
    return {"count": count, "sum": total, "sumsq": square}


def site_combat_dp_apply(data: SiteData, params: Payload) -> Payload:
    """Harmonise this site's rows in the batches kept (``keep``: one flag per slot) with the
    estimates sent (one row per kept batch) and keep them as columns ``<feature><suffix>``
    (missing for rows in no kept batch); nothing is released (the estimates came from a DP
    release)."""
    require_dp(data, "harmonised values")
    features = check_features(params.get("features"))
    x = np.column_stack([data.numeric(f) for f in features])
    slot, n_slots = _slots(data, params, len(x))
    keep = np.asarray(params.get("keep"), dtype=bool)
    if keep.shape != (n_slots,) or keep.sum() < 2:
        raise ParameterError(
            "'keep' must flag at least two of the request's batches", site=data.site
        )
    row_of = np.cumsum(keep) - 1  # a kept slot's row among the estimates
    p, kept = len(features), int(keep.sum())
    gamma = check_matrix(params, "gamma_star", p, kept, kept)
    delta = check_matrix(params, "delta_star", p, kept, kept)
    grand = check_vector(params, "grand_mean", p)
    var_pooled = check_vector(params, "var_pooled", p, positive=True)
    if not (delta > 0).all():
        raise ParameterError("'delta_star' must hold positive numbers", site=data.site)
    suffix = str(params.get("suffix") or "_combat")
    used = (slot >= 0) & keep[np.maximum(slot, 0)]
    rows = row_of[np.maximum(slot, 0)]
    sd = np.sqrt(var_pooled)
    out = np.full(x.shape, np.nan)
    out[used] = ((x[used] - grand) / sd - gamma[rows[used]]) / np.sqrt(delta[rows[used]]) * sd
    out[used] += grand  # rows missing a feature stay NaN
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
        {
            "features": FEATURES,
            "bounds": BOUNDS,
            "sites": SITES,
            "batch": (COLUMN, NONE),
            "batch_levels": (LEVELS, NONE),
        },
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
            "batch": (COLUMN, NONE),
            "batch_levels": (LEVELS, NONE),
            "keep": list_of(BOOL, MAX_SITES * MAX_DECLARED),
            "gamma_star": matrix(MAX_SITES * MAX_DECLARED * MAX_FEATURES),
            "delta_star": matrix(MAX_SITES * MAX_DECLARED * MAX_FEATURES),
            "grand_mean": vector(MAX_FEATURES, 1),
            "var_pooled": vector(MAX_FEATURES, 1),
            "suffix": (text(40), NONE),
            "source": (text(80), NONE),
        },
        dp_free=True,
    ),
]
