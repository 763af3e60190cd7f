"""Site side of Harrell's C for a pooled Cox fit: three rounds on sealed totals, C alone released.

Side: site. Harrell's C compares every event with every patient still at risk after it, across
sites, by their linear predictors: a per-patient comparison that no sum of a few numbers gives.
So the sites compute it themselves, on tables only they see (sealed totals,
:mod:`fedhem_kernel.protocol.secure_sum`), and release C with the bounds its score bins leave:

``cox_pool_concordance`` with ``stage``
    ``"moments"``: sealed, the count, sum and sum of squares of the linear predictor z·β̂ over
    the model's rows, β̂ the last coefficients the fit evaluated (this site's own path,
    :mod:`~fedhem_kernel.analyses.cox.site_pooled`: never the coordinator's choice).
    ``"table"``: opens the moments (the previous round's signed replies), cuts the predictor
    into :data:`SCORE_BINS` bins over the pooled mean ± 5 SD (and two tails), and seals, per
    grid step and bin, the events and the censored there.
    ``"value"``: opens the table and sends, in the clear and the same at every site, C (pairs
    in one bin count ½, as lifelines counts tied scores) and its bounds (those pairs all
    discordant, all concordant). Nothing else of the table leaves.

Pairs are lifelines' on the grid: an event against every patient leaving at a later step, and
against those censored at its own step; strata are ignored (as lifelines does).
"""

from __future__ import annotations

import numpy as np

from fedhem_kernel.analyses.cox import pooled_scaling
from fedhem_kernel.analyses.cox.site_pooled import (
    SUMS_PARAMS,
    PooledDesign,
    _checked_blocks,
    _off_path,
    _paths,
)
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.params import options
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: Bins of the linear predictor over the pooled mean ± :data:`SPAN` SD (plus a tail each side).
SCORE_BINS = 256
SPAN = 5.0
STAGES = ("moments", "table", "value")


def concordance_counts(events: np.ndarray, censored: np.ndarray) -> tuple[float, float, float]:
    """Concordant pairs, pairs in one score bin, and all comparable pairs, from per (grid step,
    score bin) numbers of events and of censored patients (steps in order, bins by score)."""
    leaving = events + censored
    later = np.cumsum(leaving[::-1], axis=0)[::-1] - leaving  # leaving at a later step
    partners = later + censored  # and censored at the event's own step
    lower = np.cumsum(partners, axis=1) - partners  # partners in a lower score bin
    concordant = float((events * lower).sum())
    same = float((events * partners).sum())
    pairs = float((events * partners.sum(axis=1, keepdims=True)).sum())
    return concordant, same, pairs


def _state(data: SiteData, params: Payload) -> dict:
    fit = str(params["fit"])
    path = _paths(data).get(fit)
    if path is None or len(path.sealed) < 2:
        raise _off_path(data, "concordance follows a fit this site took part in")
    chain = data.scratch.setdefault("cox_concordance", {})
    while len(chain) > 32:
        chain.pop(next(iter(chain)))
    return chain.setdefault(fit, {"beta": path.sealed[-2][1].copy(), "last": None})


def _opened(data: SiteData, params: Payload, state: dict, expect: str) -> dict[str, np.ndarray]:
    """The previous stage's sealed total, opened (its request must be this site's last one of
    the chain, at stage ``expect``)."""
    last = state["last"]
    if last is None or last["stage"] != expect:
        raise _off_path(data, f"the concordance's '{expect}' round comes first")
    evidence = (params.get("path") or {}).get("evidence")
    return data.earlier_total(evidence, "cox_pool_concordance", last)


def site_cox_pool_concordance(data: SiteData, params: Payload) -> Payload:
    d = PooledDesign(data, params)
    _, _, totals, _ = _checked_blocks(data, params, d)
    center, scale = pooled_scaling(totals)
    if (scale <= 0).any():
        raise ParameterError("a covariate has no variation in the pooled rows", site=data.site)
    state = _state(data, params)
    stage = params["stage"]
    lp = ((d.x - center) / scale) @ state["beta"]
    width = d.horizon + 2
    if stage == "moments":
        out: Payload = {"n": np.array([float(len(lp))]), "lp": np.array([lp.sum(), (lp**2).sum()])}
    elif stage == "table":
        moments = _opened(data, params, state, "moments")
        n = float(np.asarray(moments["n"]).sum())
        total, square = (float(v) for v in np.asarray(moments["lp"]))
        mean = total / max(n, 1.0)
        sd = np.sqrt(max(square - n * mean**2, 0.0) / max(n - 1.0, 1.0))
        edges = mean + sd * np.linspace(-SPAN, SPAN, SCORE_BINS + 1)
        bins = np.searchsorted(edges, lp, side="right") if sd > 0 else np.zeros(len(lp), int)
        flat = d.index * (SCORE_BINS + 2) + bins
        size = width * (SCORE_BINS + 2)
        died = d.event
        out = {
            "events": np.bincount(flat[died], minlength=size).reshape(width, -1),
            "censored": np.bincount(flat[~died], minlength=size).reshape(width, -1),
        }
    else:
        table = _opened(data, params, state, "table")
        events = np.asarray(table["events"], dtype=float)
        censored = np.asarray(table["censored"], dtype=float)
        concordant, same, pairs = concordance_counts(events, censored)
        value = [float("nan")] * 3
        if pairs > 0:
            value = [
                (concordant + 0.5 * same) / pairs,
                concordant / pairs,
                (concordant + same) / pairs,
            ]
        out = {"n": np.zeros(1), "concordance": value}  # (a sum needs a field: zeros)
    state["last"] = dict(params)
    return out


STEPS = [
    SiteStep(
        "cox_pool_concordance",
        "cox",
        site_cox_pool_concordance,
        param_columns("duration", "event", "covariates", "strata"),
        params={**SUMS_PARAMS, "stage": options(*STAGES)},
        sums={
            "n": "sealed-real",
            "lp": "sealed-real",
            "events": "sealed-count",
            "censored": "sealed-count",
        },
        shared=("concordance",),
    )
]
