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

- the features are numeric; rows with a missing feature are left out (a row set snapped to the
  release ledger, as Cox's); a feature on which all but 1..k-1 patients share one value is refused
  (``min_cell_count``: the one-hot attack, those patients' values would show in the sums);
- ``max_clusters``: ``n_clusters <= n / (2 k)`` for the site's n patients with every feature;
- micro-clusters: the site first groups its patients into micro-clusters of k..2k-1 similar
  patients (a k-d split down to cells of 128..256 rows, then MDAV microaggregation in each; built
  from the site's own rows only, inside each atom of its release ledger, kept at the site for later
  rounds and queries while they still lie inside one atom). Patients are assigned to centres a
  micro-cluster at a time (by its mean), so every released count, sum and inertia is over whole
  micro-clusters: no cluster holds 1..k-1 of a site's patients, and every cluster cuts each atom of
  the ledger into pieces of >= k, however the centres are chosen (Lloyd moving one patient between
  rounds, or hand-crafted centres). The finest thing the coordinator can learn is a micro-cluster's
  size, mean and within sum of squares (microaggregation, a standard disclosure-control method).
  The inertia reported is that of this assignment;
- the release ledger: every released cluster (each round's, and each k-means++ candidate's
  micro-cluster) is a row set that refines the ledger's atoms (:mod:`fedhem_kernel.privacy.ledger`),
  so no combination with cohorts, groups or other runs isolates fewer than k patients; since
  clusters are unions of micro-clusters inside atoms the ledger never moves a patient (checked);
- a cluster with 1..k-1 patients at a site (not possible with micro-clusters; checked anyway) is
  withheld: no count, no sums, its centre pooled from the other sites, and the result says so;
- the stored ``cluster`` column labels only clusters the site released in the final round, so later
  grouped queries run on row sets released here.

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

from fedhem_kernel.protocol.params import BOOL, COLUMNS, Params, integer, matrix, number, options

COLUMN = "cluster"


MAX_CLUSTERS = 1000
#: What a site did with a cluster in a round (its reply says so per cluster).
RELEASED, WITHHELD, HELD = "released", "withheld", "held"

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "features": (COLUMNS,),
    "k": (integer(1, MAX_CLUSTERS),),
    "init": (options("k-means++"), matrix()),
    "standardize": (BOOL,),
    "seed": (integer(0, 2**63 - 1),),
    "max_iter": (integer(1, 10_000),),
    "tol": (number(0),),
}


# DP mode (kmeans/site_dp.py, combine_dp.py): fields per patient of each release
def stats_fields(p: int) -> int:
    """Fields per patient of the statistics release: the count, Σt and Σ(2t-1)² per feature."""
    return 1 + 2 * p


def step_fields(p: int) -> int:
    """Fields per patient of a Lloyd round: its cluster's count and Σt (one cluster each)."""
    return 1 + p
