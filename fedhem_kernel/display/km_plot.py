"""Kaplan–Meier plot with a numbers-at-risk table under it (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedhem_kernel.analyses.kaplan_meier.result import KaplanMeierResult


def plot_km(
    result: KaplanMeierResult, ax: Any = None, ci: bool = True, at_risk_counts: bool = True
) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    sf = result.survival_function
    t_max = float(sf.index.max()) if len(sf.index) else 1.0
    for group in sf.columns:
        line = ax.step(sf.index, sf[group], where="post", label=str(group))[0]
        if ci:
            lo = result.confidence_interval[f"{group}_lower_0.95"]
            hi = result.confidence_interval[f"{group}_upper_0.95"]
            ax.fill_between(sf.index, lo, hi, step="post", alpha=0.15, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, t_max)
    ax.set_ylabel("survival probability")
    ax.set_xlabel(f"{result.duration}" + (f" ({result.unit})" if result.unit else ""))
    if len(sf.columns) > 1 or sf.columns[0] != "all":
        ax.legend(title=result.group, frameon=False)
    ax.grid(alpha=0.3)
    if at_risk_counts:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= t_max]
        rows = []
        for group in sf.columns:
            tab = result.event_tables[group]
            times = tab.index.to_numpy()
            idx = np.searchsorted(times, ticks, side="left")
            counts = np.append(tab["at_risk"].to_numpy(), 0)[idx]
            # a pooled curve ends before few remain: past its end the number is not known
            unknown = (idx >= len(times)) & result.pooled
            rows.append(["–" if u else str(int(c)) for c, u in zip(counts, unknown, strict=True)])
        table = ax.table(
            cellText=rows,
            rowLabels=[str(g) for g in sf.columns],
            colLabels=[f"{t:g}" for t in ticks],
            loc="bottom",
            bbox=[0.0, -0.24 - 0.07 * len(rows), 1.0, 0.07 * (len(rows) + 1)],
            edges="open",
        )
        table.set_fontsize(8)
        ax.set_title("numbers at risk shown below", fontsize=8, loc="right")
    return ax
