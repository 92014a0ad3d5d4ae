"""Cohort definitions over OMOP CDM databases: the study table a definition extracts from
a synthetic CDM database (on DuckDB and on a real PostgreSQL server) equals the rows the
database was written from, and queries on it equal the pooled reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import KaplanMeierFitter

from benchmarks import postgres
from pet.errors import SchemaError
from pet.omop import CohortDefinition
from pet.queries import KaplanMeier, Mean
from pet.sources import DuckDBTable, PostgresTable, Relation
from pet.workloads import Workload
from pet.workloads.omop import OmopSite, definition, omop_site, omop_workload
from services.config import read_site
from tests.conftest import NO_CELL_LIMIT

ROWS, SEED = 400, 11


@pytest.fixture(scope="module")
def site() -> OmopSite:
    return omop_site(ROWS, SEED, 0)


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory, site: OmopSite) -> Path:
    return site.write_duckdb(tmp_path_factory.mktemp("omop") / "cdm.duckdb")


@pytest.fixture(scope="module")
def dsn(site: OmopSite) -> Iterator[str]:
    with postgres.server() as found:
        for name, frame in site.tables.items():
            postgres.load(found, name, frame)
        yield found


def same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal column by column: whole numbers, categories and flags exactly, measurements
    as the same doubles, missing where missing."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    for name in expected.columns:
        a, b = got[name].to_numpy(), expected[name].to_numpy()
        if b.dtype.kind == "f":
            np.testing.assert_array_equal(a.astype(float), b, err_msg=name)
        else:
            assert (a.astype(b.dtype) == b).all(), name


def test_the_definition_extracts_the_rows_the_database_was_written_from(
        duck: Path, site: OmopSite) -> None:
    table = DuckDBTable(duck, Relation(sql=definition().sql("duckdb")), definition().schema())
    same_rows(table.to_frame(), site.rows)
    assert table.n_rows == ROWS  # the people outside the cohort are not rows


def test_postgres_extracts_the_same_rows(dsn: str, site: OmopSite) -> None:
    table = PostgresTable(dsn, Relation(sql=definition().sql("postgres")),
                          definition().schema())
    same_rows(table.to_frame(), site.rows)


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_queries_on_the_cohort_equal_the_reference(request: pytest.FixtureRequest,
                                                   site: OmopSite, engine: str) -> None:
    schema = definition().schema()
    table = (DuckDBTable(request.getfixturevalue("duck"),
                         Relation(sql=definition().sql("duckdb")), schema)
             if engine == "duckdb" else
             PostgresTable(request.getfixturevalue("dsn"),
                           Relation(sql=definition().sql("postgres")), schema))
    study = Workload("omop_cvd", schema, {"site": table}).study(policy=NO_CELL_LIMIT)
    rows = site.rows
    assert study.run(Mean("hba1c", where="diabetes == True")).value == pytest.approx(
        rows.hba1c[rows.diabetes].mean(), rel=1e-12)
    curve = study.run(KaplanMeier("cvd_days", "cvd_event", grid=3653)).value
    fitted = KaplanMeierFitter().fit(rows.cvd_days, rows.cvd_event)
    times = np.array([365.0, 1826.0, 3000.0])
    np.testing.assert_allclose([curve.at(t) for t in times],
                               fitted.survival_function_at_times(times), rtol=1e-12)


def test_dates_stored_as_timestamps_give_the_same_rows(tmp_path: Path,
                                                       site: OmopSite) -> None:
    """DuckDB 2.0.1 compares EXTRACT(YEAR ...) of a stored TIMESTAMP_S column wrongly; the
    definition casts dates first, so a CDM that stores timestamps reads the same."""
    path = tmp_path / "timestamps.duckdb"
    with duckdb.connect(str(path)) as connection:
        for name, frame in site.tables.items():
            connection.register("frame", frame)
            connection.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame')
            connection.unregister("frame")
        assert connection.sql("SELECT typeof(observation_period_end_date) FROM "
                              "observation_period LIMIT 1").fetchall()[0][0] == "TIMESTAMP_S"
    table = DuckDBTable(path, Relation(sql=definition().sql("duckdb")), definition().schema())
    same_rows(table.to_frame(), site.rows)


def test_three_sites_on_omop_through_the_site_configuration(tmp_path: Path) -> None:
    workload = omop_workload(150, 3, SEED, tmp_path)
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump(_definition_spec()))
    tables = {}
    for name in workload.tables:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "name": name, "listen": "127.0.0.1:1", "coordinator": "c",
            "tls": {"cert": "c", "key": "k", "ca": "a"}, "ledger": "l", "audit": "a",
            "data": {"source": "omop", "engine": "duckdb", "cohort": str(cohort),
                     "database": str(tmp_path / f"{name}.duckdb")}}))
        tables[name] = read_site(config).table()
    pooled = pd.concat([omop_site(150, SEED, i).rows for i in range(3)], ignore_index=True)
    study = Workload("omop_cvd", workload.schema, tables).study(policy=NO_CELL_LIMIT)
    assert study.run(Mean("sbp")).value == pytest.approx(pooled.sbp.mean(), rel=1e-12)
    assert tables["site-1"].schema == workload.schema


def _definition_spec() -> dict:
    path = Path(__file__).parents[1] / "pet" / "workloads" / "omop_cvd.yaml"
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(("change", "message"), [
    ({"index": {"domain": "visit", "concepts": [1]}}, "unknown OMOP domain 'visit'"),
    ({"index": {"domain": "condition", "concepts": ["320128; DROP TABLE person"]}},
     "positive whole numbers"),
    ({"index": {"domain": "condition", "concepts": []}}, "need concept ids"),
    ({"covariates": [{"name": "bmi", "domain": "measurement", "concepts": [3038553]}]},
     "plausible lower and upper"),
    ({"covariates": [{"name": "dm", "domain": "condition", "concepts": [1], "lower": 0}]},
     "only a measurement covariate has bounds"),
    ({"covariates": [{"name": "age", "domain": "condition", "concepts": [1]}]}, "repeat"),
    ({"age": [90, 18]}, "age range"),
    ({"outcome": {"domain": "condition", "concepts": [1], "horizon_days": 0}},
     "horizon_days"),
    ({"outcome": None}, "needs name, index and outcome"),
])
def test_a_bad_definition_is_refused_with_a_reason(change: dict, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        CohortDefinition.from_dict({**_definition_spec(), **change})


def test_a_covariate_name_is_a_quoted_identifier(duck: Path, site: OmopSite) -> None:
    spec = _definition_spec()
    spec["covariates"] = [{"name": 'x"; DROP TABLE person; --', "domain": "condition",
                           "concepts": [201826]}]
    odd = CohortDefinition.from_dict(spec)
    table = DuckDBTable(duck, Relation(sql=odd.sql("duckdb")), odd.schema())
    assert table.to_frame()['x"; DROP TABLE person; --'].tolist() == site.rows.diabetes.tolist()
    with duckdb.connect(str(duck), read_only=True) as connection:
        assert connection.sql("SELECT count(*) FROM person").fetchall()[0][0] > ROWS


def test_the_readmes_definition_is_a_valid_one() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```yaml\nname: omop_cvd\n", 1)[1].split("```", 1)[0]
    shown = CohortDefinition.from_dict(yaml.safe_load("name: omop_cvd\n" + block))
    assert shown.schema().names == ("age", "sex", "diabetes", "bp_treated", "hba1c",
                                    "cvd_days", "cvd_event")


@pytest.mark.parametrize("date_type", ["DATE", "TIMESTAMP"])
def test_days_not_times_and_one_row_per_person(tmp_path: Path, date_type: str) -> None:
    """Events compare by day whatever the column's type: an outcome later on the index
    day is not an event at day 0, a covariate recorded that day counts, an outcome on the
    last day of observation counts. Overlapping observation periods give one row,
    followed to the latest end."""
    spec = {"name": "x", "index": {"domain": "condition", "concepts": [1]},
            "covariates": [{"name": "prior", "domain": "condition", "concepts": [3]}],
            "outcome": {"domain": "condition", "concepts": [2], "horizon_days": 3653}}
    path = tmp_path / "cdm.duckdb"
    with duckdb.connect(str(path)) as c:
        c.execute("CREATE TABLE person (person_id INT, year_of_birth INT, "
                  "gender_concept_id INT)")
        c.execute("INSERT INTO person VALUES (1, 1960, 8532), (2, 1960, 8507), "
                  "(3, 1960, 8507)")
        c.execute(f"CREATE TABLE observation_period (person_id INT, "
                  f"observation_period_start_date {date_type}, "
                  f"observation_period_end_date {date_type})")
        c.execute("INSERT INTO observation_period VALUES (1, '2010-01-01', '2021-01-01'), "
                  "(2, '2010-01-01', '2021-01-01'), (3, '2010-01-01', '2021-01-01'), "
                  "(3, '2015-01-01', '2022-01-01')")
        c.execute(f"CREATE TABLE condition_occurrence (person_id INT, "
                  f"condition_concept_id INT, condition_start_date {date_type})")
        c.execute("INSERT INTO condition_occurrence VALUES (1, 1, '2020-01-01 08:00'), "
                  "(1, 2, '2020-01-01 10:00'), (1, 3, '2020-01-01 09:00'), "
                  "(2, 1, '2020-01-01 08:00'), (2, 2, '2021-01-01 10:00'), "
                  "(3, 1, '2020-01-01')")
    cohort = CohortDefinition.from_dict(spec)
    rows = DuckDBTable(path, Relation(sql=cohort.sql("duckdb")), cohort.schema()).to_frame()
    assert rows["prior"].tolist() == [True, False, False]
    assert rows["time"].tolist() == [366, 366, 731]
    assert rows["event"].tolist() == [False, True, False]
