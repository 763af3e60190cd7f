"""Adversarial checks for competing risks on the per-site path: no count between 1 and k-1 ever
leaves a site.

Sites that take part in no secure sums (``without_secure_sums``) release tables thresholded each
on its own; a spy
records every reply that crosses from a site; every at-risk, per-cause event and censored count in
every payload is checked. Small groups, narrow filters, rare causes and badly coded event columns
are refused or withheld with a reason and without values. The pooled path (secure sums, decide
then release) is attacked in ``test_survival_grid_attacks.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import without_secure_sums
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.privacy.survival import (
    CauseEventTable,
    cause_event_table,
    check_event_table,
    merge_small_cause_steps,
)

K = 5
COUNT_KEYS = {"at_risk", "events", "censored", "n", "counts"}


def released_counts(payload, key=None):
    if isinstance(payload, dict):
        for k, v in payload.items():
            yield from released_counts(v, k)
    elif isinstance(payload, list):
        for v in payload:
            yield from released_counts(v, key)
    elif key in COUNT_KEYS:
        for value in np.atleast_1d(np.asarray(payload)).ravel():
            yield key, int(value)


def assert_no_small_counts(releases, k=K) -> int:
    checked = 0
    for reply in releases:
        for key, value in released_counts(reply.payload or {}):
            checked += 1
            assert value == 0 or value >= k, f"{reply.site} released {key}={value}"
    assert checked > 0, "the spy saw no counts: the test would pass vacuously"
    return checked


def cohort(seed: int, n: int) -> pd.DataFrame:
    """Three causes of different frequency, a rare group, long tails."""
    rng = np.random.default_rng(seed)
    risk = rng.choice(["low", "high", "rare"], size=n, p=[0.6, 0.37, 0.03])
    scale = np.where(risk == "low", 50.0, 15.0)
    t_event = rng.exponential(scale)
    censor = rng.uniform(0, 100, n)
    cause = rng.choice([1, 2, 3], size=n, p=[0.5, 0.4, 0.1])
    return pd.DataFrame(
        {
            "age": rng.normal(60, 12, n).round(1),
            "risk": risk,
            "time": np.minimum(t_event, censor).round(2),
            "cause": np.where(t_event <= censor, cause, 0),
        }
    )


COLUMNS = {"c": {"time": {"type": "float", "unit": "months"}, "cause": "int"}}


@pytest.fixture
def fed():
    sizes = {"big": 400, "mid": 120, "small": 30}
    tables = {s: {"c": cohort(i, n)} for i, (s, n) in enumerate(sizes.items())}
    with without_secure_sums(tables, columns=COLUMNS) as f:
        yield f


def test_every_released_count_is_zero_or_at_least_k(fed, releases):
    grouped = fed.cumulative_incidence("c", "time", "cause", group="risk")
    fed.cumulative_incidence("c", "time", "cause", event_of_interest=2)
    fed.cumulative_incidence("c", "time", "cause", where="age >= 50", combine_competing=True)
    assert assert_no_small_counts(releases) > 100
    # released times are on the monthly grid; the pooled result holds only pooled released values
    for reply in releases:
        for g in (reply.payload or {}).get("groups", []):
            if "time" in g:
                np.testing.assert_allclose(g["time"], np.round(g["time"]))
                assert np.asarray(g["events"]).shape in {(len(g["time"]), 4), (len(g["time"]), 2)}
    assert "min_cell_count" in set(grouped.privacy.to_frame()["rule"])
    for table in grouped.event_tables.values():
        assert (table["at_risk"] >= K).all()


def test_a_small_group_is_withheld_with_a_reason_and_no_values(fed, releases):
    res = fed.cumulative_incidence("c", "time", "cause", group="risk")
    # "rare" (3 % of patients) is named because the big site holds >= k patients with it, but no
    # site can release a step of it with every cause 0 or >= k: each says so, sends no numbers
    assert "rare" not in res.groups
    for reply in releases:
        for g in (reply.payload or {}).get("groups", []):
            if g.get("suppressed"):
                assert set(g) == {"group", "suppressed"}
    withheld = [
        (o.site, d) for o in res.privacy.outcomes for d in o.details if "too few patients" in d
    ]
    assert withheld, "the rare group should be withheld somewhere"
    for site, detail in withheld:
        assert detail.startswith("group '") and "minimum" in detail
        group = detail.split("'")[1]
        assert any(
            f"group '{group}': not released by" in n and site in n for n in res.privacy.notes
        )


def test_a_group_too_small_at_every_site_is_never_named(releases):
    tables = {}
    for i, site in enumerate(["a", "b"]):
        df = cohort(40 + i, 150)
        df["risk"] = np.where(df["risk"] == "rare", "low", df["risk"])
        df.loc[:2, "risk"] = "patient-4711"  # three patients: a name that identifies them
        tables[site] = {"c": df}
    with without_secure_sums(tables, columns=COLUMNS) as f:
        res = f.cumulative_incidence("c", "time", "cause", group="risk")
    assert "patient-4711" not in res.groups
    for reply in releases:
        assert "patient-4711" not in repr(reply)
    assert_no_small_counts(releases)


def test_a_filter_down_to_a_few_patients_has_no_patients_and_no_values(fed):
    with pytest.raises(fh.DisclosureError) as info:
        fed.cumulative_incidence("c", "time", "cause", where="age > 95")
    assert "ledger" in str(info.value)
    assert "95" not in info.value.reason
    # "everyone but the oldest two" at the big site: subtracting it from the whole would expose
    # them, so their piece joins the rest and the answer is the unfiltered one
    ages = {s: ex.datasets["c"].frame["age"].to_numpy() for s, ex in sites_of(fed).items()}
    cut = np.sort(ages["big"])[-3]
    assert all((a > cut).sum() < K for a in ages.values())
    everyone = fed.cumulative_incidence("c", "time", "cause", combine_competing=True)
    but_two = fed.cumulative_incidence(
        "c", "time", "cause", where=f"age <= {cut}", combine_competing=True
    )
    pd.testing.assert_frame_equal(everyone.cumulative_incidence, but_two.cumulative_incidence)
    pd.testing.assert_frame_equal(everyone.at_risk, but_two.at_risk)


def released_cohort(fed, site, where):
    """The rows a site answered ``where`` on (its ledger's snapped cohort)."""
    return sites_of(fed)[site]._masks["c"][where]


def test_nudging_a_filter_past_a_few_patients_never_releases_their_difference(fed):
    res = fed.cumulative_incidence("c", "time", "cause", where="age >= 50", combine_competing=True)
    assert res.privacy.released_sites
    # nudging the threshold to leave out one or two patients at the big site
    ages = np.sort(sites_of(fed)["big"].datasets["c"].frame["age"].to_numpy())
    nudged = np.unique(ages[ages >= 50.0])[2]  # the third distinct age from 50 on
    raw = {
        site: int(((a >= 50.0) & (a < nudged)).sum())
        for site, a in (
            (site, ex.datasets["c"].frame["age"].to_numpy()) for site, ex in sites_of(fed).items()
        )
    }
    assert 1 <= raw["big"] < K
    again = fed.cumulative_incidence(
        "c", "time", "cause", where=f"age >= {nudged}", combine_competing=True
    )
    for site in sites_of(fed):
        before = released_cohort(fed, site, "age >= 50")
        after = released_cohort(fed, site, f"age >= {nudged}")
        moved = int((before != after).sum())
        assert moved == 0 or moved >= K, site  # never the few patients the nudge isolates
    assert (
        int(
            (
                released_cohort(fed, "big", "age >= 50")
                != released_cohort(fed, "big", f"age >= {nudged}")
            ).sum()
        )
        == 0
    )
    assert again.privacy.released_sites


def test_a_rare_cause_code_is_never_named_and_competing_causes_can_be_combined(releases):
    tables = {}
    for i, site in enumerate(["a", "b", "c"]):
        df = cohort(50 + i, 200)
        df["cause"] = np.where(df["cause"] == 3, 2, df["cause"])
        if site == "b":
            df.loc[0, "cause"] = 7  # one patient with a unique cause: identifying
        tables[site] = {"c": df}
    with without_secure_sums(tables, columns=COLUMNS) as f:
        res = f.cumulative_incidence("c", "time", "cause", group="risk")
        releases_before = len(releases)
        combined = f.cumulative_incidence(
            "c", "time", "cause", event_of_interest=1, combine_competing=True
        )
    for reply in releases:
        payload = reply.payload or {}
        assert 7 not in payload.get("causes", [])
    # site b cannot release its tables with the unique cause as a column of its own
    assert res.causes == ("1", "2")
    assert any("not released by b" in n for n in res.privacy.notes)
    b = res.privacy.outcome("b")
    assert any("combine_competing=True" in d for d in b.details)
    # with the other causes counted together, b releases (and still no small count leaves)
    assert combined.causes == ("1", "competing causes")
    assert combined.privacy.outcome("b").released
    assert "b" in combined.contributing_sites["all"]
    assert_no_small_counts(releases[releases_before:])


@pytest.mark.parametrize(
    ("change", "column", "reason"),
    [
        (lambda df: df.assign(cause=df["cause"].where(df.index != 3, -1)), "cause", "event codes"),
        (lambda df: df.assign(cause=df["cause"] + 0.5 * (df.index == 4)), "cause", "event codes"),
        (lambda df: df.assign(cause=df["cause"].where(df.index != 5)), "cause", "missing event"),
        (lambda df: df.assign(cause=df["cause"].map(str) + "x"), "cause", "not numeric"),
        (lambda df: df.assign(time=df["time"].where(df.index != 6, -2.5)), "time", "negative"),
    ],
    ids=["negative", "fraction", "missing", "text", "negative-time"],
)
def test_bad_event_coding_names_site_dataset_and_column_without_values(change, column, reason):
    good = cohort(60, 100)
    bad = change(cohort(61, 100))
    columns = {"c": {"time": {"type": "float", "unit": "months"}}}
    tables = {"ok": {"c": good}, "broken": {"c": bad}}
    with without_secure_sums(tables, columns=columns) as f:
        res = f.cumulative_incidence("c", "time", "cause")
    with fh.Federation.local({"broken": {"c": bad}}, columns=columns) as alone:
        with pytest.raises(fh.FedHemError) as info:
            alone.cumulative_incidence("c", "time", "cause")
    outcome = res.privacy.outcome("broken")
    assert outcome.status == "error" and not outcome.released
    detail = " ".join(outcome.details)
    assert reason in detail
    err = info.value
    assert (err.site, err.dataset, err.column) == ("broken", "c", column)
    assert reason in err.reason
    for value in ("-1", "0.5", "2.5", "1x", "nan"):
        assert value not in str(err)
    # the other site's release stands alone, with its curves
    assert res.contributing_sites["all"] == ("ok",)


def test_a_rare_event_of_interest_is_refused_without_values(fed):
    with pytest.raises(fh.DisclosureError) as info:
        fed.cumulative_incidence("c", "time", "cause", event_of_interest=9)
    assert info.value.rule == "min_cell_count" and info.value.column == "cause"


# -- the merging rule itself ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_merged_cause_tables_obey_the_rule_and_keep_every_patient(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    k = int(rng.integers(2, 12))
    n_causes = int(rng.integers(1, 5))
    times = np.ceil(rng.exponential(20, n))
    cause = np.where(rng.random(n) < 0.4, -1, rng.integers(0, n_causes, n))
    table = cause_event_table(times, cause, n_causes)
    # the event table itself is exact
    assert table.at_risk[0] == n and table.events.sum() == (cause >= 0).sum()
    merged, n_merged = merge_small_cause_steps(table, k)
    totals = table.events.sum(axis=0)
    if merged is None:
        # only when no single step for the whole group can be released either
        whole = CauseEventTable(
            table.time[-1:],
            table.at_risk[:1],
            totals[None, :],
            np.array([table.censored.sum()]),
        )
        assert n < k or check_event_table(whole, k)
        return
    assert check_event_table(merged, k) == []
    ok = lambda v: np.all((v == 0) | (v >= k))  # noqa: E731
    assert ok(merged.events) and ok(merged.censored) and np.all(merged.at_risk >= k)
    # every patient is still counted: per-cause and censored totals, at risk at the start
    np.testing.assert_array_equal(merged.events.sum(axis=0), totals)
    assert merged.censored.sum() == table.censored.sum() and merged.at_risk[0] == n
    assert n_merged == len(table) - len(merged)
    assert set(merged.time) <= set(table.time) and np.all(np.diff(merged.time) > 0)


def test_k_of_one_releases_the_exact_table():
    times = np.array([3.0, 1.0, 1.0, 2.0, 5.0])
    cause = np.array([0, -1, 1, 0, -1])
    table = cause_event_table(times, cause, 2)
    merged, n_merged = merge_small_cause_steps(table, 1)
    assert merged is table and n_merged == 0
    np.testing.assert_array_equal(table.at_risk, [5, 3, 2, 1])
    np.testing.assert_array_equal(table.events, [[0, 1], [1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(table.censored, [1, 0, 0, 1])


def test_a_site_that_does_not_answer_competing_risks_refuses_with_its_rule():
    policies = {
        "a": fh.Policy(allowed_analyses=("describe", "kaplan_meier")),
        "b": fh.Policy(allowed_analyses=("cumulative_incidence",)),
    }
    tables = {"a": {"c": cohort(70, 200)}, "b": {"c": cohort(71, 200)}}
    with without_secure_sums(tables, policies, columns=COLUMNS) as f:
        res = f.cumulative_incidence("c", "time", "cause", combine_competing=True)
    assert res.privacy.outcome("a").status == "refused"
    assert "allowed_analyses" in res.privacy.outcome("a").rules
    assert res.contributing_sites["all"] == ("b",)
