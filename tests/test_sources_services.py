"""Sites whose configuration names an engine: one on DuckDB, one on a real PostgreSQL
server (its DSN in a file), one on a local Spark session, answering through the real
services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks import postgres
from pet.client import Client
from pet.queries import Histogram, Mean, Variance
from pet.sources import SourceError
from pet.workloads import Workload
from services.config import ConfigError, read_site
from services.local import LocalFederation
from services.status import code_of


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory,
               lung3: Workload) -> Iterator[LocalFederation]:
    folder = tmp_path_factory.mktemp("sources")
    parts = [table.to_frame() for table in lung3.tables.values()]
    database = folder / "site-1.duckdb"
    with duckdb.connect(str(database)) as connection:
        connection.register("frame", parts[0])
        connection.execute("CREATE VIEW IF NOT EXISTS unused AS SELECT 1")
        connection.execute("CREATE TABLE patients AS SELECT * FROM frame")
    parts[2].to_parquet(folder / "site-3.parquet")
    with postgres.server() as dsn:
        postgres.load(dsn, "lung_site_2", parts[1])
        (folder / "dsn").write_text(dsn + "\n")
        data = {
            "site-1": {"source": "duckdb", "database": str(database), "table": "patients",
                       "schema": "lung"},
            "site-2": {"source": "postgres", "dsn_file": str(folder / "dsn"),
                       "sql": "SELECT * FROM lung_site_2", "schema": "lung"},
            "site-3": {"source": "spark", "master": "local[1]",
                       "parquet": str(folder / "site-3.parquet"), "schema": "lung"},
        }
        with LocalFederation(folder, data, site_options={"disclosure": {"min_cell": 1}}) \
                as running:
            yield running


@pytest.fixture(scope="module")
def client(federation: LocalFederation) -> Iterator[Client]:
    with federation.client() as connected:
        yield connected


@pytest.mark.parametrize("backend", ["plaintext", "he", "mpc"])
def test_sites_on_three_engines_answer_as_the_pooled_rows(client: Client, lung3: Workload,
                                                          backend: str) -> None:
    pooled = lung3.pooled()
    with client.study(backend) as study:
        mean = study.run(Mean("age", where="sex == 'female'"))
        variance = study.run(Variance("wt_loss"))
        counts = study.run(Histogram("age", (18, 50, 60, 70, 100)))
    women = pooled[pooled.sex == "female"]
    for result, expected in ((mean, women.age.mean()), (variance, pooled.wt_loss.var())):
        # exact, or within the CKKS / fixed-point error the backend states
        assert abs(result.value - expected) <= result.error_bound + 1e-9 * expected
    assert counts.value.tolist() == np.histogram(pooled.age, (18, 50, 60, 70, 100))[0].tolist()


def site_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "listen": "127.0.0.1:1", "coordinator": "c",
        "tls": {"cert": "c", "key": "k", "ca": "a"}, "data": data,
        "ledger": str(tmp_path / "l"), "audit": str(tmp_path / "a")}))
    return path


@pytest.mark.parametrize(("data", "message"), [
    ({"source": "postgres", "dsn": "host=127.0.0.1 password=x", "table": "t",
      "schema": "lung"}, "may hold a password"),
    ({"source": "postgres", "dsn_env": "PET_TEST_NO_SUCH_VARIABLE", "table": "t",
      "schema": "lung"}, "is not set"),
    ({"source": "postgres", "dsn_file": "/nonexistent/dsn", "table": "t", "schema": "lung"},
     "cannot read /nonexistent/dsn"),
])
def test_a_dsn_comes_from_the_environment_or_a_file(tmp_path: Path, data: dict,
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_site(site_config(tmp_path, data)).table()


def test_relative_files_are_read_from_the_configuration_s_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lung3: Workload) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    lung3.schema.to_file(folder / "schema.yaml")
    frame = lung3.tables["site-1"].to_frame()
    frame.to_csv(folder / "rows.csv", index=False)
    config = folder / "site.yaml"
    config.write_text(yaml.safe_dump({
        "name": "s", "listen": "127.0.0.1:1", "coordinator": "c",
        "tls": {"cert": "c", "key": "k", "ca": "a"}, "ledger": "state/ledger.sqlite",
        "audit": "state/audit.sqlite", "data": {"path": "rows.csv", "schema": "schema.yaml"}}))
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are the configuration's, not the shell's
    site = read_site(config)
    assert site.ledger == folder / "state" / "ledger.sqlite"
    assert site.audit == folder / "state" / "audit.sqlite"
    assert site.table().n_rows == len(frame)


def test_a_ledger_where_pet_once_looked_is_not_started_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative ledger used to be read from the working directory: found there and not
    in the configuration's folder, it is named rather than replaced by an empty one."""
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "site.yaml"
    config.write_text(yaml.safe_dump({
        "name": "s", "listen": "127.0.0.1:1", "coordinator": "c",
        "tls": {"cert": "c", "key": "k", "ca": "a"}, "data": {"workload": "lung"},
        "ledger": "ledger.sqlite", "audit": "audit.sqlite"}))
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="where pet once looked"):
        read_site(config)


@pytest.mark.parametrize(("schema", "message"), [
    ("missing.yaml", "data.schema: cannot read .*missing.yaml"),
    ("no_such_study", "'no_such_study' is neither a schema file"),
])
def test_a_schema_the_site_cannot_find_is_named(tmp_path: Path, schema: str,
                                                message: str) -> None:
    (tmp_path / "rows.csv").write_text("age\n1\n")
    with pytest.raises(ConfigError, match=message):
        read_site(site_config(tmp_path, {"path": "rows.csv", "schema": schema})).table()


def test_a_dsn_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    lung3: Workload) -> None:
    frame = pd.concat([t.to_frame() for t in lung3.tables.values()], ignore_index=True)
    with postgres.server() as dsn:
        postgres.load(dsn, "patients", frame)
        monkeypatch.setenv("PET_TEST_DSN", dsn)
        table = read_site(site_config(tmp_path, {
            "source": "postgres", "dsn_env": "PET_TEST_DSN", "table": "patients",
            "schema": "lung"})).table()
        assert table.n_rows == len(frame)


def test_a_site_whose_database_is_unreachable_is_unavailable() -> None:
    """A source that fails at request time (a database gone) is the site's outage, not a
    bad request: UNAVAILABLE, as an MPC party gone is."""
    assert code_of(SourceError("cannot connect")) == grpc.StatusCode.UNAVAILABLE
