"""A small federation of sites with a summing step, for the secure-sum tests.

Each site holds a dataset ``d`` with a numeric column ``x``; the step ``sum_test`` returns the number
of rows, the sum of ``x`` and of its squares as summed fields (counts and reals), and a shared list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedhem_kernel import node
from fedhem_kernel.engine.coordinator import Coordinator, Query
from fedhem_kernel.engine.local_grid import InProcess, LocalGrid
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.site.executor import SiteExecutor
from fedhem_kernel.site.identity import SiteIdentity
from fedhem_kernel.site.steps import SiteData, SiteStep


def sum_step(data: SiteData, params: dict) -> dict:
    x = data.numeric("x")
    out = {"n": len(x), "sx": float(x.sum()), "sxx": float((x**2).sum()), "levels": ["a", "b"]}
    if params.get("vector"):
        out["hist"] = np.histogram(x, bins=np.linspace(-100, 200, 31))[0]
    return out


SUM_STEP = SiteStep(
    "sum_test",
    "describe",
    sum_step,
    lambda p: ["x"],
    params=None,
    sums={"n": "count", "sx": "real", "sxx": "real", "hist": "count"},
    shared=("levels",),
)
PLAIN_STEP = SiteStep("plain_test", "describe", sum_step, lambda p: ["x"])
#: The same sums, ``sx`` sealed (a total only the sites can open).
SEALED_STEP = SiteStep(
    "sealed_test",
    "describe",
    sum_step,
    lambda p: ["x"],
    params=None,
    sums={"n": "count", "sx": "sealed-real", "sxx": "real"},
    shared=("levels",),
)


class Flaky(InProcess):
    """An in-process transport that loses every message to the nodes in ``down``."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.down: set[int] = set()

    def deliver(self, node_id: int, wire: bytes) -> bytes:
        if node_id in self.down:
            raise ConnectionError("unreachable")
        return super().deliver(node_id, wire)


@dataclass
class SecureSites:
    frames: dict[str, pd.DataFrame]
    executors: dict[str, SiteExecutor]
    identities: dict[str, SiteIdentity]
    coordinator: Coordinator
    transport: Flaky
    node_of: dict[str, int] = field(default_factory=dict)

    def query(self) -> Query:
        return Query(self.coordinator, "describe", "d", who="alice")

    def plain(self, sites=None) -> dict[str, float]:
        sites = list(self.frames) if sites is None else sites
        x = np.concatenate([self.frames[s]["x"].to_numpy() for s in sites])
        return {"n": len(x), "sx": x.sum(), "sxx": (x**2).sum()}


def secure_sites(
    n_sites: int = 5, rows: int = 200, policy: Policy | None = None, seed: int = 0
) -> SecureSites:
    rng = np.random.default_rng(seed)
    frames = {
        f"site{i}": pd.DataFrame({"x": rng.normal(50, 20, rows + 7 * i)}) for i in range(n_sites)
    }
    configs = node.local_configs({name: {"d": df} for name, df in frames.items()}, policy)
    address, names = node.start_embedded(
        configs, {s.name: s for s in (SUM_STEP, PLAIN_STEP, SEALED_STEP)}
    )
    executors = node.embedded_host(address).executors
    transport = Flaky(address)
    coordinator = Coordinator(LocalGrid(transport, list(names)), names, timeout=30, observers=[])
    return SecureSites(
        frames,
        executors,
        {name: ex.secure.identity for name, ex in executors.items()},
        coordinator,
        transport,
        {name: i for i, name in names.items()},
    )
