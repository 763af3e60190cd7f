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

- rows with a missing value in the model's columns are left out; if 1..k-1 of them would be, the
  site refuses (``min_subset_size``: a fit on everyone else could be differenced from one on all),
  and the kept rows must not differ from an earlier released row set by 1..k-1 patients
  (``differencing``; :meth:`SiteData.complete_rows`, shared with k-means, PCA and ComBat);
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

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

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

#: Largest coefficient (standardised units) a site computes sums for.
MAX_COEFFICIENT = 20.0
#: A site needs at least this many patients per model parameter.
ROWS_PER_PARAMETER = 10
#: Rows per chunk when summing the outer products (keeps temporaries near 16 MiB).
_CHUNK_BYTES = 16 * 2**20
#: Cached designs kept per site (one running fit needs one).
_CACHE_PER_SITE = 2

SITE_STRATUM = "site"


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
    """Check every release rule and build the sorted design (raises on any refusal)."""
    k = data.k
    rec = ReleaseLog()  # the build's notes and suppressions, replayed on every request
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
    strata_cols = spec.strata if isinstance(spec.strata, tuple) else ()
    strata_values: dict[str, pd.Series] = {}
    for column in strata_cols:
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

    # 0 or >= k rows left out, and the kept rows must not difference an earlier release
    keep = data.complete_rows(missing, first_missing, "the model's columns")
    dropped = int(missing.sum())
    n = int(keep.sum())
    if n < k:
        raise data.refuse(
            "min_cell_count", f"fewer than {k} patients have complete data for this model"
        )

    # design columns: numeric as is, categorical as 0/1 for every agreed level but the first
    columns: list[str] = []
    sources: list[str] = []
    blocks: list[np.ndarray] = []
    for column in spec.covariates:
        if column in spec.categorical:
            levels = spec.categorical[column]
            labels = values[column][keep]
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
            column_values = np.asarray(values[column], dtype=float)
            blocks.append(column_values if dropped == 0 else column_values[keep])
    # kept as columns (one copy of the design); laid out sorted and transposed at the end
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

    # strata
    if isinstance(spec.strata, tuple):
        frame = pd.DataFrame({c: strata_values[c][keep].to_numpy() for c in spec.strata})
        codes = frame.groupby(list(spec.strata), sort=True).ngroup().to_numpy()
        firsts = frame.drop_duplicates().sort_values(list(spec.strata))
        labels_list = [tuple(str(v) for v in row) for row in firsts.itertuples(index=False)]
        if len(labels_list) > data.policy.max_levels:
            raise data.refuse(
                "max_levels",
                f"more than {data.policy.max_levels} strata",
                spec.strata[0],
            )
    elif spec.strata == SITE_STRATUM:
        codes = np.zeros(n, dtype=np.int64)
        labels_list = [(data.site,)]
    else:
        codes = np.zeros(n, dtype=np.int64)
        labels_list = [()]
    sizes = np.bincount(codes, minlength=len(labels_list))
    if k > 1 and (sizes < k).any():
        cols = ", ".join(f"'{c}'" for c in spec.strata)  # type: ignore[union-attr]
        raise data.refuse(
            "min_cell_count",
            f"a stratum of {cols} has fewer than {k} patients at this site",
            spec.strata[0],  # type: ignore[index]
        )

    # times: coarsened, then merged per stratum exactly like a Kaplan–Meier table
    unit = data.schema.column(spec.duration).unit
    tk, ek = t[keep], e[keep]
    tk, step = coarsen_to_policy(tk, data.policy.time_resolution, unit, rec.note)
    block = np.empty(n, dtype=np.int64)
    strata: list[SiteStratum] = []
    offset = 0
    for s, label in enumerate(labels_list):
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
                event_sum=np.zeros(p),  # below, from the sorted design
            )
        )
        offset += len(merged)

    key = block * 2 + ek.astype(np.int64)  # rows by step, then event (stable: then row order)
    if offset < 2**15:  # a 16-bit key: numpy sorts it by radix, several times faster
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")
    del key
    row_block = block[order]
    row_event = ek[order].astype(float)
    new_segment = (row_block[1:] != row_block[:-1]) | (row_event[1:] != row_event[:-1])
    n_segments = 1 + int(np.count_nonzero(new_segment))
    del new_segment
    # the sorted, transposed design, filled a column at a time (no n×p temporaries)
    xt = np.empty((p, n))
    for j in range(p):
        np.take(blocks[j], order, out=xt[j], mode="clip")  # unbuffered (indices are valid)
        blocks[j] = xt[j]  # frees the unsorted column
    mean = xt.mean(axis=1)
    m2 = np.array([np.square(xt[j] - mean[j]).sum() for j in range(p)])
    for s in strata:  # its rows are consecutive in the sorted design
        lo, hi = np.searchsorted(row_block, (s.lo, s.hi))
        s.event_sum = np.array([(xt[j, lo:hi] * row_event[lo:hi]).sum() for j in range(p)])
    if dropped:  # every check passed: later queries are checked against the kept rows too
        data.remember_released(keep)
    return SiteDesign(
        columns=columns,
        xt=xt,
        seg_starts=None,
        seg_block=None,
        seg_event=None,
        n_blocks=offset,
        row_block=row_block,
        row_event=row_event,
        strata=strata,
        mean=mean,
        m2=m2,
        time_step=step,
        unit=unit,
        n_segments=n_segments,
        notes=rec.notes,
        suppressions=rec.suppressions,
    )


# -- cache (one fit's design across its iterations) -----------------------------------------
_cache: dict[str, OrderedDict[tuple[str, ...], SiteDesign]] = {}
_cache_lock = threading.Lock()


def _cache_key(data: SiteData, spec: DesignParams, fit_id: str) -> tuple[str, ...]:
    index = data.cohort.index.to_numpy()
    n = len(index)
    if n and index[0] == 0 and index[-1] == n - 1 and bool((np.diff(index) > 0).all()):
        rows = f"all {n}"  # every row of the dataset, in order (no filter): no need to hash them
    else:
        rows = hashlib.blake2b(index.tobytes(), digest_size=16).hexdigest()
    policy = json.dumps(data.policy.to_dict(), sort_keys=True, default=str)
    return (data.dataset, fit_id, spec.digest(), rows, str(len(data.cohort)), policy)


def site_design(data: SiteData, params: Payload) -> tuple[DesignParams, SiteDesign]:
    """The design of this fit, from the cache when the same fit asked before."""
    spec = DesignParams.from_params(params)
    fit_id = params.get("fit")
    key = _cache_key(data, spec, str(fit_id)) if isinstance(fit_id, str) and fit_id else None
    if key is not None:
        with _cache_lock:
            design = _cache.get(data.site, OrderedDict()).get(key)
        if design is not None:
            design.replay(data)
            return spec, design
    design = build_design(data, spec)
    design.replay(data)
    if key is not None:
        with _cache_lock:
            entries = _cache.setdefault(data.site, OrderedDict())
            entries[key] = design
            entries.move_to_end(key)
            while len(entries) > _CACHE_PER_SITE:
                entries.popitem(last=False)
    return spec, design


def clear_cache() -> None:
    """Forget every cached design (tests; a site may call it to free memory)."""
    with _cache_lock:
        _cache.clear()


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


def _vector(params: Payload, key: str, p: int) -> np.ndarray:
    value = np.asarray(params.get(key), dtype=float)
    if value.shape != (p,) or not np.isfinite(value).all():
        raise ParameterError(f"'{key}' must hold {p} finite numbers")
    return value


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
    with _cache_lock:
        entries = _cache.get(data.site, OrderedDict())
        for key in [k for k in entries if k[0] == data.dataset and k[1] == fit_id]:
            del entries[key]
    return {}
