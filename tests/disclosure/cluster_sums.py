"""A check shared by the k-means attacks (per site and pooled): cluster sums never give a row."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np


def released_cluster_sums(
    counts_and_sums: Iterable[tuple[np.ndarray, np.ndarray]], target: np.ndarray, k: int
) -> set[tuple[int, tuple[float, ...]]]:
    """The distinct (count, sums) of non-empty clusters, each checked: at least ``k`` patients
    and a mean that is not the ``target`` row; then no difference of two is the target row."""
    released = set()
    for counts, sums in counts_and_sums:
        for c, s in zip(counts, np.asarray(sums).reshape(len(counts), -1), strict=True):
            if c:
                assert c >= k and not np.allclose(s / c, target, atol=1e-3)
                released.add((int(c), tuple(np.round(s, 9))))
    for (c1, s1), (c2, s2) in itertools.combinations(sorted(released), 2):
        if c1 != c2:
            diff = (np.asarray(s2) - np.asarray(s1)) / (c2 - c1)
            assert not np.allclose(diff, target, atol=1e-3)
    return released
