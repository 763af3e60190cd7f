"""Federated Cox model: under Policy.unrestricted() equal to lifelines (Efron) and scikit-survival
(Breslow) on the pooled rows; under the default policy close to the exact fit, and saying so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import split_rows
from lifelines import CoxPHFitter, datasets
from scipy import stats
from sites import sites_of
from sksurv.datasets import load_veterans_lung_cancer, load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

import fedhem_kernel as fh
import fedhem_kernel.analyses.cox.combine as cox_module
from fedhem_kernel.analyses.cox.site_design import SCRATCH

TOL = 1e-6


# -- public datasets (duration, event, frame) ---------------------------------------------------
def _lung() -> tuple[pd.DataFrame, str, str]:
    df = datasets.load_lung().dropna().reset_index(drop=True)
    if df["status"].max() == 2:  # older lifelines: 1 = censored, 2 = dead
        df["status"] = (df["status"] == 2).astype(int)
    assert df["status"].sum() > 100  # a fit on an all-censored table would prove nothing
    return df, "time", "status"


def _sksurv(loader, time: str, status: str) -> tuple[pd.DataFrame, str, str]:
    x, y = loader()
    df = x.copy()
    for c in df.select_dtypes("category"):
        df[c] = df[c].astype(str)  # sites hold categories as text
    df["time"] = y[time]
    df["status"] = y[status].astype(int)
    return df, "time", "status"


DATASETS = {
    "rossi": lambda: (datasets.load_rossi(), "week", "arrest"),
    "lung": _lung,
    "gbsg2": lambda: (datasets.load_gbsg2(), "time", "cens"),
    "veterans": lambda: _sksurv(load_veterans_lung_cancer, "Survival_in_days", "Status"),
    "whas500": lambda: _sksurv(load_whas500, "lenfol", "fstat"),
}


def dummy_coded(df: pd.DataFrame) -> pd.DataFrame:
    """The pooled reference coding: every text column as 0/1 columns, first level dropped."""
    text = [c for c in df.columns if df[c].dtype == object]
    return pd.get_dummies(df, columns=text, drop_first=True, dtype=float)


def federation(df: pd.DataFrame, seed: int = 0, policy: fh.Policy | None = None, **kw):
    sites = {site: {"data": part} for site, part in split_rows(df, 3, seed).items()}
    return fh.Federation.local(sites, policy=policy or fh.Policy.unrestricted(), **kw)


def assert_close(ours: pd.Series, ref: pd.Series, tol: float = TOL) -> None:
    assert set(ours.index) == set(ref.index)
    np.testing.assert_allclose(ours.reindex(ref.index).to_numpy(), ref.to_numpy(), rtol=0, atol=tol)


@pytest.fixture(params=["one_round", "two_rounds"])
def protocol(request, monkeypatch):
    """Both ways of getting the Hessian: per-step S2 in one reply, or contracted in a second."""
    monkeypatch.setattr(
        cox_module, "ONE_ROUND_MAX_BYTES", 10**15 if request.param == "one_round" else 0
    )
    return request.param


# -- Efron: lifelines ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_efron_equals_pooled_lifelines(name, protocol):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    ref = CoxPHFitter().fit(dummy_coded(df), duration, event)
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates)
    assert res.ties == "efron" and res.converged and res.n_sites == 3
    assert_close(res.params_, ref.params_)
    assert_close(res.summary["se(coef)"], ref.standard_errors_)
    for column in ref.summary.columns:  # every lifelines summary column, same name
        tol = TOL * max(1.0, float(ref.summary[column].abs().max()))
        assert_close(res.summary[column], ref.summary[column], tol)
    cov = res.variance_matrix_.loc[ref.variance_matrix_.index, ref.variance_matrix_.columns]
    np.testing.assert_allclose(cov, ref.variance_matrix_, rtol=0, atol=TOL)
    assert res.log_likelihood_ == pytest.approx(ref.log_likelihood_, abs=TOL)
    lr, ref_lr = res.log_likelihood_ratio_test(), ref.log_likelihood_ratio_test()
    assert lr.test_statistic == pytest.approx(ref_lr.test_statistic, abs=TOL)
    assert lr.degrees_of_freedom == lr.degrees_freedom == ref_lr.degrees_freedom
    assert lr.p_value == pytest.approx(ref_lr.p_value, rel=1e-6, abs=1e-300)
    assert res.n_observations == len(df) and res.n_events == int(df[event].sum())


# -- Breslow: scikit-survival ----------------------------------------------------------------------
def breslow_reference(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray):
    """Log partial likelihood and information matrix (Breslow ties) by their textbook definition."""
    eta = x @ beta
    w = np.exp(eta)
    ll = float(eta[event == 1].sum())
    info = np.zeros((x.shape[1], x.shape[1]))
    for t in np.unique(time[event == 1]):
        risk = time >= t
        d = int(((time == t) & (event == 1)).sum())
        s0 = w[risk].sum()
        s1 = w[risk] @ x[risk]
        s2 = (x[risk] * w[risk, None]).T @ x[risk]
        ll -= d * np.log(s0)
        info += d * (s2 / s0 - np.outer(s1, s1) / s0**2)
    return ll, info


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_breslow_equals_pooled_scikit_survival(name, protocol):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    coded = dummy_coded(df)
    x = coded.drop(columns=[duration, event])
    ref = CoxPHSurvivalAnalysis(ties="breslow").fit(
        x, Surv.from_arrays(coded[event].astype(bool), coded[duration])
    )
    with federation(df, seed=1) as fed:
        res = fed.cox("data", duration, event, covariates, ties="breslow")
    assert res.ties == "breslow"
    ours = res.params_.reindex(x.columns).to_numpy()
    np.testing.assert_allclose(ours, ref.coef_, rtol=0, atol=TOL)
    # scikit-survival gives no standard errors: the information matrix at its coefficients
    ll, info = breslow_reference(
        x.to_numpy(), coded[duration].to_numpy(float), coded[event].to_numpy(), ref.coef_
    )
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    np.testing.assert_allclose(res.summary["se(coef)"].reindex(x.columns), se, rtol=0, atol=TOL)
    assert res.log_likelihood_ == pytest.approx(ll, abs=TOL)


# -- strata ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "strata"),
    [("rossi", ["race"]), ("rossi", ["fin", "wexp"]), ("gbsg2", ["tgrade"]), ("lung", ["sex"])],
)
def test_stratified_equals_lifelines(name, strata, protocol):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event, *strata)]
    ref = CoxPHFitter().fit(
        dummy_coded(df.drop(columns=strata)).join(df[strata]), duration, event, strata=strata
    )
    with federation(df, seed=2) as fed:
        res = fed.cox("data", duration, event, covariates, strata=strata)
    assert res.strata == tuple(strata)
    assert_close(res.params_, ref.params_)
    assert_close(res.summary["se(coef)"], ref.standard_errors_)
    assert res.log_likelihood_ == pytest.approx(ref.log_likelihood_, abs=TOL)
    assert res.log_likelihood_ratio_test().test_statistic == pytest.approx(
        ref.log_likelihood_ratio_test().test_statistic, abs=TOL
    )


@pytest.mark.parametrize("name", ["rossi", "lung"])
def test_strata_site_equals_lifelines_with_a_site_column(name, protocol):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    parts = split_rows(df, 3, 3)
    pooled = pd.concat([p.assign(site=s) for s, p in parts.items()], ignore_index=True)
    ref = CoxPHFitter().fit(pooled, duration, event, strata=["site"])
    unstratified = CoxPHFitter().fit(df, duration, event)
    with fh.Federation.local(
        {s: {"data": p} for s, p in parts.items()}, policy=fh.Policy.unrestricted()
    ) as fed:
        res = fed.cox("data", duration, event, covariates, strata="site")
    assert res.strata == "site"
    assert_close(res.params_, ref.params_)
    assert_close(res.summary["se(coef)"], ref.standard_errors_)
    assert res.log_likelihood_ == pytest.approx(ref.log_likelihood_, abs=TOL)
    # and it is a different model from the unstratified one
    assert (res.params_ - unstratified.params_).abs().max() > 1e-4


def test_where_filter_equals_lifelines_on_the_filtered_rows():
    df, duration, event = DATASETS["rossi"]()
    sub = df[df["age"] >= 20]
    ref = CoxPHFitter().fit(sub, duration, event)
    with federation(df, seed=4) as fed:
        res = fed.cox(
            "data",
            duration,
            event,
            ["fin", "age", "race", "wexp", "mar", "paro", "prio"],
            where="age >= 20",
        )
    assert_close(res.params_, ref.params_)
    assert_close(res.summary["se(coef)"], ref.standard_errors_)
    assert res.n_observations == len(sub)


def test_categorical_levels_are_coded_like_get_dummies():
    df, duration, event = DATASETS["veterans"]()
    with federation(df, seed=5) as fed:
        res = fed.cox("data", duration, event, ["Celltype", "Karnofsky_score", "Treatment"])
    # reference level: the first in sorted order ('adeno', 'standard'); one column per other level
    assert res.columns == [
        "Celltype_large",
        "Celltype_smallcell",
        "Celltype_squamous",
        "Karnofsky_score",
        "Treatment_test",
    ]
    ref = CoxPHFitter().fit(
        dummy_coded(df[[duration, event, "Celltype", "Karnofsky_score", "Treatment"]]),
        duration,
        event,
    )
    assert_close(res.params_, ref.params_)


def test_rows_with_missing_values_are_left_out_like_dropna():
    df = datasets.load_lung()
    if df["status"].max() == 2:
        df["status"] = (df["status"] == 2).astype(int)
    covariates = ["age", "sex", "ph.ecog", "wt.loss"]
    ref = CoxPHFitter().fit(df[["time", "status", *covariates]].dropna(), "time", "status")
    with federation(df, seed=6) as fed:
        res = fed.cox("data", "time", "status", covariates)
    assert_close(res.params_, ref.params_)
    assert res.n_observations == len(df[["time", "status", *covariates]].dropna())
    assert any("missing value" in note for note in res.notes)


# -- the default policy: grouped times, close to the exact fit -----------------------------------
def test_default_policy_fit_is_close_to_the_exact_fit_and_says_so():
    df, duration, event = DATASETS["rossi"]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    exact = CoxPHFitter().fit(df, duration, event)
    columns = {"data": {"week": {"type": "float", "unit": "weeks"}}}
    with federation(df, policy=fh.Policy(), columns=columns) as fed:
        res = fed.cox("data", duration, event, covariates)
    assert res.time_step == pytest.approx(30.4375 / 7)
    for stratum in res.fit.strata:  # pooled: every block ends on the monthly grid
        assert not stratum.site_steps  # no site's own steps were seen
        np.testing.assert_allclose(
            stratum.times / res.time_step, np.round(stratum.times / res.time_step)
        )
    # blocks of the monthly grid move no coefficient by more than a tenth of its standard error
    shift = ((res.params_ - exact.params_) / exact.standard_errors_).abs()
    assert shift.max() < 0.1
    assert (res.params_ - exact.params_).abs().max() > 1e-6  # it is not the exact fit
    assert any("time blocks" in note and "secure sums" in note for note in res.notes)


# -- the result object -----------------------------------------------------------------------------
def test_result_names_and_display():
    df, duration, event = DATASETS["rossi"]()
    with federation(df) as fed:
        res = fed.cox("data", duration, event, ["fin", "age", "prio"])
        executors = sites_of(fed)
    assert list(res.summary.columns) == list(
        CoxPHFitter()
        .fit(df[[duration, event, "fin", "age", "prio"]], duration, event)
        .summary.columns
    )
    assert res.params is res.params_ and res.params_.name == "coef"
    assert res.summary.index.name == "covariate"
    np.testing.assert_allclose(res.variance_matrix_, res.variance_matrix_.T)
    assert res.log_likelihood == res.log_likelihood_
    lr = res.log_likelihood_ratio_test()
    assert lr.p_value == pytest.approx(stats.chi2.sf(lr.test_statistic, 3))
    assert np.allclose(res.hazard_ratios_, np.exp(res.params_))
    html = res._repr_html_()
    assert "Privacy report" in html and "exp(coef)" in html and "prio" in html
    bundle = res._repr_mimebundle_()
    assert "text/html" in bundle and "CoxResult" in bundle["text/plain"]
    widget = res.widget()
    assert widget.tables[0]["columns"][0] == "coef"
    assert [row["index"][0] for row in widget.tables[0]["rows"]] == ["fin", "age", "prio"]
    for executor in executors.values():  # the sites dropped the fit's design
        assert not cached_designs_of(executor, "data")
    # the pooled sums at the final coefficients stay available to later steps
    assert res.fit is not None and res.fit.strata[0].S0 is not None
    assert np.allclose(res.fit.beta / res.fit.scale, res.params_)


def test_bad_parameters_are_refused_before_anything_is_asked():
    df, duration, event = DATASETS["rossi"]()
    with federation(df) as fed:
        for kwargs, word in [
            ({"ties": "exact"}, "ties"),
            ({"covariates": ["age", "age"]}, "twice"),
            ({"covariates": ["week"]}, "duration or event"),
            ({"covariates": []}, "covariates"),
            ({"covariates": ["age"], "strata": ["age"]}, "stratum"),
        ]:
            args = {"covariates": ["age"], **kwargs}
            with pytest.raises(fh.ParameterError, match=word):
                fed.cox("data", duration, event, **args)


def test_unknown_column_names_site_dataset_and_column():
    df, duration, event = DATASETS["rossi"]()
    with federation(df) as fed:
        with pytest.raises(fh.SchemaError) as info:
            fed.cox("data", duration, event, ["age", "nope"])
    assert (info.value.dataset, info.value.column) == ("data", "nope")
    assert info.value.site in {"site_a", "site_b", "site_c"}


def cached_designs_of(executor, dataset: str) -> dict:
    """The Cox designs a site keeps in a dataset's scratch."""
    return executor._scratch.get(dataset, {}).get(SCRATCH, {})
