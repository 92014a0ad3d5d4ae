"""A query's local pass as one aggregate a SQL engine runs where the rows live.

A layout is a vector of sums and counts over the rows of a subgroup: exactly what a SQL
engine computes best. `compile` turns the layout of a supported query into one SELECT list
whose first item counts the invalid values among the columns the query reads and whose
other items are the layout's elements, in order. The schema's encoding is written as SQL
(a category becomes its code, a NaN becomes missing, numbers are checked against the
public bounds), and so is the query's filter, from pet's parsed `Where`.

Any row the SQL encoding does not accept counts as invalid; the source then runs pet's own
reader instead, which either accepts the value (a form the SQL encoding does not know,
such as a category padded with a tab) or refuses it with its column and row. A query, a
column type or a constant that `compile` does not know gives None: pet's own pass then
serves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlglot import exp

from pet.queries.base import Query, State, affine
from pet.queries.descriptive import Count, Mean, Moments, StdDev, Sum, Variance
from pet.queries.tables import Histogram
from pet.schema import Boolean, Categorical, Column, Schema, cell_text
from pet.where import Where

NUMERIC = ("DOUBLE", "FLOAT", "REAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT",
           "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "DECIMAL", "NUMERIC",
           "FLOAT8", "FLOAT4", "INT2", "INT4", "INT8")
"""Engine column types (DuckDB's and PostgreSQL's names) read as numbers."""
EXACT = ("INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER",
         "USMALLINT", "UTINYINT", "INT2", "INT4", "INT8", "DECIMAL", "NUMERIC")
"""Numeric types that hold no NaN."""
TEXT = ("VARCHAR", "TEXT", "BPCHAR", "CHAR")
BOOLEAN = ("BOOLEAN", "BOOL")


class Unsupported(Exception):
    """What `compile` cannot express in SQL; pet's own pass serves it instead."""


@dataclass(frozen=True)
class Encoded:
    """A column's value as pet encodes it (NULL for missing) and whether a row's raw value
    is one the encoding refuses."""

    value: exp.Expression
    invalid: exp.Expression


def compile(query: Query, schema: Schema, state: State,
            types: Mapping[str, str]) -> tuple[exp.Expression, ...] | None:
    """The SELECT list computing the query's partial vector (after an invalid-value
    count), or None where the query, a column's engine type or a constant has no SQL form
    here."""
    sums = SUMS.get(type(query))
    if sums is None or query.clip or state is not None:
        return None
    try:
        encoded = {c: encode(schema[c], types[c]) for c in query.used_columns()}
        rows = _rows(query, schema, encoded)
        return (_count(_any([e.invalid for e in encoded.values()])),
                *_head(query, schema, encoded, rows), *sums(query, schema, encoded, rows))
    except Unsupported:
        return None


def encode(column: Column, engine_type: str) -> Encoded:
    """A column's encoding in SQL, for a raw column of the engine's type."""
    raw = exp.column(column.name, quoted=True)
    kind = engine_type.upper().split("(")[0].strip()
    if isinstance(column, Categorical):
        value = _categorical(column, raw, kind)
        invalid = exp.and_(raw.is_(exp.null()).not_(), value.is_(exp.null()))
    elif isinstance(column, Boolean) and kind in BOOLEAN:
        value = exp.Case(ifs=[exp.If(this=raw.copy(), true=_number(1.0)),
                              exp.If(this=exp.not_(raw.copy()), true=_number(0.0))])
        invalid = exp.false()
    elif kind in NUMERIC:
        value = _double(raw, nan=kind not in EXACT)
        invalid = _outside(column, value)
    else:
        raise Unsupported(f"column {column.name!r} of type {engine_type}")
    if not column.nullable:
        invalid = exp.or_(invalid, value.copy().is_(exp.null()))
    return Encoded(value, exp.paren(invalid))


def _double(raw: exp.Expression, *, nan: bool) -> exp.Expression:
    value = exp.cast(raw.copy(), exp.DataType.Type.DOUBLE)
    if not nan:
        return value
    is_nan = exp.EQ(this=value.copy(), expression=exp.cast(exp.Literal.string("NaN"),
                                                           exp.DataType.Type.DOUBLE))
    return exp.Case(ifs=[exp.If(this=is_nan, true=exp.null())], default=value)


def _outside(column: Column, value: exp.Expression) -> exp.Expression:
    """Whether a present value breaks the column's bounds (or is not whole, or not 0/1)."""
    if isinstance(column, Boolean):
        broken: exp.Expression = exp.not_(value.copy().isin(_number(0.0), _number(1.0)))
    else:
        lower, upper = column.bounds()
        broken = exp.or_(exp.LT(this=value.copy(), expression=_number(lower)),
                         exp.GT(this=value.copy(), expression=_number(upper)))
        if column.kind == "integer":
            broken = exp.or_(broken, exp.NEQ(this=value.copy(),
                                             expression=exp.Floor(this=value.copy())))
    return exp.and_(value.copy().is_(exp.null()).not_(), exp.paren(broken))


def _categorical(column: Categorical, raw: exp.Expression, kind: str) -> exp.Expression:
    """The category's code: text cells match a category's text (as pet's reader does when
    the texts are distinct), numbers match numeric categories."""
    if kind in TEXT:
        texts = [cell_text(c) for c in column.categories]
        if len(set(texts)) != len(texts):
            raise Unsupported(f"categories of {column.name!r} that read alike")
        subject, keys = exp.Trim(this=raw.copy()), [exp.Literal.string(t) for t in texts]
    elif kind in NUMERIC and all(isinstance(c, int | float) and not isinstance(c, bool)
                                 for c in column.categories):
        subject = exp.cast(raw.copy(), exp.DataType.Type.DOUBLE)
        keys = [_number(float(c)) for c in column.categories]
    else:
        raise Unsupported(f"categorical column {column.name!r} of type {kind}")
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=subject.copy(), expression=key),
                                true=_number(float(code))) for code, key in enumerate(keys)])


def _number(value: float) -> exp.Expression:
    if not math.isfinite(value):
        raise Unsupported(f"the constant {value!r}")
    literal = exp.Literal.number(repr(float(value)))
    return exp.paren(exp.Neg(this=exp.Literal.number(repr(-value)))) if value < 0 else literal


@dataclass(frozen=True)
class Rows:
    """The row conditions every layout's head is counted over (as `Query._chunk_parts`)."""

    complete: exp.Expression
    candidates: exp.Expression


def _rows(query: Query, schema: Schema, encoded: Mapping[str, Encoded]) -> Rows:
    present = {c: e.value.copy().is_(exp.null()).not_() for c, e in encoded.items()}
    used = () if query.keeps_missing else query.inputs()
    if isinstance(query.where, Where):
        known = _all([present[c].copy() for c in query.where.columns])
        in_group = exp.and_(known, exp.paren(query.where.sql(
            schema, {c: encoded[c].value for c in query.where.columns}, _number)))
        candidates: exp.Expression = exp.or_(exp.paren(in_group.copy()),
                                             exp.not_(exp.paren(known.copy())))
    else:
        in_group, candidates = exp.true(), exp.true()
    return Rows(_all([in_group, *(present[c].copy() for c in used)]), candidates)


def _head(query: Query, schema: Schema, encoded: Mapping[str, Encoded],
          rows: Rows) -> list[exp.Expression]:
    """`n` and the `missing` counts."""
    missing = [_count(exp.and_(encoded[c].value.copy().is_(exp.null()),
                               exp.paren(rows.candidates.copy())))
               for c in query.missing_columns(schema)]
    return [_count(rows.complete), *missing]


def _moments(query: Query, schema: Schema, encoded: Mapping[str, Encoded],
             rows: Rows) -> list[exp.Expression]:
    assert isinstance(query, Moments)
    center, half = affine(query.bounded(schema)[query.column])
    scaled = exp.Div(this=exp.paren(exp.Sub(this=encoded[query.column].value.copy(),
                                            expression=_number(center))),
                     expression=_number(half))
    total = _sum(rows.complete, scaled)
    if isinstance(query, Sum):  # Sum and Mean: Σs alone
        return [total]
    return [total, _sum(rows.complete, exp.Mul(this=scaled.copy(), expression=scaled.copy()))]


def _histogram(query: Query, schema: Schema, encoded: Mapping[str, Encoded],
               rows: Rows) -> list[exp.Expression]:
    """Bins [e0, e1), …, [e_{k-1}, e_k], values below e0 in the first and above e_k in the
    last, as `bin_index` places them."""
    assert isinstance(query, Histogram)
    value, edges = encoded[query.column].value, query.edges
    inner = [_number(e) for e in edges[1:-1]]
    bins = []
    for i in range(len(edges) - 1):
        parts = []
        if i > 0:
            parts.append(exp.GTE(this=value.copy(), expression=inner[i - 1].copy()))
        if i < len(edges) - 2:
            parts.append(exp.LT(this=value.copy(), expression=inner[i].copy()))
        bins.append(_count(_all([rows.complete.copy(), *parts])))
    return bins


def _count(condition: exp.Expression) -> exp.Expression:
    return exp.Count(this=exp.Case(ifs=[exp.If(this=condition.copy(), true=_number(1.0))]))


def _sum(condition: exp.Expression, value: exp.Expression) -> exp.Expression:
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=condition.copy(), true=value)]))


def _all(conditions: list[exp.Expression]) -> exp.Expression:
    return exp.and_(*conditions) if conditions else exp.true()


def _any(conditions: list[exp.Expression]) -> exp.Expression:
    return exp.or_(*conditions) if conditions else exp.false()


SUMS: dict[type, Callable[[Query, Schema, Mapping[str, Encoded], Rows], list[exp.Expression]]] = {
    Count: lambda query, schema, encoded, rows: [],
    Sum: _moments, Mean: _moments, Variance: _moments, StdDev: _moments, Moments: _moments,
    Histogram: _histogram,
}
"""The queries whose local pass compiles, by exact type (a subclass may change its sums)."""
