"""Every result type's renderers, registered by type (see :mod:`fedhem_kernel.display.render`).

The generic pair (any :class:`Result`: title, summary table, further tables, footnote, privacy
report) serves results with no renderer of their own; the others add what their numbers need: curves,
a forest plot, cluster figures, per-site tables. Widget renderers import the widget stack
(anywidget, ipywidgets) only when a widget is made: plain Python never loads it.
"""

from __future__ import annotations

from typing import Any

from fedhem_kernel.analyses.combat.result import CombatResult
from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.analyses.cox.result import CoxResult
from fedhem_kernel.analyses.crosstab.result import CrosstabResult
from fedhem_kernel.analyses.cumulative_incidence.result import CumulativeIncidenceResult
from fedhem_kernel.analyses.describe.result import DescribeResult
from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult
from fedhem_kernel.analyses.kmeans.result import KMeansResult
from fedhem_kernel.analyses.logrank.result import LogrankResult
from fedhem_kernel.analyses.pca.result import PCAResult
from fedhem_kernel.analyses.radiomics.result import RadiomicsResult
from fedhem_kernel.display.html import km_html, result_html
from fedhem_kernel.display.render import renders
from fedhem_kernel.display.state import table_state


def _widget(name: str) -> Any:
    """The widget maker ``name`` of :mod:`fedhem_kernel.display.widgets`, imported when called."""

    def make(result: Any, **options: Any) -> Any:
        from fedhem_kernel.display import widgets

        return getattr(widgets, name)(result, **options)

    make.__name__ = name
    return make


def _table_widget(*args: Any, **kwargs: Any) -> Any:
    from fedhem_kernel.display.widgets import ResultTableWidget

    return ResultTableWidget(*args, **kwargs)


# -- any result ---------------------------------------------------------------------------------------
@renders("html", Result)
def generic_html(result: Result) -> str:
    """Title, summary table, further tables and footnote, with the privacy report beside them."""
    return result_html(
        result.title,
        result.main_table,
        result.privacy,
        footnote=result.footnote or None,
        extra_tables=result.tables(),
    )


@renders("widget", Result)
def generic_widget(result: Result) -> Any:
    """The same tables as a widget (suppressed cells marked) with the privacy panel."""
    tables = [table_state(result.main_table, "")]
    tables += [table_state(table, caption) for caption, table in result.tables()]
    return _table_widget(result.title, tables, result.privacy, footnote=result.footnote)


# -- survival -----------------------------------------------------------------------------------------
renders("html", KaplanMeierResult)(km_html)
renders("widget", KaplanMeierResult)(_widget("km_widget"))


@renders("html", CumulativeIncidenceResult)
def cif_html(result: CumulativeIncidenceResult) -> str:
    from fedhem_kernel.display.cif import cif_html as html

    return html(result)


@renders("widget", CumulativeIncidenceResult)
def cif_widget(result: CumulativeIncidenceResult) -> Any:
    from fedhem_kernel.display.cif_widget import cif_widget as widget

    return widget(result)


@renders("html", LogrankResult)
def logrank_html(result: LogrankResult) -> str:
    what = "Observed and expected events" + (" (summed over strata)" if result.strata else "")
    extra = [(what, result.summary), *result.tables()]
    return result_html(result.title, result.test, result.privacy, extra_tables=extra)


renders("widget", LogrankResult)(_widget("logrank_widget"))


@renders("html", CoxResult)
def cox_html(result: CoxResult) -> str:
    from fedhem_kernel.display.forest import forest_html

    return result_html(
        result.title,
        result.summary,
        result.privacy,
        extra_tables=result.tables(),
        footnote=result.footnote,
        figure=forest_html(result),
    )


@renders("widget", CoxResult)
def cox_widget(result: CoxResult) -> Any:
    from fedhem_kernel.display.forest import forest_state

    return _table_widget(
        result.title,
        [table_state(result.summary, "coefficients"), table_state(result.model_table(), "model")],
        result.privacy,
        footnote=result.footnote,
        figure=forest_state(result),
    )


# -- tables -------------------------------------------------------------------------------------------
renders("widget", DescribeResult)(_widget("describe_widget"))
renders("widget", RadiomicsResult)(_widget("radiomics_widget"))
renders("widget", CrosstabResult)(_widget("crosstab_widget"))


@renders("html", CombatResult)
def combat_html(result: CombatResult) -> str:
    return result_html(
        result.title,
        result.batch_effects,
        result.privacy,
        footnote=result.footnote,
        extra_tables=[("before and after, per batch", result.summary)],
    )


@renders("widget", CombatResult)
def combat_widget(result: CombatResult) -> Any:
    return _table_widget(
        result.title,
        [
            table_state(result.batch_effects, "batch effects"),
            table_state(result.summary, "before and after, per batch"),
        ],
        result.privacy,
        footnote=result.footnote,
    )


# -- clusters and components --------------------------------------------------------------------------
@renders("html", KMeansResult)
def kmeans_html(result: KMeansResult) -> str:
    from fedhem_kernel.display.cluster_state import kmeans_footnote, kmeans_title

    return result_html(
        kmeans_title(result),
        result.summary,
        result.privacy,
        footnote=kmeans_footnote(result),
        extra_tables=[("per site", result.by_site)] if len(result.by_site) else [],
    )


@renders("widget", KMeansResult)
def kmeans_widget(result: KMeansResult, pca: PCAResult | None = None) -> Any:
    """Centres and sizes, the per-site table, the privacy panel and a figure: with ``pca=`` (a
    ``fed.pca`` result on these features) the centres on PC1/PC2, area ~ released size; without,
    a heatmap of each centre against the pooled mean (in pooled SDs when ``standardize=True``).
    No patient's point is ever drawn."""
    from fedhem_kernel.display.cluster_state import (
        kmeans_figure,
        kmeans_footnote,
        kmeans_tables,
        kmeans_title,
    )

    figure = kmeans_figure(result, pca)
    return _table_widget(
        kmeans_title(result),
        kmeans_tables(result),
        result.privacy,
        footnote=kmeans_footnote(result, figure),
        figure=figure,
    )


@renders("html", PCAResult)
def pca_html(result: PCAResult) -> str:
    from fedhem_kernel.display.cluster_plot import loadings_html
    from fedhem_kernel.display.cluster_state import pca_footnote, pca_title

    return result_html(
        pca_title(result),
        result.summary,
        result.privacy,
        footnote=pca_footnote(result),
        figure=loadings_html(result),
    )


@renders("widget", PCAResult)
def pca_widget(result: PCAResult, kmeans: KMeansResult | None = None) -> Any:
    """The components table, the privacy panel and a plot of each feature's loadings on PC1/PC2,
    or with ``kmeans=`` (a k-means result on these features) its cluster centres there instead."""
    from fedhem_kernel.display.cluster_state import pca_figure, pca_footnote, pca_title

    return _table_widget(
        pca_title(result),
        [table_state(result.summary, "explained variance and loadings")],
        result.privacy,
        footnote=pca_footnote(result),
        figure=pca_figure(result, kmeans),
    )
