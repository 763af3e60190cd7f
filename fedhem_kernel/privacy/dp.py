"""Differential privacy: OpenDP's discrete Gaussian mechanism, its zCDP cost, and noise in shares.

Side: shared (the site draws noise and charges its budget; the researcher's side shows ε).

A federated DP release adds integer noise inside a secure sum: each of the ``m`` sites of the sum
adds a discrete Gaussian share of variance σ²/(m − c) (``c``: sites the policy allows to collude
with the coordinator and subtract their own shares), so the total carries at least a discrete
Gaussian's worth of variance σ². The cost is accounted as OpenDP accounts the central mechanism
with scale σ: ρ = Δ²/(2σ²) in zero-concentrated DP, shown as ε at δ = 1e-5 through OpenDP's
conversion. A sum of discrete Gaussians is not exactly a discrete Gaussian; Kairouz, Liu and
Steinke (ICML 2021, "The distributed discrete Gaussian mechanism", Thm. 1) bound the difference by
a term that vanishes for share variances of 1 or more (below e^-19 here), so shares are never
thinner than variance 1 (:data:`MIN_SHARE_VARIANCE`). Noise is drawn only with OpenDP's samplers
(never numpy's generator: Mironov 2012).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

DELTA = 1e-5
#: The smallest variance of one site's share of the noise (see the module docstring).
MIN_SHARE_VARIANCE = 1.0


def _dp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@lru_cache(maxsize=256)
def _gaussian(scale: float):
    dp = _dp()
    return dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), scale=scale
    )


def scale_for(rho: float, sensitivity: int = 1) -> float:
    """The discrete Gaussian scale σ whose release of L2 sensitivity ``sensitivity`` costs ``rho``."""
    if not rho > 0 or not math.isfinite(rho):
        raise ValueError("rho must be a positive number")
    return sensitivity / math.sqrt(2.0 * rho)


def rho_of(scale: float, sensitivity: int = 1) -> float:
    """OpenDP's zCDP cost of the discrete Gaussian mechanism with ``scale`` (its privacy map)."""
    return float(_gaussian(float(scale)).map(int(sensitivity)))


def epsilon(rho: float, delta: float = DELTA) -> float:
    """ε at ``delta`` of a zCDP cost ``rho`` (OpenDP's conversion of a discrete Gaussian of that
    cost: the same bound for every mechanism of cost ``rho``)."""
    if rho <= 0:
        return 0.0
    dp = _dp()
    meas = dp.c.make_zCDP_to_approxDP(_gaussian(scale_for(rho)))
    try:
        return float(meas.map(1).epsilon(delta))
    except Exception:  # noqa: BLE001 - OpenDP overflows for very large rho: no guarantee left
        return math.inf


def share_scale(scale: float, n_sites: int, colluders: int = 0) -> float:
    """The scale of one site's share when ``n_sites`` add noise and up to ``colluders`` of them
    may subtract their own: variance σ²/(n − c), never below :data:`MIN_SHARE_VARIANCE`."""
    honest = max(1, n_sites - colluders)
    return max(scale / math.sqrt(honest), math.sqrt(MIN_SHARE_VARIANCE))


def noise_share(values: np.ndarray, scale: float, n_sites: int, colluders: int = 0) -> np.ndarray:
    """``values`` (whole numbers) plus this site's discrete Gaussian share (OpenDP's sampler)."""
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    noisy = _gaussian(share_scale(scale, n_sites, colluders))([int(v) for v in flat])
    return np.asarray(noisy, dtype=np.int64).reshape(np.shape(values))
