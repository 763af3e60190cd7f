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
