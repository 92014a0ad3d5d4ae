"""Sources on SQL engines: a real DuckDB database file and a real PostgreSQL server give
every query the partial vector pet's own pass gives on the same rows (1e-12 relative,
counts exact), whether the engine computes it (`pet.pushdown`) or streams the rows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from sqlglot import exp

from benchmarks import postgres
from pet import pushdown
from pet.errors import QueryError, SchemaError
from pet.queries import (
    Anova,
    ChiSquare,
    Contingency,
    Correlation,
    Count,
    Covariance,
    Cox,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    LogRank,
    Mean,
    PoissonRegression,
    Quantiles,
    StdDev,
    Sum,
    TableOne,
    TTest,
    Variance,
)
from pet.queries.base import Next, Query, State
from pet.queries.cox import SITE, CoxState
from pet.queries.regression import NewtonRegression
from pet.schema import Boolean, Categorical, Continuous, Integer, Schema, TimeToEvent
from pet.sources import DuckDBTable, PostgresTable, Relation, SourceError, SqlTable
from pet.table import FrameTable, Table
from pet.workloads import Workload

PUSHED = [
    Count(), Count(where="sex == 'female'"), Mean("age"), Mean("wt_loss"),
    Sum("time", where="ph_ecog in [0, 1]"), StdDev("meal_cal", where="dead == True"),
    Variance("age", where="age >= 60 and not (sex == 'male' or ph_ecog != 2)"),
    Variance("pat_karno", where="sex not in ['male'] or wt_loss < -3.5"),
    Histogram("age", edges=(18, 50, 60, 70, 100)),
    Histogram("wt_loss", edges=(-50, 0, 10, 100), where="sex == 'male'"),
    Contingency(("sex", "dead")), Correlation(("age", "meal_cal")),
    Contingency(("dead", "ph_ecog", "sex"), bins={"ph_ecog": (0, 1, 2, 4)},
                where="age < 70"),
    Covariance(("age", "wt_loss", "pat_karno"), where="sex == 'female' or dead == False"),
    LinearRegression("wt_loss", ("age", "sex", "ph_ecog", "dead")),
    LinearRegression("time", ("age", "meal_cal"), intercept=False, where="ph_ecog < 2"),
    Quantiles("age"), Quantiles("wt_loss", bins=37, where="sex == 'male'"),
    Quantiles("time", probs=(0.5,), bins=100_000),
    KaplanMeier("time", "dead", grid=20), KaplanMeier("time", "dead", grid=1000),
    KaplanMeier("time", "dead", grid=(30, 180, 365, 730, 1100), where="ph_ecog >= 1"),
    LogRank("time", "dead", "sex", grid=20),
    LogRank("time", "dead", "sex", grid=(100, 365, 1100), where="age > 50"),
    LogisticRegression("dead", ("age", "sex", "ph_ecog")),
    LogisticRegression("dead", ("wt_loss", "meal_cal"), intercept=False, where="age > 60"),
    ChiSquare("sex", "dead"), TTest("age", "sex"), Anova("wt_loss", "dead", where="age > 55"),
    PoissonRegression("ph_ecog", ("age", "sex")),
    PoissonRegression("dead", ("age", "wt_loss"), exposure="time", robust=True,
                      where="sex == 'male'"),
    Cox("time", "dead", ("age", "sex")),
    Cox("time", "dead", ("age", "ph_ecog", "wt_loss"), grid=(30, 180, 365, 730, 1100),
        strata="sex", where="age > 50"),
]
"""Queries the engines compute, over nullable columns, booleans, categories and filters
(an iterative query's round at coefficients far from zero: `a_round`)."""
STREAMED = [Mean("age", clip={"age": (50, 70)}), ExactQuantiles("age"),
            TableOne(("age", "sex", "wt_loss", "meal_cal"), by="dead")]
"""Queries pet's own pass serves on the rows the engines stream (exact quantiles and a
Table 1 compiled ran 4–9× slower on DuckDB than streamed, see `pet.pushdown`)."""


@pytest.fixture(scope="module")
def lung_frame(lung3: Workload) -> pd.DataFrame:
    return lung3.pooled()


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory, lung_frame: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("duck") / "site.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.register("frame", lung_frame)
        connection.execute("CREATE TABLE patients AS SELECT * FROM frame")
    return path


@pytest.fixture(scope="module")
def dsn(lung_frame: pd.DataFrame) -> Iterator[str]:
    with postgres.server() as found:
        postgres.load(found, "patients", lung_frame)
        yield found


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def engine(request: pytest.FixtureRequest, lung3: Workload) -> SqlTable:
    if request.param == "duckdb":
        return DuckDBTable(request.getfixturevalue("duck"), Relation("patients"), lung3.schema)
    return PostgresTable(request.getfixturevalue("dsn"), Relation("patients"), lung3.schema)


def same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to 1e-12 relative (and to 1e-12 of the largest element near zero)."""
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(b).max()))


def a_round(query: Query, schema: Schema) -> State:
    """A Newton round's state with coefficients of both signs, some large enough to reach
    the floor of a row's log-likelihood; an exact quantile's first round; None for a
    one-pass query."""
    if isinstance(query, ExactQuantiles):
        return query.initial_state(schema)
    if isinstance(query, Cox):
        size = query.design(schema).size
        return CoxState(2, tuple(float((-1) ** k * (0.3 + 0.8 * k)) for k in range(size)))
    if not isinstance(query, NewtonRegression):
        return None
    size = query.design(schema).size
    return query.state_type(1, tuple(float((-1) ** k * (0.5 + 7 * k)) for k in range(size)))


def computes(table: SqlTable, frame: pd.DataFrame, query: Query) -> None:
    """The query compiles, and the engine's own answer (not a fallback's) to the plan as
    written and as the engine runs it (`_tuned`), and the table's answer, all equal pet's
    pass over the same rows."""
    state = a_round(query, table.schema)
    plan = pushdown.compile(query, table.schema, state, table.types, table._from)
    assert plan is not None
    expected = FrameTable(frame, table.schema).partial(query, state)
    same(table._pushed(plan), expected)
    same(table._pushed(table._tuned(plan)), expected)
    same(table.partial(query, state), expected)


@pytest.mark.parametrize("query", PUSHED, ids=Query.describe)
def test_the_engine_computes_pets_partial(engine: SqlTable, lung_frame: pd.DataFrame,
                                          query: Query) -> None:
    computes(engine, lung_frame, query)


@pytest.mark.parametrize("query", [
    *STREAMED, Cox("time", "dead", ("age", "sex"))], ids=Query.describe)
def test_other_queries_run_on_the_streamed_rows(engine: SqlTable, lung_frame: pd.DataFrame,
                                                lung3: Workload, query: Query) -> None:
    """A clipped mean, an exact quantile's round and a Table 1; and a Cox fit's closing
    round, whose concordance bins a risk score that a sum rounded otherwise could move
    across a bin's edge."""
    state = (CoxState(3, (0.4, -0.2), -700.0, closing=True) if isinstance(query, Cox)
             else query.initial_state(lung3.schema))
    assert pushdown.compile(query, lung3.schema, state, engine.types, engine._from) is None
    expected = FrameTable(lung_frame, lung3.schema).partial(query, state)
    same(engine.partial(query, state), expected)


@pytest.mark.parametrize(("query", "women"), [
    (ExactQuantiles("age", probs=(0.05, 0.5, 0.9), branching=4), False),
    (ExactQuantiles("wt_loss", probs=(0.3, 0.75), where="sex == 'female'"), True)], ids=str)
def test_an_exact_quantile_search_on_the_engine_ends_on_numpys_quantile(
        engine: SqlTable, lung_frame: pd.DataFrame, query: ExactQuantiles,
        women: bool) -> None:
    """Every round of the search on the engine's rows equals pet's pass over the same
    rows, and the search ends on numpy's inverted-CDF quantiles."""
    schema, frame = engine.schema, FrameTable(lung_frame, engine.schema)
    state: State = query.initial_state(schema)
    for _ in range(query.max_rounds):
        partial = engine.partial(query, state)
        same(partial, frame.partial(query, state))
        answer = query.finalize(partial, schema, state)
        if not isinstance(answer, Next):
            break
        state = answer.state
    rows = lung_frame[lung_frame["sex"] == "female"] if women else lung_frame
    values = rows[query.column].dropna().to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(answer, np.quantile(values, query.probs,
                                                      method="inverted_cdf"))


def test_a_cox_round_stratified_by_site_is_placed_in_the_sites_stratum(
        engine: SqlTable, lung_frame: pd.DataFrame) -> None:
    """The engine's sums land in the site's own stratum, as pet's pass puts them."""
    query = Cox("time", "dead", ("age", "sex"), strata=SITE, sites=("a", "b", "c"))
    state = a_round(query, engine.schema)
    expected = FrameTable(lung_frame, engine.schema).partial(query, state, site="b")
    assert pushdown.compile(query, engine.schema, state, engine.types, engine._from)
    same(engine.partial(query, state, site="b"), expected)
    layout = query.layout(engine.schema, state).split(expected)
    k = query.curve().steps()
    assert layout["s0"][:k].sum() == 0 and layout["s0"][k:2 * k].sum() > 0


def test_rows_metadata_and_chunks(engine: SqlTable, lung_frame: pd.DataFrame) -> None:
    assert engine.n_rows == len(lung_frame)
    pd.testing.assert_frame_equal(engine.to_frame().sort_values(["time", "age"]).reset_index(
        drop=True), lung_frame.sort_values(["time", "age"]).reset_index(drop=True),
        check_dtype=False)
    chunks = list(engine.chunks(["age", "sex"], chunk_rows=50))
    assert [c.n_rows for c in chunks] == [50, 50, 50, 50, 28]
    assert [c.first_row for c in chunks] == [0, 50, 100, 150, 200]


def test_the_sites_own_select_is_a_source(engine: SqlTable, lung3: Workload,
                                          lung_frame: pd.DataFrame) -> None:
    own = type(engine)(*_where(engine), Relation(sql="SELECT * FROM patients WHERE age > 60"),
                       lung3.schema)
    older = lung_frame[lung_frame.age > 60]
    same(own.partial(Mean("age")), FrameTable(older, lung3.schema).partial(Mean("age")))


def test_the_sites_own_sums_are_left_as_the_site_wrote_them(engine: SqlTable,
                                                            lung3: Workload,
                                                            lung_frame: pd.DataFrame) -> None:
    """An engine's rewrite of pet's sums (`fsum`, `exact_sums`) leaves the SUMs of the
    site's own SELECT alone: a window SUM rewritten does not parse, and the query would
    quietly stream instead of running on the engine."""
    leaves_the_sites_sums(type(engine)(*_where(engine), Relation(sql=WINDOWED),
                                       windowed(lung3.schema)), lung_frame)


WINDOWED = "SELECT *, SUM(age) OVER (PARTITION BY sex) AS pooled FROM patients"
"""A site's SELECT with a SUM of its own: each sex's total age."""


def windowed(schema: Schema) -> Schema:
    return Schema([*schema.columns, Continuous("pooled", 0, 1e6)])


def leaves_the_sites_sums(own: SqlTable, frame: pd.DataFrame) -> None:
    """The engine runs its tuned plan over `WINDOWED` and matches pet's pass."""
    plan = own._tuned(pushdown.compile(Mean("age"), own.schema, None, own.types, own._from))
    pooled = frame.assign(pooled=frame.groupby("sex", observed=True).age.transform("sum"))
    same(own._pushed(plan), FrameTable(pooled, own.schema).partial(Mean("age")))


def _where(engine: SqlTable) -> tuple[object]:
    return (engine.database,) if isinstance(engine, DuckDBTable) else (engine._dsn,)


@pytest.mark.parametrize("text", [
    "DROP TABLE patients", "SELECT 1; DROP TABLE patients", "SELECT * FROM patients;;"
    " DELETE FROM patients", "not sql at all ((",
])
def test_a_source_sql_is_one_select(engine: SqlTable, lung3: Workload, text: str) -> None:
    with pytest.raises(SourceError, match=r"one SELECT|does not parse"):
        type(engine)(*_where(engine), Relation(sql=text), lung3.schema)
    assert engine.n_rows == 228


@pytest.mark.parametrize("name", ['patients"; DROP TABLE patients; --', "patients;",
                                  "no_such_table", "a..b", "a.b.c.d"])
def test_a_table_name_is_an_identifier_never_sql(engine: SqlTable, lung3: Workload,
                                                 name: str) -> None:
    with pytest.raises(SourceError):
        type(engine)(*_where(engine), Relation(name), lung3.schema)
    assert engine.n_rows == 228


@pytest.mark.parametrize("where", [
    "sex == \"female' OR 1=1 --\"", "sex == 'female'; DROP TABLE patients",
    "age >= (SELECT 1)", "__import__('os')", "age in 'abc'",
])
def test_filter_injection_is_refused_before_any_engine(engine: SqlTable, where: str) -> None:
    with pytest.raises(QueryError):
        engine.partial(Count(where=where))
    assert engine.n_rows == 228


def schema_with_quotes() -> Schema:
    return Schema([Categorical("ward", ("O'Neil", 'say "hi"', "x")),
                   Integer("age", 0, 120, nullable=True)])


def test_categories_with_quotes_are_literals(tmp_path: Path) -> None:
    frame = pd.DataFrame({"ward": ["O'Neil", 'say "hi"', "x", "O'Neil"],
                          "age": [30, 40, None, 50]})
    table = duck_table(tmp_path, frame, schema_with_quotes())
    query = Mean("age", where="ward == \"O'Neil\"")
    assert pushdown.compile(query, table.schema, None, table.types, table._from) is not None
    same(table.partial(query), FrameTable(frame, table.schema).partial(query))


def duck_table(directory: Path, frame: pd.DataFrame, schema: Schema) -> DuckDBTable:
    path = directory / f"t{len(list(directory.iterdir()))}.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.register("frame", frame)
        connection.execute("CREATE TABLE t AS SELECT * FROM frame")
    return DuckDBTable(path, Relation("t"), schema)


def test_a_bad_value_is_refused_with_its_column_and_row(tmp_path: Path, dsn: str,
                                                        lung3: Workload,
                                                        lung_frame: pd.DataFrame) -> None:
    frame = lung_frame.copy()
    frame.loc[7, "age"] = 150
    postgres.load(dsn, "bad_age", frame)
    for table in (duck_table(tmp_path, frame, lung3.schema),
                  PostgresTable(dsn, Relation("bad_age"), lung3.schema)):
        with pytest.raises(SchemaError, match=r"column 'age', row 7: value 150.0 is above"):
            table.partial(Mean("age"))
        with pytest.raises(SchemaError, match=r"column 'age', row 7"):
            table.partial(Count(where="age > 50"))
        # A query that reads other columns never reads the bad value.
        same(table.partial(Mean("time")), FrameTable(lung_frame, lung3.schema).partial(
            Mean("time")))


def test_a_form_only_pets_reader_knows_is_read_by_it(tmp_path: Path, dsn: str,
                                                     lung3: Workload,
                                                     lung_frame: pd.DataFrame) -> None:
    """A tab around a category is not what SQL's TRIM removes: the engine counts it as
    invalid, and pet's reader, which reads it as the category, answers instead."""
    frame = lung_frame.copy()
    assert frame.loc[3, "sex"] == "male"
    frame.loc[3, "sex"] = "\tfemale"
    postgres.load(dsn, "tabbed", frame)
    query = Count(where="sex == 'female'")
    for table in (duck_table(tmp_path, frame, lung3.schema),
                  PostgresTable(dsn, Relation("tabbed"), lung3.schema)):
        assert table.partial(query)[0] == (lung_frame.sex == "female").sum() + 1


def test_a_postgres_dsn_is_never_shown(dsn: str, lung3: Workload) -> None:
    table = PostgresTable(dsn, Relation("patients"), lung3.schema)
    assert dsn not in repr(table.__dict__.get("relation")) and dsn not in table.describe()
    with pytest.raises(SourceError) as refused:
        PostgresTable(dsn.replace("dbname=postgres", "dbname=nowhere password=s3cret"),
                      Relation("patients"), lung3.schema)
    assert "s3cret" not in str(refused.value)


def test_the_engines_column_types_are_read(engine: SqlTable) -> None:
    expected = {"age": "int8", "sex": "text", "dead": "bool"} \
        if isinstance(engine, PostgresTable) else {"age": "BIGINT", "sex": "VARCHAR",
                                                   "dead": "BOOLEAN"}
    assert {c: engine.types[c] for c in expected} == expected


SCHEMA = Schema([
    Continuous("x", -5.0, 5.0, nullable=True), Integer("k", 0, 9),
    Categorical("g", ("a", "b", "c"), nullable=True), Boolean("flag", nullable=True),
    TimeToEvent("t", event="flag", upper=3.0, nullable=True), Boolean("b"),
])
QUERIES = [Count(where="g == 'b' or flag == 1"), Mean("x", where="k >= 3 and g != 'c'"),
           Variance("x", where="not flag == 1"), Sum("k", where="x < 0.5"),
           Histogram("x", edges=(-5, -1, 0, 1, 5), where="g in ['a', 'c']"),
           Quantiles("x", bins=10, where="k < 8"), Quantiles("x", bins=7),
           KaplanMeier("t", "flag", grid=3), KaplanMeier("t", "flag", grid=7, where="k > 2"),
           LogRank("t", "flag", "g", grid=7, strata="b"), ChiSquare("g", "b"),
           Anova("x", "g", where="k > 1"), TTest("t", "b"),
           PoissonRegression("k", ("x", "g"), exposure="t", where="t > 0"),
           LogisticRegression("flag", ("x", "g")),
           ExactQuantiles("x", probs=(0.2, 0.5), branching=8, where="g != 'b'"),
           Cox("t", "flag", ("x", "b"), grid=7), Cox("t", "flag", ("x", "k"), grid=(1, 2, 3),
                                                    strata="g"),
           TableOne(("x", "g", "flag"), by="g", bins=10),
           TableOne(("x", "b"), by="flag", bins=7, where="k > 1")]
GRIDS = [float(e) for e in np.linspace(-5, 5, 11)] + [float(e) for e in np.linspace(-5, 5, 8)]
"""Values on the queries' grid edges, where a row's bin turns on one comparison."""


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 40))
    x = draw(st.lists(st.one_of(st.none(), st.just(float("nan")), st.sampled_from(GRIDS),
                                st.floats(-5, 5, allow_nan=False)), min_size=n, max_size=n))
    t = draw(st.lists(st.one_of(st.none(), st.sampled_from([0.0, 3 / 7, 1.0, 2.0, 3.0]),
                                st.floats(0, 3, allow_nan=False)), min_size=n, max_size=n))
    return pd.DataFrame({
        "x": pd.array(x, dtype="float64"), "t": pd.array(t, dtype="float64"),
        "b": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        "k": draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)),
        "g": draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n)),
        "flag": pd.array(draw(st.lists(st.sampled_from([True, False, None]), min_size=n,
                                       max_size=n)), dtype="boolean"),
    })


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@PROPERTY
@given(frame=frames(), cut=st.floats(0, 1))
def test_property_sites_on_duckdb_add_up_to_pets_pass(tmp_path: Path, frame: pd.DataFrame,
                                                      cut: float) -> None:
    """Split at random into two sites on DuckDB: their partials add up to pet's pass over
    the pooled rows, for filters over missing values, NaN, booleans and categories."""
    split = int(cut * len(frame))
    sites: list[Table] = [duck_table(tmp_path, part.reset_index(drop=True), SCHEMA)
                          for part in (frame.iloc[:split], frame.iloc[split:]) if len(part)]
    add_up(frame, sites)


@PROPERTY
@given(frame=frames(), cut=st.floats(0, 1))
def test_property_sites_on_postgres_add_up_to_pets_pass(dsn: str, frame: pd.DataFrame,
                                                        cut: float) -> None:
    """The same on PostgreSQL, each site its own table loaded with COPY."""
    split = int(cut * len(frame))
    sites: list[Table] = []
    for k, part in enumerate((frame.iloc[:split], frame.iloc[split:])):
        if len(part):
            postgres.load(dsn, f"part_{k}", part.reset_index(drop=True))
            sites.append(PostgresTable(dsn, Relation(f"part_{k}"), SCHEMA))
    add_up(frame, sites)


def add_up(frame: pd.DataFrame, sites: list[Table]) -> None:
    """Every query's site partials add up to pet's own pass over the pooled rows."""
    for query in QUERIES:
        state = a_round(query, SCHEMA)
        expected = FrameTable(frame, SCHEMA).partial(query, state)
        same(sum(site.partial(query, state) for site in sites), expected)


def test_an_aggregate_the_engine_refuses_is_left_to_pets_pass(dsn: str) -> None:
    """PostgreSQL refuses float arithmetic that underflows: a subnormal value makes the
    compiled aggregate fail, and pet's own pass answers instead."""
    frame = pd.DataFrame({"x": [5e-324, 1.0, -2.0], "k": [1, 2, 3], "g": ["a", "b", None],
                          "flag": pd.array([True, None, False], dtype="boolean"),
                          "t": [0.5, None, 3.0], "b": [True, False, True]})
    postgres.load(dsn, "subnormal", frame)
    table = PostgresTable(dsn, Relation("subnormal"), SCHEMA)
    with pytest.raises(SourceError, match="underflow"):
        next(iter(table._run(pushdown.compile(Variance("x"), SCHEMA, None, table.types,
                                              table._from).select, 1)))
    same(table.partial(Variance("x")), FrameTable(frame, SCHEMA).partial(Variance("x")))


def test_a_histogram_of_many_bins_is_left_to_pets_pass(engine: SqlTable, lung3: Workload,
                                                       lung_frame: pd.DataFrame) -> None:
    """No request makes the site build a statement comparing each row with more than
    `MAX_EDGES` edges: a 100 000-bin histogram is pet's own pass over the streamed rows."""
    fine = Histogram("age", edges=tuple(np.linspace(18, 100, 100_001)))
    assert pushdown.compile(fine, lung3.schema, None, engine.types, engine._from) is None
    same(engine.partial(fine), FrameTable(lung_frame, lung3.schema).partial(fine))


def test_a_table_of_many_cells_is_counted_per_cell_by_the_engine(
        engine: SqlTable, lung3: Workload, lung_frame: pd.DataFrame) -> None:
    """Cells are counted by GROUP BY, not by one aggregate each: 2 × 2 × 82 cells."""
    wide = Contingency(("sex", "dead", "age"), bins={"age": tuple(range(18, 101))})
    plan = pushdown.compile(wide, lung3.schema, None, engine.types, engine._from)
    assert plan is not None and plan.tallies == ((2 * 2 * 82, 1),)
    same(engine._pushed(plan), FrameTable(lung_frame, lung3.schema).partial(wide))


def test_a_fraction_in_a_decimal_column_is_refused_as_the_reader_refuses_it(
        tmp_path: Path, dsn: str) -> None:
    """DECIMAL holds fractions: an Integer or Boolean column stored as one is checked for
    whole numbers, and the value is refused with its row, on both engines."""
    schema = Schema([Integer("k", 0, 9), Boolean("b")])
    with duckdb.connect(str(tmp_path / "d.duckdb")) as connection:
        connection.execute("CREATE TABLE t AS SELECT CAST(k AS DECIMAL(4,1)) AS k, "
                           "CAST(b AS DECIMAL(3,1)) AS b FROM (VALUES (1, 1), (2.5, 0), "
                           "(3, 0.5)) AS v(k, b)")
    with psycopg.connect(dsn) as connection:
        connection.execute("DROP TABLE IF EXISTS fractions")
        connection.execute("CREATE TABLE fractions AS SELECT k::numeric(4,1) AS k, "
                           "b::numeric(3,1) AS b FROM (VALUES (1, 1), (2.5, 0), (3, 0.5)) "
                           "AS v(k, b)")
    for table in (DuckDBTable(tmp_path / "d.duckdb", Relation("t"), schema),
                  PostgresTable(dsn, Relation("fractions"), schema)):
        with pytest.raises(SchemaError, match=r"column 'k', row 1: value 2.5 is not a whole"):
            table.partial(Mean("k"))
        with pytest.raises(SchemaError, match=r"column 'b', row 2: value 0.5 is not a boolean"):
            table.partial(Count(where="b == 1"))


def test_postgres_numeric_nan_and_real_read_as_pets_reader_reads_them(dsn: str) -> None:
    """NUMERIC 'NaN' is a missing value, as a float NaN is; a `real` column streams to
    pet's reader (the engine would widen 0.1f to 0.100000001490116)."""
    schema = Schema([Continuous("y", 0, 10, nullable=True), Continuous("r", 0, 10)])
    with psycopg.connect(dsn) as connection:
        connection.execute("DROP TABLE IF EXISTS odd")
        connection.execute("CREATE TABLE odd AS SELECT y::numeric AS y, r::real AS r FROM "
                           "(VALUES ('1', 0.1), ('NaN', 0.2), ('3', 3.3)) AS v(y, r)")
    table = PostgresTable(dsn, Relation("odd"), schema)
    assert pushdown.compile(Mean("r"), schema, None, table.types, table._from) is None
    frame = pd.DataFrame({"y": [1.0, np.nan, 3.0], "r": [0.1, 0.2, 3.3]})
    for query in (Mean("y"), Count(where="y > 2"), Count(where="r == 0.1"), Mean("r")):
        same(table.partial(query), FrameTable(frame, schema).partial(query))


@pytest.mark.parametrize("dsn_text", [
    "postgresql://pet:50%off@127.0.0.1:1/postgres",
    "postgresql://pet:p@ss@nohost.invalid/postgres",
    "host=127.0.0.1 port=1 user=pet password=s3cret dbname=postgres",
])
def test_a_connection_failure_never_shows_the_dsn(lung3: Workload, dsn_text: str) -> None:
    with pytest.raises(SourceError) as refused:
        PostgresTable(dsn_text, Relation("patients"), lung3.schema)
    message = str(refused.value)
    assert not any(part in message for part in ("50%off", "ss@", "s3cret", "127.0.0.1",
                                                 "port", "nohost"))


def test_a_boolean_stored_as_text_reads_as_from_a_csv(tmp_path: Path, dsn: str) -> None:
    schema = Schema([Boolean("b"), Categorical("g", ("a", "b"))])
    frame = pd.DataFrame({"b": ["true", "false", "1"], "g": ["a", "b", "a"]})
    postgres.load(dsn, "text_flags", frame)
    for table in (duck_table(tmp_path, frame, schema),
                  PostgresTable(dsn, Relation("text_flags"), schema)):
        same(table.partial(Mean("b", where="g == 'a'")), np.array([2.0, 2.0]))


def test_numeric_categories_beyond_two_to_the_53_are_left_to_the_reader(
        tmp_path: Path) -> None:
    schema = Schema([Categorical("k", (2**53, 1))])
    table = duck_table(tmp_path, pd.DataFrame({"k": [2**53 + 1, 1]}), schema)
    assert pushdown.compile(Count(where="k == 1"), schema, None, table.types,
                            table._from) is None
    with pytest.raises(SchemaError, match="row 0"):
        table.partial(Count(where="k == 1"))


def test_a_cox_round_whose_sums_per_cell_pass_the_limit_is_pets_own_pass(
        tmp_path: Path) -> None:
    """A categorical covariate of 50 levels makes 49 terms: 1 275 sums a leaving cell, past
    `MAX_AGGREGATES` (PostgreSQL refuses a statement of more than 1 664 columns); with 10
    levels it compiles, and both equal pet's pass."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"t": rng.uniform(0, 10, 200), "e": rng.integers(0, 2, 200) == 1,
                          "c": rng.integers(0, 50, 200).astype(str)})
    for levels, compiles in ((50, False), (10, True)):
        schema = Schema([TimeToEvent("t", event="e", upper=10.0), Boolean("e"),
                         Categorical("c", tuple(str(i) for i in range(levels)))])
        part = frame.assign(c=(frame.c.astype(int) % levels).astype(str))
        table = duck_table(tmp_path, part, schema)
        query = Cox("t", "e", ("c",), grid=5)
        state = CoxState(1, tuple(0.01 * k for k in range(levels - 1)))
        plan = pushdown.compile(query, schema, state, table.types, table._from)
        assert (plan is not None) == compiles
        same(table.partial(query, state), FrameTable(part, schema).partial(query, state))


def test_a_request_too_large_to_compile_well_is_pets_own_pass(tmp_path: Path) -> None:
    """A covariance of 63 columns would need 2 016 aggregates: past `MAX_AGGREGATES` the
    site serves it with its own pass; a smaller one writes its filter once."""
    columns = [f"x{i}" for i in range(63)]
    schema = Schema([Continuous(c, 0, 100, nullable=True) for c in columns])
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.uniform(0, 100, (50, 63)), columns=columns)
    table = duck_table(tmp_path, frame, schema)
    where = " or ".join(f"{c} > {i}" for i, c in enumerate(columns))
    wide = Covariance(tuple(columns), where=where)
    assert pushdown.compile(wide, schema, None, table.types, table._from) is None
    same(table.partial(wide), FrameTable(frame, schema).partial(wide))
    narrow = Covariance(tuple(columns[:10]), where=where)
    plan = pushdown.compile(narrow, schema, None, table.types, table._from)
    assert table.sql(plan.select).count("> CAST('62.0' AS DOUBLE)") == 1
    same(table._pushed(plan), FrameTable(frame, schema).partial(narrow))


def test_a_grid_finer_than_the_doubles_near_its_bounds_is_pets_own_pass(
        tmp_path: Path) -> None:
    """Near 10¹⁵ a thousandth is finer than the spacing of doubles: numpy's grid repeats
    edges, which no division finds, so the engine leaves the query to pet's pass."""
    schema = Schema([Continuous("x", 1e15, 1e15 + 1)])
    frame = pd.DataFrame({"x": [1e15, 1e15 + 0.5, 1e15 + 1]})
    table = duck_table(tmp_path, frame, schema)
    fine = Quantiles("x", bins=1000)
    assert pushdown.compile(fine, schema, None, table.types, table._from) is None
    same(table.partial(fine), FrameTable(frame, schema).partial(fine))


def test_a_logistic_round_on_well_fitted_rows_keeps_every_digit(engine: SqlTable,
                                                                  tmp_path: Path) -> None:
    """Where μ is within 10⁻¹⁵ of 1, 1 − μ comes from its own logarithm and log(1 + z)
    keeps its digits: every element of the engine's round equals pet's to 1e-12 of
    itself, not only of the round's largest element."""
    schema = Schema([Boolean("y"), Continuous("a", -1, 1)])
    frame = pd.DataFrame({"y": [True] * 1000, "a": np.linspace(-1, 1, 1000)})
    table = duck_table(tmp_path, frame, schema) if isinstance(engine, DuckDBTable) else None
    if table is None:
        postgres.load(engine._dsn, "separated", frame)
        table = PostgresTable(engine._dsn, Relation("separated"), schema)
    query = LogisticRegression("y", ("a",))
    for intercept in (10.0, 27.6, 34.0):
        state = query.state_type(1, (intercept, 0.5))
        pushed = table._pushed(table._tuned(pushdown.compile(query, schema, state,
                                                               table.types, table._from)))
        expected = FrameTable(frame, schema).partial(query, state)
        np.testing.assert_allclose(pushed, expected, rtol=1e-12, atol=0)


ORDERED = Schema([Continuous("x", -1, 1)])
"""A column that its scaling leaves as it is (center 0, half-width 1)."""


def ordered_frame() -> pd.DataFrame:
    """1, then 2000 values of 2^-53: added in the order read, each of them is lost
    against the 1 (1 + 2^-53 rounds back to 1), where the exact sum is 1 + 2000·2^-53."""
    return pd.DataFrame({"x": [1.0] + [2.0**-53] * 2000})


def loses_nothing_to_order(table: SqlTable) -> None:
    """The engine's sum is the exact one (math.fsum), rounded once."""
    exact = math.fsum(ordered_frame().x)
    assert exact - 1 > 2e-13
    assert abs(table.partial(Sum("x"))[-1] - exact) <= 2**-52


def test_an_engines_sum_loses_nothing_to_the_order_it_adds_in(engine: SqlTable,
                                                              tmp_path: Path) -> None:
    """DuckDB's compensated sum and PostgreSQL's split one (`pushdown.exact_sums`)."""
    if isinstance(engine, DuckDBTable):
        loses_nothing_to_order(duck_table(tmp_path, ordered_frame(), ORDERED))
        return
    postgres.load(engine._dsn, "ordered", ordered_frame())
    loses_nothing_to_order(PostgresTable(engine._dsn, Relation("ordered"), ORDERED))


def test_the_checks_and_the_cells_are_one_statement(engine: SqlTable,
                                                    lung3: Workload) -> None:
    """What the checks validate is what the cells count: one statement, one snapshot
    of the rows (two statements let a row inserted between them be counted unchecked)."""
    statements = []
    run, whole = engine._run, engine._whole

    def counted(statement: exp.Expression, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        statements.append(statement)
        return run(statement, chunk_rows)

    def counted_whole(statement: exp.Select) -> pa.Table:
        statements.append(statement)
        return whole(statement)

    engine._run, engine._whole = counted, counted_whole  # type: ignore[method-assign]
    try:
        for query in (Quantiles("age"), KaplanMeier("time", "dead", grid=20),
                      Contingency(("sex", "dead"))):
            statements.clear()
            assert engine.partial(query) is not None and len(statements) == 1
    finally:
        del engine._run, engine._whole


def test_a_postgres_numeric_beyond_decimal128_is_read(dsn: str) -> None:
    """A NUMERIC of 10⁻³²⁰ has no Arrow decimal: it arrives as the double pet reads."""
    with psycopg.connect(dsn) as connection:
        connection.execute("CREATE TABLE tiny (x numeric, k bigint)")
        connection.execute("INSERT INTO tiny VALUES (1e-320, 1), (0.5, 2)")
    schema = Schema([Continuous("x", 0, 1), Integer("k", 0, 9)])
    table = PostgresTable(dsn, Relation("tiny"), schema)
    frame = pd.DataFrame({"x": [1e-320, 0.5], "k": [1, 2]})
    query = Mean("x")
    same(table.partial(query), FrameTable(frame, schema).partial(query))
    assert table.to_frame().x.tolist() == [1e-320, 0.5]


def test_a_poisson_exposure_of_zero_is_refused_by_pets_reader(tmp_path: Path,
                                                               dsn: str) -> None:
    """A row with no person-time makes the engine's log rate NaN, so pet's own pass reads
    the rows and refuses it by name, as it does for a file; without it the engine
    answers."""
    frame = pd.DataFrame({"x": [0.5, 1.0, -2.0], "k": [1, 2, 3], "g": ["a", "b", None],
                          "flag": pd.array([True, None, False], dtype="boolean"),
                          "t": [0.5, 2.0, 0.0], "b": [True, False, True]})
    postgres.load(dsn, "exposure", frame)
    query = PoissonRegression("k", ("x",), exposure="t")
    state = a_round(query, SCHEMA)
    for table in (duck_table(tmp_path, frame, SCHEMA),
                  PostgresTable(dsn, Relation("exposure"), SCHEMA)):
        plan = pushdown.compile(query, SCHEMA, state, table.types, table._from)
        assert plan is not None and table._pushed(plan) is None
        with pytest.raises(QueryError, match="exposure 't' is <= 0"):
            table.partial(query, state)
        kept = PoissonRegression("k", ("x",), exposure="t", where="t > 0")
        same(table.partial(kept, state), FrameTable(frame, SCHEMA).partial(kept, state))
