"""Combine step of ``kmeans`` in DP mode: Lloyd's algorithm on noised secure sums.

Side: researcher (combine). The whole fit is one DP release's worth of budget split over its
releases (each asked with noise ``√releases`` times the scale a single release needs, so every
site is charged ``ρ / releases`` each time): a statistics release (count, mean and spread per
feature) for the units and the start, then up to :data:`DP_ROUNDS` Lloyd rounds (per cluster
its noisy count and Σt), the last of which leaves each patient's cluster at their site. Values
are clipped to the bounds the sites declare (privacy/dp_values.py).

No k-means++ (its candidates are patients' values): the start is ``k`` points drawn with the
seed around the noisy mean, spread by the noisy SDs (public once released), or the centres
given. A cluster whose noisy count is below the noise floor keeps its centre that round.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_bounds
from fedhem_kernel.analyses.kmeans import stats_fields, step_fields
from fedhem_kernel.analyses.kmeans.result import KMeansResult
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import multiplier
from fedhem_kernel.protocol.query import Ask

#: Most Lloyd rounds of a DP fit (each spends a share of the budget; the last assigns).
DP_ROUNDS = 8
#: A cluster's centre moves only where its noisy count is at least this many noise SDs.
FLOOR_SDS = 3.0


def spread_start(
    mean: np.ndarray, sd: np.ndarray, k: int, units: np.ndarray, seed: int
) -> np.ndarray:
    """``k`` start centres from public numbers only: candidates drawn with ``seed`` uniformly
    within 1.5 noisy SDs of the noisy mean, chosen greedily far apart (maximin, in the fit's
    units) so that the start covers the cloud (a random start falls into poor local optima)."""
    rng = np.random.default_rng(seed)  # a public choice, not privacy noise
    candidates = np.clip(mean + rng.uniform(-1.5, 1.5, (50 * k, len(mean))) * sd, 0, 1)
    chosen = [int(rng.integers(len(candidates)))]
    nearest = np.full(len(candidates), np.inf)
    for _ in range(k - 1):
        gap = (((candidates - candidates[chosen[-1]]) / units) ** 2).sum(axis=1)
        nearest = np.minimum(nearest, gap)
        chosen.append(int(np.argmax(nearest)))
    return candidates[chosen]


def fit_dp(
    q: Ask,
    feats: list[str],
    k: int,
    start: np.ndarray | str,
    standardize: bool,
    seed: int,
    max_iter: int,
    tol: float,
    release: DPRelease,
) -> KMeansResult:
    """DP k-means (see the module docstring): centres in the features' units, noisy sizes."""
    p = len(feats)
    bounds = dp_bounds(q, feats)
    low = np.array([lo for lo, _ in bounds])
    width = np.array([hi - lo for lo, hi in bounds])
    rounds = min(max_iter, DP_ROUNDS)
    releases = rounds + 1
    scale = release.scale * math.sqrt(releases)  # ρ / releases each
    base = {"features": feats, "k": k, "bounds": bounds}
    sd_noise = release.total_sd(len(q.sites)) * math.sqrt(releases)

    stats = q.ask_sum("kmeans_dp_stats", base, noise_scale=scale).totals
    m = multiplier(stats_fields(p))
    n = float(np.asarray(stats["count"]).sum()) / m
    floor = max(10.0, FLOOR_SDS * sd_noise / m)
    if n < max(floor, 2 * k):
        raise ParameterError(
            f"DP mode: too few patients with every feature for {k} clusters above the noise",
            dataset=q.dataset,
        )
    mean_t = np.clip(np.asarray(stats["sum"], dtype=float) / (m * n), 0, 1)
    var_t = np.clip(
        np.asarray(stats["sumsq"], dtype=float) / (4 * m * n) - (mean_t - 0.5) ** 2, 0, None
    )
    sd_t = np.sqrt(var_t)
    if standardize:
        flat = [f for f, s in zip(feats, sd_t, strict=True) if not s > 1e-9]
        if flat:
            raise ParameterError(
                "DP mode: this feature shows no variation above the noise",
                dataset=q.dataset,
                column=flat[0],
            )
        units = sd_t
    else:
        units = 1.0 / width  # distances in the features' own units
    units = units / units.max()
    spread = np.maximum(sd_t, 1e-3)
    rng = np.random.default_rng(seed + 1)  # public choices, not privacy noise
    if isinstance(start, str):
        centres = spread_start(mean_t, spread, k, units, seed)
    else:
        centres = np.clip((np.asarray(start, dtype=float) - low) / width, 0, 1)

    m = multiplier(step_fields(p))
    step_floor = max(10.0, FLOOR_SDS * sd_noise / m)
    source = f"kmeans {uuid.uuid4().hex[:12]}"
    history = []
    converged, n_iter, sizes = False, 0, np.zeros(k)
    tol_w = float(np.mean((sd_t / units) ** 2)) * tol
    for i in range(rounds):
        last = i == rounds - 1
        params = {**base, "centers": centres, "scale": units, "source": source if last else None}
        totals = q.ask_sum("kmeans_dp_step", params, noise_scale=scale).totals
        counts = np.asarray(totals["counts"], dtype=float) / m
        sums = np.asarray(totals["sums"], dtype=float).reshape(k, p) / m
        sizes = counts
        if last:  # the labels the sites keep are to these centres
            break
        new = centres.copy()
        moved = counts >= step_floor
        new[moved] = np.clip(sums[moved] / counts[moved, None], 0, 1)
        for j in np.flatnonzero(~moved):  # an empty cluster: split the largest (public numbers)
            biggest = int(np.argmax(counts))
            new[j] = np.clip(new[biggest] + rng.normal(size=p) * 0.25 * spread, 0, 1)
        shift = float((((new - centres) / units) ** 2).sum())
        history.append({"round": i + 1, "inertia": math.nan, "center_shift": shift})
        centres, n_iter = new, i + 1
        if shift <= tol_w:
            converged = True
            params = {**params, "centers": centres, "source": source}
            totals = q.ask_sum("kmeans_dp_step", params, noise_scale=scale).totals
            sizes = np.asarray(totals["counts"], dtype=float) / m
            break
    names = [str(j + 1) for j in range(k)]
    index = pd.Index(names, name="cluster")
    q.note(release.note("every round's cluster counts and sums"))
    q.note(
        f"DP k-means: {n_iter} Lloyd round(s) and a statistics release, each with noise √"
        f"{releases} times a single release's (the fit costs one release's budget); values "
        "clipped to the bounds the sites declare; started "
        + (
            "from points drawn with the seed within 1.5 noisy SDs of the noisy mean, chosen "
            "far apart (no k-means++: its candidates are patients' values); a cluster left "
            "below the noise floor restarts next to the largest"
            if isinstance(start, str)
            else "from the given centres"
        )
        + "; sizes are noisy counts; no inertia (it would be another release)"
    )
    return KMeansResult(
        cluster_centers=pd.DataFrame(low + width * centres, index=index, columns=feats),
        cluster_sizes=pd.Series(
            np.maximum(0, np.rint(sizes)).astype(np.int64), index=index, name="size"
        ),
        inertia=math.nan,
        n_iter=n_iter,
        converged=converged,
        by_site=pd.DataFrame(columns=["site", "cluster", "size", "status"]),
        history=pd.DataFrame(history, columns=["round", "inertia", "center_shift"]),
        privacy=q.report(),
        dataset=q.dataset,
        features=tuple(feats),
        standardize=standardize,
        mean=pd.Series(low + width * mean_t, index=feats, name="mean"),
        scale=pd.Series(
            width * units if not standardize else width * sd_t, index=feats, name="scale"
        ),
        init="random" if isinstance(start, str) else "array",
        seed=seed,
        where=q.where,
        source=source,
        notes=(),
    )
