"""The result of ``describe``."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True, repr=False)
class DescribeResult(Result):
    """Pooled summary statistics (``table``), per-site releases (``by_site``) and ``privacy``."""

    table: pd.DataFrame
    by_site: pd.DataFrame
    privacy: PrivacyReport
    by: str | None = None

    @property
    def summary(self) -> pd.DataFrame:
        """The pooled table (``table``)."""
        return self.table

    @property
    def title(self) -> str:
        return f"describe '{self.privacy.dataset}'" + (f" by '{self.by}'" if self.by else "")

    @property
    def footnote(self) -> str:
        return "Quantiles from pooled site histograms (no patient's own value is released)."
