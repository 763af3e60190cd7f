"""Attacks on DP mode's releases of real values (describe, PCA, k-means): the coordinator picks
the bounds, columns and groups (any it likes: narrow bounds around a target's value, huge ones,
bounds inverted or not finite), and one patient more or less must still move a site's release
by at most the sensitivity the noise is calibrated to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dp_fields import POLICY, largest_change, recorded_fields, secure_block
from sites import sites_of

import fedhem_kernel as fh
import fedhem_kernel.analyses.describe.combine as describe_combine
from fedhem_kernel.privacy.dp import scale_for
from fedhem_kernel.privacy.dp_values import RESOLUTION
from fedhem_kernel.protocol.messages import SiteRequest

COLUMNS = {
    "d": {
        "x": {"type": "float", "bounds": [0, 100]},
        "y": {"type": "float", "bounds": [-5, 5]},
        "g": {"type": "category", "levels": ["a", "b"]},
    }
}


def tables(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(3):
        x = rng.normal(50, 20, n)
        x[rng.random(n) < 0.1] = np.nan  # missing values move counts too
        frame = pd.DataFrame({"x": x, "y": rng.normal(0, 2, n), "g": rng.choice(["a", "b"], n)})
        out[f"s{i}"] = {"d": frame}
    return out


def without_row(t, row: int):
    out = {s: {"d": d["d"].copy()} for s, d in t.items()}
    out["s0"]["d"] = out["s0"]["d"].drop(index=row).reset_index(drop=True)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_one_patient_moves_a_dp_describe_by_at_most_the_sensitivity(monkeypatch, seed):
    rng = np.random.default_rng(100 + seed)
    t = tables(seed)
    row = int(rng.integers(0, 60))
    target = t["s0"]["d"].loc[row]
    x = float(target["x"]) if np.isfinite(target["x"]) else 50.0
    # the coordinator's bounds: narrow around the target's value, huge, or the declared ones
    choices = [[x - 1e-6, x + 1e-6], [-1e12, 1e12], [0, 100], [x, x + 1e-9], [-1e-3, 0]]
    bounds = [choices[int(rng.integers(0, len(choices)))], [-5, 5]]
    monkeypatch.setattr(describe_combine, "dp_bounds", lambda q, columns: bounds)
    by = [None, "g"][seed % 2]

    def run(fed):
        fed.describe("d", ["x", "y"], by=by)

    policy = fh.Policy(dp=True, dp_rho=0.5, dp_rho_researcher=10.0, dp_rho_site=50.0)
    kwargs = {"policy": policy, "columns": COLUMNS}
    seen = recorded_fields(monkeypatch, t, run, **kwargs)
    monkeypatch.setattr(describe_combine, "dp_bounds", lambda q, columns: bounds)
    gone = recorded_fields(monkeypatch, without_row(t, row), run, **kwargs)
    change = largest_change(seen, gone)
    assert 0 < change <= RESOLUTION


def test_hand_made_dp_describes_are_refused_in_the_clear_or_with_bad_bounds():
    t = tables(0)
    with fh.Federation.local(t, policy=POLICY, columns=COLUMNS) as fed:
        site = sites_of(fed)["s0"]
        params = {"columns": ["x"], "by": None, "levels": None, "bounds": [[0, 100]]}
        pca = {"features": ["x"], "bounds": [[0, 100]]}
        for step, asked in (
            ("describe", {k: params[k] for k in ("columns", "by", "levels")}),
            ("describe_dp", params),
            ("pca_stats", {"features": ["x"]}),
            ("pca_dp", pca),
        ):
            reply = site.handle(SiteRequest(step, "d", asked, None, "mallory", "q"))
            assert reply.status == "refused" and reply.error["rule"] == "dp", step
        own = scale_for(POLICY.dp_rho, RESOLUTION)
        block = secure_block(fed, ["s0", "s1", "s2"], own / 2)
        reply = site.handle(SiteRequest("describe_dp", "d", params, None, "mallory", "q", block))
        assert reply.payload is None and reply.error["rule"] == "dp"
        for bad in ([[100, 0]], [[0, float("nan")]], [[0, 1e13]], [[0, 1], [0, 1]], [[0]]):
            block = secure_block(fed, ["s0", "s1", "s2"], own)
            asked = {**params, "bounds": bad}
            reply = site.handle(SiteRequest("describe_dp", "d", asked, None, "mallory", "q", block))
            assert reply.status != "released" and reply.error["type"] == "ParameterError", bad
        assert site.budget.spent("mallory", "d").researcher == 0  # nothing charged for them
        res = fed.describe("d", ["x"])
    assert np.allclose(res.privacy.budget["rho_spent"], POLICY.dp_rho)


@pytest.mark.parametrize("seed", range(8))
def test_one_patient_moves_a_dp_pca_by_at_most_the_sensitivity(monkeypatch, seed):
    import fedhem_kernel.analyses.pca.combine as pca_combine

    rng = np.random.default_rng(200 + seed)
    t = tables(seed)
    t = {s: {"d": d["d"].fillna(50.0)} for s, d in t.items()}
    row = int(rng.integers(0, 60))
    target = t["s0"]["d"].loc[row]
    x, y = float(target["x"]), float(target["y"])
    # bounds that put the target at a corner, or make every other patient the same
    choices = [
        [[x, x + 1e-9], [y - 1e-9, y]],
        [[-1e12, x], [y, 1e12]],
        [[0, 100], [-5, 5]],
        [[x - 1e-6, x + 1e-6], [-1e-9, 1e-9]],
    ]
    bounds = choices[seed % len(choices)]
    monkeypatch.setattr(pca_combine, "dp_bounds", lambda q, feats: bounds)
    policy = fh.Policy(dp=True, dp_rho=50.0, dp_rho_researcher=100.0, dp_rho_site=500.0)
    kwargs = {"policy": policy, "columns": COLUMNS}

    def run(fed):
        try:
            fed.pca("d", ["x", "y"], standardize=False)
        except fh.errors.ParameterError:  # no variation above the noise: the release was made
            pass

    seen = recorded_fields(monkeypatch, t, run, **kwargs)
    monkeypatch.setattr(pca_combine, "dp_bounds", lambda q, feats: bounds)
    gone = recorded_fields(monkeypatch, without_row(t, row), run, **kwargs)
    assert 0 < largest_change(seen, gone) <= RESOLUTION


@pytest.mark.parametrize("seed", range(8))
def test_one_patient_moves_a_dp_kmeans_round_by_at_most_the_sensitivity(monkeypatch, seed):
    """The coordinator sends centres that isolate the target (one centre on them, the other
    far away) and extreme bounds: the statistics release and a Lloyd round for the same request
    still move by at most the sensitivity when the target is removed (later rounds are asked
    with centres that depend on earlier noisy releases: composition, accounted release by
    release)."""
    import fedhem_kernel.analyses.kmeans.combine_dp as kmeans_dp

    rng = np.random.default_rng(300 + seed)
    t = {s: {"d": d["d"].fillna(50.0)} for s, d in tables(seed).items()}
    row = int(rng.integers(0, 60))
    target = t["s0"]["d"].loc[row]
    x, y = float(target["x"]), float(target["y"])
    bounds = [[[x - 1e-6, x + 1e-6], [y, y + 1e-9]], [[0, 100], [-5, 5]]][seed % 2]
    monkeypatch.setattr(kmeans_dp, "dp_bounds", lambda q, feats: bounds)
    lo = np.array([b[0] for b in bounds])
    width = np.array([b[1] - b[0] for b in bounds])
    on_target = (np.array([x, y]) - lo) / width
    start = np.vstack([lo + width * on_target, lo + width * (1 - on_target)])
    policy = fh.Policy(dp=True, dp_rho=50.0, dp_rho_researcher=100.0, dp_rho_site=500.0)
    kwargs = {"policy": policy, "columns": COLUMNS}

    def run(fed):
        try:
            fed.kmeans("d", ["x", "y"], 2, init=start, standardize=False, max_iter=1)
        except fh.errors.ParameterError:  # no variation above the noise: releases were made
            pass

    seen = recorded_fields(monkeypatch, t, run, **kwargs)
    monkeypatch.setattr(kmeans_dp, "dp_bounds", lambda q, feats: bounds)
    gone = recorded_fields(monkeypatch, without_row(t, row), run, **kwargs)
    assert len(seen) == 2  # the statistics and one round
    assert 0 < largest_change(seen, gone) <= RESOLUTION


def test_hand_made_kmeans_requests_in_dp_mode_are_refused_or_bounded():
    t = {s: {"d": d["d"].fillna(50.0)} for s, d in tables(1).items()}
    with fh.Federation.local(t, policy=POLICY, columns=COLUMNS) as fed:
        site = sites_of(fed)["s0"]
        base = {"features": ["x"], "k": 2, "bounds": [[0, 100]]}
        step = {**base, "centers": [[10.0], [90.0]], "scale": [1.0], "source": None}
        plain = {"features": ["x"], "k": 2}
        for name, asked in (
            ("kmeans_stats", plain),
            ("kmeans_pool_stats", plain),
            ("kmeans_dp_stats", base),
            ("kmeans_dp_step", step),
        ):
            reply = site.handle(SiteRequest(name, "d", asked, None, "mallory", "q"))
            assert reply.status == "refused" and reply.error["rule"] == "dp", name
        own = scale_for(POLICY.dp_rho, RESOLUTION)
        for bad in (
            {"scale": [0.0]},
            {"scale": [-1.0]},
            {"centers": [[np.nan], [1.0]]},
            {"centers": [[1.0, 2.0]]},
            {"scale": [1.0, 1.0]},
        ):
            block = secure_block(fed, ["s0", "s1", "s2"], own)
            asked = {**step, **bad}
            reply = site.handle(SiteRequest("kmeans_dp_step", "d", asked, None, "m", "q", block))
            assert reply.status != "released" and reply.error["type"] == "ParameterError", bad
        assert site.budget.spent("m", "d").researcher == 0


@pytest.mark.parametrize("seed", range(6))
def test_one_patient_moves_a_dp_combat_release_by_at_most_the_sensitivity(monkeypatch, seed):
    """DP ComBat: each site fills its own slot of one noised secure sum; bounds of the
    coordinator's choosing (around the target's value) keep one patient within the sensitivity,
    and the harmonising round releases nothing."""
    import fedhem_kernel.analyses.combat.combine_dp as combat_dp

    rng = np.random.default_rng(400 + seed)
    t = {s: {"d": d["d"].fillna(50.0)} for s, d in tables(seed).items()}
    row = int(rng.integers(0, 60))
    x, y = (float(v) for v in t["s0"]["d"].loc[row, ["x", "y"]])
    bounds = [[[x - 1e-6, x], [y, y + 1e-6]], [[-1e12, 1e12], [-5, 5]], [[0, 100], [-5, 5]]]
    chosen = bounds[seed % 3]
    monkeypatch.setattr(combat_dp, "dp_bounds", lambda q, feats: chosen)
    policy = fh.Policy(dp=True, dp_rho=50.0, dp_rho_researcher=100.0, dp_rho_site=500.0)
    kwargs = {"policy": policy, "columns": COLUMNS}

    def run(fed):
        try:
            fed.combat("d", ["x", "y"], eb=False)
        except fh.errors.FedHemError:  # estimates not finite on degenerate bounds: released
            pass

    seen = recorded_fields(monkeypatch, t, run, **kwargs)
    monkeypatch.setattr(combat_dp, "dp_bounds", lambda q, feats: chosen)
    gone = recorded_fields(monkeypatch, without_row(t, row), run, **kwargs)
    assert len(seen) == 1  # one release
    assert 0 < largest_change(seen, gone) <= RESOLUTION


def test_hand_made_combat_requests_in_dp_mode_are_refused_or_release_nothing():
    t = {s: {"d": d["d"].fillna(50.0)} for s, d in tables(2).items()}
    with fh.Federation.local(t, policy=POLICY, columns=COLUMNS) as fed:
        site = sites_of(fed)["s0"]
        stats = {"features": ["x"], "bounds": [[0, 100]], "sites": ["s0", "s1", "s2"]}
        design = {"features": ["x"], "batch": None, "categorical": None, "continuous": None}
        for name, asked in (("combat_stats", design), ("combat_dp_stats", stats)):
            reply = site.handle(SiteRequest(name, "d", asked, None, "mallory", "q"))
            assert reply.status == "refused" and reply.error["rule"] == "dp", name
        own = scale_for(POLICY.dp_rho, RESOLUTION)
        for sites in (["s0", "s0", "s1"], ["s1", "s2"], ["s0"]):
            block = secure_block(fed, ["s0", "s1", "s2"], own)
            asked = {**stats, "sites": sites}
            reply = site.handle(SiteRequest("combat_dp_stats", "d", asked, None, "m", "q", block))
            assert reply.status != "released", sites
        apply = {
            "features": ["x"],
            "sites": ["s0", "s1", "s2"],
            "batch": None,
            "batch_levels": None,
            "keep": [True, True, True],
            "gamma_star": [[0.1], [0.0], [-0.1]],
            "delta_star": [[1.0], [1.0], [1.0]],
            "grand_mean": [50.0],
            "var_pooled": [100.0],
            "suffix": "_h",
            "source": None,
        }
        reply = site.handle(SiteRequest("combat_dp_apply", "d", apply, None, "m", "q"))
        assert reply.status == "released" and not reply.payload  # nothing leaves
        assert site.budget.spent("m", "d").researcher == 0


@pytest.mark.parametrize("seed", range(4))
def test_one_patient_moves_a_dp_cox_table_by_one_cell(monkeypatch, seed):
    """DP Cox releases every covariate pattern's events and censorings per grid step: one
    patient more or less changes one cell by one, whatever the patterns asked (the coordinator
    chooses the covariates and their levels, the grid and the horizon)."""
    rng = np.random.default_rng(500 + seed)
    n = 60
    t = {
        f"s{i}": {
            "d": pd.DataFrame(
                {
                    "time": rng.exponential(20, n).round(1),
                    "event": rng.integers(0, 2, n),
                    "g": rng.choice(["a", "b"], n),
                }
            )
        }
        for i in range(3)
    }
    columns = {
        "d": {
            "time": {"type": "float", "unit": "months"},
            "g": {"type": "category", "levels": ["a", "b"]},
        }
    }
    row = int(rng.integers(0, n))
    policy = fh.Policy(dp=True, dp_rho=50.0, dp_rho_researcher=100.0, dp_rho_site=500.0)

    def run(fed):
        fed.cox("d", "time", "event", ["g"])

    seen = recorded_fields(monkeypatch, t, run, policy=policy, columns=columns)
    gone = recorded_fields(monkeypatch, without_row(t, row), run, policy=policy, columns=columns)
    assert len(seen) == 1 and largest_change(seen, gone) == 1.0
