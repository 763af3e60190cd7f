"""Datasets held by a site: loading (CSV, Parquet, DataFrame) and schema checks.

Rows never leave this package. Errors name the site, dataset and column and never carry a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.privacy.dp_values import MAX_BOUND, bound_pair
from fedhem_kernel.site.imaging import check_imaging
from fedhem_kernel.site.schema import DTYPES, ColumnSpec, DatasetSchema

RESERVED_COLUMNS = ("site",)


@dataclass(frozen=True)
class Dataset:
    """One table at one site, with canonical dtypes: numbers as float64, categories as strings."""

    name: str
    frame: pd.DataFrame
    schema: DatasetSchema
    key: str | None = None  # the row-key column (``key = true``): names rows in load errors
    root: Path | None = None  # the site's data root: image and mask paths are relative to it

    @property
    def n_rows(self) -> int:
        return len(self.frame)


def _parse_spec(
    site: str, dataset: str, column: str, spec: Any
) -> tuple[str, str | None, bool, tuple[float, float] | None, tuple[str, ...] | None]:
    key, bounds, levels = False, None, None
    if isinstance(spec, str):
        dtype, unit = spec, None
    elif isinstance(spec, Mapping):
        dtype, unit, key = spec.get("type"), spec.get("unit"), spec.get("key", False)
        bounds, levels = spec.get("bounds"), spec.get("levels")
        unknown = set(spec) - {"type", "unit", "key", "bounds", "levels"}
        if unknown:
            raise SchemaError(
                f"unknown column settings {sorted(unknown)}",
                site=site,
                dataset=dataset,
                column=column,
                rule="schema",
            )
    else:
        raise SchemaError(
            "a column is declared as a type name or {type=..., unit=..., key=..., bounds=..., "
            "levels=...}",
            site=site,
            dataset=dataset,
            column=column,
            rule="schema",
        )
    if dtype not in DTYPES:
        raise SchemaError(
            f"unknown column type (use one of {', '.join(DTYPES)})",
            site=site,
            dataset=dataset,
            column=column,
            rule="schema",
        )
    if unit is not None and unit not in ("days", "weeks", "months", "years"):
        raise SchemaError(
            "unknown time unit (use days, weeks, months or years)",
            site=site,
            dataset=dataset,
            column=column,
            rule="schema",
        )
    if not isinstance(key, bool):
        raise SchemaError(
            "key = true or false", site=site, dataset=dataset, column=column, rule="schema"
        )
    err = {"site": site, "dataset": dataset, "column": column}
    if bounds is not None:
        bounds = _parse_bounds(bounds, dtype, err)
    if levels is not None:
        levels = _parse_levels(levels, dtype, err)
    return str(dtype), unit, key, bounds, levels


#: Most levels a column may declare.
MAX_DECLARED_LEVELS = 1000


def _parse_levels(levels: Any, dtype: Any, err: dict[str, str]) -> tuple[str, ...]:
    """A grouping column's declared ``levels = [...]``: distinct texts (or whole numbers, for an
    int or bool column: written as the grouping labels them, 1 -> "1")."""
    if dtype not in ("category", "int", "bool"):
        raise SchemaError("only a category, int or bool column has levels", **err, rule="schema")
    ok = isinstance(levels, list | tuple) and 0 < len(levels) <= MAX_DECLARED_LEVELS
    names: list[str] = []
    for v in levels if ok else []:
        if isinstance(v, str) and v and dtype == "category":
            names.append(v)
        elif isinstance(v, int) and not isinstance(v, bool) and dtype in ("int", "bool"):
            names.append(str(v))
        else:
            ok = False
    if not ok or len(set(names)) != len(names):
        raise SchemaError(
            "levels = [...]: distinct texts for a category column, whole numbers for an int or "
            f"bool one (at most {MAX_DECLARED_LEVELS})",
            **err,
            rule="schema",
        )
    return tuple(names)


def _parse_bounds(bounds: Any, dtype: Any, err: dict[str, str]) -> tuple[float, float]:
    """A numeric column's declared ``bounds = [low, high]``: two finite numbers, low < high."""
    if dtype not in ("float", "int"):
        raise SchemaError("only a float or int column has bounds", **err, rule="schema")
    pair = bound_pair(bounds)
    if pair is None:
        raise SchemaError(
            f"bounds = [low, high]: two finite numbers, low < high, within ±{MAX_BOUND:g}",
            **err,
            rule="schema",
        )
    return pair


def _infer_dtype(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_numeric_dtype(series):
        return "float"
    return "category"


def _coerce(series: pd.Series, dtype: str, err: dict[str, str]) -> pd.Series:
    if dtype in ("category", "image", "mask"):
        out = series.astype(object)
        return out.where(series.isna(), series.astype(str))
    if dtype == "bool" and (
        pd.api.types.is_bool_dtype(series) or pd.api.types.is_object_dtype(series)
    ):
        mapping = {True: 1.0, False: 0.0, "true": 1.0, "false": 0.0, "True": 1.0, "False": 0.0}
        mapped = series.map(lambda v: mapping.get(v, v))
        series = mapped
    numbers = pd.to_numeric(series, errors="coerce").astype(float)
    if bool((numbers.isna() & series.notna()).any()):
        raise SchemaError("expected numbers, found text", **err, rule="schema")
    finite = numbers.dropna()
    if not np.isfinite(finite.to_numpy()).all():
        raise SchemaError("infinite values are not allowed", **err, rule="schema")
    if dtype == "int" and not (finite == np.round(finite)).all():
        raise SchemaError("expected whole numbers", **err, rule="schema")
    if dtype == "bool" and not finite.isin([0.0, 1.0]).all():
        raise SchemaError("expected 0/1 or true/false", **err, rule="schema")
    return numbers


def read_table(site: str, dataset: str, path: Path) -> pd.DataFrame:
    err = {"site": site, "dataset": dataset}
    if not path.exists():
        raise SchemaError("data file not found", **err, rule="schema")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError):
        # parser messages may quote file content: never pass them on
        raise SchemaError("the data file could not be read", **err, rule="schema") from None
    raise SchemaError("unsupported file type (use .csv, .tsv or .parquet)", **err, rule="schema")


def load_dataset(
    site: str,
    name: str,
    source: pd.DataFrame | str | Path,
    columns: Mapping[str, Any] | None = None,
    *,
    base_dir: Path | None = None,
    data_root: Path | None = None,
) -> Dataset:
    """Load and check one dataset; ``columns`` declares types (``{"age": "float", ...}``).

    ``data_root`` (default ``base_dir``) is where the paths of ``image``/``mask`` columns point
    (see :mod:`fedhem_kernel.site.imaging`, which checks every row's files on load).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise SchemaError("dataset names must be identifiers", site=site, rule="schema")
    if isinstance(source, pd.DataFrame):
        raw = source.reset_index(
            drop=True
        )  # a filtered frame keeps its labels: never align on them
    else:
        path = Path(source)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        raw = read_table(site, name, path)
    raw.columns = [str(c) for c in raw.columns]
    if raw.columns.duplicated().any():
        raise SchemaError("duplicate column names", site=site, dataset=name, rule="schema")
    declared = dict(columns or {})
    specs: dict[str, ColumnSpec] = {}
    out: dict[str, pd.Series] = {}
    keys: list[str] = []
    for col in declared:
        if col not in raw.columns:
            raise SchemaError(
                "declared column not found in the data",
                site=site,
                dataset=name,
                column=col,
                rule="schema",
            )
    for col in raw.columns:
        err = {"site": site, "dataset": name, "column": col}
        if col in RESERVED_COLUMNS:
            raise SchemaError("'site' is a reserved column name", **err, rule="schema")
        if col in declared:
            dtype, unit, is_key, bounds, levels = _parse_spec(site, name, col, declared[col])
            if is_key:
                keys.append(col)
        else:
            dtype, unit, bounds, levels = _infer_dtype(raw[col]), None, None, None
        out[col] = _coerce(raw[col], dtype, err)
        specs[col] = ColumnSpec(col, dtype, unit, bounds=bounds, levels=levels)  # type: ignore[arg-type]
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(raw)))
    schema = DatasetSchema(site, name, specs)
    key = _check_key(schema, frame, keys)
    root = data_root if data_root is not None else base_dir
    check_imaging(schema, frame, key, root)
    return Dataset(name, frame, schema, key, root)


def _check_key(schema: DatasetSchema, frame: pd.DataFrame, keys: list[str]) -> str | None:
    """The row-key column: at most one, no missing and no repeated values."""
    if not keys:
        return None
    err = {"site": schema.site, "dataset": schema.dataset, "rule": "schema"}
    if len(keys) > 1:
        raise SchemaError("only one column can be the row key", column=keys[1], **err)
    values = frame[keys[0]]
    if values.isna().any():
        raise SchemaError("the row key has missing values", column=keys[0], **err)
    if values.duplicated().any():
        raise SchemaError("the row key has repeated values", column=keys[0], **err)
    return keys[0]
