"""The result of ``describe``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True)
class DescribeResult:
    """Pooled summary statistics (``table``), per-site releases (``by_site``) and ``privacy``."""

    table: pd.DataFrame
    by_site: pd.DataFrame
    privacy: PrivacyReport
    by: str | None = None

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        return result_html(
            f"describe '{self.privacy.dataset}'" + (f" by '{self.by}'" if self.by else ""),
            self.table,
            self.privacy,
            footnote="Quantiles from pooled site histograms (no patient's own value is released).",
        )

    def widget(self) -> Any:
        """This result as an interactive widget: pooled and per-site tables (suppressed cells marked) and the privacy panel."""
        from fedhem_kernel.display.widgets import describe_widget

        return describe_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"DescribeResult(\n{self.table.to_string()}\n{self.privacy!r})"
