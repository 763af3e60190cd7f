"""Federated k-means against scikit-learn on public data split into sites, and the ``cluster`` column.

Under ``Policy.unrestricted()`` with start centres given, the federated Lloyd iterations must equal
scikit-learn's ``KMeans(init=..., n_init=1, algorithm="lloyd")`` on the pooled rows: centres, inertia
and the number of iterations. The federated k-means++ start must give a clustering as good as
scikit-learn's best of 10 and the same one for the same seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import split_rows
from flwr.app import Message
from sites import sites_of
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.preprocessing import StandardScaler

import fedhem_kernel as fh
from fedhem_kernel.analyses.common.site_features import _singles_out
from fedhem_kernel.analyses.kmeans.result import KMeansResult
from fedhem_kernel.analyses.kmeans.site import _clusters
from fedhem_kernel.analyses.kmeans.site_micro import Atoms, micro_clusters
from fedhem_kernel.protocol import codec
from fedhem_kernel.protocol.wire import ensure_task_identity, wire_copy

LOADERS = {"iris": (load_iris, 3), "wine": (load_wine, 3), "breast_cancer": (load_breast_cancer, 2)}


def public_table(name: str) -> pd.DataFrame:
    df = LOADERS[name][0](as_frame=True).data
    df.columns = [f"f{i}" for i in range(df.shape[1])]
    return df


def federation(df: pd.DataFrame, policy: fh.Policy | None = None) -> fh.Federation:
    sites = split_rows(df, 3)
    return fh.Federation.local(
        {s: {"d": part} for s, part in sites.items()},
        policy=policy or fh.Policy.unrestricted(),
    )


def pooled(df: pd.DataFrame) -> np.ndarray:
    """The rows in the order the sites hold them (sums are order-independent to ~1e-15)."""
    return pd.concat(split_rows(df, 3).values()).to_numpy(dtype=float)


def start_centres(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    return x[np.random.default_rng(seed).choice(len(x), k, replace=False)]


def assert_same_as_sklearn(res: KMeansResult, km: KMeans, scale: float) -> None:
    assert res.n_iter == km.n_iter_
    np.testing.assert_allclose(
        res.cluster_centers.to_numpy(), km.cluster_centers_, rtol=0, atol=1e-9 * scale
    )
    assert res.inertia == pytest.approx(km.inertia_, rel=1e-9)
    np.testing.assert_array_equal(
        res.cluster_sizes.to_numpy(), np.bincount(km.labels_, minlength=len(km.cluster_centers_))
    )


@pytest.mark.parametrize("name", list(LOADERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_lloyd_equals_sklearn_with_given_start_centres(name, seed):
    df = public_table(name)
    x = pooled(df)
    k = LOADERS[name][1] + 1
    init = start_centres(x, k, seed)
    with federation(df) as fed:
        res = fed.kmeans("d", list(df.columns), k, init=init, standardize=False)
        log = fed.audit_log("site_a")
        steps = log.loc[log["analysis"].str.startswith("kmeans"), "analysis"].tolist()
    km = KMeans(k, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    assert res.converged
    assert_same_as_sklearn(res, km, float(np.abs(x).max()))
    # no statistics round: the first Lloyd round brought the moments (pooled mean, and tol)
    assert steps == ["kmeans_step"] * res.n_iter + ["kmeans_assign"]
    scale = float(np.abs(x).max())
    np.testing.assert_allclose(res.mean.to_numpy(), x.mean(axis=0), rtol=0, atol=1e-12 * scale)
    assert list(res.cluster_centers.columns) == list(df.columns)
    assert res.privacy.released_sites == ["site_a", "site_b", "site_c"]


@pytest.mark.parametrize(("max_iter", "tol"), [(2, 1e-4), (300, 0.0), (300, 1e-2)])
def test_stopping_rules_match_sklearn(max_iter, tol):
    df = public_table("wine")
    x = pooled(df)
    init = start_centres(x, 4, 3)
    with federation(df) as fed:
        res = fed.kmeans(
            "d", list(df.columns), 4, init=init, standardize=False, max_iter=max_iter, tol=tol
        )
    km = KMeans(4, init=init, n_init=1, algorithm="lloyd", max_iter=max_iter, tol=tol).fit(x)
    assert_same_as_sklearn(res, km, float(np.abs(x).max()))
    assert res.converged == (km.n_iter_ < max_iter)
    assert len(res.history) == res.n_iter


def test_standardize_equals_sklearn_on_standard_scaled_rows():
    df = public_table("breast_cancer")
    x = pooled(df)
    scaler = StandardScaler().fit(x)
    init = start_centres(x, 3, 5)  # original units
    with federation(df) as fed:
        res = fed.kmeans("d", list(df.columns), 3, init=init, standardize=True)
    km = KMeans(3, init=scaler.transform(init), n_init=1, algorithm="lloyd").fit(
        scaler.transform(x)
    )
    assert res.n_iter == km.n_iter_
    np.testing.assert_allclose(res.mean.to_numpy(), scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(res.scale.to_numpy(), scaler.scale_, rtol=1e-12)
    centres = scaler.inverse_transform(km.cluster_centers_)
    np.testing.assert_allclose(res.cluster_centers.to_numpy(), centres, rtol=1e-9, atol=1e-9)
    assert res.inertia == pytest.approx(km.inertia_, rel=1e-9)  # in standardised units


def best_of_ten(x: np.ndarray, k: int) -> float:
    return KMeans(k, n_init=10, random_state=0).fit(StandardScaler().fit_transform(x)).inertia_


def pooled_inertia(res: KMeansResult, x: np.ndarray) -> float:
    """Inertia of the result's centres over the pooled rows, each row at its nearest centre."""
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    c = scaler.transform(res.cluster_centers.to_numpy())
    return float(((z[:, None, :] - c[None]) ** 2).sum(axis=2).min(axis=1).sum())


@pytest.mark.parametrize("name", list(LOADERS))
def test_kmeans_plus_plus_is_as_good_as_sklearn_best_of_ten(name):
    df = public_table(name)
    x = pooled(df)
    k = LOADERS[name][1]
    best = best_of_ten(x, k)
    with federation(df) as fed:
        res = fed.kmeans("d", list(df.columns), k, seed=0)
        again = fed.kmeans("d", list(df.columns), k, seed=0)
    assert res.init == "k-means++" and res.converged
    assert res.inertia <= 1.02 * best
    pd.testing.assert_frame_equal(res.cluster_centers, again.cluster_centers)  # deterministic
    assert res.inertia == again.inertia and res.n_iter == again.n_iter


@pytest.mark.parametrize("name", list(LOADERS))
def test_kmeans_plus_plus_under_the_default_policy_finds_the_same_clusters(name):
    """Micro-clusters of 5..9 patients: centres as good as sklearn's (on the pooled rows)."""
    df = public_table(name)
    x = pooled(df)
    k = LOADERS[name][1]
    best = best_of_ten(x, k)
    with federation(df, fh.Policy()) as fed:
        res = fed.kmeans("d", list(df.columns), k, seed=0)
        again = fed.kmeans("d", list(df.columns), k, seed=0)
    assert pooled_inertia(res, x) <= 1.02 * best
    assert res.inertia >= pooled_inertia(res, x) - 1e-9  # whole micro-clusters: never better
    history = res.history["inertia"].to_numpy()  # Lloyd on micro-clusters: never increases
    assert (np.diff(history) <= 1e-9 * history[0]).all()
    assert res.inertia * (1 - 1e-9) <= history[-1] <= res.inertia * (1 + 1e-3)
    assert res.n_observations == len(x)  # every cluster released at every site
    pd.testing.assert_frame_equal(res.cluster_centers, again.cluster_centers)


def test_tied_centres_take_each_micro_cluster_once_to_the_first_of_them():
    """Two equal centres tie for the micro-clusters nearest them: the first takes them all
    (argmin's rule), the second none, and no micro-cluster is counted twice."""
    x = pooled(public_table("wine"))
    index = micro_clusters(x, 5)
    n = np.bincount(index)
    sums = np.zeros((len(n), x.shape[1]))
    np.add.at(sums, index, x)
    atoms = Atoms(index, n, sums, sums / n[:, None], np.zeros(len(n)))
    centers = start_centres(x, 3, 0)
    centers = np.vstack([centers, centers[1]])  # centre 4 equals centre 2
    labels, counts, got, _ = _clusters(
        None, np.zeros((len(x), x.shape[1] + 1)), atoms, centers, False
    )
    expected = ((atoms.means[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(labels, expected)
    assert counts[1] > 0 and counts[3] == 0 and counts.sum() == len(x)
    np.testing.assert_allclose(got, [sums[labels == j].sum(axis=0) for j in range(4)], rtol=1e-12)


def test_different_seeds_start_differently():
    df = public_table("wine")
    with federation(df) as fed:
        a = fed.kmeans("d", list(df.columns), 4, seed=1, max_iter=1)
        b = fed.kmeans("d", list(df.columns), 4, seed=2, max_iter=1)
    assert not np.allclose(a.cluster_centers.to_numpy(), b.cluster_centers.to_numpy())


# -- the derived column 'cluster' --------------------------------------------------------------------
@pytest.fixture
def demo():
    fed = fh.Federation.demo()  # its own federation: k-means leaves a column and guard memory
    yield fed
    fed.close()


def test_clusters_stay_at_the_sites_as_a_column_for_later_queries(demo):
    res = demo.kmeans("aml", ["age", "wbc"], 3)
    cat = demo.catalog("aml")
    cluster = cat[cat["column"] == "cluster"]
    assert set(cluster["site"]) == set(res.privacy.released_sites)
    assert set(cluster["dtype"]) == {"category"}

    # pooled summaries: counts within 2 (perturbed), means weighted by those counts
    desc = demo.describe("aml", ["age"], by="cluster")
    counts = desc.table.xs("age", level="variable")["count"]
    sizes = res.cluster_sizes.to_numpy()
    assert np.abs(counts.to_numpy(dtype=float) - sizes).max() <= 2
    means = desc.table.xs("age", level="variable")["mean"]
    np.testing.assert_allclose(means.to_numpy(), res.cluster_centers["age"].to_numpy(), atol=0.1)

    km = demo.kaplan_meier("aml", "os_months", "os_status", group="cluster")
    assert km.groups == ["1", "2", "3"]
    only_two = demo.describe("aml", ["age"], where="cluster == '2'")
    assert abs(only_two.table.loc["age", "count"] - res.cluster_sizes["2"]) <= 2
    two = res.cluster_centers.loc["2", "age"]
    assert only_two.table.loc["age", "mean"] == pytest.approx(two, abs=0.1)


def test_profile_describes_each_cluster_and_its_survival(demo):
    res = demo.kmeans("aml", ["age", "wbc"], 3, seed=4)
    profile = res.profile(demo, ["age", "wbc"])
    assert set(profile.describe.table.index.get_level_values("group")) == {"1", "2", "3"}
    assert profile.kaplan_meier.groups == ["1", "2", "3"]
    assert "Kaplan" in profile._repr_html_() or "<img" in profile._repr_html_()
    # a later k-means replaces the column: the old result refuses to profile the new clusters
    newer = demo.kmeans("aml", ["age"], 2)
    with pytest.raises(fh.ParameterError, match="another clustering"):
        res.profile(demo, ["age"])
    assert newer.profile(demo, ["age"], survival=None).kaplan_meier is None
    assert demo.kaplan_meier("aml", "os_months", "os_status", group="cluster").groups == ["1", "2"]


def test_a_new_clustering_replaces_the_column_without_touching_the_old_table(demo):
    demo.kmeans("aml", ["age", "wbc"], 3)
    site, executor = next(iter(sites_of(demo).items()))
    before = executor.datasets["aml"].frame
    snapshot = before.copy(deep=True)
    demo.kmeans("aml", ["age"], 2, seed=3)
    after = executor.datasets["aml"].frame
    pd.testing.assert_frame_equal(before, snapshot)  # the earlier table is never written to
    assert list(after.columns) == list(before.columns)
    assert set(after["cluster"].dropna()) <= {"1", "2"}
    assert set(before["cluster"].dropna()) == {"1", "2", "3"}


def test_a_filtered_clustering_labels_only_its_cohort(demo):
    res = demo.kmeans("aml", ["age", "wbc"], 2, where="age >= 60")
    assert res.where == "age >= 60"
    everyone = demo.describe("aml", ["age"], by="cluster")
    table = everyone.table.xs("age", level="variable")
    assert abs(int(table["count"].sum()) - res.n_observations) <= 2 * len(table)
    assert table["mean"].min() >= 60


def test_result_display_and_summary(demo):
    res = demo.kmeans("aml", ["age", "wbc"], 3)
    html = res._repr_html_()
    assert "Privacy report" in html and "cluster" in html
    assert list(res.summary.columns) == ["age", "wbc", "size"]
    assert "KMeansResult" in repr(res)
    assert set(res.by_site["status"]) <= {"released", "withheld", "held"}
    assert res.n_sites == len(res.privacy.released_sites)


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_input_errors_name_site_dataset_and_column(demo):
    with pytest.raises(fh.SchemaError, match="numeric features") as info:
        demo.kmeans("aml", ["age", "sex"], 2)  # refused by the sites, in the first round
    assert info.value.column == "sex" and info.value.dataset == "aml"
    assert info.value.site in demo.policies
    with pytest.raises(fh.SchemaError) as info:
        demo.kmeans("aml", ["age", "no_such_column"], 2)
    assert info.value.column == "no_such_column" and info.value.dataset == "aml"
    assert info.value.site in demo.policies
    with pytest.raises(fh.ParameterError, match="shape"):
        demo.kmeans("aml", ["age", "wbc"], 2, init=np.zeros((3, 2)))
    with pytest.raises(fh.ParameterError, match="'k'"):
        demo.kmeans("aml", ["age"], 0)
    with pytest.raises(fh.ParameterError, match="init"):
        demo.kmeans("aml", ["age"], 2, init="random")
    with pytest.raises(fh.ParameterError, match="tol"):
        demo.kmeans("aml", ["age"], 2, tol=-1.0)


def test_a_constant_feature_cannot_be_standardised():
    df = public_table("iris").assign(const=1.0)
    with federation(df) as fed:
        with pytest.raises(fh.ParameterError) as info:
            fed.kmeans("d", ["f0", "const"], 2)
    assert info.value.column == "const" and info.value.dataset == "d"


def test_missing_values_leave_rows_out_k_or_more_at_a_site():
    df = public_table("iris")
    sites = split_rows(df, 3)
    sites["site_a"].loc[:9, "f1"] = np.nan  # ten rows: left out
    sites["site_b"].loc[[2, 3], "f2"] = np.nan  # two rows: k are left out (these and three more)
    with fh.Federation.local({s: {"d": t} for s, t in sites.items()}) as fed:
        res = fed.kmeans("d", list(df.columns), 2)
    assert res.privacy.outcome("site_b").released
    k = fh.Policy().min_cell_count
    expected = sum(len(t) for t in sites.values()) - 10 - k
    assert res.n_observations == expected
    assert any(n.startswith("site_b") and "left out" in n for n in res.privacy.notes)


def test_a_feature_missing_everywhere_at_a_site_is_a_schema_error():
    df = public_table("iris")
    sites = split_rows(df, 3)
    sites["site_c"]["f3"] = np.nan
    with fh.Federation.local(
        {s: {"d": t} for s, t in sites.items()}, policy=fh.Policy.unrestricted()
    ) as fed:
        res = fed.kmeans("d", list(df.columns), 2)
    outcome = res.privacy.outcome("site_c")
    assert outcome.status == "error" and outcome.rules == ("schema",)
    assert res.n_sites == 2


def test_a_site_that_drops_out_of_a_later_clustering_drops_its_old_column(demo):
    first = demo.kmeans("aml", ["age"], 2)
    assert "policlinico_bari" in first.privacy.released_sites
    later = demo.kmeans("aml", ["age", "wbc"], 16)  # bari: too few patients for 16 clusters
    # pooled: bari sits the clustering out (zeros in the sums, no refusal that would say so)
    assert later.privacy.outcome("policlinico_bari").status == "released"
    assert any("1 site(s) had too few patients" in n for n in later.notes)
    cat = demo.catalog("aml")
    holders = set(cat.loc[cat["column"] == "cluster", "site"])
    assert holders == set(later.privacy.released_sites) - {"policlinico_bari"}


# -- speed machinery: micro-clusters, checks, messages --------------------------------------------------
@pytest.mark.parametrize("k", [2, 5, 11])
def test_micro_clusters_hold_k_to_2k_minus_1_rows_and_are_deterministic(k):
    rng = np.random.default_rng(k)
    for n in [k, 2 * k - 1, 2 * k, 3 * k + 1, 255, 256, 257, 600, 5003]:
        for z in (rng.normal(size=(n, 3)), np.round(rng.normal(size=(n, 2))), np.zeros((n, 2))):
            atom = micro_clusters(z, k)
            sizes = np.bincount(atom)
            assert sizes.min() >= k and (sizes.max() <= 2 * k - 1 or n < 2 * k), (n, k)
            np.testing.assert_array_equal(atom, micro_clusters(z.copy(), k))
    # near MDAV on the whole site: groups of neighbours (a fraction of the spread is within groups)
    z = rng.normal(size=(20_000, 4))
    atom = micro_clusters(z, 5)
    means = np.stack([np.bincount(atom, weights=z[:, j]) for j in range(4)], axis=1)
    means /= np.bincount(atom)[:, None]
    assert ((z - means[atom]) ** 2).sum() / ((z - z.mean(axis=0)) ** 2).sum() < 0.15


def test_the_one_hot_check_agrees_with_counting_every_value():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n, k = int(rng.integers(1, 60)), int(rng.integers(2, 8))
        values = rng.integers(0, 3, n).astype(float)
        if rng.random() < 0.6:  # one value for all but a few
            values[:] = 1.0
            few = int(rng.integers(0, min(n, k + 2)))
            values[rng.choice(n, few, replace=False)] = rng.normal(size=few)
        _, counts = np.unique(values, return_counts=True)
        assert _singles_out(values, k) == (0 < n - counts.max() < k)


@pytest.mark.parametrize("inline_bytes", [2**20, 0])  # arrays in the ConfigRecord, or an Array
def test_messages_carry_every_array_exactly(inline_bytes, monkeypatch):
    ensure_task_identity()
    monkeypatch.setattr(codec, "INLINE_BYTES", inline_bytes)
    doc = {
        "centers": np.random.default_rng(0).normal(size=(8, 10)),
        "counts": np.arange(8),
        "mixed": [np.float32(2.5), np.zeros((0, 3)), np.array([True, False]), "text", None],
        "transposed": np.arange(6).reshape(2, 3).T,
        "big_endian": np.arange(5, dtype=">i2"),
        "strings": np.array(["ab", "c"]),
        "records": np.zeros(2, dtype=[("x", "<f8"), ("y", "<i4", (2,))]),
    }
    content = codec.to_records("request", doc)
    assert ("arrays" in content) == (inline_bytes == 0)
    back = codec.from_records("request", wire_copy(Message(content, 1, "query.x")).content)
    for key, value in doc.items():
        if isinstance(value, np.ndarray):
            assert back[key].dtype == value.dtype and back[key].shape == value.shape
            np.testing.assert_array_equal(back[key], value)
    assert back["mixed"][0] == 2.5 and back["mixed"][3:] == ["text", None]
    assert back["mixed"][1].shape == (0, 3) and back["mixed"][2].tolist() == [True, False]
    with pytest.raises(ValueError, match="not a reply"):
        codec.from_records("reply", content)
    with pytest.raises(ValueError, match="objects"):
        codec.to_records("request", {"x": np.array([object()])})


def test_blas_threads_are_given_back_after_a_query():
    from threadpoolctl import threadpool_info

    before = [lib["num_threads"] for lib in threadpool_info()]
    df = public_table("wine")
    with federation(df, fh.Policy()) as fed:
        fed.kmeans("d", list(df.columns), 3, seed=1)
    assert [lib["num_threads"] for lib in threadpool_info()] == before
