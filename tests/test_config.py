"""Sites declared in TOML: datasets (CSV, Parquet), column types, policy and audit log."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh


def write_site(tmp_path, name: str, df: pd.DataFrame, policy: str = "") -> None:
    folder = tmp_path / name
    folder.mkdir()
    df.to_parquet(folder / "aml.parquet")
    (folder / "site.toml").write_text(
        textwrap.dedent(
            f"""
            [site]
            name = "{name}"
            audit_log = "audit.jsonl"
            [policy]
            {policy}
            [datasets.aml]
            path = "aml.parquet"
            [datasets.aml.columns]
            os_months = {{ type = "float", unit = "months" }}
            os_status = "int"
            eln_risk = "category"
            """
        )
    )


def cohort(seed: int, n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "eln_risk": rng.choice(["favourable", "adverse"], n),
            "os_months": rng.exponential(20, n).round(2) + 0.05,
            "os_status": rng.integers(0, 2, n),
        }
    )


def test_federation_from_site_files(tmp_path, releases):
    write_site(tmp_path, "north", cohort(1), "min_cell_count = 10\ntime_resolution = '3 months'")
    write_site(tmp_path, "south", cohort(2))
    (tmp_path / "federation.toml").write_text(
        '[federation]\nname = "two"\n[sites.north]\nconfig = "north/site.toml"\n'
        '[sites.south]\nconfig = "south/site.toml"\n'
    )
    with fh.Federation.from_config(tmp_path / "federation.toml") as fed:
        assert fed.name == "two"
        assert list(fed.sites["site"]) == ["north", "south"]
        policies = fed.policies
        assert policies["north"].min_cell_count == 10
        assert policies["north"].time_resolution == "3 months"
        assert policies["south"] == fh.Policy()
        cat = fed.catalog("aml")
        assert set(cat["dtype"]) == {"category", "float", "int"}
        assert cat.loc[cat["column"] == "os_months", "unit"].iloc[0] == "months"
        km = fed.kaplan_meier("aml", "os_months", "os_status", group="eln_risk")
    assert set(km.groups) == {"adverse", "favourable"}
    # the sites keep different grids: the curve is pooled on the coarser, every 3 months, and
    # each step holds at least north's k (10) at risk
    assert any("pooled on the coarsest, 3 months" in n for n in km.privacy.notes)
    for g in km.groups:
        times = km.event_tables[g].index.to_numpy()
        np.testing.assert_allclose(times / 3.0, np.round(times / 3.0))
        assert (km.event_tables[g]["at_risk"] >= 10).all()
    assert not [r for r in releases if r.payload and "groups" in r.payload]  # nothing in clear
    entries = [json.loads(x) for x in (tmp_path / "north" / "audit.jsonl").read_text().splitlines()]
    assert {e["analysis"] for e in entries} >= {"load", "levels", "km_risk", "km_grid"}
    assert all({"when", "who", "analysis", "dataset", "outcome"} <= set(e) for e in entries)


def test_inline_sites_in_the_federation_file(tmp_path):
    cohort(3).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "federation.toml").write_text(
        textwrap.dedent(
            """
            [sites.a.policy]
            min_cell_count = 5
            [sites.a.datasets.aml]
            path = "a.csv"
            """
        )
    )
    with fh.Federation.from_config(tmp_path / "federation.toml") as fed:
        count = fed.describe("aml", columns=["os_months"]).table.loc["os_months", "count"]
    assert abs(count - 80) <= 2  # perturbed (two sites' worth at most)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sites]\n", "at least one"),
        ("[sites.a]\nconfig = 'missing.toml'\n", "not found"),
        ("[sites.a.datasets.aml]\npath = 'nope.csv'\n", "data file not found"),
        ("[sites.a.policy]\nmin_cell_count = -1\n", "min_cell_count"),
        ("[sites.a.datasets.aml]\n", "needs a 'path'"),
        ("not toml = = \n", "not valid TOML"),
    ],
)
def test_bad_config_is_explained(tmp_path, text, message):
    (tmp_path / "federation.toml").write_text(text)
    with pytest.raises(fh.FedHemError, match=message):
        fh.Federation.from_config(tmp_path / "federation.toml")
