"""Federated ComBat against neuroCombat on the pooled rows; the harmonised columns in later queries.

Breast cancer features (scikit-learn) split across three sites, each site (and each scanner within a
site) given its own shift and scale. The harmonised values the sites keep as derived columns must
equal ``neuroCombat(...)["data"]`` on the pooled rows to 1e-6, under ``Policy.unrestricted()`` and
under the default policy (ComBat coarsens nothing). Measured (this file, all cases): max abs
difference 3.0e-12 on values of magnitude up to ~4e3 (relative 1.2e-15); γ* within 2.4e-14, δ*
within 6.7e-15 and var_pooled within 1e-15 (relative) of neuroCombat's ``estimates``.

neuroCombat is given ``dat`` as a float64 array (a DataFrame would be cast to float32 by it) and
builds continuous covariates in float32, as the federated design does.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from conftest import split_rows
from neuroCombat import neuroCombat
from sites import sites_of
from sklearn.datasets import load_breast_cancer

import fedhem_kernel as fh
from fedhem_kernel.analyses.combat.result import CombatResult

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
POLICIES = {"unrestricted": fh.Policy.unrestricted(), "default": fh.Policy()}
TOL = 1e-6


def table() -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    df = data.data.iloc[:, :8].copy()
    df.columns = [f"f{i}" for i in range(8)]
    rng = np.random.default_rng(7)
    df["grade"] = np.where(data.target == 1, "benign", "malignant")
    df["tert"] = rng.choice(["low", "mid", "high"], len(df))
    df["scanner"] = rng.choice(["ge", "siemens"], len(df))
    df["large"] = df["f7"] > df["f7"].median()  # a bool column: categorical, as neuroCombat's
    return df


def sites_with_batch_effects(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Three sites; each site and scanner shifts and scales the features (in units of their SD)."""
    sd = df[FEATURES].std()
    sites = split_rows(df, 3)
    for i, part in enumerate(sites.values()):
        ge = (part["scanner"] == "ge").to_numpy()
        for j, f in enumerate(FEATURES):
            x = part[f].to_numpy() * (1 + 0.3 * i) + (0.5 * i - 0.2 * j) * sd[f]
            x[ge] = x[ge] * 1.15 + 0.4 * sd[f]
            part[f] = x
    return sites


def federation(sites: dict[str, pd.DataFrame], policy: fh.Policy) -> fh.Federation:
    months = (
        {"d": {"time": {"type": "float", "unit": "months"}}}
        if "time" in next(iter(sites.values()))
        else None
    )
    return fh.Federation.local(
        {s: {"d": part} for s, part in sites.items()}, policy=policy, columns=months
    )


def reference(
    sites: dict[str, pd.DataFrame],
    batch: str | None = None,
    categorical: list[str] | None = None,
    continuous: list[str] | None = None,
    **kw,
) -> tuple[dict, np.ndarray]:
    """neuroCombat on the pooled complete rows; also which pooled rows those are."""
    pooled = pd.concat(sites.values(), ignore_index=True)
    site = np.concatenate([[s] * len(p) for s, p in sites.items()])
    used = [*FEATURES, *(categorical or []), *(continuous or []), *([batch] if batch else [])]
    complete = pooled[used].notna().all(axis=1).to_numpy()
    covars = pooled.loc[complete, [*(categorical or []), *(continuous or [])]].copy()
    label = site if batch is None else site + "/" + pooled[batch].astype(str).to_numpy()
    covars["batch"] = label[complete]
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        out = neuroCombat(
            dat=pooled.loc[complete, FEATURES].to_numpy(dtype=float).T,
            covars=covars,
            batch_col="batch",
            categorical_cols=categorical,
            continuous_cols=continuous,
            **kw,
        )
    return out, complete


def harmonised(fed: fh.Federation, sites: dict[str, pd.DataFrame], res: CombatResult) -> np.ndarray:
    """The derived columns, read from each site's own dataset (pooled in site order)."""
    frames = [sites_of(fed)[s].datasets["d"].frame[list(res.columns)] for s in sites]
    return pd.concat(frames, ignore_index=True).to_numpy(dtype=float)


def assert_equals_neurocombat(
    fed: fh.Federation, sites: dict[str, pd.DataFrame], res: CombatResult, ref: dict, complete
) -> None:
    got = harmonised(fed, sites, res)
    assert np.isnan(got[~complete]).all()  # rows left out have no harmonised value
    np.testing.assert_allclose(got[complete], ref["data"].T, rtol=0, atol=TOL)
    est = ref["estimates"]
    order = np.argsort(np.asarray(est["batches"], dtype=str))  # neuroCombat sorts its batches
    np.testing.assert_allclose(res.gamma_star.to_numpy(), est["gamma.star"][order], atol=1e-9)
    np.testing.assert_allclose(res.delta_star.to_numpy(), est["delta.star"][order], atol=1e-9)
    vp = np.ravel(est["var.pooled"])
    np.testing.assert_allclose(res.estimates["var_pooled"].to_numpy(), vp, rtol=1e-9)
    np.testing.assert_allclose(
        res.estimates["grand_mean"].to_numpy(), est["stand.mean"][:, 0], rtol=1e-9
    )
    assert res.n_observations == int(complete.sum())


@pytest.mark.parametrize("policy", list(POLICIES))
def test_one_batch_per_site_equals_neurocombat(policy):
    sites = sites_with_batch_effects(table())
    with federation(sites, POLICIES[policy]) as fed:
        res = fed.combat("d", FEATURES)
        ref, complete = reference(sites)
        assert_equals_neurocombat(fed, sites, res, ref, complete)
        cat = fed.catalog("d")
        assert set(res.columns) <= set(cat["column"])
    assert res.columns == tuple(f"{f}_combat" for f in FEATURES)
    assert list(res.batch_effects.index) == list(sites)
    assert res.batch_effects["n"].tolist() == [len(p) for p in sites.values()]
    assert res.privacy.released_sites == list(sites)
    # the summary: before from the sites' rows, after equal to the reference per batch
    pooled = pd.concat(sites.values(), keys=list(sites), names=["site", None])
    before = pooled.groupby(level="site")[FEATURES].agg(["mean", "std"])
    after = pd.DataFrame(ref["data"].T, columns=FEATURES, index=pooled.index)
    after = after.groupby(level="site").agg(["mean", "std"])
    for f in FEATURES:
        s = res.summary.xs(f, level="feature")
        np.testing.assert_allclose(s["mean_before"], before[(f, "mean")], rtol=1e-12)
        np.testing.assert_allclose(s["sd_before"], before[(f, "std")], rtol=1e-9)
        np.testing.assert_allclose(s["mean_after"], after[(f, "mean")], rtol=1e-9)
        np.testing.assert_allclose(s["sd_after"], after[(f, "std")], rtol=1e-9)
    # the site effect is gone: batch means after are much closer than before
    spread = res.summary.groupby(level="feature")[["mean_before", "mean_after"]].std()
    assert (spread["mean_after"] < 0.2 * spread["mean_before"]).all()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_continuous_and_categorical_covariates_equal_neurocombat(policy):
    sites = sites_with_batch_effects(table())
    with federation(sites, POLICIES[policy]) as fed:
        res = fed.combat("d", FEATURES, covariates=["grade", "f5", "tert", "large", "f6"])
        ref, complete = reference(
            sites, categorical=["grade", "tert", "large"], continuous=["f5", "f6"]
        )
        assert_equals_neurocombat(fed, sites, res, ref, complete)
    beta = res.estimates["B_hat"]  # batch rows, then one-hots without the first level, then numbers
    assert list(beta.index[3:]) == [
        "grade_malignant",
        "tert_low",
        "tert_mid",
        "large_1",
        "f5",
        "f6",
    ]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_batch_column_within_sites_equals_neurocombat(policy):
    sites = sites_with_batch_effects(table())
    with federation(sites, POLICIES[policy]) as fed:
        res = fed.combat("d", FEATURES, batch="scanner", covariates=["f5"])
        ref, complete = reference(sites, batch="scanner", continuous=["f5"])
        assert_equals_neurocombat(fed, sites, res, ref, complete)
    assert res.batch_effects.index.names == ["site", "scanner"]
    assert len(res.batch_effects) == 6  # (site, scanner) pairs: a batch never spans sites


@pytest.mark.parametrize(
    "options",
    [{"eb": False}, {"mean_only": True}, {"mean_only": True, "eb": False}],
    ids=["no_eb", "mean_only", "mean_only_no_eb"],
)
def test_eb_false_and_mean_only_equal_neurocombat(options):
    sites = sites_with_batch_effects(table())
    with federation(sites, fh.Policy()) as fed:
        res = fed.combat("d", FEATURES, covariates=["grade", "f5"], **options)
        ref, complete = reference(sites, categorical=["grade"], continuous=["f5"], **options)
        assert_equals_neurocombat(fed, sites, res, ref, complete)
    if options.get("mean_only"):
        assert (res.delta_star.to_numpy() == 1).all()


@pytest.mark.parametrize("mean_only", [False, True])
def test_non_parametric_eb_equals_neurocombat_on_small_batches(mean_only):
    # neuroCombat's int_eprior multiplies densities of a whole batch: with more than a few dozen
    # rows per batch it underflows to NaN; the federated version works in log space
    sites = {
        s: p.iloc[:n]
        for (s, p), n in zip(sites_with_batch_effects(table()).items(), [30, 20, 12], strict=True)
    }
    with federation(sites, fh.Policy.unrestricted()) as fed:
        res = fed.combat("d", FEATURES, covariates=["f5"], parametric=False, mean_only=mean_only)
        ref, complete = reference(sites, continuous=["f5"], parametric=False, mean_only=mean_only)
        assert_equals_neurocombat(fed, sites, res, ref, complete)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_rows_with_a_missing_value_are_left_out(policy):
    sites = sites_with_batch_effects(table())
    sites["site_a"].loc[3:8, "f2"] = np.nan  # 6 rows: a feature
    sites["site_b"].loc[[1, 5, 9, 13, 17], "f5"] = np.nan  # 5 rows: a covariate
    sites["site_c"].loc[10:14, "scanner"] = None  # 5 rows: the batch
    with federation(sites, POLICIES[policy]) as fed:
        res = fed.combat("d", FEATURES, batch="scanner", covariates=["f5", "grade"])
        ref, complete = reference(sites, batch="scanner", categorical=["grade"], continuous=["f5"])
        assert (~complete).sum() == 16
        assert_equals_neurocombat(fed, sites, res, ref, complete)
    assert any("left out" in n for n in res.privacy.notes)


def survival_table(seed: int) -> pd.DataFrame:
    df = table()
    rng = np.random.default_rng(seed)
    risk = (df["f0"] - df["f0"].mean()) / df["f0"].std()
    df["time"] = np.ceil(rng.exponential(60 * np.exp(-0.5 * risk)))
    df["event"] = (rng.random(len(df)) < 0.7).astype(int)
    return df


def test_harmonised_columns_work_in_describe_kmeans_and_cox():
    sites = sites_with_batch_effects(survival_table(3))
    with federation(sites, fh.Policy()) as fed:
        res = fed.combat("d", FEATURES, covariates=["grade"])
        cols = list(res.columns)
        desc = fed.describe("d", cols)
        km = fed.kmeans("d", cols[:3], k=2, seed=0)
        cox = fed.cox("d", "time", "event", [cols[0], "grade"], diagnostics=False)
        cat = fed.catalog("d")
        derived = fed._catalog_replies()["site_a"].payload["datasets"]["d"]
        again = fed.combat("d", FEATURES, covariates=["grade"])  # replaces the columns
        values = harmonised(fed, sites, again)
    pooled = pd.DataFrame(harmonised_reference(sites), columns=cols)
    np.testing.assert_allclose(desc.table.loc[cols, "mean"], pooled.mean(), rtol=1e-9)
    np.testing.assert_allclose(desc.table.loc[cols, "count"], len(pooled))
    assert km.cluster_sizes.sum() == len(pooled)
    assert np.isfinite(cox.summary.loc[cols[0], "coef"])
    assert set(cat.loc[cat["dtype"] == "float", "column"]) >= set(cols)
    sources = {c["column"]: c["derived"] for c in derived}
    assert sources[cols[0]] == res.source and res.source.startswith("combat ")
    np.testing.assert_allclose(values, pooled.to_numpy(), atol=TOL)
    html = res._repr_html_()
    assert "gamma_star" in html and "Privacy report" in html and "f0_combat" in html


def harmonised_reference(sites: dict[str, pd.DataFrame]) -> np.ndarray:
    return reference(sites, categorical=["grade"])[0]["data"].T
