"""Display of competing-risks results: stacked cumulative-incidence curves (PNG, HTML and widget).

One panel per group; in each panel the causes are stacked from the bottom (event of interest first),
so the height of a band is that cause's cumulative incidence and the white space above all bands is
the event-free probability (the canonical relapse vs non-relapse-mortality plot). The widget can
switch to separate curves with their 95 % bands. Everything shown comes from the result, which only
holds released, pooled values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedhem_kernel.display.state import json_value, km_marks, table_state

if TYPE_CHECKING:
    from fedhem_kernel.analyses.cumulative_incidence.result import CumulativeIncidenceResult

#: Cause colours: the event of interest first (a warm colour), then the others.
CAUSE_COLOURS = ["#d62728", "#1f77b4", "#7f7f7f", "#9467bd", "#8c564b", "#2ca02c", "#e377c2"]


def cause_order(result: CumulativeIncidenceResult) -> list[str]:
    """Causes in plotting order: the event of interest at the bottom of the stack."""
    return [result.event_of_interest] + [c for c in result.causes if c != result.event_of_interest]


def _time_label(result: CumulativeIncidenceResult) -> str:
    return f"{result.duration}" + (f" ({result.unit})" if result.unit else "")


def _curve(result: CumulativeIncidenceResult, group: str, cause: str) -> tuple[np.ndarray, ...]:
    """Timeline, CIF, lower, upper of one curve, cut at the group's last released time."""
    cif = result.cumulative_incidence[(group, cause)]
    ci = result.confidence_interval
    end = float(result.event_tables[group].index.max())
    keep = cif.index.to_numpy() <= end
    return (
        cif.index.to_numpy()[keep],
        cif.to_numpy()[keep],
        ci[(group, cause, "lower_0.95")].to_numpy()[keep],
        ci[(group, cause, "upper_0.95")].to_numpy()[keep],
    )


# -- matplotlib -------------------------------------------------------------------------------------
def plot_cumulative_incidence(
    result: CumulativeIncidenceResult,
    ax: Any = None,
    stacked: bool = True,
    at_risk_counts: bool = True,
    figure: Any = None,
) -> Any:
    """One panel per group: stacked cumulative incidence (or curves with 95 % bands).

    ``ax``: an axes (one group) or a sequence of axes, one per group; by default new axes on
    ``figure`` (a ``matplotlib.figure.Figure``), or on a new pyplot figure when that is None too.
    Returns the axes (a list when there are several groups).
    """
    groups = result.groups
    if ax is None:
        cols = min(len(groups), 3)
        rows = -(-len(groups) // cols)
        size = (4.6 * cols, 3.9 * rows)
        if figure is None:
            import matplotlib.pyplot as plt  # the caller's own plot, on their backend

            figure = plt.figure(figsize=size)
        else:
            figure.set_size_inches(*size)
        fig = figure
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        axes_list = list(axes.ravel())
        for extra in axes_list[len(groups) :]:
            extra.set_visible(False)
        fig.subplots_adjust(hspace=0.55 + (0.08 * len(result.causes) if at_risk_counts else 0))
    else:
        axes_list = list(ax) if isinstance(ax, list | tuple | np.ndarray) else [ax]
        if len(axes_list) != len(groups):
            raise ValueError(f"pass one axes per group ({len(groups)})")
    t_max = float(result.cumulative_incidence.index.max()) or 1.0
    order = cause_order(result)
    for a, group in zip(axes_list, groups, strict=False):
        base = None
        for j, cause in enumerate(order):
            colour = CAUSE_COLOURS[j % len(CAUSE_COLOURS)]
            time, cif, lower, upper = _curve(result, group, cause)
            label = cause + (" (event of interest)" if cause == result.event_of_interest else "")
            if stacked:
                bottom = np.zeros_like(cif) if base is None else base
                a.fill_between(
                    time, bottom, bottom + cif, step="post", color=colour, alpha=0.55, label=label
                )
                a.step(time, bottom + cif, where="post", color=colour, linewidth=1)
                base = bottom + cif
            else:
                a.step(time, cif, where="post", color=colour, linewidth=2, label=label)
                a.fill_between(time, lower, upper, step="post", color=colour, alpha=0.15)
        a.set_xlim(0, t_max)
        a.set_ylim(0, 1.0)
        a.grid(alpha=0.3)
        a.set_title(group if result.group else "cumulative incidence", fontsize=10)
        a.set_xlabel(_time_label(result))
        a.set_ylabel("cumulative incidence" + (" (stacked)" if stacked else ""))
        if at_risk_counts:
            _at_risk_row(a, result, group, t_max)
    axes_list[0].legend(frameon=False, fontsize=8, loc="upper left")
    if result.gray_test is not None:
        g = result.gray_test
        axes_list[0].figure.suptitle(
            f"Gray's test for {g.cause} across {result.group}: "
            f"χ² = {g.test_statistic:.2f}, df = {g.degrees_of_freedom}, p = {g.p_value:.3g}",
            fontsize=9,
        )
    return axes_list if len(axes_list) > 1 else axes_list[0]


def _at_risk_row(ax: Any, result: CumulativeIncidenceResult, group: str, t_max: float) -> None:
    ticks = [x for x in ax.get_xticks() if 0 <= x <= t_max]
    tab = result.event_tables[group]
    idx = np.searchsorted(tab.index.to_numpy(), ticks, side="left")
    counts = np.append(tab["at_risk"].to_numpy(), 0)[idx]
    table = ax.table(
        cellText=[[str(int(c)) for c in counts]],
        rowLabels=["at risk"],
        colLabels=[f"{x:g}" for x in ticks],
        loc="bottom",
        bbox=[0.0, -0.36, 1.0, 0.13],
        edges="open",
    )
    table.set_fontsize(7)


# -- HTML -------------------------------------------------------------------------------------------
def summary_times(result: CumulativeIncidenceResult, n: int = 5) -> list[float]:
    """A few round times inside the follow-up for the summary table (e.g. 12, 24, 36 months)."""
    # up to the shortest follow-up of any group: no group's curve is read past its last time
    t_max = min(float(tab.index.max()) for tab in result.event_tables.values())
    if t_max <= 0:
        return [0.0]
    raw = t_max / n
    magnitude = 10 ** np.floor(np.log10(raw))
    if result.unit == "months" and raw >= 6:
        step = 12.0 * max(1, round(raw / 12))
    else:
        step = float(min((m * magnitude for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw)))
    return [float(x) for x in np.arange(step, t_max + 1e-9, step)][:n]


def summary_table(result: CumulativeIncidenceResult) -> pd.DataFrame:
    """Cumulative incidence per (group, cause) at a few round times."""
    times = summary_times(result)
    rows = {}
    for group in result.groups:
        for cause in cause_order(result):
            series = result.cumulative_incidence_at_times(times, cause=cause, group=group)
            rows[(group, cause)] = series.to_numpy()
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[f"{x:g}" for x in times])
    out.index = pd.MultiIndex.from_tuples(out.index, names=["group", "cause"])
    out.columns.name = _time_label(result)
    return out


def cif_html(result: CumulativeIncidenceResult) -> str:
    """The stacked curves as a PNG, the incidence at a few times, Gray's test, privacy report."""
    from matplotlib.figure import Figure  # not pyplot: the notebook's backend is left alone

    from fedhem_kernel.display.html import figure_png, result_html

    fig = Figure()
    plot_cumulative_incidence(result, figure=fig)
    img = figure_png(fig, alt="cumulative incidence curves")
    extra = []
    if result.gray_tests is not None:
        extra.append((f"Gray's test across '{result.group}' (per cause)", result.gray_tests))
    return result_html(
        _title(result),
        summary_table(result),
        result.privacy,
        figure=img,
        extra_tables=extra,
        footnote="; ".join(result.notes)
        + "; curves pooled from the sites' released event tables (Aalen–Johansen).",
    )


def _title(result: CumulativeIncidenceResult) -> str:
    return (
        f"Cumulative incidence: {result.duration} / {result.event}"
        + (f" by {result.group}" if result.group else "")
        + f" on '{result.privacy.dataset}'"
    )


# -- widget -----------------------------------------------------------------------------------------
def _floats(values: Any) -> list[float | None]:
    return [json_value(v) for v in values]


def cif_state(result: CumulativeIncidenceResult) -> dict[str, Any]:
    """Curves, bands, numbers at risk, Gray's test and merged/withheld marks of a result."""
    marks = km_marks(result.privacy)
    order = cause_order(result)
    cif, ci = result.cumulative_incidence, result.confidence_interval
    groups = []
    for g in result.groups:
        tab = result.event_tables[g]
        groups.append(
            {
                "name": str(g),
                "cif": [_floats(cif[(g, c)]) for c in order],
                "lower": [_floats(ci[(g, c, "lower_0.95")]) for c in order],
                "upper": [_floats(ci[(g, c, "upper_0.95")]) for c in order],
                "table": {
                    "time": _floats(tab.index),
                    "at_risk": [int(v) for v in tab["at_risk"]],
                    "observed": [int(v) for v in tab["observed"]],
                },
                "merged": marks["merged"].get(str(g), {}),
                "withheld_by": marks["withheld"].get(str(g), []),
            }
        )
    shown = {str(g) for g in result.groups}
    gray = None
    if result.gray_test is not None:
        gray = {
            "cause": result.gray_test.cause,
            "statistic": json_value(result.gray_test.test_statistic),
            "df": int(result.gray_test.degrees_of_freedom),
            "p": json_value(result.gray_test.p_value),
        }
    return {
        "title": _title(result),
        "duration": result.duration,
        "event": result.event,
        "group": result.group,
        "unit": result.unit,
        "time_step": json_value(result.time_step),
        "causes": order,
        "event_of_interest": result.event_of_interest,
        "timeline": _floats(cif.index),
        "groups": groups,
        "not_shown": [
            {"name": g, "withheld_by": sites}
            for g, sites in marks["withheld"].items()
            if g not in shown
        ],
        "gray": gray,
        "gray_tests": None
        if result.gray_tests is None
        else table_state(result.gray_tests, "Gray's test per cause"),
        "notes": list(result.notes),
    }
