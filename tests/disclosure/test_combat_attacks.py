"""Adversarial checks of federated ComBat under the default policy (k = 5).

A spy records every reply that crosses from a site. Only per-batch sums leave a site (no array has a
per-patient dimension, even for hand-crafted requests); a batch of 1..k-1 patients, or one that
meets an earlier released group in so few, is left out with others to make k (never refused: a
refusal would say so); a category within a batch of 1..k-1 patients is refused; 1..k-1 rows left
out for missing values, a filter down to a few patients and a cohort that differences a released
batch release nothing new; reasons carry no value; bad input names the site, dataset and column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sites import site_audit, sites_of

import fedhem_kernel as fh
from fedhem_kernel.protocol.messages import SiteRequest

K = 5
SECRET = 123.456789  # one patient's marker value: finding it anywhere is a leak
SIZES = {"big": 400, "mid": 150, "small": 60}
FEATURES = ["marker", "volume", "density"]


def cohort(seed: int, n: int, first_pid: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scanner = rng.choice(["A", "B"], n)
    shift = 3.0 * seed + 2.0 * (scanner == "B")
    return pd.DataFrame(
        {
            "pid": np.arange(first_pid, first_pid + n),
            "age": rng.normal(60, 8, n).round(1),
            "sex": rng.choice(["F", "M"], n),
            "scanner": scanner,
            "marker": (rng.normal(40, 6, n) + shift).round(3),
            "volume": (rng.normal(10, 2, n) * (1 + 0.1 * seed) + shift).round(3),
            "density": (rng.normal(1.0, 0.2, n) + 0.1 * shift).round(4),
        }
    )


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    out = {s: cohort(i, n, 1000 * i) for i, (s, n) in enumerate(SIZES.items())}
    out["big"].loc[17, "marker"] = SECRET
    return out


def federation(tables: dict[str, pd.DataFrame], policy: fh.Policy | None = None) -> fh.Federation:
    return fh.Federation.local({s: {"c": df} for s, df in tables.items()}, policy=policy)


def combat_payloads(releases):
    return [(r.site, r.payload) for r in releases if r.payload and "batches" in r.payload]


def assert_no_value_leaks(fed: fh.Federation, releases, *messages: str) -> None:
    texts = [*messages, *(repr(r) for r in releases), site_audit(fed).to_json()]
    for text in texts:
        assert str(SECRET) not in text and "123.45" not in text
        assert "rare-scanner" not in text  # a batch value held by fewer than k patients


def harmonised(fed: fh.Federation, site: str) -> pd.DataFrame:
    frame = sites_of(fed)[site].datasets["c"].frame
    return frame[[c for c in frame.columns if c.endswith("_combat")]]


def stats_reply(fed: fh.Federation, site: str, **params):
    """A site's own reply to the first ComBat round (to read its error's site, dataset, column)."""
    base = {"features": FEATURES, "batch": None, "categorical": [], "continuous": []}
    base.update(params)
    base.setdefault("levels", {c: ["F", "M"] for c in base["categorical"]})
    base["suffix"] = "_combat"
    return fed.coordinator.send(SiteRequest("combat_stats", "c", base))[site]


def test_released_payloads_hold_only_per_batch_aggregates(tables, releases):
    with federation(tables) as fed:
        res = fed.combat("c", FEATURES, batch="scanner", covariates=["sex", "age"])
        # hand-crafted last round: any γ, δ, β, still one number per batch and feature
        pairs = [[s, b] for s in SIZES for b in ("A", "B")]
        crafted = {
            "features": FEATURES,
            "batch": "scanner",
            "categorical": ["sex"],
            "continuous": ["age"],
            "levels": {"sex": ["F", "M"]},
            "suffix": "_x",
            "batches": pairs,
            "gamma_star": np.full((6, 3), 1e6),
            "delta_star": np.full((6, 3), 1e-9),
            "grand_mean": np.zeros(3),
            "var_pooled": np.full(3, 1e-12),
            "beta_cov": np.array([[1e9, 0.0, 0.0], [0.0, 0.0, 1e9]]),
        }
        fed.coordinator.send(SiteRequest("combat_apply", "c", crafted))
        assert_no_value_leaks(fed, releases)
    assert res.privacy.released_sites == list(SIZES)
    payloads = combat_payloads(releases)
    assert len(payloads) == 4 * len(SIZES)  # three rounds and the crafted one
    for site, payload in payloads:
        n_batches = len(payload["batches"])
        assert n_batches == 2
        for key, value in payload.items():
            shape = np.shape(value)
            assert len(shape) <= 2, key
            # batches (2), features (3) or covariate columns (sex_M, age): never patients
            assert all(d <= 3 for d in shape), (site, key, shape)
        if "n" in payload:
            assert (np.asarray(payload["n"]) >= K).all()
            assert int(np.sum(payload["n"])) == SIZES[site]


@pytest.mark.parametrize("n_rare", [1, K - 1])
def test_a_batch_of_fewer_than_k_patients_is_left_out_with_others_not_refused(
    tables, releases, n_rare
):
    """A refusal would say that a site has a batch of 1..k-1 patients (or that a batch and an
    earlier released group meet in so few). The ledger would move them into another batch;
    ComBat leaves them out instead, with as many more as make k, and answers."""
    tables["mid"].loc[: n_rare - 1, "scanner"] = "rare-scanner"
    with federation(tables) as fed:
        fed.combat("c", FEATURES)  # one batch per site: every site keeps harmonised columns
        assert harmonised(fed, "mid").notna().all().all()
        res = fed.combat("c", FEATURES, batch="scanner")
        assert res.privacy.released_sites == list(SIZES)
        batches = res.batch_effects.xs("mid", level="site").index
        assert "rare-scanner" not in set(batches.get_level_values(-1))
        values = harmonised(fed, "mid")
        assert values.iloc[:n_rare].isna().all().all()  # the rare ones keep no value
        assert values.isna().any(axis=1).sum() == K  # left out with others: k in all
        assert_no_value_leaks(fed, releases)


def test_a_batch_that_meets_an_earlier_group_in_a_few_patients_is_answered_not_refused(
    tables, releases
):
    """The differencing oracle: describe a cohort (scanner B and three patients on A), then ask
    ComBat by scanner. Batch A cuts that cohort into 3 and the rest; the ledger would move the
    3 into batch B. A refusal said that the cohort and batch A meet in 1..k-1 patients (and so,
    by bisecting the cohort, who); now they are left out (with two more) and the fit answers."""
    big = tables["big"]
    three = big.loc[big["scanner"] == "A", "pid"].tolist()[:3]
    where = f"scanner == 'B' or pid in ({', '.join(str(p) for p in three)})"
    with federation(tables) as fed:
        fed.describe("c", ["volume"], where=where)
        res = fed.combat("c", FEATURES, batch="scanner")
        assert res.privacy.released_sites == list(SIZES)
        assert not [o for o in res.privacy.outcomes if not o.released]
        values = harmonised(fed, "big")
        left_out = values.isna().any(axis=1)
        assert left_out[big["pid"].isin(three)].all() and left_out.sum() == K
        assert harmonised(fed, "mid").notna().all().all()
        assert_no_value_leaks(fed, releases)


def test_a_category_with_fewer_than_k_patients_in_a_batch_is_refused(tables, releases):
    small = tables["small"]
    small["sex"] = "M"
    small.loc[:2, "sex"] = "F"  # three women at this site: named elsewhere, not here
    with federation(tables) as fed:
        res = fed.combat("c", FEATURES, covariates=["sex"])
        outcome = res.privacy.outcome("small")  # (its levels round already held 'F' back)
        assert outcome.status == "refused" and set(outcome.rules) == {"min_cell_count"}
        err = stats_reply(fed, "small", categorical=["sex"]).error
        assert (err["site"], err["column"], err["rule"]) == ("small", "sex", "min_cell_count")
        # within a batch too: 3 women scanned on B at the big site
        big = tables["big"]
        big["sex"] = np.where(big["scanner"] == "B", "M", big["sex"])
        big.loc[big.index[big["scanner"] == "B"][:3], "sex"] = "F"
    with federation({"big": big, "mid": tables["mid"]}) as fed:
        res = fed.combat("c", FEATURES, batch="scanner", covariates=["sex"])
        assert res.privacy.outcome("big").rules == ("min_cell_count",)
        assert "in a batch" in res.privacy.outcome("big").details[0]
        assert_no_value_leaks(fed, releases)


def test_a_few_rows_left_out_for_missing_values_make_k(tables, releases):
    tables["mid"].loc[:2, "volume"] = np.nan  # three: k are left out (these and two others)
    tables["small"].loc[:4, "age"] = np.nan  # five: left out
    with federation(tables) as fed:
        res = fed.combat("c", FEATURES, covariates=["age"])
        assert res.privacy.outcome("mid").released and res.privacy.outcome("small").released
        mid = harmonised(fed, "mid")
        assert mid.iloc[:3].isna().all().all() and mid.isna().any(axis=1).sum() == K
        values = harmonised(fed, "small")
        assert values.iloc[:5].isna().all().all() and values.iloc[5:].notna().all().all()
        assert_no_value_leaks(fed, releases)


def test_a_filter_down_to_a_few_patients_or_all_but_them_releases_nothing_new(tables, releases):
    with federation(tables) as fed:
        few = "(0, 1, 2, 1000, 1001, 1002, 2000, 2001, 2002)"
        with pytest.raises(fh.DisclosureError) as info:
            fed.combat("c", FEATURES, where=f"pid in {few}")  # a few patients: none
        assert "ledger" in info.value.rule
        assert not combat_payloads(releases)
        assert all(harmonised(fed, s).empty for s in SIZES)
        everyone = fed.combat("c", FEATURES)
        first = {s: harmonised(fed, s).copy() for s in SIZES}
        but_them = fed.combat("c", FEATURES, where=f"pid not in {few}")  # answered on everyone
        for site in SIZES:
            pd.testing.assert_frame_equal(harmonised(fed, site), first[site])
        pd.testing.assert_frame_equal(everyone.summary, but_them.summary)
        assert_no_value_leaks(fed, releases, str(info.value))


def test_a_cohort_a_few_patients_away_from_a_released_batch_is_answered_on_the_batch(
    tables, releases
):
    big = tables["big"]
    on_a = big.loc[big["scanner"] == "A", "pid"].tolist()[:1]
    on_b = big.loc[big["scanner"] == "B", "pid"].tolist()[:4]
    left_out = ", ".join(str(p) for p in on_a + on_b)
    with federation(tables) as fed:
        first = fed.combat("c", FEATURES, batch="scanner")
        before = harmonised(fed, "big").copy()
        # five patients fewer, one of them on scanner A: their pieces join the batches again
        res = fed.combat("c", FEATURES, batch="scanner", where=f"pid not in ({left_out})")
        assert res.privacy.outcome("big").released
        pd.testing.assert_frame_equal(harmonised(fed, "big"), before)
        pd.testing.assert_frame_equal(first.summary, res.summary)
        assert_no_value_leaks(fed, releases)


def test_bad_input_names_site_dataset_and_column(tables):
    tables["big"]["volume_x"] = 1.0
    with federation(tables) as fed:
        with pytest.raises(fh.SchemaError) as info:
            fed.combat("c", ["marker", "nope"])
        assert (info.value.dataset, info.value.column) == ("c", "nope")
        assert info.value.site in SIZES
        with pytest.raises(fh.ParameterError) as info:
            fed.combat("c", ["marker", "sex"])  # a text column
        assert (info.value.site, info.value.dataset, info.value.column) == ("big", "c", "sex")
        with pytest.raises(fh.SchemaError) as info:
            fed.combat("c", FEATURES, batch="age")  # a continuous batch column
        assert (info.value.dataset, info.value.column) == ("c", "age")
        assert info.value.site in SIZES
        res = fed.combat("c", FEATURES, suffix="_x")  # would replace a loaded column at 'big'
        assert res.privacy.outcome("big").status == "error"
        assert "choose another suffix" in res.privacy.outcome("big").details[0]
        err = fed.coordinator.send(
            SiteRequest("combat_stats", "c", {"features": FEATURES, "suffix": "_x"}), ["big"]
        )["big"].error
        assert (err["site"], err["dataset"], err["column"]) == ("big", "c", "volume_x")
        assert (sites_of(fed)["big"].datasets["c"].frame["volume_x"] == 1.0).all()
        with pytest.raises(fh.ParameterError) as info:
            fed.combat("c", ["marker"])  # empirical Bayes needs two features
        assert "at least two features" in str(info.value)
        with pytest.raises(fh.ParameterError) as info:
            fed.combat("c", FEATURES, suffix="")
        assert "suffix" in str(info.value)
    for df in tables.values():
        df["hospital"] = "h" + str(len(df))  # one value per site: confounded with the batch
    with federation(tables) as fed:
        with pytest.raises(fh.ParameterError) as info:
            fed.combat("c", FEATURES, covariates=["age", "hospital"])
        assert (info.value.dataset, info.value.column) == ("c", "hospital")
        assert "confounded" in str(info.value)
    with fh.Federation.local({"big": {"c": tables["big"]}}) as fed:  # one batch
        with pytest.raises(fh.ParameterError) as info:
            fed.combat("c", FEATURES)
        assert (info.value.site, info.value.dataset) == ("big", "c")
        assert "at least two batches" in str(info.value)


def test_a_site_that_does_not_allow_combat_refuses(tables):
    policies = {s: fh.Policy() for s in SIZES}
    policies["small"] = fh.Policy(allowed_analyses=("describe",))
    with fh.Federation.local({s: {"c": df} for s, df in tables.items()}, policy=policies) as fed:
        res = fed.combat("c", FEATURES)
    assert res.privacy.outcome("small").rules == ("allowed_analyses",)
    assert res.privacy.released_sites == ["big", "mid"]


def test_rows_left_out_cannot_difference_an_earlier_release(tables, releases):
    """Leaving out rows with missing values makes a new row set: 52 complete patients at 'small'
    next to a released cohort of 50 would give away two patients' values; the ledger leaves
    out the whole ten the cohort left out (their atom), so the fit is over the cohort's rows."""
    tables["small"].loc[:7, "volume"] = np.nan  # 8 >= k left out: allowed on its own
    with federation(tables) as fed:
        fed.describe("c", columns=["marker"], where="pid >= 2010")  # 'small' releases 50 rows
        res = fed.combat("c", FEATURES)
        assert res.privacy.outcome("small").released
        values = harmonised(fed, "small")
        assert values.iloc[:10].isna().all().all() and values.iloc[10:].notna().all().all()
        assert res.privacy.outcome("big").status == "released"
        assert_no_value_leaks(fed, releases)
