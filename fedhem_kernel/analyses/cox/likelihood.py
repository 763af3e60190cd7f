"""The Cox partial likelihood from pooled sums: Efron's or Breslow's, with its gradient and Hessian.

Side: shared (no rows). The researcher's side evaluates it on the pooled risk-set sums of each
Newton iteration of the per-site protocol; in a pooled fit (secure sums) the sites evaluate it,
on the sealed total of the previous iteration that only they can open, and send the researcher
the likelihood, gradient and Hessian (:mod:`~fedhem_kernel.analyses.cox.site_pooled`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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


def block_likelihood(
    totals: dict[str, np.ndarray],
    blocks: Sequence[Sequence[int]],
    *,
    step: float,
    horizon: int,
    center: np.ndarray,
    scale: np.ndarray,
    ties: str,
    beta: np.ndarray,
    labels: Sequence[tuple[str, ...]] | None = None,
    sites: tuple[str, ...] = (),
) -> tuple[float, np.ndarray, np.ndarray, list[PooledStratum]]:
    """Log partial likelihood, gradient and Hessian (standardised units) at ``beta`` from the
    total of one ``cox_pool_sums`` round of a pooled fit on ``blocks`` (per stratum the first
    grid steps of its blocks), and the strata it was evaluated on. A block whose events are not
    surely k has no event sums of its own (zeros): Breslow's way there."""
    strata: list[PooledStratum] = []
    event_sums = []
    at = 0
    for s, starts in enumerate(blocks):
        if not starts:
            continue
        rows = slice(at, at + len(starts))
        at += len(starts)
        events = np.asarray(totals["events"][rows], dtype=np.int64)
        ends = [*starts[1:], horizon + 1]
        st = PooledStratum(
            label=tuple(labels[s]) if labels is not None else (),
            times=np.asarray(ends, dtype=float) * step,
            events=events,
            event_sum=np.asarray(totals["event_sum"][s], dtype=float),
            sites=sites,
            n=0,
        )
        tied = st.tied
        st.S0, st.S1, st.S2 = totals["S0"][rows], totals["S1"][rows], totals["S2"][rows]
        st.D0 = totals["D0"][rows][tied]
        st.D1 = totals["D1"][rows][tied]
        st.D2 = totals["D2"][rows][tied]
        strata.append(st)
        event_sums.append((st.event_sum - events.sum() * center) / scale)
    ll, grad, hess, _ = evaluate(strata, beta, event_sums, ties)
    return ll, grad, hess, strata


def expected_ph(
    strata: Sequence[PooledStratum], weights: Sequence[np.ndarray], ties: str
) -> np.ndarray:
    """The expected part of lifelines' proportional-hazards score, per transform and covariate:
    Σ_t (g_t - ḡ)·d_t·z̄(t) with z̄ the (Efron-weighted) risk-set mean, from pooled sums at the
    fit's coefficients; ``weights[i]`` holds stratum i's demeaned transforms (times × transforms)."""
    parts = []
    for st, w in zip(strata, weights, strict=True):
        cw = time_weights(st, ties)
        assert st.S1 is not None
        expected = cw.c1[:, None] * st.S1
        if ties == "efron" and st.tied.any():
            assert st.D1 is not None
            expected[st.tied] -= cw.c2[st.tied][:, None] * st.D1
        parts.append(w.T @ expected)
    if not parts:
        raise ValueError("no stratum to test")
    return np.sum(parts, axis=0)
