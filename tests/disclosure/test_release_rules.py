"""Adversarial checks: under the default policy no count between 1 and k-1 leaves any site.

A spy records every reply that crosses from a site to the coordinator; every count in every released
payload is checked, whatever the analysis.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import without_secure_sums
from sites import sites_of

import fedhem_kernel as fh

K = 5
COUNT_KEYS = {
    "n",
    "counts",
    "at_risk",
    "events",
    "censored",
    "cells",
    "row_totals",
    "col_totals",
    "total",
}


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


def assert_no_small_counts(releases, k=K):
    checked = 0
    for reply in releases:
        if reply.payload is None:
            continue
        for key, value in released_counts(reply.payload):
            checked += 1
            assert value in (-1, 0) or value >= k, f"{reply.site} released {key}={value}"
    assert checked > 0, "the spy saw no counts: the test would pass vacuously"


def rare_cohort(seed: int, n: int) -> pd.DataFrame:
    """Small groups, rare categories, long survival tails: everything that tempts a small cell."""
    rng = np.random.default_rng(seed)
    risk = rng.choice(["low", "mid", "high", "rare"], size=n, p=[0.45, 0.35, 0.18, 0.02])
    mutation = (rng.random(n) < np.where(risk == "high", 0.3, 0.03)).astype(int)
    scale = np.select([risk == "low", risk == "mid"], [60.0, 25.0], 10.0)
    time = rng.exponential(scale)
    censor = rng.uniform(0, 120, n)
    return pd.DataFrame(
        {
            "age": rng.normal(60, 12, n).round(1),
            "risk": risk,
            "mutation": mutation,
            "time": np.minimum(time, censor).round(2),
            "event": (time <= censor).astype(int),
        }
    )


@pytest.fixture
def fed():
    sites = {"big": 400, "mid": 120, "small": 30}
    tables = {s: {"cohort": rare_cohort(i, n)} for i, (s, n) in enumerate(sites.items())}
    columns = {"cohort": {"time": {"type": "float", "unit": "months"}}}
    with fh.Federation.local(tables, policy=fh.Policy(), columns=columns) as f:
        yield f


def test_km_tails_and_small_groups_release_no_small_count(fed, releases, totals):
    """Pooled through secure sums: no site's counts leave in the clear, and of the pooled
    totals the coordinator learns, every step of a curve has at least k patients at risk; the
    tail past it is seen only as perturbed numbers at risk."""
    km = fed.kaplan_meier("cohort", "time", "event", group="risk")
    fed.kaplan_meier("cohort", "time", "event")
    secure = [r for r in releases if r.payload and "secure" in r.payload]
    assert len(secure) == 12  # 2 queries x 2 rounds x 3 sites
    assert all(set(r.payload) == {"secure"} for r in secure)
    released = [t for step, t in totals if step == "km_grid"]
    assert len(released) == 2
    for total in released:
        n, events, censored = (total.totals[k] for k in ("n", "events", "censored"))
        for row in range(len(n)):
            if n[row] == 0:
                assert not events[row].any() and not censored[row].any()
                continue
            leaving = np.cumsum(events[row] + censored[row])
            last = int(np.flatnonzero(events[row] + censored[row]).max(initial=0))
            at_risk = n[row] - np.concatenate(([0], leaving[:-1]))
            assert (at_risk[: last + 1] >= K).all()
    # the rare level (2 % of patients) is rare at every site, but pooled it has a curve
    assert "rare" in km.survival_function.columns
    for name in km.survival_function.columns:
        assert (km.event_tables[name]["at_risk"] >= K).all()
        # every released time is on the monthly grid
        np.testing.assert_allclose(
            km.event_tables[name].index, np.round(km.event_tables[name].index)
        )


def test_km_on_demo_releases_no_small_count(demo, releases, totals):
    demo.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
    demo.logrank("mm", "pfs_months", "pfs_status", "r_iss")
    # pooled: no site's table leaves in the clear, and every released step has k at risk
    assert not [r for r in releases if r.payload and "groups" in r.payload]
    released = [t for step, t in totals if step in ("km_grid", "logrank_grid")]
    assert len(released) == 2
    for total in released:
        for row, n in enumerate(total.totals["n"]):
            leaving = total.totals["events"][row] + total.totals["censored"][row]
            last = int(np.flatnonzero(leaving).max(initial=0))
            at_risk = n - np.concatenate(([0], np.cumsum(leaving)[:-1]))
            assert n == 0 or (at_risk[: last + 1] >= K).all()


def test_crosstab_with_rare_cells_suppresses_and_protects(fed, releases, totals):
    """Pooled through secure sums: no site's table leaves in the clear; of the released totals,
    every cell is 0 (not shown) or at least k, and a margin is shown only where it hides no cell."""
    xt = fed.crosstab("cohort", "risk", "mutation", margins=True)
    secure = [r for r in releases if r.payload and "secure" in r.payload]
    assert len(secure) == 6 and all(set(r.payload) == {"secure"} for r in secure)
    (_, risk), (_, cells) = [(s, t) for s, t in totals if s.startswith("crosstab_")]
    released = cells.totals["cells"]
    assert ((released == 0) | (released >= K)).all()
    shown = xt.table.drop(index="All", columns="All")
    assert shown.isna().to_numpy().any()  # the rare level's cells are hidden
    for label, row in shown.iterrows():
        assert pd.isna(xt.table.loc[label, "All"]) == row.isna().any()
    for label, col in shown.items():
        assert pd.isna(xt.table.loc["All", label]) == col.isna().any()
    assert xt.by_site == {}  # nothing per site was seen


def test_crosstab_by_site_suppresses_rare_rows(demo, releases, totals):
    """By site, each site counts into its own column of one pooled table: no site's table leaves
    in the clear, every cell shown holds k or more (or none), and no row or column keeps a single
    hidden cell (the pooled row counts are known: they would pin it)."""
    xt = demo.crosstab("aml", "tp53", "site", where="age >= 75", margins=True)
    assert not [r for r in releases if r.payload and "cells" in r.payload]
    assert list(xt.table.columns[:-1]) == list(demo.sites["site"])  # four sites and All
    inner = xt.table.drop(index="All", columns="All")
    shown = inner.to_numpy(dtype=float, na_value=np.nan)
    assert np.isnan(shown).any()  # a small site's cells are hidden
    assert ((shown[~np.isnan(shown)] == 0) | (shown[~np.isnan(shown)] >= K)).all()
    hidden = np.isnan(shown)
    assert all(h != 1 for h in hidden.sum(axis=0)) and all(h != 1 for h in hidden.sum(axis=1))


def test_grouped_describe_releases_no_small_count(fed, releases, totals):
    """Pooled through secure sums: no site's summary leaves in the clear; every group shown
    holds at least k patients of the pooled rows (its count is within 2 of that), and a group
    below the bound is hidden with a partner."""
    d = fed.describe("cohort", columns=["age", "time"], by="mutation")
    r = fed.describe("cohort", by="risk", where="age >= 40")
    secure = [x for x in releases if x.payload and "secure" in x.payload]
    assert len(secure) == 18  # 2 queries x 3 rounds x 3 sites
    assert all(set(x.payload) == {"secure"} for x in secure)
    pooled = pd.concat([rare_cohort(i, n) for i, n in enumerate((400, 120, 30))])
    older = pooled[pooled["age"] >= 40]
    for result, frame, by in ((d, pooled, "mutation"), (r, older, "risk")):
        truth = frame.groupby(frame[by].astype(str)).count()
        shown = result.table["count"].dropna()
        assert len(shown) > 0
        for (group, column), count in shown.items():
            assert truth.loc[group, column] >= K
            assert abs(int(count) - truth.loc[group, column]) <= 2
    moments = [t for step, t in totals if step == "describe_moments"]
    assert len(moments) == 2


def test_min_max_never_released_by_default(fed, releases):
    d = fed.describe("cohort", columns=["age"])
    assert d.table[["min", "max"]].isna().all().all()
    for reply in releases:
        for cell in (reply.payload or {}).get("cells", []):
            assert "min" not in cell and "max" not in cell
            assert np.isnan(np.asarray(cell.get("edges", [np.nan]))[[0, -1]]).all()


def test_a_cohort_of_fewer_than_k_at_every_site_has_no_patients(fed):
    """Pooled: each site's cohort is empty (fewer than k there), so it adds zeros, without a
    refusal (which would say that such patients exist): the summary has no one."""
    d = fed.describe("cohort", columns=["age"], where="age > 95")
    assert d.table.loc["age", "count"] == 0 and np.isnan(d.table.loc["age", "mean"])
    assert {o.status for o in d.privacy.outcomes} == {"released"}


def test_a_cohort_of_fewer_than_k_at_every_site_is_refused_per_site():
    """Sites outside secure sums release their own summaries: there the empty cohort is
    refused by the ledger's rule, in words that do not carry the threshold's value."""
    sites = {"big": 400, "mid": 120, "small": 30}
    tables = {s: {"cohort": rare_cohort(i, n)} for i, (s, n) in enumerate(sites.items())}
    with without_secure_sums(tables, fh.Policy()) as f:
        with pytest.raises(fh.DisclosureError) as info:
            f.describe("cohort", columns=["age"], where="age > 95")
    assert info.value.rule is not None and "ledger" in info.value.rule
    assert "95" not in info.value.reason.split("(")[0]


def test_everyone_but_a_few_is_answered_on_everyone():
    """ "Everyone but the two youngest" against the full cohort would expose the two youngest:
    their piece of the cohort's atom is small, so it joins the rest and both answers are the same
    (no refusal, which would itself say that such patients exist)."""
    tables = {}
    for i, site in enumerate(["a", "b"]):
        df = rare_cohort(10 + i, 100)
        df.loc[:1, "age"] = 15.0  # two patients under 20 at each site
        df.loc[2:, "age"] = df.loc[2:, "age"].clip(lower=25)
        tables[site] = {"c": df}
    with fh.Federation.local(tables) as f:
        everyone = f.describe("c", columns=["age"])
        but_two = f.describe("c", columns=["age"], where="age >= 20")
    pd.testing.assert_frame_equal(everyone.table, but_two.table)
    assert set(but_two.privacy.released_sites) == {"a", "b"}


def test_a_site_without_patients_in_a_cohort_adds_zeros_to_a_secure_sum(fed):
    """The small site has fewer than k patients aged 70 or more: its cohort is empty. A refusal
    would say so (and a bisection of refusals reads a membership): in a secure sum it adds
    zeros, and its outcome is the same as every other site's."""
    km = fed.kaplan_meier("cohort", "time", "event", where="age >= 70")
    report = km.privacy
    assert {o.status for o in report.outcomes} == {"released"}
    assert not any("ledger" in o.rules for o in report.outcomes)
    # the same cohort in a step that is not summed is still refused there
    with pytest.raises(fh.DisclosureError):
        fed.combat("cohort", ["age", "time"], where="age >= 70 and age < 70.5")


def three_patients_near_50() -> dict[str, dict[str, pd.DataFrame]]:
    """Two sites, each with exactly three patients aged in [50, 50.4)."""
    tables = {}
    for i, site in enumerate(["a", "b"]):
        df = rare_cohort(20 + i, 150)
        df["age"] = np.where(df["age"].between(50, 50.4), 49.0, df["age"])
        df.loc[:2, "age"] = 50.2
        tables[site] = {"c": df}
    return tables


def test_nudging_a_threshold_to_isolate_three_patients_gives_the_same_answer():
    tables = three_patients_near_50()
    with fh.Federation.local(tables) as f:
        first = f.describe("c", columns=["age", "time"], where="age >= 50")
        # nudging the threshold past the three patients answers on the same rows
        nudged = f.describe("c", columns=["age", "time"], where="age >= 50.4")
        below = f.describe("c", columns=["age", "time"], where="age < 50.4")
        rest = f.describe("c", columns=["age", "time"], where="age < 50")
        log = f.audit_log()
    pd.testing.assert_frame_equal(first.table, nudged.table)
    pd.testing.assert_frame_equal(below.table, rest.table)
    assert (log["outcome"] != "refused").all()  # nothing refused: no refusal to read either


def test_a_filter_answers_the_same_rows_in_every_round_and_after_other_releases():
    tables = three_patients_near_50()
    with fh.Federation.local(tables) as f:
        first = f.describe("c", columns=["time"], where="age >= 50")
        f.describe("c", columns=["time"], where="age >= 50.4")  # snapped to the same rows
        f.describe("c", columns=["age"], by="risk", where="age >= 45")  # another row set
        again = f.describe("c", columns=["time"], where="age >= 50")
    pd.testing.assert_frame_equal(first.table, again.table)


@pytest.mark.parametrize("n_missing", [2, 6])
def test_crosstab_does_not_show_the_values_of_a_few_patients_missing_the_other_column(n_missing):
    # Attack: crosstab(risk, sex) against crosstab(risk, site) on the same cohort: per level of
    # risk, a difference would count the patients left out for a missing sex. Pooled, a missing
    # value is a level of its own, "(missing)", under the same rule as any cell: nobody is left
    # out (the totals agree), and its cells are shown only when they hold k or more.
    tables = {}
    for i, site in enumerate(["a", "b"]):
        df = rare_cohort(40 + i, 200)
        df["sex"] = np.random.default_rng(i).choice(["f", "m"], len(df)).astype(object)
        df["risk"] = df["risk"].replace("rare", "mid")
        tables[site] = {"c": df}
    tables["a"]["c"].loc[: n_missing - 1, "sex"] = None
    pooled = pd.concat([t["c"] for t in tables.values()])
    policy = fh.Policy(min_cell_count=K, max_levels=40)
    with fh.Federation.local(tables, policy=policy) as f:
        by_site = f.crosstab("c", "risk", "site", margins=True)
        by_sex = f.crosstab("c", "risk", "sex", margins=True)
    assert abs(by_site.table.loc["All", "All"] - 400) <= 2
    assert abs(by_sex.table.loc["All", "All"] - 400) <= 2  # nobody left out (within 2)
    missing = by_sex.table["(missing)"].drop("All")
    truth = pooled[pooled["sex"].isna()]["risk"].value_counts()
    for level, value in missing.items():
        if pd.isna(value):
            continue
        assert abs(value - truth.get(level, 0)) <= 2 and (value == 0 or value >= K - 2)
    small = truth[(truth > 0) & (truth < K)]
    assert all(pd.isna(missing[level]) for level in small.index)
    assert by_sex.privacy.outcome("a").released and by_sex.privacy.outcome("b").released


def test_rare_category_names_never_leave_a_site(releases):
    df = rare_cohort(5, 200)
    df.loc[0, "risk"] = "patient-7731"  # a free-text slip that identifies one person
    months = {"c": {"time": {"type": "float", "unit": "months"}}}
    with fh.Federation.local(
        {"a": {"c": df}, "b": {"c": rare_cohort(6, 200)}}, columns=months
    ) as f:
        xt = f.crosstab("c", "risk", "mutation")
        f.kaplan_meier("c", "time", "event", group="risk")
    assert "patient-7731" not in xt.table.index
    for reply in releases:
        assert "patient-7731" not in repr(reply)
    assert "(other)" in xt.table.index  # counted, under a name that says nothing


def test_unrestricted_policy_still_audits(releases):
    df = rare_cohort(3, 60)
    with fh.Federation.local(
        {"a": {"c": df}, "b": {"c": df}}, policy=fh.Policy.unrestricted()
    ) as f:
        f.crosstab("c", "risk", "mutation")
        log = f.audit_log()
    assert (log["outcome"] == "released").sum() >= 2


def test_the_audit_step_sends_a_researcher_only_their_own_entries():
    """``fed.audit_log()`` (the ``audit`` step): a hand-made request gets the entries of the
    researcher it names, never another researcher's, never the site's own loads, nothing else."""
    from fedhem_kernel.protocol.messages import AUDIT_STEP, SiteRequest

    rng = np.random.default_rng(4)
    df = pd.DataFrame({"age": rng.normal(60, 10, 60), "risk": rng.choice(["a", "b"], 60)})
    with fh.Federation.local({"s": {"d": df}}, user="alice") as alice:
        alice.describe("d", ["age"], where="age > 60")
        bob = SiteRequest(
            "describe", "d", {"columns": ["age"], "by": None, "levels": None}, None, "bob"
        )
        alice.coordinator.send(bob)
        entries = alice.audit_log()
        assert set(entries["who"]) == {"alice"}
        assert "age > 60" in str(entries["parameters"].tolist())
        as_bob = alice.coordinator.send(SiteRequest(AUDIT_STEP, None, {}, None, "bob"))["s"]
        assert {e["who"] for e in as_bob.payload["entries"]} == {"bob"}
        assert not any(e["analysis"] == "load" for e in as_bob.payload["entries"])
        for bad in (0, -1, 10**9, "all", True):
            reply = alice.coordinator.send(SiteRequest(AUDIT_STEP, None, {"limit": bad}, None, "x"))
            assert reply["s"].status == "error" and reply["s"].payload is None
        # the site's own log still holds everything: loads and both researchers
        log = sites_of(alice)["s"].audit.entries()
        assert {e["who"] for e in log} >= {"alice", "bob", "site"}


def test_a_duration_without_a_unit_is_refused_not_released_in_exact_days():
    """Under a calendar grid ('1 month') a duration with no declared unit used to be coarsened to
    whole units: durations in days came out exact. Now every survival step refuses it."""
    rng = np.random.default_rng(8)
    days = pd.DataFrame(
        {
            "time": rng.integers(1, 2000, 300).astype(float),
            "event": rng.integers(0, 2, 300),
            "age": rng.normal(60, 10, 300),
            "arm": rng.choice(["a", "b"], 300),
        }
    )
    with fh.Federation.local({"a": {"d": days}, "b": {"d": days.copy()}}) as fed:
        for call in (
            lambda: fed.kaplan_meier("d", "time", "event"),
            lambda: fed.logrank("d", "time", "event", "arm"),
            lambda: fed.cox("d", "time", "event", ["age"]),
        ):
            with pytest.raises(fh.SchemaError, match="no declared unit") as info:
                call()
            assert (info.value.dataset, info.value.column) == ("d", "time")
    # a grid in the column's own unit needs none; a declared unit converts the calendar grid
    numeric = fh.Policy(time_resolution=30)
    with fh.Federation.local({"a": {"d": days}, "b": {"d": days.copy()}}, policy=numeric) as fed:
        km = fed.kaplan_meier("d", "time", "event")
        assert set(np.asarray(km.event_tables["all"].index) % 30) == {0}
    declared = {"d": {"time": {"type": "float", "unit": "days"}}}
    with fh.Federation.local({"a": {"d": days}, "b": {"d": days.copy()}}, columns=declared) as fed:
        km = fed.kaplan_meier("d", "time", "event")
        assert km.time_step == pytest.approx(30.4375)
