"""describe: count, mean, SD and quantiles of numeric columns, optionally by a grouping column.

Site step: per (group, column) the count, mean and sum of squared deviations (combined exactly with
Chan's parallel formula) and a histogram whose bins each hold at least ``min_cell_count`` patients
(at most 50 bins): inner edges midway between neighbouring values, per bin its count, mean and whether
all its values are equal (then k or more patients share that value, as in a category). Min and max are
released only where the policy allows. A cell whose count, or whose number of missing values, is
between 1 and k-1 is suppressed at that site.

Pooled through secure sums (every site secure-capable, thresholds on): three rounds, each a
secure sum, each checked by every site against the one before (:mod:`describe.site`): perturbed
counts per cell decide which cells are shown; then the count, mean and SD of those cells; then a
histogram on bins derived from the pooled mean and SD, for the quartiles.

Combine (per-site releases): exact pooled count, mean and SD; quantiles by inverting the pooled CDF in which each bin is
uniform between its edges (an outer bin is mirrored about its mean) or a point mass when its values are
equal. Quantiles are approximate: the error is bounded by the width of the bins around them (about
1/50 of a site's patients per bin), and no released quantile is a patient's own value.
"""

from __future__ import annotations

import numpy as np

from fedhem_kernel.privacy.tables import pooled_cells_shown
from fedhem_kernel.protocol.params import COLUMN, COLUMNS, NONE, Params

MAX_BINS = 50
#: Pooled histograms: bins of a tenth of a standard deviation between the pooled mean -2 SD and
#: +2 SD (the quartiles always lie within sqrt(3) SD of the mean: Cantelli's inequality).
HIST_BINS = 40
HIST_SPAN = 2.0
#: Most (group, column) cells a pooled describe may have (a site refuses more).
MAX_POOLED_CELLS = 5000


QUANTILES = (0.25, 0.5, 0.75)

#: DP mode: per patient and column, the weights of its count, Σt, Σ4(t-½)² and histogram bin
#: (privacy/dp_values.py): the moments weigh more, the SD is a difference of two noisy sums.
DP_WEIGHTS = {"count": 1, "sum": 2, "sumsq": 2, "histogram": 1}


STAT_COLUMNS = ["count", "mean", "std", "min", "25%", "50%", "75%", "max", "n_sites"]

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {"columns": (COLUMNS, NONE), "by": (COLUMN, NONE)}


def shown_cells(noisy: np.ndarray, empty: np.ndarray, k: int, n_sites: int) -> np.ndarray:
    """Which (group, column) cells a pooled describe shows, from the risk round's perturbed
    counts: per column, the rule of a pooled table's column
    (:func:`~fedhem_kernel.privacy.tables.pooled_cells_shown`: perturbed total at least
    ``k + n_sites``, never one hidden group alone, since the ungrouped count is its margin).
    Every site makes the same decision again from the same total."""
    noisy = np.asarray(noisy, dtype=np.int64)
    empty = np.asarray(empty, dtype=bool)
    out = np.zeros(noisy.shape, dtype=bool)
    for j in range(noisy.shape[1]):
        out[:, j] = pooled_cells_shown(noisy[:, [j]], k, n_sites, empty[:, [j]])[:, 0]
    return out


def pooled_moments(totals: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and SD per cell from the moments round's totals: ``n`` (the perturbed count),
    ``sum`` and ``sumsq`` (each site's mean and mean square weighted by its share of ``n``) and
    ``unmeasured`` (the share of sites with no mean to give). NaN where there is none."""
    n = np.asarray(totals["n"], dtype=float)
    weight = n - np.asarray(totals["unmeasured"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(weight > 0, np.asarray(totals["sum"]) / weight, np.nan)
        square = np.where(weight > 0, np.asarray(totals["sumsq"]) / weight, np.nan)
        var = np.clip(square - mean**2, 0.0, None) * np.where(n > 1, n / (n - 1), np.nan)
    return n, mean, np.sqrt(var)


def histogram_edges(mean: float, sd: float) -> np.ndarray:
    """The edges of a pooled histogram (``HIST_BINS + 1`` of them), from public numbers:
    the pooled mean and SD of the moments round (both sides compute them the same way)."""
    return mean + sd * np.linspace(-HIST_SPAN, HIST_SPAN, HIST_BINS + 1)
