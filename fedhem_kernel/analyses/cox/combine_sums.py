"""The pooled risk-set sums of a Cox fit: per stratum S0, S1, S2 (and Efron's tied-event sums) at every
pooled event time, built from the sites' per-step sums, and the log partial likelihood, gradient and
Hessian they give (Efron or Breslow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhem_kernel.analyses.cox.likelihood import (
    PooledStratum,
)
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload


def pool_steps(out: np.ndarray, at: np.ndarray, sums: np.ndarray) -> None:
    """Add one site's per-step sums to the rows ``at`` of ``out`` (repeated rows add in order).

    ``at[j]`` is the last pooled time at or before the site's step j (-1 if none): step j is in the
    risk set of that time and of every earlier one, so after :func:`accumulate_from_end` row i of
    ``out`` holds the sum over every step at or after pooled time i. No (times × columns)
    temporary per site.
    """
    first = int(np.searchsorted(at, 0))  # ``at`` is sorted: steps before the first time join none
    for lo in range(first, len(at), _POOL_ROWS):  # blocks of steps: small temporaries
        rows, block = at[lo : lo + _POOL_ROWS], sums[lo : lo + _POOL_ROWS]
        lead = np.concatenate(
            ([rows[0] != at[lo - 1] if lo > first else True], rows[1:] != rows[:-1])
        )
        out[rows[lead]] += block[lead]  # the first step of each row: a plain indexed add
        if not lead.all():  # the others (rows with several steps), in order
            np.add.at(out, rows[~lead], block[~lead])


#: Steps per block in :func:`pool_steps`.
_POOL_ROWS = 1 << 14


def accumulate_from_end(values: np.ndarray) -> None:
    """Row i becomes the sum of rows i..last (accumulated from the end, as lifelines does); in place."""
    np.cumsum(values[::-1], axis=0, out=values[::-1])


# -- the fit ---------------------------------------------------------------------------------
@dataclass
class CoxFit:
    """The pooled fit in standardised units (``beta``; ``params = beta / scale``)."""

    columns: list[str]
    beta: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    log_likelihood: float
    log_likelihood_null: float
    iterations: int
    converged: bool
    strata: list[PooledStratum]
    sites: tuple[str, ...]
    n: int
    n_events: int
    time_step: float | None
    unit: str | None
    #: A pooled fit's last request, its setup round's totals and how many sites were in it
    #: (the proportional-hazards round builds on them); None for the per-site protocol.
    pooled_plan: tuple[Any, Any, int] | None = None

    @classmethod
    def from_newton(cls, newton: Any, **fields: Any) -> CoxFit:
        """The fit from a :func:`~fedhem_kernel.analyses.common.combine_newton.newton_raphson`
        result and the fields it does not hold."""
        return cls(
            beta=newton.beta,
            hessian=newton.hessian,
            gradient=newton.gradient,
            log_likelihood=newton.log_likelihood,
            log_likelihood_null=newton.log_likelihood_null,
            iterations=newton.iterations,
            converged=newton.converged,
            **fields,
        )


def check_variation(columns: Sequence[str], scale: np.ndarray, dataset: str | None) -> None:
    """Refuse a design column without variation in the pooled rows (its coefficient is not
    identified)."""
    flat = [c for c, s in zip(columns, scale, strict=True) if not s > 0]
    if flat:
        raise ParameterError(
            f"covariate '{flat[0]}' has no variation in the pooled cohort",
            dataset=dataset,
            column=flat[0],
        )


def _pool_strata(setups: dict[str, Payload], by_site: bool) -> list[PooledStratum]:
    grouped: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for site, payload in setups.items():
        for st in payload["strata"]:
            label = (site,) if by_site else tuple(st["label"])
            grouped.setdefault(label, []).append((site, st))
    out = []
    for label in sorted(grouped):
        parts = grouped[label]
        times = np.unique(np.concatenate([np.asarray(st["times"], float) for _, st in parts]))
        events = np.zeros(len(times), dtype=np.int64)
        event_sum = None
        for _, st in parts:
            t = np.asarray(st["times"], dtype=float)
            events[np.searchsorted(times, t)] += np.asarray(st["events"], dtype=np.int64)
            es = np.asarray(st["event_sum"], dtype=float)
            event_sum = es if event_sum is None else event_sum + es
        out.append(
            PooledStratum(
                label=label,
                times=times,
                events=events,
                event_sum=event_sum,  # type: ignore[arg-type]
                sites=tuple(s for s, _ in parts),
                n=int(sum(int(st["n"]) for _, st in parts)),
                site_steps={s: np.asarray(st["steps"], dtype=float) for s, st in parts},
            )
        )
    return out


def sum_bytes(strata: Sequence[PooledStratum], p: int, ties: str, full: bool = True) -> int:
    """Largest reply of one site to ``cox_sums``, in bytes of float64 data.

    A site sends, per stratum, 1 + p (+ q = p(p+1)/2 with ``full``) numbers for each of its B
    merged steps, and, for Efron, as many for each of the T_tied pooled times with tied events:
    ``8·(B + T_tied)·(1 + p + q)``.
    """
    per_time = 1 + p + (p * (p + 1) // 2 if full else 0)
    sizes: dict[str, int] = {}
    for st in strata:
        tied = int(st.tied.sum()) if ties == "efron" else 0
        for site, steps in st.site_steps.items():
            sizes[site] = sizes.get(site, 0) + len(steps) + tied
    return 8 * per_time * max(sizes.values(), default=0)
