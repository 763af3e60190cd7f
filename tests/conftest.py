"""Shared fixtures: public datasets split into sites, and a spy on everything that leaves a site."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Coordinator

# jp_fetch / jp_serverapp for the server extension tests
pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Queries made by tests (and by kernels they start) are listed in a throw-away activity file,
# never in the developer's own ~/.local/share/jupyter/fedhem/activity.jsonl.
os.environ["FEDHEM_ACTIVITY"] = os.path.join(
    tempfile.mkdtemp(prefix="fedhem-test-"), "activity.jsonl"
)


def split_rows(df: pd.DataFrame, n_sites: int = 3, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Split a table into sites of unequal size (about 50 %, 30 %, 20 % for three sites)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(n_sites, 0, -1, dtype=float)
    site_of_row = rng.choice(n_sites, size=len(df), p=weights / weights.sum())
    return {
        f"site_{chr(ord('a') + i)}": df[site_of_row == i].reset_index(drop=True)
        for i in range(n_sites)
    }


def public(name: str) -> pd.DataFrame:
    from lifelines import datasets

    df = getattr(datasets, f"load_{name}")()
    if name == "lung" and set(df["status"].unique()) <= {1, 2}:  # R's coding: 1 censored, 2 dead
        df = df.assign(status=(df["status"] == 2).astype(int))  # (lifelines >= 0.30 ships 0/1)
    if "status" in df and name == "lung":
        assert set(df["status"].unique()) == {0, 1}, "lung must have both events and censoring"
    return df


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every SiteReply that crosses from a site to the coordinator during the test."""
    seen: list = []
    original = Coordinator.send

    def spy(self, request, sites=None):
        replies = original(self, request, sites)
        seen.extend(replies.values())
        return replies

    monkeypatch.setattr(Coordinator, "send", spy)
    return seen


@pytest.fixture
def totals(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every secure-sum total the coordinator learns during the test, as ``(step, SecureTotal)``."""
    import fedhem_kernel.engine.coordinator as coordinator_module

    seen: list = []
    original = coordinator_module.ask_sum

    def spy(query, step, params, noise_scale=None):
        total = original(query, step, params, noise_scale)
        seen.append((step, total))
        return total

    monkeypatch.setattr(coordinator_module, "ask_sum", spy)
    return seen


@pytest.fixture(scope="session")
def demo() -> fh.Federation:
    fed = fh.Federation.demo()
    yield fed
    fed.close()


def without_secure_sums(tables, policy=None, *, columns=None, data_root=None) -> fh.Federation:
    """Embedded sites that hold no identity key, so take part in no secure sum: they release
    their own thresholded tables (the per-site path of sites outside a consortium's roster)."""
    from fedhem_kernel import node

    configs = node.local_configs(tables, policy, columns=columns, data_root=data_root)
    address, names = node.start_embedded(configs, secure_sums=False)
    return fh.Federation._embedded(address, names, name="local", user=None)


def federation_toml(folder, tables, site_toml: str = "", name: str = "t"):
    """A federation.toml in ``folder`` whose sites keep their state in ``state/<site>`` and load
    ``tables`` (``{site: {dataset: DataFrame}}``) from CSV files written next to it; ``site_toml``
    is added to every site's table (e.g. a ``[sites.{site}.policy]`` section; ``{site}`` is
    replaced by the site's name). Returns the file's path."""
    lines = [f'[federation]\nname = "{name}"\n']
    for site, datasets in tables.items():
        lines.append(f'[sites.{site}.site]\nstate_dir = "state/{site}"\n')
        for dataset, frame in datasets.items():
            frame.to_csv(folder / f"{site}_{dataset}.csv", index=False)
            lines.append(f'[sites.{site}.datasets.{dataset}]\npath = "{site}_{dataset}.csv"\n')
        lines.append(site_toml.replace("{site}", site))
    path = folder / "federation.toml"
    path.write_text("".join(lines))
    return path
