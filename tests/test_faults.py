"""Fault handling: a per-round timeout and ``min_sites`` (Federation.configure / from_config): a
site that does not answer in time is listed in a released result's privacy report, and below
``min_sites`` the result is not released, the error naming the sites missing and why."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sites import sites_of

import fedhem_kernel as fh


def tables() -> dict:
    rng = np.random.default_rng(5)
    return {
        s: {"d": pd.DataFrame({"age": rng.normal(60, 10, 80).round(1)})}
        for s in ("north", "south", "west")
    }


def slow_site(fed: fh.Federation, site: str, seconds: float) -> None:
    executor = sites_of(fed)[site]
    original = executor.handle

    def handle(request):
        if request.step != "catalog":
            time.sleep(seconds)
        return original(request)

    executor.handle = handle


def test_a_site_past_the_timeout_is_listed_and_min_sites_decides(tmp_path):
    policy = fh.Policy.unrestricted()  # per-site replies: a missing site leaves the others
    with fh.Federation.local(tables(), policy=policy) as fed:
        fed.configure(timeout=1.0, min_sites=2)
        slow_site(fed, "south", 3.0)
        started = time.monotonic()
        res = fed.describe("d", ["age"])
        assert time.monotonic() - started < 2.9  # the round did not wait for the slow site
        assert res.privacy.released_sites == ["north", "west"]
        outcome = res.privacy.outcome("south")
        assert outcome.status == "error" and "no reply in time" in outcome.details[0]
        fed.configure(min_sites=3)
        with pytest.raises(fh.FedHemError) as info:
            fed.describe("d", ["age"])
        assert "only 2 of 3 sites answered (min_sites=3)" in str(info.value)
        assert "south: no reply in time" in str(info.value)
        time.sleep(3.0)  # let the slow site's threads finish before closing


def test_bad_fault_options_are_refused():
    with fh.Federation.local(tables()) as fed:
        for bad in ({"timeout": 0}, {"timeout": "1"}, {"min_sites": 4}, {"min_sites": 0}):
            with pytest.raises(fh.ParameterError):
                fed.configure(**bad)


def restart_after(fed: fh.Federation, site: str, rounds: int) -> None:
    """After ``rounds`` requests, ``site`` forgets what a restart forgets: its scratch (the
    rounds' state) and its secure-sum key sessions (its ledger and audit log stay)."""
    executor = sites_of(fed)[site]
    original = executor.handle
    seen = {"n": 0}

    def handle(request):
        seen["n"] += 1
        if seen["n"] == rounds:
            executor._scratch.clear()
            executor._masks.clear()
            if executor.secure is not None:
                executor.secure._sessions.clear()
        return original(request)

    executor.handle = handle


@pytest.mark.parametrize("analysis", ["cox", "kmeans"])
@pytest.mark.parametrize("rounds", [4, 6, 9])
def test_a_site_that_restarts_mid_analysis_ends_it_with_a_clear_error(analysis, rounds):
    """A site that restarts in the middle of a multi-round analysis ends it with a clear error
    (Cox's Newton path and sealed sums live at the sites between rounds), or, where every round
    carries what it needs, the analysis gives the very same numbers: never a wrong one."""
    rng = np.random.default_rng(11)
    frames = {}
    for s in ("north", "south", "west"):
        n = 150
        age = rng.normal(60, 10, n)
        time_ = rng.exponential(30 * np.exp(-0.02 * (age - 60)))
        frames[s] = {
            "d": pd.DataFrame(
                {
                    "age": age.round(1),
                    "wbc": rng.lognormal(2, 0.5, n).round(2),
                    "time": time_.round(2),
                    "event": (rng.random(n) < 0.7).astype(int),
                }
            )
        }
    columns = {"d": {"time": {"type": "float", "unit": "months"}}}
    with fh.Federation.local(frames, columns=columns) as fed:
        baseline = (
            fed.cox("d", "time", "event", ["age", "wbc"], diagnostics=False)
            if analysis == "cox"
            else fed.kmeans("d", ["age", "wbc"], k=3)
        )
        assert baseline is not None
        restart_after(fed, "south", rounds)
        try:
            if analysis == "cox":
                again = fed.cox("d", "time", "event", ["age", "wbc"], diagnostics=False)
            else:
                again = fed.kmeans("d", ["age", "wbc"], k=3)
        except fh.FedHemError as exc:  # the site lost the analysis's state: a clear error
            assert exc.reason
            return
    # or the rounds carry all they need (the restart changed nothing): the same numbers
    if analysis == "cox":
        pd.testing.assert_series_equal(again.params_, baseline.params_)
    else:
        pd.testing.assert_frame_equal(again.cluster_centers, baseline.cluster_centers)
