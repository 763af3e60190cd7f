"""The result of ``kaplan_meier``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result, time_grid
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True, repr=False)
class KaplanMeierResult(Result):
    """Pooled Kaplan–Meier estimate, one column per group (lifelines naming)."""

    survival_function: pd.DataFrame
    confidence_interval: pd.DataFrame
    at_risk: pd.DataFrame
    event_tables: dict[str, pd.DataFrame]
    median_survival: pd.Series
    privacy: PrivacyReport
    duration: str
    event: str
    group: str | None = None
    time_step: float | None = None
    unit: str | None = None
    contributing_sites: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: True when the curves were pooled through secure sums (each ends where fewer than about
    #: k patients remain at risk: past its last time the number at risk is not known).
    pooled: bool = False

    @property
    def groups(self) -> list[str]:
        return list(self.survival_function.columns)

    def survival_function_at_times(self, times: Any, group: str | None = None) -> pd.Series:
        """S(t) at arbitrary times (right-continuous steps), like lifelines."""
        label = group if group is not None else self.groups[0]
        curve = self._curves()[label]
        t = np.atleast_1d(np.asarray(times, dtype=float))
        idx = np.searchsorted(curve.index.to_numpy(), t, side="right") - 1
        values = np.where(idx >= 0, curve.to_numpy()[np.clip(idx, 0, None)], 1.0)
        return pd.Series(values, index=t, name=label)

    def _curves(self) -> dict[str, pd.Series]:
        return {g: self.event_tables[g].attrs["survival"] for g in self.groups}

    def plot(self, ax: Any = None, ci: bool = True, at_risk_counts: bool = True) -> Any:
        from fedhem_kernel.display.km_plot import plot_km

        return plot_km(self, ax=ax, ci=ci, at_risk_counts=at_risk_counts)

    @property
    def summary(self) -> pd.DataFrame:
        """Per group: patients at risk at the start, events and the median survival time."""
        rows = {
            g: {
                "at_risk": int(tab["at_risk"].iloc[0]) if len(tab) else 0,
                "events": int(tab["observed"].sum()),
                "median_survival": self.median_survival.get(g, np.nan),
            }
            for g, tab in self.event_tables.items()
        }
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "group"
        return frame

    @property
    def title(self) -> str:
        return (
            f"Kaplan–Meier: {self.duration} / {self.event}"
            + (f" by {self.group}" if self.group else "")
            + f" on '{self.privacy.dataset}'"
        )

    @property
    def footnote(self) -> str:
        grid = time_grid(self.time_step, self.unit)
        return f"{grid}; {self.source}."

    @property
    def source(self) -> str:
        """Where the curves come from (the footnote's second part)."""
        if self.pooled:
            return (
                "curves from the pooled counts of a secure sum, each ending where fewer than "
                "about k patients remain at risk"
            )
        return "curves pooled from the sites' released event tables"

    def _headline(self) -> str:
        med = ", ".join(f"{g}: {v:.4g}" for g, v in self.median_survival.items())
        group = f", group={self.group}" if self.group else ""
        return f"{self.duration}, {self.event}{group}; median survival {med}"
