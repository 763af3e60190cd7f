"""Under Policy.unrestricted(), federated KM and log-rank equal lifelines on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import public, split_rows
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

import fedhem_kernel as fh

CASES = [
    # dataset, duration, event, group
    ("waltons", "T", "E", "group"),
    ("rossi", "week", "arrest", "fin"),
    ("lung", "time", "status", "sex"),
    ("leukemia", "t", "status", "Rx"),
    ("gbsg2", "time", "cens", "tgrade"),
]


def federation(df: pd.DataFrame, seed: int = 0) -> fh.Federation:
    sites = {site: {"data": part} for site, part in split_rows(df, 3, seed).items()}
    return fh.Federation.local(sites, policy=fh.Policy.unrestricted())


@pytest.mark.parametrize(("name", "duration", "event", "group"), CASES)
def test_kaplan_meier_equals_pooled_lifelines(name, duration, event, group):
    df = public(name)
    with federation(df) as fed:
        for grp in (None, group):
            km = fed.kaplan_meier("data", duration, event, group=grp)
            groups = [None] if grp is None else sorted(df[grp].astype(str).unique())
            for g in groups:
                rows = df if g is None else df[df[grp].astype(str) == g]
                ref = KaplanMeierFitter().fit(rows[duration], rows[event])
                label = "all" if g is None else g
                ours = km.survival_function_at_times(ref.timeline, group=label).to_numpy()
                ref_sf = ref.survival_function_.iloc[:, 0].to_numpy()
                np.testing.assert_allclose(ours, ref_sf, rtol=0, atol=1e-9)
                # confidence interval and median, lifelines' exponential Greenwood
                ci = km.confidence_interval
                lo = ci[f"{label}_lower_0.95"].reindex(ref.timeline).to_numpy()
                np.testing.assert_allclose(lo, ref.confidence_interval_.iloc[:, 0], atol=1e-9)
                hi = ci[f"{label}_upper_0.95"].reindex(ref.timeline).to_numpy()
                np.testing.assert_allclose(hi, ref.confidence_interval_.iloc[:, 1], atol=1e-9)
                assert km.median_survival[label] == ref.median_survival_time_
                # numbers at risk at every event time
                at_risk = km.at_risk[label].reindex(ref.event_table.index).to_numpy()
                np.testing.assert_array_equal(at_risk, ref.event_table["at_risk"].to_numpy())


@pytest.mark.parametrize(("name", "duration", "event", "group"), CASES)
def test_logrank_equals_pooled_lifelines(name, duration, event, group):
    df = public(name)
    weightings = [None, "wilcoxon", "tarone-ware", "peto", "fleming-harrington"]
    with federation(df, seed=1) as fed:
        for w in weightings:  # stratified and more weightings: tests/test_logrank.py
            kw = {"p": 1.0, "q": 1.0} if w == "fleming-harrington" else {}
            ref = multivariate_logrank_test(
                df[duration], df[group].astype(str), df[event], weightings=w, **kw
            )
            res = fed.logrank("data", duration, event, group, weightings=w, **kw)
            assert res.degrees_of_freedom == ref.degrees_of_freedom
            assert res.test_statistic == pytest.approx(ref.test_statistic, rel=1e-8), w
            assert res.p_value == pytest.approx(ref.p_value, rel=1e-6, abs=1e-300), w


def test_logrank_with_a_where_filter_equals_lifelines_on_the_filtered_rows():
    df = public("rossi")
    sub = df[df["age"] >= 20]
    ref = multivariate_logrank_test(sub["week"], sub["race"].astype(str), sub["arrest"])
    with federation(df, seed=2) as fed:
        res = fed.logrank("data", "week", "arrest", "race", where="age >= 20")
    assert res.test_statistic == pytest.approx(ref.test_statistic, rel=1e-8)


def test_describe_and_crosstab_exact_when_unrestricted():
    df = public("rossi")
    with federation(df, seed=3) as fed:
        d = fed.describe("data", columns=["age", "prio"])
        xt = fed.crosstab("data", "fin", "race", margins=True)
    ref = df[["age", "prio"]].describe().T
    np.testing.assert_allclose(d.table["mean"], ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(d.table["std"], ref["std"], rtol=1e-12)
    np.testing.assert_array_equal(d.table["count"].astype(int), ref["count"].astype(int))
    assert d.table.loc["age", "min"] == ref.loc["age", "min"]
    assert d.table.loc["age", "max"] == ref.loc["age", "max"]
    # quantiles come from pooled histograms: close, not exact
    for q in ("25%", "50%", "75%"):
        assert abs(d.table.loc["age", q] - ref.loc["age", q]) <= 0.05 * ref.loc["age", "std"] + 0.5
    pooled = pd.crosstab(df["fin"].astype(str), df["race"].astype(str), margins=True)
    np.testing.assert_array_equal(xt.table.to_numpy(dtype=int), pooled.to_numpy())


def test_quantiles_close_to_pooled_on_continuous_data():
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x": rng.lognormal(3, 0.6, 5000)})
    with fh.Federation.local(
        {s: {"d": p} for s, p in split_rows(df, 3, 0).items()}, policy=fh.Policy()
    ) as fed:
        table = fed.describe("d").table
    ref = df["x"].quantile([0.25, 0.5, 0.75]).to_numpy()
    ours = table.loc["x", ["25%", "50%", "75%"]].to_numpy(dtype=float)
    np.testing.assert_allclose(ours, ref, rtol=0.02)
