"""ComBat's request parameters as both sides read them (features, batch, covariates and their agreed
levels), checked. No rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedhem_kernel.analyses.common.params import check_features
from fedhem_kernel.analyses.levels import SITE_COLUMN
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Payload


# -- parameters (both sides) ----------------------------------------------------------------------
def column_names(value: Any, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if names is None:
        return []
    if not isinstance(names, list | tuple) or not all(isinstance(c, str) and c for c in names):
        raise ParameterError(f"'{what}' must be a column name or a list of column names")
    if len(set(names)) != len(names):
        raise ParameterError(f"'{what}' names a column twice")
    return list(names)


@dataclass(frozen=True)
class CombatSpec:
    features: list[str]
    batch: str | None
    categorical: list[str]
    continuous: list[str]
    levels: dict[str, list[str]]

    @property
    def numeric(self) -> list[str]:
        return self.features + self.continuous

    @property
    def q(self) -> int:
        """Covariate columns of the design (one-hots of all levels but the first, then numbers)."""
        return sum(max(len(self.levels[c]) - 1, 0) for c in self.categorical) + len(self.continuous)


def combat_spec(params: Payload) -> CombatSpec:
    features = check_features(params.get("features"))
    batch = params.get("batch")
    if batch is not None and (not isinstance(batch, str) or not batch):
        raise ParameterError("'batch' must be a column name or None (each site is one batch)")
    categorical = column_names(params.get("categorical"), "categorical")
    continuous = column_names(params.get("continuous"), "continuous")
    used = features + categorical + continuous + ([batch] if batch else [])
    if len(set(used)) != len(used):
        raise ParameterError("a column is named twice among features, batch and covariates")
    if SITE_COLUMN in used:
        raise ParameterError("'site' is the batch when batch=None; it cannot be a feature")
    raw = params.get("levels") or {}
    if not isinstance(raw, Mapping):
        raise ParameterError("'levels' must map categorical covariates to lists of levels")
    levels: dict[str, list[str]] = {}
    for c in categorical:
        lv = raw.get(c)
        if not isinstance(lv, list | tuple) or not all(isinstance(v, str) for v in lv):
            raise ParameterError("'levels' must list the agreed levels of each categorical column")
        if len(set(lv)) != len(lv):
            raise ParameterError("'levels' names a level twice", column=c)
        levels[c] = list(lv)
    return CombatSpec(features, batch, categorical, continuous, levels)
