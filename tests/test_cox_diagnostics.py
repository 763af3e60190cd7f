"""Concordance, the Schoenfeld proportional-hazards test and the forest plot of a federated Cox fit.

Under ``Policy.unrestricted()`` the PH statistics equal lifelines' ``proportional_hazard_test`` on the
pooled rows, and Harrell's C equals lifelines' ``concordance_index_`` exactly within one site and to
the binning of scores across sites (the exact value always inside the reported bounds).
"""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import proportional_hazard_test
from lifelines.utils import concordance_index
from scipy.stats import rankdata
from test_cox import DATASETS, dummy_coded, federation

import fedhem_kernel as fh
from fedhem_kernel.analyses import cox as cd
from fedhem_kernel.analyses.cox import site_checks

matplotlib.use("Agg")


def mid_rank(t: pd.Series, c: pd.Series, w: pd.Series) -> pd.Series:
    """lifelines time transform: average rank of each event time among the events (R's cox.zph)."""
    out = pd.Series(np.nan, index=t.index)
    ev = c.to_numpy().astype(bool)
    out[ev] = rankdata(t[ev])
    return out


def reference(df: pd.DataFrame, duration: str, event: str, **kw) -> CoxPHFitter:
    return CoxPHFitter().fit(dummy_coded(df), duration, event, **kw)


def ph_reference(ref: CoxPHFitter, df: pd.DataFrame, transform) -> pd.Series:
    out = proportional_hazard_test(ref, dummy_coded(df), time_transform=transform).summary
    return out["test_statistic"].rename(index=str)


def assert_series_close(ours: pd.Series, ref: pd.Series, atol: float) -> None:
    assert set(ours.index) == set(ref.index)
    np.testing.assert_allclose(
        ours.reindex(ref.index).to_numpy(), ref.to_numpy(), atol=atol, rtol=0
    )


# -- proportional hazards --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_ph_test_equals_lifelines_for_every_transform(name):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates)
    ref = reference(df, duration, event)
    for ours_name, theirs in (
        ("rank", mid_rank),
        ("km", "km"),
        ("identity", "identity"),
        ("log", "log"),
    ):
        ours = res.proportional_hazard_test(ours_name).summary["test_statistic"]
        assert_series_close(ours, ph_reference(ref, df, theirs), 1e-8)
    summary = res.proportional_hazard_test("km").summary
    assert list(summary.columns) == ["test_statistic", "p", "-log2(p)"]
    assert ((summary["p"] > 0) & (summary["p"] <= 1)).all()


def test_rank_equals_lifelines_own_rank_when_event_times_are_distinct():
    df, duration, event = DATASETS["rossi"]()
    rng = np.random.default_rng(3)
    df = df.assign(week=df["week"] + rng.uniform(0, 0.5, len(df)))  # no tied times
    covariates = [c for c in df.columns if c not in (duration, event)]
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates)
    ours = res.proportional_hazard_test().summary["test_statistic"]
    assert_series_close(ours, ph_reference(reference(df, duration, event), df, "rank"), 1e-8)


def test_ph_test_stratified_equals_lifelines():
    df, duration, event = DATASETS["rossi"]()
    with federation(df) as fed:
        res = fed.cox("data", duration, event, ["fin", "age", "prio", "mar"], strata=["race"])
    ref = reference(
        df[["week", "arrest", "fin", "age", "prio", "mar", "race"]],
        duration,
        event,
        strata=["race"],
    )
    frame = df[["week", "arrest", "fin", "age", "prio", "mar", "race"]]
    for ours_name, theirs in (("rank", mid_rank), ("km", "km"), ("log", "log")):
        ours = res.proportional_hazard_test(ours_name).summary["test_statistic"]
        assert_series_close(ours, ph_reference(ref, frame, theirs), 1e-8)


def test_ph_test_all_transforms_and_errors():
    df, duration, event = DATASETS["lung"]()
    with federation(df) as fed:
        res = fed.cox("data", duration, event, ["age", "sex", "ph.ecog"])
        quick = fed.cox("data", duration, event, ["age", "sex", "ph.ecog"], diagnostics=False)
    both = res.proportional_hazard_test("all").summary
    assert both.index.names == ["covariate", "transform"]
    assert len(both) == 3 * len(cd.TRANSFORMS)
    pd.testing.assert_series_equal(
        both.xs("km", level="transform")["test_statistic"],
        res.proportional_hazard_test("km").summary["test_statistic"],
    )
    with pytest.raises(fh.ParameterError, match="time_transform"):
        res.proportional_hazard_test("weeks")
    with pytest.raises(fh.FedHemError, match="not computed"):
        quick.proportional_hazard_test()
    assert np.isnan(quick.concordance_index_)
    np.testing.assert_allclose(quick.params_, res.params_, atol=0)


# -- concordance -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rossi", "lung", "veterans", "whas500"])
def test_concordance_within_one_site_is_exact(name):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    with fh.Federation.local({"one": {"data": df}}, policy=fh.Policy.unrestricted()) as fed:
        res = fed.cox("data", duration, event, covariates)
    ref = reference(df, duration, event)
    assert res.concordance.unresolved == 0
    assert res.concordance_index_ == pytest.approx(ref.concordance_index_, abs=1e-12)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_concordance_across_sites_is_close_and_bounded(name):
    df, duration, event = DATASETS[name]()
    covariates = [c for c in df.columns if c not in (duration, event)]
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates)
        coarse = fed.cox("data", duration, event, covariates, concordance_bins=8)
    exact = reference(df, duration, event).concordance_index_
    lower, upper = res.concordance_bounds_
    assert lower <= exact <= upper
    assert abs(res.concordance_index_ - exact) < 1e-3
    assert upper - lower < 0.02
    lo8, hi8 = coarse.concordance_bounds_
    assert lo8 <= exact <= hi8 and hi8 - lo8 > upper - lower  # fewer bins: more left open


def test_concordance_ignores_strata_like_lifelines():
    df, duration, event = DATASETS["rossi"]()
    frame = df[["week", "arrest", "fin", "age", "prio", "race"]]
    with federation(frame) as fed:
        res = fed.cox("data", duration, event, ["fin", "age", "prio"], strata=["race"])
    ref = reference(frame, duration, event, strata=["race"])
    lower, upper = res.concordance_bounds_
    assert lower <= ref.concordance_index_ <= upper
    assert abs(res.concordance_index_ - ref.concordance_index_) < 1e-3


def brute_force(times, events, score) -> tuple[int, int, int]:
    pairs = conc = tied = 0
    for i, j in itertools.permutations(range(len(times)), 2):
        if not events[i]:
            continue
        if times[i] < times[j] or (times[i] == times[j] and not events[j]):
            pairs += 1
            conc += score[i] > score[j]
            tied += score[i] == score[j]
    return pairs, conc, tied


@pytest.mark.parametrize("seed", range(6))
def test_within_site_counts_equal_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 90))
    times = rng.integers(0, 12, n).astype(float)  # many tied times
    events = rng.random(n) < 0.6
    score = rng.integers(0, 6, n).astype(float)  # many tied scores
    counts = site_checks.within_concordance(times, events.astype(float), score)
    assert tuple(int(v) for v in counts) == brute_force(times, events, score)
    pairs, conc, tied = counts
    if pairs:
        assert (conc + 0.5 * tied) / pairs == pytest.approx(
            concordance_index(times, -score, events), abs=1e-12
        )


def test_cells_never_hold_between_one_and_k_minus_one():
    rng = np.random.default_rng(0)
    for k in (2, 5, 11):
        n = 700
        times = np.sort(rng.integers(0, 40, n)).astype(float)
        events = (rng.random(n) < 0.5).astype(float)
        bins = rng.integers(0, 64, n)
        cells = site_checks.score_cells(times, events, bins, k)
        for key in ("events", "censored"):
            v = np.asarray(cells[key])
            assert np.all((v == 0) | (v >= k))
        assert int(np.sum(cells["events"])) == int(events.sum())
        assert int(np.sum(cells["events"]) + np.sum(cells["censored"])) == n


# -- forest plot -----------------------------------------------------------------------------------
def test_forest_plot_html_and_widget_show_the_summary():
    df, duration, event = DATASETS["rossi"]()
    covariates = ["fin", "age", "prio"]
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates)
    ax = res.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == covariates
    assert ax.get_xscale() == "linear"
    hr = res.plot(hazard_ratios=True)
    assert hr.get_xscale() == "log"
    assert 'alt="Forest plot of hazard ratios"' in res._repr_html_()
    fig = res.widget().figure
    assert fig["kind"] == "forest" and [r["label"] for r in fig["rows"]] == covariates
    for row in fig["rows"]:
        s = res.summary.loc[row["label"]]
        assert row["estimate"] == pytest.approx(s["exp(coef)"])
        assert row["lower"] == pytest.approx(s["exp(coef) lower 95%"])
        assert row["upper"] == pytest.approx(s["exp(coef) upper 95%"])
    model = res.model_table()
    assert "concordance (Harrell's C)" in model.index


def test_strata_site_concordance_is_exact():
    df, duration, event = DATASETS["rossi"]()
    covariates = ["fin", "age", "prio", "mar"]
    with federation(df) as fed:
        res = fed.cox("data", duration, event, covariates, strata="site")
    from conftest import split_rows

    frame = pd.concat(
        [part.assign(site=name) for name, part in split_rows(df, 3, 0).items()], ignore_index=True
    )[[duration, event, *covariates, "site"]]
    ref = CoxPHFitter().fit(frame, duration, event, strata=["site"])
    assert res.concordance.unresolved == 0
    assert res.concordance_index_ == pytest.approx(ref.concordance_index_, abs=1e-12)


# -- the pooled fit (sites in secure sums, default policy) -------------------------------------
def test_the_pooled_ph_test_reaches_lifelines_decisions_on_rossi():
    """The proportional-hazards test of a pooled fit (one secure sum of Σ w·z over the events,
    weights from the setup round's perturbed counts, per block group of >= k events): the same
    violations at 5 % as lifelines on the pooled rows for every covariate and transform, the
    statistics close (blocks instead of event times)."""
    from lifelines import datasets

    rossi = datasets.load_rossi()
    covariates = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    ref = proportional_hazard_test(
        CoxPHFitter().fit(rossi, "week", "arrest"), rossi, time_transform="all"
    ).summary
    site = np.random.default_rng(0).integers(0, 3, len(rossi))
    tables = {f"s{i}": {"r": rossi[site == i].reset_index(drop=True)} for i in range(3)}
    columns = {"r": {"week": {"type": "float", "unit": "weeks"}}}
    policy = fh.Policy(time_resolution="1 week")
    with fh.Federation.local(tables, columns=columns, policy=policy) as fed:
        res = fed.cox("r", "week", "arrest", covariates)
    assert any("time blocks" in n for n in res.privacy.notes)  # the pooled path
    assert res.concordance is not None  # pooled (tests/test_fidelity_default.py)
    for transform in ("rank", "km", "identity", "log"):
        ours = res.ph_tests[transform]
        theirs = ref.xs(transform, level=1).reindex(ours.index)
        assert ((ours["p"] < 0.05) == (theirs["p"] < 0.05)).all(), transform
        gap = (ours["test_statistic"] - theirs["test_statistic"]).abs()
        assert (gap <= 0.3 * theirs["test_statistic"] + 0.6).all(), transform
    test = res.proportional_hazard_test("km")
    assert test.summary.loc["age", "p"] < 0.05 and test.summary.loc["fin", "p"] > 0.05
