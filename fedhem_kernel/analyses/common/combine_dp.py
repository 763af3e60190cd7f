"""DP mode on the researcher's side: whether the sites are in it, and the noise scale to ask for.

Side: researcher (combine). Every site states its policy in its catalog; a DP release is a secure
sum in which each site adds its share of discrete Gaussian noise. The scale asked for is the
largest any site needs for its ``dp_rho``, so that every site's own policy holds (each site checks
it again, and charges what OpenDP's map gives for that scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedhem_kernel.analyses.common.combine_catalog import catalog_columns
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.dp import epsilon, rho_of, scale_for, share_scale
from fedhem_kernel.protocol.query import Ask


@dataclass(frozen=True)
class DPRelease:
    """The noise a DP release carries: its scale, and its cost at every site."""

    scale: float
    rho: float
    #: The most sites any site's policy allows to collude (their shares are thicker).
    colluders: int = 0

    def total_sd(self, n_sites: int) -> float:
        """The SD of the noise a sum over ``n_sites`` actually carries: at least ``scale``, more
        where shares are kept at variance 1 or more, or thickened against colluders."""
        return math.sqrt(n_sites) * share_scale(self.scale, n_sites, self.colluders)

    @property
    def epsilon(self) -> float:
        """The cost as ε at δ = 1e-5 (OpenDP's conversion)."""
        return epsilon(self.rho)

    def note(self, what: str) -> str:
        """The result's note: what carries noise, how much, and what it cost."""
        return (
            f"DP mode: {what} carry discrete Gaussian noise of scale {self.scale:.3g} (95 % "
            f"within ±{1.96 * self.scale:.2g}), added in shares inside a secure sum; the release "
            f"cost ρ = {self.rho:.3g} (ε = {self.epsilon:.2f} at δ = 1e-5) at each site"
        )


def dp_release(q: Ask, sensitivity: int = 1) -> DPRelease | None:
    """The DP release the sites still taking part need (None when none is in DP mode).

    A federation whose sites are partly in DP mode cannot answer with one sum: the others would
    add no noise, and the DP sites' guarantee would not hold.
    """
    policies = {site: entry.get("policy", {}) for site, entry in q.catalog().items()}
    dp_sites = sorted(site for site, p in policies.items() if p.get("dp"))
    if not dp_sites:
        return None
    others = sorted(set(policies) - set(dp_sites))
    if others:
        raise ParameterError(
            f"sites {dp_sites} are in DP mode and {others} are not: leave out one kind "
            "(a DP release is one noised sum over sites that all add noise)"
        )
    scale = max(scale_for(float(policies[s]["dp_rho"]), sensitivity) for s in dp_sites)
    colluders = max(int(policies[s].get("dp_colluders", 0)) for s in dp_sites)
    return DPRelease(scale, rho_of(scale, sensitivity), colluders)


def dp_bounds(q: Ask, columns: list[str]) -> list[list[float]]:
    """The public bounds a DP release clips ``columns`` to: per column, the smallest range that
    holds every site's declared bounds (a site's data steward declares them; they are never read
    from the data). A column no site declares bounds for is an error naming it."""
    out = []
    declared = catalog_columns(q)
    for column in columns:
        ranges = [r["bounds"] for r in declared if r["column"] == column and r.get("bounds")]
        if not ranges:
            raise ParameterError(
                f"DP mode clips values to public bounds, and no site declares bounds for "
                f"'{column}' (a site's data steward declares them: "
                f'{column} = {{ type = "float", bounds = [low, high] }})',
                dataset=q.dataset,
                column=column,
            )
        out.append([min(float(b[0]) for b in ranges), max(float(b[1]) for b in ranges)])
    return out


def bounds_text(columns: list[str], bounds: list[list[float]]) -> str:
    """``age [0, 100], wbc [0, 150]``: the public bounds a release clipped ``columns`` to."""
    return ", ".join(f"{c} [{lo:g}, {hi:g}]" for c, (lo, hi) in zip(columns, bounds, strict=True))
