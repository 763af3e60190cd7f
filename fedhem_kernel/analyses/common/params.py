"""Checks of request parameters that both sides make: the researcher's side before sending, each site again
(it trusts nothing it is sent). Pure functions of the parameters: no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload

MAX_FEATURES = 200


def check_features(value: Any) -> list[str]:
    """A non-empty list of distinct column names (one string is one feature)."""
    features = [value] if isinstance(value, str) else value
    if not isinstance(features, list | tuple) or not features:
        raise ParameterError("'features' must be a column name or a non-empty list of them")
    if not all(isinstance(f, str) and f for f in features):
        raise ParameterError("'features' must be column names")
    if len(set(features)) != len(features):
        raise ParameterError("'features' names a column twice")
    if len(features) > MAX_FEATURES:
        raise ParameterError(f"at most {MAX_FEATURES} features")
    return list(features)


def check_numeric_features(
    features: Any, categorical: Sequence[str], analysis: str, dataset: str | None
) -> list[str]:
    """:func:`check_features`, refusing a categorical feature (named) for ``analysis``."""
    feats = check_features(features)
    if categorical:
        raise ParameterError(
            f"{analysis} needs numeric features (code a category as 0/1 columns)",
            dataset=dataset,
            column=categorical[0],
        )
    return feats


def check_vector(params: Payload, key: str, p: int, positive: bool = False) -> np.ndarray:
    try:
        v = np.asarray(params[key], dtype=float).reshape(-1)
    except (KeyError, TypeError, ValueError):
        raise ParameterError(f"parameter '{key}' must be {p} numbers") from None
    if v.shape != (p,) or not np.isfinite(v).all() or (positive and (v <= 0).any()):
        what = "positive numbers" if positive else "finite numbers"
        raise ParameterError(f"parameter '{key}' must be {p} {what}")
    return v


def check_matrix(params: Payload, key: str, p: int, max_rows: int, min_rows: int = 0) -> np.ndarray:
    try:
        m = np.asarray(params[key], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise ParameterError(f"parameter '{key}' must be a matrix of numbers") from None
    if m.size == 0:
        m = m.reshape(0, p)
    if m.ndim != 2 or m.shape[1] != p or not (min_rows <= m.shape[0] <= max_rows):
        raise ParameterError(f"parameter '{key}' must have {p} columns and at most {max_rows} rows")
    if not np.isfinite(m).all():
        raise ParameterError(f"parameter '{key}' must hold finite numbers")
    return np.ascontiguousarray(m)
