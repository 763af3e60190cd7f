"""Federated PCA against scikit-learn's PCA on public data split into sites."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from conftest import split_rows, without_secure_sums
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

import fedhem_kernel as fh

LOADERS = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}


def public_table(name: str) -> pd.DataFrame:
    df = LOADERS[name](as_frame=True).data
    df.columns = [f"f{i}" for i in range(df.shape[1])]
    return df


def federation(df: pd.DataFrame, policy: fh.Policy | None = None) -> fh.Federation:
    return fh.Federation.local(
        {s: {"d": part} for s, part in split_rows(df, 3).items()},
        policy=policy or fh.Policy.unrestricted(),
    )


@pytest.mark.parametrize("name", list(LOADERS))
@pytest.mark.parametrize("standardize", [False, True])
def test_pca_equals_sklearn_on_the_pooled_rows(name, standardize):
    df = public_table(name)
    x = df.to_numpy(dtype=float)
    n_components = min(4, x.shape[1])
    with federation(df) as fed:
        res = fed.pca("d", list(df.columns), n_components, standardize=standardize)
    z = StandardScaler().fit_transform(x) if standardize else x
    sk = PCA(n_components).fit(z)
    # the same signs too (largest loading of each component positive, as svd_flip)
    np.testing.assert_allclose(res.components.to_numpy(), sk.components_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.explained_variance.to_numpy(), sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(
        res.explained_variance_ratio.to_numpy(), sk.explained_variance_ratio_, rtol=1e-9
    )
    if standardize:
        scaler = StandardScaler().fit(x)
        np.testing.assert_allclose(res.mean.to_numpy(), scaler.mean_, rtol=1e-12)
        np.testing.assert_allclose(res.scale.to_numpy(), scaler.scale_, rtol=1e-12)
    else:
        np.testing.assert_allclose(res.mean.to_numpy(), sk.mean_, rtol=1e-12)
    assert res.n_samples == len(x)
    assert list(res.components.index) == [f"PC{i + 1}" for i in range(n_components)]


def test_all_components_by_default_and_transform_equals_sklearn():
    df = public_table("wine")
    x = df.to_numpy(dtype=float)
    with federation(df) as fed:
        res = fed.pca("d", list(df.columns))
    sk = PCA().fit(StandardScaler().fit_transform(x))
    assert res.n_components == x.shape[1]
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0)
    points = df.iloc[:7]
    expected = sk.transform(StandardScaler().fit(x).transform(points.to_numpy()))
    np.testing.assert_allclose(res.transform(points).to_numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(res.transform(points.to_numpy()).to_numpy(), expected, atol=1e-9)


def test_cluster_centres_on_the_first_two_components():
    df = public_table("iris")
    x = df.to_numpy(dtype=float)
    init = x[[0, 60, 120]]
    with federation(df) as fed:
        km = fed.kmeans("d", list(df.columns), 3, init=init, standardize=False)
        res = fed.pca("d", list(df.columns), 2, standardize=False)
    coords = res.transform(km.cluster_centers)
    sk_km = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(x)
    expected = PCA(2).fit(x).transform(sk_km.cluster_centers_)
    np.testing.assert_allclose(coords.to_numpy(), expected, atol=1e-9)
    assert list(coords.index) == ["1", "2", "3"] and list(coords.columns) == ["PC1", "PC2"]
    ax = res.plot_centers(km)
    assert len(ax.collections[0].get_offsets()) == 3  # three centres, no patient points
    assert "PC1" in ax.get_xlabel()
    assert "Privacy report" in res._repr_html_()
    with pytest.raises(fh.ParameterError):
        res.transform(pd.DataFrame({"f0": [1.0]}))


def test_rules_under_the_default_policy():
    """Pooled through secure sums: 10 patients per feature over the sites (no site refuses for
    being small), the same components as scikit-learn on the rows the ledger keeps (here all)."""
    df = public_table("breast_cancer")
    sites = split_rows(df, 3)  # about 256, 209 and 104 patients
    features = list(df.columns[:20])
    with fh.Federation.local({s: {"d": t} for s, t in sites.items()}) as fed:
        # 20 features need 200 patients over the sites: every site takes part
        res = fed.pca("d", features, 3)
        assert res.privacy.released_sites == ["site_a", "site_b", "site_c"]
        assert res.n_samples == len(df)
        assert any("secure sums" in n for n in res.privacy.notes)
        ref = PCA(3).fit(StandardScaler().fit_transform(df[features]))
        np.testing.assert_allclose(res.explained_variance_ratio, ref.explained_variance_ratio_)
        np.testing.assert_allclose(res.components.to_numpy(), ref.components_, atol=1e-8)
    few = split_rows(df.iloc[:150], 3)
    with fh.Federation.local({s: {"d": t} for s, t in few.items()}) as fed:
        with pytest.raises(fh.ParameterError, match="patients with every feature over the"):
            fed.pca("d", features, 2)  # 20 features, 150 patients over the sites
    # sites outside secure sums still hold the rule each on its own
    with without_secure_sums({s: {"d": t} for s, t in sites.items()}, fh.Policy()) as fed:
        res = fed.pca("d", features, 3)
        outcome = res.privacy.outcome("site_c")
        assert outcome.status == "refused" and outcome.rules == ("max_parameters",)
        assert "200 patients" in outcome.details[0]
        assert res.n_samples == len(sites["site_a"]) + len(sites["site_b"])


def test_bad_input_names_the_column():
    df = public_table("iris").assign(kind=lambda d: np.where(d["f0"] > 5.8, "a", "b"))
    with federation(df) as fed:
        with pytest.raises(fh.SchemaError, match="numeric features") as info:
            fed.pca("d", ["f0", "kind"])
        assert info.value.column == "kind" and info.value.dataset == "d"
        assert info.value.site in {"site_a", "site_b", "site_c"}
        with pytest.raises(fh.SchemaError) as info:
            fed.pca("d", ["f0", "nope"])
        assert info.value.column == "nope" and info.value.site in {"site_a", "site_b", "site_c"}
        with pytest.raises(fh.ParameterError, match="n_components"):
            fed.pca("d", ["f0", "f1"], 3)
