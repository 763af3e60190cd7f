"""Attacks on pooled crosstabs (two secure sums: crosstab/site.py, privacy/tables.py).

The coordinator is the researcher's and sees every total it is sent: the perturbed cells of the
risk round, then the exact cells it asks to be shown. Each site checks that the cells asked are
those the rule shows for the perturbed total (signed by every site, for this very request), so a
coordinator cannot ask for a small cell; margins can be had from other queries (a describe by the
row column counts each row), so no row or column keeps a single hidden cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError
from fedhem_kernel.privacy.tables import pooled_cells_shown

K = 5


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    risk = rng.choice(["low", "mid", "high"], n, p=[0.5, 0.4, 0.1])
    return pd.DataFrame(
        {
            "age": rng.normal(60, 10, n).round(1),
            "risk": risk,
            # a mutation: rare in the high-risk group, more common in the others
            "mut": np.where(rng.random(n) < np.where(risk == "high", 0.3, 0.2), "yes", "no"),
        }
    )


FRAMES = {"a": cohort(1, 160), "b": cohort(2, 100), "c": cohort(3, 70)}
POOLED = pd.concat(FRAMES.values())


@pytest.fixture
def fed():
    with fh.Federation.local({s: {"c": df} for s, df in FRAMES.items()}) as f:
        yield f


def params():
    return {
        "row": "risk",
        "col": "mut",
        "row_levels": ["high", "low", "mid"],
        "col_levels": ["no", "yes"],
    }


def risk_round(fed):
    q = Query(fed.coordinator, "crosstab", "c", who="mallory")
    return q, q.ask_sum("crosstab_risk", params())


def release(q, risk, shown, with_total=False, k=K, evidence=None):
    return q.ask_sum(
        "crosstab_cells",
        {
            **params(),
            "decided": np.asarray(shown, dtype=int).tolist(),
            "with_total": with_total,
            "k": k,
            "evidence": evidence or risk.evidence,
        },
    )


def empty_of(risk) -> np.ndarray:
    return risk.totals["occupied"] == 0


def truth() -> np.ndarray:
    table = pd.crosstab(POOLED["risk"], POOLED["mut"])
    return table.loc[["high", "low", "mid"], ["no", "yes"]].to_numpy()


def test_the_pooled_table_hides_the_small_cell_and_a_partner_for_each_margin(fed):
    xt = fed.crosstab("c", "risk", "mut", margins=True)
    exact = truth()
    assert 0 < exact[0, 1] < K + 3  # high x yes: small, or too near k to show
    table = xt.table.drop(index="All", columns="All")
    assert pd.isna(table.loc["high", "yes"])
    # every row and column with a hidden cell has at least two: the row counts a describe by
    # risk gives (and the column counts) do not pin a hidden cell
    hidden = table.isna().to_numpy()
    assert all(h != 1 for h in hidden.sum(axis=0)) and all(h != 1 for h in hidden.sum(axis=1))
    shown = ~hidden
    # counts shown are within 2 of the truth (two sites' perturbations), never small
    assert np.abs(table.to_numpy(dtype=float)[shown] - exact[shown]).max() <= 2
    # the attack: row counts from describe, minus the cells shown, leave at least two unknowns
    counts = fed.describe("c", columns=["age"], by="risk").table["count"]
    for label in ("high", "low", "mid"):
        row = table.loc[label]
        if row.isna().any():
            assert row.isna().sum() >= 2
            assert counts[(label, "age")] - row.sum() >= K - 2 * 2  # only their sum, ~>= k


def test_asking_for_a_small_cell_is_refused_at_every_site(fed):
    q, risk = risk_round(fed)
    empty = empty_of(risk)
    rule = pooled_cells_shown(risk.totals["cells"], K, 3, empty)
    greedy = rule.copy()
    greedy[0, 1] = True  # high x yes
    with pytest.raises(FedHemError):
        release(q, risk, greedy)
    assert all("crosstab_cells" in o.rules for o in q.report().outcomes if o.status != "released")
    # hiding fewer partners than the rule (a lone hidden cell, pinned by the margins) is refused
    q, risk = risk_round(fed)
    lone = (risk.totals["cells"] >= K + 3) & ~empty
    assert not np.array_equal(lone, rule)
    with pytest.raises(FedHemError):
        release(q, risk, lone)
    # a smaller k than the sites' is refused
    q, risk = risk_round(fed)
    with pytest.raises(FedHemError):
        release(q, risk, pooled_cells_shown(risk.totals["cells"], 1, 3, empty), k=1)


def test_the_rules_own_cells_are_released_within_two(fed):
    q, risk = risk_round(fed)
    shown = pooled_cells_shown(risk.totals["cells"], K, 3, empty_of(risk))
    out = release(q, risk, shown).totals["cells"]
    exact = truth()
    diff = out[:3, :2][shown[:3, :2]] - exact[shown[:3, :2]]
    assert np.abs(diff).max() <= 2 and diff.any()  # two sites' perturbations
    assert (out[~shown] == 0).all() and (out[shown] >= K - 2).all()


def rectangle_frames() -> dict[str, pd.DataFrame]:
    """Rows A, B, C by columns X, Y, Z; pooled B and C have 2 patients in each of Y and Z (a
    rectangle of four small cells: each row and column already holds two hidden cells)."""
    counts = {("A", "X"): 18, ("A", "Y"): 18, ("A", "Z"): 18, ("B", "X"): 18, ("C", "X"): 18}
    frames = {}
    for i, site in enumerate(["a", "b", "c"]):
        rows = [(r, c) for (r, c), n in counts.items() for _ in range(n // 3)]
        small = [("B", "Y"), ("B", "Z"), ("C", "Y"), ("C", "Z")]
        rows += small if i < 2 else []
        frames[site] = pd.DataFrame(rows, columns=["r", "c"])
    return frames


def test_a_grand_total_that_would_give_away_small_hidden_cells_is_refused():
    xparams = {"row": "r", "col": "c", "row_levels": ["A", "B", "C"], "col_levels": ["X", "Y", "Z"]}
    with fh.Federation.local({s: {"t": df} for s, df in rectangle_frames().items()}) as fed:
        xt = fed.crosstab("t", "r", "c", margins=True)
        assert xt.table.drop(index="All", columns="All").isna().sum().sum() == 4
        assert pd.isna(xt.table.loc["All", "All"])  # it would say the four hold 8 patients
        q = Query(fed.coordinator, "crosstab", "t", who="mallory")
        risk = q.ask_sum("crosstab_risk", xparams)
        shown = pooled_cells_shown(risk.totals["cells"], K, 3, empty_of(risk))
        request = {**xparams, "decided": shown.astype(int).tolist(), "k": K}
        with pytest.raises(FedHemError):
            q.ask_sum("crosstab_cells", {**request, "evidence": risk.evidence, "with_total": True})
        assert any("crosstab_cells" in o.rules for o in q.report().outcomes)


def test_evidence_of_another_cohort_or_table_is_refused(fed):
    q, big = risk_round(fed)
    shown = pooled_cells_shown(big.totals["cells"], K, 3, empty_of(big))
    small = Query(fed.coordinator, "crosstab", "c", where="age > 65", who="mallory")
    with pytest.raises(FedHemError):
        release(small, big, shown)
    assert any("secure_sum" in o.rules for o in small.report().outcomes)


def test_the_risk_round_is_the_same_when_asked_again_and_within_one_per_site(fed):
    _, first = risk_round(fed)
    _, again = risk_round(fed)
    np.testing.assert_array_equal(first.totals["cells"], again.totals["cells"])
    diff = first.totals["cells"][:3, :2] - truth()
    assert np.abs(diff).max() <= 3


def test_a_plain_request_for_pooled_cells_is_refused(fed):
    q = Query(fed.coordinator, "crosstab", "c", who="mallory")
    with pytest.raises(FedHemError):
        q.ask("crosstab_risk", params())


@pytest.mark.parametrize("seed", range(40))
def test_the_rule_never_leaves_a_lone_hidden_cell(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(2, 7, size=2))
    noisy = rng.integers(-3, 30, size=shape) * rng.integers(0, 2, size=shape)
    empty = np.zeros(shape, dtype=bool)
    if seed % 2:
        empty[-1, :] = True  # an empty "(other)" row
    shown = pooled_cells_shown(noisy, K, 3, empty)
    hidden = ~shown & ~empty
    assert not (shown & (noisy < K + 3)).any()
    for axis in (0, 1):
        counts = hidden.sum(axis=axis)
        lone = counts == 1
        # a lone hidden cell only where its line has no shown cell to hide with it
        for line in np.flatnonzero(lone):
            cells = shown[:, line] if axis == 0 else shown[line]
            assert not cells.any()


def moved_piece_frames() -> dict[str, pd.DataFrame]:
    """Three sites; at site c exactly 3 patients aged 70 or more carry the mutation."""
    frames = {}
    for i, site in enumerate(["a", "b", "c"]):
        rng = np.random.default_rng(90 + i)
        n = 120
        age = np.where(np.arange(n) < 40, 75.0, 50.0)
        mut = np.where(np.arange(n) % 2 == 0, "yes", "no")
        if site == "c":
            mut[:40] = "no"
            mut[:3] = "yes"
        sex = rng.choice(["f", "m"], n)
        frames[site] = pd.DataFrame({"age": age, "mut": mut, "sex": sex})
    return frames


def test_a_table_margin_against_describe_group_sizes_gives_no_small_count():
    with fh.Federation.local({s: {"c": df} for s, df in moved_piece_frames().items()}) as fed:
        fed.describe("c", columns=["age"], where="age >= 70")  # cuts the atoms
        sizes = fed.describe("c", columns=["age"], by="mut").table["count"]
        table = fed.crosstab("c", "mut", "sex", margins=True).table
    margin = table.loc["yes", "All"]
    assert not pd.isna(margin)
    # both count the same patients (their values, perturbed by the same two sites, keyed by
    # them), so the difference is 0: not the 3 patients the ledger moved at site c
    moved = int(margin) - int(sizes[("yes", "age")])
    assert moved == 0
