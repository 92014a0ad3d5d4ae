"""A site's rows where they live: a table, view or query on DuckDB or PostgreSQL.

A `SqlTable` is a `Table` like a file: every chunk it streams is validated and encoded by
pet's one reader (`Schema.encode`), so a bad value is refused with its column and row
whatever holds it. Where a query's local pass compiles to one aggregate (`pet.pushdown`),
the engine computes the whole partial vector instead, validation included, and only a
handful of sums cross from the engine to pet.

Every statement is built with sqlglot from quoted identifiers: a table name is an
identifier, never SQL text. The only SQL text a source runs is the site's own, from its
configuration (`sql:`), read as a single SELECT. No part of a request reaches the engine as
text: a filter is pet's parsed `Where`, compiled to an expression tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from psycopg.types.numeric import FloatLoader
from sqlglot import exp

from pet import pushdown
from pet.errors import SchemaError, SourceError
from pet.omop import CohortDefinition
from pet.queries.base import Query, State
from pet.schema import Categorical, Schema
from pet.table import CHUNK_ROWS, Chunk, Table


@dataclass(frozen=True)
class Relation:
    """What a source reads: a table or view by name (`schema.table` allowed), the site's
    own SELECT statement, or (on DuckDB and Spark) a Parquet file."""

    table: str | None = None
    sql: str | None = None
    parquet: Path | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.table, self.sql, self.parquet)) != 1:
            raise SourceError("a source names one table, sql or parquet file")

    def expression(self, dialect: str) -> exp.Expression:
        """The relation as a FROM item: a quoted table name, the SELECT as a subquery, or
        the Parquet file read in place (its path a string literal, or Spark's quoted
        `parquet.`path`` name)."""
        if self.parquet is not None and dialect == "spark":
            return exp.Table(this=exp.to_identifier(str(self.parquet), quoted=True),
                             db=exp.to_identifier("parquet"))
        if self.parquet is not None:
            return exp.Table(this=exp.Anonymous(this="read_parquet", expressions=[
                exp.Literal.string(str(self.parquet))]))
        if self.table is not None:
            parts = self.table.split(".")
            if not all(parts) or len(parts) > 3:
                raise SourceError(f"table {self.table!r} is not a name such as "
                                  "'patients' or 'cdm.person'")
            return exp.Table(this=exp.to_identifier(parts[-1], quoted=True),
                             db=exp.to_identifier(parts[-2], quoted=True)
                             if len(parts) > 1 else None,
                             catalog=exp.to_identifier(parts[0], quoted=True)
                             if len(parts) > 2 else None)
        try:
            statements = sqlglot.parse(self.sql, read=dialect)
        except sqlglot.errors.ParseError as exc:
            raise SourceError(f"the source's sql does not parse: {exc}") from None
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            raise SourceError("the source's sql must be one SELECT statement")
        return statements[0].subquery("source")


class SqlTable(Table):
    """Rows of a relation on a SQL engine, validated against the schema as they stream."""

    dialect: str = ""

    def __init__(self, relation: Relation, schema: Schema) -> None:
        super().__init__(schema)
        self.relation = relation
        self._from = relation.expression(self.dialect)
        self.types = self._column_types()
        schema.check_header(list(self.types))

    @abstractmethod
    def _arrow(self, select: exp.Select, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Run a statement; yield its rows as Arrow record batches."""

    @abstractmethod
    def _describe(self) -> dict[str, str]:
        """The relation's columns and the engine's name of each one's type."""

    def errors(self) -> tuple[type[Exception], ...]:
        """The engine's own errors: reported as the source's, in one line."""
        return duckdb.Error, psycopg.Error

    def _column_types(self) -> dict[str, str]:
        try:
            return self._describe()
        except self.errors() as exc:
            raise SourceError(f"cannot read {self.describe()}: {_first_line(exc)}") from None

    def describe(self) -> str:
        """The source as a site's operator names it (never its credentials)."""
        what = (f"table {self.relation.table!r}" if self.relation.table
                else f"file {self.relation.parquet}" if self.relation.parquet
                else "the site's sql")
        return f"{what} on {type(self).__name__.removesuffix('Table')}"

    def select(self, *items: exp.Expression) -> exp.Select:
        """A SELECT of `items` from the relation."""
        return exp.select(*items).from_(self._from.copy())

    def sql(self, statement: exp.Expression) -> str:
        """A statement as the engine's dialect writes it."""
        return statement.sql(dialect=self.dialect)

    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        names = list(columns) or [self.schema.names[0]]
        statement = self.select(*(exp.column(c, quoted=True) for c in names))
        first_row = 0
        for batch in self._run(statement, chunk_rows):
            chunk = self._encode(_dictionaries(batch, self.schema), first_row, columns)
            first_row += batch.num_rows
            yield chunk

    def _run(self, statement: exp.Select, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        with self._failing():
            yield from self._arrow(statement, chunk_rows)

    def _result(self, statement: exp.Select) -> pa.Table:
        """An aggregate's few rows, whole."""
        with self._failing():
            return self._whole(statement)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """The engine's own errors as a SourceError naming this source."""
        try:
            yield
        except self.errors() as exc:
            raise SourceError(f"{self.describe()} failed: {_first_line(exc)}") from None

    def _whole(self, statement: exp.Select) -> pa.Table:
        """A statement's rows as one table (for a result small enough to hold)."""
        return _table(list(self._arrow(statement, CHUNK_ROWS)), statement)

    @property
    def n_rows(self) -> int:
        return int(self._result(self.select(exp.Count(this=exp.Star()))).column(0)[0].as_py())

    def to_frame(self) -> pd.DataFrame:
        names = list(self.types)
        batches = list(self._run(self.select(*(exp.column(c, quoted=True) for c in names)),
                                 CHUNK_ROWS))
        return pa.Table.from_batches(batches).to_pandas() if batches \
            else pd.DataFrame(columns=names)

    def partial(self, query: Query, state: State = None, *,
                site: str | None = None) -> np.ndarray:
        """The query's partial vector: one aggregate on the engine where the query's local
        pass compiles to one (`pet.pushdown`) and every value it reads is valid; otherwise
        (or to name a bad value's row) pet's own pass over the streamed rows."""
        query.validate(self.schema)  # filter and state are checked before any SQL is built
        size = query.layout(self.schema, state).size
        plan = pushdown.compile(query, self.schema, state, self.types, self._from.copy())
        vector = None if plan is None else self._pushed(self._tuned(plan))
        if vector is not None and vector.size == size:
            return query.placed(vector, self.schema, state, site=site)
        return super().partial(query, state, site=site)

    def _tuned(self, plan: pushdown.Plan) -> pushdown.Plan:
        """The plan as this engine runs it best, and with its most accurate sum (as is)."""
        return plan

    def _pushed(self, plan: pushdown.Plan) -> np.ndarray | None:
        """The plan's partial vector; None where a check found a value to read with pet's
        reader, or where the engine could not compute the aggregate (PostgreSQL refuses
        float arithmetic that underflows, on a subnormal value): pet's own pass then
        serves the query, and any error of the source itself is raised there."""
        try:
            rows = self._result(plan.select)
        except SourceError:
            return None
        return plan.vector(rows) if rows.num_rows else None


class DuckDBTable(SqlTable):
    """A table, view or SELECT in a DuckDB database file, opened read-only; or, with no
    database, a Parquet file that DuckDB reads in place."""

    dialect = "duckdb"

    def __init__(self, database: str | Path | None, relation: Relation,
                 schema: Schema) -> None:
        self.database = None if database is None else Path(database)
        self._database: duckdb.DuckDBPyConnection | None = None
        for path, what in ((self.database, "DuckDB database"), (relation.parquet, "file")):
            if path is not None and not Path(path).is_file():
                raise SchemaError(f"cannot read {path}: no such {what}")
        super().__init__(relation, schema)

    def _tuned(self, plan: pushdown.Plan) -> pushdown.Plan:
        """SUM as DuckDB's `fsum`: a compensated sum, as accurate as numpy's pairwise one
        (a plain parallel SUM of 10⁶ squares drifts by about 1e-12 relative), for some 70%
        more time on the sums."""
        select = plan.select.transform(lambda node: exp.Anonymous(
            this="fsum", expressions=[node.this]) if pushdown.own_sum(node) else node)
        return dataclasses.replace(plan, select=select)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the table's one database connection: opening a connection costs
        about 14 ms, a cursor almost nothing, and each thread gets its own cursor."""
        if self._database is None:
            self._database = duckdb.connect(
                ":memory:" if self.database is None else str(self.database),
                read_only=self.database is not None)
        return self._database.cursor()

    def _stamp(self) -> object:
        path = self.database or self.relation.parquet
        found = Path(path).stat()  # type: ignore[arg-type]
        return found.st_mtime_ns, found.st_size, found.st_ino

    def _describe(self) -> dict[str, str]:
        with self._connect() as connection:
            found = connection.execute(self.sql(self.select(exp.Star()).limit(0)))
            return {d[0]: str(d[1]) for d in found.description}

    def _arrow(self, select: exp.Select, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        with self._connect() as connection:
            reader = connection.sql(self.sql(select)).to_arrow_reader(chunk_rows)
            yield from reader


class PostgresTable(SqlTable):
    """A table, view or SELECT on a PostgreSQL server (psycopg). Rows that stream come
    through a server-side cursor, so that no more than a chunk of them is held at once;
    an aggregate's few rows through a client-side one (`_whole`). The DSN is a secret: it
    is kept, never shown."""

    dialect = "postgres"

    def __init__(self, dsn: str, relation: Relation, schema: Schema) -> None:
        if relation.parquet is not None:
            raise SourceError("PostgreSQL reads tables, views and SELECTs, not files")
        self._dsn = dsn
        super().__init__(relation, schema)

    def _tuned(self, plan: pushdown.Plan) -> pushdown.Plan:
        """Sums split so that their order loses nothing (`pushdown.exact_sums`); the rows
        the aggregates read, and each level of derived terms, kept a level of
        their own (OFFSET 0): PostgreSQL's planner would pull them up and compute every term
        once per product that reads it, and a derived term once per term derived from it
        (for 10⁵ rows a linear regression's sums took 3.5 s, 0.5 s kept; a logistic round
        did not end in 5 minutes, 0.55 s kept). Fencing the first levels too made the
        planner hold 3 GB and run for minutes."""
        select = pushdown.exact_sums(plan.select)
        for level in select.find_all(exp.Subquery):
            if level.alias.startswith(("pet_rows", "pet_derived")) and isinstance(
                    level.this, exp.Select):
                level.this.set("offset", exp.Offset(expression=exp.Literal.number(0)))
        return dataclasses.replace(plan, select=select)

    def _connect(self) -> psycopg.Connection:
        """A connection; a failure to connect is reported without the driver's message,
        which quotes parts of the connection string (a password, the server's address)."""
        try:
            connection = psycopg.connect(self._dsn, autocommit=False)
        except psycopg.Error as exc:
            raise SourceError(f"cannot connect to the site's PostgreSQL server "
                              f"({type(exc).__name__}; the driver's message is not shown, "
                              "as it may quote the connection string)") from None
        # NUMERIC as the double pet reads (correctly rounded from its text), where a
        # Decimal beyond 38 digits (1e-320) has no Arrow type.
        connection.adapters.register_loader("numeric", FloatLoader)
        return connection

    def _describe(self) -> dict[str, str]:
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.execute(self.sql(self.select(exp.Star()).limit(0)))
            return {d.name: _pg_type(connection, d.type_code) for d in cursor.description}

    def _arrow(self, select: exp.Select, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self._fetched(select, chunk_rows, cursor="pet_source")

    def _whole(self, statement: exp.Select) -> pa.Table:
        """An aggregate's few rows through a client-side cursor: PostgreSQL never runs a
        server-side cursor's statement in parallel, and an aggregate's rows are few (a
        linear regression's sums over 10⁶ rows took 6.4 s through a server-side cursor,
        4.3 s through a client-side one, a logistic fit 43 s and 27 s)."""
        return _table(list(self._fetched(statement, CHUNK_ROWS, cursor="")), statement)

    def _fetched(self, select: exp.Select, chunk_rows: int, *,
                 cursor: str) -> Iterator[pa.RecordBatch]:
        """A statement's rows in batches, in a read-only transaction, through the
        server-side cursor so named or (named "") a client-side one."""
        with self._connect() as connection, connection.cursor(name=cursor) as rows_of:
            connection.read_only = True
            rows_of.execute(self.sql(select))
            names = [d.name for d in rows_of.description]
            while rows := rows_of.fetchmany(chunk_rows):
                yield _records(rows, names)


class SparkTable(SqlTable):
    """A table, view or SELECT of a Spark session's catalog, or a Parquet file Spark reads,
    on `master` (`local[*]` on one machine, a cluster's URL where a site outgrows one).

    A query that compiles runs on the cluster, and one row comes back. Any other query's
    columns stream to this process partition by partition, through pet's reader as every
    source's do."""

    dialect = "spark"

    def __init__(self, master: str, relation: Relation, schema: Schema) -> None:
        self.master = master
        super().__init__(relation, schema)

    def _tuned(self, plan: pushdown.Plan) -> pushdown.Plan:
        """Sums split so that Spark's order of adding loses nothing
        (`pushdown.exact_sums`)."""
        return dataclasses.replace(plan, select=pushdown.exact_sums(plan.select))

    def errors(self) -> tuple[type[Exception], ...]:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        return PySparkException, Py4JError

    def _describe(self) -> dict[str, str]:
        return dict(spark_session(self.master).sql(self.sql(self.select(exp.Star()).limit(0)))
                    .dtypes)

    def _arrow(self, select: exp.Select, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """The rows partition by partition (`toLocalIterator`), in batches of at most
        `chunk_rows`: this process never holds more than a partition and a batch, where
        collecting the result (`toArrow`) would hold all of it."""
        frame = spark_session(self.master).sql(self.sql(select))
        names = frame.columns
        rows = frame.toLocalIterator(prefetchPartitions=True)
        while batch := [tuple(row) for row in itertools.islice(rows, chunk_rows)]:
            yield _records(batch, names)

    def _whole(self, statement: exp.Select) -> pa.Table:
        """The rows as one Arrow table (`toArrow`). A result read through `toLocalIterator`
        stays on the driver's heap: about 6.5 MiB a compiled Cox round on lung, so a few
        hundred rounds exhausted a default driver; through `toArrow`, 0.2 MiB."""
        return spark_session(self.master).sql(self.sql(statement)).toArrow()


def spark_session(master: str) -> Any:
    """The process's Spark session on `master` (Spark keeps one per process), its driver
    and UI bound to loopback and its UI off."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if active.sparkContext.master != master:
            raise SourceError(f"this process's Spark session runs on "
                              f"{active.sparkContext.master}, not {master}")
        return active
    return (SparkSession.builder.master(master).appName("pet-site")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "4")
            .getOrCreate())


def _table(batches: list[pa.RecordBatch], statement: exp.Select) -> pa.Table:
    """Batches as one table; with none, the statement's columns, empty."""
    return pa.Table.from_batches(batches) if batches \
        else pa.table({name: [] for name in statement.named_selects})


def _records(rows: Sequence[tuple], names: list[str]) -> pa.RecordBatch:
    """Rows of Python values (a driver's) as an Arrow batch."""
    return pa.RecordBatch.from_pandas(pd.DataFrame.from_records(rows, columns=names),
                                      preserve_index=False)


def _dictionaries(batch: pa.RecordBatch, schema: Schema) -> pa.RecordBatch:
    """A categorical column's text dictionary-encoded (in Arrow's C++), as a Parquet
    file's categories arrive: pet's reader then matches each distinct text once, not once
    per row. Other columns (a boolean stored as 'true') arrive as they are."""
    columns = [pc.dictionary_encode(c)
               if isinstance(schema.get(name), Categorical)
               and (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)) else c
               for name, c in zip(batch.schema.names, batch.columns, strict=True)]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _pg_type(connection: psycopg.Connection, oid: int) -> str:
    """PostgreSQL's name of a type (e.g. 'float8', 'text', 'bool')."""
    info = connection.adapters.types.get(oid)
    return info.name if info is not None else str(oid)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_source(spec: dict[str, Any], schema: Schema | None, *,
                secret: str | None = None) -> Table:
    """A source from a site configuration's `data:` mapping: `source: duckdb` (with a
    `database` or a `parquet` file) or `source: postgres`, naming a `table` or giving
    `sql`; or `source: omop` with an `engine` (duckdb or postgres) and a `cohort`
    definition (a file, or the name of one shipped with pet), which gives the schema.
    `secret` is the PostgreSQL DSN, read by the caller from an environment variable or a
    file."""
    kind = spec.get("source")
    if kind == "omop":
        definition = CohortDefinition.load(spec["cohort"])
        engine = spec.get("engine", "duckdb")
        dialect = {"duckdb": DuckDBTable.dialect, "postgres": PostgresTable.dialect}.get(engine)
        if dialect is None:
            raise SourceError(f"unknown omop engine {engine!r}; use duckdb or postgres")
        return open_source({"source": engine, "database": spec.get("database"),
                            "sql": definition.sql(dialect)}, definition.schema(),
                           secret=secret)
    if schema is None:
        raise SourceError(f"a {kind} source needs the study's schema")
    parquet = spec.get("parquet")
    relation = Relation(table=spec.get("table"), sql=spec.get("sql"),
                        parquet=None if parquet is None else Path(parquet))
    if kind == "duckdb":
        return DuckDBTable(spec.get("database"), relation, schema)
    if kind == "postgres":
        if not secret:
            raise SourceError("a postgres source needs its DSN (dsn_env or dsn_file)")
        return PostgresTable(secret, relation, schema)
    if kind == "spark":
        return SparkTable(str(spec.get("master", "local[*]")), relation, schema)
    raise SourceError(f"unknown source {kind!r}; use duckdb, postgres, spark or omop")
