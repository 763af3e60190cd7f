"""The result of ``kaplan_meier``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True)
class KaplanMeierResult:
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

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import km_html

        return km_html(self)

    def widget(self) -> Any:
        """This result as an interactive widget: the curves with 95 % bands, numbers at risk, hover values and the privacy panel."""
        from fedhem_kernel.display.widgets import km_widget

        return km_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        med = ", ".join(f"{g}: {v:.4g}" for g, v in self.median_survival.items())
        return (
            f"KaplanMeierResult({self.duration}, {self.event}"
            + (f", group={self.group}" if self.group else "")
            + f"; median survival {med}; {self.privacy!r})"
        )
