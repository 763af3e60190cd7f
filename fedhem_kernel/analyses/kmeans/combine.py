"""Combine step of ``kmeans``: the Lloyd loop on pooled sums and counts, and the federated k-means++ start."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import pooled_k, pooled_sums
from fedhem_kernel.analyses.common.combine_dp import dp_release
from fedhem_kernel.analyses.common.combine_moments import pooled_moments, standard_scale
from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.kmeans import HELD, MAX_CLUSTERS, RELEASED, WITHHELD
from fedhem_kernel.analyses.kmeans.combine_dp import fit_dp
from fedhem_kernel.analyses.kmeans.result import KMeansResult
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp_values import RESOLUTION
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.secure_sum import SecureTotal


# -- combine side ---------------------------------------------------------------------------------
@dataclass
class _Contributions:
    """Each site's last released (count, sums, inertia) per cluster within this query."""

    n_clusters: int
    p: int
    #: per site: which clusters it has a contribution for, and their counts, sums and inertia
    last: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )

    def add(self, payloads: dict[str, Payload]) -> tuple[np.ndarray, np.ndarray, float]:
        k, p = self.n_clusters, self.p
        counts = np.zeros(k, dtype=np.int64)
        sums = np.zeros((k, p))
        inertia = 0.0
        for site in list(self.last):
            if site not in payloads:
                del self.last[site]  # the site left the query: its contributions go with it
        for site in sorted(payloads):  # a fixed order: sums do not depend on reply order
            payload = payloads[site]
            entry = self.last.get(site)
            if entry is None:
                entry = self.last[site] = (
                    np.zeros(k, dtype=bool),
                    np.zeros(k, np.int64),
                    np.zeros((k, p)),
                    np.zeros(k),
                )
            has, c, s, w = entry
            status = payload["status"]
            got_c = np.asarray(payload["counts"], dtype=np.int64)
            got_s = np.asarray(payload["sums"], dtype=float).reshape(k, p)
            got_w = np.asarray(payload["inertia"], dtype=float)
            if len(status) == k and all(st == RELEASED for st in status):  # the usual round
                has[:] = True
                c[:], s[:], w[:] = got_c, got_s, got_w
                counts += c
                sums += s
                for value in w.tolist():
                    inertia += value
                continue
            status = np.asarray(status, dtype=object)
            released = status == RELEASED
            c[released] = got_c[released]
            s[released] = got_s[released]
            w[released] = got_w[released]
            has[released] = True
            has[status == WITHHELD] = False  # held: the last released contribution stays
            counts += np.where(has, c, 0)
            sums += np.where(has[:, None], s, 0.0)
            for value in w[has].tolist():
                inertia += value
        return counts, sums, inertia


def _secure_stats(q: Ask, params: Payload) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and population variance of the features from a secure sum of n, Σx, Σx²."""
    totals = q.ask_sum("kmeans_pool_stats", params).totals
    n = int(np.asarray(totals["n"]).sum())
    if n == 0:
        raise ParameterError(
            "no site has enough patients with every feature for these clusters",
            dataset=q.dataset,
        )
    mean = np.asarray(totals["sum"], dtype=float) / n
    var = np.clip(np.asarray(totals["sumsq"], dtype=float) / n - mean**2, 0.0, None)
    return mean, var


def _pooled_stats(per_site: dict[str, Payload]) -> tuple[int, np.ndarray, np.ndarray]:
    n, mean, m2 = pooled_moments(list(per_site.values()))
    return n, mean, m2 / n  # population variance, as numpy's var and StandardScaler


def _kmeans_plus_plus(q: Ask, base: Payload, n_clusters: int, p: int, seed: int) -> np.ndarray:
    """Greedy k-means++ over the sites' candidates (scikit-learn's scheme, pooled D² weights;
    sites outside secure sums: in pooled mode :func:`_pooled_start`)."""
    rng = np.random.default_rng(seed)
    n_trials = 2 + int(math.log(n_clusters))
    chosen = np.empty((0, p))
    for r in range(n_clusters):
        params = {**base, "centers": chosen, "n_candidates": n_trials, "seed": seed, "round": r}
        payloads = q.ask("kmeans_candidates", params)
        sites = [s for s in sorted(payloads) if len(payloads[s]["candidates"])]
        mass = np.array([float(payloads[s]["mass"]) for s in sites])
        if not sites or not mass.sum() > 0:
            raise ParameterError(
                "k-means++ found no further start centre (every patient sits on a chosen "
                "centre): use fewer clusters",
                dataset=q.dataset,
            )
        # pooled D² sampling: a site by its D² mass, then its next candidate (drawn by D² there)
        used = dict.fromkeys(sites, 0)
        trials = []
        for _ in range(1 if r == 0 else n_trials):
            site = sites[int(rng.choice(len(sites), p=mass / mass.sum()))]
            cands = np.asarray(payloads[site]["candidates"], dtype=float).reshape(-1, p)
            if used[site] < len(cands):
                trials.append(cands[used[site]])
                used[site] += 1
        if len(trials) > 1:
            asked = {**base, "centers": chosen, "candidates": np.array(trials)}
            replies = q.ask("kmeans_potential", asked)
            potential = sum(
                np.asarray(replies[s]["potential"], dtype=float) for s in sorted(replies)
            )
            best = int(np.argmin(potential))
        else:
            best = 0
        chosen = np.vstack([chosen, trials[best]])
    return chosen


#: Public candidates per round of a pooled start, and per secure sum of their potentials.
POOLED_CANDIDATES = 60
POTENTIALS_PER_SUM = 20


def _pooled_start(q: Ask, base: Payload, n_clusters: int, var: np.ndarray, seed: int) -> np.ndarray:
    """Greedy k-means++ on public candidates (pooled mode): each round, candidates drawn with
    the seed from the pooled mean and spread (the working units are centred on the pooled mean),
    the one with the lowest pooled potential taken (secure sums of each site's D² mass over its
    micro-clusters). Nothing per site leaves: per-site candidates and D² masses would say which
    site has few or no patients in the cohort."""
    rng = np.random.default_rng(seed)
    p = len(var)
    sd = np.sqrt(np.maximum(var, 0.0))
    chosen = np.empty((0, p))
    for _ in range(n_clusters):
        trials = rng.normal(size=(POOLED_CANDIDATES, p)) * sd * 1.5
        potential = np.concatenate(
            [
                np.asarray(
                    q.ask_sum(
                        "kmeans_pool_potential",
                        {
                            **base,
                            "centers": chosen,
                            "candidates": trials[lo : lo + POTENTIALS_PER_SUM],
                        },
                    ).totals["potential"]
                )
                for lo in range(0, POOLED_CANDIDATES, POTENTIALS_PER_SUM)
            ]
        )
        chosen = np.vstack([chosen, trials[int(np.argmin(potential))]])
    return chosen


def _check_init(init: Any, n_clusters: int, features: list[str]) -> np.ndarray | str:
    if isinstance(init, str):
        if init != "k-means++":
            raise ParameterError("'init' must be 'k-means++' or an array of start centres")
        return init
    try:
        arr = np.asarray(init.to_numpy() if isinstance(init, pd.DataFrame) else init, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError("'init' must be 'k-means++' or an array of numbers") from None
    if arr.shape != (n_clusters, len(features)):
        raise ParameterError(
            f"'init' must have shape (k, features) = ({n_clusters}, {len(features)})"
        )
    if not np.isfinite(arr).all():
        raise ParameterError("'init' must hold finite numbers")
    return arr


def _check_number(value: Any, name: str, low: float, integer: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or not (value >= low) or (not integer and not math.isfinite(value)):
        kind = "a whole number" if integer else "a number"
        raise ParameterError(f"'{name}' must be {kind} >= {low:g}")


def run(
    q: Ask,
    features: Sequence[str] | str,
    k: int,
    *,
    init: Any = "k-means++",
    standardize: bool = True,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansResult:
    """Lloyd's k-means across the sites; each site keeps its patients' clusters as ``cluster``.

    Sites that refused or failed in a round keep no clustering of this run: they are told to drop
    the ``cluster`` column of an earlier one (``kmeans_clear``), whatever the outcome.
    """
    try:
        return _fit(q, features, k, init, standardize, seed, max_iter, tol)
    finally:
        q.tell("kmeans_clear", {}, q.dropped)


def _fit(
    q: Ask,
    features: Sequence[str] | str,
    k: int,
    init: Any,
    standardize: bool,
    seed: int,
    max_iter: int,
    tol: float,
) -> KMeansResult:
    feats = check_features(features)
    _check_number(k, "k", 1, integer=True)
    if k > MAX_CLUSTERS:
        raise ParameterError(f"'k' must be at most {MAX_CLUSTERS}")
    start = _check_init(init, k, feats)
    if not isinstance(standardize, bool):
        raise ParameterError("'standardize' must be True or False")
    _check_number(seed, "seed", 0, integer=True)
    _check_number(max_iter, "max_iter", 1, integer=True)
    _check_number(tol, "tol", 0, integer=False)
    release = dp_release(q, RESOLUTION)
    if release is not None:
        return fit_dp(q, feats, k, start, standardize, seed, max_iter, tol, release)
    p = len(feats)
    source = f"kmeans {uuid.uuid4().hex[:12]}"
    pooled = pooled_sums(q, "kmeans")
    # Given centres and no standardising: nothing is needed before the first Lloyd round, which
    # brings the statistics (one round fewer) and works in units centred on the given centres'
    # mean; otherwise a statistics round first, and units centred on the pooled mean.
    early = isinstance(start, str) or standardize or pooled
    if early:
        if pooled:
            mean, var = _secure_stats(q, {"features": feats, "k": k})
        else:
            _, mean, var = _pooled_stats(q.ask("kmeans_stats", {"features": feats, "k": k}))
        scale = standard_scale(feats, var, q.dataset) if standardize else np.ones(p)
        shift = mean  # centred units, as scikit-learn's KMeans centres X
        tol_w = float(np.mean(var / scale**2)) * tol
    else:
        scale = np.ones(p)
        shift = np.asarray(start, dtype=float).mean(axis=0)
    base = {
        "features": feats,
        "k": k,
        "shift": shift,
        "scale": scale,
        "standardize": standardize,
    }
    if isinstance(start, str) and pooled:
        centers = _pooled_start(q, base, k, var / scale**2, seed)
    elif isinstance(start, str):
        centers = _kmeans_plus_plus(q, base, k, p, seed)
    else:
        centers = (start - shift) / scale
    contrib = _Contributions(k, p)
    history = []
    converged = False
    n_iter = 0
    empty_rounds: set[int] = set()
    for i in range(max_iter):
        params = {**base, "centers": centers}
        if i == 0 and not early:
            params["moments"] = True
        if pooled:  # the totals only: every site's share covers whole micro-clusters
            totals = q.ask_sum("kmeans_pool_step", params).totals
            counts = np.asarray(totals["counts"], dtype=np.int64)
            sums = np.asarray(totals["sums"], dtype=float).reshape(k, p)
            inertia = float(np.asarray(totals["inertia"]).sum())
        else:
            payloads = q.ask("kmeans_step", params)
            if i == 0 and not early:
                _, mean, var = _pooled_stats({s: pl["moments"] for s, pl in payloads.items()})
                tol_w = float(np.mean(var)) * tol
            counts, sums, inertia = contrib.add(payloads)
        new = centers.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty_rounds.update(np.flatnonzero(~filled).tolist())
        shift_tot = float(((new - centers) ** 2).sum())
        history.append({"round": i + 1, "inertia": inertia, "center_shift": shift_tot})
        centers = new
        n_iter = i + 1
        if shift_tot <= tol_w:
            converged = True
            break
    assign = {**base, "centers": centers, "source": source}
    final = q.ask_sum("kmeans_pool_assign", assign) if pooled else q.ask("kmeans_assign", assign)
    return _result(
        q,
        final,
        centers,
        shift,
        mean,
        scale,
        feats,
        n_iter,
        converged,
        history,
        empty_rounds,
        standardize=standardize,
        init="k-means++" if isinstance(start, str) else "array",
        seed=seed,
        source=source,
    )


def _result(
    q: Ask,
    final: dict[str, Payload] | SecureTotal,
    centers: np.ndarray,
    shift: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    feats: list[str],
    n_iter: int,
    converged: bool,
    history: list[dict],
    empty_rounds: set[int],
    *,
    standardize: bool,
    init: str,
    seed: int,
    source: str,
) -> KMeansResult:
    k = len(centers)
    names = [str(j + 1) for j in range(k)]
    sizes = np.zeros(k, dtype=np.int64)
    inertia = 0.0
    rows = []
    notes: list[str] = []
    if isinstance(final, SecureTotal):  # pooled: the totals only, no site's own clusters
        sizes = np.asarray(final.totals["counts"], dtype=np.int64)
        inertia = float(np.asarray(final.totals["inertia"]).sum())
        sat_out = int(np.asarray(final.totals["sat_out"]).sum())
        if sat_out:
            notes.append(
                f"{sat_out} site(s) had too few patients with every feature for {k} clusters of "
                "micro-clusters (or a feature singling out a few of them): their patients are "
                "not in the clustering"
            )
        q.note(
            "pooled through secure sums: every round's cluster counts, sums and inertia are "
            f"totals over the sites (each site's share whole micro-clusters of {pooled_k(q)} or "
            "more); the start is greedy k-means++ over public candidates drawn around the "
            "pooled mean, chosen by their pooled potentials (nothing per site)"
        )
        final = {}
    for site in sorted(final):
        payload = final[site]
        for j, st in enumerate(payload["status"]):
            count = int(payload["counts"][j])
            if st == RELEASED:
                sizes[j] += count
                inertia += float(payload["inertia"][j])
            rows.append(
                {
                    "site": site,
                    "cluster": names[j],
                    "size": count if st == RELEASED else pd.NA,
                    "status": st,
                }
            )
    by_site = pd.DataFrame(rows, columns=["site", "cluster", "size", "status"])
    by_site["size"] = by_site["size"].astype("Int64")
    if (by_site["status"] == WITHHELD).any():
        notes.append(
            "Some sites withheld clusters with fewer than min_cell_count patients: those "
            "centres are pooled from the other sites and their sizes leave them out."
        )
    if (by_site["status"] == HELD).any():
        notes.append(
            "Some sites held clusters that differ from an earlier release by fewer than "
            "min_cell_count patients: their last released contribution was used; sizes and "
            "inertia leave them out."
        )
    if empty_rounds:
        notes.append(
            "Clusters " + ", ".join(names[j] for j in sorted(empty_rounds)) + " had no released "
            "members in some round and kept their centre (scikit-learn would move them)."
        )
    for note in notes:
        q.note(note)
    centers_orig = centers * scale + shift
    return KMeansResult(
        cluster_centers=pd.DataFrame(
            centers_orig, index=pd.Index(names, name="cluster"), columns=feats
        ),
        cluster_sizes=pd.Series(sizes, index=pd.Index(names, name="cluster"), name="size"),
        inertia=inertia,
        n_iter=n_iter,
        converged=converged,
        by_site=by_site,
        history=pd.DataFrame(history, columns=["round", "inertia", "center_shift"]),
        privacy=q.report(),
        dataset=q.dataset,
        features=tuple(feats),
        standardize=standardize,
        mean=pd.Series(mean, index=feats, name="mean"),
        scale=pd.Series(scale, index=feats, name="scale"),
        init=init,
        seed=seed,
        where=q.where,
        source=source,
        notes=tuple(notes),
    )
