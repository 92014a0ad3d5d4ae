"""A source on a real local Spark session (Java 17): every query equals pet's own pass
on the same rows, whether Spark computes it or streams the rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pet.errors import SchemaError
from pet.queries import Cox, Mean
from pet.queries.base import Query
from pet.sources import Relation, SourceError, SparkTable, spark_session
from pet.table import FrameTable
from pet.workloads import Workload
from tests.test_sources import (
    ORDERED,
    PUSHED,
    STREAMED,
    WINDOWED,
    computes,
    leaves_the_sites_sums,
    loses_nothing_to_order,
    ordered_frame,
    same,
    windowed,
)

MASTER = "local[1]"


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    session = spark_session(MASTER)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def lung_frame(lung3: Workload) -> pd.DataFrame:
    return lung3.pooled()


@pytest.fixture(scope="module")
def on_file(spark: object, tmp_path_factory: pytest.TempPathFactory,
            lung_frame: pd.DataFrame, lung3: Workload) -> SparkTable:
    path = tmp_path_factory.mktemp("spark") / "lung.parquet"
    lung_frame.to_parquet(path)
    return SparkTable(MASTER, Relation(parquet=path), lung3.schema)


@pytest.mark.parametrize("query", PUSHED, ids=Query.describe)
def test_spark_computes_pets_partial(on_file: SparkTable, lung_frame: pd.DataFrame,
                                     query: Query) -> None:
    computes(on_file, lung_frame, query)


@pytest.mark.parametrize("query", STREAMED, ids=Query.describe)
def test_other_queries_run_on_the_rows_spark_streams(on_file: SparkTable,
                                                     lung_frame: pd.DataFrame,
                                                     lung3: Workload, query: Query) -> None:
    state = query.initial_state(lung3.schema)
    same(on_file.partial(query, state),
         FrameTable(lung_frame, lung3.schema).partial(query, state))


def test_a_view_and_the_sites_own_select(spark, on_file: SparkTable, lung3: Workload,
                                         lung_frame: pd.DataFrame) -> None:
    spark.createDataFrame(lung_frame).createOrReplaceTempView("patients")
    view = SparkTable(MASTER, Relation("patients"), lung3.schema)
    assert view.n_rows == len(lung_frame)
    older = SparkTable(MASTER, Relation(sql="SELECT * FROM patients WHERE age > 60"),
                       lung3.schema)
    same(older.partial(Mean("age")), FrameTable(
        lung_frame[lung_frame.age > 60], lung3.schema).partial(Mean("age")))


def test_sparks_sum_loses_nothing_to_the_order_it_adds_in(spark, tmp_path: Path) -> None:
    """Spark's SUM adds in the order it reads; split (`pushdown.exact_sums`), it is
    exact."""
    ordered_frame().to_parquet(tmp_path / "ordered.parquet")
    loses_nothing_to_order(SparkTable(MASTER, Relation(parquet=tmp_path / "ordered.parquet"),
                                      ORDERED))


def test_the_sites_own_sums_are_left_as_the_site_wrote_them(spark, lung3: Workload,
                                                            lung_frame: pd.DataFrame) -> None:
    """The split of pet's sums (`pushdown.exact_sums`) leaves the SUMs of the site's own
    SELECT alone: a window SUM rewritten does not parse, and the query would quietly
    stream instead of running on Spark."""
    spark.createDataFrame(lung_frame).createOrReplaceTempView("patients")
    leaves_the_sites_sums(SparkTable(MASTER, Relation(sql=WINDOWED), windowed(lung3.schema)),
                          lung_frame)


@pytest.mark.parametrize("name", ['patients`; DROP TABLE patients; --', "no_such_table"])
def test_a_table_name_is_an_identifier(spark, lung3: Workload, name: str) -> None:
    with pytest.raises(SourceError):
        SparkTable(MASTER, Relation(name), lung3.schema)


def test_a_bad_value_is_named_with_its_row(spark, tmp_path: Path, lung3: Workload,
                                           lung_frame: pd.DataFrame) -> None:
    frame = lung_frame.copy()
    frame.loc[5, "wt_loss"] = 500.0
    frame.to_parquet(tmp_path / "bad.parquet")
    table = SparkTable(MASTER, Relation(parquet=tmp_path / "bad.parquet"), lung3.schema)
    with pytest.raises(SchemaError, match=r"column 'wt_loss', row 5: value 500.0 is above"):
        table.partial(Mean("wt_loss"))


def test_compiled_rounds_do_not_pile_up_on_the_driver(spark, on_file: SparkTable,
                                                      lung3: Workload) -> None:
    """A site answers rounds for as long as it serves: the driver's heap after a
    collection stays where it was (a result read through `toLocalIterator` kept about
    6.5 MiB a Cox round, and a few hundred rounds exhausted a default driver)."""
    query = Cox("time", "dead", ("age", "sex"))
    state = query.initial_state(lung3.schema)
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    runtime = jvm.java.lang.Runtime.getRuntime()

    def heap_mib() -> float:
        jvm.java.lang.System.gc()
        return (runtime.totalMemory() - runtime.freeMemory()) / 2**20

    for _ in range(2):  # the first rounds load classes and caches once
        on_file.partial(query, state)
    before = heap_mib()
    for _ in range(5):
        on_file.partial(query, state)
    assert heap_mib() - before < 12
