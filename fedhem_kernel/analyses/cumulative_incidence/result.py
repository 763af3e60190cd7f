"""The result of ``cumulative_incidence``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True)
class GrayTestResult:
    """Gray's K-sample test that the cumulative incidence of one cause is equal across groups."""

    test_statistic: float
    degrees_of_freedom: int
    p_value: float
    cause: str
    groups: tuple[str, ...]
    test_name: str = "gray_test"

    @property
    def statistic(self) -> float:
        return self.test_statistic

    def __repr__(self) -> str:
        return (
            f"GrayTestResult(cause={self.cause!r}, test_statistic={self.test_statistic:.4f}, "
            f"degrees_of_freedom={self.degrees_of_freedom}, p_value={self.p_value:.4g})"
        )


# -- result -----------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class CumulativeIncidenceResult(Result):
    """Pooled cumulative incidence of competing causes (Aalen–Johansen), one curve per cause and group.

    ``cumulative_incidence`` is indexed by time with columns ``(group, cause)``; ``group`` is
    ``"all"`` without grouping. ``confidence_interval`` has columns ``(group, cause, bound)`` with
    ``bound`` in ``lower_0.95`` / ``upper_0.95``; ``survival_function`` is the all-cause event-free
    probability per group (``1 - Σ`` of the causes) with ``survival_confidence_interval``.
    ``gray_test`` compares the cause of interest across groups (None without ``group``), and
    ``gray_tests`` lists the test for every cause.
    """

    cumulative_incidence: pd.DataFrame
    confidence_interval: pd.DataFrame
    survival_function: pd.DataFrame
    survival_confidence_interval: pd.DataFrame
    at_risk: pd.DataFrame
    event_tables: dict[str, pd.DataFrame]
    causes: tuple[str, ...]
    event_of_interest: str
    privacy: PrivacyReport
    duration: str
    event: str
    group: str | None = None
    gray_test: GrayTestResult | None = None
    gray_tests: pd.DataFrame | None = None
    cause_codes: dict[str, int | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    time_step: float | None = None
    unit: str | None = None
    contributing_sites: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.cumulative_incidence.columns.get_level_values(0)))

    def cumulative_incidence_at_times(
        self, times: Any, cause: str | int | None = None, group: str | None = None
    ) -> pd.Series:
        """CIF of ``cause`` (default: the event of interest) at arbitrary times (right-continuous)."""
        label = group if group is not None else self.groups[0]
        cause_label = self.event_of_interest if cause is None else _cause_label(self, cause)
        curve = self.event_tables[label].attrs["cumulative_incidence"][cause_label]
        t = np.atleast_1d(np.asarray(times, dtype=float))
        idx = np.searchsorted(curve.index.to_numpy(), t, side="right") - 1
        values = np.where(idx >= 0, curve.to_numpy()[np.clip(idx, 0, None)], 0.0)
        return pd.Series(values, index=t, name=(label, cause_label))

    def plot(self, ax: Any = None, stacked: bool = True, at_risk_counts: bool = True) -> Any:
        """Stacked cumulative-incidence curves, one panel per group (matplotlib axes returned)."""
        from fedhem_kernel.display.cif import plot_cumulative_incidence

        return plot_cumulative_incidence(
            self, ax=ax, stacked=stacked, at_risk_counts=at_risk_counts
        )

    @property
    def summary(self) -> pd.DataFrame:
        """Per group and cause: events and the cumulative incidence at the last released time."""
        rows = {}
        for g, tab in self.event_tables.items():
            cif = tab.attrs["cumulative_incidence"]
            for cause in self.causes:
                rows[(g, cause)] = {
                    "events": int(tab.get(f"observed_{cause}", pd.Series(dtype=int)).sum()),
                    "cumulative_incidence": float(cif[cause].iloc[-1]) if len(cif) else 0.0,
                }
        index = pd.MultiIndex.from_tuples(list(rows), names=["group", "cause"])
        return pd.DataFrame(
            list(rows.values()), index=index, columns=["events", "cumulative_incidence"]
        )

    @property
    def title(self) -> str:
        return (
            f"Cumulative incidence: {self.duration} / {self.event}"
            + (f" by {self.group}" if self.group else "")
            + f" on '{self.privacy.dataset}'"
        )

    def _headline(self) -> str:
        test = f"; {self.gray_test!r}" if self.gray_test is not None else ""
        return (
            f"{self.duration}, {self.event}"
            + (f", group={self.group}" if self.group else "")
            + f"; causes {', '.join(self.causes)}; event of interest {self.event_of_interest}"
            + test
        )


def _cause_label(result: CumulativeIncidenceResult, cause: str | int) -> str:
    if isinstance(cause, str) and cause in result.causes:
        return cause
    for label, code in result.cause_codes.items():
        if code is not None and str(code) == str(cause):
            return label
    raise ParameterError(f"no cause {cause!r} in this result (causes: {', '.join(result.causes)})")
