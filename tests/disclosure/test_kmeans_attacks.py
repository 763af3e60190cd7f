"""Adversarial checks of federated k-means under the default policy (k = 5).

A spy records every reply that crosses from a site. Tiny clusters, too many clusters and
hand-crafted centres aimed at one patient are refused or come back as sums over whole
micro-clusters; a filter down to a few patients, and a cohort built to difference a released
cluster, are answered on the release ledger's rows (none, or the cluster's); k-means++ candidates
are never one patient's row; no message carries a patient's value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cluster_sums import released_cluster_sums
from conftest import without_secure_sums
from sites import site_audit, sites_of

import fedhem_kernel as fh
from fedhem_kernel.analyses.kmeans import RELEASED
from fedhem_kernel.protocol.messages import SiteRequest

K = 5
SECRET = 123.456789  # one patient's marker value: finding it anywhere is a leak
SIZES = {"big": 400, "mid": 150, "small": 60}
FEATURES = ["age", "marker"]


def cohort(seed: int, n: int, first_pid: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    return pd.DataFrame(
        {
            "pid": np.arange(first_pid, first_pid + n),
            "age": (rng.normal(60, 8, n) + 5 * group).round(3),
            "marker": (rng.normal(40, 6, n) + 25 * group).round(3),
        }
    )


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    out = {s: cohort(i, n, 1000 * i) for i, (s, n) in enumerate(SIZES.items())}
    out["big"].loc[17, ["age", "marker"]] = [71.3, SECRET]
    return out


def federation(tables: dict[str, pd.DataFrame], secure: bool = False) -> fh.Federation:
    """The sites; by default outside secure sums (the per-site protocol these attacks are on;
    the pooled run's are in test_pooled_kmeans_attacks.py)."""
    datasets = {s: {"c": df} for s, df in tables.items()}
    if not secure:
        return without_secure_sums(datasets, fh.Policy())
    return fh.Federation.local(datasets, policy=fh.Policy())


def kmeans_payloads(releases, key: str = "counts"):
    for reply in releases:
        if reply.payload and key in reply.payload:
            yield reply.site, reply.payload


def assert_no_value_leaks(fed: fh.Federation, releases, message: str = "") -> None:
    texts = [message, *(repr(r) for r in releases), site_audit(fed).to_json()]
    for text in texts:
        assert str(SECRET) not in text and "123.45" not in text


def assert_counts_zero_or_at_least_k(releases) -> int:
    checked = 0
    for site, payload in kmeans_payloads(releases):
        counts = np.asarray(payload["counts"])
        status = list(payload["status"])
        for count, st in zip(counts, status, strict=True):
            assert count == 0 or count >= K, site
            if st != RELEASED:
                assert count == 0  # a withheld or held cluster sends nothing
        checked += len(counts)
    return checked


def test_every_released_count_is_zero_or_at_least_k(tables, releases):
    with federation(tables) as fed:
        fed.kmeans("c", FEATURES, 3)
        fed.kmeans("c", FEATURES, 4, seed=3, standardize=False)
        assert_no_value_leaks(fed, releases)
    assert assert_counts_zero_or_at_least_k(releases) > 50


def test_a_tiny_cluster_is_not_released(tables, releases):
    outliers = {}
    for i, df in enumerate(tables.values()):
        df.loc[:2, ["age", "marker"]] = [[150.0 + i, 400.0], [151.5 + i, 410.0], [152.0 + i, 405.0]]
        outliers[i] = df.loc[:2, ["age", "marker"]].to_numpy()
    with federation(tables) as fed:
        res = fed.kmeans("c", FEATURES, 4)
        # hand-crafted: a centre on the outliers of each site, the others far away
        for block in outliers.values():
            centres = np.vstack([block.mean(axis=0), [[0.0, 0.0], [60.0, 40.0], [70.0, 90.0]]])
            fed.coordinator.send(SiteRequest("kmeans_step", "c", raw_params(centres, 4)))
    assert assert_counts_zero_or_at_least_k(releases) > 20
    sizes = res.by_site["size"].dropna()
    assert ((sizes == 0) | (sizes >= K)).all()
    centres = res.cluster_centers.to_numpy()
    every = np.vstack(list(outliers.values()))
    for block in [*outliers.values(), every]:  # no centre is the mean of the outliers alone
        assert not np.isclose(centres, block.mean(axis=0)).all(axis=1).any()
    for _, payload in kmeans_payloads(releases, "sums"):
        counts = np.asarray(payload["counts"])
        means = np.asarray(payload["sums"])[counts > 0] / counts[counts > 0, None]
        for block in outliers.values():
            assert not np.isclose(means, block.mean(axis=0)).all(axis=1).any()


def raw_params(centres: np.ndarray, k: int) -> dict:
    """A hand-crafted request in original units (no centring, no scaling)."""
    return {
        "features": FEATURES,
        "k": k,
        "shift": np.zeros(2),
        "scale": np.ones(2),
        "standardize": False,
        "centers": np.asarray(centres, dtype=float),
    }


def test_centres_aimed_at_one_patient_cannot_extract_their_row(tables, releases):
    target = np.array([71.3, SECRET])
    far = np.array([[0.0, 0.0], [200.0, 0.0]])
    with federation(tables) as fed:
        fed.kmeans("c", FEATURES, 3, standardize=False)  # a normal run first
        # 1. a centre exactly on the patient's row, then nudged so that rows cross one at a time
        for step in np.linspace(0.0, 30.0, 121):
            for direction in ([1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]):
                centre = target + step * np.asarray(direction)
                fed.coordinator.send(
                    SiteRequest("kmeans_step", "c", raw_params(np.vstack([centre, far]), 3))
                )
        # 2. the final-labels step and a k-means++ round aimed the same way
        fed.coordinator.send(
            SiteRequest("kmeans_assign", "c", raw_params(np.vstack([target, far]), 3))
        )
        fed.coordinator.send(
            SiteRequest(
                "kmeans_candidates",
                "c",
                {
                    **raw_params(np.vstack([target, far[:1]]), 3),
                    "n_candidates": 20,
                    "seed": 0,
                    "round": 2,
                },
            )
        )
        assert_no_value_leaks(fed, releases)
    big = [p for site, p in kmeans_payloads(releases, "sums") if site == "big"]
    assert len(big) > 300
    # every released sum is over whole micro-clusters: no difference of two is the patient's row
    released = released_cluster_sums(((p["counts"], p["sums"]) for p in big), target, K)
    assert len(released) > 5  # the nudges did move patients between clusters
    for _, payload in kmeans_payloads(releases, "candidates"):
        for cand in np.asarray(payload["candidates"]).reshape(-1, 2):
            assert not np.allclose(cand, target, atol=1e-3)


def test_k_near_the_number_of_patients_is_refused(tables, releases):
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.kmeans("c", FEATURES, 50)  # 500 patients per site needed
        assert "max_clusters" in info.value.rule
        assert not list(kmeans_payloads(releases, "mean"))
        res = fed.kmeans("c", FEATURES, 10)  # 100 patients needed: the small site refuses
        outcome = res.privacy.outcome("small")
        assert outcome.status == "refused" and outcome.rules == ("max_clusters",)
        assert "10 clusters" in outcome.details[0]
        assert res.privacy.released_sites == ["big", "mid"]
        assert_no_value_leaks(fed, releases, str(info.value))


def test_a_filter_down_to_a_few_patients_has_no_patients(tables, releases):
    for i, df in enumerate(tables.values()):
        df.loc[:2, "age"] = 120.0 + i  # three very old patients per site
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.kmeans("c", FEATURES, 1, where="age > 110")
        assert "ledger" in info.value.rule
        assert not list(kmeans_payloads(releases, "mean"))
        # everyone but them is clustered as everyone: nothing to compare
        but_them = fed.kmeans("c", FEATURES, 2, where="age <= 110", seed=1)
        everyone = fed.kmeans("c", FEATURES, 2, seed=1)
        pd.testing.assert_frame_equal(but_them.cluster_centers, everyone.cluster_centers)
        assert_no_value_leaks(fed, releases, str(info.value))


def test_the_first_round_that_brings_the_moments_is_refused_on_a_few_patients(tables, releases):
    """With given centres and standardize=False the first Lloyd round carries the moments that
    the statistics round would: a filter down to three patients gets neither."""
    for i, df in enumerate(tables.values()):
        df.loc[:2, "age"] = 120.0 + i
    init = np.array([[60.0, 40.0], [65.0, 90.0]])
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.kmeans("c", FEATURES, 2, init=init, standardize=False, where="age > 110")
        assert "ledger" in info.value.rule
        assert not list(kmeans_payloads(releases, "moments"))
        res = fed.kmeans("c", FEATURES, 2, init=init, standardize=False)
        sent = [p["moments"] for _, p in kmeans_payloads(releases, "moments")]
        assert len(sent) == len(SIZES)  # the first round only, one per site
        assert sorted(int(m["n"]) for m in sent) == sorted(len(df) for df in tables.values())
        assert res.n_observations == sum(len(df) for df in tables.values())
        assert_no_value_leaks(fed, releases, str(info.value))


def test_kmeans_plus_plus_candidates_are_never_one_patients_row(tables, releases):
    with federation(tables) as fed:
        res = fed.kmeans("c", FEATURES, 4, seed=7)
    candidates = list(kmeans_payloads(releases, "candidates"))
    assert len(candidates) >= 4 * len(SIZES)
    scale, mean = res.scale.to_numpy(), res.mean.to_numpy()
    n_candidates = 0
    for site, payload in candidates:
        rows = tables[site][FEATURES].to_numpy()
        for cand in np.asarray(payload["candidates"]).reshape(-1, 2):
            original = cand * scale + mean
            nearest = np.sort(np.abs(rows - original).sum(axis=1))
            assert nearest[0] > 1e-6  # not any patient's row
            n_candidates += 1
    assert n_candidates >= 4 * len(SIZES)


def test_a_cohort_a_few_patients_away_from_a_released_cluster_is_answered_on_it(tables):
    with federation(tables) as fed:
        fed.kmeans("c", FEATURES, 3)
        frame = sites_of(fed)["big"].datasets["c"].frame
        outside = frame.loc[frame["cluster"] != "1", "pid"].astype(int).tolist()[:2]
        where = f"cluster == '1' or pid in ({outside[0]}, {outside[1]})"
        res = fed.describe("c", ["age"], where=where)
    assert res.privacy.outcome("big").released
    by_site = res.by_site.set_index("site")
    assert by_site.loc["big", "count"] == (frame["cluster"] == "1").sum()


def ledger_atoms(fed, site: str) -> np.ndarray:
    return sites_of(fed)[site].ledgers["c"].atoms


def test_clusters_refine_the_ledger_into_atoms_of_at_least_k(tables, releases):
    """Every released cluster (each round's) and k-means++ candidate is a row set in the ledger:
    afterwards each site's atoms are >= k and its cluster column is a union of atoms."""
    with federation(tables) as fed:
        fed.describe("c", ["age"], where="age > 60")
        fed.kmeans("c", FEATURES, 4, seed=3)
        for site in SIZES:
            atoms = ledger_atoms(fed, site)
            sizes = np.bincount(atoms)
            assert (sizes[sizes > 0] >= K).all(), site
            cluster = sites_of(fed)[site].datasets["c"].frame["cluster"].to_numpy()
            for name in set(cluster) - {None}:
                inside = np.unique(atoms[cluster == name])
                assert np.isin(atoms, inside).sum() == (cluster == name).sum(), (site, name)
    assert_counts_zero_or_at_least_k(releases)


def test_an_earlier_release_a_few_patients_off_a_cluster_cannot_difference_it(tables, releases):
    """A row set released before k-means (a cluster's patients and two more) and the clusters
    k-means releases afterwards never differ by 1..k-1 patients: the micro-clusters are built
    inside the ledger's atoms."""
    init = np.array([[50.0, 30.0], [65.0, 70.0], [75.0, 100.0]])
    with federation(tables) as fed:  # where the clusters fall (micro-clusters are deterministic)
        fed.kmeans("c", FEATURES, 3, init=init, standardize=False)
        frame = sites_of(fed)["big"].datasets["c"].frame
        labels, pids = frame["cluster"].to_numpy(), frame["pid"].to_numpy()
    earlier = labels == "2"
    earlier[np.flatnonzero(~earlier)[:2]] = True  # cluster 2 and 2 patients more
    chosen = ", ".join(str(int(p)) for p in pids[earlier])
    with federation(tables) as fed:
        fed.describe("c", ["age"], where=f"pid in ({chosen})")
        released = sites_of(fed)["big"]._masks["c"][f"pid in ({chosen})"]
        again = fed.kmeans("c", FEATURES, 3, init=init, standardize=False)
        cluster = sites_of(fed)["big"].datasets["c"].frame["cluster"].to_numpy()
    for name in ("1", "2", "3"):
        moved = int(((cluster == name) != released).sum())
        assert moved == 0 or moved >= K, name
    assert (again.by_site["status"] == RELEASED).all()
    assert_counts_zero_or_at_least_k(releases)


def test_rows_left_out_cannot_difference_an_earlier_release(tables) -> None:
    """62 complete patients at 'small' next to a released cohort of 60 would give away two
    patients' values: the two join the eight left out with them (their atom), and the fit is over
    the released 60."""
    tables["small"] = pd.concat(
        [tables["small"], cohort(7, 10, 2900).assign(marker=np.nan)], ignore_index=True
    )
    tables["small"].loc[60:61, "marker"] = 50.0  # two of the ten new patients are complete
    fed = federation(tables)
    fed.describe("c", columns=["age"], where="pid < 2900")  # releases the first 60 at 'small'
    res = fed.kmeans("c", FEATURES, 2)
    assert res.privacy.outcome("small").released
    assert res.n_observations == SIZES["big"] + SIZES["mid"] + 60
    fed.close()
