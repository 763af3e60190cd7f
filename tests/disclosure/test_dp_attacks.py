"""Attacks on DP mode: averaging the noise away, skipping it with hand-made messages, fresh budgets
under other names, and restarting the site.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import federation_toml
from dp_fields import POLICY, secure_block
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.errors import DisclosureError, error_from_dict
from fedhem_kernel.privacy.dp import rho_of, scale_for
from fedhem_kernel.protocol.messages import SiteRequest


def tables(n: int = 200):
    rng = np.random.default_rng(3)
    return {
        f"s{i}": {
            "d": pd.DataFrame({"a": rng.choice(["x", "y"], n), "b": rng.choice(["u", "v"], n)})
        }
        for i in range(3)
    }


#: DP mode names only declared levels
AB = {
    "d": {
        "a": {"type": "category", "levels": ["x", "y"]},
        "b": {"type": "category", "levels": ["u", "v"]},
    }
}


def test_averaging_the_noise_away_runs_out_of_budget():
    with fh.Federation.local(tables(), policy=POLICY, columns=AB) as fed:
        answers = []
        with pytest.raises(DisclosureError) as info:
            for _ in range(100):
                answers.append(fed.crosstab("d", "a", "b").table.to_numpy(dtype=float))
    assert len(answers) == 5  # 0.25 / 0.05: then every site refuses
    assert "budget" in info.value.rule
    # what the five answers allow: an average with noise of scale 3.16 / √5, not the counts
    spread = np.std(answers, axis=0)
    assert spread.max() > 0


def test_other_names_do_not_give_fresh_budgets_beyond_the_sites_cap():
    params = None
    with fh.Federation.local(tables(), policy=POLICY, user="alice", columns=AB) as fed:
        for _ in range(5):
            fed.crosstab("d", "a", "b")
        for name in ("bob", "carol", "dave", "erin", "frank", "grace"):
            fed.user = name  # a researcher who claims other names (until requests are signed)
            try:
                fed.crosstab("d", "a", "b")
            except DisclosureError as exc:
                params = exc
                break
    assert params is not None and "all researchers together" in str(params)


CROSSTAB = {"row": "a", "col": "b", "row_levels": ["x", "y"], "col_levels": ["u", "v"]}


def test_hand_made_requests_cannot_skip_the_noise():
    with fh.Federation.local(tables(), policy=POLICY, columns=AB) as fed:
        site = sites_of(fed)["s0"]
        sites = ["s0", "s1", "s2"]
        plain = site.handle(SiteRequest("crosstab", "d", CROSSTAB, None, "mallory", "q"))
        assert plain.status == "refused" and plain.error["rule"] == "dp"
        assert plain.payload is None
        own = scale_for(POLICY.dp_rho)
        for scale in (None, own / 2, 1e-9):
            block = secure_block(fed, sites, scale)
            reply = site.handle(SiteRequest("crosstab", "d", CROSSTAB, None, "mallory", "q", block))
            err = error_from_dict(reply.error)
            assert reply.payload is None and err.rule == "dp", scale
        # a larger scale is fine, and costs less: OpenDP's map of that scale
        block = secure_block(fed, sites, 4 * own)
        reply = site.handle(SiteRequest("crosstab", "d", CROSSTAB, None, "mallory", "q", block))
        assert reply.status == "released"
        assert reply.budget["rho_spent"] == pytest.approx(rho_of(4 * own))
        # nothing was charged for the refused requests
        assert site.budget.spent("mallory", "d").researcher == pytest.approx(rho_of(4 * own))


def test_a_secure_reply_in_dp_mode_is_masked_noise_not_the_counts():
    with fh.Federation.local(tables(), policy=POLICY, columns=AB) as fed:
        site = sites_of(fed)["s0"]
        block = secure_block(fed, ["s0", "s1", "s2"], scale_for(POLICY.dp_rho))
        reply = site.handle(SiteRequest("crosstab", "d", CROSSTAB, None, "mallory", "q", block))
    assert set(reply.payload) == {"secure"}
    words = reply.payload["secure"]["masked"]
    assert words.dtype == np.uint64 and not (words < 10_000).any()  # masked, not small counts


def dp_toml(folder) -> str:
    policy = "[sites.{site}.policy]\ndp = true\ndp_rho = 0.05\ndp_rho_researcher = 0.1\n"
    policy += (
        "[sites.{site}.datasets.d.columns]\n"
        'a = { type = "category", levels = ["x", "y"] }\n'
        'b = { type = "category", levels = ["u", "v"] }\n'
    )
    return str(federation_toml(folder, tables(), policy))


def test_a_researchers_budget_survives_a_site_restart(tmp_path):
    config = dp_toml(tmp_path)
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        fed.crosstab("d", "a", "b")
        fed.crosstab("d", "a", "b")
    assert (tmp_path / "state" / "s0" / "budget.jsonl").exists()
    with fh.Federation.from_config(config, isolation="in-process") as fed:
        with pytest.raises(DisclosureError, match="budget"):
            fed.crosstab("d", "a", "b")


def test_refusals_quote_budgets_never_data():
    with fh.Federation.local(tables(), policy=POLICY, columns=AB) as fed:
        for _ in range(5):
            fed.crosstab("d", "a", "b")
        with pytest.raises(DisclosureError) as info:
            fed.crosstab("d", "a", "b", margins=True)
        log = fed.audit_log()
    text = str(info.value)
    assert "ρ 0.25 of 0.25" in text
    assert (log["rule"] == "budget").sum() == 3  # each site refused, and audited it


def competing(n: int = 200):
    rng = np.random.default_rng(5)
    return {
        f"s{i}": {
            "d": pd.DataFrame(
                {
                    "time": rng.uniform(0, 60, n).round(1),
                    "cause": rng.choice([0, 1, 2], n),
                    "arm": rng.choice(["a", "b"], n),
                }
            )
        }
        for i in range(3)
    }


CIF = {
    "duration": "time",
    "event": "cause",
    "group": None,
    "levels": None,
    "strata": None,
    "strata_levels": None,
    "grid": "1 month",
    "horizon": 60,
    "causes": [1, 2],
}


def test_cause_tables_in_dp_mode_leave_only_as_noised_secure_sums():
    """Competing risks: the per-site cause tables, the cause-specific event table in the clear
    or with too little noise, are all refused, and nothing is charged for them; the causes step
    names only causes with at least k events (as levels does)."""
    columns = {
        "d": {
            "time": {"type": "float", "unit": "months"},
            "cause": {"type": "int", "levels": [0, 1, 2]},
        }
    }
    with fh.Federation.local(competing(), policy=POLICY, columns=columns) as fed:
        site = sites_of(fed)["s0"]
        per_site = {k: CIF[k] for k in ("duration", "event", "group", "levels", "causes")}
        for step, params in (("cif_tables", per_site), ("cif_dp", CIF)):
            reply = site.handle(SiteRequest(step, "d", params, None, "mallory", "q"))
            assert reply.status == "refused" and reply.error["rule"] == "dp", step
        own = scale_for(POLICY.dp_rho)
        for scale in (None, own / 2):
            block = secure_block(fed, ["s0", "s1", "s2"], scale)
            reply = site.handle(SiteRequest("cif_dp", "d", CIF, None, "mallory", "q", block))
            assert reply.payload is None and reply.error["rule"] == "dp", scale
        assert site.budget.spent("mallory", "d").researcher == 0
        named = site.handle(
            SiteRequest("cif_causes", "d", {"duration": "time", "event": "cause"}, None, "m", "q")
        )
        assert named.status == "released" and named.payload["causes"] == [1, 2]
        res = fed.cumulative_incidence("d", "time", "cause")
    assert np.allclose(res.privacy.budget["rho_spent"], POLICY.dp_rho)
