"""crosstab: counts of patients by two categorical columns (or one column by site).

Site step: the site's table on the agreed levels (values outside them go to ``(other)``), with its row,
column and grand totals; cells between 1 and k-1 are suppressed (primary) and further cells are
suppressed until an LP audit shows that no suppressed cell or margin can be pinned down from what is
released (secondary; :mod:`fedhem_kernel.privacy.tables`). A suppressed value never leaves the site: it
travels as -1 and becomes NA.

Combine: per-site tables (``by_site``) and the pooled table, whose cell is the sum over sites or NA when
any site suppressed it (a pooled cell computed from unsuppressed sites only would understate it, and
adding a suppressed site's value would let the others subtract it back out). ``col="site"`` (or
``row="site"``) tabulates one column with one table column per site.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import BOOL, COLUMN, Params

HIDDEN = -1

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {"row": (COLUMN,), "col": (COLUMN,), "margins": (BOOL,)}
