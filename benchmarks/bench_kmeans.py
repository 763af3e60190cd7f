"""Federated k-means vs scikit-learn's KMeans at 100k and 1M rows x 10 features over 5 embedded sites.

Run: ``.venv/bin/python benchmarks/bench_kmeans.py [--rows 100000 1000000] [--repeat 3]``. Both paths
start from the same centres (``init=`` array, ``n_init=1``, Lloyd) on the same rows; the federated
path is the real one (Flower messages to five ClientApps, site steps, checks, audit) under
``Policy.unrestricted()``, where it must equal scikit-learn. Prints times, their ratio, the rounds
(Lloyd iterations; the federated run adds one statistics round and one final labelling round) and
the largest centre difference. Then one federated run under the default policy (micro-clusters of
5..9 patients, differencing guard) for comparison, and PCA on the same rows.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

import fedhem_kernel as fh

N_FEATURES = 10
N_CLUSTERS = 8


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    x, _ = make_blobs(
        n_samples=n, n_features=N_FEATURES, centers=N_CLUSTERS, cluster_std=3.0, random_state=seed
    )
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(N_FEATURES)])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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
        fed._coordinator.observers = []
        fed.sites  # noqa: B018 - warm the engine once
        res, t_first = timed(lambda: federated(fed))  # the sites build their feature matrices
        sk_times, fed_times = [], []
        for _ in range(repeat):
            km, t_sk = timed(sklearn_fit)
            res, t_fed = timed(lambda: federated(fed))
            sk_times.append(t_sk)
            fed_times.append(t_fed)
        t_sk, t_fed = min(sk_times), min(fed_times)
        diff = np.abs(res.cluster_centers.to_numpy() - km.cluster_centers_).max()
        rel_inertia = abs(res.inertia - km.inertia_) / km.inertia_
        print(
            f"  k-means, unrestricted: sklearn {t_sk:.3f} s ({km.n_iter_} iterations), "
            f"federated {t_fed:.3f} s ({res.n_iter} iterations + 2 rounds; first query "
            f"{t_first:.3f} s): ratio {t_fed / t_sk:.2f}x (first {t_first / t_sk:.2f}x)\n"
            f"    per Lloyd round {t_sk / km.n_iter_ * 1000:.1f} vs "
            f"{t_fed / (res.n_iter + 2) * 1000:.1f} ms; max |centre diff| {diff:.1e}, "
            f"relative inertia diff {rel_inertia:.1e}, same n_iter: {res.n_iter == km.n_iter_}"
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
    with fh.Federation.local(tables, policy=fh.Policy()) as fed:
        fed._coordinator.observers = []
        res, t_first = timed(lambda: federated(fed))
        res, t_again = timed(lambda: federated(fed))
        km = sklearn_fit()
        diff = np.abs(res.cluster_centers.to_numpy() - km.cluster_centers_).max()
        print(
            f"  k-means, default policy: first query {t_first:.2f} s (builds the micro-clusters), "
            f"again {t_again:.2f} s, {res.n_iter} iterations; max |centre diff| vs sklearn "
            f"{diff:.2e} (blob SD 3), inertia {res.inertia / km.inertia_:.4f} x sklearn's"
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
