"""Tests of the ``where=`` filter language (syntax: fedhem_kernel.protocol.where; check and evaluation at the site: fedhem_kernel.site.filters)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from fedhem_kernel.errors import FilterError
from fedhem_kernel.protocol.where import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Compare,
    InList,
    IsNull,
    Not,
    Or,
    columns_of,
    parse_where,
    to_text,
)
from fedhem_kernel.site.filters import check_where, compile_where, evaluate_where
from fedhem_kernel.site.schema import ColumnSpec, DatasetSchema

# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [70.0, 50.0, np.nan, 61.0, 60.0, 45.5],
            "n_ai": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
            "n_af": pd.array([1.5, None, 3.0, 4.0, 5.0, -2.0], dtype="Float64"),
            "count": [1, 2, 3, 4, 5, 6],
            "alive": [True, False, True, False, True, True],
            "relapse": pd.array([True, None, False, True, None, False], dtype="boolean"),
            "flag_obj": pd.Series([True, None, False, True, None, False], dtype=object),
            "sex": ["M", "F", None, "M", "F", "M"],
            "risk": pd.Categorical(["low", "high", None, "low", "mid", "high"]),
            "centre": pd.array(["x y", None, "it's", "x y", "z", "z"], dtype="string"),
            "my col": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "and": [0, 1, 0, 1, 0, 1],
        }
    )


@pytest.fixture
def schema() -> DatasetSchema:
    specs = [
        ColumnSpec("age", "float", "years"),
        ColumnSpec("n_ai", "int"),
        ColumnSpec("n_af", "float"),
        ColumnSpec("count", "int"),
        ColumnSpec("alive", "bool"),
        ColumnSpec("relapse", "bool"),
        ColumnSpec("flag_obj", "bool"),
        ColumnSpec("sex", "category"),
        ColumnSpec("risk", "category"),
        ColumnSpec("centre", "category"),
        ColumnSpec("my col", "float"),
        ColumnSpec("and", "int"),
    ]
    return DatasetSchema("hosp_a", "aml", {s.name: s for s in specs})


def mask(text: str, frame: pd.DataFrame) -> list[int]:
    result = evaluate_where(parse_where(text), frame)
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.bool_
    assert result.shape == (len(frame),)
    return result.astype(int).tolist()


def syntax_error(text: str) -> FilterError:
    with pytest.raises(FilterError) as info:
        parse_where(text)
    assert info.value.rule == "filter syntax"
    return info.value


# --------------------------------------------------------------------------------------------------
# parsing: structure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("age == 60", Compare("age", "==", 60)),
        ("age = 60", Compare("age", "==", 60)),
        ("age != 60", Compare("age", "!=", 60)),
        ("age < 60", Compare("age", "<", 60)),
        ("age <= 60", Compare("age", "<=", 60)),
        ("age > 60", Compare("age", ">", 60)),
        ("age >= 60", Compare("age", ">=", 60)),
        ("age>=60", Compare("age", ">=", 60)),
        ("age > -5", Compare("age", ">", -5)),
        ("age>-5", Compare("age", ">", -5)),
        ("age > -2.5", Compare("age", ">", -2.5)),
        ("age > 1e3", Compare("age", ">", 1000.0)),
        ("age > -1.5E-2", Compare("age", ">", -0.015)),
        ("age > .5", Compare("age", ">", 0.5)),
        ("sex == 'M'", Compare("sex", "==", "M")),
        ('sex == "M"', Compare("sex", "==", "M")),
        ("centre == 'it\\'s'", Compare("centre", "==", "it's")),
        ('centre == "say \\"hi\\""', Compare("centre", "==", 'say "hi"')),
        ("centre == 'back\\\\slash'", Compare("centre", "==", "back\\slash")),
        ("centre == ''", Compare("centre", "==", "")),
        ("alive == true", Compare("alive", "==", True)),
        ("alive == FALSE", Compare("alive", "==", False)),
        ("`my col` > 2", Compare("my col", ">", 2)),
        ("`lab.wbc` > 2", Compare("lab.wbc", ">", 2)),
        ("`and` == 1", Compare("and", "==", 1)),
        ("`odd\\`name` == 1", Compare("odd`name", "==", 1)),
        ("sex in ('M', 'F')", InList("sex", ("M", "F"))),
        ("sex IN ['M', 'F',]", InList("sex", ("M", "F"))),
        ("count not in (1, 2, -3)", InList("count", (1, 2, -3), negated=True)),
        ("count NOT IN [1]", InList("count", (1,), negated=True)),
        ("age is null", IsNull("age")),
        ("age IS NOT NULL", IsNull("age", negated=True)),
        ("isnull(age)", IsNull("age")),
        ("notnull(`my col`)", IsNull("my col", negated=True)),
        ("not age > 60", Not(Compare("age", ">", 60))),
    ],
)
def test_parse_structure(text: str, expected: object) -> None:
    assert parse_where(text) == expected


def test_types_of_literals() -> None:
    assert type(parse_where("a == 1").value) is int  # type: ignore[attr-defined]
    assert type(parse_where("a == 1.0").value) is float  # type: ignore[attr-defined]
    assert type(parse_where("a == 1e2").value) is float  # type: ignore[attr-defined]
    assert type(parse_where("a == true").value) is bool  # type: ignore[attr-defined]


def test_literal_on_left_is_flipped() -> None:
    assert parse_where("60 <= age") == Compare("age", ">=", 60)
    assert parse_where("60 < age") == Compare("age", ">", 60)
    assert parse_where("60 > age") == Compare("age", "<", 60)
    assert parse_where("60 >= age") == Compare("age", "<=", 60)
    assert parse_where("'M' = sex") == Compare("sex", "==", "M")
    assert parse_where("1 != count") == Compare("count", "!=", 1)
    assert to_text(parse_where("60 <= age")) == "age >= 60"


def test_precedence_not_and_or() -> None:
    a, b, c = (Compare(x, "==", 1) for x in "abc")
    assert parse_where("a == 1 or b == 1 and c == 1") == Or((a, And((b, c))))
    assert parse_where("a == 1 and b == 1 or c == 1") == Or((And((a, b)), c))
    assert parse_where("not a == 1 and b == 1") == And((Not(a), b))
    assert parse_where("not a == 1 or b == 1") == Or((Not(a), b))
    assert parse_where("not (a == 1 or b == 1)") == Not(Or((a, b)))
    assert parse_where("(a == 1 or b == 1) and c == 1") == And((Or((a, b)), c))
    assert parse_where("not not a == 1") == Not(Not(a))


def test_chains_are_flattened() -> None:
    a, b, c, d = (Compare(x, "==", 1) for x in "abcd")
    assert parse_where("a == 1 and b == 1 and c == 1") == And((a, b, c))
    assert parse_where("(a == 1 and b == 1) and (c == 1 and d == 1)") == And((a, b, c, d))
    assert parse_where("a == 1 or (b == 1 or c == 1)") == Or((a, b, c))
    assert parse_where("((((a == 1))))") == a


def test_keywords_case_insensitive() -> None:
    expected = parse_where("not a == true and b in (1) or c is not null and d not in (2)")
    assert parse_where("NOT a == TRUE AND b IN (1) OR c IS NOT NULL AND d NOT IN (2)") == expected
    assert parse_where("Not a == True aNd b In (1) oR c Is NoT NuLL and d nOt iN (2)") == expected


def test_column_names_are_case_sensitive() -> None:
    assert parse_where("Age > 1") != parse_where("age > 1")
    assert columns_of(parse_where("Age > 1")) == {"Age"}


def test_whitespace_is_free() -> None:
    assert parse_where("  age\t>=\n60  ") == parse_where("age >= 60")
    assert parse_where("(age>=60)and(sex=='M')") == parse_where("age >= 60 and sex == 'M'")


def test_strings_may_hold_anything() -> None:
    text = "centre == 'a.b(c) + d; __import__(\"os\") and or not `x`'"
    expr = parse_where(text)
    assert expr == Compare("centre", "==", 'a.b(c) + d; __import__("os") and or not `x`')


# --------------------------------------------------------------------------------------------------
# canonical text


@pytest.mark.parametrize(
    "text",
    [
        "age >= 60",
        "60 <= age",
        "age = 60.25",
        "age > -1e-7",
        "age < 1e300",
        "sex == 'it\\'s' or sex == \"a\\\\b\"",
        "alive == TRUE and relapse != false",
        "`my col` in [1, 2.5, -3]",
        "`and` not in ('x', \"y\")",
        "`a``b` is null".replace("``", "\\`"),
        "isnull(age) or notnull(sex)",
        "not (a == 1 or b == 2) and c == 3",
        "not not not a == 1",
        "a == 1 or b == 2 and c == 3",
        "(a == 1 or b == 2) and (c == 3 or d == 4)",
        "((a == 1 and b == 2) or c == 3) and not (d == 4 and e == 5)",
        "not (a == 1 and b == 2) or not c is null",
        "isnull == 1 and notnull == 2",
    ],
)
def test_to_text_round_trip(text: str) -> None:
    expr = parse_where(text)
    canonical = to_text(expr)
    assert parse_where(canonical) == expr
    assert to_text(parse_where(canonical)) == canonical  # canonical form is a fixed point
    assert str(expr) == canonical


def test_to_text_canonical_forms() -> None:
    assert to_text(parse_where("AGE = 60")) == "AGE == 60"
    assert to_text(parse_where('sex == "M"')) == "sex == 'M'"
    assert to_text(parse_where("a>1 AND b<2 OR NOT c IS NULL")) == (
        "a > 1 and b < 2 or not c is null"
    )
    assert to_text(parse_where("(a == 1 or b == 2) and c == 3")) == "(a == 1 or b == 2) and c == 3"
    assert to_text(parse_where("((a == 1)) and ((b == 2))")) == "a == 1 and b == 2"
    assert to_text(parse_where("x in [1,2]")) == "x in (1, 2)"
    assert to_text(parse_where("notnull(x)")) == "x is not null"
    assert to_text(parse_where("`my col` == 1")) == "`my col` == 1"
    assert to_text(parse_where("`plain` == 1")) == "plain == 1"
    assert to_text(parse_where("`or` == 1")) == "`or` == 1"
    assert to_text(parse_where("a == 1e3")) == "a == 1000.0"
    assert to_text(parse_where("a == true")) == "a == true"


def test_to_text_of_hand_built_tree() -> None:
    a, b, c = (Compare(x, "==", 1) for x in "abc")
    expr = And((Or((a, b)), Not(And((b, c)))))
    assert parse_where(to_text(expr)) == expr
    assert to_text(Not(Not(IsNull("x")))) == "not not x is null"


# --------------------------------------------------------------------------------------------------
# syntax errors


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("age >=", "end of filter"),
        ("age >= 60 and", "end of filter"),
        ("age >= 60 or", "end of filter"),
        ("not", "end of filter"),
        ("age", "comparison operator"),
        ("__import__('os')", "function calls"),
        ("__import__('os').system('ls') == 1", "attribute access"),
        ("age.mean() > 3", "attribute access"),
        ("`age`.mean() > 3", "attribute access"),
        ("age.5 > 3", "attribute access"),
        ("age + 1 > 3", "arithmetic ('+')"),
        ("age - 1 > 3", "arithmetic ('-')"),
        ("age * 2 > 3", "arithmetic ('*')"),
        ("age / 2 > 3", "arithmetic ('/')"),
        ("age % 2 == 0", "arithmetic ('%')"),
        ("age > --1", "arithmetic ('-')"),
        ("age > - 1", "arithmetic ('-')"),
        ("a == b == c", "two columns"),
        ("a == 1 == 1", "chained comparisons"),
        ("a < 1 < 2", "chained comparisons"),
        ("a == b", "two columns"),
        ("1 == 1", "column name"),
        ("1 in a", "left of 'in'"),
        ("a == 1 b == 2", "unexpected name 'b'"),
        ("a == 1)", "unmatched ')'"),
        ("(a == 1", "expected ')'"),
        ("()", "expected a condition"),
        ("a == null", "is null"),
        ("null == a", "is null"),
        ("a is 1", "expected 'null'"),
        ("a is not true", "expected 'null'"),
        ("a in ()", "empty list"),
        ("a in (1, 2", "expected ','"),
        ("a in (1, 2]", "expected ','"),
        ("a in 1", "'('"),
        ("a in (b)", "column name"),
        ("a not 1", "comparison operator"),
        ("a[0] == 1", "indexing"),
        ("a == 'x", "unterminated string"),
        ('a == "x', "unterminated string"),
        ("`a == 1", "unterminated quoted column name"),
        ("`` == 1", "empty quoted column name"),
        ("a == 'x\\n'", "unsupported escape"),
        ("a == 1abc", "malformed number"),
        ("a == 1.2.3", "malformed number"),
        ("a == 0x1f", "malformed number"),
        ("a == 1_000", "malformed number"),
        ("a == 1e999", "out of range"),
        ("a == 99999999999999999999", "out of range"),
        ("a <> 1", "'<>'"),
        ("a ! 1", "'!'"),
        ("a && b", "'&'"),
        ("a == 1 || b == 2", "'|'"),
        ("~a", "'~'"),
        ("a ** 2 == 4", "arithmetic ('*')"),
        ("a == @x", "'@'"),
        ("a == 1;", "';'"),
        ("lambda: 1", "':'"),
        ("{a}", "'{'"),
        ("a == é", "unexpected character 'é'"),
        ("âge > 1", "unexpected character 'â'"),
        ("a == 1 # comment", "unexpected character '#'"),
        ("a == $x", "unexpected character '$'"),
        ("a == 1\x00", "unexpected character '\\x00'"),
        ("a === 1", "expected a value"),
        ("a => 1", "expected a value"),
        ("a == f(1)", "function calls"),
        ("a == and", "expected a value"),
        ("and a == 1", "expected a condition"),
        ("a == 1 and and b == 2", "expected a condition"),
        ("a is null null", "unexpected 'null'"),
    ],
)
def test_syntax_errors(text: str, fragment: str) -> None:
    err = syntax_error(text)
    assert fragment in err.reason
    assert err.site is None and err.dataset is None


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("age >=", 7),
        ("age + 1 > 3", 5),
        ("age.mean() > 3", 4),
        ("  age == 1 ;", 12),
        ("a == 1)", 7),
        ("x == 'unterminated", 6),
        ("f(x) == 1", 1),
        ("age >= 60 and", 14),
    ],
)
def test_syntax_errors_name_position(text: str, position: int) -> None:
    assert f"at character {position}" in syntax_error(text).reason


def test_too_long_input() -> None:
    long_ok = " or ".join(["a == 1"] * 10)
    parse_where(long_ok.ljust(MAX_LENGTH))
    err = syntax_error("a == 1" + " " * MAX_LENGTH)
    assert "too long" in err.reason and str(MAX_LENGTH) in err.reason


def test_nesting_limit() -> None:
    ok = "(" * MAX_DEPTH + "a == 1" + ")" * MAX_DEPTH
    assert parse_where(ok) == Compare("a", "==", 1)
    too_deep = "(" * (MAX_DEPTH + 1) + "a == 1" + ")" * (MAX_DEPTH + 1)
    assert "nesting deeper" in syntax_error(too_deep).reason
    assert parse_where("not " * MAX_DEPTH + "a == 1") is not None
    assert "nesting deeper" in syntax_error("not " * (MAX_DEPTH + 1) + "a == 1").reason
    assert "nesting deeper" in syntax_error("not (" * 26 + "a == 1" + ")" * 26).reason
    # a deep but flat chain is not nesting
    parse_where(" and ".join(["a == 1"] * 150))


def test_non_string_input() -> None:
    with pytest.raises(FilterError):
        parse_where(123)  # type: ignore[arg-type]
    with pytest.raises(FilterError):
        parse_where(None)  # type: ignore[arg-type]


GARBAGE = [
    "))",
    "((",
    "(((a == 1)",
    "a == 1))",
    "==",
    "== 1",
    "a ==",
    "in (1)",
    "a in",
    "a in (",
    "a in (,)",
    "a in (1,,2)",
    "a is",
    "a is not",
    "'a'",
    "42",
    "true",
    "a",
    "a b c",
    "not not",
    "a == 1 and",
    "or a == 1",
    "a = = 1",
    "a !== 1",
    "a == '1' '2'",
    "a == 1 2",
    "[1, 2]",
    "a == [1]",
    "a in ((1, 2))",
    "`a` `b` == 1",
    "`a",
    "'",
    '"',
    "\\",
    "a == \\1",
    "a == 1e",
    "a == 1e+",
    "a == -",
    "a == .",
    "a == -.e1",
    "os.system('x')",
    "import os",
    "a if b else c",
    "__class__.__bases__",
    "a == b'x'",
    "a == f'x'",
    "a.__dict__",
    "a == 1 and (b == 2 or)",
    "(a == 1) (b == 2)",
    "not (a == 1",
    "isnull()",
    "isnull(1)",
    "isnull(a, b)",
    "notnull(a",
    "a\x7f == 1",
    "\ufeffa == 1",
    "a == 1\u2028",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_raises_filter_error(text: str) -> None:
    syntax_error(text)


def test_random_garbage_only_raises_filter_error() -> None:
    """Fuzz-ish: random strings from the language's own alphabet never raise anything else."""
    rng = random.Random(20240611)
    pieces = [" ", "\n", *"a b `c d` age ( ) [ ] , == = != < <= > >= and or not in is null".split()]
    pieces += [*"true false 1 -2.5 1e3 'x' \"y\" . - + ' ` \\ isnull é #".split()]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        try:
            expr = parse_where(text)
        except FilterError:
            continue
        # whatever parses must round-trip through its canonical text
        assert parse_where(to_text(expr)) == expr
    for _ in range(200):
        text = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 20)))
        try:
            parse_where(text)
        except FilterError:
            pass


# --------------------------------------------------------------------------------------------------
# columns_of


def test_columns_of() -> None:
    expr = parse_where(
        "age > 1 and (sex in ('M') or not `my col` is null) and notnull(risk) or 1 < count"
    )
    assert columns_of(expr) == {"age", "sex", "my col", "risk", "count"}
    assert columns_of(parse_where("a == 1 and a == 2")) == {"a"}


# --------------------------------------------------------------------------------------------------
# schema check and compile_where


@pytest.mark.parametrize(
    "text",
    [
        "age >= 60 and age < 70.5",
        "n_ai in (1, 2) and n_af != -1",
        "alive == true and relapse != FALSE",
        "alive == 1 or flag_obj == 0 or relapse in (true, 0)",
        "sex == 'M' and risk in ('low', 'mid') and centre not in ('z')",
        "sex is null or risk is not null or isnull(age)",
        "`my col` > 3 and `and` == 1",
    ],
)
def test_check_accepts(text: str, schema: DatasetSchema) -> None:
    check_where(parse_where(text), schema)


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("weight > 60", "weight", "no such column"),
        ("age > 1 and (sex == 'M' or Sex == 'F')", "Sex", "no such column"),
        ("nope is null", "nope", "no such column"),
        ("nope in (1, 2)", "nope", "no such column"),
        ("age == 'sixty'", "age", "expected a number after '==' for numeric column 'age'"),
        ("age >= '60'", "age", "expected a number after '>=' for numeric column 'age'"),
        ("n_ai == true", "n_ai", "expected a number"),
        ("count in (1, 'two')", "count", "expected a number after 'in'"),
        ("count not in ('x')", "count", "expected a number after 'not in'"),
        ("alive > 0", "alive", "'>' is not allowed on bool column"),
        ("alive <= true", "alive", "'<=' is not allowed on bool column"),
        ("alive == 'yes'", "alive", "expected true, false, 0 or 1"),
        ("alive == 2", "alive", "expected true, false, 0 or 1"),
        ("relapse in (true, 3)", "relapse", "expected true, false, 0 or 1"),
        ("sex == 1", "sex", "quoted string"),
        ("risk in ('low', 2)", "risk", "quoted string"),
        ("risk == true", "risk", "quoted string"),
        ("sex > 'M'", "sex", "'>' is not allowed on category column"),
    ],
)
def test_check_rejects(text: str, column: str, fragment: str, schema: DatasetSchema) -> None:
    with pytest.raises(FilterError) as info:
        check_where(parse_where(text), schema)
    err = info.value
    assert err.rule == "filter schema"
    assert err.site == "hosp_a"
    assert err.dataset == "aml"
    assert err.column == column
    assert fragment in err.reason
    assert "hosp_a" in str(err) and "aml" in str(err) and column in str(err)


def test_compile_where(schema: DatasetSchema) -> None:
    assert compile_where(None, schema) is None
    assert compile_where("", schema) is None
    assert compile_where("   ", schema) is None
    assert compile_where("age >= 60", schema) == Compare("age", ">=", 60)
    with pytest.raises(FilterError) as info:
        compile_where("age >=", schema)
    assert info.value.rule == "filter syntax"
    assert info.value.site == "hosp_a" and info.value.dataset == "aml"
    with pytest.raises(FilterError) as info:
        compile_where("weight > 1", schema)
    assert info.value.rule == "filter schema" and info.value.column == "weight"


def test_filter_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_where("age >")


# --------------------------------------------------------------------------------------------------
# evaluation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # float column with NaN in row 2
        ("age == 60", [0, 0, 0, 0, 1, 0]),
        ("age = 60", [0, 0, 0, 0, 1, 0]),
        ("age != 60", [1, 1, 0, 1, 0, 1]),
        ("age < 60", [0, 1, 0, 0, 0, 1]),
        ("age <= 60", [0, 1, 0, 0, 1, 1]),
        ("age > 60", [1, 0, 0, 1, 0, 0]),
        ("age >= 60", [1, 0, 0, 1, 1, 0]),
        ("60 < age", [1, 0, 0, 1, 0, 0]),
        ("age > 45.5", [1, 1, 0, 1, 1, 0]),
        ("age in (50, 60)", [0, 1, 0, 0, 1, 0]),
        ("age not in (50, 60)", [1, 0, 0, 1, 0, 1]),
        ("age is null", [0, 0, 1, 0, 0, 0]),
        ("age is not null", [1, 1, 0, 1, 1, 1]),
        ("isnull(age)", [0, 0, 1, 0, 0, 0]),
        ("notnull(age)", [1, 1, 0, 1, 1, 1]),
        # missing values: comparison False, not(...) True
        ("not age > 60", [0, 1, 1, 0, 1, 1]),
        ("not (age > 60) and age is not null", [0, 1, 0, 0, 1, 1]),
        ("not age != 60", [0, 0, 1, 0, 1, 0]),
        # nullable Int64 / Float64 with pd.NA in row 1
        ("n_ai >= 3", [0, 0, 1, 1, 1, 1]),
        ("n_ai != 1", [0, 0, 1, 1, 1, 1]),
        ("n_ai == 1.0", [1, 0, 0, 0, 0, 0]),
        ("n_ai in (1, 4)", [1, 0, 0, 1, 0, 0]),
        ("n_ai not in (1, 4)", [0, 0, 1, 0, 1, 1]),
        ("n_ai is null", [0, 1, 0, 0, 0, 0]),
        ("n_af < 3", [1, 0, 0, 0, 0, 1]),
        ("n_af > -2", [1, 0, 1, 1, 1, 0]),
        ("n_af >= -2", [1, 0, 1, 1, 1, 1]),
        ("n_af == -2", [0, 0, 0, 0, 0, 1]),
        ("not n_af < 3", [0, 1, 1, 1, 1, 0]),
        # plain int column
        ("count == 3", [0, 0, 1, 0, 0, 0]),
        ("count > 2.5", [0, 0, 1, 1, 1, 1]),
        ("count in [1, 6]", [1, 0, 0, 0, 0, 1]),
        # bool columns: numpy bool, nullable boolean, object with None
        ("alive == true", [1, 0, 1, 0, 1, 1]),
        ("alive == 1", [1, 0, 1, 0, 1, 1]),
        ("alive == false", [0, 1, 0, 1, 0, 0]),
        ("alive != true", [0, 1, 0, 1, 0, 0]),
        ("alive in (0)", [0, 1, 0, 1, 0, 0]),
        ("relapse == true", [1, 0, 0, 1, 0, 0]),
        ("relapse != true", [0, 0, 1, 0, 0, 1]),
        ("relapse == 0", [0, 0, 1, 0, 0, 1]),
        ("relapse not in (true)", [0, 0, 1, 0, 0, 1]),
        ("relapse is null", [0, 1, 0, 0, 1, 0]),
        ("flag_obj == true", [1, 0, 0, 1, 0, 0]),
        ("flag_obj == false", [0, 0, 1, 0, 0, 1]),
        ("flag_obj is not null", [1, 0, 1, 1, 0, 1]),
        # object strings with None
        ("sex == 'M'", [1, 0, 0, 1, 0, 1]),
        ('sex = "F"', [0, 1, 0, 0, 1, 0]),
        ("sex != 'M'", [0, 1, 0, 0, 1, 0]),
        ("sex in ('M', 'F')", [1, 1, 0, 1, 1, 1]),
        ("sex not in ('M')", [0, 1, 0, 0, 1, 0]),
        ("sex == 'm'", [0, 0, 0, 0, 0, 0]),
        ("sex is null", [0, 0, 1, 0, 0, 0]),
        ("'M' == sex", [1, 0, 0, 1, 0, 1]),
        # pandas category
        ("risk == 'low'", [1, 0, 0, 1, 0, 0]),
        ("risk != 'low'", [0, 1, 0, 0, 1, 1]),
        ("risk == 'absent'", [0, 0, 0, 0, 0, 0]),
        ("risk in ['high', 'mid']", [0, 1, 0, 0, 1, 1]),
        ("risk not in ['high', 'absent']", [1, 0, 0, 1, 1, 0]),
        ("risk is null", [0, 0, 1, 0, 0, 0]),
        # pandas string dtype with pd.NA, values needing escapes and spaces
        ("centre == 'x y'", [1, 0, 0, 1, 0, 0]),
        ("centre == 'it\\'s'", [0, 0, 1, 0, 0, 0]),
        ("centre != 'z'", [1, 0, 1, 1, 0, 0]),
        ("centre not in ('z', 'x y')", [0, 0, 1, 0, 0, 0]),
        # quoted identifiers
        ("`my col` >= 5", [0, 0, 0, 0, 1, 1]),
        ("`and` == 1", [0, 1, 0, 1, 0, 1]),
        # boolean combinations and precedence
        ("age > 60 or sex == 'F' and alive == true", [1, 0, 0, 1, 1, 0]),
        ("(age > 60 or sex == 'F') and alive == true", [1, 0, 0, 0, 1, 0]),
        ("not sex == 'M' and not age < 50", [0, 1, 1, 0, 1, 0]),
        ("not (sex == 'M' or age < 50)", [0, 1, 1, 0, 1, 0]),
        ("not not age > 60", [1, 0, 0, 1, 0, 0]),
        ("age > 0 and count > 1 and alive == true and sex is not null", [0, 0, 0, 0, 1, 1]),
        ("count == 1 or count == 3 or count == 5", [1, 0, 1, 0, 1, 0]),
    ],
)
def test_evaluate(text: str, expected: list[int], df: pd.DataFrame) -> None:
    assert mask(text, df) == expected


def test_evaluate_matches_check(df: pd.DataFrame, schema: DatasetSchema) -> None:
    expr = compile_where("age >= 60 and sex == 'M'", schema)
    assert expr is not None
    assert mask(to_text(expr), df) == [1, 0, 0, 1, 0, 0]


def test_evaluate_empty_frame(df: pd.DataFrame) -> None:
    empty = df.iloc[:0]
    for text in ["age > 1", "sex == 'M'", "risk in ('low')", "relapse == true", "not age is null"]:
        assert mask(text, empty) == []


def test_evaluate_all_missing_columns() -> None:
    frame = pd.DataFrame(
        {
            "x": [np.nan, np.nan],
            "y": pd.Series([None, None], dtype=object),
            "z": pd.array([None, None], dtype="Int64"),
        }
    )
    assert mask("x > 1", frame) == [0, 0]
    assert mask("x != 1", frame) == [0, 0]
    assert mask("y == 'a'", frame) == [0, 0]
    assert mask("y != 'a'", frame) == [0, 0]
    assert mask("y != 1", frame) == [0, 0]
    assert mask("z not in (1)", frame) == [0, 0]
    assert mask("not z == 1", frame) == [1, 1]


def test_evaluate_object_numbers() -> None:
    frame = pd.DataFrame({"v": pd.Series([1, 2.5, None, pd.NA, 4], dtype=object)})
    assert mask("v >= 2", frame) == [0, 1, 0, 0, 1]
    assert mask("v is null", frame) == [0, 0, 1, 1, 0]


def test_evaluate_keeps_index_alignment_irrelevant(df: pd.DataFrame) -> None:
    shuffled = df.set_index(pd.Index([10, 3, 7, 1, 0, 99]))
    assert mask("age > 60", shuffled) == [1, 0, 0, 1, 0, 0]


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("missing_col > 1", "missing_col"),
        ("sex > 'M'", "sex"),
        ("sex == 1", "sex"),
        ("risk in (1, 2)", "risk"),
        ("centre == true", "centre"),
        ("age == 'x'", "age"),
        ("count in ('a')", "count"),
        ("count in (1, 'a')", "count"),
        ("alive > 0", "alive"),
        ("relapse <= true", "relapse"),
    ],
)
def test_evaluate_errors(text: str, column: str, df: pd.DataFrame) -> None:
    with pytest.raises(FilterError) as info:
        evaluate_where(parse_where(text), df)
    assert info.value.column == column
    assert info.value.rule == "filter schema"


def test_evaluate_is_vectorised_on_large_frame() -> None:
    n = 200_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18, 90, n),
            "sex": pd.Categorical(rng.choice(["M", "F"], n)),
            "wbc": pd.array(rng.integers(0, 100, n), dtype="Int64"),
        }
    )
    result = evaluate_where(
        parse_where("(age >= 60 and sex == 'M') or not wbc in (1, 2, 3) and wbc is not null"),
        frame,
    )
    expected = ((frame["age"] >= 60) & (frame["sex"] == "M")) | ~frame["wbc"].isin([1, 2, 3])
    assert np.array_equal(result, expected.to_numpy(dtype=bool))


# --------------------------------------------------------------------------------------------------
# no data values in error messages


SECRET_NUMBERS = [987654.321, 123456789]
SECRET_STRINGS = ["ZEBRA_PATIENT_VALUE", "Dr. Hidden Name"]


def test_no_data_value_in_error_messages() -> None:
    frame = pd.DataFrame(
        {
            "num": [SECRET_NUMBERS[0], 1.0],
            "cnt": [SECRET_NUMBERS[1], 2],
            "txt": [SECRET_STRINGS[0], None],
            "cat": pd.Categorical([SECRET_STRINGS[1], "b"]),
            "flag": [True, False],
        }
    )
    schema = DatasetSchema(
        "site_s",
        "ds_d",
        {
            "num": ColumnSpec("num", "float"),
            "cnt": ColumnSpec("cnt", "int"),
            "txt": ColumnSpec("txt", "category"),
            "cat": ColumnSpec("cat", "category"),
            "flag": ColumnSpec("flag", "bool"),
        },
    )
    s0, s1 = SECRET_STRINGS
    n0, n1 = SECRET_NUMBERS
    failing = [
        f"txt == {n0}",
        f"txt > '{s0}'",
        f"cat in ('{s1}', {n1})",
        f"num == '{s0}'",
        f"cnt in ({n1}, '{s1}')",
        f"flag == '{s0}'",
        f"flag > {n1}",
        f"cat == true and num > {n0}",
        f"nope == '{s0}'",
        f"num == '{s0}' and txt == {n0}",
        f"num > {n0} txt == '{s0}'",
        f"num > {n0} and",
        f"txt == '{s0}' = '{s1}'",
        f"txt == '{s0}' == {n1}",
        f"txt in ('{s0}', '{s1}'",
        f"txt in ('{s0}' '{s1}')",
        f"txt is '{s0}'",
        f"{n1} in txt",
        f"txt == '{s0}' + 1",
        f"num.real == {n0}",
        f"txt == '{s0}\\x'",
        f"num == {n1}{n1}abc",
        f"txt == '{s0}",
        f"({n0})",
        f"'{s0}'",
    ]
    raised = 0
    for text in failing:
        for step in ("compile", "evaluate"):
            try:
                if step == "compile":
                    compile_where(text, schema)
                else:
                    evaluate_where(parse_where(text), frame)
            except FilterError as err:
                raised += 1
                message = str(err) + " " + repr(err.to_dict())
                for secret in [*SECRET_STRINGS, *map(str, SECRET_NUMBERS), "987654", "ZEBRA"]:
                    assert secret not in message, (text, step, message)
    assert raised == 2 * len(failing)
