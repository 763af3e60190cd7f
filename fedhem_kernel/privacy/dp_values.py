"""DP mode for real values: clipping to public bounds and whole-number fields of bounded weight.

Side: shared (the site encodes its rows; the researcher's side decodes the noised totals).

OpenDP's discrete Gaussian adds integer noise, so a DP sum of real values is released as whole
numbers: each value is clipped to the column's public bounds ``[low, high]`` (declared by the
sites' data stewards, never read from the data), mapped to ``t = (x - low) / (high - low)`` in
[0, 1], and a release that gives every patient nonzero fields ``f`` of weights ``w_f`` (a count,
a sum of ``t``, a sum of ``(t - ½)²``, a histogram bin, a product, ...), each field in [-1, 1],
adds ``round(w_f · M · field)`` to each with ``M = ⌊R / √F⌋``, ``F = Σ w_f²``. One patient then
moves the released vector by at most ``√F · M ≤ R`` in L2 norm (:data:`RESOLUTION`), whatever
their values: the release is the discrete Gaussian mechanism with sensitivity ``R``, accounted by
OpenDP's map (privacy/dp.py). Dividing a noised total by ``w_f · M`` gives the sum in units of
the field, with noise of SD ``σ·R/(w_f·M) ≈ σ·√F / w_f`` (σ: the scale for sensitivity 1): a
heavier field is less noisy, at the others' expense.

The bounds are public, so clipping to any bounds keeps the sensitivity: a coordinator that sends
narrow bounds learns nothing the noise does not cover. Rounding to ``1/M`` is deterministic per
row (a function of the row alone) and so changes nothing in the guarantee.
"""

from __future__ import annotations

import math

import numpy as np

#: The L2 sensitivity of one patient's whole contribution, in whole-number units.
RESOLUTION = 4096
#: Largest magnitude a declared bound may have (whole-number fields stay exact in int64 below it).
MAX_BOUND = 1e12


def multiplier(n_fields: int) -> int:
    """``M`` for a release whose fields per patient have squared weights summing to
    ``n_fields`` (``n_fields`` fields of weight 1, or fewer heavier ones): ``√n_fields · M ≤
    RESOLUTION``."""
    if n_fields < 1:
        raise ValueError("a release has at least one field per patient")
    m = int(RESOLUTION / math.sqrt(n_fields))
    while m > 1 and n_fields * m * m > RESOLUTION * RESOLUTION:
        m -= 1
    return max(m, 1)


def unit_values(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values clipped to ``[low, high]`` and mapped to [0, 1] (missing values stay NaN)."""
    x = np.asarray(values, dtype=float)
    return (np.clip(x, low, high) - low) / (high - low)


def encode(t: np.ndarray, m: int) -> np.ndarray:
    """Whole-number fields ``round(m · t)`` of fields ``t`` in [-1, 1] (NaN: 0)."""
    t = np.asarray(t, dtype=float)
    return np.where(np.isnan(t), 0, np.rint(np.nan_to_num(t) * m)).astype(np.int64)


def bins_of(t: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each value ``t`` in [0, 1] among ``n_bins`` equal bins (1 is in the last)."""
    return np.minimum((np.asarray(t, dtype=float) * n_bins).astype(np.int64), n_bins - 1)


def bound_pair(pair: object) -> tuple[float, float] | None:
    """``[low, high]`` as two floats when it is two finite numbers, low < high, within
    :data:`MAX_BOUND`; None otherwise."""
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in pair):
        return None
    low, high = float(pair[0]), float(pair[1])
    finite = bool(np.isfinite([low, high]).all())
    if not (finite and low < high and max(abs(low), abs(high)) <= MAX_BOUND):
        return None
    return low, high


def check_bounds(bounds: object, n_columns: int) -> list[tuple[float, float]]:
    """A request's bounds, one ``[low, high]`` per column, checked at the site (any finite
    ``low < high`` within :data:`MAX_BOUND` keeps the sensitivity); ValueError otherwise."""
    if not isinstance(bounds, list | tuple) or len(bounds) != n_columns:
        raise ValueError("'bounds' must give [low, high] for each column")
    out = []
    for pair in bounds:
        checked = bound_pair(pair)
        if checked is None:
            raise ValueError(
                f"'bounds' must be [low, high] pairs of finite numbers, low < high, "
                f"within ±{MAX_BOUND:g}"
            )
        out.append(checked)
    return out
