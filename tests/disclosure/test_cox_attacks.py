"""Adversarial checks of the federated Cox model under the default policy (k = 5).

A spy records every reply that crosses from a site. The one-hot attack, a rare category, a tiny
stratum, too many parameters and hand-crafted requests are refused with a reason and no values; a
filter down to a few patients, or one a few patients away from an earlier release, is answered on
the release ledger's rows (no patients, or the earlier rows); what is released holds no count
between 1 and k-1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import without_secure_sums
from sites import site_audit

import fedhem_kernel as fh
from fedhem_kernel.protocol.messages import SiteRequest

K = 5
COLUMNS = {"c": {"time": {"type": "float", "unit": "months"}}}
SECRET = 123.456789  # a patient value distinctive enough that finding it anywhere is a leak


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    risk = rng.choice(["low", "mid", "high"], size=n, p=[0.5, 0.3, 0.2])
    age = rng.normal(60, 12, n).round(1)
    hazard = np.select([risk == "low", risk == "mid"], [1 / 60, 1 / 30], 1 / 12)
    hazard = hazard * np.exp(0.03 * (age - 60))
    time = rng.exponential(1 / hazard)
    censor = rng.uniform(0, 100, n)
    return pd.DataFrame(
        {
            "age": age,
            "risk": risk,
            "mutation": (rng.random(n) < 0.3).astype(int),
            "time": np.minimum(time, censor).round(2),
            "event": (time <= censor).astype(int),
        }
    )


SIZES = {"big": 400, "mid": 150, "small": 60}


def federation(tables: dict[str, pd.DataFrame], secure: bool = False) -> fh.Federation:
    """The sites; by default outside secure sums (the per-site protocol these attacks are on;
    the pooled fit's are in test_pooled_cox_attacks.py)."""
    datasets = {s: {"c": df} for s, df in tables.items()}
    if not secure:
        return without_secure_sums(datasets, fh.Policy(), columns=COLUMNS)
    return fh.Federation.local(datasets, policy=fh.Policy(), columns=COLUMNS)


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    return {s: cohort(i, n) for i, (s, n) in enumerate(SIZES.items())}


def cox_payloads(releases, key: str):
    """(site, payload) of every released Cox reply holding ``key``."""
    for reply in releases:
        if "lp_sum" in (reply.payload or {}):
            continue  # the model-check round (tested below)
        if reply.payload and any(key in item for item in reply.payload.get("strata", [])):
            yield reply.site, reply.payload


def assert_no_value_leaks(fed: fh.Federation, releases, message: str) -> None:
    for text in [message, *(repr(r) for r in releases), site_audit(fed).to_json()]:
        assert str(SECRET) not in text and "123.45" not in text


def test_one_hot_attack_is_refused_with_a_reason_and_no_values(tables, releases):
    # a column that singles out one patient per site (e.g. 'patient_id == X' stored as a flag)
    for df in tables.values():
        df["flag"] = 0
        df.loc[7, "flag"] = 1
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["age", "flag"])
        assert "min_cell_count" in info.value.rule
        assert "'flag'" in str(info.value) and "singles out" in str(info.value)
        setup_replies = [r for r in releases if r.error or (r.payload and "columns" in r.payload)]
        assert {r.site for r in setup_replies} == set(SIZES)
        for reply in setup_replies:  # refused at every site, nothing released
            assert reply.status == "refused" and reply.payload is None
            assert reply.error["column"] == "flag" and reply.error["dataset"] == "c"
        assert not list(cox_payloads(releases, "A0"))
        assert_no_value_leaks(fed, releases, str(info.value))


def test_a_numeric_covariate_that_is_zero_for_all_but_a_few_is_refused(tables, releases):
    for df in tables.values():
        df["marker"] = 0.0
        df.loc[[3, 9, 11], "marker"] = [SECRET, 2.5, 7.25]  # three patients' lab values
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["age", "marker"])
        assert "'marker'" in str(info.value)
        assert_no_value_leaks(fed, releases, str(info.value))


def test_the_same_attack_at_one_site_refuses_that_site_only(tables):
    tables["mid"]["flag"] = 0
    tables["mid"].loc[4, "flag"] = 1
    for site in ("big", "small"):
        tables[site]["flag"] = (np.arange(len(tables[site])) % 3 == 0).astype(int)
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "flag"])
    outcome = res.privacy.outcome("mid")
    assert outcome.status == "refused" and "min_cell_count" in outcome.rules
    assert any("'flag'" in d for d in outcome.details)
    assert res.privacy.outcome("big").released and res.n_sites == 2


def test_a_rare_category_refuses_that_site_without_a_count(tables):
    small = tables["small"]
    small.loc[:1, "risk"] = "rare"  # two patients at the small site
    for site in ("big", "mid"):
        tables[site].loc[:19, "risk"] = "rare"  # common elsewhere, so the level is named
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "risk"])
    outcome = res.privacy.outcome("small")
    assert outcome.status == "refused" and set(outcome.rules) == {"min_cell_count"}
    (detail,) = [d for d in outcome.details if "category" in d]
    assert "'risk'" in detail and "fewer than 5" in detail
    assert "2" not in detail  # the count itself is never told
    assert "risk_rare" in res.columns and res.n_sites == 2


def test_a_tiny_stratum_is_refused(tables):
    tables["small"]["mutation"] = 0
    tables["small"].loc[:2, "mutation"] = 1  # a stratum of three patients at the small site
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age"], strata=["mutation"])
        outcome = res.privacy.outcome("small")
        assert outcome.status == "refused"
        assert any("stratum" in d and "'mutation'" in d for d in outcome.details)
        assert res.n_sites == 2
        # every site refusing: an error with each site's rule
        for df in tables.values():
            df["mutation"] = 0
            df.loc[:2, "mutation"] = 1
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError, match="stratum"):
            fed.cox("c", "time", "event", ["age"], strata=["mutation"])


def test_a_filter_down_to_a_few_patients_has_no_patients(tables, releases):
    for i, df in enumerate(tables.values()):
        df.loc[:2, "age"] = 95.0 + i  # three old patients per site
        df.loc[3:, "age"] = df.loc[3:, "age"].clip(upper=90)
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["mutation"], where="age > 92")
        assert "ledger" in info.value.rule
        assert not list(cox_payloads(releases, "A0"))
        # everyone-but-them is fitted on everyone: nothing to compare
        everyone = fed.cox("c", "time", "event", ["mutation"])
        but_them = fed.cox("c", "time", "event", ["mutation"], where="age <= 92")
    pd.testing.assert_frame_equal(everyone.summary, but_them.summary)


def test_too_many_parameters_are_refused(tables):
    tables["small"] = cohort(9, 35)  # 4 parameters need 40 patients
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "risk", "mutation"])
    outcome = res.privacy.outcome("small")
    assert outcome.status == "refused" and outcome.rules == ("max_parameters",)
    assert "4 parameters" in outcome.details[0]


def test_a_few_missing_values_leave_out_k_patients_at_that_site(tables):
    tables["mid"].loc[[5, 6], "age"] = np.nan  # two patients without age: k left out
    tables["big"].loc[:9, "age"] = np.nan  # ten: simply left out
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "mutation"])
    assert res.privacy.outcome("mid").released and res.privacy.outcome("big").released
    assert any(n.startswith("mid:") and "missing value" in n for n in res.notes)
    assert res.n_observations == SIZES["big"] - 10 + SIZES["mid"] - K + SIZES["small"]


def test_every_released_count_is_zero_or_at_least_k(tables, releases):
    with federation(tables) as fed:
        fed.cox("c", "time", "event", ["age", "risk", "mutation"])
        fed.cox("c", "time", "event", ["age", "mutation"], strata=["risk"], ties="breslow")
        fed.cox("c", "time", "event", ["age", "risk"], strata="site")
    checked = 0
    first_sums: dict[str, dict] = {}
    for site, payload in cox_payloads(releases, "steps"):  # setup: counts and merged steps
        assert payload["n"] >= K
        for item in payload["strata"]:
            assert item["n"] >= K
            events = np.asarray(item["events"])
            assert np.all(events >= K), site
            checked += len(events) + 1
            steps = np.asarray(item["steps"])
            np.testing.assert_allclose(steps, np.round(steps))  # on the monthly grid
    for site, payload in cox_payloads(releases, "A0"):
        first_sums.setdefault(site, payload)  # each site's first sums are at β = 0
    assert set(first_sums) == set(SIZES)
    for site, payload in first_sums.items():
        for item in payload["strata"]:
            # at β = 0, Σ exp(zβ) over a step is its number of patients, over its events theirs
            sizes = np.asarray(item["A0"])
            assert np.all(np.isclose(sizes, np.round(sizes)))
            assert np.all(sizes >= K), site
            tied = np.asarray(item.get("D0", []))
            assert np.all((tied == 0) | (tied >= K)), site
            checked += len(sizes) + len(tied)
    assert checked > 50


def test_hand_crafted_requests_release_nothing_finer_than_a_step(tables):
    with federation(tables) as fed:
        fed.cox("c", "time", "event", ["age", "mutation"])
        base = {
            "duration": "time",
            "event": "event",
            "covariates": ["age", "mutation"],
            "categorical": {},
            "strata": None,
            "ties": "efron",
            "fit": "attack",
            "center": [60.0, 0.3],
            "scale": [12.0, 0.5],
        }
        # 1. coefficients chosen so that one patient dominates every sum
        replies = fed.coordinator.send(
            SiteRequest(
                "cox_sums", "c", {**base, "beta": [60.0, 0.0], "parts": "first"}, who=fed.user
            )
        )
        for reply in replies.values():
            assert reply.status == "refused" and reply.payload is None
            assert reply.error["rule"] == "max_coefficient"
        # 2. event sums asked at every hundredth of a month: only whole steps' events come back
        tied = [{"label": [], "times": np.arange(0, 110, 0.01)}]
        replies = fed.coordinator.send(
            SiteRequest("cox_sums", "c", {**base, "beta": [0.0, 0.0], "tied": tied}, who=fed.user)
        )
        for reply in replies.values():
            (item,) = reply.payload["strata"]
            d0 = np.asarray(item["D0"])
            assert d0.max() >= K and np.all((d0 == 0) | (d0 >= K))
            assert np.all(np.asarray(item["A0"]) >= K)
        log = fed.audit_log()
    assert {"refused", "suppressed"} <= set(log["outcome"])


def test_bad_event_values_name_site_dataset_and_column(tables, releases):
    tables["mid"].loc[3, "event"] = 2
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age"])
        outcome = res.privacy.outcome("mid")
        assert outcome.status == "error" and outcome.rules == ("schema",)
        (error,) = [r.error for r in releases if r.site == "mid" and r.error]
        assert (error["site"], error["dataset"], error["column"]) == ("mid", "c", "event")
        for df in tables.values():
            df.loc[3, "event"] = 2
    with federation(tables) as fed:
        with pytest.raises(fh.SchemaError) as info:
            fed.cox("c", "time", "event", ["age"])
    assert info.value.dataset == "c" and info.value.column == "event"
    assert info.value.site in SIZES and "'event'" in str(info.value)


def test_a_site_that_does_not_answer_cox_says_so(tables):
    policies = {
        "big": fh.Policy(allowed_analyses=("cox",)),
        "mid": fh.Policy(),
        "small": fh.Policy(allowed_analyses=("kaplan_meier",)),
    }
    datasets = {s: {"c": df} for s, df in tables.items()}
    with without_secure_sums(datasets, policies, columns=COLUMNS) as fed:
        res = fed.cox("c", "time", "event", ["age", "risk"])
    assert res.privacy.outcome("small").rules == ("allowed_analyses",)
    assert res.privacy.outcome("big").released and res.n_sites == 2
    # sites in secure sums: without the small site no secure sum over the roster, and the
    # others give no sums of their own (pooled_only), so every site says why
    with fh.Federation.local(datasets, policy=policies, columns=COLUMNS) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["age", "risk"])
    assert set(info.value.rule.split(",")) == {"allowed_analyses", "pooled_only"}


# -- model checks: concordance and proportional-hazards test ----------------------------------------
def diagnostic_payloads(releases, key: str):
    for reply in releases:
        if reply.payload and key in reply.payload:
            yield reply.site, reply.payload


def test_model_checks_release_no_count_between_one_and_k(tables, releases):
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "risk", "mutation"])
        strat = fed.cox("c", "time", "event", ["age", "mutation"], strata=["risk"])
        assert_no_value_leaks(fed, releases, "")
    for r in (res, strat):
        lower, upper = r.concordance_bounds_
        assert 0 <= lower <= r.concordance_index_ <= upper <= 1
        assert np.isfinite(r.proportional_hazard_test("all").test_statistic).all()
    checked = 0
    for site, payload in diagnostic_payloads(releases, "lp_sum"):
        for item in payload["strata"]:
            counts = np.asarray(item["counts"])
            assert np.all(counts >= K), site
            checked += len(counts)
    for site, payload in diagnostic_payloads(releases, "cells"):
        for cells in payload["cells"]:
            for key in ("events", "censored"):
                v = np.asarray(cells[key])
                assert np.all((v == 0) | (v >= K)), site
                checked += len(v)
        assert np.asarray(payload["ph"]).shape == (4, len(payload["ph"][0]))
    assert checked > 50


def test_hand_crafted_model_check_requests_release_nothing_finer(tables):
    ages = np.sort(tables["big"]["age"].to_numpy())
    target = float(ages[len(ages) // 2])  # one patient's age
    with federation(tables) as fed:
        fed.cox("c", "time", "event", ["age"])
        base = {
            "duration": "time",
            "event": "event",
            "covariates": ["age"],
            "categorical": {},
            "strata": None,
            "ties": "efron",
            "fit": "attack",
            "center": [0.0],
            "scale": [1.0],
            "beta": [1.0],  # the score is the age itself
        }
        # 1. score bins squeezed around one patient's age: cells still hold 0 or >= k patients
        edges = np.concatenate(
            ([target - 0.05], target + np.linspace(-0.01, 0.01, 200), [target + 0.05])
        )
        step = [{"label": [], "times": np.arange(0.0, 110.0), "weights": np.zeros((110, 4))}]
        replies = fed.coordinator.send(
            SiteRequest("cox_diagnostics", "c", {**base, "edges": edges, "ph": step})
        )
        for reply in replies.values():
            assert reply.status in ("released", "suppressed")
            (cells,) = reply.payload["cells"]
            for key in ("events", "censored"):
                v = np.asarray(cells[key])
                assert np.all((v == 0) | (v >= K))
        # 2. weights on one month only: the reply sums whole steps' events (0 or >= k of them)
        one = np.zeros((110, 4))
        one[12, :] = 1.0
        replies = fed.coordinator.send(
            SiteRequest(
                "cox_diagnostics",
                "c",
                {
                    **base,
                    "edges": [],
                    "ph": [{"label": [], "times": np.arange(0.0, 110.0), "weights": one}],
                },
            )
        )
        steps = {}
        for reply in fed.coordinator.send(SiteRequest("cox_score", "c", base)).values():
            (item,) = reply.payload["strata"]
            steps[reply.site] = np.asarray(item["steps"])
        for site, reply in replies.items():
            ph = np.asarray(reply.payload["ph"])
            if 12.0 not in steps[site]:
                assert np.all(ph == 0)  # no step of its own at that month: nothing
        # 3. huge coefficients and malformed bins are refused without values
        replies = fed.coordinator.send(SiteRequest("cox_score", "c", {**base, "beta": [60.0]}))
        for reply in replies.values():
            assert reply.status == "refused" and reply.payload is None
            assert reply.error["rule"] == "max_coefficient"
        replies = fed.coordinator.send(
            SiteRequest("cox_diagnostics", "c", {**base, "edges": [2.0, 1.0], "ph": []})
        )
        for reply in replies.values():
            assert reply.status == "error" and reply.payload is None
            assert "edges" in reply.error["reason"]


def test_rows_left_out_for_missing_values_cannot_difference_an_earlier_release(tables):
    # 'big' leaves out six patients without age; an earlier release covered all but five of them,
    # so a fit on the rest would differ from it by one patient: the site leaves out k of the
    # rest (the one without an age and others, in its secret order), never one
    for df in tables.values():
        df["pid"] = np.arange(len(df))
    tables["big"].loc[:5, "age"] = np.nan
    with federation(tables) as fed:
        first = fed.describe("c", ["time"], where="pid not in (0, 1, 2, 3, 4)")
        assert first.privacy.outcome("big").released
        res = fed.cox("c", "time", "event", ["age", "mutation"])
    assert res.privacy.outcome("big").released
    # big's fit is over its rows but the five, less k: k away from the earlier cohort
    assert res.n_observations == SIZES["big"] - 5 - K + SIZES["mid"] + SIZES["small"]


def test_a_cohort_differencing_the_rows_a_cox_fit_kept_is_answered_on_them(tables):
    # the other order: the fit on the patients with an age splits them off, and a filter that
    # differs from its rows by one patient is answered on the fit's rows
    for df in tables.values():
        df["pid"] = np.arange(len(df))
    tables["big"].loc[:5, "age"] = np.nan
    with federation(tables) as fed:
        fit = fed.cox("c", "time", "event", ["age"])
        assert fit.privacy.outcome("big").released
        res = fed.describe("c", ["time"], where="pid not in (0, 1, 2, 3, 4)")
    assert res.privacy.outcome("big").released
    by_site = res.by_site.set_index("site")
    assert by_site.loc["big", "count"] == SIZES["big"] - 6
