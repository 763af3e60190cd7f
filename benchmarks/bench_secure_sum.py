"""The cost of a secure sum against the plain path, 5 embedded sites, in the same run.

Each site holds 20,000 rows; the step returns a histogram of ``bins`` counts and ``bins`` real
per-bin sums. The plain path sends each site's vectors and adds them up at the coordinator; the
secure path sends them masked (pairwise ChaCha20 masks from P-384 session keys), so the coordinator
sees the total only. Prints the median time per query, the bytes on the wire per query (all sites,
both directions) and the ratios; and the one-off cost of the key session. ``sealed``: the same
sum with sealed fields (a total only the sites can open: group masks and envelopes), and one
site opening it from the signed replies, as the next round of a pooled Cox fit does.

    python benchmarks/bench_secure_sum.py [--sites 5] [--repeat 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import pandas as pd

from fedhem_kernel import node
from fedhem_kernel.engine.coordinator import Coordinator, Query
from fedhem_kernel.engine.local_grid import InProcess, LocalGrid
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.params import integer
from fedhem_kernel.protocol.secure_sum import request_binding
from fedhem_kernel.site.steps import SiteData, SiteStep


def histogram(data: SiteData, params: dict) -> dict:
    x = data.numeric("x")
    edges = np.linspace(-5, 5, params["bins"] + 1)
    counts = np.histogram(x, edges)[0]
    sums = np.bincount(np.clip(np.searchsorted(edges, x) - 1, 0, len(counts) - 1), x, len(counts))
    return {"counts": counts, "sums": sums}


STEP = SiteStep(
    "bench_histogram",
    "describe",
    histogram,
    lambda p: ["x"],
    params={"bins": integer(1, 10**6)},
    sums={"counts": "count", "sums": "real"},
)


SEALED = dataclasses.replace(
    STEP, name="bench_histogram_sealed", sums={"counts": "sealed-count", "sums": "sealed-real"}
)


def wire_bytes(grid: LocalGrid) -> int:
    return sum(grid.bytes_sent.values()) + sum(grid.bytes_received.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tables = {
        f"s{i}": {"d": pd.DataFrame({"x": rng.normal(size=args.rows)})} for i in range(args.sites)
    }
    address, names = node.start_embedded(
        node.local_configs(tables, Policy()), {s.name: s for s in (STEP, SEALED)}
    )
    opener = next(iter(node.embedded_host(address).executors.values())).secure
    grid = LocalGrid(InProcess(address), list(names))
    Query(Coordinator(grid, names, observers=[]), "describe", "d").ask_sum(STEP.name, {"bins": 10})
    coordinator = Coordinator(grid, names, observers=[])  # warmed up: now a new key session
    started = time.perf_counter()
    before = wire_bytes(grid)
    Query(coordinator, "describe", "d").ask_sum(STEP.name, {"bins": 10})
    first = time.perf_counter() - started
    print(f"{args.sites} sites in this process, {args.rows} rows each")
    print(
        f"  a new key session and its first secure sum: {first * 1000:.1f} ms, "
        f"{(wire_bytes(grid) - before) / 1024:.1f} KiB"
    )
    print(
        f"  {'values':>8} {'plain ms':>9} {'secure ms':>10} {'ratio':>6} {'sealed ms':>10} "
        f"{'ratio':>6} {'plain KiB':>10} {'secure KiB':>11} {'ratio':>6} {'sealed KiB':>11}"
    )
    for bins in (10, 1_000, 10_000, 100_000):
        params = {"bins": bins}
        timing: dict[str, list[float]] = {"plain": [], "secure": [], "sealed": []}
        size: dict[str, int] = {}
        got: dict[str, np.ndarray] = {}
        for _ in range(args.repeat + 1):  # the first of each is a warm-up
            for path in ("plain", "secure", "sealed"):
                q = Query(coordinator, "describe", "d")
                before, started = wire_bytes(grid), time.perf_counter()
                if path == "plain":
                    replies = q.ask(STEP.name, params)
                    total = sum(p["counts"] for p in replies.values())
                    sums = sum(p["sums"] for p in replies.values())
                elif path == "secure":
                    result = q.ask_sum(STEP.name, params)
                    total, sums = result.totals["counts"], result.totals["sums"]
                else:  # the coordinator cannot read it; one site opens it
                    result = q.ask_sum(SEALED.name, params)
                    assert not result.totals
                    binding = request_binding(SEALED.name, "d", None, params)
                    opened = opener.verify_total(result.evidence, binding, result.sites)
                    total, sums = opened["counts"], opened["sums"]
                timing[path].append(time.perf_counter() - started)
                size[path] = wire_bytes(grid) - before
                got[path] = sums
                assert int(total.sum()) == args.sites * args.rows
        assert np.allclose(got["secure"], got["plain"], rtol=1e-12, atol=1e-9)
        assert np.allclose(got["sealed"], got["plain"], rtol=1e-12, atol=1e-9)
        plain, secure, sealed = (
            statistics.median(timing[p][1:]) * 1000 for p in ("plain", "secure", "sealed")
        )
        values = 2 * bins
        print(
            f"  {values:>8} {plain:>9.2f} {secure:>10.2f} {secure / plain:>6.2f} "
            f"{sealed:>10.2f} {sealed / plain:>6.2f} "
            f"{size['plain'] / 1024:>10.1f} {size['secure'] / 1024:>11.1f} "
            f"{size['secure'] / size['plain']:>6.2f} {size['sealed'] / 1024:>11.1f}"
        )


if __name__ == "__main__":
    main()
