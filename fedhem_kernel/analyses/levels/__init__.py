"""Agreeing on the categories of a grouping variable without naming rare ones.

Site step: the levels of a column that hold at least ``min_cell_count`` patients at this site (a rare
level's *name* could identify a patient, e.g. a free-text diagnosis). Combine: the sorted union. Every
grouped analysis (``by=``, ``group=``, crosstab) asks this first, so that all sites code the same levels;
a level rare at every site is left out (crosstab shows it as ``(other)``).
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import COLUMN, Params

OTHER = "(other)"
#: The level of patients without a value, in pooled tables (counted under the same rules).
MISSING = "(missing)"


SITE_COLUMN = "site"

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {"column": (COLUMN,)}
