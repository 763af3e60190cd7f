"""Site side of the pooled Cox fit: a risk round, then one secure sum per Newton iteration.

Side: site. Used when every site takes part in secure sums (thresholds on, a common time grid):
no site's own sums are seen, so no site merges its own steps or refuses a model for its size (the
per-site protocol's ``max_parameters`` is held by the pooled rows instead), and the fit is the
pooled rows' Cox fit on *blocks* of the grid.

``cox_pool_setup`` (a secure sum)
    The model's rows (every model column present, agreed levels; left out through the release
    ledger, :meth:`SiteData.complete_rows`), their count (perturbed by two sites), the sums and
    sums of squares of every design column (the pooled centre and scale), and per stratum (the
    product of the strata columns' agreed levels) and grid step the number of events up to that
    step, at that step, at risk there and leaving there, each perturbed in {-1, 0, 1} keyed by
    the patients counted.

    And per design column the patients without the site's most common value (perturbed), and
    whether it has any: a column that singles out fewer than k patients over the sites is
    refused (:func:`~fedhem_kernel.privacy.tables.singled_out`, checked again by every site in
    each iteration).

``cox_pool_sums`` (a secure sum per Newton iteration, *sealed*)
    The blocks the coordinator chose, checked: every site recomputes them from the setup round's
    signed total (:func:`~fedhem_kernel.analyses.cox.time_blocks`: at least k patients leave in
    each block, over the sites) and refuses any other. Per block the risk-set sums over the rows
    still at risk at its first step (exp(zβ), z·exp(zβ), zzᵀ·exp(zβ)), its number of events, and,
    where it surely holds at least k events, the same sums over them (Efron's ties; Breslow's
    elsewhere); per stratum the sum of the events' covariates. These are *sealed* fields: their
    total is the sites' alone (the coordinator's total carries every site's group mask,
    :mod:`fedhem_kernel.protocol.secure_sum`). The coordinator does not choose β: a fit's first
    round seals the sums at β = 0; each later round carries the previous round's signed replies,
    which every site opens, evaluates (log partial likelihood, gradient and Hessian at that β,
    the same numbers at every site: :func:`~fedhem_kernel.analyses.cox.likelihood.
    block_likelihood`) and sends back in the clear (``evaluated``), and seals the sums at the
    next Newton step (:class:`~fedhem_kernel.analyses.common.newton.NewtonPath`, lifelines'
    schedule). So per iteration the researcher sees one likelihood, one p-vector and one p×p
    matrix summed over every block, never a block's sums: two cohorts a ledger atom apart no
    longer give, block by block, the covariates of the atom's few members still at risk. The
    centre and scale are the site's own, derived from the setup round's signed total (never taken
    from the request); a step beyond ``max_coefficient`` (in those units) is not taken.

Events beyond the horizon (50 years on a monthly grid) count as censored there.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.newton import NewtonPath, SingularHessian
from fedhem_kernel.analyses.common.site_features import minority_counts
from fedhem_kernel.analyses.common.site_grid import (
    asked_grid_step,
    dp_table_step,
    key_sums,
    risk_total,
)
from fedhem_kernel.analyses.cox import (
    BLOCK_COUNTS,
    MAX_COEFFICIENT,
    MAX_COVARIATES,
    MAX_COVARIATES_TOTAL,
    MAX_STRATA_COLUMNS,
    TIES,
    TRANSFORMS,
    ph_weights,
    pooled_scaling,
    time_blocks,
)
from fedhem_kernel.analyses.cox.likelihood import block_likelihood, expected_ph
from fedhem_kernel.analyses.crosstab.site import releases_perturbation
from fedhem_kernel.analyses.levels import OTHER
from fedhem_kernel.analyses.levels.site import group_index
from fedhem_kernel.errors import DisclosureError, ParameterError, SchemaError
from fedhem_kernel.privacy.survival import MAX_HORIZON, coarsen_to_policy, grid_index
from fedhem_kernel.privacy.tables import singled_out
from fedhem_kernel.protocol.params import (
    COLUMN,
    LEVELS,
    NONE,
    TEXT,
    instance,
    integer,
    list_of,
    mapping,
    number,
    options,
    text,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.protocol.secure_sum import request_binding
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

#: The rule a site refuses blocks its risk round does not allow with.
POOLED_BLOCKS = "cox_blocks"
#: The rule a site refuses coefficients off the Newton path with.
NEWTON_PATH = "cox_newton_path"
#: Most Newton iterations of one fit (the coordinator's loop stops at 500 too).
MAX_NEWTON_STEPS = 500


class PooledDesign:
    """One request's model rows at this site: design (n × p, raw), grid step, event, stratum."""

    def __init__(self, data: SiteData, params: Payload) -> None:
        if not data.secure:
            raise ParameterError("a pooled Cox fit is asked only as a secure sum", site=data.site)
        duration, event = params["duration"], params["event"]
        covariates = list(params["covariates"])
        categorical = {c: list(v) for c, v in (params.get("categorical") or {}).items()}
        if len(set(covariates)) != len(covariates) or not set(categorical) <= set(covariates):
            raise ParameterError("the covariates do not match their levels", site=data.site)
        for column, levels in categorical.items():
            if not isinstance(levels, list) or len(levels) > data.policy.max_levels:
                raise data.refuse("max_levels", f"more than {data.policy.max_levels} levels")
            if not all(isinstance(v, str) for v in levels) or len(levels) < 2:
                raise ParameterError(f"'{column}' needs a list of at least two levels")
        strata = list(params.get("strata") or [])
        strata_levels = [list(v) for v in params.get("strata_levels") or []]
        if len(strata) != len(strata_levels):
            raise ParameterError("'strata' and 'strata_levels' do not match", site=data.site)
        n_strata = math.prod(len(v) for v in strata_levels)
        if n_strata > data.policy.max_levels:
            raise data.refuse("max_levels", f"more than {data.policy.max_levels} strata")
        t = data.numeric(duration)
        e = data.numeric(event)
        missing = np.isnan(t) | np.isnan(e)
        first = duration if np.isnan(t).any() else event if np.isnan(e).any() else None
        columns: dict[str, np.ndarray] = {}
        labels: dict[str, pd.Series] = {}
        for column in covariates + strata:
            if column in categorical or column in strata:
                levels = categorical.get(column) or strata_levels[strata.index(column)]
                lab = group_index(data, column, levels)
                miss = (lab.isna() | (lab == OTHER)).to_numpy()  # rare everywhere: left out
                labels[column] = lab
            else:
                columns[column] = data.numeric(column)
                miss = np.isnan(columns[column])
            if first is None and miss.any():
                first = column
            missing |= miss
        seen = ~missing
        if (t[seen] < 0).any():
            raise SchemaError("negative survival times", **data.err(duration), rule="schema")
        if not np.isin(e[seen], (0.0, 1.0)).all():
            raise SchemaError("event indicator must be 0/1", **data.err(event), rule="schema")
        # the rows kept, snapped to the release ledger (as SiteData.complete_rows, but in a secure
        # sum a site with no complete row adds zeros: an error would say it had none)
        keep = data.release_rows(~missing, fixed=missing)
        if missing.any():
            data.log.note("patients with a missing value in the model's columns are left out")
        # the strata: the product of the agreed levels (first column slowest), snapped to the
        # ledger like any groups a fit sums over
        codes = np.zeros(len(keep), dtype=np.int64)
        for column, levels in zip(strata, strata_levels, strict=True):
            lab = pd.Categorical(labels[column], categories=levels).codes.astype(np.int64)
            codes = codes * len(levels) + np.where(lab < 0, 0, lab)
        if strata:
            codes = data.release_groups(np.where(keep, codes, -1), fixed=~keep)
            keep = keep & (codes >= 0)
        blocks: list[np.ndarray] = []
        self.columns: list[str] = []
        self.sources: list[str] = []
        for column in covariates:
            if column in categorical:
                arr = labels[column].to_numpy(dtype=object)
                blocks += [(arr == level).astype(float) for level in categorical[column][1:]]
                self.columns += [f"{column}_{level}" for level in categorical[column][1:]]
                self.sources += [column] * (len(categorical[column]) - 1)
            else:
                blocks.append(columns[column])
                self.columns.append(column)
                self.sources.append(column)
        if len(blocks) > MAX_COVARIATES_TOTAL:
            raise data.refuse("max_parameters", "too many design columns")
        self.x = np.column_stack(blocks)[keep] if blocks else np.zeros((int(keep.sum()), 0))
        self.keys = data.row_keys()[keep]
        self.event = e[keep].astype(bool)
        self.stratum = codes[keep]
        self.n_strata = n_strata
        self.horizon = int(params["horizon"])
        self.step = asked_grid_step(data, params["grid"], data.schema.column(duration).unit)
        _, coarse = coarsen_to_policy(
            t[keep],
            params["grid"],
            data.schema.column(duration).unit,
            data.log.note,
            data.err(duration),
        )
        _pin_plan(data, params, self.step, self.horizon)
        self.index = grid_index(t[keep], self.step, self.horizon)
        self.event &= self.index <= self.horizon  # beyond the horizon: censored there
        self.p = self.x.shape[1]


def _pin_plan(data: SiteData, params: Payload, step: float, horizon: int) -> None:
    """Every pooled Cox fit on a dataset cuts its blocks with one ``k``, grid and horizon: the
    first fit's (the coordinator's plan, the same for every honest fit). Blocks cut another way
    would start at other steps, and the risk-set sums at β = 0 of two partitions, subtracted,
    would give the covariates of the few patients leaving between two starts."""
    asked = (int(params.get("k", 0)), float(step), int(horizon))
    pinned = data.scratch.get("cox_plan")
    if pinned is None:
        if "k" not in params:  # the setup round names no k: its blocks are cut later
            return
        data.scratch["cox_plan"] = asked
        return
    k = asked[0] if "k" in params else pinned[0]
    if (k, asked[1], asked[2]) != pinned:
        raise DisclosureError(
            "every pooled Cox fit on this dataset cuts its time blocks with the same minimum, "
            "grid and horizon as the first one",
            site=data.site,
            dataset=data.dataset,
            rule=POOLED_BLOCKS,
        )


def site_cox_pool_setup(data: SiteData, params: Payload) -> Payload:
    """The model rows' count (perturbed by two sites), the design columns' sums and sums of
    squares, and per stratum and grid step the perturbed number of events up to that step."""
    d = PooledDesign(data, params)
    width = d.horizon + 1
    out = {
        name: np.zeros((d.n_strata, size), dtype=np.int64)
        for name, size in (
            ("events_below", width),
            ("dying", width),
            ("at_risk", width + 1),
            ("leaving", width + 1),
        )
    }
    tag = f"{data.dataset}\0cox\0{params['duration']}\0".encode()

    def perturbed(name: str, rows: np.ndarray, size: int, how: str) -> None:
        # each count keyed by the patients it counts (the same patients, the same perturbation)
        index, keys = d.index[rows], d.keys[rows]
        counts = np.bincount(index, minlength=width + 1)
        sums = key_sums(index, keys, width + 1, how == "from_end")
        if how == "up_to":
            counts, sums = np.cumsum(counts), np.cumsum(sums, dtype=np.uint64)
        elif how == "from_end":
            counts = np.cumsum(counts[::-1])[::-1]
        noise = data.count_noise(sums[:size], counts[:size], tag + name.encode())
        out[name][s] = counts[:size] + noise

    for s in range(d.n_strata):
        rows = d.stratum == s
        perturbed("events_below", rows & d.event, width, "up_to")
        perturbed("dying", rows & d.event, width, "at")
        perturbed("at_risk", rows, width + 1, "from_end")
        perturbed("leaving", rows, width + 1, "at")
    n = len(d.x)
    if releases_perturbation(data):
        keys = np.array([d.keys.sum(dtype=np.uint64)], dtype=np.uint64)
        n += int(data.count_noise(keys, np.array([n]), b"cox-n")[0])
    return {
        "n": np.array([n], dtype=np.int64),
        **minority_counts(data, d.x, d.keys),
        "sum": d.x.sum(axis=0),
        "sumsq": (d.x**2).sum(axis=0),
        **out,
    }


def _checked_blocks(
    data: SiteData, params: Payload, d: PooledDesign
) -> tuple[list[list[int]], list[list[bool]], Payload, int]:
    """The blocks asked (per stratum, first steps) and where Efron's sums are released, checked
    against the setup round's total; that total and how many sites it was over."""
    first = {k: v for k, v in params.items() if k in SETUP_PARAMS or k in ("decided", "evidence")}
    below, m, totals = risk_total(
        data, first, "cox_pool_setup", "events_below", (d.n_strata, d.horizon + 1)
    )
    asked = params["decided"]
    shapes = {"dying": d.horizon + 1, "at_risk": d.horizon + 2, "leaving": d.horizon + 2}
    if (
        params["k"] < data.k
        or len(asked) != d.n_strata
        or any(np.shape(totals.get(f)) != (d.n_strata, w) for f, w in shapes.items())
    ):
        raise ParameterError("the blocks do not match the setup round", site=data.site)
    flags = []
    for s in range(d.n_strata):
        starts, efron = time_blocks({f: totals[f][s] for f in BLOCK_COUNTS}, params["k"], m)
        flags.append(efron)
        if list(asked[s]) != starts:
            raise DisclosureError(
                "the fit's time blocks are not those the setup round allows (each must hold "
                f"at least {data.k} events over the sites)",
                site=data.site,
                dataset=data.dataset,
                rule=POOLED_BLOCKS,
            )
    for key, shape in (("n", (1,)), ("sum", (d.p,)), ("sumsq", (d.p,)), ("others", (d.p,))):
        if np.shape(totals.get(key)) != shape:
            raise ParameterError("the fit does not match its setup round", site=data.site)
    bad = singled_out(totals, data.k, m)
    if bad is not None:
        raise data.refuse(
            "min_cell_count",
            f"covariate '{d.columns[bad]}' singles out fewer than {data.k} patients over the "
            "sites (all others share one value): their survival could be read from the fit",
            d.sources[bad],
        )
    return [list(b) for b in asked], flags, totals, m


def site_cox_pool_sums(data: SiteData, params: Payload) -> Payload:
    """The previous round's total opened and evaluated (``evaluated``, in the clear), and sealed:
    per block the risk-set sums and the events' sums at the next β of the Newton path, per
    stratum the events' covariate sum (raw units); zeros where the path ends."""
    d = PooledDesign(data, params)
    blocks, flags, totals, _ = _checked_blocks(data, params, d)
    center, scale = pooled_scaling(totals)
    if (scale <= 0).any():
        raise ParameterError("a covariate has no variation in the pooled rows", site=data.site)
    beta, evaluated = _advance(data, params, blocks, d, center, scale)
    out = _sealed_sums(d, blocks, flags, center, scale, beta)
    if out is None:  # the overflow of the linear predictor ends the path (no refusal)
        _paths(data)[str(params["fit"])].ended = True
        evaluated["next"] = None
        out = _sealed_sums(d, blocks, flags, center, scale, None)
        assert out is not None
    return {**out, "evaluated": evaluated}


def _sealed_sums(
    d: PooledDesign,
    blocks: list[list[int]],
    flags: list[list[bool]],
    center: np.ndarray,
    scale: np.ndarray,
    beta: np.ndarray | None,
) -> Payload | None:
    """The sealed sums at ``beta`` (zeros if None; None if the linear predictor overflows)."""
    z = (d.x - center) / scale
    w = np.exp(z @ beta) if beta is not None else np.zeros(len(z))
    if not np.isfinite(w).all():
        return None
    if beta is None:
        z = np.zeros_like(z)
    p = d.p
    iu = np.triu_indices(p)
    total = sum(len(b) for b in blocks)
    out = {
        "S0": np.zeros(total),
        "S1": np.zeros((total, p)),
        "S2": np.zeros((total, len(iu[0]))),
        "D0": np.zeros(total),
        "D1": np.zeros((total, p)),
        "D2": np.zeros((total, len(iu[0]))),
        "events": np.zeros(total, dtype=np.int64),
        "event_sum": np.zeros((d.n_strata, p)),
    }
    at = 0
    for s, starts in enumerate(blocks):
        rows = d.stratum == s
        if not starts:
            continue
        # each row's block: the last block starting at or before its step (-1: before the first)
        b = np.searchsorted(np.asarray(starts), d.index[rows], side="right") - 1
        ws, zs, ev = w[rows], z[rows], d.event[rows]
        n_blocks, span = len(starts), slice(at, at + len(starts))
        # a block's own event sums only where it surely holds k events (Breslow's way elsewhere)
        shown = np.asarray(flags[s], dtype=bool)
        died = ev & shown[b]
        for prefix, these, cumulate in (
            ("S", np.ones(len(b), dtype=bool), True),
            ("D", died, False),
        ):
            sums = _block_sums(b[these], ws[these], zs[these], n_blocks, iu)
            for part, values in zip("012", sums, strict=True):
                if cumulate:  # from the end: the risk set at each block is its leavers and later
                    np.cumsum(values[::-1], axis=0, out=values[::-1])
                out[prefix + part][span] = values
        if beta is not None:
            out["events"][span] = np.bincount(b[ev], minlength=n_blocks)
            out["event_sum"][s] = d.x[rows][ev & (b >= 0)].sum(axis=0)
        at += len(starts)
    return out


def site_cox_pool_ph(data: SiteData, params: Payload) -> Payload:
    """The proportional-hazards test's share: Σ over this site's events of w·z (standardised
    covariates, the site's own centre and scale), with the weights w of each event's block that
    the site derives itself from the setup round's signed total (:func:`~fedhem_kernel.analyses.
    cox.ph_weights`: one per transform, the same for every block of a group that surely holds k
    events); and, in the clear (``expected``, the same at every site), the pooled expected part
    Σ_b w_b·d_b·z̄_b at the fit's last evaluated β, from that round's sealed total (opened here:
    the researcher never sees a block's sums). Nothing here is the coordinator's choice."""
    d = PooledDesign(data, params)
    blocks, _, totals, m = _checked_blocks(data, params, d)
    center, scale = pooled_scaling(totals)
    if (scale <= 0).any():
        raise ParameterError("a covariate has no variation in the pooled rows", site=data.site)
    weights, _ = ph_weights(totals, blocks, d.step, int(params["k"]), m)
    state = _paths(data).get(str(params["fit"]))
    if state is None or len(state.sealed) < 2:
        raise _off_path(data, "the test follows a fit this site took part in")
    # the last β the fit evaluated (the round after it sealed more)
    evidence = params["path"].get("evidence")
    *_, strata = _opened(data, d, params, blocks, center, scale, evidence, state.sealed[-2])
    try:
        expected = expected_ph(strata, weights, params["ties"])
    except (KeyError, ValueError, IndexError):
        raise _off_path(data, "the fit's last round gives no test") from None
    z = (d.x - center) / scale
    out = np.zeros((len(TRANSFORMS), d.p))
    nonempty = [s for s, starts in enumerate(blocks) if starts]
    for s, w in zip(nonempty, weights, strict=True):
        rows = d.stratum == s
        b = np.searchsorted(np.asarray(blocks[s]), d.index[rows], side="right") - 1
        died = d.event[rows] & (b >= 0)
        out += w[b[died]].T @ z[rows][died]
    return {"ph": out, "expected": expected.tolist()}


#: Fits whose Newton path a site keeps (the oldest is forgotten: its next round is refused).
MAX_PATHS = 32


class _Path:
    """One fit's Newton path at this site: the model asked, the path, and the last two rounds'
    requests with the β each sealed its sums at."""

    def __init__(self, model: str, p: int) -> None:
        self.model = model
        self.path = NewtonPath(p)
        self.sealed: list[tuple[Payload, np.ndarray]] = []
        self.ended = False

    def sealing(self, params: Payload, beta: np.ndarray) -> None:
        self.sealed = [*self.sealed[-1:], (dict(params), beta.copy())]


def _paths(data: SiteData) -> OrderedDict[str, _Path]:
    return data.scratch.setdefault("cox_paths", OrderedDict())


def _advance(
    data: SiteData,
    params: Payload,
    blocks: list[list[int]],
    d: PooledDesign,
    center: np.ndarray,
    scale: np.ndarray,
) -> tuple[np.ndarray | None, dict]:
    """Where this round seals its sums, and what it shows in the clear: β = 0 and nothing in a
    fit's first round; later, the previous round's total opened and evaluated at its β (the
    log partial likelihood, gradient and Hessian: ``evaluated``), then the Newton step from there
    (``next``; None where lifelines' loop would stop: a step beyond ``max_coefficient``, a
    singular Hessian, :data:`MAX_NEWTON_STEPS`). The path is this site's: the coordinator's
    only choice is to go on or stop."""
    paths = _paths(data)
    model = request_binding(
        "cox_pool_sums",
        data.dataset,
        None,
        {k: v for k, v in params.items() if k != "path"},
    )
    fit = str(params["fit"])
    state = paths.get(fit)
    asked_path = params.get("path")
    if asked_path is None:  # a fit's first round (or asked again): the sums at β = 0
        state = paths[fit] = _Path(model, d.p)
        while len(paths) > MAX_PATHS:
            paths.popitem(last=False)
        beta = state.path.take()
        state.sealing(params, beta)
        return beta, {"beta": None, "next": beta.tolist()}
    if state is None or state.model != model or not state.sealed:
        raise _off_path(data, "this site holds no earlier round of this fit")
    if state.ended:
        raise _off_path(data, "the fit's path has ended")
    if not isinstance(asked_path, dict) or set(asked_path) != {"evidence"}:
        raise _off_path(data, "a later round of a fit carries the previous round's replies")
    at = state.sealed[-1][1]
    ll, grad, hess, _ = _opened(
        data, d, params, blocks, center, scale, asked_path["evidence"], state.sealed[-1]
    )
    path = copy.deepcopy(state.path)
    evaluated: dict = {
        "beta": at.tolist(),
        "ll": float(ll),
        "grad": np.asarray(grad, dtype=float).tolist(),
        "hess": np.asarray(hess, dtype=float).tolist(),
    }
    beta: np.ndarray | None = None
    if np.isfinite(ll) and np.isfinite(grad).all() and np.isfinite(hess).all():
        try:
            path.resize(path.direction(grad, hess))
            if (
                path.evaluated < MAX_NEWTON_STEPS
                and np.abs(path.next()).max(initial=0.0) <= MAX_COEFFICIENT
            ):
                beta = path.take()
        except SingularHessian:
            pass
    state.path = path
    state.ended = beta is None
    evaluated["next"] = None if beta is None else beta.tolist()
    state.sealing(params, at if beta is None else beta)
    paths.move_to_end(fit)
    return beta, evaluated


def _opened(
    data: SiteData,
    d: PooledDesign,
    params: Payload,
    blocks: list[list[int]],
    center: np.ndarray,
    scale: np.ndarray,
    evidence: object,
    sealed: tuple[Payload, np.ndarray],
) -> tuple[float, np.ndarray, np.ndarray, list]:
    """A sealed round of this fit opened (``sealed``: its request and the β it sealed at; the
    signed replies must be that request's) and evaluated there."""
    asked, beta = sealed
    totals = data.earlier_total(evidence, "cox_pool_sums", asked)
    try:
        return block_likelihood(
            totals,
            blocks,
            step=d.step,
            horizon=d.horizon,
            center=center,
            scale=scale,
            ties=params["ties"],
            beta=beta,
        )
    except (KeyError, ValueError, IndexError):
        raise _off_path(data, "the round's total does not fit this model") from None


def _off_path(data: SiteData, why: str) -> DisclosureError:
    return DisclosureError(
        f"{why}: a pooled Cox fit follows Newton–Raphson from β = 0",
        site=data.site,
        dataset=data.dataset,
        rule=NEWTON_PATH,
    )


def _block_sums(
    block: np.ndarray, w: np.ndarray, z: np.ndarray, n_blocks: int, iu: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block, over its rows: Σw, Σw·z and the upper triangle of Σw·zzᵀ (one block's rows at
    a time: no rows × p² array)."""
    p = z.shape[1]
    s0 = np.bincount(block, weights=w, minlength=n_blocks)
    s1 = np.zeros((n_blocks, p))
    s2 = np.zeros((n_blocks, len(iu[0])))
    order = np.argsort(block, kind="stable")
    bounds = np.searchsorted(block[order], np.arange(n_blocks + 1))
    for j in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[j] : bounds[j + 1]]
        weighted = z[rows] * w[rows, None]
        s1[j] = weighted.sum(axis=0)
        s2[j] = (weighted.T @ z[rows])[iu]
    return s0, s1, s2


SETUP_PARAMS = {
    "duration": COLUMN,
    "event": COLUMN,
    "covariates": list_of(COLUMN, MAX_COVARIATES, least=1),
    "categorical": mapping(COLUMN, LEVELS, most=MAX_COVARIATES),
    "strata": (list_of(COLUMN, most=MAX_STRATA_COLUMNS), NONE),
    "strata_levels": (list_of(LEVELS, most=MAX_STRATA_COLUMNS), NONE),
    "ties": options(*TIES),
    "fit": text(64),
    "grid": (TEXT, number(low=0)),
    "horizon": integer(1, MAX_HORIZON),
}
SUMS_PARAMS = {
    **SETUP_PARAMS,
    "decided": list_of(list_of(integer(0, MAX_HORIZON), most=MAX_HORIZON + 1)),
    "k": integer(1, 10**6),
    "evidence": instance(dict, "the signed replies of the setup round"),
    "path": (instance(dict, "the signed replies of the previous round"), NONE),
}


STEPS = [
    SiteStep(
        "cox_pool_setup",
        "cox",
        site_cox_pool_setup,
        param_columns("duration", "event", "covariates", "strata"),
        params=SETUP_PARAMS,
        sums={
            "n": "count",
            "others": "count",
            "varied": "count",
            "sum": "real",
            "sumsq": "real",
            "events_below": "count",
            "dying": "count",
            "at_risk": "count",
            "leaving": "count",
        },
    ),
    SiteStep(
        "cox_pool_sums",
        "cox",
        site_cox_pool_sums,
        param_columns("duration", "event", "covariates", "strata"),
        params=SUMS_PARAMS,
        sums={
            "S0": "sealed-real",
            "S1": "sealed-real",
            "S2": "sealed-real",
            "D0": "sealed-real",
            "D1": "sealed-real",
            "D2": "sealed-real",
            "events": "sealed-count",
            "event_sum": "sealed-real",
        },
        shared=("evaluated",),
    ),
    SiteStep(
        "cox_pool_ph",
        "cox",
        site_cox_pool_ph,
        param_columns("duration", "event", "covariates", "strata"),
        params={**SUMS_PARAMS, "path": instance(dict, "the signed replies of the fit's round")},
        sums={"ph": "real"},
        shared=("expected",),
    ),
    # DP mode: every covariate pattern's event table, one noised secure sum (cox/combine_dp.py)
    dp_table_step("cox_dp", "cox", param_columns("duration", "event", "strata")),
]
