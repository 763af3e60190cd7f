"""Site side of the federated Cox model: the design, its release rules and the per-iteration sums.

Site steps (registered in :mod:`fedhem_kernel.analyses.cox`):

``cox_setup``
    Builds the design (numeric covariates as they are, categorical ones as 0/1 columns for every
    agreed level but the first), applies the release rules below and releases, per stratum, its
    merged time steps, the number of events at those that hold events, the patient count and the
    sum of the covariates over the events; and, over all its rows, the count, mean and centred sum
    of squares of every design column (the coordinator pools them into the scaling lifelines uses).

``cox_sums`` (one per Newton iteration)
    For the current coefficients (standardised units), per merged step the sums over its rows of
    exp(zβ), z·exp(zβ) and (unless ``parts="first"``) zzᵀ·exp(zβ) (upper triangle); for Efron's ties,
    the same sums over this site's events at each pooled time with tied events. The coordinator
    turns the step sums into risk-set sums S0, S1, S2 at the pooled event times (a site's risk set
    at time t is its steps at or after t). Bytes per site and iteration: 8·(B + T_tied)·(1 + p + q),
    B the site's merged steps, T_tied the pooled tied times, q = p(p+1)/2 (q = 0 with ``"first"``).

``cox_hessian`` (only when the coordinator chose two rounds per iteration)
    Σ_t c1(t)·S2(t) - c2(t)·D2(t) for weights the coordinator computed from the pooled S0: one p×p
    matrix instead of B·q numbers, at the cost of a second round.

``cox_release``
    Drops the cached design of a finished fit.

Release rules (all at the site, all before anything is computed):

- rows with a missing value in the model's columns are left out; the kept rows are a row set
  snapped to the release ledger (:meth:`SiteData.complete_rows`, shared with k-means, PCA and
  ComBat: rows left out are 0 or >= k of every atom, a few complete rows may join them);
- ``max_parameters``: at most one parameter per 10 patients (like the rules below, not applied
  under ``Policy.unrestricted()``, whose minimum cell count is 1);
- ``min_cell_count``: every level of a categorical covariate present at the site has >= k patients,
  no covariate singles out 1..k-1 patients (all but a few share one value: the one-hot attack), every
  stratum has >= k patients;
- times are coarsened to the policy grid and the steps of each stratum merged exactly as for
  Kaplan–Meier (:func:`~fedhem_kernel.privacy.survival.merge_small_steps`): every step has >= k at
  risk and 0 or >= k events and censorings. Every released sum is over whole steps (or a whole
  step's events), so no released sum, and no difference of two, covers 1..k-1 patients;
- ``max_coefficient``: a request with a coefficient above 20 standard units (a hazard ratio of e^20
  per standard deviation) is refused: such weights would let one patient dominate a sum.

The design, sorted once by (stratum, step, event), is cached for the duration of one fit (keyed by
the fit id, every design parameter and the cohort's rows; one copy of the design, 8·n·p bytes), so
an iteration costs a few vectorised passes over the rows; ``cox_hessian`` reuses the exp(zβ) of the
``cox_sums`` request before it (the same coefficients).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedhem_kernel.analyses.cox import (
    MAX_BINS,
    MAX_COVARIATES,
    MAX_COVARIATES_TOTAL,
    MAX_STRATA_COLUMNS,
    SITE_STRATUM,
    TIES,
)
from fedhem_kernel.analyses.cox.site_checks import site_cox_diagnostics, site_cox_score
from fedhem_kernel.analyses.cox.site_design import (
    DesignParams,
    SiteDesign,
    SiteStratum,
    _weights,
    cached_designs,
    site_design,
)
from fedhem_kernel.analyses.cox.site_pooled import STEPS as POOLED_STEPS
from fedhem_kernel.analyses.cox.site_pooled_concordance import STEPS as CONCORDANCE_STEPS
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.params import (
    COLUMN,
    LEVELS,
    NONE,
    Constraint,
    Params,
    list_of,
    mapping,
    matrix,
    options,
    record,
    text,
    vector,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: Rows per chunk when summing the outer products (keeps temporaries near 16 MiB).
_CHUNK_BYTES = 16 * 2**20


# -- site steps -----------------------------------------------------------------------------
def site_cox_setup(data: SiteData, params: Payload) -> Payload:
    """The design's checks, then per stratum its merged steps, event counts and event sums."""
    _, design = site_design(data, params)
    return {
        "columns": design.columns,
        "n": design.n,
        "mean": design.mean,
        "m2": design.m2,
        "strata": [
            {
                "label": list(s.label),
                "n": s.n,
                "steps": s.block_times,
                "times": s.event_times,
                "events": s.block_events[s.block_events > 0],
                "event_sum": s.event_sum,
            }
            for s in design.strata
        ],
        "time_step": design.time_step,
        "unit": design.unit,
    }


def segment_sums(
    zt: np.ndarray, w: np.ndarray, starts: np.ndarray, pairs: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σw, Σw·z and the upper triangle of Σw·zzᵀ over consecutive row segments.

    ``zt`` is the design transposed (p × n, rows contiguous). Vectorised: ``np.add.reduceat``
    along contiguous rows; the outer products are formed a chunk of rows at a time (about
    16 MiB), never as an n×p×p array. Returns arrays of shape (s,), (s, p), (s, p(p+1)/2)
    (the last with no columns when ``pairs`` is false).
    """
    p, n = zt.shape
    q = p * (p + 1) // 2 if pairs else 0
    zwt = zt * w
    a0 = np.add.reduceat(w, starts)
    a1 = np.add.reduceat(zwt, starts, axis=1).T
    a2 = np.zeros((len(starts), q))
    if not pairs:
        return a0, a1, a2
    offsets = np.concatenate(([0], np.cumsum(np.arange(p, 0, -1))))
    chunk = max(256, _CHUNK_BYTES // (8 * max(q, 1)))
    buf = np.empty((q, min(chunk, n)))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = hi - lo
        for i in range(p):
            np.multiply(zwt[i, lo:hi], zt[i:, lo:hi], out=buf[offsets[i] : offsets[i + 1], :rows])
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        stop = int(np.searchsorted(starts, hi, side="left"))
        local = np.concatenate(([lo], starts[first + 1 : stop])) - lo
        a2[first:stop] += np.add.reduceat(buf[:, :rows], local, axis=1).T
    return a0, a1, a2


def _step_sums(
    zt: np.ndarray, w: np.ndarray, design: SiteDesign, events: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per merged step: Σw and Σw·z over its rows, and (``events``) over its events only.

    Rows are summed in order, a column at a time (temporaries: a few n-vectors and the results).
    Long (step, event) segments (times in days: tens of rows each) are summed with
    ``np.add.reduceat``, which releases the GIL; short ones (exact continuous times: one row each)
    with ``np.bincount`` into the steps directly, which costs far less per segment.
    """
    p = design.p
    nb = design.n_blocks
    if design.n >= 4 * design.n_segments:
        starts, seg_block, seg_event = design.segments()
        seg = np.empty((1 + p, len(starts)))  # per segment: Σw, then Σw·z_j
        np.add.reduceat(w, starts, out=seg[0])
        wz = np.empty_like(w)
        for j in range(p):
            np.multiply(zt[j], w, out=wz)
            np.add.reduceat(wz, starts, out=seg[1 + j])
        first_seg = np.searchsorted(seg_block, np.arange(nb))
        steps = np.add.reduceat(seg, first_seg, axis=1)  # a step: its censored rows, its events
        ev = np.zeros((1 + p, nb if events else 0))
        if events:
            ev[:, seg_block[seg_event]] = seg[:, seg_event]
        return [steps[0], steps[1:].T], [ev[0] if events else np.zeros(0), ev[1:].T]
    rows = design.row_block
    a0 = np.bincount(rows, weights=w, minlength=nb)
    a1 = np.empty((nb, p))
    we = w * design.row_event if events else None
    e0 = np.bincount(rows, weights=we, minlength=nb) if we is not None else np.zeros(0)
    e1 = np.empty((nb, p) if events else (0, p))
    wz = np.empty_like(w)
    for j in range(p):
        np.multiply(zt[j], w, out=wz)
        a1[:, j] = np.bincount(rows, weights=wz, minlength=nb)
        if we is not None:
            np.multiply(zt[j], we, out=wz)
            e1[:, j] = np.bincount(rows, weights=wz, minlength=nb)
    return [a0, a1], [e0, e1]


def _times_by_label(params: Payload, key: str) -> dict[tuple[str, ...], Payload]:
    entries = params.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ParameterError(f"'{key}' must be a list of strata")
    return {tuple(str(v) for v in e.get("label", [])): e for e in entries}


def _tied_hits(s: SiteStratum, tied_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tied time: whether this site has an event step exactly there, and which (local)."""
    nb = len(s.block_times)
    j = np.searchsorted(s.block_times, tied_times, side="left")
    jc = np.clip(j, 0, nb - 1)
    hit = (j < nb) & (s.block_times[jc] == tied_times) & (s.block_events[jc] > 0)
    return hit, jc


def site_cox_sums(data: SiteData, params: Payload) -> Payload:
    """Per merged step of each stratum: the sums over its rows, for the requested coefficients.

    ``A0`` = Σ exp(zβ), ``A1`` = Σ z·exp(zβ) and (``parts="all"``) ``A2`` = Σ zzᵀ·exp(zβ) (upper
    triangle) over the rows of each step; the coordinator turns them into risk-set sums at the
    pooled event times. Efron: at the pooled times with tied events (``tied``), the same sums
    over this site's events there (``D0``, ``D1``, ``D2``; zero where it has none).
    """
    spec, design = site_design(data, params)
    with design.lock:
        return _cox_sums(data, spec, design, params)


def _cox_sums(data: SiteData, spec: DesignParams, design: SiteDesign, params: Payload) -> Payload:
    parts = params.get("parts", "all")
    if parts not in ("all", "first"):
        raise ParameterError("'parts' must be 'all' or 'first'")
    full = parts == "all"
    efron = spec.ties == "efron"
    zt, w = _weights(data, design, params)
    tied = _times_by_label(params, "tied")
    hits = {}  # Efron: per stratum, which pooled tied times are this site's event steps
    if efron:
        for s in design.strata:
            times = np.asarray(tied.get(s.label, {}).get("times", []), dtype=float).ravel()
            hits[s.label] = _tied_hits(s, times)
    with_events = any(hit.any() for hit, _ in hits.values())
    # per merged step: all its rows (blocks), and its events only (events: Efron's ties)
    blocks, events = _step_sums(zt, w, design, with_events)
    if full:
        nb = design.n_blocks
        seg_starts, seg_block, seg_event = design.segments()
        _, _, a2 = segment_sums(zt, w, seg_starts, pairs=True)
        first_seg = np.searchsorted(seg_block, np.arange(nb))
        blocks.append(np.add.reduceat(a2, first_seg, axis=0))
        if with_events:
            e2 = np.zeros((nb, a2.shape[1]))
            e2[seg_block[seg_event]] = a2[seg_event]
            events.append(e2)
    names = ("0", "1", "2") if full else ("0", "1")
    out = []
    for s in design.strata:
        item: dict[str, Any] = {"label": list(s.label)}
        for name, b in zip(names, blocks, strict=False):
            item["A" + name] = b[s.lo : s.hi]
        if efron:  # event sums only where the pooled step has tied events
            hit, jc = hits[s.label]
            for name, b, e in zip(names, blocks, events if with_events else blocks, strict=False):
                if not with_events:  # no tied time is an event step of this site
                    item["D" + name] = np.zeros((len(hit), *b.shape[1:]))
                    continue
                mask = hit if e.ndim == 1 else hit[:, None]
                item["D" + name] = np.where(mask, e[s.lo + jc], 0.0)
        out.append(item)
    return {"strata": out}


def site_cox_hessian(data: SiteData, params: Payload) -> Payload:
    """Σ_t c1(t)·S2(t) - c2(t)·D2(t) over the pooled event times, for the coordinator's weights.

    The coordinator computes c1 (per pooled event time) and c2 (per tied time) from the pooled S0
    and D0 of the same coefficients. S2(t) sums the rows of this site's steps at or after t, so the
    whole contraction is one weighted product Zᵀ·diag(v)·Z with one weight per merged step (and a
    second one for the step's events): it combines the same per-step groups a ``cox_sums`` reply
    releases, never anything finer. Returns the upper triangle of a p×p matrix.
    """
    _, design = site_design(data, params)
    with design.lock:
        return _cox_hessian(data, design, params)


def _cox_hessian(data: SiteData, design: SiteDesign, params: Payload) -> Payload:
    zt, w = _weights(data, design, params)
    design._weights = None  # the iteration's last use of exp(zβ)
    weights = _times_by_label(params, "weights")
    nb = design.n_blocks
    k1 = np.zeros(nb)
    k2 = np.zeros(nb)
    for s in design.strata:
        item = weights.get(s.label)
        if item is None:
            continue
        times = np.asarray(item.get("times"), dtype=float).ravel()
        c1 = np.asarray(item.get("c1"), dtype=float).ravel()
        tied = np.asarray(item.get("tied", []), dtype=float).ravel()
        c2 = np.asarray(item.get("c2", []), dtype=float).ravel()
        if c1.shape != times.shape or c2.shape != tied.shape:
            raise ParameterError("'weights' do not match their times")
        if not (np.isfinite(c1).all() and np.isfinite(c2).all()):
            raise ParameterError("'weights' must be finite")
        # a step carries Σ c1 over the pooled times up to its own time (its risk set is in S2
        # at each of them), and its events carry c2 of a tied time exactly at it
        upto = np.searchsorted(times, s.block_times, side="right")
        after = upto > 0  # steps before the first pooled time carry nothing
        k1[s.lo : s.hi][after] = np.cumsum(c1)[upto[after] - 1]
        hit, jc = _tied_hits(s, tied)
        k2[s.lo : s.hi] = np.bincount(jc[hit], weights=c2[hit], minlength=s.hi - s.lo)
    v = k1[design.row_block]
    v -= design.row_event * k2[design.row_block]
    v *= w
    # the upper triangle a row at a time (row-major, as released), with n-vector temporaries:
    # half the products of the full p×p einsum. einsum's own loops, not BLAS: sites run in
    # threads, and multithreaded BLAS calls from two site threads at once can stall for seconds
    zv = np.empty_like(v)
    parts = []
    for i in range(design.p):
        np.multiply(zt[i], v, out=zv)
        parts.append(np.einsum("n,jn->j", zv, zt[i:]))
    return {"hessian": np.concatenate(parts)}


def site_cox_release(data: SiteData, params: Payload) -> Payload:
    """Forget the cached design of a finished fit (frees 8·n·p bytes at the site)."""
    fit_id = params.get("fit")
    entries = cached_designs(data)
    for key in [k for k in entries if k[0] == fit_id]:
        del entries[key]
    return {}


#: What names a fit's design (every Cox request carries it).
DESIGN: Params = {
    "duration": COLUMN,
    "event": COLUMN,
    "covariates": list_of(COLUMN, MAX_COVARIATES, least=1),
    "categorical": mapping(COLUMN, LEVELS, most=MAX_COVARIATES),
    "strata": (list_of(COLUMN, MAX_STRATA_COLUMNS, least=1), options(SITE_STRATUM), NONE),
    "ties": options(*TIES),
    "fit": text(64),
}
#: Coefficients, in the pooled standardised units the coordinator says (each checked in the site's
#: own units by ``checked_coefficients``).
COEFFICIENTS: Params = {
    "beta": vector(MAX_COVARIATES_TOTAL, 1),
    "center": vector(MAX_COVARIATES_TOTAL, 1),
    "scale": vector(MAX_COVARIATES_TOTAL, 1),
}
STRATUM = list_of(Constraint(lambda v: isinstance(v, str) and len(v) <= 200, "a text"), 10)

STEPS = [
    SiteStep(name, "cox", run, param_columns("duration", "event", "covariates", "strata"), params)
    for name, run, params in (
        ("cox_setup", site_cox_setup, DESIGN),
        (
            "cox_sums",
            site_cox_sums,
            {
                **DESIGN,
                **COEFFICIENTS,
                "parts": (options("all", "first"), NONE),
                "tied": (list_of(record({"label": STRATUM, "times": vector()})), NONE),
            },
        ),
        (
            "cox_hessian",
            site_cox_hessian,
            {
                **DESIGN,
                **COEFFICIENTS,
                "weights": list_of(
                    record(
                        {
                            "label": STRATUM,
                            "times": vector(),
                            "c1": vector(),
                            "tied": (vector(), NONE),
                            "c2": (vector(), NONE),
                        }
                    )
                ),
            },
        ),
        ("cox_score", site_cox_score, {**DESIGN, **COEFFICIENTS}),
        (
            "cox_diagnostics",
            site_cox_diagnostics,
            {
                **DESIGN,
                **COEFFICIENTS,
                "edges": vector(MAX_BINS - 1),
                "ph": (
                    list_of(
                        record({"label": STRATUM, "times": vector(), "weights": matrix(empty=True)})
                    ),
                    NONE,
                ),
            },
        ),
        ("cox_release", site_cox_release, DESIGN),
    )
]

# the pooled fit's steps (secure sums only: site_pooled.py)
STEPS += POOLED_STEPS + CONCORDANCE_STEPS
