"""A site's Cox design: its rows sorted by time, merged time steps and covariates, checked against the
site's rules once per fit and kept in the dataset's scratch until the fit's last round.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.cox import MAX_COEFFICIENT, MAX_COVARIATES_TOTAL, SITE_STRATUM
from fedhem_kernel.errors import ParameterError, SchemaError
from fedhem_kernel.privacy.survival import (
    check_event_table,
    coarsen_to_policy,
    event_table,
    merge_small_steps,
)
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.protocol.report import Detail, ReleaseLog
from fedhem_kernel.site.steps import SiteData

#: A site needs at least this many patients per model parameter.
ROWS_PER_PARAMETER = 10


#: Designs kept per dataset at a site (one running fit needs one).
_CACHE_PER_SITE = 2


# -- parameters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DesignParams:
    """What fixes a site's design: columns, level coding, strata and ties."""

    duration: str
    event: str
    covariates: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]]
    strata: str | tuple[str, ...] | None
    ties: str

    @classmethod
    def from_params(cls, params: Payload) -> DesignParams:
        def name(key: str) -> str:
            value = params.get(key)
            if not isinstance(value, str) or not value:
                raise ParameterError(f"'{key}' must be a column name")
            return value

        covs = params.get("covariates")
        if not isinstance(covs, list | tuple) or not covs:
            raise ParameterError("'covariates' must be a non-empty list of column names")
        if not all(isinstance(c, str) and c for c in covs):
            raise ParameterError("'covariates' must be a non-empty list of column names")
        cats = params.get("categorical") or {}
        if not isinstance(cats, dict) or not all(
            isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)
            for v in cats.values()
        ):
            raise ParameterError("'categorical' must map columns to lists of levels")
        strata = params.get("strata")
        if isinstance(strata, list | tuple):
            if not strata or not all(isinstance(c, str) and c for c in strata):
                raise ParameterError("'strata' must be column names, 'site' or None")
            strata = tuple(strata)
        elif strata is not None and strata != SITE_STRATUM:
            raise ParameterError("'strata' must be column names, 'site' or None")
        ties = params.get("ties", "efron")
        if ties not in ("efron", "breslow"):
            raise ParameterError("'ties' must be 'efron' or 'breslow'")
        return cls(
            name("duration"),
            name("event"),
            tuple(covs),
            {str(c): tuple(v) for c, v in cats.items()},
            strata,
            str(ties),
        )

    def digest(self) -> str:
        doc = {
            "duration": self.duration,
            "event": self.event,
            "covariates": list(self.covariates),
            "categorical": {c: list(v) for c, v in sorted(self.categorical.items())},
            "strata": list(self.strata) if isinstance(self.strata, tuple) else self.strata,
            "ties": self.ties,
        }
        return json.dumps(doc, sort_keys=True)


# -- the design -----------------------------------------------------------------------------
@dataclass
class SiteStratum:
    """One stratum at this site: its merged steps (global block ids ``lo..hi-1``)."""

    label: tuple[str, ...]
    n: int
    lo: int
    hi: int
    block_times: np.ndarray
    block_events: np.ndarray
    event_sum: np.ndarray

    @property
    def event_times(self) -> np.ndarray:
        return self.block_times[self.block_events > 0]


@dataclass
class SiteDesign:
    """The analysis rows of one fit, sorted by (stratum, step, event); never leaves the site."""

    columns: list[str]
    xt: np.ndarray  # (p, n) design, rows sorted; raw, or standardised to ``_units``
    seg_starts: np.ndarray | None  # first row of each (step, event) segment (see segments())
    seg_block: np.ndarray | None  # its merged step (global id)
    seg_event: np.ndarray | None  # whether it holds the step's events
    n_blocks: int
    row_block: np.ndarray  # per sorted row: its merged step (global id)
    row_event: np.ndarray  # per sorted row: 1.0 for an event
    strata: list[SiteStratum]
    mean: np.ndarray
    m2: np.ndarray
    time_step: float | None
    unit: str | None
    n_segments: int = 0
    notes: list[str] = field(default_factory=list)
    suppressions: list[Detail] = field(default_factory=list)
    _units: tuple[np.ndarray, np.ndarray] | None = None
    _weights: tuple[bytes, np.ndarray] | None = None  # exp(zβ) of the last request, by its key
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n(self) -> int:
        return int(self.xt.shape[1])

    @property
    def p(self) -> int:
        return int(self.xt.shape[0])

    def standardised(self, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The design in standard units (p × n), standardised in place once per fit.

        One copy of the design is kept (memory: 8·n·p bytes per cached fit). Call with ``lock``.
        """
        if self._units is not None:
            old_center, old_scale = self._units
            if np.array_equal(old_center, center) and np.array_equal(old_scale, scale):
                return self.xt
            self.xt *= old_scale[:, None]
            self.xt += old_center[:, None]
        self.xt -= center[:, None]
        self.xt /= scale[:, None]
        self._units = (center.copy(), scale.copy())
        return self.xt

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``seg_starts``, ``seg_block``, ``seg_event``; built when first needed (with exact times
        there are about as many segments as rows, and only the ``zzᵀ`` sums use them). Call with
        ``lock``."""
        if self.seg_starts is None or self.seg_block is None or self.seg_event is None:
            key = self.row_block * 2 + self.row_event.astype(np.int64)
            self.seg_starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            self.seg_block = key[self.seg_starts] // 2
            self.seg_event = key[self.seg_starts] % 2 == 1
        return self.seg_starts, self.seg_block, self.seg_event

    def replay(self, data: SiteData) -> None:
        """Repeat the build's notes and suppressions in this request's release log."""
        for text in self.notes:
            data.log.note(text)
        data.log.suppressions.extend(self.suppressions)


def _column_values(
    data: SiteData, column: str, categorical: bool
) -> tuple[np.ndarray | pd.Series, np.ndarray]:
    if categorical:
        labels = data.labels(column)
        return labels, labels.isna().to_numpy()
    values = data.numeric(column)
    return values, np.isnan(values)


def build_design(data: SiteData, spec: DesignParams) -> SiteDesign:
    """Check every release rule and build the sorted design (raises on any refusal).

    In order: the survival columns' values, the rows left out for a missing value (snapped to
    the release ledger), the covariate columns (no rare category, enough rows per parameter, no
    column singling out a few patients), the strata (each >= k), the time steps (merged until
    every step's counts are 0 or >= k). The ledger keeps the snapped rows only if every check
    passes (a refusal ends the request's ledger transaction).
    """
    rec = ReleaseLog()  # the build's notes and suppressions, replayed on every request
    rows = _model_rows(data, spec)
    columns, sources, blocks = _covariate_columns(data, spec, rows)
    codes, labels = _strata_codes(data, spec, rows)
    unit = data.schema.column(spec.duration).unit
    tk, step = coarsen_to_policy(
        rows.t, data.policy.time_resolution, unit, rec.note, data.err(spec.duration)
    )
    block, strata, n_blocks = _time_steps(data, spec, tk, rows.e, codes, labels, len(blocks), rec)
    design = _sorted_design(columns, blocks, block, rows.e, strata, n_blocks)
    design.time_step, design.unit = step, unit
    design.notes, design.suppressions = rec.notes, rec.suppressions
    return design


@dataclass
class _ModelRows:
    """The cohort rows a fit keeps (every model column present), and their values."""

    keep: np.ndarray  # flags over the cohort
    dropped: int
    t: np.ndarray  # kept rows only
    e: np.ndarray
    values: dict[str, Any]  # covariate -> values over the cohort
    strata: dict[str, pd.Series]  # stratum column -> labels over the cohort

    @property
    def n(self) -> int:
        return len(self.t)


def _model_rows(data: SiteData, spec: DesignParams) -> _ModelRows:
    k = data.k
    t = data.numeric(spec.duration)
    e = data.numeric(spec.event)
    missing = np.isnan(t) | np.isnan(e)
    first_missing = (
        spec.duration if np.isnan(t).any() else spec.event if np.isnan(e).any() else None
    )
    values: dict[str, Any] = {}
    for column in spec.covariates:
        values[column], miss = _column_values(data, column, column in spec.categorical)
        if first_missing is None and miss.any():
            first_missing = column
        missing |= miss
    strata_values: dict[str, pd.Series] = {}
    for column in spec.strata if isinstance(spec.strata, tuple) else ():
        labels = data.labels(column)
        miss = labels.isna().to_numpy()
        if first_missing is None and miss.any():
            first_missing = column
        missing |= miss
        strata_values[column] = labels
    seen = ~missing
    if (t[seen] < 0).any():
        raise SchemaError("negative survival times", **data.err(spec.duration), rule="schema")
    if not np.isin(e[seen], (0.0, 1.0)).all():
        raise SchemaError("event indicator must be 0/1", **data.err(spec.event), rule="schema")
    # the kept rows, snapped to the release ledger (rows left out: 0 or >= k per atom)
    keep = data.complete_rows(missing, first_missing, "the model's columns")
    if int(keep.sum()) < k:
        raise data.refuse(
            "min_cell_count", f"fewer than {k} patients have complete data for this model"
        )
    return _ModelRows(keep, int((~keep).sum()), t[keep], e[keep], values, strata_values)


def _covariate_columns(
    data: SiteData, spec: DesignParams, rows: _ModelRows
) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Design columns (numeric as they are, categorical as 0/1 for every agreed level but the
    first), the covariate each comes from, and their values over the kept rows; refuses rare
    categories, too many parameters and a column that singles out a few patients."""
    k, n = data.k, rows.n
    for column, levels in spec.categorical.items():
        if len(levels) > data.policy.max_levels:
            raise data.refuse("max_levels", f"more than {data.policy.max_levels} levels", column)
    p = sum(
        max(len(spec.categorical[c]) - 1, 0) if c in spec.categorical else 1
        for c in spec.covariates
    )
    if p > MAX_COVARIATES_TOTAL or (k > 1 and p * ROWS_PER_PARAMETER > n):
        raise data.refuse(  # before any column is built: a crafted level list could be huge
            "max_parameters",
            f"the model has {p} parameters: each site needs at least {ROWS_PER_PARAMETER} "
            "patients per parameter",
        )
    columns: list[str] = []
    sources: list[str] = []
    blocks: list[np.ndarray] = []
    for column in spec.covariates:
        if column in spec.categorical:
            levels = spec.categorical[column]
            labels = rows.values[column][rows.keep]
            counts = labels.value_counts()
            rare = [lv for lv, c in counts.items() if c < k or lv not in levels]
            if rare:
                raise data.refuse(
                    "min_cell_count",
                    f"a category of '{column}' has fewer than {k} patients at this site "
                    "(merge rare categories, or leave the column out)",
                    column,
                )
            arr = labels.to_numpy(dtype=object)
            for level in levels[1:]:
                columns.append(f"{column}_{level}")
                sources.append(column)
                blocks.append((arr == level).astype(float))
        else:
            columns.append(column)
            sources.append(column)
            column_values = np.asarray(rows.values[column], dtype=float)
            blocks.append(column_values if rows.dropped == 0 else column_values[rows.keep])
    p = len(blocks)
    if p == 0:
        raise ParameterError("the model has no covariate columns", **data.err())
    if k > 1 and p * ROWS_PER_PARAMETER > n:
        raise data.refuse(
            "max_parameters",
            f"the model has {p} parameters: each site needs at least {ROWS_PER_PARAMETER} "
            "patients per parameter",
        )
    if k > 1:
        for j in range(p):
            _, counts = np.unique(blocks[j], return_counts=True)
            others = n - int(counts.max())
            if 0 < others < k:
                raise data.refuse(
                    "min_cell_count",
                    f"covariate '{columns[j]}' singles out fewer than {k} patients (all others "
                    "share one value): their survival could be read from the fit",
                    sources[j],
                )
    return columns, sources, blocks


def _strata_codes(
    data: SiteData, spec: DesignParams, rows: _ModelRows
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Each kept row's stratum (an index into the labels) and the strata's labels; refuses too
    many strata and a stratum of fewer than k patients."""
    k, n = data.k, rows.n
    if isinstance(spec.strata, tuple):
        frame = pd.DataFrame({c: rows.strata[c][rows.keep].to_numpy() for c in spec.strata})
        codes = frame.groupby(list(spec.strata), sort=True).ngroup().to_numpy()
        firsts = frame.drop_duplicates().sort_values(list(spec.strata))
        labels = [tuple(str(v) for v in row) for row in firsts.itertuples(index=False)]
        if len(labels) > data.policy.max_levels:
            raise data.refuse(
                "max_levels",
                f"more than {data.policy.max_levels} strata",
                spec.strata[0],
            )
    elif spec.strata == SITE_STRATUM:
        codes = np.zeros(n, dtype=np.int64)
        labels = [(data.site,)]
    else:
        codes = np.zeros(n, dtype=np.int64)
        labels = [()]
    sizes = np.bincount(codes, minlength=len(labels))
    if k > 1 and (sizes < k).any():
        cols = ", ".join(f"'{c}'" for c in spec.strata)  # type: ignore[union-attr]
        raise data.refuse(
            "min_cell_count",
            f"a stratum of {cols} has fewer than {k} patients at this site",
            spec.strata[0],  # type: ignore[index]
        )
    if isinstance(spec.strata, tuple) and data.ledger is not None:
        # the strata are row sets the fit sums over: through the release ledger, and refused if
        # it would move a patient to another stratum (data-dependent, as ComBat's batches)
        full = np.full(len(rows.keep), -1, dtype=np.int64)
        full[rows.keep] = codes
        if not np.array_equal(data.release_groups(full, fixed=~rows.keep), full):
            raise data.refuse(
                "differencing",
                f"a stratum cuts an earlier released group of patients into a piece of fewer "
                f"than {k}",
                spec.strata[0],
            )
    return codes, labels


def _time_steps(
    data: SiteData,
    spec: DesignParams,
    tk: np.ndarray,
    ek: np.ndarray,
    codes: np.ndarray,
    labels: list[tuple[str, ...]],
    p: int,
    rec: ReleaseLog,
) -> tuple[np.ndarray, list[SiteStratum], int]:
    """Per stratum, the coarsened times merged into steps exactly like a Kaplan–Meier table
    (every step's counts 0 or >= k); each kept row's step (numbered across strata)."""
    k = data.k
    block = np.empty(len(tk), dtype=np.int64)
    strata: list[SiteStratum] = []
    offset = 0
    for s, label in enumerate(labels):
        rows = np.flatnonzero(codes == s)
        ts, es = tk[rows], ek[rows]
        _, inverse = np.unique(ts, return_inverse=True)
        source = event_table(ts, es)
        merged, n_merged = merge_small_steps(source, k)
        where = f"stratum {', '.join(label)}" if label and spec.strata != SITE_STRATUM else ""
        if merged is None:
            raise data.refuse(
                "min_cell_count",
                (f"{where}: " if where else "")
                + f"too few events or censorings for any risk-set step of at least {k}",
                spec.event,
            )
        problems = check_event_table(merged, k)
        if problems:  # a bug in merging must never become a release
            raise RuntimeError("Cox step table failed its release check: " + ", ".join(problems))
        starts = np.searchsorted(-source.at_risk, -merged.at_risk)
        # each row's merged step, looked up by its distinct time
        local = (np.searchsorted(starts, np.arange(len(source)), side="right") - 1)[inverse]
        events_per_block = np.bincount(local, weights=es, minlength=len(merged)).astype(np.int64)
        if not np.array_equal(events_per_block, merged.events):
            raise RuntimeError("Cox step table does not match the merged event table")
        if n_merged:
            rec.suppressed(
                "min_cell_count",
                (f"{where}: " if where else "")
                + f"{n_merged} time steps with counts below {k} merged into neighbours",
                action="merged",
                steps=int(n_merged),
                k=k,
            )
        block[rows] = offset + local
        strata.append(
            SiteStratum(
                label=label,
                n=len(rows),
                lo=offset,
                hi=offset + len(merged),
                block_times=np.asarray(merged.time, dtype=float),
                block_events=np.asarray(merged.events, dtype=np.int64),
                event_sum=np.zeros(p),  # set from the sorted design
            )
        )
        offset += len(merged)
    return block, strata, offset


def _sorted_design(
    columns: list[str],
    blocks: list[np.ndarray],
    block: np.ndarray,
    ek: np.ndarray,
    strata: list[SiteStratum],
    n_blocks: int,
) -> SiteDesign:
    """The design sorted by step, then event (stable), and transposed, filled a column at a
    time (no n×p temporaries); each stratum's event sums from it."""
    p, n = len(blocks), len(block)
    key = block * 2 + ek.astype(np.int64)  # rows by step, then event (stable: then row order)
    if n_blocks < 2**15:  # a 16-bit key: numpy sorts it by radix, several times faster
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")
    del key
    row_block = block[order]
    row_event = ek[order].astype(float)
    new_segment = (row_block[1:] != row_block[:-1]) | (row_event[1:] != row_event[:-1])
    n_segments = 1 + int(np.count_nonzero(new_segment))
    del new_segment
    xt = np.empty((p, n))
    for j in range(p):
        np.take(blocks[j], order, out=xt[j], mode="clip")  # unbuffered (indices are valid)
        blocks[j] = xt[j]  # frees the unsorted column
    mean = xt.mean(axis=1)
    m2 = np.array([np.square(xt[j] - mean[j]).sum() for j in range(p)])
    for s in strata:  # its rows are consecutive in the sorted design
        lo, hi = np.searchsorted(row_block, (s.lo, s.hi))
        s.event_sum = np.array([(xt[j, lo:hi] * row_event[lo:hi]).sum() for j in range(p)])
    return SiteDesign(
        columns=columns,
        xt=xt,
        seg_starts=None,
        seg_block=None,
        seg_event=None,
        n_blocks=n_blocks,
        row_block=row_block,
        row_event=row_event,
        strata=strata,
        mean=mean,
        m2=m2,
        time_step=None,
        unit=None,
        n_segments=n_segments,
    )


# -- cache (one fit's design across its iterations) -----------------------------------------
#: Where a site keeps its designs: the dataset's scratch (kept by the executor between rounds).
SCRATCH = "cox"


def _cache_key(data: SiteData, spec: DesignParams, fit_id: str) -> tuple[str, ...]:
    index = data.cohort.index.to_numpy()
    n = len(index)
    if n and index[0] == 0 and index[-1] == n - 1 and bool((np.diff(index) > 0).all()):
        rows = f"all {n}"  # every row of the dataset, in order (no filter): no need to hash them
    else:
        rows = hashlib.blake2b(index.tobytes(), digest_size=16).hexdigest()
    policy = json.dumps(data.policy.to_dict(), sort_keys=True, default=str)
    return (fit_id, spec.digest(), rows, str(len(data.cohort)), policy)


def cached_designs(data: SiteData) -> OrderedDict[tuple[str, ...], SiteDesign]:
    """This dataset's designs of running fits, oldest first (at most ``_CACHE_PER_SITE``)."""
    return data.scratch.setdefault(SCRATCH, OrderedDict())


def site_design(data: SiteData, params: Payload) -> tuple[DesignParams, SiteDesign]:
    """The design of this fit, from the dataset's scratch when the same fit asked before.

    Refused at a site whose releases are pooled only (rule ``pooled_only``): its own sums at
    any β, against the pooled fit's totals, would give the other sites' few patients per block."""
    data.per_site_table("a Cox model's sums")
    spec = DesignParams.from_params(params)
    fit_id = params.get("fit")
    key = _cache_key(data, spec, str(fit_id)) if isinstance(fit_id, str) and fit_id else None
    entries = cached_designs(data)
    if key is not None:
        design = entries.get(key)
        if design is not None:
            design.replay(data)
            return spec, design
    design = build_design(data, spec)
    design.replay(data)
    if key is not None:
        entries[key] = design
        entries.move_to_end(key)
        while len(entries) > _CACHE_PER_SITE:
            entries.popitem(last=False)
    return spec, design


def _vector(params: Payload, key: str, p: int) -> np.ndarray:
    value = np.asarray(params.get(key), dtype=float)
    if value.shape != (p,) or not np.isfinite(value).all():
        raise ParameterError(f"'{key}' must hold {p} finite numbers")
    return value


def checked_coefficients(
    data: SiteData, design: SiteDesign, params: Payload
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The requested β, center and scale (checked; ``max_coefficient`` refuses large β) and the
    design standardised to them (p × n). Every step that weights rows by β goes through here."""
    p = design.p
    beta = _vector(params, "beta", p)
    center = _vector(params, "center", p)
    scale = _vector(params, "scale", p)
    if (scale <= 0).any():
        raise ParameterError("'scale' must be positive")
    if np.abs(beta).max(initial=0.0) > MAX_COEFFICIENT:
        raise data.refuse(
            "max_coefficient",
            f"a coefficient above {MAX_COEFFICIENT:g} standard units (hazard ratio above "
            f"e^{MAX_COEFFICIENT:g} per standard deviation): the model does not converge, and "
            "such weights could single out a patient",
        )
    return beta, center, scale, design.standardised(center, scale)


def _weights(data: SiteData, design: SiteDesign, params: Payload) -> tuple[np.ndarray, np.ndarray]:
    """The standardised design (p × n) and exp(zβ) for the requested coefficients, checked."""
    beta, center, scale, zt = checked_coefficients(data, design, params)
    # a cox_hessian request follows a cox_sums request for the same coefficients: reuse exp(zβ)
    key = beta.tobytes() + center.tobytes() + scale.tobytes()
    if design._weights is not None and design._weights[0] == key:
        return zt, design._weights[1]
    w = np.exp(np.einsum("i,in->n", beta, zt))  # no BLAS call: see site_cox_hessian
    if not np.isfinite(w).all():
        raise data.refuse("max_coefficient", "the linear predictor overflows at this step")
    design._weights = (key, w)
    return zt, w
