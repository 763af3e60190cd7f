"""Attacks on pooled summaries (three secure sums: describe/site.py).

The coordinator is the researcher's and sees every total it is sent: the perturbed counts of the
risk round, then the counts, weighted means and mean squares of the cells it asks to be shown,
then the perturbed numbers below each edge of a histogram. Each site checks that the cells asked
are those the rule shows for the risk round's total (signed by every site, for this very request)
and derives the histogram's edges itself from the moments round's total. Sums are over the rows
the release ledger allows (two cohorts or groups differ by none or by at least k patients);
counts are of the patients' values, perturbed the same way whenever the same patients are
counted, so a summary's count and a table's margin of the same patients are the same number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.analyses.describe import shown_cells
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError

K = 5
TARGET = 7
SECRET = 97.531  # the target's age
STATS = ["count", "mean", "std", "25%", "50%", "75%"]


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "pid": np.arange(n) + 1000 * seed,
            "age": rng.normal(60, 10, n).round(1),
            "sex": rng.choice(["F", "M"], n),
            # a rare level: 5 patients at one site (named there), none elsewhere
            "grp": rng.choice(["a", "b"], n),
            "arm": rng.choice(["x", "y"], n),
        }
    )
    df.loc[TARGET, ["sex", "age"]] = ["M", SECRET]
    return df


def tables() -> dict:
    north, south = cohort(0, 200), cohort(1, 150)
    north.loc[20:24, "grp"] = "rare"
    return {"north": {"c": north}, "south": {"c": south}}


COLUMNS = {"c": {"sex": "category", "grp": "category", "arm": "category"}}


@pytest.fixture
def fed():
    with fh.Federation.local(tables(), columns=COLUMNS) as f:
        yield f


def row(result, index) -> pd.Series:
    return result.table.loc[index, STATS].astype(float)


def test_describe_by_sex_against_a_cohort_of_the_women_and_the_target(fed, releases):
    """The issue's example, pooled: the cohort "the women or the target" is answered on the
    women (the target alone would be a piece of fewer than k): the same count, mean, SD and
    quartiles as the women's group, to the last digit; nothing is refused."""
    women = row(fed.describe("c", ["age"], by="sex"), ("F", "age"))
    attack = row(fed.describe("c", ["age"], where=f"sex == 'F' or pid == {TARGET}"), "age")
    pd.testing.assert_series_equal(attack, women, check_names=False, rtol=1e-12)
    assert str(SECRET) not in repr([r.payload for r in releases])


def test_three_cohorts_whose_pairwise_differences_are_large_give_the_union(fed):
    """X ∪ Y ∪ {t}, X and Y: the union is answered on X ∪ Y, exactly as X ∪ Y asked directly."""
    x, y = "pid >= 20 and pid < 90", "pid >= 90 and pid < 170"
    union = row(fed.describe("c", ["age"], where=f"({x}) or ({y}) or pid == {TARGET}"), "age")
    fed.describe("c", ["age"], where=x)
    fed.describe("c", ["age"], where=y)
    direct = row(fed.describe("c", ["age"], where=f"({x}) or ({y})"), "age")
    pd.testing.assert_series_equal(union, direct, check_names=False, rtol=1e-12)


def test_a_group_of_a_few_at_one_site_is_hidden_with_a_partner(fed):
    """'rare' has 5 patients (all at north): its perturbed count is below k + 2, so it is hidden,
    and with it another group (else the ungrouped count minus the shown groups would give it)."""
    d = fed.describe("c", ["age"], by="grp")
    counts = d.table["count"]
    assert counts.isna().sum() >= 2 and pd.isna(counts[("rare", "age")])
    assert d.by_site.empty  # no site's own numbers were seen


def test_a_summary_count_is_the_tables_margin_of_the_same_patients(fed):
    """The same patients give the same perturbed count in a summary and in a table: a group's
    count against a crosstab's margin says nothing (not the few patients a ledger moved)."""
    fed.describe("c", ["age"], where="age >= 70")  # cuts the atoms
    sizes = fed.describe("c", ["age"], by="sex").table["count"]
    margins = fed.crosstab("c", "sex", "arm", margins=True).table["All"]
    for sex in ("F", "M"):
        assert int(margins[sex]) == int(sizes[(sex, "age")])


def fresh(fed) -> Query:
    """A new query (a query whose round was refused asks those sites nothing more)."""
    return Query(fed.coordinator, "describe", "c", who="mallory")


def risk_round(fed):
    q = fresh(fed)
    params = {"columns": ["age"], "by": "grp", "levels": ["a", "b", "rare"]}
    return q, params, q.ask_sum("describe_risk", params)


def test_asking_for_a_hidden_group_is_refused_at_every_site(fed):
    q, params, risk = risk_round(fed)
    empty = risk.totals["occupied"] == 0
    rule = shown_cells(risk.totals["counts"], empty, K, 2)
    assert not rule[2, 0]  # 'rare' is hidden
    greedy = rule.copy()
    greedy[:, 0] = True
    with pytest.raises(FedHemError):
        q.ask_sum(
            "describe_moments",
            {**params, "decided": greedy.astype(int).tolist(), "k": K, "evidence": risk.evidence},
        )
    refused = [o for o in q.report().outcomes if o.status != "released"]
    assert refused and all("describe_cells" in o.rules for o in refused)
    # a smaller k than the sites' (a rule that would show the group) is refused too
    q, params, risk = risk_round(fed)
    low = shown_cells(risk.totals["counts"], risk.totals["occupied"] == 0, 1, 2)
    assert low[2, 0]
    with pytest.raises(FedHemError):
        q.ask_sum(
            "describe_moments",
            {**params, "decided": low.astype(int).tolist(), "k": 1, "evidence": risk.evidence},
        )


def test_a_histogram_needs_the_moments_round_of_the_same_request(fed):
    """The histogram's edges come from the moments round's signed total: a coordinator cannot
    place an edge beside one patient by forging or swapping that total."""
    q, params, risk = risk_round(fed)
    shown = shown_cells(risk.totals["counts"], risk.totals["occupied"] == 0, K, 2)
    release = {**params, "decided": shown.astype(int).tolist(), "k": K, "evidence": risk.evidence}
    moments = q.ask_sum("describe_moments", release)
    # the genuine total is answered
    below = q.ask_sum("describe_histogram", {**release, "moments_evidence": moments.evidence})
    assert below.totals["below"].shape == (3, 1, 41)
    # the moments of another cohort's request
    other = Query(fed.coordinator, "describe", "c", who="mallory", where="age >= 50")
    o_risk = other.ask_sum("describe_risk", params)
    o_shown = shown_cells(o_risk.totals["counts"], o_risk.totals["occupied"] == 0, K, 2)
    o_release = {
        **params,
        "decided": o_shown.astype(int).tolist(),
        "k": K,
        "evidence": o_risk.evidence,
    }
    o_moments = other.ask_sum("describe_moments", o_release)
    with pytest.raises(FedHemError):
        fresh(fed).ask_sum(
            "describe_histogram", {**release, "moments_evidence": o_moments.evidence}
        )
    # the genuine moments with other cells than they were asked for (a hidden group shown)
    widened = np.ones_like(shown, dtype=int).tolist()
    with pytest.raises(FedHemError):
        fresh(fed).ask_sum(
            "describe_histogram",
            {**release, "decided": widened, "moments_evidence": moments.evidence},
        )
    # a forged total: one reply's masked words changed (its signature fails)
    forged = {s: dict(r) for s, r in moments.evidence["replies"].items()}
    forged["north"]["masked"] = forged["north"]["masked"] + np.uint64(1000)
    forged = {**moments.evidence, "replies": forged}
    with pytest.raises(FedHemError):
        fresh(fed).ask_sum("describe_histogram", {**release, "moments_evidence": forged})


def test_pooled_steps_are_never_answered_in_the_clear_and_per_site_summaries_are_refused(fed):
    q = Query(fed.coordinator, "describe", "c", who="mallory")
    params = {"columns": ["age"], "by": None, "levels": None}
    for step in ("describe_risk", "describe"):
        with pytest.raises(FedHemError):
            q.ask(step, params)


def test_n_sites_counts_the_sites_with_anyone_in_the_cell(fed):
    """The risk round's total says how many sites have anyone in a cell: a cohort at one site
    only is summed over both (the other adds zeros) and reported as one site."""
    one = fed.describe("c", ["age"], where="pid < 1000").table  # north's patients only
    both = fed.describe("c", ["age"]).table
    assert int(one.loc["age", "n_sites"]) == 1 and int(both.loc["age", "n_sites"]) == 2
    assert abs(int(one.loc["age", "count"]) - 200) <= 2
