"""The pooled risk-set sums of a Cox fit: per stratum S0, S1, S2 (and Efron's tied-event sums) at every
pooled event time, built from the sites' per-step sums, and the log partial likelihood, gradient and
Hessian they give (Efron or Breslow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload


# -- likelihood from pooled sums -------------------------------------------------------------
def unpack_triangle(packed: np.ndarray, p: int) -> np.ndarray:
    """A symmetric p×p matrix from its row-major upper triangle."""
    out = np.zeros((p, p))
    iu = np.triu_indices(p)
    out[iu] = packed
    out.T[iu] = packed
    return out


@dataclass
class PooledStratum:
    """One stratum's pooled event steps, and (after an iteration) its pooled risk-set sums."""

    label: tuple[str, ...]
    times: np.ndarray
    events: np.ndarray
    event_sum: np.ndarray  # Σ over events of the raw covariates
    sites: tuple[str, ...]
    n: int
    site_steps: dict[str, np.ndarray] = field(default_factory=dict)  # each site's merged steps
    S0: np.ndarray | None = None
    S1: np.ndarray | None = None
    S2: np.ndarray | None = None  # packed upper triangle per time
    D0: np.ndarray | None = None  # Efron: event sums at tied times only
    D1: np.ndarray | None = None
    D2: np.ndarray | None = None
    #: Efron's layout of the tied events (fixed by ``events``), built by :func:`time_weights`.
    _efron: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def tied(self) -> np.ndarray:
        return self.events > 1


@dataclass(frozen=True)
class TimeWeights:
    """Per grid time of one stratum: the coefficients of the sums in gradient and Hessian.

    With φ_l = S0 - a_l·D0 for the l-th of the d events at a time (a_l = l/d under Efron, 0 under
    Breslow): c1 = Σ 1/φ, c3 = Σ 1/φ², and at tied times c2 = Σ a/φ, c4 = Σ a/φ², c5 = Σ a²/φ²
    (zero elsewhere). ``log_phi`` is Σ log φ over the stratum.
    """

    c1: np.ndarray
    c2: np.ndarray
    c3: np.ndarray
    c4: np.ndarray
    c5: np.ndarray
    log_phi: float


def time_weights(st: PooledStratum, ties: str) -> TimeWeights:
    """:class:`TimeWeights` from a stratum's pooled S0 (and D0 at tied times), vectorised."""
    s0, d = st.S0, st.events.astype(float)
    assert s0 is not None
    t = len(d)
    c1, c3 = d / s0, d / s0**2
    c2, c4, c5 = np.zeros(t), np.zeros(t), np.zeros(t)
    log_phi = float((d * np.log(s0)).sum())
    if ties == "efron" and st.tied.any():
        tied = st.tied
        assert st.D0 is not None
        if st._efron is None:  # one entry per tied event: its time, and a = l/d for the l-th of d
            dt = st.events[tied].astype(np.int64)
            starts = np.concatenate(([0], np.cumsum(dt)[:-1]))
            rep = np.repeat(np.arange(len(dt)), dt)
            a = (np.arange(int(dt.sum())) - starts[rep]) / dt[rep]
            st._efron = (starts, rep, a, a**2)
        starts, rep, a, a2 = st._efron
        # per tied event: φ = S0 - a·D0, then the sums of 1/φ, a/φ, 1/φ², a/φ², a²/φ² and log φ
        # (two buffers of one entry per tied event, reused: these are hundreds of thousands)
        phi = np.take(s0[tied], rep)
        buf = np.take(st.D0, rep)
        phi -= np.multiply(a, buf, out=buf)
        log_phi += float(np.log(phi, out=buf).sum()) - float((d[tied] * np.log(s0[tied])).sum())
        inv = np.divide(1.0, phi, out=phi)
        c1[tied] = np.add.reduceat(inv, starts)
        c2[tied] = np.add.reduceat(np.multiply(a, inv, out=buf), starts)
        inv2 = np.square(inv, out=inv)
        c3[tied] = np.add.reduceat(inv2, starts)
        c4[tied] = np.add.reduceat(np.multiply(a, inv2, out=buf), starts)
        c5[tied] = np.add.reduceat(np.multiply(a2, inv2, out=buf), starts)
    return TimeWeights(c1, c2, c3, c4, c5, log_phi)


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


def _wsum(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Σ_t c_t·a_t (einsum's own loops: a multithreaded BLAS call would cost more here)."""
    return np.einsum("t,tk->k", c, a)


#: Rows per block in :func:`_wouter` (temporaries of a few MiB).
_OUTER_ROWS = 1 << 15


def _wouter(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_t c_t·a_t·b_tᵀ, a block of rows at a time: c·a formed first, then a two-operand einsum
    (a three-operand einsum runs about three times slower; BLAS here is slower still, and its
    threads would keep spinning into the sites' next round)."""
    out = np.zeros((a.shape[1], b.shape[1]))
    for lo in range(0, len(c), _OUTER_ROWS):
        hi = lo + _OUTER_ROWS
        out += np.einsum("ti,tj->ij", a[lo:hi] * c[lo:hi, None], b[lo:hi])
    return out


def evaluate(
    strata: Sequence[PooledStratum],
    beta: np.ndarray,
    event_sums: Sequence[np.ndarray],
    ties: str,
    weighted_s2: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, list[TimeWeights]]:
    """Log partial likelihood, gradient and Hessian (standardised units) from pooled sums.

    ``event_sums[i]`` is Σ over the events of stratum i of the standardised covariates. The Hessian
    needs Σ_t c1·S2 - c2·D2: from the pooled per-time S2 and D2 when the sites sent them, else
    ``weighted_s2`` (the sites' ``cox_hessian`` replies, summed) for the weights returned here.
    """
    p = len(beta)
    ll = 0.0
    grad = np.zeros(p)
    info = np.zeros((p, p))  # minus the Hessian
    weights = []
    for st, esum in zip(strata, event_sums, strict=True):
        assert st.S1 is not None
        cw = time_weights(st, ties)
        weights.append(cw)
        s1 = st.S1
        ll += float(beta @ esum) - cw.log_phi
        grad += esum - _wsum(cw.c1, s1)
        info -= _wouter(cw.c3, s1, s1)
        if weighted_s2 is None:
            assert st.S2 is not None
            info += unpack_triangle(_wsum(cw.c1, st.S2), p)
        if ties == "efron" and st.tied.any():
            tied = st.tied
            e1 = st.D1
            assert e1 is not None
            grad += _wsum(cw.c2[tied], e1)
            cross = _wouter(cw.c4[tied], s1[tied], e1)
            info += cross + cross.T - _wouter(cw.c5[tied], e1, e1)
            if weighted_s2 is None:
                assert st.D2 is not None
                info -= unpack_triangle(_wsum(cw.c2[tied], st.D2), p)
    if weighted_s2 is not None:
        info += weighted_s2
    return ll, grad, -info, weights


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
