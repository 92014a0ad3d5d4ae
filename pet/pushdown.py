"""A query's local pass as one aggregate a SQL engine runs where the rows live.

A layout is a vector of sums and counts over the rows of a subgroup: exactly what a SQL
engine computes best. `compile` turns the layout of a supported query into one SELECT
whose single row holds a few validation aggregates and then the layout's elements, in
order. The schema's encoding is written as SQL (a category becomes its code, a NaN becomes
missing), and so is the query's filter, from pet's parsed `Where`; the validation checks
every value the query reads against the public schema, as pet's reader does.

Where a check fails, the source runs pet's own reader instead, which either accepts the
value (a form the SQL encoding does not know, such as a category padded with a tab) or
refuses it with its column and row. A query, a column type or a constant that `compile`
does not know gives None: pet's own pass then serves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from pet.queries.base import Query, State, affine
from pet.queries.covariance import Correlation, Covariance
from pet.queries.descriptive import Count, Mean, Moments, StdDev, Sum, Variance
from pet.queries.regression import LinearRegression
from pet.queries.tables import Contingency, Histogram
from pet.schema import Boolean, Categorical, Column, Schema, cell_text
from pet.where import Where

EXACT = ("INTEGER", "INT", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER",
         "USMALLINT", "UTINYINT", "INT2", "INT4", "INT8", "DECIMAL", "NUMERIC")
"""Numeric engine types (DuckDB's, PostgreSQL's and Spark's names) that hold no NaN."""
NUMERIC = ("DOUBLE", "FLOAT", "REAL", "FLOAT8", "FLOAT4", *EXACT)
"""Engine column types read as numbers."""
TEXT = ("VARCHAR", "TEXT", "BPCHAR", "CHAR", "STRING")
BOOLEAN = ("BOOLEAN", "BOOL")
MAX_CELLS = 256
"""Most cells a compiled histogram or table counts (one aggregate each); a request for
more (up to the site's cell limit) is served by pet's own pass, so no request makes a site
build and an engine plan a statement of a million aggregates."""


class Unsupported(Exception):
    """What `compile` cannot express in SQL; pet's own pass serves it instead."""


@dataclass(frozen=True)
class Check:
    """One validation aggregate: a row breaks the schema when its value lies beyond
    `limit` on the side of `sign` (+1: above, -1: below); NULL (no row) breaks nothing."""

    aggregate: exp.Expression
    limit: float
    sign: int

    def broken(self, value: float | None) -> bool:
        return value is not None and self.sign * (value - self.limit) > 0


@dataclass(frozen=True)
class Plan:
    """One SELECT whose single row holds the checks' values, then the partial vector."""

    select: exp.Select
    checks: tuple[Check, ...]

    def vector(self, row: list[float | None]) -> np.ndarray | None:
        """The partial vector, or None when a check finds a value the SQL encoding refuses
        (pet's own reader then names it, or reads a form this encoding does not know)."""
        k = len(self.checks)
        if any(check.broken(v) for check, v in zip(self.checks, row[:k], strict=True)):
            return None
        return np.array([0.0 if v is None else v for v in row[k:]], dtype=np.float64)


def compile(query: Query, schema: Schema, state: State, types: Mapping[str, str],
            source: exp.Expression) -> Plan | None:
    """The plan computing the query's partial vector on the engine; None where the
    query, a column's engine type or a constant has no SQL form here.

    Three levels: the rows are encoded once (used column i as `c{i}`, its raw value as
    `r{i}`); then the query's per-row terms are computed once (`t{k}`: scaled values, a
    table's cell), each NULL outside the subgroup's complete rows; then one row of
    aggregates: validation (bounds by MIN and MAX, missing and unmatched values by COUNT),
    the head, and the sums of the terms."""
    sums = SUMS.get(type(query))
    if sums is None or query.clip or state is not None:
        return None
    cells = CELLS.get(type(query))
    if cells is not None and cells.count(query, schema) > MAX_CELLS:
        return None
    names = query.used_columns()
    values = {c: exp.column(f"c{i}", quoted=True) for i, c in enumerate(names)}
    raws = [exp.column(f"r{i}", quoted=True) for i in range(len(names))]
    try:
        encoded = [_encode(schema[c], exp.column(c, quoted=True), types[c]) for c in names]
        checks = [check for i, c in enumerate(names)
                  for check in _checks(schema[c], types[c], values[c], raws[i])]
        rows = _rows(query, schema, values)
        terms = Terms(rows.complete)
        aggregates = [*_head(query, schema, values, rows),
                      *sums(query, schema, values, terms)]
    except Unsupported:
        return None
    inner = exp.select(*(v.as_(f"c{i}", quoted=True) for i, v in enumerate(encoded)),
                       *(exp.column(c, quoted=True).as_(r.name, quoted=True)
                         for c, r in zip(names, raws, strict=True)),
                       _number(1.0).as_("pet_row", quoted=True)).from_(source)
    middle = exp.select(*(v.copy() for v in values.values()), *(r.copy() for r in raws),
                        *terms.items).from_(inner.subquery("pet_encoded"))
    items = [*(c.aggregate for c in checks), *aggregates]
    select = exp.select(*(a.as_(f"v{i}", quoted=True) for i, a in enumerate(items))
                        ).from_(middle.subquery("pet_rows"))
    return Plan(select, tuple(checks))


class Terms:
    """The per-row terms a query's sums read, computed once per row in the middle
    projection; each is NULL outside the subgroup's complete rows, so the aggregates need
    no filter (SUM and COUNT skip NULL)."""

    def __init__(self, complete: exp.Expression | None) -> None:
        self.complete = complete
        self.items: list[exp.Expression] = []

    def add(self, value: exp.Expression) -> exp.Column:
        """A term's column."""
        name = f"t{len(self.items)}"
        if self.complete is not None:
            value = exp.Case(ifs=[exp.If(this=self.complete.copy(), true=value)])
        self.items.append(value.as_(name, quoted=True))
        return exp.column(name, quoted=True)


def _encode(column: Column, raw: exp.Expression, engine_type: str) -> exp.Expression:
    """A column's value as pet encodes it (NULL for missing), from a raw column of the
    engine's type."""
    kind = _kind(engine_type)
    if isinstance(column, Categorical):
        return _categorical(column, raw, kind)
    if isinstance(column, Boolean) and kind in BOOLEAN:
        return exp.Case(ifs=[exp.If(this=raw.copy(), true=_number(1.0)),
                             exp.If(this=exp.not_(raw.copy()), true=_number(0.0))])
    if kind in NUMERIC:
        value = exp.cast(raw.copy(), exp.DataType.Type.DOUBLE)
        if kind in EXACT:
            return value
        # NaN, which pet reads as missing, becomes NULL.
        return exp.Nullif(this=value, expression=exp.cast(exp.Literal.string("NaN"),
                                                          exp.DataType.Type.DOUBLE))
    raise Unsupported(f"column {column.name!r} of type {engine_type}")


def _kind(engine_type: str) -> str:
    return engine_type.upper().split("(")[0].strip()


def _checks(column: Column, engine_type: str, value: exp.Expression,
            raw: exp.Expression) -> list[Check]:
    """The aggregates that find a value pet's reader would refuse: a missing value where
    none may be, an unknown category, a number beyond the bounds or not whole."""
    kind, checks = _kind(engine_type), []
    if not column.nullable:
        checks.append(Check(_missing(exp.Count(this=exp.Star()), value), 0.0, 1))
    elif isinstance(column, Categorical):
        checks.append(Check(_missing(exp.Count(this=raw.copy()), value), 0.0, 1))
    if isinstance(column, Categorical) or kind in BOOLEAN:
        return checks
    lower, upper = column.bounds()
    checks += [Check(exp.Min(this=value.copy()), lower, -1),
               Check(exp.Max(this=value.copy()), upper, 1)]
    if (column.kind == "integer" or isinstance(column, Boolean)) and kind not in EXACT:
        fractional = exp.NEQ(this=value.copy(), expression=exp.Floor(this=value.copy()))
        checks.append(Check(_count(fractional), 0.0, 1))
    return checks


def _missing(rows: exp.Expression, value: exp.Expression) -> exp.Expression:
    """How many of `rows` have no encoded value."""
    return exp.Sub(this=rows, expression=exp.Count(this=value.copy()))


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

    complete: exp.Expression | None
    """Complete rows of the subgroup (None: every row)."""
    candidates: exp.Expression | None
    """Rows in the subgroup or whose filter columns are missing (None: every row)."""


def _rows(query: Query, schema: Schema, values: Mapping[str, exp.Expression]) -> Rows:
    present = {c: v.copy().is_(exp.null()).not_() for c, v in values.items()}
    used = () if query.keeps_missing else query.inputs()
    if isinstance(query.where, Where):
        known = exp.and_(*(present[c].copy() for c in query.where.columns))
        in_group = exp.and_(known, exp.paren(query.where.sql(schema, values, _number)))
        candidates: exp.Expression = exp.or_(exp.paren(in_group.copy()),
                                             exp.not_(exp.paren(known.copy())))
    else:
        return Rows(_all([present[c].copy() for c in used]), None)
    return Rows(_all([in_group, *(present[c].copy() for c in used)]), candidates)


def _head(query: Query, schema: Schema, values: Mapping[str, exp.Expression],
          rows: Rows) -> list[exp.Expression]:
    """`n` and the `missing` counts."""
    missing = [_count(_all([values[c].copy().is_(exp.null()), *_given(rows.candidates)]))
               for c in query.missing_columns(schema)]
    return [_count(rows.complete), *missing]


def _moments(query: Query, schema: Schema, values: Mapping[str, exp.Expression],
             terms: Terms) -> list[exp.Expression]:
    """Σs (and Σs² for the variance) of the column scaled to [-1, 1]."""
    assert isinstance(query, Moments)
    s = terms.add(_scaled(values[query.column], query.bounded(schema)[query.column]))
    if isinstance(query, Sum):  # Sum and Mean: Σs alone
        return [_sum(s)]
    return [_sum(s), _sum(exp.Mul(this=s.copy(), expression=s.copy()))]


def _scaled(value: exp.Expression, column: Column) -> exp.Expression:
    """The value mapped from the column's public bounds onto [-1, 1], as `scale` does."""
    return _affine(value, *affine(column))


def _affine(value: exp.Expression, center: float, half: float) -> exp.Expression:
    """(value − center) / half."""
    return exp.Div(this=exp.paren(exp.Sub(this=value.copy(), expression=_number(center))),
                   expression=_number(half))


def _bin_index(value: exp.Expression, edges: tuple[float, ...]) -> exp.Expression:
    """The bin of a value among [e0, e1), …, [e_{k-1}, e_k], values below e0 in the first
    and above e_k in the last, as `bin_index` places them: how many inner edges it
    reaches (comparisons are exact, where arithmetic on the edges could round)."""
    index: exp.Expression = _number(0.0)
    for edge in edges[1:-1]:
        reached = exp.Case(ifs=[exp.If(this=exp.GTE(this=value.copy(), expression=_number(edge)),
                                       true=_number(1.0))], default=_number(0.0))
        index = exp.Add(this=index, expression=reached)
    return index


def _cell_counts(query: Query, schema: Schema, values: Mapping[str, exp.Expression],
                 terms: Terms) -> list[exp.Expression]:
    """The count of complete rows in each cell of a histogram or table."""
    cells = CELLS[type(query)]
    cell = terms.add(cells.index(query, schema, values))
    return [_count(exp.EQ(this=cell.copy(), expression=_number(float(i))))
            for i in range(cells.count(query, schema))]


def _histogram_cell(query: Query, schema: Schema,
                    encoded: Mapping[str, exp.Expression]) -> exp.Expression:
    assert isinstance(query, Histogram)
    return _bin_index(encoded[query.column], query.edges)


def _table_cell(query: Query, schema: Schema,
                encoded: Mapping[str, exp.Expression]) -> exp.Expression:
    """The row's cell in the table's C-order (as `np.ravel_multi_index` numbers it): a
    column's code, or its bin where the query bins it."""
    assert isinstance(query, Contingency)
    index: exp.Expression = _number(0.0)
    for column, size in zip(query.columns, query.shape(schema), strict=True):
        code = (_bin_index(encoded[column], query.bins[column]) if column in query.bins
                else encoded[column].copy())
        index = exp.Add(this=exp.Mul(this=exp.paren(index), expression=_number(float(size))),
                        expression=exp.paren(code))
    return index


def _covariance(query: Query, schema: Schema, values: Mapping[str, exp.Expression],
                terms: Terms) -> list[exp.Expression]:
    """Σs per column and Σsᵢsⱼ over the upper triangle, row by row (`gram_upper`'s
    order), of the columns scaled to [-1, 1]."""
    assert isinstance(query, Covariance)
    scaled = [terms.add(_scaled(values[c], schema[c])) for c in query.columns]
    d = len(scaled)
    return [*(_sum(s) for s in scaled),
            *(_sum(exp.Mul(this=scaled[i].copy(), expression=scaled[j].copy()))
              for i in range(d) for j in range(i, d))]


def _linear(query: Query, schema: Schema, values: Mapping[str, exp.Expression],
            terms: Terms) -> list[exp.Expression]:
    """XᵀX (upper triangle, row by row), Xᵀy and yᵀy of the scaled design and outcome, as
    `model_matrix` builds the design: an intercept, numbers scaled by the design's public
    center and half-range, a category's indicators for its levels after the first."""
    assert isinstance(query, LinearRegression)
    design = query.design(schema)
    columns: list[exp.Expression] = [_number(1.0)] if query.intercept else []
    term = len(columns)
    for name in query.predictors:
        column = schema[name]
        if isinstance(column, Categorical):
            for code in range(1, len(column.categories)):
                columns.append(exp.Case(ifs=[exp.If(this=exp.EQ(
                    this=values[name].copy(), expression=_number(float(code))),
                    true=_number(1.0))], default=_number(0.0)))
                term += 1
        else:
            columns.append(_affine(values[name], design.center[term], design.half[term]))
            term += 1
    x = [terms.add(c) for c in columns]
    y = terms.add(_affine(values[query.outcome], *query._outcome_scaling(schema)))
    p = len(x)
    return [*(_sum(exp.Mul(this=x[i].copy(), expression=x[j].copy()))
              for i in range(p) for j in range(i, p)),
            *(_sum(exp.Mul(this=xi.copy(), expression=y.copy())) for xi in x),
            _sum(exp.Mul(this=y.copy(), expression=y.copy()))]


def _given(condition: exp.Expression | None) -> list[exp.Expression]:
    return [] if condition is None else [condition.copy()]


def _count(condition: exp.Expression | None) -> exp.Expression:
    """COUNT(*) of the rows where `condition` holds (every row for None)."""
    count = exp.Count(this=exp.Star())
    return count if condition is None else _filtered(count, condition)


def _sum(value: exp.Expression) -> exp.Expression:
    """SUM(value) over the rows where it is not NULL; 0 where it is NULL in every row."""
    return exp.Coalesce(this=exp.Sum(this=value), expressions=[_number(0.0)])


def _filtered(aggregate: exp.Expression, condition: exp.Expression) -> exp.Expression:
    return exp.Filter(this=aggregate, expression=exp.Where(this=condition.copy()))


def _all(conditions: list[exp.Expression]) -> exp.Expression | None:
    return exp.and_(*conditions) if conditions else None


SUMS: dict[type, Callable[[Query, Schema, Mapping[str, exp.Expression], Terms],
                          list[exp.Expression]]] = {
    Count: lambda query, schema, values, terms: [],
    Sum: _moments, Mean: _moments, Variance: _moments, StdDev: _moments, Moments: _moments,
    Histogram: _cell_counts, Contingency: _cell_counts,
    Covariance: _covariance, Correlation: _covariance,
    LinearRegression: _linear,
}
"""The queries whose local pass compiles, by exact type (a subclass may change its sums)."""


@dataclass(frozen=True)
class Cells:
    """How a query that counts rows per cell numbers them: how many cells, and each
    row's cell from its encoded values (a term, computed once per row)."""

    count: Callable[[Query, Schema], int]
    index: Callable[[Query, Schema, Mapping[str, exp.Expression]], exp.Expression]


CELLS: dict[type, Cells] = {
    Histogram: Cells(lambda query, schema: len(query.edges) - 1,  # type: ignore[attr-defined]
                     _histogram_cell),
    Contingency: Cells(lambda query, schema: math.prod(query.shape(schema)),  # type: ignore[attr-defined]
                       _table_cell),
}
