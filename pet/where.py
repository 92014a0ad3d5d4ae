"""Subgroup filters such as `sex == "F" and age >= 50`, checked against the schema.

A filter is parsed with Python's own parser into a small, safe expression tree (only
comparisons of a column with constants, `in`, `and`, `or`, `not`): nothing is evaluated
as Python code. Its text is public, like the rest of the query. Before it is parsed its
length and nesting are checked against public limits (`pet.limits`), so no filter can
make parsing or evaluation run out of stack or memory.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pet.errors import QueryError, SchemaError
from pet.limits import DEFAULT_LIMITS, RequestLimits, check_where_text
from pet.schema import Categorical, Schema

if TYPE_CHECKING:  # sqlglot is imported where SQL is written (a tenth of a second)
    from sqlglot import exp

_COMPARE: dict[type[ast.cmpop], Callable[[np.ndarray, float], np.ndarray]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}


@dataclass(frozen=True)
class Where:
    """A public row filter; `mask` selects the rows of a chunk that belong to the subgroup.

    `limits` bound the text's length and nesting (a server passes its own; the defaults
    otherwise): a text beyond them is a `FilterLimitError`, a `QueryError`."""

    text: str
    limits: RequestLimits = field(default=DEFAULT_LIMITS, kw_only=True, repr=False,
                                  compare=False)
    columns: tuple[str, ...] = field(init=False)
    _tree: ast.expr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_where_text(self.text, self.limits)
        with _bounded(self.text):
            try:
                tree = ast.parse(self.text, mode="eval").body
            except SyntaxError as exc:
                raise QueryError(f"cannot parse filter {self.text!r}: {exc.msg}") from None
            names = _names(tree, self.text)
        object.__setattr__(self, "_tree", tree)
        object.__setattr__(self, "columns", tuple(sorted(names)))

    def check(self, schema: Schema) -> None:
        """Fail unless every column exists and every constant fits its column."""
        with _bounded(self.text):
            self.mask(schema, {name: np.zeros(0) for name in self.columns})

    def sql(self, schema: Schema, columns: Mapping[str, exp.Expression],
            number: Callable[[float], exp.Expression]) -> exp.Expression:
        """The filter as a SQL expression over the columns' encoded values (`number`
        writes an encoded constant), for rows where none of its columns is missing: there
        SQL's logic is Boolean logic and gives the rows that `mask` gives."""
        return _sql(self._tree, schema, columns, number, self.text)

    def mask(self, schema: Schema, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask of the rows that satisfy the filter (missing values never do)."""
        known = ~np.logical_or.reduce([np.isnan(columns[c]) for c in self.columns])
        return _evaluate(self._tree, schema, columns, self.text) & known


@contextmanager
def _bounded(text: str) -> Iterator[None]:
    """Turn running out of stack or memory while parsing or checking a filter into the
    filter's fault (QueryError): only its text, within its limits, is being read."""
    try:
        yield
    except (RecursionError, MemoryError) as exc:
        raise QueryError(f"the filter of {len(text)} characters is too complex to read "
                         f"({type(exc).__name__}); simplify it") from None


def _names(node: ast.AST, text: str) -> set[str]:
    if isinstance(node, ast.BoolOp):
        return set().union(*(_names(v, text) for v in node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _names(node.operand, text)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.left, ast.Name):
        return {node.left.id}
    raise QueryError(
        f"filter {text!r}: use comparisons of a column with a constant (age >= 50, "
        f"sex == 'F', smoking in ['current', 'former']) joined by and / or / not"
    )


def _evaluate(node: ast.AST, schema: Schema, columns: Mapping[str, np.ndarray],
              text: str) -> np.ndarray:
    if isinstance(node, ast.BoolOp):
        parts = [_evaluate(v, schema, columns, text) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return combine.reduce(parts)
    if isinstance(node, ast.UnaryOp):
        return ~_evaluate(node.operand, schema, columns, text)
    assert isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
    name, op, right = node.left.id, node.ops[0], node.comparators[0]
    try:
        column = schema[name]
    except SchemaError as exc:
        raise QueryError(f"filter {text!r}: {exc}") from None
    values = columns[name]
    if isinstance(op, ast.In | ast.NotIn):
        constants = _constant(right, text)
        if not isinstance(constants, list | tuple | set):
            raise QueryError(f"filter {text!r}: 'in' takes a list, e.g. {name} in [a, b]")
        hit = np.isin(values, [_encode(column, c, text) for c in constants])
        return hit if isinstance(op, ast.In) else ~hit & ~np.isnan(values)
    if type(op) not in _COMPARE:
        raise QueryError(f"filter {text!r}: unsupported comparison")
    constant = _encode(column, _constant(right, text), text)
    if isinstance(column, Categorical) and not isinstance(op, ast.Eq | ast.NotEq):
        raise QueryError(f"filter {text!r}: categorical column {name!r} takes == != in")
    result = _COMPARE[type(op)](values, constant)
    return result & ~np.isnan(values)


_SQL_COMPARE = {ast.Eq: "EQ", ast.NotEq: "NEQ", ast.Lt: "LT", ast.LtE: "LTE", ast.Gt: "GT",
                ast.GtE: "GTE"}
"""Each comparison's sqlglot expression class, by name."""


def _sql(node: ast.AST, schema: Schema, columns: Mapping[str, exp.Expression],
         number: Callable[[float], exp.Expression], text: str) -> exp.Expression:
    """`_evaluate` in SQL, on a tree that `check` has accepted: constants are encoded as
    `_encode` encodes them, comparisons are the same."""
    from sqlglot import exp  # only where SQL is written: a command reading a query skips it

    if isinstance(node, ast.BoolOp):
        parts = [exp.paren(_sql(v, schema, columns, number, text)) for v in node.values]
        return exp.and_(*parts) if isinstance(node.op, ast.And) else exp.or_(*parts)
    if isinstance(node, ast.UnaryOp):
        return exp.not_(exp.paren(_sql(node.operand, schema, columns, number, text)))
    assert isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
    value, op, right = columns[node.left.id].copy(), node.ops[0], node.comparators[0]
    column = schema[node.left.id]
    if isinstance(op, ast.In | ast.NotIn):
        constants = _constant(right, text)
        assert isinstance(constants, list | tuple | set)
        hit = value.isin(*(number(_encode(column, c, text)) for c in constants))
        return hit if isinstance(op, ast.In) else exp.not_(hit)
    constant = number(_encode(column, _constant(right, text), text))
    return getattr(exp, _SQL_COMPARE[type(op)])(this=value, expression=constant)


def _constant(node: ast.AST, text: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise QueryError(f"filter {text!r}: compare columns with constants only") from None


def _encode(column: object, value: object, text: str) -> float:
    """A constant in the column's encoding (a category becomes its code)."""
    if isinstance(column, Categorical):
        try:
            return float(column.code(value))  # type: ignore[arg-type]
        except SchemaError as exc:
            raise QueryError(f"filter {text!r}: {exc}") from None
    if isinstance(value, bool | int | float):
        return float(value)
    raise QueryError(f"filter {text!r}: {value!r} is not a number for column "
                     f"{getattr(column, 'name', '?')!r}")
