"""Differencing guard: remembers the cohorts a site has released results on.

Two queries whose cohorts differ by a handful of patients let anyone subtract one result from the
other and learn about those few patients (the published DataSHIELD reconstruction attacks work this
way). The site keeps the row sets of released cohorts per dataset and refuses a new cohort that differs
from any of them by more than 0 and fewer than ``k`` patients.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # bits per byte


class DifferencingGuard:
    """Per-dataset memory of released cohorts (packed bit masks, deduplicated by hash)."""

    def __init__(self) -> None:
        self._cohorts: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def closest_difference(self, dataset: str, mask: np.ndarray) -> int | None:
        """Smallest non-zero symmetric difference to a remembered cohort (None if none differs)."""
        packed = np.packbits(np.asarray(mask, dtype=bool))
        best: int | None = None
        with self._lock:
            stored = list(self._cohorts.get(dataset, {}).values())
        for other in stored:
            if other.shape != packed.shape:
                continue  # the dataset was reloaded with another row count: not comparable
            diff = int(_POPCOUNT[np.bitwise_xor(other, packed)].sum(dtype=np.int64))
            if diff and (best is None or diff < best):
                best = diff
        return best

    def contains(self, dataset: str, mask: np.ndarray) -> bool:
        """Whether exactly this row set was remembered (then releasing it again adds nothing)."""
        packed = np.packbits(np.asarray(mask, dtype=bool))
        key = hashlib.sha256(packed.tobytes()).hexdigest()
        with self._lock:
            return key in self._cohorts.get(dataset, {})

    def remember(self, dataset: str, mask: np.ndarray) -> None:
        packed = np.packbits(np.asarray(mask, dtype=bool))
        key = hashlib.sha256(packed.tobytes()).hexdigest()
        with self._lock:
            self._cohorts.setdefault(dataset, {})[key] = packed

    def __len__(self) -> int:
        return sum(len(v) for v in self._cohorts.values())
