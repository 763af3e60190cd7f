"""Sites in this process against sites in a site host process (``isolation="process"``).

The same federation TOML (5 sites of Parquet files, 100k x 10 blobs), the same start centres, the
default policy; k-means repeated, and scikit-learn's ``KMeans`` on the pooled rows in the same run.
Prints each time and the ratios: process / in-process and each against scikit-learn.

    python benchmarks/bench_isolation.py [--rows 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

import fedhem_kernel as fh


def write_federation(x: np.ndarray, sites: int, folder: Path) -> tuple[Path, list[str]]:
    cols = [f"f{i}" for i in range(x.shape[1])]
    lines = ['[federation]\nname = "bench"\n']
    for i, part in enumerate(np.array_split(x, sites)):
        pd.DataFrame(part, columns=cols).to_parquet(folder / f"s{i}.parquet")
        lines.append(f'[sites.s{i}.datasets.d]\npath = "s{i}.parquet"\n')
    (folder / "federation.toml").write_text("".join(lines))
    return folder / "federation.toml", cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    x, _ = make_blobs(args.rows, 10, centers=8, cluster_std=3.0, random_state=0)
    init = x[np.random.default_rng(0).choice(len(x), 8, replace=False)]
    sk = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        KMeans(8, init=init, n_init=1, algorithm="lloyd").fit(x)
        sk.append(time.perf_counter() - t)
    print(f"{args.rows} rows x 10 features, k = 8, {args.sites} sites, default policy")
    print(f"  scikit-learn      best {min(sk) * 1000:7.1f} ms")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        config, cols = write_federation(x, args.sites, Path(tmp))
        for isolation in ("in-process", "process"):
            t = time.perf_counter()
            fed = fh.Federation.from_config(config, isolation=isolation)
            ready = time.perf_counter() - t
            fed.coordinator.observers = []
            times = []
            for _ in range(args.repeat + 1):
                t = time.perf_counter()
                res = fed.kmeans("d", cols, 8, init=init, standardize=False)
                times.append(time.perf_counter() - t)
            fed.close()
            best[isolation] = min(times[1:])
            print(
                f"  {isolation:10s}        ready {ready:5.2f} s, first query "
                f"{times[0] * 1000:6.1f} ms, repeated best {best[isolation] * 1000:6.1f} ms "
                f"({best[isolation] / min(sk):.2f}x scikit-learn), {res.n_iter} Lloyd rounds"
            )
    ratio = best["process"] / best["in-process"]
    print(f"  process / in-process (repeated): {ratio:.2f}x")


if __name__ == "__main__":
    main()
