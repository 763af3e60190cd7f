"""A site's numeric feature matrix for k-means, PCA and ComBat: checks, missing rows, and a per-query cache.

:func:`feature_matrix` reads the named numeric columns of the cohort, leaves out rows with a missing
value (0 or at least ``min_cell_count`` of them, as the Cox site does; otherwise the site refuses:
a result without a few patients could be compared with one on everyone), and refuses a feature that
singles out 1..k-1 patients (all others share one value, the one-hot attack). Checked matrices are
kept in the executor's per-dataset ``scratch`` between the rounds of an iterative query (one entry,
keyed by the features and the cohort's rows), so a round only computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhem_kernel.errors import DisclosureError, ParameterError, SchemaError
from fedhem_kernel.privacy.dp_values import check_bounds, unit_values
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData


@dataclass
class FeatureMatrix:
    """Complete rows of the cohort's features (stays at the site)."""

    features: tuple[str, ...]
    x: np.ndarray  # (n, p) C-contiguous float64, complete rows only
    complete: np.ndarray  # (cohort rows,) bool: the rows in ``x``
    n_dropped: int
    transformed: dict[bytes, np.ndarray] = field(default_factory=dict)  # latest transform only
    extras: dict[Any, Any] = field(default_factory=dict)  # what an analysis derives from x

    @property
    def n(self) -> int:
        return len(self.x)

    def working(self, shift: np.ndarray, scale: np.ndarray, ones: bool = False) -> np.ndarray:
        """``(x - shift) / scale`` (C-contiguous), computed once per transform.

        ``ones=True`` appends a column of ones (n x (p+1)): a product with it adds a constant per
        column, e.g. ||c||² in k-means distances, without another pass over the rows.
        """
        key = shift.tobytes() + scale.tobytes() + bytes([ones])
        cached = self.transformed.get(key)
        if cached is None:
            n, p = self.x.shape
            cached = np.empty((n, p + 1)) if ones else np.empty((n, p))
            np.subtract(self.x, shift, out=cached[:, :p])
            if (scale != 1.0).any():
                cached[:, :p] /= scale
            if ones:
                cached[:, p] = 1.0
            self.transformed.clear()
            self.transformed[key] = cached
        return cached


def _cohort_key(data: SiteData, features: Sequence[str]) -> tuple:
    """The features and the cohort's rows (a digest of its whole-dataset mask); the same as last
    time for the same cohort frame, schema and features (the rounds of one query)."""
    memo = data.scratch.get("cohort_key")
    wanted = tuple(features)
    if memo is not None and memo[0] is data.cohort and memo[1] is data.schema and memo[2] == wanted:
        return memo[3]
    key = _new_cohort_key(data, features)
    data.scratch["cohort_key"] = (data.cohort, data.schema, wanted, key)
    return key


def _new_cohort_key(data: SiteData, features: Sequence[str]) -> tuple:
    rows = data.cohort.index.to_numpy()
    if data.n_rows is not None and len(rows) == data.n_rows:
        digest = "all"  # positions are distinct, so n_rows of them are every row
    else:
        packed = np.packbits(data.rows_mask(np.ones(len(rows), dtype=bool)))
        digest = hashlib.blake2b(packed.tobytes(), digest_size=16).hexdigest()
    # a derived feature changes only by being derived again, under a new source
    sources = tuple(data.schema.column(f).derived for f in features)
    return (data.dataset, tuple(features), sources, data.n_rows, len(rows), digest)


def feature_matrix(data: SiteData, features: Sequence[str], cache: str) -> FeatureMatrix:
    """The checked complete-row matrix of ``features`` (from ``data.scratch[cache]`` if current)."""
    key = _cohort_key(data, features)
    entry = data.scratch.get(cache)
    if entry is not None and entry[0] == key:
        fm: FeatureMatrix = entry[1]
        if fm.n_dropped:
            data.log.note("patients with a missing value in the features are left out")
        return fm
    k = data.k
    columns, x, missing = _numeric_columns(data, features)
    first = next((f for f, c in zip(features, columns, strict=True) if np.isnan(c).any()), None)
    complete = data.complete_rows(missing, first, "the features")
    dropped = int(np.count_nonzero(~complete))
    x = np.ascontiguousarray(x[complete] if dropped else x)
    n = len(x)
    if n < k:
        raise data.refuse("min_cell_count", f"fewer than {k} patients have every feature")
    if k > 1:
        for j, f in enumerate(features):
            if _singles_out(x[:, j], k):
                raise data.refuse(
                    "min_cell_count",
                    f"feature '{f}' singles out fewer than {k} patients (all others share one "
                    "value): their values would show in the sums",
                    f,
                )
    fm = FeatureMatrix(tuple(features), x, complete, dropped)
    data.scratch[cache] = (key, fm)
    return fm


def _numeric_columns(
    data: SiteData, features: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The cohort's values of numeric ``features`` (refusing another type): per column, as a
    matrix (rows × features), and which rows miss a value."""
    for f in features:
        if not data.schema.column(f).is_numeric:
            raise SchemaError(
                "needs numeric features (code a category as 0/1 columns)",
                **data.err(f),
                rule="schema",
            )
    columns = [data.numeric(f) for f in features]
    x = np.column_stack(columns) if columns else np.empty((len(data.cohort), 0))
    return columns, x, np.isnan(x).any(axis=1)


def minority_counts(data: SiteData, x: np.ndarray, keys: np.ndarray) -> Payload:
    """The one-hot check's share of a pooled release (:func:`~fedhem_kernel.privacy.tables.
    singled_out`): per column of ``x`` (this site's rows of a release, ``keys`` their row keys),
    the rows without the column's most common value here, perturbed in {-1, 0, 1} keyed by them
    (``others``), and whether there are any (``varied``, 0/1)."""
    p = x.shape[1]
    others = np.zeros(p, dtype=np.int64)
    sums = np.zeros(p, dtype=np.uint64)
    for j in range(p):
        _, inverse, counts = np.unique(x[:, j], return_inverse=True, return_counts=True)
        minority = inverse != int(np.argmax(counts)) if len(counts) else np.zeros(0, dtype=bool)
        others[j] = int(minority.sum())
        sums[j] = keys[minority].sum(dtype=np.uint64)
    noisy = others + data.count_noise(sums, others, b"minority")
    return {"others": noisy, "varied": (others > 0).astype(np.int64)}


def pooled_rows(data: SiteData, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A pooled release's rows of numeric ``features``: the complete rows, snapped to the release
    ledger (as :func:`feature_matrix`, but no per-site refusal: in a secure sum a site with few
    or no rows adds what it has, and the rules apply to the totals), and their row keys."""
    _, x, missing = _numeric_columns(data, features)
    keep = data.release_rows(~missing, fixed=missing)
    if missing.any():
        data.log.note("patients with a missing value in the features are left out")
    return np.ascontiguousarray(x[keep]), data.row_keys()[keep]


def _singles_out(values: np.ndarray, k: int) -> bool:
    """Whether all but 1..k-1 of the values are one value (in linear time: such a value fills
    more than half of the values, so it is their median)."""
    n = len(values)
    if n <= 2 * k:
        _, counts = np.unique(values, return_counts=True)
        return 0 < n - int(counts.max()) < k
    median = np.partition(values, n // 2)[n // 2]
    return 0 < n - int(np.count_nonzero(values == median)) < k


def moments(x: np.ndarray) -> Payload:
    """Count, column means and centred sums of squares (per column) of one site's rows."""
    mean = x.mean(axis=0)
    return {"n": len(x), "mean": mean, "m2": ((x - mean) ** 2).sum(axis=0)}


# -- DP mode: values clipped to public bounds (privacy/dp_values.py) ------------------------------
def require_dp(data: SiteData, what: str) -> None:
    """Refuse a DP step at a site that is not in DP mode (it would release exact sums)."""
    if not data.policy.dp:
        raise DisclosureError(
            f"this site is not in DP mode: {what} are not released with noise here",
            site=data.site,
            dataset=data.dataset,
            rule="dp",
        )


def dp_bounds_param(
    data: SiteData, params: Payload, columns: Sequence[str]
) -> list[tuple[float, float]]:
    """The request's public bounds, one pair per column, checked here (any finite pair keeps
    the sensitivity: privacy/dp_values.py)."""
    try:
        return check_bounds(params.get("bounds"), len(columns))
    except ValueError as exc:
        raise ParameterError(str(exc), site=data.site, dataset=data.dataset) from None


def dp_unit_rows(data: SiteData, params: Payload, features: Sequence[str]) -> np.ndarray:
    """DP mode: the complete rows of numeric ``features``, clipped to the request's bounds and
    mapped to [0, 1] (no ledger: the noise protects, and a snapped row set would let one
    patient move others)."""
    _, x, missing = _numeric_columns(data, features)
    bounds = dp_bounds_param(data, params, features)
    if missing.any():
        data.log.note("patients with a missing value in the features are left out")
    x = x[~missing]
    return (
        np.column_stack([unit_values(x[:, j], low, high) for j, (low, high) in enumerate(bounds)])
        if len(bounds)
        else np.empty((len(x), 0))
    )
