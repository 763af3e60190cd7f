"""describe: count, mean, SD and quantiles of numeric columns, optionally by a grouping column.

Site step: per (group, column) the count, mean and sum of squared deviations (combined exactly with
Chan's parallel formula) and a histogram whose bins each hold at least ``min_cell_count`` patients
(at most 50 bins): inner edges midway between neighbouring values, per bin its count, mean and whether
all its values are equal (then k or more patients share that value, as in a category). Min and max are
released only where the policy allows. A cell whose count, or whose number of missing values, is
between 1 and k-1 is suppressed at that site.

Combine: exact pooled count, mean and SD; quantiles by inverting the pooled CDF in which each bin is
uniform between its edges (an outer bin is mirrored about its mean) or a point mass when its values are
equal. Quantiles are approximate: the error is bounded by the width of the bins around them (about
1/50 of a site's patients per bin), and no released quantile is a patient's own value.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import COLUMN, COLUMNS, NONE, Params

MAX_BINS = 50


QUANTILES = (0.25, 0.5, 0.75)


STAT_COLUMNS = ["count", "mean", "std", "min", "25%", "50%", "75%", "max", "n_sites"]

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {"columns": (COLUMNS, NONE), "by": (COLUMN, NONE)}
