"""The ``where=`` filter language's syntax, shared by both sides of the trust boundary.

The researcher's side parses a filter to reject a malformed one before anything is sent; each site
parses it again (it trusts nothing it is sent), checks it against its schema and evaluates it
(:mod:`fedhem_kernel.site.filters`).

A researcher's filter string is never handed to Python or pandas for evaluation. It is split into
tokens by a hand-written tokenizer, parsed by a recursive-descent parser into a tree of frozen
dataclasses (:class:`Expr`), checked against the dataset's :class:`DatasetSchema` and evaluated
with vectorised pandas/numpy operations into a boolean mask.

Grammar (keywords are case-insensitive, column names are case-sensitive)::

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" or_expr ")" | predicate
    predicate  := column op literal
                | literal op column                 (flipped: ``60 <= age`` is ``age >= 60``)
                | column ["not"] "in" list
                | column "is" ["not"] "null"
                | ("isnull" | "notnull") "(" column ")"
    op         := "==" | "=" | "!=" | "<" | "<=" | ">" | ">="
    list       := "(" literal ("," literal)* [","] ")"  |  "[" ... "]"
    literal    := number | string | "true" | "false"
    column     := [A-Za-z_][A-Za-z0-9_]*  |  `any name` (backslash escapes ` and \\)

Numbers are integers or floats, optionally negative, with an optional exponent (``-1.5e3``).
Strings are single- or double-quoted; inside them a backslash escapes the quote, the other quote
character or a backslash. Anything else (function calls, attribute access, indexing, arithmetic,
comparing two columns, chained comparisons, unknown characters, empty input, trailing tokens,
input longer than :data:`MAX_LENGTH` characters, nesting deeper than :data:`MAX_DEPTH`) raises
:class:`~fedhem_kernel.errors.FilterError` naming what was wrong and the (1-based) character
position.

Semantics: plain boolean masks, not SQL three-valued logic. A comparison or ``in`` test involving
a missing value (NaN, None, pd.NA, NaT) is False, also for ``!=`` and ``not in``; ``not`` simply
negates the mask, so ``not (age > 60)`` *includes* patients whose age is missing. Use
``age is not null`` to exclude them explicitly.

Type rules (enforced at the site by :func:`fedhem_kernel.site.filters.check_where`):

* ``float``/``int`` columns compare with numbers, with every operator;
* ``bool`` columns compare with ``true``/``false`` or the numbers 0/1, using ``==``, ``!=``,
  ``in`` and ``not in`` only;
* ``category`` columns compare with quoted strings only, using ``==``, ``!=``, ``in`` and
  ``not in``. A number is *not* matched against the string form of the categories (``stage == 2``
  is refused; write ``stage == '2'``), since ``2``, ``2.0`` and ``'02'`` would otherwise be
  ambiguous.

Error messages name columns, operators and positions, never a value from the table, and they do
not echo the literal values of the filter either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from fedhem_kernel.errors import FilterError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Compare",
    "Expr",
    "InList",
    "IsNull",
    "Literal",
    "Not",
    "Or",
    "columns_of",
    "parse_where",
    "walk",
    "to_text",
]

MAX_LENGTH: Final = 2000
"""Longest accepted filter text, in characters."""
MAX_DEPTH: Final = 50
"""Deepest accepted nesting of parentheses and ``not``."""

SYNTAX_RULE: Final = "filter syntax"
SCHEMA_RULE: Final = "filter schema"

Literal = bool | int | float | str
"""A literal value of the filter language (``bool`` is tested before ``int`` everywhere)."""

COMPARISON_OPS: Final = ("==", "!=", "<", "<=", ">", ">=")
ORDERING_OPS: Final = frozenset({"<", "<=", ">", ">="})
_FLIPPED: Final = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
KEYWORDS: Final = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
_INT_LIMIT: Final = 2**63 - 1

# --------------------------------------------------------------------------------------------------
# Expression tree


@dataclass(frozen=True)
class Expr:
    """Base class of a parsed filter expression (immutable, hashable, comparable)."""

    def __str__(self) -> str:
        return to_text(self)


@dataclass(frozen=True)
class Compare(Expr):
    """``column op value``; ``op`` is one of :data:`COMPARISON_OPS` (``=`` is stored as ``==``)."""

    column: str
    op: str
    value: Literal


@dataclass(frozen=True)
class InList(Expr):
    """``column in (values...)``, or ``column not in (...)`` when ``negated``."""

    column: str
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True)
class IsNull(Expr):
    """``column is null``, or ``column is not null`` when ``negated``."""

    column: str
    negated: bool = False


@dataclass(frozen=True)
class And(Expr):
    """Conjunction of two or more operands (nested conjunctions are flattened by the parser)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or(Expr):
    """Disjunction of two or more operands (nested disjunctions are flattened by the parser)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Not(Expr):
    """Negation of the operand's mask (missing values are *not* treated specially)."""

    operand: Expr


# --------------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True)
class _Token:
    kind: str  # NUMBER STRING IDENT KEYWORD OP LPAREN RPAREN LBRACK RBRACK COMMA EOF
    text: str  # source text (keywords lower-cased, '=' normalised to '==')
    pos: int  # 0-based offset in the filter text
    value: Literal | None = None  # NUMBER, STRING, KEYWORD true/false; IDENT: the column name

    @property
    def end(self) -> int:
        return self.pos + len(self.text)


_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE: Final = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_PUNCT: Final = {"(": "LPAREN", ")": "RPAREN", "[": "LBRACK", "]": "RBRACK", ",": "COMMA"}
_FORBIDDEN: Final = {  # character -> (what is wrong, hint)
    "+": ("arithmetic ('+') is not allowed", ""),
    "-": ("arithmetic ('-') is not allowed", ""),
    "*": ("arithmetic ('*') is not allowed", ""),
    "/": ("arithmetic ('/') is not allowed", ""),
    "%": ("arithmetic ('%') is not allowed", ""),
    "&": ("'&' is not allowed", "use 'and'"),
    "|": ("'|' is not allowed", "use 'or'"),
    "~": ("'~' is not allowed", "use 'not'"),
    "^": ("'^' is not allowed", ""),
    "!": ("'!' is only allowed in '!='", "use 'not' for negation"),
    ".": ("attribute access ('.') is not allowed", ""),
    "@": ("'@' (variable references) is not allowed", ""),
    ":": ("':' is not allowed", ""),
    ";": ("';' is not allowed", ""),
    "{": ("'{' is not allowed", ""),
    "}": ("'}' is not allowed", ""),
}
# Token kinds after which a '-' is a binary minus (arithmetic) rather than a number's sign.
_VALUE_KINDS: Final = frozenset({"NUMBER", "STRING", "IDENT", "RPAREN", "RBRACK"})


def _at(pos: int) -> str:
    return f"at character {pos + 1}"


def _syntax_error(message: str) -> FilterError:
    return FilterError(message, rule=SYNTAX_RULE)


def _forbidden(ch: str, pos: int) -> FilterError:
    what, hint = _FORBIDDEN[ch]
    return _syntax_error(f"{what} {_at(pos)}" + (f"; {hint}" if hint else ""))


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        prev = tokens[-1] if tokens else None
        touching_value = prev is not None and prev.kind in _VALUE_KINDS and prev.end == i
        if ch == "." and touching_value:
            raise _syntax_error(f"attribute access ('.') is not allowed {_at(i)}")
        if ch.isascii() and (ch.isdigit() or ch in ".-"):
            binary_minus = ch == "-" and prev is not None and prev.kind in _VALUE_KINDS
            match = None if binary_minus else _NUMBER_RE.match(text, i)
            if match is None:
                raise _forbidden(ch, i)
            end = match.end()
            if end < n and (text[end].isalnum() or text[end] in "_.`'\""):
                raise _syntax_error(f"malformed number {_at(i)}")
            tokens.append(_Token("NUMBER", match.group(), i, _number(match.group(), i)))
            i = end
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            match = _IDENT_RE.match(text, i)
            assert match is not None
            word = match.group()
            lower = word.lower()
            if lower in KEYWORDS:
                value: Literal | None = {"true": True, "false": False}.get(lower)
                tokens.append(_Token("KEYWORD", lower, i, value))
            else:
                tokens.append(_Token("IDENT", word, i, word))
            i = match.end()
        elif ch == "`":
            name, i_end = _read_quoted(text, i, "`", "quoted column name")
            if not name:
                raise _syntax_error(f"empty quoted column name {_at(i)}")
            tokens.append(_Token("IDENT", text[i:i_end], i, name))
            i = i_end
        elif ch in "'\"":
            string, i_end = _read_quoted(text, i, ch, "string")
            tokens.append(_Token("STRING", text[i:i_end], i, string))
            i = i_end
        elif ch in "=<>!":
            two = text[i : i + 2]
            if two in ("==", "!=", "<=", ">="):
                tokens.append(_Token("OP", two, i))
                i += 2
            elif ch == "=":
                tokens.append(_Token("OP", "==", i))
                i += 1
            elif ch in "<>":
                if two == "<>":
                    raise _syntax_error(f"'<>' is not allowed {_at(i)}; use '!='")
                tokens.append(_Token("OP", ch, i))
                i += 1
            else:
                raise _forbidden(ch, i)
        elif ch in _PUNCT:
            tokens.append(_Token(_PUNCT[ch], ch, i))
            i += 1
        elif ch in _FORBIDDEN:
            raise _forbidden(ch, i)
        else:
            shown = ch if ch.isprintable() else ascii(ch)[1:-1]
            raise _syntax_error(f"unexpected character '{shown}' {_at(i)}")
    tokens.append(_Token("EOF", "", n))
    return tokens


def _read_quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """Read a quoted string or name starting at ``start``; return (content, end offset)."""
    parts: list[str] = []
    i, n = start + 1, len(text)
    allowed_escapes = "\\'\"" if quote != "`" else "\\`"
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt not in allowed_escapes:
                raise _syntax_error(
                    f"unsupported escape in {what} {_at(i)}; only \\{quote} and \\\\ are allowed"
                )
            parts.append(nxt)
            i += 2
        elif ch == quote:
            return "".join(parts), i + 1
        else:
            parts.append(ch)
            i += 1
    raise _syntax_error(f"unterminated {what} starting {_at(start)}")


def _number(source: str, pos: int) -> int | float:
    if any(c in source for c in ".eE"):
        value = float(source)
        if not math.isfinite(value):
            raise _syntax_error(f"number out of range {_at(pos)}")
        return value
    integer = int(source)
    if abs(integer) > _INT_LIMIT:
        raise _syntax_error(f"integer out of range {_at(pos)}")
    return integer


# --------------------------------------------------------------------------------------------------
# Parser


def _describe(tok: _Token) -> str:
    if tok.kind == "EOF":
        return "end of filter"
    if tok.kind == "NUMBER":
        return "a number"
    if tok.kind == "STRING":
        return "a string"
    if tok.kind == "IDENT":
        return f"name '{tok.value}'"
    return f"'{tok.text}'"


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    # helpers
    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def is_keyword(self, word: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "KEYWORD" and tok.text == word

    def error(self, message: str, tok: _Token) -> FilterError:
        return _syntax_error(f"{message}, found {_describe(tok)} {_at(tok.pos)}")

    def enter(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _syntax_error(f"nesting deeper than {MAX_DEPTH} levels {_at(tok.pos)}")

    # grammar
    def parse(self) -> Expr:
        if self.peek().kind == "EOF":
            raise _syntax_error("empty filter")
        expr = self.or_expr()
        tok = self.peek()
        if tok.kind != "EOF":
            if tok.kind == "RPAREN":
                raise _syntax_error(f"unmatched ')' {_at(tok.pos)}")
            if tok.kind == "OP":
                raise _syntax_error(
                    f"chained comparisons are not allowed (unexpected '{tok.text}' {_at(tok.pos)});"
                    " combine conditions with 'and'"
                )
            raise _syntax_error(
                f"unexpected {_describe(tok)} {_at(tok.pos)}; combine conditions with 'and'/'or'"
            )
        return expr

    def or_expr(self) -> Expr:
        operands = [self.and_expr()]
        while self.is_keyword("or"):
            self.next()
            operands.append(self.and_expr())
        return _combine(Or, operands)

    def and_expr(self) -> Expr:
        operands = [self.not_expr()]
        while self.is_keyword("and"):
            self.next()
            operands.append(self.not_expr())
        return _combine(And, operands)

    def not_expr(self) -> Expr:
        if self.is_keyword("not"):
            tok = self.next()
            self.enter(tok)
            operand = self.not_expr()
            self.depth -= 1
            return Not(operand)
        return self.primary()

    def primary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "LPAREN":
            self.next()
            self.enter(tok)
            expr = self.or_expr()
            self.depth -= 1
            close = self.peek()
            if close.kind != "RPAREN":
                raise self.error(f"expected ')' to close the '(' {_at(tok.pos)}", close)
            self.next()
            return expr
        if tok.kind == "IDENT":
            self.next()
            assert isinstance(tok.value, str)
            if self.peek().kind == "LPAREN":
                return self.null_function(tok)
            return self.predicate(tok.value, tok)
        if tok.kind in ("NUMBER", "STRING") or self.is_keyword("true") or self.is_keyword("false"):
            return self.literal_first()
        if self.is_keyword("null"):
            raise _syntax_error(
                f"'null' is only allowed in 'is null' / 'is not null' {_at(tok.pos)}"
            )
        raise self.error("expected a condition", tok)

    def null_function(self, name: _Token) -> Expr:
        func = name.text.lower()
        if func not in ("isnull", "notnull") or name.text.startswith("`"):
            raise _syntax_error(f"function calls are not allowed ('{name.text}(' {_at(name.pos)})")
        self.next()  # '('
        col = self.next()
        if col.kind != "IDENT":
            raise self.error(f"expected a column name in '{func}(...)'", col)
        close = self.next()
        if close.kind != "RPAREN":
            raise self.error(f"expected ')' after the column name in '{func}(...)'", close)
        assert isinstance(col.value, str)
        return IsNull(col.value, negated=func == "notnull")

    def predicate(self, column: str, col_tok: _Token) -> Expr:
        tok = self.peek()
        if tok.kind == "OP":
            self.next()
            value = self.literal(f"after '{tok.text}' for column '{column}'")
            return Compare(column, tok.text, value)
        if self.is_keyword("in"):
            self.next()
            return InList(column, self.literal_list(), negated=False)
        if self.is_keyword("not") and self.is_keyword("in", 1):
            self.next()
            self.next()
            return InList(column, self.literal_list(), negated=True)
        if self.is_keyword("is"):
            self.next()
            negated = False
            if self.is_keyword("not"):
                self.next()
                negated = True
            null = self.next()
            if not (null.kind == "KEYWORD" and null.text == "null"):
                raise self.error("expected 'null' after 'is' / 'is not'", null)
            return IsNull(column, negated=negated)
        if tok.kind == "LBRACK":
            raise _syntax_error(f"indexing ('[') is not allowed {_at(tok.pos)}")
        raise self.error(
            f"expected a comparison operator, 'in', 'not in' or 'is' after column '{column}'", tok
        )

    def literal_first(self) -> Expr:
        """``literal op column``: supported and stored flipped, column first."""
        lit_tok = self.peek()
        value = self.literal("")
        op = self.next()
        if op.kind != "OP":
            if op.kind == "KEYWORD" and op.text in ("in", "not", "is"):
                raise _syntax_error(
                    f"a value cannot be on the left of '{op.text}' {_at(op.pos)};"
                    " write the column name first"
                )
            raise self.error(
                f"expected a comparison operator after the value {_at(lit_tok.pos)}", op
            )
        col = self.next()
        if col.kind != "IDENT":
            raise self.error(
                f"expected a column name after '{op.text}' (one side must be a column)", col
            )
        assert isinstance(col.value, str)
        return Compare(col.value, _FLIPPED[op.text], value)

    def literal(self, where: str) -> Literal:
        tok = self.next()
        if tok.kind in ("NUMBER", "STRING"):
            assert tok.value is not None
            return tok.value
        if tok.kind == "KEYWORD" and tok.text in ("true", "false"):
            return tok.text == "true"
        suffix = f" {where}" if where else ""
        if tok.kind == "KEYWORD" and tok.text == "null":
            raise _syntax_error(
                f"cannot compare with null {_at(tok.pos)}; use 'is null' or 'is not null'"
            )
        if tok.kind == "IDENT":
            if self.peek().kind == "LPAREN":
                raise _syntax_error(f"function calls are not allowed {_at(tok.pos)}")
            raise _syntax_error(
                f"expected a value{suffix} but found a column name {_at(tok.pos)}: comparing two"
                " columns is not supported (quote strings, e.g. 'text')"
            )
        raise self.error(f"expected a value (number, quoted string, true or false){suffix}", tok)

    def literal_list(self) -> tuple[Literal, ...]:
        open_tok = self.next()
        if open_tok.kind not in ("LPAREN", "LBRACK"):
            raise self.error("expected '(' or '[' to start the list after 'in'", open_tok)
        close_kind = "RPAREN" if open_tok.kind == "LPAREN" else "RBRACK"
        close_text = ")" if close_kind == "RPAREN" else "]"
        values: list[Literal] = []
        while True:
            tok = self.peek()
            if tok.kind == close_kind:
                if not values:
                    raise _syntax_error(f"empty list after 'in' {_at(open_tok.pos)}")
                self.next()
                return tuple(values)
            values.append(self.literal("in the list"))
            sep = self.peek()
            if sep.kind == "COMMA":
                self.next()
            elif sep.kind != close_kind:
                raise self.error(f"expected ',' or '{close_text}' in the list", sep)


def _combine(cls: type[And] | type[Or], operands: list[Expr]) -> Expr:
    if len(operands) == 1:
        return operands[0]
    flat: list[Expr] = []
    for operand in operands:
        if isinstance(operand, cls):
            flat.extend(operand.operands)
        else:
            flat.append(operand)
    return cls(tuple(flat))


def parse_where(text: str) -> Expr:
    """Parse a filter string into an :class:`Expr` (syntax only, no schema).

    Raises :class:`FilterError` with ``rule="filter syntax"`` for anything outside the grammar.
    """
    if not isinstance(text, str):
        raise _syntax_error("filter must be a string")
    if len(text) > MAX_LENGTH:
        raise _syntax_error(f"filter is too long ({len(text)} characters, maximum {MAX_LENGTH})")
    return _Parser(_tokenize(text)).parse()


# --------------------------------------------------------------------------------------------------
# Inspection and canonical text


def walk(expr: Expr) -> Iterator[Expr]:
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, And | Or):
            stack.extend(reversed(node.operands))
        elif isinstance(node, Not):
            stack.append(node.operand)


def columns_of(expr: Expr) -> set[str]:
    """Names of all columns the expression refers to."""
    return {node.column for node in walk(expr) if isinstance(node, Compare | InList | IsNull)}


def _ident_text(name: str) -> str:
    if _IDENT_RE.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    escaped = name.replace("\\", "\\\\").replace("`", "\\`")
    return f"`{escaped}`"


def _literal_text(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def to_text(expr: Expr) -> str:
    """Canonical text of ``expr`` (for audit logs); ``parse_where(to_text(e)) == e``.

    Canonical form: column first, ``==`` for equality, lower-case keywords, single-quoted
    strings, ``repr`` of floats, parentheses only where precedence needs them, backticks only
    for names that are not plain identifiers or that clash with a keyword.
    """
    if isinstance(expr, Compare):
        return f"{_ident_text(expr.column)} {expr.op} {_literal_text(expr.value)}"
    if isinstance(expr, InList):
        items = ", ".join(_literal_text(v) for v in expr.values)
        keyword = "not in" if expr.negated else "in"
        return f"{_ident_text(expr.column)} {keyword} ({items})"
    if isinstance(expr, IsNull):
        return f"{_ident_text(expr.column)} is {'not ' if expr.negated else ''}null"
    if isinstance(expr, Not):
        inner = to_text(expr.operand)
        if isinstance(expr.operand, And | Or):
            inner = f"({inner})"
        return f"not {inner}"
    if isinstance(expr, And):
        return " and ".join(
            f"({to_text(op)})" if isinstance(op, Or | And) else to_text(op) for op in expr.operands
        )
    if isinstance(expr, Or):
        return " or ".join(
            f"({to_text(op)})" if isinstance(op, Or) else to_text(op) for op in expr.operands
        )
    raise TypeError(f"not a filter expression: {type(expr).__name__}")
