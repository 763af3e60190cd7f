"""Every result type shares one base: summary table, to_frame, print_summary, text and rich display."""

from __future__ import annotations

import io

import pandas as pd
import pytest

import fedhem_kernel as fh
from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.display.render import renderer


@pytest.fixture(scope="module")
def results():
    with fh.Federation.demo() as fed:
        km = fed.kmeans("aml", ["age", "wbc"], k=3, seed=1)
        yield {
            "describe": fed.describe("aml", ["age"], by="sex"),
            "crosstab": fed.crosstab("aml", "eln_risk", "sex"),
            "kaplan_meier": fed.kaplan_meier("aml", "os_months", "os_status", group="sex"),
            "logrank": fed.logrank("aml", "os_months", "os_status", "sex"),
            "cumulative_incidence": fed.cumulative_incidence(
                "aml", "efs_months", "efs_cause", group="sex"
            ),
            "cox": fed.cox("aml", "os_months", "os_status", ["age", "sex"]),
            "kmeans": km,
            "pca": fed.pca("aml", ["age", "wbc"]),
        }


@pytest.mark.parametrize(
    "name",
    [
        "describe",
        "crosstab",
        "kaplan_meier",
        "logrank",
        "cumulative_incidence",
        "cox",
        "kmeans",
        "pca",
    ],
)
def test_every_result_has_the_base_behaviour(results, name):
    res = results[name]
    assert isinstance(res, Result)
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame) and not frame.empty
    assert frame is not res.main_table and frame.equals(res.main_table)  # a copy
    out = io.StringIO()
    res.print_summary(file=out)
    text = out.getvalue()
    assert text.startswith(res.title) and "Privacy report:" in text
    for site in res.privacy.released_sites:
        assert f"  {site}: " in text
    assert repr(res).startswith(f"{type(res).__name__}(") and repr(res.privacy) in repr(res)
    assert "Privacy report" in res._repr_html_()
    # each type has its renderers; the base's generic ones only where nothing more is needed
    assert renderer("html", res) is not None and renderer("widget", res) is not None


def test_kaplan_meier_summary_holds_released_numbers(results):
    km = results["kaplan_meier"]
    summary = km.summary
    assert list(summary.columns) == ["at_risk", "events", "median_survival"]
    for g in km.groups:
        tab = km.event_tables[g]
        assert summary.loc[g, "at_risk"] == tab["at_risk"].iloc[0]
        assert summary.loc[g, "events"] == tab["observed"].sum()
        assert summary.loc[g, "median_survival"] == km.median_survival[g]
