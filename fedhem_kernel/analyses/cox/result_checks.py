"""The results of the Cox model checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass


# -- coordinator side -----------------------------------------------------------------------
@dataclass(frozen=True)
class Concordance:
    """Harrell's C and what the binning of pairs across sites leaves open.

    ``pairs`` and ``unresolved`` count the comparable pairs and those the binning leaves open;
    None where they were not released (a pooled fit: the sites release C and its bounds only)."""

    value: float
    lower: float
    upper: float
    pairs: int | None
    unresolved: int | None


@dataclass(frozen=True)
class ProportionalHazardTest:
    """lifelines' ``proportional_hazard_test`` result: one χ²(1) statistic per covariate and transform."""

    summary: pd.DataFrame
    time_transform: str

    @property
    def test_statistic(self) -> np.ndarray:
        return self.summary["test_statistic"].to_numpy()

    @property
    def p_value(self) -> np.ndarray:
        return self.summary["p"].to_numpy()

    def _repr_html_(self) -> str:
        caption = f"Proportional-hazards test (scaled Schoenfeld residuals, {self.time_transform})"
        return f"<b>{caption}</b>" + self.summary.to_html(float_format=lambda v: f"{v:.4g}")

    def __repr__(self) -> str:
        return f"ProportionalHazardTest({self.time_transform})\n{self.summary}"


@dataclass
class Diagnostics:
    concordance: Concordance | None
    ph_tests: dict[str, pd.DataFrame]
