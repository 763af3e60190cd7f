"""The result of ``logrank``."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.protocol.report import PrivacyReport

_TITLES = {
    None: "log-rank test",
    "wilcoxon": "Wilcoxon (Gehan–Breslow) test",
    "tarone-ware": "Tarone–Ware test",
    "peto": "Peto–Peto test",
    "fleming-harrington": "Fleming–Harrington test",
}


# -- result ---------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class LogrankResult(Result):
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

    @property
    def test(self) -> pd.DataFrame:
        """The test as a one-column table: statistic, p and degrees of freedom."""
        return pd.DataFrame(
            {"value": [self.test_statistic, self.p_value, self.degrees_of_freedom]},
            index=pd.Index(["test_statistic", "p", "degrees_of_freedom"], name=self.test_name),
            dtype=object,
        )

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        out = []
        if self.strata_tests is not None:
            out.append(("test within each stratum", self.strata_tests))
        return out

    def _headline(self) -> str:
        return (
            f"{self.test_name}: test_statistic={self.test_statistic:.4f}, "
            f"p_value={self.p_value:.4g}, degrees_of_freedom={self.degrees_of_freedom}"
        )
