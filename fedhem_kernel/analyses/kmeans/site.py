"""Site steps of ``kmeans``: moments, Lloyd rounds (per cluster count, sum and inertia, gated), the final
labels kept at the site, and the k-means++ start from micro-cluster candidates.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from fedhem_kernel.analyses.common.params import (
    MAX_FEATURES,
    check_features,
    check_matrix,
    check_vector,
)
from fedhem_kernel.analyses.common.site_features import FeatureMatrix, feature_matrix, moments
from fedhem_kernel.analyses.kmeans import COLUMN, MAX_CLUSTERS, RELEASED, WITHHELD
from fedhem_kernel.analyses.kmeans.site_bounds import NearestCentres
from fedhem_kernel.analyses.kmeans.site_dp import STEPS as DP_STEPS
from fedhem_kernel.analyses.kmeans.site_micro import Atoms, atoms
from fedhem_kernel.errors import DisclosureError, ParameterError
from fedhem_kernel.protocol.params import (
    BOOL,
    NONE,
    Params,
    integer,
    list_of,
    matrix,
    text,
    vector,
)
from fedhem_kernel.protocol.params import COLUMN as COLUMN_NAME
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.steps import SiteData, SiteFn, SiteStep, param_columns

CACHE = "kmeans"


CHUNK = 4096  # rows per block of the distance computation (fits the CPU cache)


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
    return fm, xa, n_clusters, atoms(data, fm, xa, standardize)


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
    # cluster) block as in site_bounds._blocks, so that the minimum runs along micro-clusters
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


def gate_clusters(
    data: SiteData,
    fm: FeatureMatrix,
    labels: np.ndarray,
    counts: np.ndarray,
    atoms: Atoms | None = None,
) -> list[str]:
    """Per cluster: released, or withheld (1..k-1 members; not possible with micro-clusters,
    checked anyway); the released clusters go through the release ledger.

    ``labels``: each row's cluster, or each micro-cluster's when ``atoms`` are given. Clusters are
    unions of micro-clusters, which lie inside the ledger's atoms: the ledger moves no patient
    (checked: a move would be a fault, and nothing is sent).
    """
    n_clusters = len(counts)
    k = data.k
    status = [WITHHELD if 0 < counts[j] < k else RELEASED for j in range(n_clusters)]
    if WITHHELD in status:
        data.log.suppressed(
            "min_cell_count",
            f"clusters with fewer than {k} patients at this site are withheld",
            action="withheld",
        )
    if data.ledger is not None:
        rows = labels[atoms.index] if atoms is not None else labels
        shown = np.array([s == RELEASED for s in status])
        cluster = np.full(len(fm.complete), -1, dtype=np.int64)
        cluster[fm.complete] = np.where(shown[rows], rows, -1)
        snapped = data.release_groups(cluster, fixed=~fm.complete)
        if not np.array_equal(snapped, cluster):
            raise RuntimeError("k-means: the ledger would move a patient between clusters")
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
    for i in rng.choice(len(points), size=3 * wanted, replace=True, p=mass / total):
        if len(out) == wanted:
            break
        if atoms is not None and data.ledger is not None:  # a released row set like any other
            members = np.zeros(len(fm.complete), dtype=bool)
            members[np.flatnonzero(fm.complete)[atoms.index == i]] = True
            if not np.array_equal(data.release_rows(members, fixed=~fm.complete), members):
                raise RuntimeError("k-means++: the ledger would move a patient")
        out.append(points[i])
    return {"mass": total, "candidates": np.array(out).reshape(len(out), x.shape[1])}


def site_kmeans_potential(data: SiteData, params: Payload) -> Payload:
    """k-means++ greedy step: the site's D² mass if each candidate were added to the centres."""
    _, xa, n_clusters, atoms = _working(data, params)
    x = xa[:, :-1]
    chosen = check_matrix(params, "centers", x.shape[1], n_clusters - 1)
    candidates = check_matrix(params, "candidates", x.shape[1], 20, 1)
    points, weight, within = _points(x, atoms)
    current = _d2(points, chosen) if len(chosen) else np.full(len(points), np.inf)
    pot = [
        float((within + weight * np.minimum(current, ((points - c) ** 2).sum(axis=1))).sum())
        for c in candidates
    ]
    return {"potential": np.array(pot)}


# -- pooled through secure sums ---------------------------------------------------------------------
def _take_part(data: SiteData, params: Payload, run: SiteFn) -> Payload | None:
    """This site's share of a pooled k-means round (``run``'s payload), or None when it sits the
    clustering out: too few patients here for the clusters' micro-clusters, or a feature singling
    out a few of them (the per-site rules). In a secure sum it then adds zeros (and ``sat_out``:
    1), never a refusal, which would say how few patients it has."""
    if not data.secure:
        raise ParameterError("a pooled k-means round is asked only as a secure sum", site=data.site)
    return _unless_refused(data, params, run)


def _unless_refused(data: SiteData, params: Payload, run: SiteFn) -> Payload | None:
    """``run``'s payload, or None where this site's rules refuse it (or its cohort is empty)."""
    if len(data.cohort) == 0:
        return None
    try:
        return run(data, params)
    except DisclosureError:
        return None


def _share(payload: Payload | None, n_clusters: int, p: int, sums: bool) -> Payload:
    """A round's payload as a share of a secure sum: every cluster released (micro-clusters make
    a withheld one impossible: checked), or zeros for a site that sits out."""
    if payload is None:
        out: Payload = {
            "counts": np.zeros(n_clusters, dtype=np.int64),
            "inertia": np.zeros(n_clusters),
        }
        if sums:
            out["sums"] = np.zeros((n_clusters, p))
        return {**out, "sat_out": np.ones(1, dtype=np.int64)}
    if any(st != RELEASED for st in payload.pop("status")):
        raise RuntimeError("k-means: a pooled round met a cluster this site could not release")
    return {**payload, "sat_out": np.zeros(1, dtype=np.int64)}


def site_kmeans_pool_stats(data: SiteData, params: Payload) -> Payload:
    """The moments round as sums: n, Σx and Σx² of the features (zeros if this site sits out)."""
    p = len(check_features(params.get("features")))
    m = _take_part(data, params, site_kmeans_stats)
    if m is None:
        zeros = np.zeros(p)
        return {
            "n": np.zeros(1, dtype=np.int64),
            "sum": zeros,
            "sumsq": zeros,
            "sat_out": np.ones(1, dtype=np.int64),
        }
    n, mean = int(m["n"]), np.asarray(m["mean"], dtype=float)
    return {
        "n": np.array([n], dtype=np.int64),
        "sum": n * mean,
        "sumsq": np.asarray(m["m2"], dtype=float) + n * mean**2,
        "sat_out": np.zeros(1, dtype=np.int64),
    }


def site_kmeans_pool_step(data: SiteData, params: Payload) -> Payload:
    """A Lloyd round's per-cluster counts, sums and inertia, as a share of their totals."""
    p = len(check_features(params.get("features")))
    payload = _take_part(data, params, site_kmeans_step)
    return _share(payload, _n_clusters(params), p, sums=True)


def site_kmeans_pool_assign(data: SiteData, params: Payload) -> Payload:
    """The final labels (kept at the site as ``cluster``), per-cluster counts and inertia as a
    share of their totals; a site that sits out drops an earlier ``cluster`` column."""
    p = len(check_features(params.get("features")))
    payload = _take_part(data, params, site_kmeans_assign)
    if payload is None:
        site_kmeans_clear(data, params)
    return _share(payload, _n_clusters(params), p, sums=False)


def site_kmeans_pool_potential(data: SiteData, params: Payload) -> Payload:
    """k-means++'s greedy step as a share of the pooled potential of each candidate."""
    candidates = check_matrix(
        params, "candidates", len(check_features(params.get("features"))), 20, 1
    )
    payload = _take_part(data, params, site_kmeans_potential)
    if payload is None:
        return {"potential": np.zeros(len(candidates))}
    return payload


def _kmeans_columns(params: Payload) -> list[str]:
    return param_columns("features")(params)


#: Every k-means request names its features and k.
FEATURES: Params = {
    "features": list_of(COLUMN_NAME, MAX_FEATURES, least=1),
    "k": integer(1, MAX_CLUSTERS),
}
#: The coordinator's working units (each checked against the features at the site).
UNITS: Params = {
    "shift": vector(MAX_FEATURES, 1),
    "scale": vector(MAX_FEATURES, 1),
    "standardize": (BOOL, NONE),
}
CENTRES = matrix(MAX_CLUSTERS * MAX_FEATURES, empty=True)
#: A k-means++ round's request.
CANDIDATES: Params = {
    **FEATURES,
    **UNITS,
    "centers": CENTRES,
    "n_candidates": integer(1, 1000),
    "seed": integer(0, 2**63 - 1),
    "round": integer(0, 10 * MAX_CLUSTERS),
}


def _per_site(run: SiteFn) -> SiteFn:
    """A per-site k-means step, refused at a site that releases pooled only (its own sums and
    D² masses, against the pooled totals, would give the other sites'; and whether it sits out
    would say how few patients it has)."""

    def step(data: SiteData, params: Payload) -> Payload:
        data.per_site_table("k-means sums")
        return run(data, params)

    step.__doc__ = run.__doc__
    return step


STEPS = [
    SiteStep(name, "kmeans", _per_site(fn), _kmeans_columns, params)
    for name, fn, params in (
        ("kmeans_stats", site_kmeans_stats, FEATURES),
        ("kmeans_candidates", site_kmeans_candidates, CANDIDATES),
        (
            "kmeans_potential",
            site_kmeans_potential,
            {**FEATURES, **UNITS, "centers": CENTRES, "candidates": CENTRES},
        ),
        (
            "kmeans_step",
            site_kmeans_step,
            {**FEATURES, **UNITS, "centers": CENTRES, "moments": (BOOL, NONE)},
        ),
        (
            "kmeans_assign",
            site_kmeans_assign,
            {**FEATURES, **UNITS, "centers": CENTRES, "source": (text(80), NONE)},
        ),
    )
] + [SiteStep("kmeans_clear", "kmeans", site_kmeans_clear, lambda params: [], {}, dp_free=True)]

#: The pooled rounds (secure sums only): the candidates of k-means++ stay per site.
CLUSTER_SUMS = {"counts": "count", "inertia": "real", "sat_out": "count"}
STEPS += [
    SiteStep(
        "kmeans_pool_stats",
        "kmeans",
        site_kmeans_pool_stats,
        _kmeans_columns,
        FEATURES,
        sums={"n": "count", "sum": "real", "sumsq": "real", "sat_out": "count"},
    ),
    SiteStep(
        "kmeans_pool_potential",
        "kmeans",
        site_kmeans_pool_potential,
        _kmeans_columns,
        {**FEATURES, **UNITS, "centers": CENTRES, "candidates": CENTRES},
        sums={"potential": "real"},
    ),
    SiteStep(
        "kmeans_pool_step",
        "kmeans",
        site_kmeans_pool_step,
        _kmeans_columns,
        {**FEATURES, **UNITS, "centers": CENTRES},
        sums={**CLUSTER_SUMS, "sums": "real"},
    ),
    SiteStep(
        "kmeans_pool_assign",
        "kmeans",
        site_kmeans_pool_assign,
        _kmeans_columns,
        {**FEATURES, **UNITS, "centers": CENTRES, "source": (text(80), NONE)},
        sums=CLUSTER_SUMS,
    ),
]
STEPS += DP_STEPS  # DP mode (kmeans/site_dp.py)
