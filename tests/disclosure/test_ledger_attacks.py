"""Attacks on the release ledger through the public API and hand-made site messages.

Each attack combines permitted releases to single out one patient (``pid == 7``, a man, whose age
is the secret); each asserts that the releases the attacker gets are over the same rows, or differ
by at least k patients, and that nothing is refused (a refusal would be a release too). The attacks
that read one site's own summary run on sites outside secure sums (which release their own
thresholded summaries); the same attacks on pooled summaries are in test_pooled_describe_attacks.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import federation_toml, without_secure_sums
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.errors import SchemaError
from fedhem_kernel.protocol.messages import SiteRequest

K = 5
TARGET = 7
SECRET = 97.531  # the target's age


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "pid": np.arange(n),
            "age": rng.normal(60, 10, n).round(1),
            "sex": rng.choice(["F", "M"], n),
            "arm": rng.choice(["a", "b"], n),
            "time": rng.exponential(30, n).round(1),
            "event": rng.integers(0, 2, n),
        }
    )
    df.loc[TARGET, ["sex", "age"]] = ["M", SECRET]
    return df


COLUMNS = {"c": {"time": {"type": "float", "unit": "months"}, "sex": "category"}}


@pytest.fixture
def tables():
    return {"north": {"c": cohort(1, 200)}, "south": {"c": cohort(2, 150)}}


def total(res, site="north") -> tuple[int, float]:
    """n and Σ age a site released in a describe of 'age' (ungrouped)."""
    row = res.by_site.set_index("site").loc[site]
    return int(row["count"]), float(row["count"] * row["mean"])


def test_describe_by_sex_against_a_cohort_of_the_women_and_the_target(tables):
    """The issue's example: ``describe(by="sex")`` then ``where="sex == 'F' or pid == 7"``."""
    with without_secure_sums(tables, columns=COLUMNS) as fed:
        by_sex = fed.describe("c", ["age"], by="sex")
        women = by_sex.by_site.set_index(["site", "group"]).loc[("north", "F")]
        attack = fed.describe("c", ["age"], where=f"sex == 'F' or pid == {TARGET}")
    n, s = total(attack)
    assert n == int(women["count"])
    assert s == pytest.approx(float(women["count"] * women["mean"]))


def test_three_cohorts_whose_pairwise_differences_are_large_cancel_exactly(tables):
    """X ∪ Y ∪ {t}, X and Y: pairwise differences ≥ k, but the three sums would give t's age."""
    x, y = "pid >= 20 and pid < 90", "pid >= 90 and pid < 170"
    with without_secure_sums(tables, columns=COLUMNS) as fed:
        union = fed.describe("c", ["age"], where=f"({x}) or ({y}) or pid == {TARGET}")
        first = fed.describe("c", ["age"], where=x)
        second = fed.describe("c", ["age"], where=y)
    n = total(union)[0] - total(first)[0] - total(second)[0]
    s = total(union)[1] - total(first)[1] - total(second)[1]
    assert n == 0 and s == pytest.approx(0.0, abs=1e-6)


def test_the_same_rows_with_and_without_groups_differ_by_k_or_none(tables):
    """describe with and without ``by=`` when one patient has no value of the grouping column:
    the difference would be that patient alone; the ledger leaves k out together."""
    tables["north"]["c"].loc[TARGET, "arm"] = None
    with without_secure_sums(tables, columns=COLUMNS) as fed:
        plain = fed.describe("c", ["age"])
        grouped = fed.describe("c", ["age"], by="arm")
    cells = grouped.by_site.set_index("site").loc["north"]
    left_out = total(plain)[0] - int(cells["count"].sum())
    assert left_out == 0 or left_out >= K


def test_kaplan_meier_against_a_cohort_one_patient_away(tables):
    with fh.Federation.local(tables, columns=COLUMNS) as fed:
        first = fed.kaplan_meier("c", "time", "event", where="arm == 'a'")
        attack = fed.kaplan_meier("c", "time", "event", where=f"arm == 'a' or pid == {TARGET}")
    pd.testing.assert_frame_equal(first.survival_function, attack.survival_function)
    pd.testing.assert_frame_equal(first.at_risk, attack.at_risk)


def test_another_researcher_gets_the_same_rows(tables):
    """The ledger is the site's, not a researcher's: colluding researchers share it."""
    with fh.Federation.local(tables, columns=COLUMNS, user="alice") as fed:
        fed.describe("c", ["age"], where=f"pid < 100 or pid == {TARGET}")  # alice
        params = {"columns": ["age"], "by": None, "levels": None}
        bob = fed.coordinator.send(SiteRequest("describe", "c", params, "pid < 100", "bob"))
        alice = fed.coordinator.send(
            SiteRequest("describe", "c", params, f"pid < 100 or pid == {TARGET}", "alice")
        )
    assert repr(bob["north"].payload) == repr(alice["north"].payload)


def test_nothing_is_refused_for_the_ledger_and_no_message_holds_the_secret(tables, releases):
    with fh.Federation.local(tables, columns=COLUMNS) as fed:
        fed.describe("c", ["age"])
        fed.describe("c", ["age"], where=f"pid != {TARGET}")
        fed.describe("c", ["age"], where=f"pid != {TARGET} and pid != 8")
        fed.describe("c", ["age"], by="sex", where=f"pid != {TARGET}")
        log = fed.audit_log()
    assert (log["outcome"] != "refused").all()
    for reply in releases:
        assert str(SECRET) not in repr(reply)


def ledger_toml(folder, tables) -> str:
    columns = '[sites.{site}.datasets.c.columns]\ntime = { type = "float", unit = "months" }\n'
    return str(federation_toml(folder, tables, columns))


def test_the_ledger_survives_a_restart(tmp_path, tables):
    config = ledger_toml(tmp_path, tables)
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        before = fed.describe("c", ["age"], where="pid < 100")
    assert (tmp_path / "state" / "north" / "c.ledger.npz").exists()
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        attack = fed.describe("c", ["age"], where=f"pid < 100 or pid == {TARGET}")
    # the restarted site remembers the first release: the attack is answered on the same rows
    pd.testing.assert_series_equal(before.table.loc["age"], attack.table.loc["age"])


def test_a_damaged_ledger_stops_the_site_with_a_clear_error(tmp_path, tables):
    config = ledger_toml(tmp_path, tables)
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        fed.describe("c", ["age"], where="pid < 100")
    (tmp_path / "state" / "north" / "c.ledger.npz").write_bytes(b"damaged")
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        # pooled: the secure sum needs every site, so the query stops, saying why
        with pytest.raises(fh.DisclosureError, match=r"north: the release ledger"):
            fed.describe("c", ["age"], where="pid < 100")
        ex = sites_of(fed)["north"]
        with pytest.raises(SchemaError) as info:
            ex.ledger(ex.datasets["c"])
    assert (info.value.site, info.value.dataset) == ("north", "c")
