"""Micro-clusters at a site: groups of k..2k-1 similar patients (k-d cells, then MDAV), the units
k-means works on under a policy with k > 1, so that every released sum is over >= k patients.

Micro-clusters are built inside the atoms of the site's release ledger (each atom's complete rows
on their own), so every union of micro-clusters — every cluster k-means releases — cuts each atom
into pieces of >= k patients: the ledger never has to move a patient, and releasing a cluster
refines the atoms without breaking them below k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedhem_kernel.analyses.common.site_features import FeatureMatrix
from fedhem_kernel.site.steps import SiteData


def _mdav(z: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """MDAV microaggregation (Domingo-Ferrer & Mateo-Sanz) in many groups of rows at once.

    ``z``: (groups, m, p) rows padded to m, ``valid``: (groups, m) which are rows. In each group,
    while >= 3k rows are left: the k rows nearest the row farthest from their mean, then the k rows
    nearest the row farthest from that one; then (>= 2k left) once more; the last k..2k-1 rows are a
    micro-cluster of their own. Every group steps together (no Python loop over groups or rows).
    Returns each row's micro-cluster within its group (-1 for padding) and the count per group.
    """
    n_groups = len(z)
    label = np.full(valid.shape, -1, dtype=np.intp)
    left = valid.copy()
    made = np.zeros(n_groups, dtype=np.intp)
    groups = np.arange(n_groups)

    zz = np.einsum("gmp,gmp->gm", z, z)

    def dist(ref: np.ndarray) -> np.ndarray:  # squared distances of every row to its group's ref
        return zz - 2 * np.matmul(z, ref[:, :, None])[..., 0] + (ref * ref).sum(axis=1)[:, None]

    def farthest(d: np.ndarray) -> np.ndarray:  # the row left with the largest d
        return z[groups, np.where(left, d, -np.inf).argmax(axis=1)]

    def mean() -> np.ndarray:
        count = np.maximum(left.sum(axis=1), 1)
        return np.matmul(left[:, None, :].astype(float), z)[:, 0] / count[:, None]

    def take(ref: np.ndarray, active: np.ndarray) -> np.ndarray:
        d = dist(ref)
        near = np.argpartition(np.where(left, d, np.inf), k - 1, axis=1)[:, :k][active]
        rows = groups[active][:, None]
        label[rows, near] = made[active][:, None]
        left[rows, near] = False
        made[active] += 1
        return d

    while (active := left.sum(axis=1) >= 3 * k).any():
        d = take(farthest(dist(mean())), active)
        take(farthest(d), active)  # the row farthest from the first one (d: its distances)
    if (active := left.sum(axis=1) >= 2 * k).any():
        take(farthest(dist(mean())), active)
    label[left] = np.broadcast_to(made[:, None], left.shape)[left]
    return label, made + left.any(axis=1)


def _halve(
    idx: np.ndarray, sizes: np.ndarray, lo: np.ndarray, hi: np.ndarray, z_pad: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut every cell in two halves at the median of its rows along the cell's longest side.

    ``idx``: (cells, w) row numbers padded with ``len(z_pad) - 1`` (a row of +inf); ``sizes``: rows
    per cell, two consecutive values (halving keeps it so); ``lo``, ``hi``: the cells' bounds.
    """
    n_cells, w = idx.shape
    pad = len(z_pad) - 1
    cells = np.arange(n_cells)
    dim = np.argmax(hi - lo, axis=1)
    value = z_pad[idx, dim[:, None]]
    half = sizes // 2
    kth = sorted({int(half.min()) - 1, int(half.min()), int(half.max())} & set(range(w)))
    order = np.argpartition(value, kth, axis=1)  # the first half[c] of cell c: its lower half
    idx = np.take_along_axis(idx, order, axis=1)
    value = np.take_along_axis(value, order, axis=1)
    cut = (value[cells, half - 1] + value[cells, np.minimum(half, w - 1)]) / 2
    rest = sizes - half
    width = int(max(half.max(), rest.max()))
    cols = np.arange(width)[None, :]
    left = np.where(cols < half[:, None], idx[:, np.minimum(cols[0], w - 1)], pad)
    right = np.take_along_axis(idx, np.minimum(half[:, None] + cols, w - 1), axis=1)
    right = np.where(cols < rest[:, None], right, pad)
    hi_left, lo_right = hi.copy(), lo.copy()
    hi_left[cells, dim] = cut
    lo_right[cells, dim] = cut
    return (
        np.vstack([left, right]),
        np.concatenate([half, rest]),
        np.vstack([lo, lo_right]),
        np.vstack([hi_left, hi]),
    )


def micro_clusters(z: np.ndarray, k: int, cell: int = 128) -> np.ndarray:
    """Micro-cluster of every row: groups of k..2k-1 rows (deterministic, vectorised).

    A k-d split (every cell cut in two halves at the median of its rows along its longest side)
    down to cells of ``cell``..2 ``cell`` rows, then MDAV microaggregation inside each cell (all
    cells at once: :func:`_mdav`). Near MDAV on the whole site in quality, in time n log n.
    """
    n, p = z.shape
    cell = max(cell, 2 * k)  # a cell holds >= 2k rows, so its halves hold >= k
    z_pad = np.vstack([z, np.full((1, p), np.inf)])
    idx = np.arange(n)[None, :]
    sizes = np.array([n])
    lo, hi = z.min(axis=0, keepdims=True), z.max(axis=0, keepdims=True)
    while sizes.min() >= 2 * cell:
        idx, sizes, lo, hi = _halve(idx, sizes, lo, hi, z_pad)
    valid = idx < n
    z_cells = np.vstack([z, np.zeros((1, p))])[np.where(valid, idx, n)]
    label, count = _mdav(z_cells, valid, k)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    atom = np.empty(n, dtype=np.intp)
    atom[idx[valid]] = (label + offset[:, None])[valid]
    return atom


@dataclass
class Atoms:
    """The site's micro-clusters in working units: everything k-means releases is built from them."""

    index: np.ndarray  # (n,) micro-cluster of each complete row
    n: np.ndarray  # (A,) rows per micro-cluster (k..2k-1)
    sums: np.ndarray  # (A, p)
    means: np.ndarray  # (A, p)
    within: np.ndarray  # (A,) sum of squared distances of its rows to its mean
    means_ones_t: np.ndarray = field(init=False)  # (p + 1, A): means and a row of ones, by column
    stats: np.ndarray = field(init=False)  # (A, p + 2): sums, size, sum of ||x||² over its rows
    n_rows: int = field(init=False)

    def __post_init__(self) -> None:
        ones = np.ones(len(self.n))
        self.means_ones_t = np.ascontiguousarray(np.column_stack([self.means, ones]).T)
        self.n_rows = int(self.n.sum())
        norms = np.einsum("ij,ij->i", self.means, self.means)
        self.stats = np.column_stack([self.sums, self.n, self.within + self.n * norms])


def _ledger_atoms(data: SiteData, fm: FeatureMatrix) -> np.ndarray | None:
    """The release ledger's atom of every complete row (None without a ledger)."""
    if data.ledger is None:
        return None
    rows = data.cohort.index.to_numpy()[fm.complete]
    return data.ledger.atoms[rows]


def _within_atoms(index: np.ndarray, order: np.ndarray, ledger: np.ndarray | None) -> bool:
    """Whether every micro-cluster lies inside one ledger atom (``order`` sorts rows by it)."""
    if ledger is None:
        return True
    counts = np.bincount(index)
    bounds = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sorted_atoms = ledger[order]
    low = np.minimum.reduceat(sorted_atoms, bounds)
    high = np.maximum.reduceat(sorted_atoms, bounds)
    return bool((low == high).all())


def _micro_within(z: np.ndarray, k: int, ledger: np.ndarray | None) -> np.ndarray:
    """Micro-clusters of ``z``'s rows, each inside one ledger atom."""
    if ledger is None or (ledger == ledger[0]).all():
        return micro_clusters(z, k)
    index = np.empty(len(z), dtype=np.intp)
    made = 0
    order = np.argsort(ledger, kind="stable")
    bounds = np.flatnonzero(np.diff(ledger[order])) + 1
    for rows in np.split(order, bounds):
        part = micro_clusters(z[rows], k)
        index[rows] = part + made
        made += int(part.max()) + 1
    return index


def atoms(data: SiteData, fm: FeatureMatrix, xa: np.ndarray, standardize: bool) -> Atoms | None:
    """Micro-clusters of >= k rows inside the ledger's atoms (None when k = 1: every row is its
    own).

    ``xa``: the working rows with a last column of ones (the statistics are kept per transform).
    Kept between rounds and queries while every micro-cluster still lies inside one atom (atoms
    only split; a release of another query may split one across a micro-cluster).
    """
    if data.k <= 1:
        return None
    key = ("atoms", standardize)
    cached = fm.extras.get(key)
    ledger = _ledger_atoms(data, fm)
    if cached is None or not _within_atoms(cached[0], cached[1], ledger):
        # depends on the site's rows and ledger only, never on the coordinator's transform
        z = fm.x
        if standardize:
            sd = fm.x.std(axis=0)
            z = (fm.x - fm.x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        index = _micro_within(z, data.k, ledger)
        cached = fm.extras[key] = (index, np.argsort(index, kind="stable"))
    index, order = cached
    stats_key = ("atom_stats", standardize)
    stats = fm.extras.get(stats_key)
    if stats is not None and stats[0] is xa and stats[1].index is index:
        return stats[1]
    p = xa.shape[1] - 1
    counts = np.bincount(index)
    bounds = np.concatenate(([0], np.cumsum(counts)[:-1]))
    xs = xa[order, :p]
    sums = np.add.reduceat(xs, bounds, axis=0)
    means = sums / counts[:, None]
    diff = xs - np.repeat(means, counts, axis=0)
    within = np.add.reduceat(np.einsum("ij,ij->i", diff, diff), bounds)
    atoms = Atoms(index, counts, sums, means, within)
    fm.extras[stats_key] = (xa, atoms)
    return atoms
