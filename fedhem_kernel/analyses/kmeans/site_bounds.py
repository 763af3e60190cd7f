"""The nearest centre of every row across Lloyd rounds, recomputing only rows that may have moved.

A site answers one ``kmeans_step`` per round for new centres; most rows keep their centre after the
first rounds. :class:`NearestCentres` keeps, per row, its label, an upper bound on the distance to
its centre and a lower bound on the distance to every other centre (Hamerly, "Making k-means even
faster", SDM 2010). When the centres move by ``delta``, the upper bound grows by its centre's move
and the lower bound shrinks by the largest move of another centre (triangle inequality); a row
whose upper bound is below ``max(lower, half the distance from its centre to the nearest other
centre)`` provably keeps its label. Only the other rows are recomputed, with the same formula and
block product as :func:`fedhem_kernel.analyses.kmeans.nearest`, so labels equal a full
recomputation's; the per-cluster counts, sums and sums of squared norms are updated by the rows
that changed cluster.

Bounds come from rounded distances: they are widened by a relative margin far above the rounding
error, and a row is kept only on a strict inequality, so a row at an exact tie is recomputed. Rows
whose two nearest centres are equal to the last bits can still differ from a full recomputation,
as any two k-means implementations do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

CHUNK = 16384  # rows per block of the distance computation (k x CHUNK fits the CPU cache)
BLOCK_CELLS = 2**20  # at most this many distances per block (8 MB) when k is large
#: Relative widening of squared-distance bounds (rounding of ||x||² - 2x·c + ||c||² is ~1e-15).
MARGIN = 1e-10
DENSE_CELLS = 2**16  # moved rows x k up to which their change to the sums is a dense product


def _blocks(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest centre, its squared distance and the second-nearest squared distance of each row.

    ``x`` has a last column of ones; d² = ||x||² + (||c||² - 2 x·c), the bracket by one product
    into a (centre x row) block, so that every reduction runs along rows (numpy's reductions over
    a short last axis cost ten times more). Ties go to the first centre, as ``argmin``. At most
    65535 centres (k-means allows 1000).
    """
    n = len(x)
    k = len(centers)
    cc = np.einsum("ij,ij->i", centers, centers)
    ct = np.ascontiguousarray(np.column_stack([-2.0 * centers, cc]))  # (k, p + 1)
    labels = np.empty(n, dtype=np.intp)
    first = np.empty(n)
    second = np.full(n, np.inf)
    weights = np.arange(k, dtype=np.uint16)  # k <= 1000 (MAX_CLUSTERS)
    step = max(256, min(CHUNK, BLOCK_CELLS // k))  # k x step distances at a time
    for start in range(0, n, step):
        stop = min(start + step, n)
        d = ct @ x[start:stop].T  # (k, rows)
        best = d.min(axis=0)
        at_best = (d == best).view(np.uint8)  # one 1 per column, unless centres tie
        lab = np.einsum("i,ij->j", weights, at_best).astype(np.intp)
        ties = at_best.sum(axis=0, dtype=np.uint16) > 1
        if ties.any():  # the first of the tied centres, as argmin
            lab[ties] = at_best[:, ties].argmax(axis=0)
        labels[start:stop] = lab
        first[start:stop] = best
        if k > 1:
            d[lab, np.arange(stop - start)] = np.inf
            second[start:stop] = d.min(axis=0)
    return labels, first, second


@dataclass
class NearestCentres:
    """Labels of the rows of ``x`` (a last column of ones) for the centres last asked for.

    ``counts``, ``sums`` (k x p) and ``norms`` (per cluster sum of ||x||²) describe those labels.

    The bounds are kept as of each row's last recomputation, against running totals of the
    centres' moves: ``drift[j]`` (how far centre j has moved in all) and ``drift_other[j]`` (the
    sum over rounds of the largest move of a centre other than j). A row of cluster j has upper
    bound ``up + drift[j]`` and lower bound ``up - gap - drift_other[j]``, as Hamerly's
    round-by-round updates give, so a round touches each row's state once (one comparison)
    instead of rewriting both bounds.
    """

    x: np.ndarray
    row_norms: np.ndarray
    centers: np.ndarray
    labels: np.ndarray
    up: np.ndarray  # upper bound - drift[label], as of the row's last recomputation
    gap: np.ndarray  # upper - lower bound - drift[label] - drift_other[label], likewise
    drift: np.ndarray
    drift_other: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    norms: np.ndarray
    recomputed: int = 0  # rows recomputed in the last update (for tests and benchmarks)

    @classmethod
    def start(cls, x: np.ndarray, row_norms: np.ndarray, centers: np.ndarray) -> NearestCentres:
        state = cls(x, row_norms, centers, *_empty(len(x), *centers.shape))
        state._full(centers)
        return state

    def update(self, centers: np.ndarray) -> None:
        """Labels for new centres (same k and features); only rows the bounds do not settle."""
        if centers.shape != self.centers.shape:
            self._full(centers)
            return
        k = len(centers)
        delta = np.sqrt(((centers - self.centers) ** 2).sum(axis=1))
        self.drift += delta
        if k > 1:  # a row's other centres moved by at most the largest move but its own
            order = np.argsort(delta)
            other = np.full(k, delta[order[-1]])
            other[order[-1]] = delta[order[-2]]
            self.drift_other += other
        # settled: upper < lower, or upper < half the distance from its centre to the next
        rows = np.flatnonzero(self.gap >= -(self.drift + self.drift_other)[self.labels])
        if len(rows):
            half = 0.5 * _nearest_other(centers) - self.drift
            rows = rows[self.up[rows] >= half[self.labels[rows]]]
        self.centers = centers.copy()
        self.recomputed = len(rows)
        if len(rows) == 0:
            return
        if len(rows) > len(self.x) // 2:
            self._full(centers)
            return
        xs = self.x[rows]
        labels, first, second = _blocks(xs, centers)
        self._bounds(rows, labels, first, second, centers)
        old = self.labels[rows]
        moved = labels != old
        if moved.any():
            src, dst, r = old[moved], labels[moved], rows[moved]
            self.sums += _moves(src, dst, xs[moved], k)
            self.counts += np.bincount(dst, minlength=k) - np.bincount(src, minlength=k)
            nm = self.row_norms[r]
            self.norms += np.bincount(dst, nm, minlength=k) - np.bincount(src, nm, minlength=k)
        self.labels[rows] = labels

    def _full(self, centers: np.ndarray) -> None:
        k = len(centers)
        n = len(self.x)
        labels, first, second = _blocks(self.x, centers)
        self.labels = labels
        self.up = np.empty(n)
        self.gap = np.empty(n)
        self.drift = np.zeros(k)
        self.drift_other = np.zeros(k)
        self._bounds(slice(None), labels, first, second, centers)
        self.sums = _sums(labels, self.x, k)
        self.counts = np.bincount(labels, minlength=k)
        self.norms = np.bincount(labels, self.row_norms, minlength=k)
        self.centers = centers.copy()
        self.recomputed = n

    def _bounds(
        self,
        rows: slice | np.ndarray,
        labels: np.ndarray,
        first: np.ndarray,
        second: np.ndarray,
        centers: np.ndarray,
    ) -> None:
        """Bounds from rounded squared distances, widened by :data:`MARGIN` of their scale."""
        norms = self.row_norms[rows]
        scale = MARGIN * (norms + float(np.einsum("ij,ij->i", centers, centers).max()))
        upper = np.sqrt(np.maximum(first + norms, 0.0) + scale)
        lower = np.sqrt(np.maximum(second + norms - scale, 0.0))
        drift = self.drift[labels]
        self.up[rows] = upper - drift
        self.gap[rows] = upper - lower - drift - self.drift_other[labels]


def _sums(labels: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Per cluster the sum of its rows (``x`` without its last column of ones): a sparse
    (cluster x row) indicator matrix times ``x``."""
    n = len(labels)
    indicator = sparse.csc_matrix((np.ones(n), labels, np.arange(n + 1)), shape=(k, n))
    return np.asarray(indicator @ x)[:, :-1]


def _moves(src: np.ndarray, dst: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """What rows moving from cluster ``src`` to ``dst`` change in the per-cluster sums: one
    product with +1 at each row's new cluster and -1 at its old one (dense when small)."""
    m = len(src)
    if k * m <= DENSE_CELLS:
        change = np.zeros((k, m))
        i = np.arange(m)
        change[dst, i] = 1.0
        change[src, i] = -1.0
        return (change @ x)[:, :-1]
    data = np.tile([1.0, -1.0], m)
    index = np.column_stack([dst, src]).ravel()
    change = sparse.csc_matrix((data, index, np.arange(0, 2 * m + 1, 2)), shape=(k, m))
    return np.asarray(change @ x)[:, :-1]


def _empty(n: int, k: int, p: int) -> tuple[np.ndarray, ...]:
    return (
        np.zeros(n, dtype=np.intp),
        np.empty(n),
        np.empty(n),
        np.zeros(k),
        np.zeros(k),
        np.zeros(k, dtype=np.int64),
        np.zeros((k, p)),
        np.zeros(k),
    )


def _nearest_other(centers: np.ndarray) -> np.ndarray:
    """Per centre, the distance to the nearest other centre (inf for a single centre)."""
    k = len(centers)
    if k == 1:
        return np.array([np.inf])
    cc = np.einsum("ij,ij->i", centers, centers)
    d2 = cc[:, None] + cc[None, :] - 2.0 * (centers @ centers.T)  # k x k, never k x k x p
    np.fill_diagonal(d2, np.inf)
    # a margin below the rounding of the Gram form keeps this a lower bound on the distances
    return np.sqrt(np.maximum(d2.min(axis=1) - MARGIN * 2.0 * cc.max(), 0.0))
