"""Differencing guard: remembers the cohorts a site has released results on.

Two queries whose cohorts differ by a handful of patients let anyone subtract one result from the
other and learn about those few patients (the published DataSHIELD reconstruction attacks work this
way). The site keeps the row sets of released cohorts per dataset and refuses a new cohort that differs
from any of them by more than 0 and fewer than ``k`` patients.

Row sets that are unions of the groups of a :class:`Partition` (k-means micro-clusters: disjoint
groups of rows) are kept as group bitmasks and compared in group space, so that a release per Lloyd
round costs work in the number of groups, not of rows. The comparisons are exact, with two
shortcuts that follow from group sizes: two unions of the same partition differ by whole groups, so
by 0 or at least the smallest group's size; and so does a union from a remembered set that is
itself a union of the groups (e.g. the whole cohort), up to that set's rows outside the partition.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # bits per byte
_CACHED_MASKS = 8  # per partition: recent cohorts whose distances to the unions are kept
_CACHED_SETS = 64  # per partition: remembered row sets whose overlaps with the groups are kept


def _digest(packed: np.ndarray) -> str:
    return hashlib.sha256(packed.tobytes()).hexdigest()


@dataclass(frozen=True)
class _SetInfo:
    """A row set M seen from a partition: |M| + sum of ``weights`` over U's groups = |U Δ M|."""

    total: int  # |M|
    outside: int  # rows of M in no group
    weights: np.ndarray  # sizes - 2 |group ∩ M|
    aligned: str | None  # digest of M's groups when M ∩ groups is a union of whole groups


@dataclass(eq=False)
class Partition:
    """Disjoint groups of a dataset's rows; released unions of groups are kept as bitmasks."""

    key: str
    group: np.ndarray  # (dataset rows,) group of each row, -1 for rows in no group
    sizes: np.ndarray  # (groups,) rows per group
    sets: dict[str, np.ndarray] = field(default_factory=dict)  # digest -> packed group bits
    _info: dict[object, _SetInfo] = field(default_factory=dict)  # remembered sets, by key
    #: for a recent cohort (by digest): its :class:`_SetInfo` and difference to each union
    _diffs: dict[str, tuple[_SetInfo, np.ndarray]] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    @property
    def min_size(self) -> int:
        return int(self.sizes.min()) if len(self.sizes) else 0

    def rows(self, packed_groups: np.ndarray) -> np.ndarray:
        """Row mask (whole dataset) of a union given as packed group bits."""
        bits = np.unpackbits(packed_groups, count=self.n_groups).astype(bool)
        return np.concatenate([bits, [False]])[self.group]  # -1 (no group) reads the False

    def _set_info(self, mask: np.ndarray) -> _SetInfo:
        mask = np.asarray(mask, dtype=bool)
        inside = self.group[mask]
        outside = int((inside < 0).sum())
        overlap = np.bincount(inside[inside >= 0], minlength=self.n_groups)
        full = overlap == self.sizes
        aligned = None
        if ((overlap == 0) | full).all():
            aligned = _digest(np.packbits(full))
        return _SetInfo(len(inside), outside, (self.sizes - 2 * overlap).astype(float), aligned)

    def info(self, key: object, mask: Callable[[], np.ndarray]) -> _SetInfo:
        """:class:`_SetInfo` of a remembered set (``mask()`` builds its rows), kept for reuse."""
        cached = self._info.pop(key, None)
        if cached is None:
            cached = self._set_info(mask())
        self._info[key] = cached  # most recently used last
        while len(self._info) > _CACHED_SETS:
            del self._info[next(iter(self._info))]
        return cached

    def unpacked(self, start: int = 0) -> Iterator[np.ndarray]:
        """The remembered unions from the ``start``-th on, as (sets, groups) 0/1 matrices (in
        blocks of a few megabytes)."""
        packed = list(self.sets.values())[start:]
        step = max(1, 2**19 // max(self.n_groups, 1))
        for i in range(0, len(packed), step):
            block = np.stack(packed[i : i + step])
            yield np.unpackbits(block, axis=1, count=self.n_groups).astype(float)

    def diffs_to(self, key: str, mask: np.ndarray) -> np.ndarray:
        """|U Δ M| for every remembered union U (kept for the last few cohorts M, extended)."""
        cached = self._diffs.pop(key, None)
        info, done = cached if cached is not None else (self._set_info(mask), np.zeros(0))
        if len(done) < len(self.sets):
            new = [np.rint(info.total + u @ info.weights) for u in self.unpacked(len(done))]
            done = np.concatenate([done, *new])
        self._diffs[key] = (info, done)
        while len(self._diffs) > _CACHED_MASKS:
            del self._diffs[next(iter(self._diffs))]
        return done


@dataclass(frozen=True)
class Unions:
    """Unions of a partition's groups (one per row of ``members``), ready to check and remember."""

    part: Partition
    members: np.ndarray  # (unions, groups) bool
    packed: np.ndarray  # (unions, bytes) the same, packed
    digests: tuple[str, ...]

    @classmethod
    def of(cls, part: Partition, members: np.ndarray) -> Unions:
        members = np.atleast_2d(np.asarray(members, dtype=bool))
        packed = np.packbits(members, axis=1)
        return cls(part, members, packed, tuple(_digest(row) for row in packed))


class DifferencingGuard:
    """Per-dataset memory of released cohorts (packed bit masks, deduplicated by hash)."""

    def __init__(self) -> None:
        self._cohorts: dict[str, dict[str, np.ndarray]] = {}
        self._partitions: dict[str, dict[str, Partition]] = {}
        self._lock = threading.Lock()
        #: Grows whenever a row set is remembered that was not remembered before: an answer that
        #: depends only on the remembered sets (and its own inputs) holds while this is the same.
        self.version = 0

    def closest_difference(self, dataset: str, mask: np.ndarray) -> int | None:
        """Smallest non-zero symmetric difference to a remembered cohort (None if none differs)."""
        mask = np.asarray(mask, dtype=bool)
        packed = np.packbits(mask)
        best: int | None = None
        with self._lock:
            stored = list(self._cohorts.get(dataset, {}).values())
            parts = [p for p in self._partitions.get(dataset, {}).values() if p.sets]
            key = _digest(packed) if parts else ""
            part_diffs = [p.diffs_to(key, mask) for p in parts if len(p.group) == len(mask)]
        for other in stored:
            if other.shape != packed.shape:
                continue  # the dataset was reloaded with another row count: not comparable
            diff = int(_POPCOUNT[np.bitwise_xor(other, packed)].sum(dtype=np.int64))
            if diff and (best is None or diff < best):
                best = diff
        for diffs in part_diffs:
            nonzero = diffs[diffs > 0]
            if len(nonzero) and (best is None or nonzero.min() < best):
                best = int(nonzero.min())
        return best

    def contains(self, dataset: str, mask: np.ndarray) -> bool:
        """Whether exactly this row set was remembered (then releasing it again adds nothing)."""
        mask = np.asarray(mask, dtype=bool)
        key = _digest(np.packbits(mask))
        with self._lock:
            if key in self._cohorts.get(dataset, {}):
                return True
            for part in self._partitions.get(dataset, {}).values():
                if part.sets and len(part.group) == len(mask):
                    if (part.diffs_to(key, mask) == 0).any():
                        return True
        return False

    def remember(self, dataset: str, mask: np.ndarray) -> None:
        packed = np.packbits(np.asarray(mask, dtype=bool))
        key = _digest(packed)
        with self._lock:
            cohorts = self._cohorts.setdefault(dataset, {})
            if key not in cohorts:
                cohorts[key] = packed
                self.version += 1

    # -- unions of a partition's groups ---------------------------------------------------------
    def partition(self, dataset: str, group: np.ndarray) -> Partition:
        """The partition of the dataset's rows into ``group`` (row -> group 0.., -1 for none).

        Registered once per content: the same groups give the same :class:`Partition` and so the
        same memory of released unions.
        """
        group = np.ascontiguousarray(group, dtype=np.int64)
        key = hashlib.sha256(group.tobytes()).hexdigest()
        with self._lock:
            parts = self._partitions.setdefault(dataset, {})
            part = parts.get(key)
            if part is None:
                sizes = np.bincount(group[group >= 0], minlength=int(group.max(initial=-1)) + 1)
                part = parts[key] = Partition(key, group, sizes.astype(np.int64))
        return part

    def near_unions(self, dataset: str, unions: Unions, k: int) -> np.ndarray:
        """Per union: whether it differs from a remembered row set by 1..k-1 rows and equals none
        of them (as ``SiteData.near_released`` for a row set)."""
        part = unions.part
        n = len(part.group)
        count = len(unions.digests)
        best = np.full(count, np.inf)
        m: np.ndarray | None = None
        with self._lock:
            equal = np.array([d in part.sets for d in unions.digests], dtype=bool)
            comparisons: list[tuple[object, Callable[[], np.ndarray]]] = [
                (key, lambda p=packed: np.unpackbits(p, count=n).astype(bool))
                for key, packed in self._cohorts.get(dataset, {}).items()
                if len(packed) == (n + 7) // 8
            ]
            for other in self._partitions.get(dataset, {}).values():
                if not other.sets or len(other.group) != n:
                    continue
                if other is part:
                    if part.min_size < k:  # unions of the same groups: whole groups apart
                        m = unions.members.astype(float) if m is None else m
                        size = m @ part.sizes.astype(float)
                        for u in part.unpacked():
                            d = size[:, None] + (u @ part.sizes)[None] - 2 * (m * part.sizes) @ u.T
                            equal |= (np.rint(d) == 0).any(axis=1)
                            best = np.minimum(best, np.where(d > 0.5, d, np.inf).min(axis=1))
                    continue
                comparisons += [
                    ((other.key, digest), lambda o=other, b=bits: o.rows(b))
                    for digest, bits in other.sets.items()
                ]
            for key, rows in comparisons:
                info = part.info(key, rows)
                if info.aligned is not None and part.min_size >= k:
                    # |U Δ M| = outside + (0 if U is M's groups, else >= min_size >= k)
                    same = np.array([d == info.aligned for d in unions.digests], dtype=bool)
                    if info.outside == 0:
                        equal |= same
                    else:
                        best = np.where(same, np.minimum(best, info.outside), best)
                    continue
                m = unions.members.astype(float) if m is None else m
                d = np.rint(info.total + m @ info.weights)
                equal |= d == 0
                best = np.minimum(best, np.where(d > 0, d, np.inf))
        return ~equal & (best < k)

    def remember_unions(self, dataset: str, unions: Unions, which: list[int] | None = None) -> None:
        """Remember the unions (those at ``which``, default all) as released row sets."""
        del dataset  # the partition belongs to the dataset
        part = unions.part
        with self._lock:
            for i in range(len(unions.digests)) if which is None else which:
                if unions.digests[i] not in part.sets:
                    part.sets[unions.digests[i]] = unions.packed[i]
                    self.version += 1

    def __len__(self) -> int:
        plain = sum(len(v) for v in self._cohorts.values())
        return plain + sum(len(p.sets) for v in self._partitions.values() for p in v.values())
