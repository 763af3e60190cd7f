"""Pooled means and (co)variances from per-site counts, means and centred sums of squares (Chan et al.)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload


def pooled_moments(parts: Sequence[Payload]) -> tuple[int, np.ndarray, np.ndarray]:
    """Pooled count, mean and centred sum of squares (per column, or a matrix) from site moments."""
    n = sum(int(p["n"]) for p in parts)
    mean = sum(int(p["n"]) * np.asarray(p["mean"], dtype=float) for p in parts) / n
    m2 = 0.0
    for p in parts:
        d = np.asarray(p["mean"], dtype=float) - mean
        extra = np.outer(d, d) if np.ndim(p["m2"]) == 2 else d * d
        m2 = m2 + np.asarray(p["m2"], dtype=float) + int(p["n"]) * extra
    return n, mean, np.asarray(m2)


def standard_scale(features: Sequence[str], var: np.ndarray, dataset: str) -> np.ndarray:
    """Pooled SDs (from population variances, as ``StandardScaler``) to standardise ``features``.

    A feature with one value for every patient has none: a ParameterError names it.
    """
    constant = [f for f, v in zip(features, var, strict=True) if not v > 0]
    if constant:
        raise ParameterError(
            "a feature with the same value for every patient cannot be standardised",
            dataset=dataset,
            column=constant[0],
        )
    return np.sqrt(var)
