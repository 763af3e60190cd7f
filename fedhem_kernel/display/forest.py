"""Forest plot of a Cox fit: one row per coefficient, its estimate and 95 % interval.

The same rows feed the matplotlib figure (:func:`plot_forest`, used for the HTML/PNG view) and the
widget (:func:`forest_state`, drawn as SVG in the browser), so both show the same numbers. Like
lifelines' ``CoxPHFitter.plot``: coefficients on a linear axis with a line at 0, or hazard ratios
on a log axis with a line at 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedhem_kernel.analyses.cox.result import CoxResult


def forest_rows(result: CoxResult, hazard_ratios: bool = False) -> list[dict[str, Any]]:
    """Per coefficient (in model order): label, estimate, lower and upper 95 % bound, p."""
    s = result.summary
    cols = ("exp(coef)", "exp(coef) lower 95%", "exp(coef) upper 95%")
    if not hazard_ratios:
        cols = ("coef", "coef lower 95%", "coef upper 95%")
    return [
        {
            "label": str(name),
            "estimate": float(s.at[name, cols[0]]),
            "lower": float(s.at[name, cols[1]]),
            "upper": float(s.at[name, cols[2]]),
            "p": float(s.at[name, "p"]),
        }
        for name in s.index
    ]


def forest_state(result: CoxResult) -> dict[str, Any]:
    """What the widget draws: rows on the hazard-ratio scale (log axis, reference line at 1)."""
    rows = [r for r in forest_rows(result, hazard_ratios=True) if np.isfinite(r["estimate"])]
    for r in rows:
        r["lower"] = r["lower"] if np.isfinite(r["lower"]) else None
        r["upper"] = r["upper"] if np.isfinite(r["upper"]) else None
    return {
        "kind": "forest",
        "scale": "log",
        "reference": 1.0,
        "label": "hazard ratio (95% CI)",
        "rows": rows,
    }


def plot_forest(
    result: CoxResult, ax: Any = None, hazard_ratios: bool = False, **errorbar_kwargs: Any
) -> Any:
    """Draw the forest plot on ``ax`` (a new figure if None); returns the axes."""
    import matplotlib.pyplot as plt

    rows = forest_rows(result, hazard_ratios)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    est = np.array([r["estimate"] for r in rows])
    err = np.array([[r["estimate"] - r["lower"], r["upper"] - r["estimate"]] for r in rows]).T
    style = {"fmt": "s", "color": "#1f4e79", "ecolor": "#1f4e79", "capsize": 3, "markersize": 5}
    style.update(errorbar_kwargs)
    ax.errorbar(est, y, xerr=err, **style)
    ax.axvline(1.0 if hazard_ratios else 0.0, color="#888", linestyle="--", linewidth=1)
    if hazard_ratios:
        ax.set_xscale("log")
        ax.set_xlabel("hazard ratio (95% CI)")
    else:
        ax.set_xlabel("log(HR) (95% CI)")
    ax.set_yticks(y)
    ax.set_yticklabels([r["label"] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    return ax


def forest_html(result: CoxResult) -> str:
    """The hazard-ratio forest plot as an inline PNG (the HTML view's figure)."""
    from matplotlib.figure import Figure  # not pyplot: the notebook's backend is left alone

    from fedhem_kernel.display.html import figure_png

    fig = Figure(figsize=(6, 0.45 * len(forest_rows(result, True)) + 1.2))
    plot_forest(result, ax=fig.subplots(), hazard_ratios=True)
    return figure_png(fig, alt="Forest plot of hazard ratios")
