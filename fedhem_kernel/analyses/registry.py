"""The analysis registry: one line per analysis, its name and its package.

Everything that needs to know the analyses reads this table: a site's ClientApp handlers and its
executor's steps (``node.site_steps``: each package's ``site.STEPS``), the policy's known analyses
(``Policy(allowed_analyses=...)``) and the researcher's generic call (``Federation.run``: each
package's ``combine.run``). This module imports nothing, so either side can read it.
"""

from __future__ import annotations

ANALYSES: dict[str, str] = {
    "levels": "fedhem_kernel.analyses.levels",
    "describe": "fedhem_kernel.analyses.describe",
    "crosstab": "fedhem_kernel.analyses.crosstab",
    "kaplan_meier": "fedhem_kernel.analyses.kaplan_meier",
    "logrank": "fedhem_kernel.analyses.logrank",
    "cumulative_incidence": "fedhem_kernel.analyses.cumulative_incidence",
    "cox": "fedhem_kernel.analyses.cox",
    "kmeans": "fedhem_kernel.analyses.kmeans",
    "pca": "fedhem_kernel.analyses.pca",
    "radiomics": "fedhem_kernel.analyses.radiomics",
    "combat": "fedhem_kernel.analyses.combat",
}

#: Analyses every site answers whatever its policy allows: agreeing on category names is part of
#: every grouped analysis.
ALWAYS_ALLOWED = ("levels",)


def names() -> tuple[str, ...]:
    """The registered analyses' names."""
    return tuple(ANALYSES)


def package(name: str) -> str:
    """The package of analysis ``name`` (``KeyError`` if it is not registered)."""
    return ANALYSES[name]
