"""Log-rank test and its weighted and stratified variants, from per-site event tables.

Site step (``logrank_tables``): per stratum (one stratum ``all`` when the test is not stratified), the
Kaplan–Meier event tables of every group, built by :func:`site_survival_tables` (durations coarsened to
the policy's grid, small steps merged so every released count is 0 or at least ``min_cell_count``). A
stratum with fewer than ``min_cell_count`` patients at a site is not released by that site, and neither
is a stratum in which one group's table cannot be released (the other groups would be compared against
an incomplete risk set); the site says so in its privacy report, without any count.

Combine: per stratum, the pooled at-risk and event counts of every group at the union of event times;
per event time ``t_i`` a weight ``w_i`` (computed from the stratum's pooled table), the weighted
observed-minus-expected vector ``Z = Σ w_i (d_ij - n_ij d_i / n_i)`` and its covariance
``V = Σ w_i² d_i (n_i - d_i) / (n_i - 1) · (n_ij / n_i)(δ_jh - n_ih / n_i)``; ``Z`` and ``V`` are summed
over strata (as R's ``survdiff(... + strata())``) and the statistic ``Zᵀ V⁻ Z`` over the first G-1
groups is chi-squared with G-1 degrees of freedom. Weights, as in lifelines'
``multivariate_logrank_test(weightings=...)``:

========================  =====================================================================
``None`` (log-rank)       1
``"wilcoxon"``            ``n_i`` (Gehan–Breslow)
``"tarone-ware"``         ``sqrt(n_i)``
``"peto"``                ``Π_{t_j <= t_i} (1 - d_j / (n_j + 1))`` (Peto–Peto's modified survival)
``"fleming-harrington"``  ``S(t_i-)^p (1 - S(t_i-))^q``, S the pooled Kaplan–Meier (left limit)
========================  =====================================================================

``n_i``, ``d_i`` are the stratum's pooled numbers at risk and events over all groups. Under
``Policy.unrestricted()`` each equals lifelines on the pooled rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedhem_kernel.protocol.params import COLUMN, COLUMNS, NONE, Params, number, options

ALL = "all"


def stratum_label(columns: Sequence[str], values: Sequence[str]) -> str:
    """``"wexp=1"``, ``"wexp=1, race=0"``: how a stratum is named in payloads and results."""
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True))


#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "duration": (COLUMN,),
    "event": (COLUMN,),
    "group": (COLUMN,),
    "strata": (COLUMNS, NONE),
    "weightings": (options("wilcoxon", "tarone-ware", "peto", "fleming-harrington"), NONE),
    "p": (number(), NONE),
    "q": (number(), NONE),
}

#: Most stratum columns one test may use.
MAX_STRATA_COLUMNS = 10
