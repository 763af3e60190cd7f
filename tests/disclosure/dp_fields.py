"""What one site adds to a DP release before its noise: the executor's payload, recorded.

An attacker's view of the sensitivity claim: the release of a cohort with and without one
patient differs, at the site holding them, by at most ``RESOLUTION`` (L2) over every noised
field, whatever the coordinator asked (bounds, columns, groups, centres).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.protocol.messages import KEYS_STEP, SiteRequest
from fedhem_kernel.site.executor import SiteExecutor

#: The DP policy of the attack tests: five releases of ρ = 0.05 per researcher.
POLICY = fh.Policy(dp=True, dp_rho=0.05, dp_rho_researcher=0.25, dp_rho_site=0.5)


def secure_block(fed: fh.Federation, sites: list[str], noise_scale: float | None = None) -> dict:
    """A hand-made secure-sum block for a request to ``sites`` (their key bundles fetched)."""
    session = fed.coordinator.keys
    for site in sites:
        if site not in session.bundles:
            reply = sites_of(fed)[site].handle(
                SiteRequest(KEYS_STEP, None, {"session": session.id}, who="mallory")
            )
            session.bundles[site] = reply.payload["bundle"]
    block = {
        "session": session.id,
        "sum": session.next_sum(),
        "bundles": [session.bundles[s] for s in sites],
    }
    if noise_scale is not None:
        block["noise_scale"] = noise_scale
    return block


def recorded_fields(
    monkeypatch: Any,
    tables: dict[str, dict[str, pd.DataFrame]],
    run: Callable[[fh.Federation], object],
    site: str = "s0",
    **federation: Any,
) -> list[dict[str, np.ndarray]]:
    """Every DP release's noised fields at ``site`` (before its noise share) while ``run``
    runs on a federation of ``tables``, in order."""
    seen: list[dict[str, np.ndarray]] = []
    original = SiteExecutor._noised

    def noised(self, step, plan, payload):  # type: ignore[no-untyped-def]
        if self.name == site:
            seen.append({name: np.asarray(payload[name], dtype=float) for name in step.dp})
        return original(self, step, plan, payload)

    monkeypatch.setattr(SiteExecutor, "_noised", noised)
    with fh.Federation.local(tables, **federation) as fed:
        run(fed)
    monkeypatch.setattr(SiteExecutor, "_noised", original)
    return seen


def largest_change(
    with_patient: list[dict[str, np.ndarray]], without: list[dict[str, np.ndarray]]
) -> float:
    """The largest L2 distance between matching releases (one patient more or less)."""
    assert len(with_patient) == len(without) and with_patient
    out = 0.0
    for a, b in zip(with_patient, without, strict=True):
        assert a.keys() == b.keys()
        out = max(out, float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))))
    return out
