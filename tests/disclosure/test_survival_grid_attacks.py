"""Attacks on pooled survival tables ("decide, then release": analyses/common/site_grid.py).

The coordinator is the researcher's: it can send any request. A pooled table's tail (few patients
at risk) is the follow-up of single patients, so each site checks the last step it is asked to
release against the signed total of the risk round, for this very request, over sites that are
all in the release. Each attack below is made by hand, as a coordinator of one's own would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError
from fedhem_kernel.privacy.survival import grid_counts, grid_cut, grid_index

K = 5
COLUMNS = {"c": {"time": {"type": "float", "unit": "months"}}}


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = rng.exponential(20.0, n)
    censor = rng.uniform(0, 80, n)
    return pd.DataFrame(
        {
            "age": rng.normal(60, 10, n).round(1),
            "time": np.minimum(t, censor).round(2),
            "event": (t <= censor).astype(int),
        }
    )


FRAMES = {"a": cohort(1, 150), "b": cohort(2, 90), "c": cohort(3, 60)}


@pytest.fixture
def fed():
    tables = {s: {"c": df} for s, df in FRAMES.items()}
    with fh.Federation.local(tables, policy=fh.Policy(), columns=COLUMNS) as f:
        yield f


def params(**extra):
    base = {
        "duration": "time",
        "event": "event",
        "group": None,
        "levels": None,
        "grid": "1 month",
        "horizon": 120,
    }
    return {**base, **extra}


def query(fed, where=None) -> Query:
    return Query(fed.coordinator, "kaplan_meier", "c", where=where, who="mallory")


def exact_at_risk(where=None) -> np.ndarray:
    frames = [df.query(where) if where else df for df in FRAMES.values()]
    frames = [f for f in frames if len(f)]
    pooled = pd.concat(frames)
    idx = grid_index(pooled["time"].to_numpy(), 1.0, 120)
    n, _, _ = grid_counts(idx, pooled["event"].to_numpy(), np.ones(len(idx), bool), 120)
    return n


def refused_everywhere(
    q: Query, step: str, p: dict, rule: str | None = None, sites=("a", "b", "c")
) -> None:
    with pytest.raises(FedHemError):
        q.ask_sum(step, p)
    outcomes = [o for o in q.report().outcomes if o.site in sites]
    assert outcomes and all(o.status in ("refused", "error") for o in outcomes)
    if rule is not None:
        assert any(rule in o.rules for o in outcomes)


def test_the_risk_round_is_perturbed_by_at_most_one_per_site_and_the_same_when_asked_again(fed):
    q = query(fed)
    first = q.ask_sum("km_risk", params())
    again = q.ask_sum("km_risk", params())  # another sum number: new masks, same perturbation
    np.testing.assert_array_equal(first.totals["at_risk"], again.totals["at_risk"])
    diff = first.totals["at_risk"][0] - exact_at_risk()
    assert np.abs(diff).max() <= 3 and diff.any()  # perturbed, within one per site


#: The analyses that pool survival tables this way: (risk step, release step, extra parameters).
POOLED = {
    "kaplan_meier": ("km_risk", "km_grid", {}),
    "logrank": ("logrank_risk", "logrank_grid", {}),
    "cumulative_incidence": ("cif_risk", "cif_grid", {"causes": [1]}),
}


def test_averaging_the_tail_over_many_cohorts_gives_nothing(fed):
    """The tail's perturbation is keyed by the patients at risk, not by the cohort: adding
    patients who all left early (a different cohort each time) leaves the late counts' noise the
    same, so averaging many such cohorts cannot read the exact number at risk late on."""
    base = query(fed, where="age >= 55").ask_sum("km_risk", params()).totals["at_risk"][0]
    late = slice(40, 121)  # every patient added below has left by month 40
    looks = []
    for low in (30, 35, 40, 45, 50):
        extra = f"(age >= 55) or (age < {low} and time < 30)"
        looks.append(query(fed, where=extra).ask_sum("km_risk", params()).totals["at_risk"][0])
    for look in looks:
        np.testing.assert_array_equal(look[late], base[late])
    exact = exact_at_risk("age >= 55")
    assert (base[late] != exact[late]).any()  # perturbed, and averaging the looks changes nothing


@pytest.mark.parametrize("analysis", sorted(POOLED))
def test_a_cut_beyond_the_rule_is_refused(fed, analysis):
    risk_step, release_step, extra = POOLED[analysis]
    q = Query(fed.coordinator, analysis, "c", who="mallory")
    risk = q.ask_sum(risk_step, params(**extra))
    allowed = int(grid_cut(risk.totals["at_risk"], K, 3)[0])
    assert 0 < allowed < 120
    refused_everywhere(
        q,
        release_step,
        params(**extra, decided=[allowed + 1], evidence=risk.evidence),
        "survival_grid",
    )
    # the rule's own cut is released, and its last step has at least k at risk
    q2 = Query(fed.coordinator, analysis, "c", who="mallory")
    risk2 = q2.ask_sum(risk_step, params(**extra))
    out = q2.ask_sum(
        release_step, params(**extra, decided=[allowed], evidence=risk2.evidence)
    ).totals
    assert (exact_at_risk()[: allowed + 1] >= K).all()
    assert out["censored"][0, allowed:].sum() == 0  # who remains past the end is not said
    assert out["events"][0][..., allowed + 1 :].sum() == 0
    # evidence of another analysis's risk round (the same rows) does not open this one
    other = "km_risk" if risk_step != "km_risk" else "logrank_risk"
    q3 = Query(fed.coordinator, analysis, "c", who="mallory")
    foreign = q3.ask_sum(other, params())
    refused_everywhere(
        q3,
        release_step,
        params(**extra, decided=[allowed], evidence=foreign.evidence),
        "secure_sum",
    )


def test_evidence_from_a_larger_cohort_does_not_open_a_smaller_ones_tail(fed):
    q = query(fed)
    big = q.ask_sum("km_risk", params())
    cut = [int(grid_cut(big.totals["at_risk"], K, 3)[0])]
    small = query(fed, where="age >= 65")
    refused_everywhere(small, "km_grid", params(decided=cut, evidence=big.evidence), "secure_sum")
    # nor evidence of other parameters (another horizon) of the same cohort
    q3 = query(fed)
    other = q3.ask_sum("km_risk", params(horizon=119))
    refused_everywhere(q3, "km_grid", params(decided=cut, evidence=other.evidence), "secure_sum")


def test_forged_or_incomplete_evidence_is_refused(fed):
    q = query(fed)
    risk = q.ask_sum("km_risk", params())
    cut = [119]  # what a forged total of many patients at risk would allow
    replies = risk.evidence["replies"]
    # a site's reply left out: the masks do not cancel (the total would be noise)
    partial = {**risk.evidence, "replies": {s: r for s, r in replies.items() if s != "c"}}
    refused_everywhere(q, "km_grid", params(decided=cut, evidence=partial))
    # a reply whose words were changed (e.g. a huge count added): its signature fails
    q = query(fed)
    risk = q.ask_sum("km_risk", params())
    forged = {s: dict(r) for s, r in risk.evidence["replies"].items()}
    forged["a"]["masked"] = forged["a"]["masked"] + np.uint64(1000)
    refused_everywhere(
        q,
        "km_grid",
        params(decided=cut, evidence={**risk.evidence, "replies": forged}),
        "secure_sum",
    )
    # a reply signed by one site put in another's place
    q = query(fed)
    risk = q.ask_sum("km_risk", params())
    swapped = dict(risk.evidence["replies"])
    swapped["a"], swapped["b"] = swapped["b"], swapped["a"]
    refused_everywhere(
        q,
        "km_grid",
        params(decided=cut, evidence={**risk.evidence, "replies": swapped}),
        "secure_sum",
    )


def test_a_subset_sum_is_refused_by_default(fed):
    """Sums over two sets of sites difference to one site's counts: by default a site takes part
    only in sums over its whole roster."""
    q = query(fed)
    risk = q.ask_sum("km_risk", params())
    cut = [int(grid_cut(risk.totals["at_risk"], K, 3)[0])]
    q.drop("c")
    refused_everywhere(
        q,
        "km_grid",
        params(decided=cut, evidence=risk.evidence),
        "secure_sum_sites",
        sites=("a", "b"),
    )


def test_a_release_over_fewer_sites_than_the_risk_round_is_refused():
    # sites whose policy allows sums over a majority: the evidence check still refuses
    tables = {s: {"c": df} for s, df in FRAMES.items()}
    policy = fh.Policy(secure_sum_min_sites=2)
    with fh.Federation.local(tables, policy=policy, columns=COLUMNS) as fed:
        _release_over_fewer_sites(fed)


def _release_over_fewer_sites(fed):
    q = query(fed)
    risk = q.ask_sum("km_risk", params())
    cut = [int(grid_cut(risk.totals["at_risk"], K, 3)[0])]
    q.drop("c")  # the release asked of a and b only: their at-risk could be below k
    refused_everywhere(
        q, "km_grid", params(decided=cut, evidence=risk.evidence), "secure_sum", sites=("a", "b")
    )


def test_pooled_tables_are_never_released_in_the_clear_or_on_another_grid(fed):
    q = query(fed)
    with pytest.raises(FedHemError):
        q.ask("km_risk", params())  # a plain request: one site's counts, tail and all
    assert all(o.status == "refused" or o.status == "error" for o in q.report().outcomes)
    for bad in (params(grid="1 week"), params(grid=0.5), params(horizon=10**6)):
        with pytest.raises(FedHemError):
            query(fed).ask_sum("km_risk", bad)
    # a coarser grid than the sites' own is fine (sites with different grids pool on it)
    coarse = query(fed).ask_sum("km_risk", params(grid="3 months", horizon=40))
    assert coarse.totals["at_risk"].shape == (1, 41)


def test_per_site_tables_are_refused_where_counts_are_pooled(fed):
    """A site that takes part in secure sums gives no table of its own counts: against the pooled
    table, the other sites' tables would give away its small counts by difference."""
    for step, p in (
        ("km_tables", {"duration": "time", "event": "event", "group": None, "levels": None}),
        (
            "crosstab",
            {"row": "event", "col": "event", "row_levels": ["0", "1"], "col_levels": None},
        ),
    ):
        q = Query(fed.coordinator, "kaplan_meier", "c", who="mallory")
        with pytest.raises(FedHemError):
            q.ask(step, p)
        assert {rule for o in q.report().outcomes for rule in o.rules} == {"pooled_only"}


def test_a_continuous_column_cut_into_bins_of_the_coordinators_choosing_is_refused(fed):
    """DP mode's Cox cuts a number into bins (``strata_bins``); outside DP mode a continuous
    column never groups, so bins around a target's age (a stratum of one) are refused by every
    site before any count."""
    q = query(fed)
    binned = params(
        strata=["age"], strata_levels=[["0", "1", "2"]], strata_bins=[[0, 70, 70.2, 120]]
    )
    refused_everywhere(q, "km_risk", binned)
    assert query(fed).ask_sum("km_risk", params()).totals["at_risk"][0][0] > 0  # plain: answered
