"""Kaplan–Meier survival curves, pooled exactly from per-site event tables.

Site step (``km_tables``): per group, durations coarsened up to the policy's time grid, the event table
(time, at risk, events, censored), and small steps merged until every released count is 0 or at least
``min_cell_count`` (see :mod:`fedhem_kernel.privacy.survival`). Combine: each site's table is a step
function of the number at risk; summing them at the union of released times gives the pooled at-risk
and event counts, from which the product-limit estimate, Greenwood variance, exponential-Greenwood
("log-log") confidence interval and median follow exactly as in lifelines' ``KaplanMeierFitter``.
Under ``Policy.unrestricted()`` the pooled curve equals lifelines on the pooled rows.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import COLUMN, NONE, Params

ALL = "all"

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {"duration": (COLUMN,), "event": (COLUMN,), "group": (COLUMN, NONE)}
