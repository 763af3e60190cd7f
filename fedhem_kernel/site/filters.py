"""Checking and evaluating a ``where=`` filter at the site (its syntax: :mod:`fedhem_kernel.protocol.where`).

A parsed filter is checked against the dataset's :class:`DatasetSchema` (every column exists, every
literal fits its column's type) and evaluated with vectorised pandas/numpy operations into a boolean
mask. A researcher's filter string is never handed to Python or pandas for evaluation.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from fedhem_kernel.errors import FilterError
from fedhem_kernel.protocol.where import (
    ORDERING_OPS,
    SCHEMA_RULE,
    And,
    Compare,
    Expr,
    InList,
    IsNull,
    Literal,
    Not,
    Or,
    parse_where,
    walk,
)
from fedhem_kernel.site.schema import ColumnSpec, DatasetSchema

__all__ = ["check_where", "compile_where", "evaluate_where"]

# --------------------------------------------------------------------------------------------------
# Schema check


def _literal_kind(value: Literal) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _check_value(spec: ColumnSpec, op: str, value: Literal, schema: DatasetSchema) -> None:
    def fail(message: str) -> FilterError:
        return FilterError(
            message,
            site=schema.site,
            dataset=schema.dataset,
            column=spec.name,
            rule=SCHEMA_RULE,
        )

    kind = _literal_kind(value)
    name = spec.name
    if spec.dtype in ("float", "int"):
        if kind != "number":
            raise fail(f"expected a number after '{op}' for numeric column '{name}'")
    elif spec.dtype == "bool":
        if op in ORDERING_OPS:
            raise fail(f"'{op}' is not allowed on bool column '{name}'; use '==' or '!='")
        if kind == "string" or (kind == "number" and value not in (0, 1)):
            raise fail(f"expected true, false, 0 or 1 after '{op}' for bool column '{name}'")
    elif spec.dtype == "category":
        if op in ORDERING_OPS:
            raise fail(f"'{op}' is not allowed on category column '{name}'; use '==', '!=' or 'in'")
        if kind != "string":
            raise fail(
                f"expected a quoted string after '{op}' for category column '{name}'"
                " (numbers are not matched against category labels; quote them)"
            )
    elif spec.is_path:
        raise fail(
            f"column '{name}' holds image file paths: filter it only with 'is null' or 'is not null'"
        )
    else:  # pragma: no cover - DatasetSchema only allows the dtypes above
        raise fail(f"column '{name}' has an unsupported type for filtering")


def check_where(expr: Expr, schema: DatasetSchema) -> None:
    """Check that every column exists and every literal fits its column's type.

    Raises :class:`FilterError` with ``site``, ``dataset``, ``column`` set and
    ``rule="filter schema"``.
    """
    for node in walk(expr):
        if not isinstance(node, Compare | InList | IsNull):
            continue
        spec = schema.columns.get(node.column)
        if spec is None:
            raise FilterError(
                "no such column in the where= filter",
                site=schema.site,
                dataset=schema.dataset,
                column=node.column,
                rule=SCHEMA_RULE,
            )
        if isinstance(node, Compare):
            _check_value(spec, node.op, node.value, schema)
        elif isinstance(node, InList):
            keyword = "not in" if node.negated else "in"
            for value in node.values:
                _check_value(spec, keyword, value, schema)


def compile_where(text: str | None, schema: DatasetSchema) -> Expr | None:
    """Parse and check a filter; ``None``, ``""`` or blank text means "no filter" (``None``).

    Syntax errors are re-raised with the schema's site and dataset attached.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        expr = parse_where(text)
    except FilterError as err:
        raise FilterError(
            err.reason,
            site=schema.site,
            dataset=schema.dataset,
            column=err.column,
            rule=err.rule,
        ) from None
    check_where(expr, schema)
    return expr


# --------------------------------------------------------------------------------------------------
# Evaluation

_NUMERIC_OBJECT_KINDS: Final = frozenset(
    {"integer", "floating", "mixed-integer-float", "boolean", "decimal", "empty"}
)


def _eval_error(message: str, column: str) -> FilterError:
    return FilterError(message, column=column, rule=SCHEMA_RULE)


def _series(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        raise _eval_error("no such column in the data", column)
    series = df[column]
    if isinstance(series, pd.DataFrame):
        raise _eval_error("column name is not unique in the data", column)
    return series


def _missing(series: pd.Series) -> np.ndarray:
    return np.asarray(series.isna(), dtype=bool)


def _is_text_like(series: pd.Series) -> bool:
    dtype = series.dtype
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)


def _numeric_values(series: pd.Series, column: str) -> np.ndarray:
    """float64 values of a numeric/bool column, NaN where missing (no value leaves this)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        if not isinstance(dtype, pd.CategoricalDtype):
            return series.to_numpy(dtype="float64", na_value=np.nan)
    elif pd.api.types.is_object_dtype(dtype):
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind in _NUMERIC_OBJECT_KINDS:
            missing = _missing(series)
            values = series.to_numpy(dtype=object).copy()
            values[missing] = np.nan
            try:
                return values.astype("float64")
            except (TypeError, ValueError):
                pass
    raise _eval_error(f"column '{column}' is not numeric; compare it with a quoted string", column)


def _text_values(series: pd.Series, column: str) -> pd.Series:
    if not (_is_text_like(series) or pd.api.types.is_object_dtype(series.dtype)):
        raise _eval_error(
            f"column '{column}' is not a text/category column; compare it with a number", column
        )
    return series


def _numeric_literal(value: Literal) -> float:
    return float(value)  # bool -> 1.0 / 0.0


_NUMPY_OPS: Final = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _eval_compare(node: Compare, df: pd.DataFrame) -> np.ndarray:
    series = _series(df, node.column)
    missing = _missing(series)
    if isinstance(node.value, str):
        if node.op in ORDERING_OPS:
            raise _eval_error(
                f"'{node.op}' is not allowed with a string for column '{node.column}'", node.column
            )
        text = _text_values(series, node.column)
        equal = np.asarray(text.isin([node.value]), dtype=bool)
        result = equal if node.op == "==" else ~equal
    else:
        if node.op in ORDERING_OPS and pd.api.types.is_bool_dtype(series.dtype):
            raise _eval_error(
                f"'{node.op}' is not allowed on bool column '{node.column}'; use '==' or '!='",
                node.column,
            )
        values = _numeric_values(series, node.column)
        with np.errstate(invalid="ignore"):
            result = np.asarray(_NUMPY_OPS[node.op](values, _numeric_literal(node.value)), bool)
    return result & ~missing


def _eval_in(node: InList, df: pd.DataFrame) -> np.ndarray:
    series = _series(df, node.column)
    missing = _missing(series)
    kinds = {isinstance(v, str) for v in node.values}
    if len(kinds) > 1:
        raise _eval_error(
            f"the list for column '{node.column}' mixes strings and numbers", node.column
        )
    if kinds == {True}:
        member = np.asarray(_text_values(series, node.column).isin(list(node.values)), bool)
    else:
        values = _numeric_values(series, node.column)
        wanted = np.array([_numeric_literal(v) for v in node.values], dtype="float64")
        member = np.isin(values, wanted)
    result = ~member if node.negated else member
    return result & ~missing


def _mask(expr: Expr, df: pd.DataFrame) -> np.ndarray:
    if isinstance(expr, Compare):
        return _eval_compare(expr, df)
    if isinstance(expr, InList):
        return _eval_in(expr, df)
    if isinstance(expr, IsNull):
        missing = _missing(_series(df, expr.column))
        return ~missing if expr.negated else missing
    if isinstance(expr, Not):
        return ~_mask(expr.operand, df)
    if isinstance(expr, And):
        return np.logical_and.reduce([_mask(op, df) for op in expr.operands])
    if isinstance(expr, Or):
        return np.logical_or.reduce([_mask(op, df) for op in expr.operands])
    raise TypeError(f"not a filter expression: {type(expr).__name__}")


def evaluate_where(expr: Expr, df: pd.DataFrame) -> np.ndarray:
    """Boolean mask (numpy, ``len(df)``) of the rows matching ``expr``; fully vectorised.

    Missing values make a comparison/``in`` False (also ``!=`` and ``not in``); ``not`` negates
    the mask as is. Raises :class:`FilterError` (``rule="filter schema"``, ``column`` set) if a
    column is absent or its values do not fit the literal's type.
    """
    mask = np.asarray(_mask(expr, df), dtype=bool)
    if mask.shape != (len(df),):  # e.g. an And of zero operands built by hand
        mask = np.broadcast_to(mask, (len(df),)).copy()
    return mask
