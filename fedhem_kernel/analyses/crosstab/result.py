"""The result of ``crosstab``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.protocol.report import PrivacyReport


@dataclass(frozen=True)
class CrosstabResult:
    """Pooled counts (``table``: NA where suppressed), per-site tables and the privacy report."""

    table: pd.DataFrame
    by_site: dict[str, pd.DataFrame]
    privacy: PrivacyReport
    row: str
    col: str

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        return result_html(
            f"crosstab '{self.row}' × '{self.col}' on '{self.privacy.dataset}'",
            self.table,
            self.privacy,
            footnote="NA: suppressed at a site (a cell below the minimum count, or a cell "
            "withheld so that it cannot be derived from the totals).",
        )

    def widget(self) -> Any:
        """This result as an interactive widget: pooled and per-site tables (suppressed cells marked) and the privacy panel."""
        from fedhem_kernel.display.widgets import crosstab_widget

        return crosstab_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the widget view plus the HTML fallback and text (see display.mimebundle)."""
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"CrosstabResult(\n{self.table.to_string()}\n{self.privacy!r})"
