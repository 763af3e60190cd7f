"""What a request parameter may be: constraints as data, checked on both sides.

An analysis declares the arguments a researcher may pass (``PARAMS`` in its package: checked by
``Federation.run`` before anything is sent) and each site step the parameters its request may carry
(``SiteStep.params``: checked by the site's executor before the step runs, since a site trusts
nothing it is sent). Both are mappings from a name to the kinds of value it accepts, in the manner of
scikit-learn's ``_parameter_constraints``; a parameter that accepts ``None`` may be left out, any
other name is refused. Messages name the parameter, what it accepts and the type given, never the
value. Bounds that depend on the data or the policy (a site's ``max_levels``, a coefficient bound in
the site's own units) are checked by the step itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedhem_kernel.errors import ParameterError

#: Longest name a column (or a level) may have in a request.
MAX_NAME = 200
#: Most items of any list in a request (levels, strata, batches); policies bound them further.
MAX_LEVELS = 10_000
#: Most columns one argument may name.
MAX_COLUMNS = 1000


class Constraint:
    """One kind of value a parameter accepts: a test and how to say it."""

    def __init__(self, test: Any, description: str) -> None:
        self.test = test
        self.description = description

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except Exception:  # noqa: BLE001 - a value the test cannot even look at does not fit
            return False

    def __repr__(self) -> str:
        return self.description


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_NAME


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float | np.floating)) and bool(np.isfinite(v))


NONE = Constraint(lambda v: v is None, "None")
COLUMN = Constraint(_is_name, "a column name")
COLUMNS = Constraint(
    lambda v: (
        _is_name(v)
        or (
            isinstance(v, list | tuple)
            and 0 < len(v) <= MAX_COLUMNS
            and all(_is_name(c) for c in v)
        )
    ),
    "a column name or a list of column names",
)
NO_COLUMNS = Constraint(lambda v: isinstance(v, list | tuple) and len(v) == 0, "an empty list")
BOOL = Constraint(lambda v: isinstance(v, bool | np.bool_), "True or False")
TEXT = Constraint(lambda v: isinstance(v, str), "a text")


def _bounded(kind: Any, what: str, low: float | None, high: float | None) -> Constraint:
    def show(x: float) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    lo = "" if low is None else f" >= {show(low)}"
    hi = "" if high is None else f" <= {show(high)}"
    return Constraint(
        lambda v: kind(v) and (low is None or v >= low) and (high is None or v <= high),
        f"{what}{lo}{' and' if lo and hi else ''}{hi}",
    )


def integer(low: int | None = None, high: int | None = None) -> Constraint:
    """A whole number in [low, high] (bool is not a number here)."""
    return _bounded(_is_int, "a whole number", low, high)


def number(low: float | None = None, high: float | None = None) -> Constraint:
    """A finite number in [low, high]."""
    return _bounded(_is_number, "a finite number", low, high)


def options(*values: Any) -> Constraint:
    """One of ``values`` (compared with ==, types included)."""
    shown = ", ".join(repr(v) for v in values)
    return Constraint(
        lambda v: any(v == o and type(v) is type(o) for o in values), f"one of {shown}"
    )


def mapping(keys: Constraint, values: Constraint, most: int = 1000) -> Constraint:
    """A dict whose keys and values fit ``keys`` and ``values`` (at most ``most`` entries)."""
    return Constraint(
        lambda v: (
            isinstance(v, dict)
            and len(v) <= most
            and all(keys(k) and values(x) for k, x in v.items())
        ),
        f"a dict of {keys.description} to {values.description}",
    )


def _numbers(v: Any, ndim: int) -> np.ndarray | None:
    if isinstance(v, str | bytes | dict) or v is None:
        return None
    a = np.asarray(v, dtype=float)
    return a if a.ndim == ndim and bool(np.isfinite(a).all()) else None


def vector(max_len: int = 10**7, min_len: int = 0) -> Constraint:
    """A 1-D list or array of finite numbers, ``min_len`` to ``max_len`` long."""

    def test(v: Any) -> bool:
        a = _numbers(v, 1)
        return a is not None and min_len <= a.size <= max_len

    return Constraint(test, "a list of finite numbers")


def matrix(max_cells: int = 10**7, empty: bool = False) -> Constraint:
    """A 2-D array-like of finite numbers (at most ``max_cells`` cells; no rows only if
    ``empty``)."""

    def test(v: Any) -> bool:
        a = _numbers(v, 2)
        return a is not None and (empty or a.size > 0) and a.size <= max_cells

    return Constraint(test, "a 2-D array of finite numbers")


def text(most: int = MAX_NAME) -> Constraint:
    """A non-empty text of at most ``most`` characters."""
    return Constraint(
        lambda v: isinstance(v, str) and 0 < len(v) <= most, f"a text of 1 to {most} characters"
    )


def list_of(item: Constraint, most: int = MAX_LEVELS, least: int = 0) -> Constraint:
    """A list (or tuple) of ``least`` to ``most`` items, each fitting ``item``."""
    return Constraint(
        lambda v: (
            isinstance(v, list | tuple) and least <= len(v) <= most and all(item(x) for x in v)
        ),
        f"a list of {item.description}",
    )


def record(fields: Mapping[str, Any]) -> Constraint:
    """A dict with exactly these fields (a field whose kinds accept None may be left out)."""

    def test(v: Any) -> bool:
        if not isinstance(v, dict) or set(v) - set(fields):
            return False
        return all(_fits(kinds, v.get(name)) for name, kinds in fields.items())

    return Constraint(test, "a record with fields " + ", ".join(fields))


#: Most levels (categories) any request may list; a site's policy bounds them further.
LEVELS = Constraint(
    lambda v: (
        isinstance(v, list | tuple)
        and len(v) <= MAX_LEVELS
        and all(isinstance(x, str) and len(x) <= MAX_NAME for x in v)
        and len(set(v)) == len(v)
    ),
    "a list of distinct level names",
)


def instance(kind: type | tuple[type, ...], description: str) -> Constraint:
    return Constraint(lambda v: isinstance(v, kind), description)


#: Parameters: name -> the kinds of value it accepts (one kind, or a tuple of kinds: any one of them).
Params = Mapping[str, Any]


def _kinds(kinds: Any) -> tuple[Constraint, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _fits(kinds: Any, value: Any) -> bool:
    return any(kind(value) for kind in _kinds(kinds))


def _described(kinds: Any) -> str:
    return " or ".join(k.description for k in _kinds(kinds))


def check_arguments(
    analysis: str, spec: Params, given: Mapping[str, Any], dataset: str | None
) -> None:
    """Raise a :class:`ParameterError` for an unknown parameter or a value of no accepted kind.

    The message names the analysis, the parameter and what it accepts, and the kind of value given
    (its type, not the value). Called on the researcher's side before anything is sent; each site
    checks the request it receives again.
    """
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ParameterError(
            f"{analysis} has no parameter '{unknown[0]}' (its parameters: {', '.join(spec)})",
            dataset=dataset,
        )
    for name, value in given.items():
        if not _fits(spec[name], value):
            raise ParameterError(
                f"'{name}' must be {_described(spec[name])} (a parameter of {analysis}); "
                f"got a value of type {type(value).__name__}",
                dataset=dataset,
            )


def check_request(step: str, spec: Params, params: Mapping[str, Any]) -> None:
    """A site's check of a request's parameters against its step's ``params``: no unknown name,
    every value of an accepted kind, and every name that does not accept None present."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ParameterError(f"step '{step}' has no parameter '{unknown[0][:MAX_NAME]}'")
    for name, kinds in spec.items():
        value = params.get(name)
        if not _fits(kinds, value):
            got = "nothing" if name not in params else f"a value of type {type(value).__name__}"
            raise ParameterError(
                f"'{name}' must be {_described(kinds)} (a parameter of step '{step}'); got {got}"
            )
