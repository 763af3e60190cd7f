"""Cox proportional hazards, fitted by Newton–Raphson on the pooled partial likelihood.

Rounds: ``levels`` for each categorical covariate (every site codes the same dummies; the first level
in sorted order is the reference, as ``pd.get_dummies(..., drop_first=True)`` does), ``cox_setup``
(each site checks its rules and releases its merged time steps, see
:mod:`~fedhem_kernel.analyses.cox.site`), then per Newton iteration one ``cox_sums`` round (the
sites' per-step sums, from which the coordinator builds the risk-set sums S0, S1, S2 at every pooled
event time of each stratum: additive across sites) and, when per-step S2 would make replies large,
a second ``cox_hessian`` round (see :func:`fit_cox`); a ``cox_release`` round at the end.

The coordinator evaluates the log partial likelihood, gradient and Hessian with Efron's or Breslow's
handling of ties and steps exactly as lifelines' ``CoxPHFitter`` does: covariates standardised with
the pooled mean and standard deviation, β = 0 to start, lifelines' step-size schedule and its three
stopping rules (step norm 1e-7, relative change of the log-likelihood 1e-9, Newton decrement 1e-7).
Efron fits therefore stop where lifelines stops (which is not always the optimum to 1e-6: on lung,
lifelines is 2e-5 short of it); Breslow fits, compared with scikit-survival, run the same steps to a
tolerance of 1e-12. Standard errors come from the inverse Hessian.

Under ``Policy.unrestricted()`` the sites' steps are their exact distinct times and the fit equals
lifelines on the pooled rows; under a coarser policy it is a Cox fit on the sites' released time
steps (grouped times) and the result says so.

Extension points: :func:`fit_cox` returns a :class:`CoxFit` with the pooled per-stratum sums at the
final coefficients (``CoxFit.strata``: S0, S1 and, for Efron, D0, D1 at tied times; S2/D2 too when
one round per iteration was used) and :func:`evaluate` computes log-likelihood, gradient and
Hessian from such sums; ``CoxResult.fit`` keeps the :class:`CoxFit`.

Model checks (two rounds after the fit): see :mod:`~fedhem_kernel.analyses.cox.site_checks`.
"""

from __future__ import annotations

import numpy as np

from fedhem_kernel.protocol.params import BOOL, COLUMN, COLUMNS, NONE, Params, integer, options

TIES = ("efron", "breslow")
#: ``strata="site"``: a separate baseline hazard per site.
SITE_STRATUM = "site"
#: Largest coefficient (standardised units) a site computes sums for.
MAX_COEFFICIENT = 20.0
#: Score bins for pairs across sites (more bins: fewer unresolved pairs).
CONCORDANCE_BINS = 64
#: Most bins a site accepts.
MAX_BINS = 256
#: Time transforms of the proportional-hazards test (lifelines' names).
TRANSFORMS = ("rank", "km", "identity", "log")
#: Most covariates a request may name, and most design columns (dummies included) a fit may have.
MAX_COVARIATES = 200
MAX_COVARIATES_TOTAL = 2000
#: Most stratum columns.
MAX_STRATA_COLUMNS = 10

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "duration": (COLUMN,),
    "event": (COLUMN,),
    "covariates": (COLUMNS,),
    "strata": (COLUMNS, NONE),
    "ties": (options(*TIES),),
    "diagnostics": (BOOL,),
    "concordance_bins": (integer(1, MAX_BINS),),
}


# -- pooled through secure sums (site_pooled.py, combine_pooled.py) -----------------------------
#: The setup round's counts per stratum the blocks are decided from.
BLOCK_COUNTS = ("at_risk", "leaving", "events_below", "dying")


def time_blocks(counts: dict, k: int, n_sites: int) -> tuple[list[int], list[bool]]:
    """The blocks of a stratum's pooled Cox fit, from the setup round's perturbed counts of it
    (each perturbed by at most one per site, so by at most ``m = n_sites`` in total):
    ``at_risk[t]``, the patients at grid step t or later (``t = 0..horizon + 1``, the last:
    beyond the horizon), ``leaving[t]``, those leaving at step t, ``events_below[t]``, the events
    at steps 0..t, and ``dying[t]``, the events at step t.

    A block closes at the first step where the patients leaving it surely number ``k``: the
    larger of two lower bounds, the difference of the at-risk counts at its ends less ``2m``,
    and its steps' leaving counts less ``m`` each; what is left after the last block that closed
    joins it (it runs to the horizon). Returns each block's first step, and whether its events
    surely number ``k`` by the same two bounds: only then are its events' own sums released
    (Efron's ties); a block with fewer takes Breslow's. No block (``[]``) when the stratum never
    reaches the bound. Every site makes the same decision again from the same total."""
    risk = np.asarray(counts["at_risk"], dtype=np.int64)
    leaving = np.asarray(counts["leaving"], dtype=np.int64)
    below = np.asarray(counts["events_below"], dtype=np.int64)
    dying = np.asarray(counts["dying"], dtype=np.int64)
    m = n_sites
    starts: list[int] = []
    start, steps = 0, 0
    for t in range(len(below)):
        steps += int(leaving[t]) - m
        if max(int(risk[start] - risk[t + 1]) - 2 * m, steps) >= k:
            starts.append(start)
            start, steps = t + 1, 0
    ends = [*starts[1:], len(below)] if starts else []
    efron = []
    for first, end in zip(starts, ends, strict=True):
        whole = int(below[end - 1]) - (int(below[first - 1]) + 2 * m if first > 0 else m)
        efron.append(max(whole, int((dying[first:end] - m).sum())) >= k)
    return starts, efron


def pooled_scaling(totals: dict) -> tuple[np.ndarray, np.ndarray]:
    """The centre and scale (pooled mean and SD of every design column) from the setup round's
    totals: ``n`` (perturbed), ``sum`` and ``sumsq``. Both sides compute them the same way; a
    fit's coefficients do not depend on them (only its numerics do)."""
    n = float(np.asarray(totals["n"]).sum())
    total = np.asarray(totals["sum"], dtype=float)
    square = np.asarray(totals["sumsq"], dtype=float)
    center = total / max(n, 1.0)
    var = np.clip(square - n * center**2, 0.0, None) / max(n - 1.0, 1.0)
    return center, np.sqrt(var)


def ph_weights(
    totals: dict, blocks: list[list[int]], step: float, k: int, n_sites: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The Schoenfeld test's time weights of a pooled fit, from the setup round's perturbed
    counts (so that every site derives them itself): per stratum with blocks, per block the
    four transforms of :data:`TRANSFORMS` (rank, Kaplan–Meier, time, log time: a block's time
    is its end), less their event-weighted mean over every stratum; and Σ d·(g - ḡ)² per
    transform. Blocks are grouped until a group surely holds ``k`` events (the bounds of
    :func:`time_blocks`; what is left joins the last group), and every block of a group takes
    the group's event-weighted mean: a site sums Σ w·z over its events, which must not single
    out a block of fewer than ``k`` events. A stratum without any such group gets zeros."""
    m = n_sites
    per_stratum: list[tuple[np.ndarray, np.ndarray, bool]] = []
    for s, starts in enumerate(blocks):
        if not starts:
            continue
        risk = np.asarray(totals["at_risk"][s], dtype=float)
        dying = np.asarray(totals["dying"][s], dtype=float)
        below = np.asarray(totals["events_below"][s], dtype=float)
        ends = [*starts[1:], len(dying)]
        d = np.array([max(dying[a:b].sum(), 0.0) for a, b in zip(starts, ends, strict=True)])
        n = np.maximum(risk[starts], 1.0)
        before = np.cumsum(d) - d
        km = 1 - np.cumprod(1 - np.clip(d / n, 0, 1))
        # a block's time: the middle of its steps while more than 2m remain (the last block
        # runs to the horizon, its events do not)
        gone = np.flatnonzero(risk <= 2 * m)
        time = np.array(
            [
                (a + min(b, int(gone[np.searchsorted(gone, a)]) if (gone >= a).any() else b)) / 2
                for a, b in zip(starts, ends, strict=True)
            ]
        )
        time = np.maximum(time, 0.5) * step
        g = np.column_stack((before + (d + 1) / 2, km, time, np.log(time)))
        # groups of blocks that surely hold k events (the bounds of time_blocks' Efron flags)
        group = np.full(len(starts), -1)
        first, label = 0, 0
        for j, b in enumerate(ends):
            a = starts[first]
            whole = below[b - 1] - (below[a - 1] + 2 * m if a > 0 else m)
            if max(whole, float((dying[a:b] - m).sum())) >= k:
                group[first : j + 1] = label
                first, label = j + 1, label + 1
        if label == 0:  # no group: this stratum takes no part in the test
            per_stratum.append((np.zeros_like(g), np.zeros(len(starts)), False))
            continue
        group[group < 0] = label - 1  # the rest joins the last group
        for c in range(label):
            inside = group == c
            weight = d[inside].sum()
            if weight > 0:
                g[inside] = (d[inside, None] * g[inside]).sum(axis=0) / weight
        per_stratum.append((g, d, True))
    events = np.concatenate([d for _, d, _ in per_stratum]) if per_stratum else np.zeros(0)
    if not events.sum() > 0:
        return [np.zeros_like(g) for g, _, _ in per_stratum], np.zeros(len(TRANSFORMS))
    stacked = np.concatenate([g for g, _, _ in per_stratum])
    mean = (events[:, None] * stacked).sum(axis=0) / events.sum()
    weights = [g - mean if active else g for g, _, active in per_stratum]
    spread = (events[:, None] * (stacked - mean) ** 2).sum(axis=0)
    return weights, spread
