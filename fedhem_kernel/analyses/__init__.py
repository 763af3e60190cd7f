"""The analysis registry: every site step a site answers, by message action name.

Adding an analysis: write one module with its site step(s), combine step and result type, list its
``STEPS`` here. Nothing in ``engine/`` or ``kernel/`` changes.
"""

from __future__ import annotations

from fedhem_kernel.analyses import (
    combat,
    cox,
    crosstab,
    cumulative_incidence,
    describe,
    kaplan_meier,
    kmeans,
    levels,
    logrank,
    pca,
    radiomics,
)
from fedhem_kernel.site.steps import SiteStep

SITE_STEPS: dict[str, SiteStep] = {
    step.name: step
    for module in (
        levels,
        describe,
        crosstab,
        kaplan_meier,
        logrank,
        cumulative_incidence,
        cox,
        kmeans,
        pca,
        radiomics,
        combat,
    )
    for step in module.STEPS
}

__all__ = ["SITE_STEPS", "SiteStep"]
