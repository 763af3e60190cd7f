"""Attacks on the pooled k-means (secure sums per round: kmeans/site.py).

Every Lloyd round, the final labels, the moments and k-means++'s potentials are totals over the
sites: each site's share is its clusters of whole micro-clusters (k..2k-1 similar patients), so
no total counts 1..k-1 patients and no difference of two totals of a site is one patient's row.
A site with too few patients for the clusters sits out (zeros, no refusal); the start is
chosen from public candidates by pooled potentials (nothing per site).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cluster_sums import released_cluster_sums

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError

K = 5
SECRET = 123.456789
FEATURES = ["age", "marker"]
SIZES = {"big": 400, "mid": 150, "small": 60}


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    return pd.DataFrame(
        {
            "age": (rng.normal(60, 8, n) + 5 * group).round(3),
            "marker": (rng.normal(40, 6, n) + 25 * group).round(3),
        }
    )


@pytest.fixture
def fed():
    tables = {s: cohort(i, n) for i, (s, n) in enumerate(SIZES.items())}
    tables["big"].loc[17, FEATURES] = [71.3, SECRET]
    with fh.Federation.local({s: {"c": t} for s, t in tables.items()}) as f:
        yield f


def params(centers: np.ndarray, k: int) -> dict:
    return {
        "features": FEATURES,
        "k": k,
        "shift": [0.0, 0.0],
        "scale": [1.0, 1.0],
        "standardize": False,
        "centers": centers,
    }


def test_no_site_clusters_in_the_clear_and_every_total_is_zero_or_at_least_k(fed, releases, totals):
    km = fed.kmeans("c", FEATURES, 3, seed=1)
    pooled = [r for r in releases if r.payload and "secure" in r.payload]
    assert pooled and all(set(r.payload) == {"secure"} for r in pooled)
    assert not [r for r in releases if r.payload and "counts" in r.payload]
    rounds = [t for step, t in totals if step in ("kmeans_pool_step", "kmeans_pool_assign")]
    assert len(rounds) == km.n_iter + 1
    for total in rounds:
        counts = np.asarray(total.totals["counts"])
        assert ((counts == 0) | (counts >= K)).all()
    assert km.by_site.empty and str(SECRET) not in repr([r.payload for r in releases])


def test_centres_aimed_at_one_patient_give_no_total_of_their_row(fed, totals):
    """A coordinator's own centres, nudged across the patient: every total moves by whole
    micro-clusters, so no total and no difference of two is the patient's row."""
    target = np.array([71.3, SECRET])
    far = np.array([[0.0, 0.0], [200.0, 0.0]])
    rounds = []
    for step in np.linspace(0.0, 30.0, 41):
        for direction in ([1.0, 0.0], [0.0, 1.0]):
            q = Query(fed.coordinator, "kmeans", "c", who="mallory")
            centre = target + step * np.asarray(direction)
            total = q.ask_sum("kmeans_pool_step", params(np.vstack([centre, far]), 3)).totals
            rounds.append((total["counts"], total["sums"]))
    seen = released_cluster_sums(rounds, target, K)
    assert len(seen) > 5  # the nudges did move patients between clusters


def test_a_site_with_too_few_patients_sits_out_without_a_refusal(fed):
    km = fed.kmeans("c", FEATURES, 8, seed=0)  # small: 60 rows, 8 clusters need 80
    assert {o.status for o in km.privacy.outcomes} == {"released"}
    assert any("1 site(s) had too few patients" in n for n in km.notes)
    assert km.cluster_sizes.sum() == SIZES["big"] + SIZES["mid"]


def test_a_filter_down_to_a_few_patients_meets_no_refusal(fed):
    with pytest.raises(fh.ParameterError, match="no site has enough patients"):
        fed.kmeans("c", FEATURES, 2, where="age > 95")
    log = fed.audit_log()
    assert (log["outcome"] != "refused").all()


def test_pooled_rounds_are_never_answered_in_the_clear(fed):
    for step in ("kmeans_pool_step", "kmeans_pool_assign"):
        with pytest.raises(FedHemError):
            Query(fed.coordinator, "kmeans", "c", who="mallory").ask(
                step, params(np.zeros((2, 2)), 2)
            )


def test_nothing_per_site_says_which_site_has_no_one_in_the_cohort(fed, releases):
    """A filter that leaves one site without patients: every reply of a pooled k-means is a
    masked share (no per-site candidates or D² masses, which once said mass 0 for that site),
    and a hand-made per-site k-means step is refused at sites in secure sums."""
    res = fed.kmeans("c", FEATURES, 3, where="age > 75")
    assert res.n_iter > 0
    answered = [r for r in releases if r.payload]
    assert any("secure" in r.payload for r in answered)
    assert not any({"candidates", "mass", "counts", "sums"} & set(r.payload) for r in answered)
    q = Query(fed.coordinator, "kmeans", "c", who="mallory")
    params = {"features": FEATURES, "k": 3}
    with pytest.raises(FedHemError) as info:
        q.ask("kmeans_stats", params)
    assert "pooled_only" in info.value.rule
