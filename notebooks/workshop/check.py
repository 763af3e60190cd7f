"""Answer checker for the FedHem workshop: ``check.ex3(answer)`` prints "✓ correct" or a hint.

Use it from a workshop notebook::

    import check
    check.use(fed)          # the federation the notebook works with (the kernel's ``fed``)
    ...
    check.ex3(answer)

Every expected answer is computed from that federation with the same privacy-checked queries a
participant runs (nothing is hard-coded), so the checker works for any seed of the demo federation.
With ``STRICT = False`` (exercise notebooks) a missing or wrong answer prints a hint and returns
False; with ``STRICT = True`` (solution notebooks) it raises ``AssertionError`` instead, so a wrong
solution stops the notebook. Hints never contain the expected values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

#: True in the solution notebooks: a wrong answer raises AssertionError instead of printing a hint.
STRICT: bool = False
#: What a correct answer prints (the tests look for it).
PASS_MARK = "✓"

EXERCISES = tuple(f"ex{i}" for i in range(1, 12))

_FED: Any = None


# -- plumbing -----------------------------------------------------------------------------------
def use(fed: Any) -> None:
    """Tell the checker which federation to compute the expected answers from (the notebook's ``fed``)."""
    global _FED
    if fed is None:
        raise RuntimeError(
            "`fed` is None: start the notebook on the FedHem kernel with FEDHEM_FEDERATION=demo "
            "(or run `fed = fh.Federation.demo()`) before `check.use(fed)`"
        )
    _FED = fed


def _fed() -> Any:
    if _FED is not None:
        return _FED
    try:  # inside Jupyter, fall back on the notebook's own `fed`
        from IPython import get_ipython

        shell = get_ipython()
        fed = shell.user_ns.get("fed") if shell is not None else None
    except ImportError:  # pragma: no cover - IPython is always there in a kernel
        fed = None
    if fed is None:
        raise RuntimeError("run `check.use(fed)` first (in the notebook's first code cell)")
    return fed


def _fail(n: int, message: str) -> bool:
    text = f"Exercise {n}: {message}"
    if STRICT:
        raise AssertionError(text)
    print(text)
    return False


def _verdict(n: int, ok: bool, hint: str, praise: str = "") -> bool:
    if ok:
        print(f"{PASS_MARK} correct (exercise {n})" + (f": {praise}" if praise else ""))
        return True
    return _fail(n, f"not quite. Hint: {hint}")


def _missing(n: int, hint: str) -> bool:
    return _fail(n, f"no answer yet (answer is None). Hint: {hint}")


def _number(value: Any) -> float | None:
    """A plain or numpy number as float; None for anything else (bools, text, NA)."""
    if isinstance(value, bool | str) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _close(a: float | None, b: float, *, rel: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    if a is None:
        return False
    if math.isinf(b) or math.isinf(a):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def _mapping(value: Any) -> dict[str, Any] | None:
    """A dict or pandas Series as ``{str(key): value}``; None for anything else."""
    if hasattr(value, "to_dict") and hasattr(value, "index") and getattr(value, "ndim", 0) == 1:
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return None


def _names(value: Any) -> set[str] | None:
    """One name or a collection of names as a set of strings; None for anything else."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        return None
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        return None
    return set(items)


def _same_numbers(got: dict[str, Any] | None, expected: dict[str, float], **tol: float) -> bool:
    if got is None or set(got) != set(expected):
        return False
    return all(_close(_number(got[k]), float(v), **tol) for k, v in expected.items())


# -- block 2: the federation and its catalogue ---------------------------------------------------
def ex1(answer: Any) -> bool:
    """The columns of the ``mm`` dataset that carry a time unit (its survival times)."""
    hint = (
        "look at fed.catalog('mm'): which columns have a 'unit'? Give their names as a list, "
        "e.g. ['col_a', 'col_b']."
    )
    if answer is None:
        return _missing(1, hint)
    cat = _fed().catalog("mm")
    expected = set(cat.loc[cat["unit"].notna(), "column"])
    return _verdict(1, _names(answer) == expected, hint, "these are the survival times.")


def ex2(answer: Any) -> bool:
    """The smallest non-zero count that policlinico_bari will release (its min_cell_count)."""
    hint = "fed.policies is a dict site -> Policy; a Policy's describe_rules() says it in words."
    if answer is None:
        return _missing(2, hint)
    expected = _fed().policies["policlinico_bari"].min_cell_count
    return _verdict(2, _number(answer) == expected, hint, "any smaller count is suppressed.")


# -- block 3: descriptive statistics by group ----------------------------------------------------
def _describe_by_risk(columns: list[str]) -> Any:
    return _fed().describe("aml", columns=columns, by="eln_risk").table


def ex3(answer: Any) -> bool:
    """Mean age of AML patients in each ELN risk group: ``{group: mean age}``."""
    hint = (
        "fed.describe('aml', columns=['age'], by='eln_risk') gives a table indexed by "
        "(group, variable); give {group: mean} as a dict or a pandas Series (one decimal is enough)."
    )
    if answer is None:
        return _missing(3, hint)
    table = _describe_by_risk(["age"])
    expected = table.xs("age", level="variable")["mean"].astype(float).to_dict()
    ok = _same_numbers(_mapping(answer), expected, rel=0.0, abs_tol=0.05)
    oldest = max(expected, key=expected.get)
    return _verdict(3, ok, hint, f"on average the '{oldest}' group is the oldest.")


def ex4(answer: Any) -> bool:
    """How many sites contributed to the pooled WBC summary of the adverse-risk group."""
    hint = (
        "describe 'wbc' by 'eln_risk' and read the n_sites column in the row "
        "('adverse', 'wbc'); the privacy report says why the other sites held back."
    )
    if answer is None:
        return _missing(4, hint)
    table = _describe_by_risk(["wbc"])
    expected = int(table.loc[("adverse", "wbc"), "n_sites"])
    return _verdict(
        4,
        _number(answer) == expected,
        hint,
        "a site with 1-4 missing WBC values in a group suppresses that cell.",
    )


# -- block 4: crosstabs and small cells -----------------------------------------------------------
def ex5(answer: Any) -> bool:
    """Pooled number of favourable-risk AML patients who had intensive treatment."""
    hint = (
        "fed.crosstab('aml', 'eln_risk', 'treatment_intensity') returns a result whose .table "
        "is a DataFrame: pick the cell with .loc[row, column] and give it as a whole number."
    )
    if answer is None:
        return _missing(5, hint)
    table = _fed().crosstab("aml", "eln_risk", "treatment_intensity").table
    expected = int(table.loc["favourable", "intensive"])
    return _verdict(5, _number(answer) == expected, hint)


def ex6(answer: Any) -> bool:
    """Favourable-risk patients with FLT3-ITD, from the pooled crosstab (a whole number)."""
    hint = (
        "run fed.crosstab('aml', 'eln_risk', 'flt3_itd') and read the cell of row 'favourable', "
        "column '1' (result.table.loc['favourable', '1'])"
    )
    if answer is None:
        return _missing(6, hint)
    table = _fed().crosstab("aml", "eln_risk", "flt3_itd").table
    expected = int(table.loc["favourable", "1"])
    whole = isinstance(answer, int | float) and not isinstance(answer, bool)
    return _verdict(
        6,
        whole and float(answer) == expected,
        hint,
        "pooled through a secure sum: the coordinator saw only the total over the four sites, "
        "and every cell shown holds at least 5 patients.",
    )


# -- block 5: survival -----------------------------------------------------------------------------
def _km_by_risk() -> Any:
    return _fed().kaplan_meier("aml", "os_months", "os_status", group="eln_risk")


def ex7(answer: Any) -> bool:
    """Median overall survival (months) per ELN risk group: ``{group: median}``."""
    hint = (
        "fed.kaplan_meier('aml', 'os_months', 'os_status', group='eln_risk') has a "
        ".median_survival Series (inf means the curve never drops below 50 %)."
    )
    if answer is None:
        return _missing(7, hint)
    expected = _km_by_risk().median_survival.astype(float).to_dict()
    ok = _same_numbers(_mapping(answer), expected)
    return _verdict(7, ok, hint, "worse genetic risk, shorter survival.")


def ex8(answer: Any) -> bool:
    """Two-year (24-month) overall survival of the favourable-risk group, as a probability."""
    hint = (
        "use the Kaplan-Meier result's survival_function_at_times(24, group='favourable'); "
        "give a probability between 0 and 1 (two decimals are enough)."
    )
    if answer is None:
        return _missing(8, hint)
    expected = float(_km_by_risk().survival_function_at_times(24, group="favourable").iloc[0])
    return _verdict(8, _close(_number(answer), expected, rel=0.0, abs_tol=0.005), hint)


def ex9(answer: Any) -> bool:
    """Log-rank chi-squared statistic comparing AML survival by treatment intensity."""
    hint = (
        "fed.logrank('aml', 'os_months', 'os_status', group='treatment_intensity') returns a "
        "result with .test_statistic (one decimal is enough)."
    )
    if answer is None:
        return _missing(9, hint)
    lr = _fed().logrank("aml", "os_months", "os_status", group="treatment_intensity")
    ok = _close(_number(answer), float(lr.test_statistic), rel=0.0, abs_tol=0.05)
    return _verdict(9, ok, hint, f"on {lr.degrees_of_freedom} degree(s) of freedom.")


# -- block 6: privacy ------------------------------------------------------------------------------
def ex10(answer: Any) -> bool:
    """The released count of ``describe age where wbc > 200`` (an int)."""
    hint = (
        "describe 'age' with the exercise's where= filter and read the 'count' column of the "
        "result's table: give it as an int."
    )
    if answer is None:
        return _missing(10, hint)
    table = _fed().describe("aml", columns=["age"], where="wbc > 200").table
    right = int(table.loc["age", "count"])
    ok = _number(answer) == right
    return _verdict(
        10,
        ok,
        hint,
        "a site with fewer than 5 such patients adds none of them (its part of the cohort is "
        "empty): it does not refuse, since a refusal would itself say that such patients "
        "exist there. The count is pooled over the sites, perturbed by at most 2.",
    )


def ex11(answer: Any) -> bool:
    """The result of the second, nearly identical query (``where="age > 70"``): the same numbers
    as the first (``"age >= 70"``), because the few patients aged exactly 70 at each site are
    answered together with the rest of their group."""
    hint = (
        "first run describe age where 'age >= 70', then the same with 'age > 70'; give the second "
        "result (the object describe returns) as the answer, then compare the two tables."
    )
    if answer is None:
        return _missing(11, hint)
    table = getattr(answer, "table", None)
    first = _fed().describe("aml", columns=["age"], where="age >= 70").table
    second = _fed().describe("aml", columns=["age"], where="age > 70").table
    ok = table is not None and _same_table(table, second) and _same_table(second, first)
    return _verdict(
        11,
        ok,
        hint,
        "the same numbers: the patients aged exactly 70 are a handful at each site, and answering "
        "without them would let anyone subtract the two results; so each site answers on the same "
        "patients as before (no refusal either, which would itself say that such patients exist).",
    )


def _same_table(a: Any, b: Any) -> bool:
    try:
        return bool(a.shape == b.shape and a.fillna(-1).equals(b.fillna(-1)))
    except Exception:  # noqa: BLE001 - not a table
        return False
