"""The result of ``crosstab``."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True, repr=False)
class CrosstabResult(Result):
    """Pooled counts (``table``: NA where suppressed), per-site tables and the privacy report."""

    table: pd.DataFrame
    by_site: dict[str, pd.DataFrame]
    privacy: PrivacyReport
    row: str
    col: str

    @property
    def summary(self) -> pd.DataFrame:
        """The pooled table (``table``)."""
        return self.table

    @property
    def title(self) -> str:
        return f"crosstab '{self.row}' × '{self.col}' on '{self.privacy.dataset}'"

    @property
    def footnote(self) -> str:
        if any(n.startswith("DP mode") for n in self.privacy.notes):
            return (
                "DP mode: every count carries noise (its scale and cost are in the notes); only "
                "the pooled table exists, no site's own."
            )
        return (
            "NA: suppressed at a site (a cell below the minimum count, or a cell "
            "withheld so that it cannot be derived from the totals)."
        )
