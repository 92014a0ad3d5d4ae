"""A real PostgreSQL server for tests: a fresh cluster in a temporary folder, listening
on 127.0.0.1 only, stopped when the test module is done.

PostgreSQL refuses to run as root; where the tests run as root the server runs as
`nobody` (the folder is given to it), as it would under its own account.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psycopg
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
        data = Path(folder) / "data"
        data.mkdir()
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
            os.chown(data, nobody.pw_uid, nobody.pw_gid)
        yield from _running(data)


def _running(data: Path) -> Iterator[str]:
    subprocess.run(_as_server([_bin("initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                               "--no-sync"]), check=True, capture_output=True)
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
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(PG_TYPES[frame[c].dtype.kind]))
        for c in frame.columns)
    with psycopg.connect(dsn) as connection:
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name),
                                                                   columns))
        copy = sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(name))
        with connection.cursor().copy(copy) as rows:
            for row in frame.astype(object).itertuples(index=False):
                rows.write_row([None if pd.isna(v) else v for v in row])
