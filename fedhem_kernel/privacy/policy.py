"""A site's disclosure policy: the one source of thresholds (cf. DataSHIELD's listDisclosureSettingsDS).

A site declares its policy in the ``[policy]`` table of its TOML file. A researcher, a coordinator or a
notebook cannot loosen it: queries carry no privacy settings, and the site reads only its own policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fedhem_kernel.analyses import registry
from fedhem_kernel.errors import ParameterError


@dataclass(frozen=True)
class Policy:
    """Disclosure rules of one site.

    Parameters
    ----------
    min_cell_count : int
        Every released count (table cell, group size, KM at-risk, events and censored counts) is 0 or at
        least this many patients. Default 5 (DataSHIELD nfilter.tab = 3, vantage6 5, NVFlare 10).
    time_resolution : str or float
        Survival times are coarsened up to a grid before anything is counted: ``"1 month"`` (default),
        ``"3 months"``, ``"1 week"``, a number in the column's own unit, or ``"exact"``.
    allow_min_max : bool
        Release minimum and maximum in ``describe`` (single patients' values). Default False.
    ledger : bool
        Keep a release ledger per dataset (:mod:`fedhem_kernel.privacy.ledger`): every row set a
        release sums over (cohorts, groups, rows left out) is snapped to whole atoms of at least
        ``min_cell_count`` patients, so that no combination of releases isolates fewer. Default True.
    max_levels : int
        Most categories a grouping or crosstab variable may have. Default 40 (DataSHIELD's default).
    allowed_analyses : tuple of str or None
        Analyses this site answers; ``None`` means all.
    secure_sum_min_sites : int or None
        Fewest sites this site joins in a secure sum. ``None`` (default): every site of its
        roster, since two sums over different sets of sites difference to one site's counts (a
        site that is down then stops pooled releases). A number allows fewer, never below a
        majority of the roster.
    dp : bool
        DP mode (:mod:`fedhem_kernel.privacy.dp`): every release is a secure sum carrying discrete
        Gaussian noise, accounted in zCDP; analyses without a DP version are refused; the release
        ledger is not used (noise with accounting replaces it). Default False.
    dp_rho : float
        zCDP cost of one release at this site (ε ≈ 1.6 at δ = 1e-5 for the default 0.05).
    dp_rho_researcher : float
        What one researcher may spend on a dataset at this site (default 1.0, ε ≈ 8.1).
    dp_rho_site : float
        What all researchers together may spend on a dataset (default 5.0): colluding researchers
        cannot pool more.
    dp_colluders : int
        Sites of a sum that may collude with the coordinator (subtract their own noise): each site
        adds a share of variance σ²/(n − c). Default 0.
    """

    min_cell_count: int = 5
    time_resolution: str | float = "1 month"
    allow_min_max: bool = False
    ledger: bool = True
    max_levels: int = 40
    allowed_analyses: tuple[str, ...] | None = None
    secure_sum_min_sites: int | None = None
    dp: bool = False
    dp_rho: float = 0.05
    dp_rho_researcher: float = 1.0
    dp_rho_site: float = 5.0
    dp_colluders: int = 0

    def __post_init__(self) -> None:
        for name in ("min_cell_count", "max_levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(f"policy '{name}' must be a whole number >= 1", rule="policy")
        sites = self.secure_sum_min_sites
        if sites is not None and (
            not isinstance(sites, int) or isinstance(sites, bool) or sites < 1
        ):
            raise ParameterError(
                "policy 'secure_sum_min_sites' must be a whole number >= 1", rule="policy"
            )
        for name in ("dp_rho", "dp_rho_researcher", "dp_rho_site"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"policy '{name}' must be a positive number", rule="policy")
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"policy '{name}' must be a positive number", rule="policy")
        if not self.dp_rho <= self.dp_rho_researcher <= self.dp_rho_site:
            raise ParameterError(
                "policy: dp_rho <= dp_rho_researcher <= dp_rho_site", rule="policy"
            )
        c = self.dp_colluders
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ParameterError("policy 'dp_colluders' must be a whole number >= 0", rule="policy")
        if not isinstance(self.dp, bool):
            raise ParameterError("policy 'dp' must be true or false", rule="policy")
        time_step(self.time_resolution, "months")  # validates
        if self.allowed_analyses is not None:
            object.__setattr__(self, "allowed_analyses", tuple(self.allowed_analyses))
            unknown = sorted(set(self.allowed_analyses) - set(registry.names()))
            if unknown:
                raise ParameterError(
                    f"policy 'allowed_analyses' names unknown analyses {unknown}", rule="policy"
                )

    @classmethod
    def unrestricted(cls) -> Policy:
        """No thresholds, exact times: for validation on public data only (releases are still logged)."""
        return cls(
            min_cell_count=1,
            time_resolution="exact",
            allow_min_max=True,
            ledger=False,
            max_levels=10_000,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        known = {f.name for f in fields(cls)}
        retired = sorted(set(data) & {"min_subset_size", "differencing_guard"})
        if retired:
            raise ParameterError(
                f"policy settings {retired} were replaced by the release ledger ('ledger', on by "
                "default): remove them",
                rule="policy",
            )
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"unknown policy settings {unknown}", rule="policy")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["allowed_analyses"] is not None:
            out["allowed_analyses"] = list(out["allowed_analyses"])
        return out

    @property
    def is_unrestricted(self) -> bool:
        return self.min_cell_count == 1 and not self.ledger

    def allows(self, analysis: str) -> bool:
        # agreeing on category names is part of every grouped analysis
        return self.allowed_analyses is None or analysis in (
            *self.allowed_analyses,
            *registry.ALWAYS_ALLOWED,
        )

    def dp_exempt(self, analysis: str) -> bool:
        """Whether an analysis is answered in DP mode without noise: agreeing on category names
        (``levels``), which names only levels held by >= k patients, as in every mode."""
        return analysis in registry.ALWAYS_ALLOWED

    def describe_rules(self) -> list[str]:
        """The rules in plain words (for data stewards and the notebook)."""
        k = self.min_cell_count
        lines = [
            "Category names are only those the data steward declares; numbers are clipped to "
            "the ranges the steward declares."
            if self.dp
            else f"Every released count is 0 or at least {k}.",
            "Survival times are used exactly."
            if self.time_resolution == "exact"
            else f"Survival times are coarsened to a grid of {self.time_resolution}.",
            "Minimum and maximum may be released."
            if self.allow_min_max
            else "Minimum and maximum are never released.",
        ]
        if self.dp:
            from fedhem_kernel.privacy.dp import epsilon

            lines.append(
                f"DP mode: every release carries noise; each costs ρ = {self.dp_rho:g} "
                f"(ε = {epsilon(self.dp_rho):.2f} at δ = 1e-5); a researcher may spend ρ = "
                f"{self.dp_rho_researcher:g} (ε = {epsilon(self.dp_rho_researcher):.2f}) on a "
                f"dataset, all researchers together ρ = {self.dp_rho_site:g}."
            )
        elif self.ledger:
            lines.append(
                f"Cohorts and groups are released as whole groups of at least {k} patients that "
                "no combination of releases can split (up to "
                f"{k - 1} patients per group may move)."
            )
        if self.allowed_analyses is not None:
            lines.append("Analyses allowed: " + ", ".join(self.allowed_analyses) + ".")
        return lines


_UNIT_WORDS = {
    "day": "days",
    "days": "days",
    "week": "weeks",
    "weeks": "weeks",
    "month": "months",
    "months": "months",
    "year": "years",
    "years": "years",
}
MONTHS_PER_UNIT = {"days": 1 / 30.4375, "weeks": 7 / 30.4375, "months": 1.0, "years": 12.0}


def time_step(resolution: str | float, unit: str | None) -> float | None:
    """Grid step in the column's unit for a policy's ``time_resolution``; ``None`` means exact.

    ``"1 month"`` on a column in days gives 30.4375. For a column without a declared unit this
    returns 1.0 (whole units); the survival steps refuse such a column under a grid in calendar
    words (:func:`fedhem_kernel.privacy.survival.coarsen_to_policy`).
    """
    if isinstance(resolution, bool):
        raise ParameterError("policy 'time_resolution' must be 'exact', a number or e.g. '1 month'")
    if isinstance(resolution, int | float):
        if not math.isfinite(resolution) or resolution <= 0:
            raise ParameterError("policy 'time_resolution' must be positive", rule="policy")
        return float(resolution)
    text = str(resolution).strip().lower()
    if text == "exact":
        return None
    parts = text.split()
    try:
        if len(parts) == 1 and parts[0] in _UNIT_WORDS:
            amount, word = 1.0, parts[0]
        elif len(parts) == 2:
            amount, word = float(parts[0]), parts[1]
        else:
            raise ValueError
        unit_word = _UNIT_WORDS[word]
    except (ValueError, KeyError):
        raise ParameterError(
            "policy 'time_resolution' must be 'exact', a number or e.g. '1 month'", rule="policy"
        ) from None
    if not math.isfinite(amount) or amount <= 0:
        raise ParameterError("policy 'time_resolution' must be positive", rule="policy")
    if unit is None or unit not in MONTHS_PER_UNIT:
        return 1.0
    return amount * MONTHS_PER_UNIT[unit_word] / MONTHS_PER_UNIT[unit]
