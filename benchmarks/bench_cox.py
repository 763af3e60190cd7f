"""Federated Cox vs pooled lifelines and scikit-survival on the same rows: time, peak memory, bytes.

Run: ``make bench`` runs the 100k × 10 scenario; ``.venv/bin/python benchmarks/bench_cox.py --scenario
large`` adds 1M × 20 over 10 sites (pooled lifelines alone takes minutes there). Every fit runs in its
own fresh process so that its peak memory (max RSS) is its own; the federated fit is the real path
(Flower messages to each embedded site's ClientApp, site steps, privacy checks, audit) under
``Policy.unrestricted()``, so its coefficients must equal the pooled fits, and the script checks that.
It is the fit alone (``diagnostics=False``): the pooled fits do not compute concordance or the
proportional-hazards test either. Peak RSS covers the whole process, so it is at least what making
the rows took (about 820 MB at 1M × 20). Printed: seconds, peak RSS, ratios federated / pooled,
iterations and the bytes each site sends per iteration. ``fedhem-default`` is the same fit under
the default policy: pooled through secure sums on blocks of a monthly grid (masking, signing and
checking every round), its coefficients off the pooled rows' by the blocks' ties (printed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

SCENARIOS = {"small": (100_000, 10, 5), "large": (1_000_000, 20, 10)}


def make_rows(n: int, p: int, seed: int = 0, times: str = "days") -> pd.DataFrame:
    """Half binary, half continuous covariates; survival in whole days (as a registry records it)
    or continuous (every time distinct: the hardest case for risk-set sums)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for j in range(p):
        cols[f"x{j}"] = rng.binomial(1, 0.3, n) if j % 2 else rng.normal(0, 1, n).round(3)
    X = np.column_stack(list(cols.values())).astype(float)
    beta = np.linspace(-0.5, 0.5, p)
    hazard = np.exp(X @ beta) / 900.0
    t = rng.exponential(1 / hazard)
    c = rng.uniform(30, 3650, n)
    df = pd.DataFrame(cols)
    observed = np.minimum(t, c)
    df["days"] = np.ceil(observed) if times == "days" else observed
    df["death"] = (t <= c).astype(int)
    return df


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, n: int, p: int, sites: int, times: str) -> dict:
    df = make_rows(n, p, times=times)
    covariates = [f"x{j}" for j in range(p)]
    out: dict = {"kind": kind, "rss_data_mb": peak_rss_mb()}
    if kind == "lifelines":
        from lifelines import CoxPHFitter

        start = time.perf_counter()
        fit = CoxPHFitter().fit(df, "days", "death")
        out["seconds"] = time.perf_counter() - start
        out["coef"] = fit.params_[covariates].tolist()
    elif kind == "sksurv":
        from sksurv.linear_model import CoxPHSurvivalAnalysis
        from sksurv.util import Surv

        y = Surv.from_arrays(df["death"].astype(bool), df["days"])
        start = time.perf_counter()
        fit = CoxPHSurvivalAnalysis(ties="breslow").fit(df[covariates], y)
        out["seconds"] = time.perf_counter() - start
        out["coef"] = list(map(float, fit.coef_))
    else:
        import os

        os.environ["FEDHEM_ACTIVITY"] = "off"
        import fedhem_kernel as fh

        site_of_row = np.random.default_rng(1).integers(0, sites, n)
        tables = {f"site_{s}": {"reg": df[site_of_row == s]} for s in range(sites)}
        del df
        # "fedhem-default": the default policy, pooled through secure sums on time blocks (its
        # coefficients differ from the pooled rows' by the blocks' ties: printed, not checked)
        policy = fh.Policy() if kind == "fedhem-default" else fh.Policy.unrestricted()
        columns = {"reg": {"days": {"type": "float", "unit": "days"}}}
        fed = fh.Federation.local(tables, policy=policy, columns=columns)
        del tables
        grid = fed.coordinator.grid
        before = sum(grid.bytes_received.values())
        ties = "breslow" if kind == "fedhem-breslow" else "efron"
        start = time.perf_counter()
        fit = fed.cox("reg", "days", "death", covariates, ties=ties, diagnostics=False)  # as pooled
        out["seconds"] = time.perf_counter() - start
        out["coef"] = fit.params_[covariates].tolist()
        out["iterations"] = int(fit.iterations)
        rounds = max(1, max(grid.replies_received.values()))
        out["bytes_per_site_per_round"] = (sum(grid.bytes_received.values()) - before) / (
            sites * rounds
        )
        out["rounds"] = rounds
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run(kind: str, n: int, p: int, sites: int, times: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(n), str(p), str(sites), times],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scenario(name: str, with_sksurv: bool, times: str) -> None:
    n, p, sites = SCENARIOS[name]
    print(f"\n== {name}: {n:,} rows × {p} covariates over {sites} sites (times: {times}) ==")
    kinds = ("fedhem-efron", "fedhem-default", "lifelines")
    results = {k: run(k, n, p, sites, times) for k in kinds}
    if with_sksurv:
        results["fedhem-breslow"] = run("fedhem-breslow", n, p, sites, times)
        results["sksurv"] = run("sksurv", n, p, sites, times)
    for k, r in results.items():
        extra = ""
        if "iterations" in r:
            extra = (
                f"  {r['iterations']} Newton iterations, {r['rounds']} rounds, "
                f"{r['bytes_per_site_per_round'] / 1e6:.2f} MB per site per round"
            )
        print(f"{k:15s} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB{extra}")
    pairs = [("fedhem-efron", "lifelines"), ("fedhem-default", "lifelines")]
    if with_sksurv:
        pairs.append(("fedhem-breslow", "sksurv"))
    for fed_kind, ref in pairs:
        f, r = results[fed_kind], results[ref]
        diff = float(np.max(np.abs(np.array(f["coef"]) - np.array(r["coef"]))))
        print(
            f"{fed_kind} / {ref}: time {f['seconds'] / r['seconds']:.2f}×, "
            f"peak memory {f['peak_rss_mb'] / r['peak_rss_mb']:.2f}×, max |Δcoef| {diff:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="small")
    parser.add_argument("--no-sksurv", action="store_true", help="skip scikit-survival (Breslow)")
    parser.add_argument("--times", choices=["days", "continuous", "both"], default="days")
    parser.add_argument(
        "--worker", nargs=5, metavar=("KIND", "N", "P", "SITES", "TIMES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        kind, n, p, sites, times = args.worker
        print(json.dumps(worker(kind, int(n), int(p), int(sites), times)))
        return
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    time_kinds = ["days", "continuous"] if args.times == "both" else [args.times]
    for name in names:
        for times in time_kinds:
            scenario(name, with_sksurv=not args.no_sksurv, times=times)


if __name__ == "__main__":
    main()
