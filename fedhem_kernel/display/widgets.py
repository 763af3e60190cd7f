"""Interactive result widgets (anywidget): Kaplan–Meier, results tables, privacy panel, progress.

One ES module (``static/fedhem_widgets.js``) renders every widget; the ``_kind`` trait picks the
view. Every result widget shows the privacy report panel beside its numbers. The synced traits are
built by :mod:`fedhem_kernel.display.state` from released values only: whatever is synced reaches
the browser and is saved with the notebook.

Use ``result.widget()`` for the widget of a result; in a notebook, results display as these
widgets automatically (with an HTML fallback for viewers without a live kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import pandas as pd
import traitlets as t

from fedhem_kernel.display.state import (
    km_state,
    privacy_state,
    table_state,
)

if TYPE_CHECKING:
    from fedhem_kernel.analyses.crosstab.result import CrosstabResult
    from fedhem_kernel.analyses.describe.result import DescribeResult
    from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
    from fedhem_kernel.analyses.logrank.result import LogrankResult
    from fedhem_kernel.analyses.radiomics.result import RadiomicsResult
    from fedhem_kernel.protocol.report import PrivacyReport

STATIC = Path(__file__).parent / "static"
ESM = STATIC / "fedhem_widgets.js"
CSS = STATIC / "fedhem_widgets.css"


class _FedHemWidget(anywidget.AnyWidget):
    _esm = ESM
    _css = CSS

    def _describe(self) -> str:
        return str(getattr(self, "title", "") or "")

    def __repr__(self) -> str:
        # the text a notebook keeps when the widget itself cannot be shown
        return f"{type(self).__name__}({self._describe()})"


class PrivacyReportWidget(_FedHemWidget):
    """The privacy report as a panel: per site released / suppressed / refused, rules, notes."""

    _kind = t.Unicode("privacy").tag(sync=True)
    privacy = t.Dict().tag(sync=True)

    def __init__(self, report: PrivacyReport, **kwargs: Any) -> None:
        super().__init__(privacy=privacy_state(report), **kwargs)

    def _describe(self) -> str:
        return f"{self.privacy.get('analysis')} on '{self.privacy.get('dataset')}'"


class ResultTableWidget(_FedHemWidget):
    """One or more tables (suppressed cells shown as a badge) with the privacy report beside them."""

    _kind = t.Unicode("table").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    tables = t.List(t.Dict()).tag(sync=True)
    footnote = t.Unicode("").tag(sync=True)
    privacy = t.Dict().tag(sync=True)
    #: An optional figure drawn above the tables (``{"kind": "forest", ...}``: display.forest).
    figure = t.Dict().tag(sync=True)

    def __init__(
        self,
        title: str,
        tables: list[dict[str, Any]],
        report: PrivacyReport,
        footnote: str = "",
        figure: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            title=title,
            tables=tables,
            footnote=footnote,
            privacy=privacy_state(report),
            figure=figure or {},
            **kwargs,
        )


class KaplanMeierWidget(_FedHemWidget):
    """Step curves with 95 % bands, numbers at risk, merged/withheld marks, hover values."""

    _kind = t.Unicode("km").tag(sync=True)
    km = t.Dict().tag(sync=True)
    privacy = t.Dict().tag(sync=True)

    def __init__(self, result: KaplanMeierResult, **kwargs: Any) -> None:
        super().__init__(km=km_state(result), privacy=privacy_state(result.privacy), **kwargs)

    def _describe(self) -> str:
        return str(self.km.get("title", ""))


class ProgressWidget(_FedHemWidget):
    """Per-site progress of a running query; the browser shows it only after ``delay_ms``."""

    _kind = t.Unicode("progress").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    step = t.Unicode("").tag(sync=True)
    sites = t.List(t.Dict()).tag(sync=True)
    done = t.Bool(False).tag(sync=True)
    failed = t.Bool(False).tag(sync=True)
    elapsed = t.Float(0.0).tag(sync=True)
    delay_ms = t.Int(1000).tag(sync=True)

    def _describe(self) -> str:
        answered = sum(s.get("status") != "waiting" for s in self.sites)
        state = "done" if self.done else "running"
        return f"{self.title}: {answered}/{len(self.sites)} sites answered, {state}"


# -- result -> widget ----------------------------------------------------------------------------
def km_widget(result: KaplanMeierResult) -> KaplanMeierWidget:
    return KaplanMeierWidget(result)


def describe_widget(result: DescribeResult) -> ResultTableWidget:
    return summary_widget(
        result.title, result.table, result.by_site, result.privacy, result.footnote
    )


def radiomics_widget(result: RadiomicsResult) -> ResultTableWidget:
    return summary_widget(
        result.title, result.summary, result.by_site, result.privacy, result.footnote
    )


def summary_widget(
    title: str, table: pd.DataFrame, by_site: pd.DataFrame, privacy: PrivacyReport, footnote: str
) -> ResultTableWidget:
    """Pooled summary statistics and what each site released (suppressed cells marked; no
    per-site table when nothing was released per site)."""
    # a pooled cell whose count is suppressed at every site has no statistics either
    pooled_mask = (
        _rows_mask(table, table["count"].isna(), exclude=("n_sites",)) if "count" in table else None
    )
    keys = [c for c in ("site", "group", "variable", "feature") if c in by_site]
    site_mask = None
    if "suppressed" in by_site:
        hidden_rows = by_site["suppressed"].fillna("").astype(str) != ""
        site_mask = _rows_mask(by_site, hidden_rows, exclude=tuple(keys))
        by_site = by_site.drop(columns="suppressed")
    if keys:
        by_site = by_site.set_index(keys)
        site_mask = (
            None if site_mask is None else site_mask.set_index(by_site.index)[by_site.columns]
        )
    tables = [table_state(table, "pooled", pooled_mask)]
    if len(by_site):  # pooled through secure sums, no site's own numbers were seen
        tables.append(table_state(by_site, "released by each site", site_mask))
    return ResultTableWidget(title, tables, privacy, footnote=footnote)


def crosstab_widget(result: CrosstabResult) -> ResultTableWidget:
    tables = [table_state(result.table, "pooled")]
    tables += [table_state(df, f"site {site}") for site, df in result.by_site.items()]
    dp = any(n.startswith("DP mode") for n in result.privacy.notes)
    footnote = (
        result.footnote
        if dp
        else "suppressed: withheld at a site (a cell below the minimum count, or a cell "
        "withheld so that it cannot be derived from the totals); a pooled cell is suppressed "
        "when any site withheld it."
    )
    return ResultTableWidget(result.title, tables, result.privacy, footnote=footnote)


def logrank_widget(result: LogrankResult) -> ResultTableWidget:
    tables = [
        table_state(result.test, ""),
        table_state(
            result.summary,
            "observed and expected events" + (" (summed over strata)" if result.strata else ""),
        ),
    ]
    tables += [table_state(table, caption) for caption, table in result.tables()]
    return ResultTableWidget(result.title, tables, result.privacy)


def _rows_mask(df: pd.DataFrame, rows: pd.Series, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """A boolean frame: True in every column (but ``exclude``) of the rows where ``rows`` holds."""
    rows = rows.astype(bool)
    mask = pd.DataFrame(False, index=df.index, columns=df.columns)
    for col in df.columns:
        if col not in exclude:
            mask[col] = rows.to_numpy()
    return mask
