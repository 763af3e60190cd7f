"""The result of ``logrank``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.protocol.report import PrivacyReport

_TITLES = {
    None: "log-rank test",
    "wilcoxon": "Wilcoxon (Gehan–Breslow) test",
    "tarone-ware": "Tarone–Ware test",
    "peto": "Peto–Peto test",
    "fleming-harrington": "Fleming–Harrington test",
}


# -- result ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogrankResult:
    """A (weighted, stratified) log-rank test; lifelines' ``StatisticalResult`` naming.

    ``test_statistic``, ``p_value`` and ``degrees_of_freedom`` are those of lifelines'
    ``multivariate_logrank_test`` with the same ``weightings``. ``summary`` has per group the
    observed and expected numbers of events (summed over strata) and, for a weighted test, the
    weighted observed minus expected. A stratified test also has ``strata_summary`` (observed and
    expected per stratum and group) and ``strata_tests`` (the test within each stratum alone).
    ``test_name`` says which test was run, e.g. ``stratified_multivariate_Wilcoxon_test``.
    """

    test_statistic: float
    p_value: float
    degrees_of_freedom: int
    summary: pd.DataFrame
    groups: tuple[str, ...]
    privacy: PrivacyReport
    test_name: str = "multivariate_logrank_test"
    weightings: str | None = None
    strata: tuple[str, ...] | None = None
    p: float | None = None
    q: float | None = None
    strata_summary: pd.DataFrame | None = None
    strata_tests: pd.DataFrame | None = None

    @property
    def title(self) -> str:
        """What the display calls this test, e.g. "stratified Peto–Peto test on 'aml' (strata: sex)"."""
        name = _TITLES.get(self.weightings, "log-rank test")
        if self.weightings == "fleming-harrington":
            name = f"Fleming–Harrington (p={self.p:g}, q={self.q:g}) test"
        if self.strata:
            name = "stratified " + name
        title = f"{name} on '{self.privacy.dataset}'"
        if self.strata:
            title += f" (strata: {', '.join(self.strata)})"
        return title

    def _head(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"value": [self.test_statistic, self.p_value, self.degrees_of_freedom]},
            index=pd.Index(["test_statistic", "p", "degrees_of_freedom"], name=self.test_name),
            dtype=object,
        )

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        what = "Observed and expected events" + (" (summed over strata)" if self.strata else "")
        extra = [(what, self.summary)]
        if self.strata_tests is not None:
            extra.append(("Test within each stratum", self.strata_tests))
        return result_html(self.title, self._head(), self.privacy, extra_tables=extra)

    def widget(self) -> Any:
        """This result as an interactive widget: the test, observed and expected events, and the privacy panel."""
        from fedhem_kernel.display.widgets import logrank_widget

        return logrank_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return (
            f"LogrankResult({self.test_name}: test_statistic={self.test_statistic:.4f}, "
            f"p_value={self.p_value:.4g}, degrees_of_freedom={self.degrees_of_freedom}; "
            f"{self.privacy!r})"
        )
