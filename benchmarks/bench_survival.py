"""Federated vs pooled: Kaplan–Meier and log-rank at 100k rows over 5 embedded sites; describe latency.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_survival.py [--rows N]``). Prints the time
of each path and the ratio federated / pooled (lifelines on the same rows, in the same run). The
federated path is the real one: Flower messages to five ClientApps, site steps, privacy checks, audit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

import fedhem_kernel as fh


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["favourable", "intermediate", "adverse"], n, p=[0.3, 0.35, 0.35])
    scale = np.select([group == "favourable", group == "intermediate"], [90.0, 30.0], 12.0)
    t = rng.exponential(scale)
    c = rng.uniform(0, 120, n)
    return pd.DataFrame(
        {
            "age": rng.normal(65, 12, n).round(1),
            "eln_risk": group,
            "os_months": np.minimum(t, c).round(2) + 0.01,
            "os_status": (t <= c).astype(int),
        }
    )


def per_site_federation(tables: dict, columns: dict) -> fh.Federation:
    """Embedded sites without identity keys: they take part in no secure sums and release their
    own thresholded tables (the path of sites outside a consortium's roster)."""
    from fedhem_kernel import node

    configs = node.local_configs(tables, None, columns=columns)
    address, names = node.start_embedded(configs, secure_sums=False)
    return fh.Federation._embedded(address, names, name="local", user=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    demo = fh.Federation.demo()
    demo.sites  # noqa: B018 - first round trip
    print(f"Federation.demo() ready and answering in {(time.perf_counter() - start) * 1000:.0f} ms")
    demo.close()
    from fedhem_kernel.privacy.tables import suppress_table

    rng = np.random.default_rng(3)
    counts = rng.integers(5, 200, size=(10, 10))
    counts[[1, 4, 7, 8], [2, 2, 5, 9]] = [1, 3, 2, 4]
    suppress_table(np.array([[3, 20], [30, 40]]), 5)
    t_sup = best_of(lambda: suppress_table(counts, 5), 3)
    print(
        f"crosstab suppression with LP audit, 10x10 table, 4 small cells: {t_sup * 1000:.0f} ms\n"
    )

    df = make_rows(args.rows)
    parts = np.array_split(df.sample(frac=1.0, random_state=1), args.sites)
    tables = {f"site_{i + 1}": {"aml": p.reset_index(drop=True)} for i, p in enumerate(parts)}
    print(f"{args.rows} rows over {args.sites} embedded sites; best of {args.repeat}\n")

    columns = {"aml": {"os_months": {"type": "float", "unit": "months"}}}
    for label, policy in (
        ("unrestricted (exact)", fh.Policy.unrestricted()),
        ("default: pooled through secure sums, decided then released", None),
        ("default, per-site tables (sites without secure sums)", "per-site"),
    ):
        if policy == "per-site":
            fed = per_site_federation(tables, columns)
        else:
            fed = fh.Federation.local(tables, policy=policy, columns=columns)
        fed.sites  # noqa: B018 - warm the engine once

        def fed_km(fed=fed):
            return fed.kaplan_meier("aml", "os_months", "os_status")

        def pooled_km():
            return KaplanMeierFitter().fit(df["os_months"], df["os_status"])

        def fed_lr(fed=fed):
            return fed.logrank("aml", "os_months", "os_status", "eln_risk")

        def pooled_lr():
            return multivariate_logrank_test(df["os_months"], df["eln_risk"], df["os_status"])

        t_fk, t_pk = best_of(fed_km, args.repeat), best_of(pooled_km, args.repeat)
        t_fl, t_pl = best_of(fed_lr, args.repeat), best_of(pooled_lr, args.repeat)
        print(f"policy: {label}")
        print(
            f"  Kaplan-Meier  federated {t_fk * 1000:8.1f} ms   pooled lifelines "
            f"{t_pk * 1000:8.1f} ms   ratio {t_fk / t_pk:5.2f}x"
        )
        print(
            f"  log-rank      federated {t_fl * 1000:8.1f} ms   pooled lifelines "
            f"{t_pl * 1000:8.1f} ms   ratio {t_fl / t_pl:5.2f}x"
        )
        fed.close()

    fed = fh.Federation.local(tables, columns=columns)
    fed.describe("aml", columns=["age"])  # warm
    latencies = []
    for i in range(20):
        start = time.perf_counter()
        fed.describe("aml", columns=["age"], by=None)
        latencies.append(time.perf_counter() - start)
        del i
    print(
        f"\ndescribe (1 column, {args.sites} sites): median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
        "(goal: well under 50 ms)"
    )
    fed.close()


if __name__ == "__main__":
    main()
