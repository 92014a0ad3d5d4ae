"""A real PostgreSQL server for tests and benchmarks, listening on 127.0.0.1 only: a
fresh cluster in a temporary folder (tests), or one kept in a folder across runs with
its tables (benchmarks, which load 10⁷ rows once).

PostgreSQL refuses to run as root; where this runs as root the server runs as `nobody`
(the folder is given to it), as it would under its own account.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from pet.mpc.parties import free_port

HOST = "127.0.0.1"
USER = "pet"


def _bin(name: str) -> str:
    """A PostgreSQL server program (Debian keeps them out of PATH)."""
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt install postgresql)")
    return found


def _as_server(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@contextmanager
def server() -> Iterator[str]:
    """Start a cluster in a new temporary folder; yield its DSN; stop it and remove the
    folder. The folder sits directly in the temporary directory, where the server's
    account can reach it."""
    with tempfile.TemporaryDirectory(prefix="pet-postgres-") as folder:
        yield from _running(_initialised(Path(folder)))


@contextmanager
def kept(folder: Path) -> Iterator[str]:
    """Start the cluster kept in `folder` (made there on first use); yield its DSN; stop
    it, leaving its tables for the next run. The folder's parents must be open to the
    server's account."""
    folder = folder.resolve()  # the server runs in its data folder
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    yield from _running(data if (data / "PG_VERSION").exists() else _initialised(folder))


def _initialised(folder: Path) -> Path:
    """A new cluster in `folder`/data, owned by the server's account."""
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
    subprocess.run(_as_server([_bin("initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                               "--no-sync"]), check=True, capture_output=True)
    return data


def _running(data: Path) -> Iterator[str]:
    port = free_port(HOST)
    options = f"-p {port} -k {data} -c listen_addresses={HOST} -c fsync=off"
    subprocess.run(_as_server([_bin("pg_ctl"), "-D", str(data), "-o", options, "-l",
                               str(data / "log"), "-w", "start"]), check=True,
                   capture_output=True)
    try:
        yield f"host={HOST} port={port} user={USER} dbname=postgres"
    finally:
        subprocess.run(_as_server([_bin("pg_ctl"), "-D", str(data), "-m", "immediate",
                                   "stop"]), capture_output=True)


PG_TYPES = {"b": "boolean", "i": "bigint", "f": "double precision", "O": "text",
            "M": "date"}


def load(dsn: str, name: str, frame: pd.DataFrame) -> None:
    """Create table `name` with the frame's columns and load its rows with COPY."""
    def rows(copy: psycopg.Copy) -> None:
        for row in frame.astype(object).itertuples(index=False):
            copy.write_row([None if pd.isna(v) else v for v in row])

    _create(dsn, name, [(c, PG_TYPES[frame[c].dtype.kind]) for c in frame.columns],
            sql.SQL(""), rows)


ARROW_TYPES = ((pa.types.is_boolean, "boolean"), (pa.types.is_integer, "bigint"),
               (pa.types.is_floating, "double precision"), (pa.types.is_date, "date"),
               (pa.types.is_timestamp, "timestamp"))


def load_parquet(dsn: str, name: str, path: Path) -> None:
    """Create table `name` with the Parquet file's columns and COPY its rows in, batch by
    batch as CSV (Arrow writes it; a row-by-row COPY of 10⁷ rows takes minutes)."""
    file = pq.ParquetFile(path)

    def batches(copy: psycopg.Copy) -> None:
        for batch in file.iter_batches():
            sink = pa.BufferOutputStream()
            pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False))
            copy.write(sink.getvalue().to_pybytes())

    _create(dsn, name, [(f.name, next((kind for test, kind in ARROW_TYPES if test(f.type)),
                                      "text")) for f in file.schema_arrow],
            sql.SQL(" (FORMAT csv)"), batches)


def _create(dsn: str, name: str, columns: list[tuple[str, str]], options: sql.Composable,
            write: Callable[[psycopg.Copy], None]) -> None:
    """(Re)create table `name` with the (column, type) pairs, COPY its rows in with
    `write`, and ANALYZE it."""
    table = sql.Identifier(name)
    with psycopg.connect(dsn) as connection:
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        connection.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(kind)) for c, kind in columns)))
        with connection.cursor().copy(sql.SQL("COPY {} FROM STDIN{}").format(
                table, options)) as copy:
            write(copy)
        connection.execute(sql.SQL("ANALYZE {}").format(table))


def has_table(dsn: str, name: str) -> bool:
    """Whether the server holds a table `name`."""
    with psycopg.connect(dsn) as connection:
        found = connection.execute("SELECT to_regclass(%s)", [sql.Identifier(name).as_string(
            connection)]).fetchone()
    return found is not None and found[0] is not None
