"""Adversarial checks of federated k-means under the default policy (k = 5).

A spy records every reply that crosses from a site. Tiny clusters, too many clusters, a filter down to
a few patients, hand-crafted centres aimed at one patient and a cohort built to difference a released
cluster are refused or come back as sums over whole micro-clusters; k-means++ candidates are never one
patient's row; no message carries a patient's value.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sites import site_audit, sites_of

import fedhem_kernel as fh
from fedhem_kernel.analyses.common.site_features import FeatureMatrix
from fedhem_kernel.analyses.kmeans import HELD, RELEASED, WITHHELD
from fedhem_kernel.analyses.kmeans.site import gate_clusters
from fedhem_kernel.privacy.guard import DifferencingGuard, Unions
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.messages import SiteRequest
from fedhem_kernel.protocol.report import ReleaseLog
from fedhem_kernel.site.schema import ColumnSpec, DatasetSchema
from fedhem_kernel.site.steps import SiteData

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


def federation(tables: dict[str, pd.DataFrame]) -> fh.Federation:
    return fh.Federation.local({s: {"c": df} for s, df in tables.items()}, policy=fh.Policy())


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
    released = set()
    for payload in big:
        for c, s in zip(payload["counts"], payload["sums"], strict=True):
            if c:
                assert c >= K and not np.allclose(s / c, target, atol=1e-3)
                released.add((int(c), tuple(np.round(s, 9))))
    assert len(released) > 5  # the nudges did move patients between clusters
    # every released sum is over whole micro-clusters: no difference of two is the patient's row
    for (c1, s1), (c2, s2) in itertools.combinations(sorted(released), 2):
        if c1 != c2:
            diff = (np.asarray(s2) - np.asarray(s1)) / (c2 - c1)
            assert not np.allclose(diff, target, atol=1e-3)
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


def test_a_filter_down_to_a_few_patients_is_refused(tables, releases):
    for i, df in enumerate(tables.values()):
        df.loc[:2, "age"] = 120.0 + i  # three very old patients per site
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.kmeans("c", FEATURES, 1, where="age > 110")
        assert "min_subset_size" in info.value.rule
        assert not list(kmeans_payloads(releases, "mean"))
        with pytest.raises(fh.DisclosureError):  # nor everyone but them
            fed.kmeans("c", FEATURES, 2, where="age <= 110")
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
        assert "min_subset_size" in info.value.rule
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


def test_a_cohort_that_differences_a_released_cluster_is_refused(tables):
    with federation(tables) as fed:
        fed.kmeans("c", FEATURES, 3)
        frame = sites_of(fed)["big"].datasets["c"].frame
        outside = frame.loc[frame["cluster"] != "1", "pid"].astype(int).tolist()[:2]
        where = f"cluster == '1' or pid in ({outside[0]}, {outside[1]})"
        res = fed.describe("c", ["age"], where=where)
    outcome = res.privacy.outcome("big")
    assert outcome.status == "refused" and outcome.rules == ("differencing",)
    assert res.privacy.outcome("mid").released  # there the cohort is exactly cluster 1


def site_data(n: int, guard: DifferencingGuard | None) -> tuple[SiteData, FeatureMatrix]:
    schema = DatasetSchema("s", "d", {"x": ColumnSpec("x", "float")})
    frame = pd.DataFrame({"x": np.arange(n, dtype=float)})
    data = SiteData("s", "d", frame, schema, Policy(), ReleaseLog(), guard=guard, n_rows=n)
    fm = FeatureMatrix(("x",), frame.to_numpy(), np.ones(n, dtype=bool), 0)
    return data, fm


def test_gate_withholds_small_clusters_and_protects_their_complement():
    data, fm = site_data(53, DifferencingGuard())
    labels = np.repeat([0, 1, 2], [3, 20, 30])
    status = gate_clusters(data, fm, labels, np.bincount(labels))
    # 3 patients: withheld; then the site's total minus cluster 2 would give them away, so the
    # smallest other cluster is held as well (23 patients not released)
    assert status == [WITHHELD, HELD, RELEASED]
    assert {d.rule for d in data.log.suppressions} == {"min_cell_count", "differencing"}


def test_gate_holds_a_cluster_close_to_an_earlier_release():
    guard = DifferencingGuard()
    data, fm = site_data(60, guard)
    labels = np.repeat([0, 1], [30, 30])
    earlier = np.zeros(60, dtype=bool)
    earlier[:28] = True  # an earlier release covered cluster 0 but two patients
    guard.remember("d", earlier)
    status = gate_clusters(data, fm, labels, np.bincount(labels))
    # cluster 0 differs by 2: held; cluster 1 alone would then expose it (complement): held too
    assert status == [HELD, HELD]
    again = gate_clusters(data, fm, labels, np.bincount(labels))
    assert again == [HELD, HELD]
    unrelated = np.repeat([0, 1], [10, 50])
    assert gate_clusters(data, fm, unrelated, np.bincount(unrelated)) == [RELEASED, RELEASED]


# -- the guard's memory of unions of micro-clusters ---------------------------------------------------
def plain_near(stored: list[np.ndarray], mask: np.ndarray, k: int) -> bool:
    """SiteData.near_released on plain row masks: equal to none, and 1..k-1 from one."""
    diffs = [int((s ^ mask).sum()) for s in stored]
    return 0 not in diffs and any(0 < d < k for d in diffs)


def random_partition(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Row -> group (-1 for rows in none): groups of size..2*size-1 over a random subset."""
    rows = rng.permutation(n)[: int(n * 0.9)]
    group = np.full(n, -1)
    cuts = np.arange(0, len(rows) - 2 * size + 1, size)
    for g, start in enumerate(cuts):
        end = len(rows) if g == len(cuts) - 1 else start + size
        group[rows[start:end]] = g
    return group


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [K, 2])  # groups of >= k rows (the usual case), or smaller
def test_guard_unions_of_micro_clusters_are_checked_as_plain_row_sets(seed, size):
    """Every answer of the group-space guard equals the plain guard on the same row sets."""
    rng = np.random.default_rng(seed)
    n = 120
    guard = DifferencingGuard()
    stored: list[np.ndarray] = []  # every remembered row set, as rows
    parts = [guard.partition("d", random_partition(rng, n, size)) for _ in range(2)]
    some = {}  # per partition: a union remembered only with a few rows outside the partition
    for part in parts:
        # plain row sets remembered: the whole partition (aligned with its groups), a union of
        # groups plus 1..k-1 rows outside the partition (aligned), ones a few rows off a union
        # and off the whole partition, random ones
        inside = part.group >= 0
        outside = np.flatnonzero(~inside)[: rng.integers(1, K)]
        some[part.key] = rng.random(part.n_groups) < 0.5
        plus = part.rows(np.packbits(some[part.key]))
        plus[outside] = True
        near = part.rows(np.packbits(rng.random(part.n_groups) < 0.5))
        near[np.flatnonzero(near)[: rng.integers(1, K)]] = False
        near_all = inside.copy()
        near_all[np.flatnonzero(inside)[: rng.integers(1, K)]] = False
        for mask in (inside, plus, near, near_all, rng.random(n) < 0.5):
            guard.remember("d", mask)
            stored.append(mask)
    for i in range(30):
        part = parts[rng.integers(len(parts))]
        if i % 10 == 9 and part.sets:  # remembered later: a row set 1 row off a released union
            off = part.rows(next(iter(part.sets.values())))
            off[rng.integers(n)] ^= True
            guard.remember("d", off)
            stored.append(off)
        members = rng.random((6, part.n_groups)) < rng.uniform(0.05, 0.95)
        members[2] = some[part.key]  # differs from a remembered set by its rows outside
        members[3] = True  # equals a remembered set (and is near another one)
        if part.sets and (i % 10 == 9 or rng.random() < 0.3):  # a remembered union, one off
            members[0] = np.unpackbits(next(iter(part.sets.values())), count=part.n_groups) > 0
            members[1] = members[0]
            members[1, rng.integers(part.n_groups)] ^= True
        unions = Unions.of(part, members)
        rows = [np.concatenate([m, [False]])[part.group] for m in members]
        expected = [plain_near(stored, r, K) for r in rows]
        assert guard.near_unions("d", unions, K).tolist() == expected
        for r in rows:  # a plain cohort against the remembered unions: exact too
            diffs = [int((s ^ r).sum()) for s in stored]
            nonzero = [d for d in diffs if d]
            assert guard.closest_difference("d", r) == (min(nonzero) if nonzero else None)
            assert guard.contains("d", r) == (0 in diffs)
        keep = [j for j in range(len(members)) if not expected[j]]
        guard.remember_unions("d", Unions.of(part, members[keep]))
        stored += [rows[j] for j in keep if not any((s == rows[j]).all() for s in stored)]
    assert len(stored) > 40  # unions were released along the way


def test_the_guard_version_grows_with_every_new_row_set_and_only_then():
    # the site keeps a checked cohort while the version stays the same (SiteExecutor._cohort_mask):
    # a row set remembered without a new version would let a stale check through
    rng = np.random.default_rng(3)
    guard = DifferencingGuard()
    mask = rng.random(60) < 0.5
    guard.remember("d", mask)
    assert guard.version == 1
    guard.remember("d", mask.copy())  # the same rows again: nothing new
    assert guard.version == 1
    part = guard.partition("d", random_partition(rng, 60, 6))
    members = rng.random((3, part.n_groups)) < 0.5
    guard.remember_unions("d", Unions.of(part, members))
    assert guard.version == 1 + len(set(Unions.of(part, members).digests))
    before = guard.version
    guard.remember_unions("d", Unions.of(part, members))
    assert guard.version == before
    members[0] = ~members[0]
    guard.remember_unions("d", Unions.of(part, members))
    assert guard.version == before + 1


def test_a_cluster_near_an_earlier_release_is_held_under_micro_clusters(tables, releases):
    """The micro-cluster path of the gate: a cluster 2 patients off a remembered row set is held."""
    init = np.array([[50.0, 30.0], [65.0, 70.0], [75.0, 100.0]])
    with federation(tables) as fed:  # where the clusters fall (micro-clusters are deterministic)
        first = fed.kmeans("c", FEATURES, 3, init=init, standardize=False)
        labels = sites_of(fed)["big"].datasets["c"].frame["cluster"].to_numpy()
    assert (first.by_site["status"] == RELEASED).all()
    earlier = labels == "2"
    earlier[np.flatnonzero(~earlier)[:2]] = True  # released before: cluster 2 and 2 patients more
    with federation(tables) as fed:
        sites_of(fed)["big"].guard.remember("c", earlier)
        again = fed.kmeans("c", FEATURES, 3, init=init, standardize=False)
    status = again.by_site.set_index(["site", "cluster"])["status"]
    assert status["big", "2"] == HELD
    # cluster 2 held alone would let the site's total minus the others give it away: one more
    assert (status["big"] == HELD).sum() == 2
    assert (status[["mid", "small"]] == RELEASED).all()
    assert "differencing" in again.privacy.outcome("big").rules
    assert again.cluster_sizes.sum() < first.cluster_sizes.sum()
    assert_counts_zero_or_at_least_k(releases)


def test_rows_left_out_cannot_difference_an_earlier_release(tables) -> None:
    """62 complete patients at 'small' next to a released cohort of 60 would give away two
    patients' values: the site refuses (rows left out for missing values are a new row set)."""
    tables["small"] = pd.concat(
        [tables["small"], cohort(7, 10, 2900).assign(marker=np.nan)], ignore_index=True
    )
    tables["small"].loc[60:61, "marker"] = 50.0  # two of the ten new patients are complete
    fed = federation(tables)
    fed.describe("c", columns=["age"], where="pid < 2900")  # releases the first 60 at 'small'
    res = fed.kmeans("c", FEATURES, 2)
    outcome = res.privacy.outcome("small")
    assert outcome.status == "refused" and outcome.rules == ("differencing",)
    fed.close()
