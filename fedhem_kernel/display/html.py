"""HTML for results: the numbers on the left, the privacy report beside them."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
    from fedhem_kernel.protocol.report import PrivacyReport

STYLE = (
    "<style>.fedhem-result{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}"
    ".fedhem-result table{font-size:0.9em}.fedhem-privacy{max-width:480px}"
    ".fedhem-note{color:#555;font-size:0.85em}</style>"
)


def _frame_html(df: pd.DataFrame) -> str:
    return df.to_html(na_rep="<i>suppressed</i>", float_format=lambda v: f"{v:.4g}", escape=True)


def result_html(
    title: str,
    table: pd.DataFrame,
    privacy: PrivacyReport,
    *,
    footnote: str | None = None,
    extra_tables: list[tuple[str, pd.DataFrame]] | None = None,
    figure: str | None = None,
) -> str:
    parts = [f"<b>{escape(title)}</b>"]
    if figure:
        parts.append(figure)
    parts.append(_frame_html(table))
    for caption, extra in extra_tables or []:
        parts.append(f"<div><i>{escape(caption)}</i>{_frame_html(extra)}</div>")
    if footnote:
        parts.append(f'<div class="fedhem-note">{escape(footnote)}</div>')
    return (
        STYLE
        + '<div class="fedhem-result"><div class="fedhem-main">'
        + "".join(parts)
        + "</div>"
        + privacy._repr_html_()
        + "</div>"
    )


def figure_png(fig: Any, alt: str = "Kaplan-Meier curves") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}"/>'


def km_html(result: KaplanMeierResult) -> str:
    from matplotlib.figure import Figure  # not pyplot: the notebook's backend is left alone

    from fedhem_kernel.display.km_plot import plot_km

    fig = Figure(figsize=(7, 4.5))
    plot_km(result, ax=fig.subplots())
    img = figure_png(fig)
    medians = result.median_survival.to_frame().T
    medians.index = ["median survival"]
    return result_html(result.title, medians, result.privacy, figure=img, footnote=result.footnote)
