"""Attacks on the pooled Cox fit (secure sums: cox/site_pooled.py, cox/combine_pooled.py).

The coordinator is the researcher's and sees every total it is sent: the setup round's perturbed
counts, then per Newton iteration the likelihood, gradient and Hessian the sites evaluate from
the per-block risk-set sums they sealed (a total only they can open). Each site checks the blocks
against the setup round's signed total (at least k patients surely leave each block; a block's
own event sums only where it surely holds k events), derives the centre and scale itself, walks
the Newton path itself (β is not a parameter), and refuses a covariate that singles out a few
patients over the sites.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.analyses.cox import BLOCK_COUNTS, time_blocks
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError

K = 5
COLUMNS = {"c": {"time": {"type": "float", "unit": "months"}}}
SIZES = {"big": 300, "mid": 150, "small": 60}


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 12, n).round(1)
    time = rng.exponential(40 * np.exp(-0.03 * (age - 60)))
    censor = rng.uniform(0, 100, n)
    return pd.DataFrame(
        {
            "age": age,
            "mutation": (rng.random(n) < 0.3).astype(int),
            "time": np.minimum(time, censor).round(2),
            "event": (time <= censor).astype(int),
        }
    )


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    return {s: cohort(i, n) for i, (s, n) in enumerate(SIZES.items())}


def federation(tables) -> fh.Federation:
    datasets = {s: {"c": df} for s, df in tables.items()}
    return fh.Federation.local(datasets, policy=fh.Policy(), columns=COLUMNS)


def base(**extra) -> dict:
    return {
        "duration": "time",
        "event": "event",
        "covariates": ["age", "mutation"],
        "categorical": {},
        "strata": None,
        "strata_levels": None,
        "ties": "efron",
        "fit": "f" * 32,
        "grid": "1 month",
        "horizon": 600,
        **extra,
    }


def setup_round(fed, **extra):
    q = Query(fed.coordinator, "cox", "c", who="mallory")
    return q, q.ask_sum("cox_pool_setup", base(**extra))


def fresh(fed) -> Query:
    return Query(fed.coordinator, "cox", "c", who="mallory")


def rule_blocks(total) -> list[list[int]]:
    m = len(total.sites)
    rows = range(len(total.totals["events_below"]))
    return [time_blocks({f: total.totals[f][s] for f in BLOCK_COUNTS}, K, m)[0] for s in rows]


def sums(q, total, blocks, path=None, **extra):
    return q.ask_sum(
        "cox_pool_sums",
        {
            **base(**extra),
            "decided": blocks,
            "k": K,
            "evidence": total.evidence,
            "path": path,
        },
    )


def evaluated(total) -> dict:
    """The evaluation every site sent (the same at each)."""
    seen = [shared["evaluated"] for shared in total.shared.values()]
    assert all(v == seen[0] for v in seen)
    return seen[0]


def test_no_site_sum_in_the_clear_and_no_block_sum_for_the_researcher(tables, releases, totals):
    """Every reply is masked; a Cox round's per-block sums are sealed: the coordinator's total
    has none of them, and the words it adds up are not the sums (noise to it); per iteration
    it learns one likelihood, one gradient and one Hessian, whatever the number of blocks."""
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "mutation"])
    secure = [r for r in releases if r.payload and "secure" in r.payload]
    assert secure and all(
        set(r.payload) - {"evaluated", "expected", "concordance"} == {"secure"} for r in secure
    )
    rounds = [t for step, t in totals if step == "cox_pool_sums"]
    assert len(rounds) >= 3 and all(not t.totals for t in rounds)
    for t in rounds[1:]:
        got = evaluated(t)
        assert set(got) == {"beta", "ll", "grad", "hess", "next"}
        assert np.shape(got["grad"]) == (2,) and np.shape(got["hess"]) == (2, 2)
    # the first round sealed the sums at β = 0: S0 of the first block is the number at risk
    # there, a count; the words the coordinator adds up decode to noise
    from fedhem_kernel.protocol.secure_sum import add_up, decode_fields, parse_layout

    replies = rounds[0].evidence["replies"]
    layout = parse_layout(next(iter(replies.values()))["layout"])
    opened = decode_fields(layout, add_up([r["masked"] for r in replies.values()]), sealed=True)
    n = sum(len(df) for df in tables.values())
    s0 = np.asarray(opened["S0"])
    assert not np.allclose(s0, np.round(s0)) or np.abs(s0).max() > 1e6 * n
    assert any("time blocks" in n for n in res.privacy.notes)


def test_every_block_the_sites_seal_covers_k(tables):
    """The blocks the sites sum over: two consecutive risk sets differ by at least k patients
    (counted on the pooled rows)."""
    pooled = pd.concat(tables.values(), ignore_index=True)
    with federation(tables) as fed:
        _, total = setup_round(fed)
    starts = np.asarray(rule_blocks(total)[0])
    step = np.ceil(np.round(pooled["time"].to_numpy(), 9))
    at_risk = np.array([(step >= s).sum() for s in starts])
    assert len(starts) >= 5 and (np.diff(-at_risk) >= K).all()


def test_the_one_hot_attack_is_refused_before_any_sum_and_at_every_site(tables, totals):
    for df in tables.values():
        df["flag"] = 0
        df.loc[7, "flag"] = 1  # one patient per site: 3 over the sites
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["age", "flag"])
        assert info.value.rule == "min_cell_count" and info.value.column == "flag"
        assert "singles out" in str(info.value)
        assert not [t for step, t in totals if step == "cox_pool_sums"]
        # a coordinator that skips its own check meets every site's
        q, total = setup_round(fed, covariates=["age", "flag"])
        with pytest.raises(FedHemError):
            sums(q, total, rule_blocks(total), covariates=["age", "flag"])
        refused = [o for o in q.report().outcomes if not o.released]
        assert len(refused) == 3 and all("min_cell_count" in o.rules for o in refused)


def test_a_numeric_covariate_zero_for_all_but_a_few_is_refused(tables):
    for df in tables.values():
        df["marker"] = 0.0
    tables["big"].loc[[3, 9], "marker"] = [123.45, 2.5]
    with federation(tables) as fed:
        with pytest.raises(fh.DisclosureError) as info:
            fed.cox("c", "time", "event", ["age", "marker"])
    assert info.value.column == "marker" and "123.45" not in str(info.value)


def test_blocks_finer_than_the_rule_are_refused_at_every_site(tables):
    with fh.Federation.local(
        {s: {"c": df} for s, df in tables.items()}, policy=fh.Policy(), columns=COLUMNS
    ) as fed:
        q, total = setup_round(fed)
        blocks = rule_blocks(total)
        # every grid step its own block: a risk-set difference of one patient
        fine = [list(range(max(b) + 1)) for b in blocks]
        with pytest.raises(FedHemError):
            sums(q, total, fine)
        refused = [o for o in q.report().outcomes if not o.released]
        assert len(refused) == 3 and all("cox_blocks" in o.rules for o in refused)
        # a smaller k than the sites' is refused too; the rule's own blocks are answered
        q, total = setup_round(fed)
        with pytest.raises(FedHemError):
            q.ask_sum(
                "cox_pool_sums",
                {
                    **base(),
                    "decided": [
                        time_blocks({f: total.totals[f][0] for f in BLOCK_COUNTS}, 1, 3)[0]
                    ],
                    "k": 1,
                    "evidence": total.evidence,
                    "path": None,
                },
            )
        q, total = setup_round(fed)
        assert evaluated(sums(q, total, rule_blocks(total)))["next"] == [0.0, 0.0]


def test_the_sites_take_no_centre_scale_or_coefficients(tables):
    """A centre and scale, or coefficients, of the coordinator's choosing are not parameters of
    the step: each site derives the first from the setup round and walks the Newton path itself."""
    with federation(tables) as fed:
        q, total = setup_round(fed)
        blocks = rule_blocks(total)
        for extra in (
            {"center": [0.0, 0.0], "scale": [1e-6, 1.0]},
            {"beta": [25.0, 0.0]},
            {"beta": [0.0, 0.0]},
        ):
            q = fresh(fed)
            with pytest.raises(FedHemError):
                q.ask_sum(
                    "cox_pool_sums",
                    {
                        **base(),
                        "decided": blocks,
                        "k": K,
                        "evidence": total.evidence,
                        "path": None,
                        **extra,
                    },
                )
            refused = [o for o in q.report().outcomes if not o.released]
            assert len(refused) == 3, extra


def test_a_filter_down_to_a_few_patients_meets_no_refusal(tables):
    """Each site's cohort is empty (fewer than k there): it adds zeros, and the coordinator
    finds too few patients for any block, without a refusal that would tell who has them."""
    with federation(tables) as fed:
        with pytest.raises(fh.ParameterError, match="too few patients"):
            fed.cox("c", "time", "event", ["age"], where="age > 95")
        log = fed.audit_log()
    assert (log["outcome"] != "refused").all()


def test_a_site_in_secure_sums_gives_no_cox_sums_of_its_own(tables):
    """Its own sums at any β, against the pooled block totals, would give another site's few
    patients of a block: the per-site protocol (and strata="site", each site's own risk sets)
    is refused (pooled_only); the pooled fit's concordance and PH test are pooled."""
    with federation(tables) as fed:
        q = fresh(fed)
        design = {k: v for k, v in base().items() if k not in ("strata_levels", "grid", "horizon")}
        with pytest.raises(fh.DisclosureError) as info:
            q.ask("cox_setup", design)
        assert set(info.value.rule.split(",")) == {"pooled_only"}
        with pytest.raises(fh.DisclosureError, match="pooled"):
            fed.cox("c", "time", "event", ["age"], strata="site")
        res = fed.cox("c", "time", "event", ["age", "mutation"])
    assert 0.5 < res.concordance_index_ < 0.8
    assert any("only C and its bounds were released" in n for n in res.notes)
    assert set(res.ph_tests) == {"rank", "km", "identity", "log"}


def path_rules(q) -> set[str]:
    return {r for o in q.report().outcomes if not o.released for r in o.rules}


def test_the_sites_walk_the_newton_path_and_open_only_their_own_fits_rounds(tables):
    """The multiset attack needed the sums of a block's risk set at many β of the coordinator's
    choosing; now no block sum reaches it at all, and no β is its to choose. The sites open a
    sealed total only as the next round of the same fit: not twice, not another fit's, not
    without it."""

    def refused(total, blocks, **extra) -> set[str]:
        q = fresh(fed)  # a query whose sites all refused is over: a new one per attempt
        with pytest.raises(FedHemError):
            sums(q, total, blocks, **extra)
        return path_rules(q)

    with federation(tables) as fed:
        _, total = setup_round(fed, fit="b" * 32)
        blocks = rule_blocks(total)
        first = sums(fresh(fed), total, blocks, fit="b" * 32)
        assert evaluated(first) == {"beta": None, "next": [0.0, 0.0]}
        # a later round needs the previous round's replies (and a fit that started)
        assert refused(total, blocks, fit="c" * 32, path={"evidence": first.evidence})
        assert refused(total, blocks, fit="b" * 32, path={}) == {"cox_newton_path"}
        # ... not another fit's replies (signed for that one)
        _, total_c = setup_round(fed, fit="c" * 32)
        other = sums(fresh(fed), total_c, blocks, fit="c" * 32)
        assert refused(total, blocks, fit="b" * 32, path={"evidence": other.evidence})
        # ... and tampered replies: another site's envelope, or masked words changed
        forged = copy.deepcopy(first.evidence)
        a, b = sorted(forged["replies"])[:2]
        envelopes = forged["replies"][a]["envelopes"]
        envelopes[b] = forged["replies"][b]["envelopes"][a]
        assert refused(total, blocks, fit="b" * 32, path={"evidence": forged})
        forged = copy.deepcopy(first.evidence)
        forged["replies"][a]["masked"] = forged["replies"][a]["masked"] + np.uint64(1)
        assert refused(total, blocks, fit="b" * 32, path={"evidence": forged})
        # the previous round's replies: answered, evaluated at β = 0, the next β sealed
        second = sums(fresh(fed), total, blocks, fit="b" * 32, path={"evidence": first.evidence})
        got = evaluated(second)
        assert got["beta"] == [0.0, 0.0] and got["next"] != [0.0, 0.0]
        # the same replies again (a second look at the same sums): refused, the path moved on
        assert refused(total, blocks, fit="b" * 32, path={"evidence": first.evidence}) == {
            "secure_sum"  # signed for a round that is no longer the fit's last
        }
        third = sums(fresh(fed), total, blocks, fit="b" * 32, path={"evidence": second.evidence})
        assert evaluated(third)["beta"] == got["next"]


def test_a_refit_walks_the_same_path_and_gives_nothing_new(tables, totals):
    """Restarting the fit (a new fit id) walks the same β from 0: the same evaluations again."""
    with federation(tables) as fed:
        one = fed.cox("c", "time", "event", ["age", "mutation"])
        n_first = sum(1 for step, _ in totals if step == "cox_pool_sums")
        two = fed.cox("c", "time", "event", ["age", "mutation"])
    rounds = [t for step, t in totals if step == "cox_pool_sums"]
    assert len(rounds) == 2 * n_first
    for a, b in zip(rounds[1:n_first], rounds[n_first + 1 :], strict=True):
        assert np.allclose(evaluated(a)["hess"], evaluated(b)["hess"], rtol=1e-12)
    assert np.allclose(one.params_, two.params_, rtol=1e-12)


def test_blocks_cut_another_way_are_refused_after_the_first_fit(tables):
    """Two partitions of the same risk sets (another k, a coarser grid, another horizon) would
    give risk-set sums at two nearby starts; their difference at β = 0, the covariates of the
    few patients leaving between them. Every pooled fit on a dataset cuts its blocks as the
    first one did."""
    with federation(tables) as fed:
        fed.cox("c", "time", "event", ["age", "mutation"])  # the plan: k = 5, 1 month, 600
        # another k: the setup round (no k in it) is answered, the blocks are not
        _, total = setup_round(fed)
        m = len(total.sites)
        rows = range(len(total.totals["events_below"]))
        counts = [{f: total.totals[f][s] for f in BLOCK_COUNTS} for s in rows]
        blocks = [time_blocks(c, K + 1, m)[0] for c in counts]
        q = fresh(fed)
        with pytest.raises(FedHemError):
            q.ask_sum(
                "cox_pool_sums",
                {
                    **base(),
                    "decided": blocks,
                    "k": K + 1,
                    "evidence": total.evidence,
                    "path": None,
                },
            )
        assert path_rules(q) == {"cox_blocks"}
        # another grid or horizon: refused from the setup round on
        for extra in ({"grid": "2 months", "horizon": 300}, {"horizon": 599}):
            q = fresh(fed)
            with pytest.raises(FedHemError):
                q.ask_sum("cox_pool_setup", base(**extra))
            assert path_rules(q) == {"cox_blocks"}, extra


def test_the_ph_round_weights_are_the_sites_own_and_constant_over_k_events(tables):
    """The proportional-hazards round releases Σ w·z over the events; weights of the
    coordinator's choosing (one block at a time) would give a block's few events' covariates.
    The sites derive the weights themselves and they are constant over groups of blocks that
    hold at least k events (counted here on the rows)."""
    from fedhem_kernel.analyses.cox import ph_weights

    pooled = pd.concat(tables.values(), ignore_index=True)
    with federation(tables) as fed:
        q, total = setup_round(fed)
        blocks = rule_blocks(total)
        asked = {**base(), "decided": blocks, "k": K, "evidence": total.evidence}
        with pytest.raises(FedHemError):  # no test before the fit has evaluated a round
            fresh(fed).ask_sum("cox_pool_ph", {**asked, "path": {"evidence": total.evidence}})
        first = sums(fresh(fed), total, blocks)
        sums(fresh(fed), total, blocks, path={"evidence": first.evidence})
        path = {"evidence": first.evidence}
        with pytest.raises(FedHemError):  # weights are not a parameter
            fresh(fed).ask_sum("cox_pool_ph", {**asked, "path": path, "weights": [[1.0, 0, 0, 0]]})
        released = fresh(fed).ask_sum("cox_pool_ph", {**asked, "path": path})
    assert np.shape(released.totals["ph"]) == (4, 2)
    assert all(np.shape(s["expected"]) == (4, 2) for s in released.shared.values())
    weights, _ = ph_weights(total.totals, blocks, 1.0, K, len(total.sites))
    starts = np.asarray(blocks[0])
    step = np.ceil(np.round(pooled["time"].to_numpy(), 9))
    block = np.searchsorted(starts, step, side="right") - 1
    events = np.bincount(block[pooled["event"].to_numpy() == 1], minlength=len(starts))
    w = weights[0]
    _, group = np.unique(w, axis=0, return_inverse=True)
    per_group = np.bincount(group.ravel(), weights=events)
    assert len(per_group) >= 2 and (per_group >= K).all()


def attacker_view(totals) -> np.ndarray:
    """Every number the coordinator learned from the Cox rounds, and what it would derive: with
    a block's risk-set sums at β = 0 (the protocol before sealing), their raw covariate sums
    S1·scale + S0·centre."""
    from fedhem_kernel.analyses.cox import pooled_scaling

    out: list[np.ndarray] = []
    center = scale = None
    for step, total in totals:
        if step == "cox_pool_setup":
            center, scale = pooled_scaling(total.totals)
        if not step.startswith("cox_pool"):
            continue
        out += [np.ravel(np.asarray(v, dtype=float)) for v in total.totals.values()]
        if "S1" in total.totals and center is not None:
            s0 = np.asarray(total.totals["S0"])[:, None]
            out.append(np.ravel(np.asarray(total.totals["S1"]) * scale + s0 * center))
        for shared in total.shared.values():
            for value in shared.get("evaluated", {}).values():
                if value is not None:
                    out.append(np.ravel(np.asarray(value, dtype=float)))
    return np.concatenate(out)


def test_two_cohorts_an_atom_apart_give_no_sum_of_its_few_members_at_risk(tables, totals):
    """The cross-cohort attack: fit all patients, then all but the ≥ k aged 40 or less (a ledger
    atom). Where the two fits' blocks start at the same step, the difference of their risk-set
    sums at β = 0 was the covariate sum of the atom's members still at risk there, fewer than k
    at late steps. Now no block's sum reaches the researcher: no difference of two numbers it
    learned from the two fits is such a sum."""
    pooled = pd.concat(tables.values(), ignore_index=True)
    with federation(tables) as fed:
        fed.cox("c", "time", "event", ["age", "mutation"])
        starts_a = set(rule_blocks(next(t for s, t in totals if s == "cox_pool_setup"))[0])
        seen_a = attacker_view(totals)
        totals.clear()
        fed.cox("c", "time", "event", ["age", "mutation"], where="age > 40")
        starts_b = set(rule_blocks(next(t for s, t in totals if s == "cox_pool_setup"))[0])
        seen_b = attacker_view(totals)
    atom = pooled[pooled["age"] <= 40]
    step = np.ceil(np.round(atom["time"].to_numpy(), 9))
    targets = []
    for start in sorted(starts_a & starts_b):
        members = atom[step >= start]
        if 0 < len(members) < K:
            targets.append(members["age"].sum())  # (ages to 0.1: no whole number by chance)
    assert len(targets) >= 2  # the attack has something to find
    differences = np.subtract.outer(seen_a, seen_b).ravel()
    for target in targets:
        assert not np.isclose(differences, target, rtol=1e-9, atol=1e-9).any(), target


def test_the_concordance_rounds_release_c_alone_in_order_and_at_the_fits_own_beta(tables, totals):
    """Harrell's C compares patients across sites: the sites build the table of events and
    censored per grid step and score bin on sealed totals and release C and its bounds only.
    The stages go in order, each on the previous one's signed replies; the coefficients are the
    fit's own (not a parameter)."""
    with federation(tables) as fed:
        res = fed.cox("c", "time", "event", ["age", "mutation"])
        rounds = [t for step, t in totals if step == "cox_pool_concordance"]
        assert len(rounds) == 3 and all(not t.totals for t in rounds)
        assert [set(s) for s in rounds[-1].shared.values()] == [{"concordance"}] * 3
        assert not any(s for s in rounds[0].shared.values())
        plan = res.fit.pooled_plan[0]

        def ask(stage, path=None, **extra):
            q = fresh(fed)
            asked = {**plan, "stage": stage, "path": path, **extra}
            return q, q.ask_sum("cox_pool_concordance", asked)

        for extra in ({"beta": [5.0, 0.0]}, {"edges": [0.0, 1.0]}):
            with pytest.raises(FedHemError):
                ask("moments", **extra)
        first = ask("moments")[1]
        with pytest.raises(FedHemError):  # the value straight from the moments
            ask("value", {"evidence": first.evidence})
        # the table on the moments' replies, then the value on the table's: the same C again
        table = ask("table", {"evidence": first.evidence})[1]
        with pytest.raises(FedHemError):  # a second table on the same moments: the chain moved
            ask("table", {"evidence": first.evidence})
        value = ask("value", {"evidence": table.evidence})[1]
    got = next(iter(value.shared.values()))["concordance"]
    assert got[0] == pytest.approx(res.concordance_index_, abs=1e-12)
