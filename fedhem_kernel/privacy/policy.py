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
        Fewest sites this site joins in a secure sum. ``None`` (default): a majority of the sites
        in its roster. A larger value only: the majority is the least a site accepts.
    """

    min_cell_count: int = 5
    time_resolution: str | float = "1 month"
    allow_min_max: bool = False
    ledger: bool = True
    max_levels: int = 40
    allowed_analyses: tuple[str, ...] | None = None
    secure_sum_min_sites: int | None = None

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

    def describe_rules(self) -> list[str]:
        """The rules in plain words (for data stewards and the notebook)."""
        k = self.min_cell_count
        lines = [
            f"Every released count is 0 or at least {k}.",
            "Survival times are used exactly."
            if self.time_resolution == "exact"
            else f"Survival times are coarsened to a grid of {self.time_resolution}.",
            "Minimum and maximum may be released."
            if self.allow_min_max
            else "Minimum and maximum are never released.",
        ]
        if self.ledger:
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
_MONTHS_PER_UNIT = {"days": 1 / 30.4375, "weeks": 7 / 30.4375, "months": 1.0, "years": 12.0}


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
    if unit is None or unit not in _MONTHS_PER_UNIT:
        return 1.0
    return amount * _MONTHS_PER_UNIT[unit_word] / _MONTHS_PER_UNIT[unit]
