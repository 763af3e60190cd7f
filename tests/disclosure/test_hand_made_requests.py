"""Wrongly typed or out-of-range parameters, from the public API and in hand-made site requests.

In a deployment the researcher runs the coordinator, so a site is sent whatever a researcher writes.
Every wrong argument must end in a clear FedHemError (the researcher's side, before anything is sent)
and every malformed request in a refusal or a parameter error at the site, never in a Python
exception or the site's "internal error" (whose traceback lands in the site's log).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Coordinator
from fedhem_kernel.protocol.messages import SiteRequest

JUNK = [
    None,
    5,
    -1,
    2**70,
    1e308,
    float("nan"),
    "x",
    "",
    [],
    [1, 2],
    ["x"] * 3,
    {"a": 1},
    True,
    np.array([1.0, 2.0]),
    np.zeros((2, 2)),
    [[1, 2], [3]],
]


@pytest.fixture(scope="module")
def demo():
    with fh.Federation.demo(policy=fh.Policy.unrestricted()) as fed:
        fed.coordinator.observers = []
        yield fed


# -- the public API: every argument of every analysis ----------------------------------------------
CALLS = {
    "describe": ("aml", {"columns": ["age"], "by": "sex"}),
    "crosstab": ("aml", {"row": "eln_risk", "col": "sex", "margins": False}),
    "kaplan_meier": ("aml", {"duration": "os_months", "event": "os_status", "group": "sex"}),
    "logrank": ("aml", {"duration": "os_months", "event": "os_status", "group": "sex"}),
    "cumulative_incidence": (
        "aml",
        {"duration": "efs_months", "event": "efs_cause", "group": "sex", "cause_names": {1: "r"}},
    ),
    "cox": ("aml", {"duration": "os_months", "event": "os_status", "covariates": ["age"]}),
    "kmeans": ("aml", {"features": ["age", "wbc"], "k": 2}),
    "pca": ("aml", {"features": ["age", "wbc"]}),
    "combat": ("aml", {"features": ["age", "wbc"]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("analysis", sorted(CALLS))
def test_every_wrong_argument_is_a_clear_error(demo, analysis):
    dataset, good = CALLS[analysis]
    spec = __import__(f"fedhem_kernel.analyses.{analysis}", fromlist=["PARAMS"]).PARAMS
    for name in spec:
        for junk in JUNK:
            args = {**good, name: junk}
            try:
                demo.run(analysis, dataset, **args)
            except fh.FedHemError as exc:
                assert "internal error" not in str(exc), (analysis, name, junk, str(exc))
            # a value that happens to be valid (e.g. seed=5) may simply run
    with pytest.raises(fh.ParameterError, match="no parameter 'nope'"):
        demo.run(analysis, dataset, **good, nope=1)


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda f: f.describe("aml", 123), "'columns' must be"),
        (lambda f: f.describe("aml", ["age"], by=5), "'by' must be"),
        (lambda f: f.cox("aml", "os_months", "os_status", None), "'covariates' must be"),
        (lambda f: f.kmeans("aml", 5, 3), "'features' must be"),
        (
            lambda f: f.cumulative_incidence("aml", "efs_months", "efs_cause", cause_names=[1]),
            "'cause_names' must be",
        ),
        (lambda f: f.crosstab("aml", "eln_risk", "sex", margins="yes"), "'margins' must be"),
        (lambda f: f.kaplan_meier("aml", "os_months", "os_status", group=5), "'group' must be"),
        (lambda f: f.pca("aml", ["age", "wbc"], n_components="2"), "'n_components' must be"),
        (lambda f: f.kmeans("aml", ["age"], 2, init=[[1, 2], [3]]), "'init' must be"),
    ],
)
def test_the_issues_examples_are_parameter_errors_before_anything_is_sent(demo, call, word):
    sent = []
    original = Coordinator.send

    def spy(self, request, sites=None):
        sent.append(request.step)
        return original(self, request, sites)

    Coordinator.send = spy
    try:
        with pytest.raises(fh.ParameterError, match=word) as info:
            call(demo)
    finally:
        Coordinator.send = original
    assert sent == []  # refused in the researcher's process
    assert info.value.dataset is not None


# -- hand-made requests: every parameter of every site step ----------------------------------------
def captured_requests(fed) -> dict[str, SiteRequest]:
    """One real request of every site step, as the coordinator sends it."""
    seen: dict[str, SiteRequest] = {}
    original = Coordinator.send

    def spy(self, request, sites=None):
        if request.dataset is not None:
            seen.setdefault(request.step, request)
        return original(self, request, sites)

    Coordinator.send = spy
    try:
        fed.describe("aml", ["age"], by="sex")
        fed.crosstab("aml", "eln_risk", "sex")
        fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
        fed.logrank("aml", "os_months", "os_status", "eln_risk", strata="sex")
        fed.cumulative_incidence("aml", "efs_months", "efs_cause", group="sex")
        fed.run("cox", "aml", duration="os_months", event="os_status", covariates=["age", "sex"])
        # strata="site": the per-site protocol's steps (a baseline hazard per site)
        fed.cox("aml", "os_months", "os_status", ["age", "sex"], strata="site")
        fed.kmeans("aml", ["age", "wbc"], 3)
        fed.kmeans(
            "aml", ["age", "wbc"], 2, init=np.array([[50.0, 10], [70, 30]]), standardize=False
        )
        fed.pca("aml", ["age", "wbc"])
        fed.combat("aml", ["age", "wbc"], covariates=["sex"])
        fed.radiomics("mm_imaging", params={"featureClass": {"firstorder": []}})
    finally:
        Coordinator.send = original
    return seen


@pytest.mark.slow
def test_no_hand_made_request_reaches_an_internal_error(demo, caplog):
    requests = captured_requests(demo)
    import fedhem_kernel.analyses.cox.combine as cox_combine

    original, cox_combine.ONE_ROUND_MAX_BYTES = cox_combine.ONE_ROUND_MAX_BYTES, 0  # cox_hessian
    try:
        requests.update(
            {
                k: v
                for k, v in captured_requests(demo).items()
                if k in ("cox_hessian",) and k not in requests
            }
        )
    finally:
        cox_combine.ONE_ROUND_MAX_BYTES = original
    assert len(requests) >= 20, sorted(requests)
    site = demo.coordinator.site_names[0]
    tried = 0
    bad = []
    with caplog.at_level(logging.ERROR, logger="fedhem.site"):
        for step, req in sorted(requests.items()):
            variants = [{k: v for k, v in req.params.items() if k != drop} for drop in req.params]
            variants += [{**req.params, key: junk} for key in req.params for junk in JUNK]
            variants += [{**req.params, "unexpected": 1}]
            for params in variants:
                request = SiteRequest(step, req.dataset, params, req.where, "attacker", "q")
                reply = demo.coordinator.send(request, [site])[site]
                tried += 1
                if reply.status == "error" and "internal error" in (reply.error or {}).get(
                    "reason", ""
                ):
                    bad.append((step, sorted(set(req.params) ^ set(params)) or params))
    assert bad == [], bad[:10]
    assert tried > 2000
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_a_crafted_level_list_is_held_to_the_sites_max_levels():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"g": rng.choice(["a", "b"], 200), "h": rng.choice(["x", "y"], 200)})
    with fh.Federation.local({"s": {"d": df}}) as fed:
        huge = [f"v{i}" for i in range(20_000)]
        for step, params in [
            ("crosstab", {"row": "g", "col": "h", "row_levels": huge, "col_levels": ["x", "y"]}),
            ("describe", {"columns": ["g"], "by": "h", "levels": huge}),
            ("describe_risk", {"columns": ["g"], "by": "h", "levels": huge}),
        ]:
            reply = fed.coordinator.send(SiteRequest(step, "d", params))["s"]
            assert reply.status in ("refused", "error")
            rule = reply.error["rule"]
            assert rule in ("max_levels", None) and "levels" in reply.error["reason"]


@pytest.mark.slow
def test_no_hand_made_secure_request_reaches_an_internal_error(caplog):
    """The pooled steps (decide, then release) are asked as secure sums: every parameter of each,
    replaced by junk or dropped, in a sum of its own, reaches a clean refusal."""
    import fedhem_kernel.engine.coordinator as coordinator_module
    from fedhem_kernel.engine.coordinator import Query

    rng = np.random.default_rng(3)

    def table(n):
        t = rng.exponential(20, n)
        return pd.DataFrame(
            {
                "time": t.round(2),
                "event": rng.integers(0, 2, n),
                "cause": rng.integers(0, 3, n),
                "g": rng.choice(["a", "b"], n),
                "h": rng.choice(["x", "y"], n),
            }
        )

    tables = {f"s{i}": {"d": table(150)} for i in range(3)}
    columns = {"d": {"time": {"type": "float", "unit": "months"}, "cause": "int"}}
    seen: dict[str, dict] = {}
    original = coordinator_module.ask_sum

    def spy(query, step, params, noise_scale=None):
        seen.setdefault(step, dict(params))
        return original(query, step, params, noise_scale)

    with fh.Federation.local(tables, columns=columns) as fed:
        coordinator_module.ask_sum = spy
        try:
            fed.kaplan_meier("d", "time", "event", group="g")
            fed.logrank("d", "time", "event", group="g", strata="h")
            fed.cumulative_incidence("d", "time", "cause", group="g")
            fed.crosstab("d", "g", "h", margins=True)
            fed.describe("d", ["time", "cause"], by="g")
            fed.cox("d", "time", "event", ["cause", "g"])
            fed.pca("d", ["time", "cause"])
            fed.kmeans("d", ["time", "cause"], 2)
        finally:
            coordinator_module.ask_sum = original
        assert {"km_risk", "km_grid", "crosstab_risk", "crosstab_cells", "cif_grid"} <= set(seen)
        assert {"describe_risk", "describe_moments", "describe_histogram"} <= set(seen)
        assert {"cox_pool_setup", "cox_pool_sums", "pca_pool_setup", "pca_pool_sums"} <= set(seen)
        assert {"kmeans_pool_stats", "kmeans_pool_step", "kmeans_pool_assign"} <= set(seen)
        bad, tried = [], 0
        with caplog.at_level(logging.ERROR, logger="fedhem.site"):
            for step, params in sorted(seen.items()):
                variants = [{k: v for k, v in params.items() if k != drop} for drop in params]
                variants += [{**params, key: junk} for key in params for junk in JUNK]
                for variant in variants:
                    q = Query(fed.coordinator, "kaplan_meier", "d", who="attacker")
                    tried += 1
                    try:
                        q.ask_sum(step, variant)
                    except fh.FedHemError as exc:
                        if "internal error" in str(exc):
                            bad.append((step, sorted(set(params) ^ set(variant)) or variant))
    assert bad == [], bad[:10]
    assert tried > 300
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
