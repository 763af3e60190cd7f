"""Federated k-means vs scikit-learn's KMeans at 100k and 1M rows x 10 features over 5 embedded sites.

Run: ``.venv/bin/python benchmarks/bench_kmeans.py [--rows 100000 1000000] [--repeat 5]``. Both paths
start from the same centres (``init=`` array, ``n_init=1``, Lloyd) on the same rows; the federated
path is the real one (Flower messages to five ClientApps, site steps, checks, audit).

1. ``Policy.unrestricted()``, where the federated run must equal scikit-learn (same centres,
   inertia and iterations).
2. The default policy (k = 5: micro-clusters of 5..9 patients, differencing guard, release
   gates): Lloyd on micro-cluster means, so its iterations may differ from scikit-learn's.

For each: the first query (the sites build their feature matrices and, under the default policy,
their micro-clusters) and the best of ``--repeat`` repeated queries (the sites keep both), each
against the best of ``--repeat`` scikit-learn fits timed in the same loop (min / median / max shown:
the machine may be shared). Rounds: Lloyd iterations; a federated query also sends a final
labelling round (with given centres and ``standardize=False`` the first Lloyd round brings the
statistics). Then PCA on the same rows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

import fedhem_kernel as fh

N_FEATURES = 10
N_CLUSTERS = 8
EXTRA_ROUNDS = 1  # final labels (given centres, standardize=False: no statistics round)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    x, _ = make_blobs(
        n_samples=n, n_features=N_FEATURES, centers=N_CLUSTERS, cluster_std=3.0, random_state=seed
    )
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(N_FEATURES)])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def spread(times: list[float]) -> str:
    return f"{min(times):.3f} s (median {np.median(times):.3f}, max {max(times):.3f})"


def compare(
    label: str,
    fed: fh.Federation,
    federated: Callable[[fh.Federation], Any],
    sk: Callable[[], Any],
    repeat: int,
) -> tuple[Any, Any]:
    """Time the first federated query, then ``repeat`` (sklearn, federated) pairs; print ratios."""
    res, t_first = timed(lambda: federated(fed))  # the sites build what they keep
    sk_times, fed_times = [], []
    for _ in range(repeat):
        km, t_sk = timed(sk)
        res, t_fed = timed(lambda: federated(fed))
        sk_times.append(t_sk)
        fed_times.append(t_fed)
    t_sk, t_fed = min(sk_times), min(fed_times)
    rounds = res.n_iter + EXTRA_ROUNDS
    print(
        f"  k-means, {label}: sklearn {spread(sk_times)}, {km.n_iter_} iterations\n"
        f"    federated repeated {spread(fed_times)}, first {t_first:.3f} s; "
        f"{res.n_iter} iterations + {EXTRA_ROUNDS} rounds\n"
        f"    ratio repeated {t_fed / t_sk:.2f}x (median {np.median(fed_times) / np.median(sk_times):.2f}x)"
        f", first query {t_first / t_sk:.2f}x; per round {t_fed / rounds * 1000:.1f} ms vs "
        f"{t_sk / km.n_iter_ * 1000:.1f} ms per sklearn iteration"
    )
    return res, km


def bench(n: int, n_sites: int, repeat: int, default_policy: bool) -> None:
    features = [f"x{i}" for i in range(N_FEATURES)]
    df = make_rows(n)
    x = df.to_numpy()
    init = x[np.random.default_rng(1).choice(n, N_CLUSTERS, replace=False)]
    parts = np.array_split(np.arange(n), n_sites)
    tables = {
        f"site_{i + 1}": {"d": df.iloc[p].reset_index(drop=True)} for i, p in enumerate(parts)
    }
    print(f"\n{n} rows x {N_FEATURES} features, k = {N_CLUSTERS}, {n_sites} embedded sites")

    def sklearn_fit() -> KMeans:
        return KMeans(N_CLUSTERS, init=init, n_init=1, algorithm="lloyd").fit(x)

    def federated(fed: fh.Federation) -> Any:
        return fed.kmeans("d", features, N_CLUSTERS, init=init, standardize=False)

    with fh.Federation.local(tables, policy=fh.Policy.unrestricted()) as fed:
        fed.coordinator.observers = []
        fed.sites  # noqa: B018 - warm the engine once
        res, km = compare("unrestricted", fed, federated, sklearn_fit, repeat)
        diff = np.abs(res.cluster_centers.to_numpy() - km.cluster_centers_).max()
        rel_inertia = abs(res.inertia - km.inertia_) / km.inertia_
        print(
            f"    max |centre diff| {diff:.1e}, relative inertia diff {rel_inertia:.1e}, "
            f"same n_iter: {res.n_iter == km.n_iter_}"
        )
        pca_sk, t_psk = timed(lambda: PCA(5).fit(x))
        pca_fed, t_pfed = timed(lambda: fed.pca("d", features, 5, standardize=False))
        pdiff = np.abs(np.abs(pca_fed.components.to_numpy()) - np.abs(pca_sk.components_)).max()
        print(
            f"  PCA, unrestricted: sklearn {t_psk:.3f} s, federated {t_pfed:.3f} s "
            f"(ratio {t_pfed / t_psk:.2f}x), max |loading diff| {pdiff:.1e}"
        )
    if not default_policy:
        return
    # the same policy at sites outside secure sums (each site's cluster totals in the clear): the
    # cost of the secure sums, in the same run
    from fedhem_kernel import node

    address, names = node.start_embedded(node.local_configs(tables, fh.Policy()), secure_sums=False)
    with fh.Federation._embedded(address, names, name="local", user=None) as fed:
        fed.coordinator.observers = []
        fed.sites  # noqa: B018
        compare(
            "default policy, per-site totals (no secure sums)", fed, federated, sklearn_fit, repeat
        )
    with fh.Federation.local(tables, policy=fh.Policy()) as fed:
        fed.coordinator.observers = []
        fed.sites  # noqa: B018
        res, km = compare(
            "default policy (micro-clusters, pooled through secure sums)",
            fed,
            federated,
            sklearn_fit,
            repeat,
        )
        diff = np.abs(res.cluster_centers.to_numpy() - km.cluster_centers_).max()
        centres = res.cluster_centers.to_numpy()
        pooled = float(((x[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum())
        print(
            f"    max |centre diff| vs sklearn {diff:.2f} (blob SD 3); the centres' inertia on "
            f"the rows {pooled / km.inertia_:.4f} x sklearn's; all clusters released: "
            f"{res.n_observations == n}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-default-policy", action="store_true")
    args = parser.parse_args()
    for n in args.rows:
        bench(n, args.sites, args.repeat, not args.no_default_policy)


if __name__ == "__main__":
    main()
