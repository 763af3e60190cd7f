"""k-means: federated Lloyd iterations, a federated k-means++ start, cluster labels kept at the sites.

Protocol (one message per site per round; every reply is checked at the site):

1. ``kmeans_stats``: per site the number of patients with every feature, the feature means and
   centred sums of squares. The coordinator pools them exactly (Chan's formula): the mean and the
   population SD used by ``standardize=True`` (as scikit-learn's ``StandardScaler``) and the mean
   feature variance that scales ``tol`` (scikit-learn's ``_tolerance``). Later rounds work in
   centred units ``(x - mean) / scale`` (scale 1 without standardising), as scikit-learn centres
   ``X`` before Lloyd; centres are reported in original units. With an ``init`` array and
   ``standardize=False`` nothing is needed before the first Lloyd round: there is no statistics
   round, the first ``kmeans_step`` brings the same moments (``moments=True``; for ``tol`` and the
   reported mean), and the rounds work in units centred on the given centres' mean.
2. Start centres: an ``init`` array (k x features, original units) or ``"k-means++"`` (below).
3. ``kmeans_step`` for the current centres: per cluster the count, the sum of its members and their
   inertia. The coordinator divides pooled sums by pooled counts and stops when the squared centre
   shift summed over clusters is <= ``tol`` x mean feature variance, or after ``max_iter`` rounds.
   Labels that stop changing give a zero shift, so this is also scikit-learn's strict convergence:
   both rules give the same centres, labels and ``n_iter``.
4. ``kmeans_assign`` for the final centres: per cluster the count and exact inertia; each site keeps
   its labels as the derived column ``cluster`` (``"1"``..``"k"``, a category; missing outside the
   cohort, for rows with a missing feature and in clusters the site withheld), for later queries
   (``by="cluster"``, ``group="cluster"``, ``where="cluster == '2'"``). A later k-means replaces it;
   a site that drops out of a later k-means drops its old one (``kmeans_clear``, sent by
   ``Federation.kmeans``).

Under ``Policy.unrestricted()`` each patient is clustered on their own, and with an ``init`` array and
``standardize=False`` the centres, inertia and ``n_iter`` equal scikit-learn's
``KMeans(init=..., n_init=1, algorithm="lloyd")`` on the pooled rows (~1e-13). By design, a cluster
with no members keeps its centre (scikit-learn moves it to the row farthest from its centre, which
would release that row).

Release rules (at the site, unless the policy is unrestricted; k = ``min_cell_count``):

- the features are numeric; rows with a missing feature are left out, 0 or >= k of them (else
  ``min_subset_size``); a feature on which all but 1..k-1 patients share one value is refused
  (``min_cell_count``: the one-hot attack, those patients' values would show in the sums);
- ``max_clusters``: ``n_clusters <= n / (2 k)`` for the site's n patients with every feature;
- micro-clusters: the site first groups its patients into micro-clusters of k..2k-1 similar
  patients (a k-d split down to cells of 128..256 rows, then MDAV microaggregation in each; built
  from the site's own rows only, kept at the site for later rounds and queries). Patients are
  assigned to centres a micro-cluster at a time (by its mean), so every released count, sum and
  inertia is over whole micro-clusters: no cluster holds 1..k-1 of a site's patients, and no two
  releases, in one run or in any run on the same features, cohort and ``standardize``, differ by
  1..k-1 patients, however the centres are chosen (Lloyd moving one patient between rounds, or
  hand-crafted centres). The finest thing the coordinator can learn is a micro-cluster's size, mean
  and within sum of squares (microaggregation, a standard disclosure-control method). The inertia
  reported is that of this assignment;
- a cluster with 1..k-1 patients at a site (not possible with micro-clusters; checked anyway) is
  withheld: no count, no sums, its centre pooled from the other sites, and the result says so;
- differencing: every released cluster is a row set the site remembers, together with filtered
  cohorts (:mod:`fedhem_kernel.privacy.guard`). A cluster whose patients differ from an earlier
  released set by 1..k-1 (possible across runs with other features or cohorts) is held (rule
  ``differencing``): not released, and the coordinator keeps that site's last contribution for it;
- complement: what a site's total minus its released clusters covers (its withheld and held
  clusters) must also be 0 or >= k patients and not within k of a remembered set, else the smallest
  released cluster is held too (repeated until it holds);
- the stored ``cluster`` column labels only clusters the site released in the final round, so later
  grouped queries run on row sets checked here.

The guard compares row sets pairwise: it does not rule out attacks that combine many releases of
different micro-cluster partitions (DP noise or secure aggregation would).

Federated k-means++ (greedy, as scikit-learn's, with ``2 + log(k)`` trials per centre):

Round r sends the centres chosen so far. Each site computes the D² mass of each of its
micro-clusters (its within sum of squares plus size x squared distance of its mean to the nearest
chosen centre; a micro-cluster's size in round 0), releases its total D² mass and the means of
micro-clusters drawn with probability proportional to their mass (a seeded RNG: the query's seed,
the round, the site's name). Candidates are thus means of k..2k-1 patients, never one patient's row
(under the unrestricted policy they are rows: plain k-means++). The coordinator draws each trial's
site with probability proportional to its D² mass and takes that site's next candidate: pooled D²
sampling. For the greedy choice a second message asks each site for its D² mass with each trial added
(``kmeans_potential``); the trial with the lowest pooled potential is the next centre. ``seed`` makes
the start, and with it the whole run, deterministic.
"""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from fedhem_kernel.analyses.feature_matrix import (
    FeatureMatrix,
    check_features,
    check_matrix,
    check_vector,
    feature_matrix,
    moments,
    pooled_moments,
    standard_scale,
)
from fedhem_kernel.analyses.kmeans_bounds import NearestCentres
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.guard import Partition, Unions
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
from fedhem_kernel.site.steps import SiteData, SiteStep, param_columns

COLUMN = "cluster"
CACHE = "kmeans"
MAX_CLUSTERS = 1000
CHUNK = 4096  # rows per block of the distance computation (fits the CPU cache)
RELEASED, WITHHELD, HELD = "released", "withheld", "held"


# -- site side ------------------------------------------------------------------------------------
def _n_clusters(params: Payload) -> int:
    k = params.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CLUSTERS:
        raise ParameterError(f"'k' must be a whole number between 1 and {MAX_CLUSTERS}")
    return k


def _matrix(data: SiteData, params: Payload) -> tuple[FeatureMatrix, int]:
    """The checked feature matrix and the number of clusters (refused if too many for the site)."""
    features = check_features(params.get("features"))
    n_clusters = _n_clusters(params)
    fm = feature_matrix(data, features, CACHE)
    k = data.k
    if k > 1 and n_clusters * 2 * k > fm.n:
        raise data.refuse(
            "max_clusters",
            f"{n_clusters} clusters need at least {2 * k} patients per cluster with every feature "
            "at this site",
        )
    return fm, n_clusters


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
    part: Partition | None = None  # the site's guard memory of released unions of micro-clusters
    means_ones_t: np.ndarray = field(init=False)  # (p + 1, A): means and a row of ones, by column
    stats: np.ndarray = field(init=False)  # (A, p + 2): sums, size, sum of ||x||² over its rows
    n_rows: int = field(init=False)

    def __post_init__(self) -> None:
        ones = np.ones(len(self.n))
        self.means_ones_t = np.ascontiguousarray(np.column_stack([self.means, ones]).T)
        self.n_rows = int(self.n.sum())
        norms = np.einsum("ij,ij->i", self.means, self.means)
        self.stats = np.column_stack([self.sums, self.n, self.within + self.n * norms])


def _atoms(data: SiteData, fm: FeatureMatrix, xa: np.ndarray, standardize: bool) -> Atoms | None:
    """Micro-clusters of >= k rows (None when k = 1: every row is its own).

    ``xa``: the working rows with a last column of ones (the statistics are kept per transform).
    """
    if data.k <= 1:
        return None
    key = ("atoms", standardize)
    cached = fm.extras.get(key)
    if cached is None:  # depends on the site's rows only, never on the coordinator's transform
        z = fm.x
        if standardize:
            sd = fm.x.std(axis=0)
            z = (fm.x - fm.x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        index = micro_clusters(z, data.k)
        part = None
        if data.guard is not None:  # released clusters are unions of micro-clusters
            rows = data.cohort.index.to_numpy()
            n_rows = data.n_rows if data.n_rows is not None else int(rows.max(initial=-1)) + 1
            group = np.full(n_rows, -1)
            group[rows[fm.complete]] = index
            part = data.guard.partition(data.dataset, group)
        cached = fm.extras[key] = (index, part)
    index, part = cached
    stats_key = ("atom_stats", standardize)
    stats = fm.extras.get(stats_key)
    if stats is not None and stats[0] is xa and stats[1].part is part:
        return stats[1]
    p = xa.shape[1] - 1
    order = np.argsort(index, kind="stable")
    counts = np.bincount(index)
    bounds = np.concatenate(([0], np.cumsum(counts)[:-1]))
    xs = xa[order, :p]
    sums = np.add.reduceat(xs, bounds, axis=0)
    means = sums / counts[:, None]
    diff = xs - np.repeat(means, counts, axis=0)
    within = np.add.reduceat(np.einsum("ij,ij->i", diff, diff), bounds)
    atoms = Atoms(index, counts, sums, means, within, part)
    fm.extras[stats_key] = (xa, atoms)
    return atoms


def _working(
    data: SiteData, params: Payload
) -> tuple[FeatureMatrix, np.ndarray, int, Atoms | None]:
    """Feature matrix, working rows with a column of ones (n x (p+1)), clusters, micro-clusters."""
    fm, n_clusters = _matrix(data, params)
    p = len(fm.features)
    shift = check_vector(params, "shift", p)
    scale = check_vector(params, "scale", p, positive=True)
    standardize = params.get("standardize", True)
    if not isinstance(standardize, bool):
        raise ParameterError("'standardize' must be true or false")
    xa = fm.working(shift, scale, ones=True)  # (n, p+1): last column of ones, see nearest()
    return fm, xa, n_clusters, _atoms(data, fm, xa, standardize)


def nearest(
    x: np.ndarray, centers: np.ndarray, sums: bool = True, ones: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest centre of every row and (unless ``sums=False``) the per-cluster sums of the rows.

    Labels in blocks of rows that fit the CPU cache: ||c||² - 2 x·c by one small matrix product,
    then argmin; sums as a sparse (cluster x row) indicator matrix times x. No Python loop over
    rows. ``ones=True``: ``x`` has an extra last column of ones
    (``FeatureMatrix.working(..., ones=True)``), so ||c||² comes with the product.
    """
    n = len(x)
    k, p = centers.shape
    labels = np.empty(n, dtype=np.intp)
    cc = np.einsum("ij,ij->i", centers, centers)
    ct = -2.0 * centers.T
    if ones:
        ct = np.vstack([ct, cc])
    ct = np.ascontiguousarray(ct)
    for start in range(0, n, CHUNK):
        d = x[start : start + CHUNK] @ ct
        if not ones:
            d += cc
        np.argmin(d, axis=1, out=labels[start : start + CHUNK])
    if not sums:
        return labels, None
    indicator = sparse.csc_matrix((np.ones(n), labels, np.arange(n + 1)), shape=(k, n))
    return labels, np.asarray(indicator @ x)[:, :p]


def squared_distances(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """sum((x - c)²) of every row to its centre (no cancellation, unlike ||x||² - 2x·c + ||c||²)."""
    out = np.empty(len(x))
    for start in range(0, len(x), CHUNK):
        diff = x[start : start + CHUNK] - centers[labels[start : start + CHUNK]]
        out[start : start + CHUNK] = np.einsum("ij,ij->i", diff, diff)
    return out


def _row_norms(fm: FeatureMatrix, xa: np.ndarray) -> np.ndarray:
    """||x||² of every working row (``xa`` without its column of ones), once per transform."""
    cached = fm.extras.get("row_norms")
    if cached is None or cached[0] is not xa:
        x = xa[:, :-1]
        cached = fm.extras["row_norms"] = (xa, np.einsum("ij,ij->i", x, x))
    return cached[1]


def _nearest_centres(fm: FeatureMatrix, xa: np.ndarray, centers: np.ndarray) -> NearestCentres:
    """Each row's nearest centre, kept between rounds (recomputed only where bounds allow a move)."""
    state = fm.extras.get("nearest")
    if state is not None and state.x is xa:
        state.update(centers)
        return state
    state = fm.extras["nearest"] = NearestCentres.start(xa, _row_norms(fm, xa), centers)
    return state


def _clusters(
    fm: FeatureMatrix, xa: np.ndarray, atoms: Atoms | None, centers: np.ndarray, exact: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Labels, and per cluster: counts, sums and inertia (whole micro-clusters when given).

    The labels are per row, or per micro-cluster when ``atoms`` are given.

    ``xa``: the working rows with a last column of ones. The inertia is exact (sum of (x - c)²)
    when ``exact``, else from the cluster's sums and sum of squared row norms (rounding of order
    1e-16 x ||x||², fine for the per-round history).
    """
    k = len(centers)
    x = xa[:, :-1]
    if atoms is None:
        state = _nearest_centres(fm, xa, centers)
        labels, counts = state.labels.copy(), state.counts.copy()
        if exact:  # the last round: no sums
            inertia = np.bincount(labels, squared_distances(x, centers, labels), minlength=k)
            return labels, counts, None, inertia
        sums = state.sums.copy()
        cc = np.einsum("ij,ij->i", centers, centers)
        inertia = state.norms - 2 * np.einsum("ij,ij->i", sums, centers) + counts * cc
        return labels, counts, sums, np.maximum(inertia, 0.0)
    # micro-clusters (a few thousand): whole-array operations, no blocks; a (centre x micro-
    # cluster) block as in kmeans_bounds._blocks, so that the minimum runs along micro-clusters
    cc = np.einsum("ij,ij->i", centers, centers)
    d = np.column_stack([-2.0 * centers, cc]) @ atoms.means_ones_t  # (k, A)
    at_best = d == d.min(axis=0)
    member = at_best.astype(float)  # (k, A): one 1 per micro-cluster, unless centres tie
    pooled = member @ atoms.stats  # (k, p + 2): sums, sizes, sum of n ||x||² over the rows
    p = centers.shape[1]
    if np.rint(pooled[:, p].sum()) != atoms.n_rows:  # a tie: the first of the tied centres
        lab = d.argmin(axis=0)
        member = (lab == np.arange(k)[:, None]).astype(float)
        pooled = member @ atoms.stats
    else:
        lab = np.einsum("i,ij->j", np.arange(k, dtype=np.uint16), at_best.view(np.uint8))
        lab = lab.astype(np.intp)
    sums, counts = pooled[:, :p], np.rint(pooled[:, p]).astype(np.int64)
    if exact:
        d2 = squared_distances(atoms.means, centers, lab)
        inertia = member @ (atoms.within + atoms.n * d2)
    else:  # as for rows above: rounding of order 1e-16 x ||x||²
        inertia = pooled[:, p + 1] - 2 * np.einsum("ij,ij->i", sums, centers) + counts * cc
        inertia = np.maximum(inertia, 0.0)
    return lab, counts, sums, inertia


def _members(fm: FeatureMatrix, labels: np.ndarray, clusters: Sequence[int]) -> np.ndarray:
    """Cohort-row flags of the rows in the given clusters."""
    sel = np.zeros(len(fm.complete), dtype=bool)
    sel[np.flatnonzero(fm.complete)[np.isin(labels, clusters)]] = True
    return sel


class _RowSets:
    """The differencing checks of clusters and unions of clusters, on rows (``labels`` per row)."""

    def __init__(self, data: SiteData, fm: FeatureMatrix, labels: np.ndarray) -> None:
        self.data, self.fm, self.labels = data, fm, labels

    def near(self, unions: list[list[int]]) -> list[bool]:
        return [self.data.near_released(_members(self.fm, self.labels, u)) for u in unions]

    def remember(self, unions: list[list[int]]) -> None:
        for u in unions:
            self.data.remember_released(_members(self.fm, self.labels, u))


class _AtomSets:
    """The same checks with ``labels`` per micro-cluster: the guard works on micro-cluster
    bitmasks (:class:`~fedhem_kernel.privacy.guard.Partition`), in their number, not the rows'."""

    def __init__(self, data: SiteData, part: Partition, labels: np.ndarray) -> None:
        assert data.guard is not None
        self.guard, self.data, self.part, self.labels = data.guard, data, part, labels
        self._prepared: dict[tuple[tuple[int, ...], ...], Unions] = {}

    def _unions(self, unions: list[list[int]]) -> Unions:
        key = tuple(tuple(u) for u in unions)
        prepared = self._prepared.get(key)
        if prepared is None:
            if all(len(u) == 1 for u in unions):
                members = self.labels[None, :] == np.array([u[0] for u in unions])[:, None]
            else:
                members = np.stack([np.isin(self.labels, u) for u in unions])
            prepared = self._prepared[key] = Unions.of(self.part, members)
        return prepared

    def near(self, unions: list[list[int]]) -> list[bool]:
        if not unions:
            return []
        return self.guard.near_unions(self.data.dataset, self._unions(unions), self.data.k).tolist()

    def remember(self, unions: list[list[int]]) -> None:
        if unions:
            self.guard.remember_unions(self.data.dataset, self._unions(unions))


def gate_clusters(
    data: SiteData,
    fm: FeatureMatrix,
    labels: np.ndarray,
    counts: np.ndarray,
    atoms: Atoms | None = None,
) -> list[str]:
    """Per cluster: released, withheld (1..k-1 members) or held (differencing / complement).

    ``labels``: each row's cluster, or each micro-cluster's when ``atoms`` are given.
    """
    n_clusters = len(counts)
    status = [RELEASED] * n_clusters
    k = data.k
    if k <= 1 and data.guard is None:
        return status
    if data.guard is None:
        sets: _RowSets | _AtomSets | None = None
    elif atoms is not None and atoms.part is not None:
        sets = _AtomSets(data, atoms.part, labels)
    else:
        sets = _RowSets(data, fm, labels)
    for j in range(n_clusters):
        if 0 < counts[j] < k:
            status[j] = WITHHELD
    checked = [j for j in range(n_clusters) if counts[j] >= k]
    if sets is not None:
        for j, near in zip(checked, sets.near([[j] for j in checked]), strict=True):
            if near:
                status[j] = HELD
    held_first = sum(s == HELD for s in status)
    while True:  # the rows not released: the site's total minus its released clusters
        rest = [j for j in range(n_clusters) if status[j] != RELEASED and counts[j]]
        shown = [j for j in range(n_clusters) if status[j] == RELEASED and counts[j]]
        if not rest or not shown:
            break
        if sum(counts[rest]) >= k and (sets is None or not sets.near([rest])[0]):
            break
        status[min(shown, key=lambda j: (counts[j], j))] = HELD
    if WITHHELD in status:
        data.log.suppressed(
            "min_cell_count",
            f"clusters with fewer than {k} patients at this site are withheld",
            action="withheld",
        )
    if held_first:
        data.log.suppressed(
            "differencing",
            f"clusters whose members differ from an earlier release by fewer than {k} patients "
            "are held at their last release",
        )
    if sum(s == HELD for s in status) > held_first:
        data.log.suppressed(
            "differencing",
            "clusters are held so that the withheld ones cannot be derived from the site's total",
        )
    shown = [j for j in range(n_clusters) if status[j] == RELEASED and counts[j]]
    rest = [j for j in range(n_clusters) if status[j] != RELEASED and counts[j]]
    if sets is not None:
        sets.remember([[j] for j in shown])  # usually the unions checked above: prepared once
        if rest and shown:
            sets.remember([rest])
    return status


def _release(
    status: list[str], counts: np.ndarray, sums: np.ndarray | None, inertia: np.ndarray
) -> Payload:
    keep = np.array([s == RELEASED for s in status])
    out: Payload = {
        "status": status,
        "counts": np.where(keep, counts, 0).astype(np.int64),
        "inertia": np.where(keep, inertia, 0.0),
    }
    if sums is not None:
        out["sums"] = np.where(keep[:, None], sums, 0.0)
    return out


def _moments(fm: FeatureMatrix) -> Payload:
    if "moments" not in fm.extras:
        fm.extras["moments"] = moments(fm.x)
    return dict(fm.extras["moments"])


def site_kmeans_stats(data: SiteData, params: Payload) -> Payload:
    fm, _ = _matrix(data, params)
    return _moments(fm)


def site_kmeans_step(data: SiteData, params: Payload) -> Payload:
    """One Lloyd round: per cluster of the given centres, count, sums and inertia (checked);
    with ``moments=True`` also what ``kmeans_stats`` releases (the first round of a run that
    needs no statistics before it)."""
    fm, xa, n_clusters, atoms = _working(data, params)
    centers = check_matrix(params, "centers", xa.shape[1] - 1, n_clusters, n_clusters)
    with_moments = params.get("moments", False)
    if not isinstance(with_moments, bool):
        raise ParameterError("'moments' must be true or false")
    labels, counts, sums, inertia = _clusters(fm, xa, atoms, centers, exact=False)
    status = gate_clusters(data, fm, labels, counts, atoms)
    out = _release(status, counts, sums, inertia)
    if with_moments:
        out["moments"] = _moments(fm)
    return out


def site_kmeans_assign(data: SiteData, params: Payload) -> Payload:
    """Final labels: counts and exact inertia per cluster; the labels stay as column ``cluster``."""
    fm, xa, n_clusters, atoms = _working(data, params)
    centers = check_matrix(params, "centers", xa.shape[1] - 1, n_clusters, n_clusters)
    source = str(params.get("source") or "kmeans")[:80]
    labels, counts, _, inertia = _clusters(fm, xa, atoms, centers, exact=True)
    status = gate_clusters(data, fm, labels, counts, atoms)
    if atoms is not None:
        labels = labels[atoms.index]  # each row's cluster
    released = np.array([s == RELEASED for s in status])
    # names "1".."k", None for a cluster the site withheld: one lookup per row
    names = [str(j + 1) if released[j] else None for j in range(n_clusters)]
    names = np.array([*names, None], dtype=object)
    code = np.full(len(fm.complete), n_clusters)
    code[fm.complete] = labels
    data.derive(COLUMN, names[code], "category", source)
    if not released[labels].all():
        data.log.note(f"patients in clusters this site withheld have no '{COLUMN}' value")
    return _release(status, counts, None, inertia)


def site_kmeans_clear(data: SiteData, params: Payload) -> Payload:
    """Drop this site's derived ``cluster`` column (it belongs to an earlier k-means)."""
    spec = data.schema.columns.get(COLUMN)
    if spec is not None and spec.derived is not None:
        data.derive(COLUMN, None, "category", "")
    return {}


def _site_rng(params: Payload, site: str, dataset: str) -> np.random.Generator:
    seed = params.get("seed")
    rnd = params.get("round")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ParameterError("'seed' must be a whole number >= 0")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise ParameterError("'round' must be a whole number >= 0")
    return np.random.default_rng(
        [seed, rnd, zlib.crc32(site.encode()), zlib.crc32(dataset.encode())]
    )


def _points(x: np.ndarray, atoms: Atoms | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What k-means++ samples: micro-cluster means with their sizes and within sums of squares."""
    if atoms is None:
        return x, np.ones(len(x)), np.zeros(len(x))
    return atoms.means, atoms.n.astype(float), atoms.within


def _d2(points: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Squared distance of every point to its nearest chosen centre."""
    if not len(chosen):
        return np.zeros(len(points))
    return squared_distances(points, chosen, nearest(points, chosen, sums=False)[0])


def site_kmeans_candidates(data: SiteData, params: Payload) -> Payload:
    """k-means++ round: the site's D² mass and micro-cluster means drawn by their D² mass."""
    fm, xa, n_clusters, atoms = _working(data, params)
    x = xa[:, :-1]
    chosen = check_matrix(params, "centers", x.shape[1], n_clusters - 1)
    wanted = params.get("n_candidates")
    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= 20:
        raise ParameterError("'n_candidates' must be a whole number between 1 and 20")
    rng = _site_rng(params, data.site, data.dataset)
    points, weight, within = _points(x, atoms)
    mass = weight if not len(chosen) else within + weight * _d2(points, chosen)
    total = float(mass.sum())
    if not total > 0:
        return {"mass": 0.0, "candidates": np.empty((0, x.shape[1]))}
    out: list[np.ndarray] = []
    skipped = 0
    for i in rng.choice(len(points), size=3 * wanted, replace=True, p=mass / total):
        if len(out) == wanted:
            break
        if atoms is not None and atoms.part is not None:  # a released row set like any other
            sets = _AtomSets(data, atoms.part, np.arange(len(points)))
            if sets.near([[i]])[0]:
                skipped += 1
                continue
            sets.remember([[i]])
        out.append(points[i])
    if skipped:
        data.log.suppressed(
            "differencing",
            f"k-means++ candidates within {data.k} patients of an earlier release were skipped",
        )
    return {"mass": total, "candidates": np.array(out).reshape(len(out), x.shape[1])}


def site_kmeans_potential(data: SiteData, params: Payload) -> Payload:
    """k-means++ greedy step: the site's D² mass if each candidate were added to the centres."""
    _, xa, n_clusters, atoms = _working(data, params)
    x = xa[:, :-1]
    chosen = check_matrix(params, "centers", x.shape[1], n_clusters - 1, 1)
    candidates = check_matrix(params, "candidates", x.shape[1], 20, 1)
    points, weight, within = _points(x, atoms)
    current = _d2(points, chosen)
    pot = [
        float((within + weight * np.minimum(current, ((points - c) ** 2).sum(axis=1))).sum())
        for c in candidates
    ]
    return {"potential": np.array(pot)}


def _kmeans_columns(params: Payload) -> list[str]:
    return param_columns("features")(params)


STEPS = [
    SiteStep(name, "kmeans", fn, _kmeans_columns)
    for name, fn in (
        ("kmeans_stats", site_kmeans_stats),
        ("kmeans_candidates", site_kmeans_candidates),
        ("kmeans_potential", site_kmeans_potential),
        ("kmeans_step", site_kmeans_step),
        ("kmeans_assign", site_kmeans_assign),
    )
] + [SiteStep("kmeans_clear", "kmeans", site_kmeans_clear, lambda params: [])]


# -- combine side ---------------------------------------------------------------------------------
@dataclass
class _Contributions:
    """Each site's last released (count, sums, inertia) per cluster within this query."""

    n_clusters: int
    p: int
    #: per site: which clusters it has a contribution for, and their counts, sums and inertia
    last: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )

    def add(self, payloads: dict[str, Payload]) -> tuple[np.ndarray, np.ndarray, float]:
        k, p = self.n_clusters, self.p
        counts = np.zeros(k, dtype=np.int64)
        sums = np.zeros((k, p))
        inertia = 0.0
        for site in list(self.last):
            if site not in payloads:
                del self.last[site]  # the site left the query: its contributions go with it
        for site in sorted(payloads):  # a fixed order: sums do not depend on reply order
            payload = payloads[site]
            entry = self.last.get(site)
            if entry is None:
                entry = self.last[site] = (
                    np.zeros(k, dtype=bool),
                    np.zeros(k, np.int64),
                    np.zeros((k, p)),
                    np.zeros(k),
                )
            has, c, s, w = entry
            status = payload["status"]
            got_c = np.asarray(payload["counts"], dtype=np.int64)
            got_s = np.asarray(payload["sums"], dtype=float).reshape(k, p)
            got_w = np.asarray(payload["inertia"], dtype=float)
            if len(status) == k and all(st == RELEASED for st in status):  # the usual round
                has[:] = True
                c[:], s[:], w[:] = got_c, got_s, got_w
                counts += c
                sums += s
                for value in w.tolist():
                    inertia += value
                continue
            status = np.asarray(status, dtype=object)
            released = status == RELEASED
            c[released] = got_c[released]
            s[released] = got_s[released]
            w[released] = got_w[released]
            has[released] = True
            has[status == WITHHELD] = False  # held: the last released contribution stays
            counts += np.where(has, c, 0)
            sums += np.where(has[:, None], s, 0.0)
            for value in w[has].tolist():
                inertia += value
        return counts, sums, inertia


def _pooled_stats(per_site: dict[str, Payload]) -> tuple[int, np.ndarray, np.ndarray]:
    n, mean, m2 = pooled_moments(list(per_site.values()))
    return n, mean, m2 / n  # population variance, as numpy's var and StandardScaler


def _kmeans_plus_plus(q: Ask, base: Payload, n_clusters: int, p: int, seed: int) -> np.ndarray:
    """Greedy k-means++ over the sites' candidates (scikit-learn's scheme, pooled D² weights)."""
    rng = np.random.default_rng(seed)
    n_trials = 2 + int(math.log(n_clusters))
    chosen = np.empty((0, p))
    for r in range(n_clusters):
        params = {**base, "centers": chosen, "n_candidates": n_trials, "seed": seed, "round": r}
        payloads = q.ask("kmeans_candidates", params)
        sites = [s for s in sorted(payloads) if len(payloads[s]["candidates"])]
        mass = np.array([float(payloads[s]["mass"]) for s in sites])
        if not sites or not mass.sum() > 0:
            raise ParameterError(
                "k-means++ found no further start centre (every patient sits on a chosen "
                "centre): use fewer clusters",
                dataset=q.dataset,
            )
        # pooled D² sampling: a site by its D² mass, then its next candidate (drawn by D² there)
        used = dict.fromkeys(sites, 0)
        trials = []
        for _ in range(1 if r == 0 else n_trials):
            site = sites[int(rng.choice(len(sites), p=mass / mass.sum()))]
            cands = np.asarray(payloads[site]["candidates"], dtype=float).reshape(-1, p)
            if used[site] < len(cands):
                trials.append(cands[used[site]])
                used[site] += 1
        if len(trials) > 1:
            replies = q.ask(
                "kmeans_potential", {**base, "centers": chosen, "candidates": np.array(trials)}
            )
            potential = sum(
                np.asarray(replies[s]["potential"], dtype=float) for s in sorted(replies)
            )
            best = int(np.argmin(potential))
        else:
            best = 0
        chosen = np.vstack([chosen, trials[best]])
    return chosen


def _check_init(init: Any, n_clusters: int, features: list[str]) -> np.ndarray | str:
    if isinstance(init, str):
        if init != "k-means++":
            raise ParameterError("'init' must be 'k-means++' or an array of start centres")
        return init
    try:
        arr = np.asarray(init.to_numpy() if isinstance(init, pd.DataFrame) else init, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError("'init' must be 'k-means++' or an array of numbers") from None
    if arr.shape != (n_clusters, len(features)):
        raise ParameterError(
            f"'init' must have shape (k, features) = ({n_clusters}, {len(features)})"
        )
    if not np.isfinite(arr).all():
        raise ParameterError("'init' must hold finite numbers")
    return arr


def _check_number(value: Any, name: str, low: float, integer: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or not (value >= low) or (not integer and not math.isfinite(value)):
        kind = "a whole number" if integer else "a number"
        raise ParameterError(f"'{name}' must be {kind} >= {low:g}")


@dataclass(frozen=True)
class ClusterProfile:
    """Per-cluster describe of chosen variables and a Kaplan–Meier curve per cluster."""

    describe: Any
    kaplan_meier: Any | None

    def _repr_html_(self) -> str:
        parts = [self.describe._repr_html_()]
        if self.kaplan_meier is not None:
            parts.append(self.kaplan_meier._repr_html_())
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ClusterProfile(\n{self.describe!r}\n{self.kaplan_meier!r})"


@dataclass(frozen=True)
class KMeansResult:
    """Federated k-means (scikit-learn naming without the trailing underscore).

    ``cluster_centers`` (k x features, original units), ``cluster_sizes`` (patients per cluster in
    the released clusters), ``inertia`` (sum of squared distances to the nearest centre, in the units
    the clustering used: standardised when ``standardize=True``), ``n_iter``, ``by_site`` (per site
    and cluster: size or withheld), ``history`` (per Lloyd round: centre shift and inertia) and
    ``privacy``. The labels stay at the sites as column ``cluster`` of the dataset.
    """

    cluster_centers: pd.DataFrame
    cluster_sizes: pd.Series
    inertia: float
    n_iter: int
    converged: bool
    by_site: pd.DataFrame
    history: pd.DataFrame
    privacy: PrivacyReport
    dataset: str
    features: tuple[str, ...]
    standardize: bool
    mean: pd.Series
    scale: pd.Series
    init: str
    seed: int
    where: str | None = None
    column: str = COLUMN
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_centers)

    @property
    def n_observations(self) -> int:
        return int(self.cluster_sizes.sum())

    @property
    def n_sites(self) -> int:
        return len(self.privacy.released_sites)

    @property
    def summary(self) -> pd.DataFrame:
        """Centres (original units) with each cluster's size."""
        return self.cluster_centers.assign(size=self.cluster_sizes)

    def profile(
        self,
        fed: Any,
        variables: Sequence[str] | str | None = None,
        survival: tuple[str, str] | None = ("os_months", "os_status"),
    ) -> ClusterProfile:
        """Describe ``variables`` per cluster and a Kaplan–Meier curve per cluster (``survival``
        is ``(duration, event)`` or None), from the sites' ``cluster`` column.
        """
        self._check_current(fed)
        desc = fed.describe(self.dataset, variables, by=self.column, where=self.where)
        km = None
        if survival is not None:
            duration, event = survival
            km = fed.kaplan_meier(
                self.dataset, duration, event, group=self.column, where=self.where
            )
        return ClusterProfile(desc, km)

    def _check_current(self, fed: Any) -> None:
        """Refuse when the sites' column holds another clustering (a later k-means replaced it)."""
        for site, reply in fed._catalog_replies().items():
            if reply.payload is None or site not in self.privacy.released_sites:
                continue
            cols = reply.payload["datasets"].get(self.dataset, [])
            derived = {c["column"]: c.get("derived") for c in cols}
            if derived.get(self.column) != self.source:
                raise ParameterError(
                    f"the '{self.column}' column now holds another clustering (a later k-means "
                    "replaced it): profile that result, or run this k-means again",
                    site=site,
                    dataset=self.dataset,
                    column=self.column,
                )

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.cluster_state import kmeans_footnote, kmeans_title
        from fedhem_kernel.display.html import result_html

        return result_html(
            kmeans_title(self),
            self.summary,
            self.privacy,
            footnote=kmeans_footnote(self),
            extra_tables=[("per site", self.by_site)],
        )

    def widget(self, pca: Any = None) -> Any:
        """This result as an interactive widget: centres and sizes, the per-site table, the privacy
        panel and a figure: with ``pca=`` (a ``fed.pca`` result on these features) the centres on
        PC1/PC2, area ~ released size; without, a heatmap of each centre against the pooled mean
        (in pooled SDs when ``standardize=True``). No patient's point is ever drawn."""
        from fedhem_kernel.display.cluster_state import (
            kmeans_figure,
            kmeans_footnote,
            kmeans_tables,
            kmeans_title,
        )
        from fedhem_kernel.display.widgets import ResultTableWidget

        figure = kmeans_figure(self, pca)
        return ResultTableWidget(
            kmeans_title(self),
            kmeans_tables(self),
            self.privacy,
            footnote=kmeans_footnote(self, figure),
            figure=figure,
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return (
            f"KMeansResult(n_clusters={self.n_clusters}, inertia={self.inertia:.6g}, "
            f"n_iter={self.n_iter}, converged={self.converged}\n"
            f"{self.summary.to_string()}\n{self.privacy!r})"
        )


def run_kmeans(
    q: Ask,
    features: Sequence[str] | str,
    k: int,
    *,
    init: Any = "k-means++",
    standardize: bool = True,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansResult:
    feats = check_features(features)
    _check_number(k, "k", 1, integer=True)
    if k > MAX_CLUSTERS:
        raise ParameterError(f"'k' must be at most {MAX_CLUSTERS}")
    start = _check_init(init, k, feats)
    if not isinstance(standardize, bool):
        raise ParameterError("'standardize' must be True or False")
    _check_number(seed, "seed", 0, integer=True)
    _check_number(max_iter, "max_iter", 1, integer=True)
    _check_number(tol, "tol", 0, integer=False)
    p = len(feats)
    source = f"kmeans {uuid.uuid4().hex[:12]}"
    # Given centres and no standardising: nothing is needed before the first Lloyd round, which
    # brings the statistics (one round fewer) and works in units centred on the given centres'
    # mean; otherwise a statistics round first, and units centred on the pooled mean.
    early = isinstance(start, str) or standardize
    if early:
        stats = q.ask("kmeans_stats", {"features": feats, "k": k})
        _, mean, var = _pooled_stats(stats)
        scale = standard_scale(feats, var, q.dataset) if standardize else np.ones(p)
        shift = mean  # centred units, as scikit-learn's KMeans centres X
        tol_w = float(np.mean(var / scale**2)) * tol
    else:
        scale = np.ones(p)
        shift = np.asarray(start, dtype=float).mean(axis=0)
    base = {
        "features": feats,
        "k": k,
        "shift": shift,
        "scale": scale,
        "standardize": standardize,
    }
    if isinstance(start, str):
        centers = _kmeans_plus_plus(q, base, k, p, seed)
    else:
        centers = (start - shift) / scale
    contrib = _Contributions(k, p)
    history = []
    converged = False
    n_iter = 0
    empty_rounds: set[int] = set()
    for i in range(max_iter):
        params = {**base, "centers": centers}
        if i == 0 and not early:
            params["moments"] = True
        payloads = q.ask("kmeans_step", params)
        if i == 0 and not early:
            _, mean, var = _pooled_stats({s: pl["moments"] for s, pl in payloads.items()})
            tol_w = float(np.mean(var)) * tol
        counts, sums, inertia = contrib.add(payloads)
        new = centers.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty_rounds.update(np.flatnonzero(~filled).tolist())
        shift_tot = float(((new - centers) ** 2).sum())
        history.append({"round": i + 1, "inertia": inertia, "center_shift": shift_tot})
        centers = new
        n_iter = i + 1
        if shift_tot <= tol_w:
            converged = True
            break
    final = q.ask("kmeans_assign", {**base, "centers": centers, "source": source})
    return _result(
        q,
        final,
        centers,
        shift,
        mean,
        scale,
        feats,
        n_iter,
        converged,
        history,
        empty_rounds,
        standardize=standardize,
        init="k-means++" if isinstance(start, str) else "array",
        seed=seed,
        source=source,
    )


def _result(
    q: Ask,
    final: dict[str, Payload],
    centers: np.ndarray,
    shift: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    feats: list[str],
    n_iter: int,
    converged: bool,
    history: list[dict],
    empty_rounds: set[int],
    *,
    standardize: bool,
    init: str,
    seed: int,
    source: str,
) -> KMeansResult:
    k = len(centers)
    names = [str(j + 1) for j in range(k)]
    sizes = np.zeros(k, dtype=np.int64)
    inertia = 0.0
    rows = []
    notes: list[str] = []
    for site in sorted(final):
        payload = final[site]
        for j, st in enumerate(payload["status"]):
            count = int(payload["counts"][j])
            if st == RELEASED:
                sizes[j] += count
                inertia += float(payload["inertia"][j])
            rows.append(
                {
                    "site": site,
                    "cluster": names[j],
                    "size": count if st == RELEASED else pd.NA,
                    "status": st,
                }
            )
    by_site = pd.DataFrame(rows, columns=["site", "cluster", "size", "status"])
    by_site["size"] = by_site["size"].astype("Int64")
    if (by_site["status"] == WITHHELD).any():
        notes.append(
            "Some sites withheld clusters with fewer than min_cell_count patients: those "
            "centres are pooled from the other sites and their sizes leave them out."
        )
    if (by_site["status"] == HELD).any():
        notes.append(
            "Some sites held clusters that differ from an earlier release by fewer than "
            "min_cell_count patients: their last released contribution was used; sizes and "
            "inertia leave them out."
        )
    if empty_rounds:
        notes.append(
            "Clusters " + ", ".join(names[j] for j in sorted(empty_rounds)) + " had no released "
            "members in some round and kept their centre (scikit-learn would move them)."
        )
    for note in notes:
        q.note(note)
    centers_orig = centers * scale + shift
    return KMeansResult(
        cluster_centers=pd.DataFrame(
            centers_orig, index=pd.Index(names, name="cluster"), columns=feats
        ),
        cluster_sizes=pd.Series(sizes, index=pd.Index(names, name="cluster"), name="size"),
        inertia=inertia,
        n_iter=n_iter,
        converged=converged,
        by_site=by_site,
        history=pd.DataFrame(history, columns=["round", "inertia", "center_shift"]),
        privacy=q.report(),
        dataset=q.dataset,
        features=tuple(feats),
        standardize=standardize,
        mean=pd.Series(mean, index=feats, name="mean"),
        scale=pd.Series(scale, index=feats, name="scale"),
        init=init,
        seed=seed,
        where=q.where,
        source=source,
        notes=tuple(notes),
    )
