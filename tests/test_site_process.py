"""Sites in a process of their own (``isolation="process"``): the same answers as in process, clear
errors when a site cannot load or the site host stops, and nothing left running."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.protocol.messages import SiteRequest

pytestmark = pytest.mark.slow


def site_folders(tmp_path, n_sites: int = 2, bad: bool = False):
    rng = np.random.default_rng(5)
    lines = ['[federation]\nname = "two"\n']
    for i in range(n_sites):
        n = 120
        df = pd.DataFrame(
            {
                "age": rng.normal(60, 10, n).round(1),
                "time": rng.exponential(20, n).round(1) + 0.1,
                "event": rng.integers(0, 2, n),
                "risk": rng.choice(["low", "high"], n),
            }
        )
        if bad and i == 1:
            df["age"] = df["age"].astype(object)
            df.loc[3, "age"] = "sixty"  # text in a numeric column
        df.to_csv(tmp_path / f"s{i}.csv", index=False)
        lines.append(
            f'[sites.s{i}.datasets.d]\npath = "s{i}.csv"\n'
            f'[sites.s{i}.datasets.d.columns]\nage = "float"\ntime = {{ type = "float", unit = '
            '"months" }\n'
        )
    path = tmp_path / "federation.toml"
    path.write_text("".join(lines))
    return path


def test_the_same_answers_as_in_process(tmp_path):
    config = site_folders(tmp_path)
    with fh.Federation.from_config(config) as here:
        km_here = here.kaplan_meier("d", "time", "event", group="risk")
        desc_here = here.describe("d", ["age"], by="risk")
    with fh.Federation.from_config(config, isolation="process") as there:
        assert there.name == "two" and list(there.sites["site"]) == ["s0", "s1"]
        km = there.kaplan_meier("d", "time", "event", group="risk")
        desc = there.describe("d", ["age"], by="risk")
        pd.testing.assert_frame_equal(km.survival_function, km_here.survival_function)
        pd.testing.assert_frame_equal(desc.table, desc_here.table)
        assert [o.entries for o in km.privacy.outcomes] == [
            o.entries for o in km_here.privacy.outcomes
        ]
        # hand-made requests reach the sites the same way, and are checked the same way
        replies = there.coordinator.send(
            SiteRequest(
                "describe", "d", {"columns": ["age"], "by": None, "levels": None}, "age > 200"
            )
        )
        assert {r.status for r in replies.values()} == {"refused"}
        assert {r.error["rule"] for r in replies.values()} == {"ledger"}
        log = there.audit_log()
        assert set(log["site"]) == {"s0", "s1"} and "km_grid" in set(log["analysis"])


def test_a_site_that_cannot_load_is_a_clear_error(tmp_path):
    config = site_folders(tmp_path, bad=True)
    started = time.monotonic()
    with pytest.raises(fh.SchemaError) as info:
        fh.Federation.from_config(config, isolation="process")
    assert time.monotonic() - started < 60
    err = info.value
    assert (err.site, err.dataset, err.column) == ("s1", "d", "age")
    assert "sixty" not in str(err)  # never a value


def test_a_stopped_site_host_is_an_error_not_a_hang(tmp_path):
    fed = fh.Federation.from_config(site_folders(tmp_path), isolation="process")
    process = fed.coordinator.grid.transport._process
    fed.describe("d", ["age"])
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    started = time.monotonic()
    with pytest.raises(fh.FedHemError, match="could not answer"):
        fed.describe("d", ["age"])
    assert time.monotonic() - started < 10
    fed.close()


def test_closing_the_federation_ends_the_site_host(tmp_path):
    fed = fh.Federation.from_config(site_folders(tmp_path), isolation="process")
    process = fed.coordinator.grid.transport._process
    assert process.poll() is None
    fed.close()
    assert process.poll() is not None
    with pytest.raises(fh.ParameterError, match="isolation"):
        fh.Federation.from_config(site_folders(tmp_path), isolation="threads")
