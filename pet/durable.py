"""A SQLite file that keeps every write whose call returned, shared by threads and
processes: the storage under each site's privacy ledger, release store and audit log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


class DurableFile:
    """One SQLite file with a rollback journal and `synchronous=FULL` (a write that
    returned survives a kill -9 and a power cut); every operation opens its own
    connection, so any thread or process may use it, and writes take the write lock
    first (BEGIN IMMEDIATE).

    The rollback journal (not WAL) is what lets one transaction span two files — a
    site's ledger and its audit log (`transaction(attach=...)`) — atomically: SQLite
    commits attached databases through a super-journal, all or none, even when the
    process is killed mid-commit; in WAL mode each file would commit on its own."""

    def __init__(self, path: str | Path, schema: str, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connection() as db:
            db.execute("PRAGMA journal_mode=DELETE")
            db.executescript(schema)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (and the schema), closed after the block."""
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self, *, attach: DurableFile | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its start; rolled back on
        any error, so a refused or failed write records nothing. With `attach`, that
        other file's tables join the same transaction (unless it is this very file)."""
        with self.connection() as db:
            if attach is not None and attach.path.resolve() != self.path.resolve():
                db.execute("ATTACH DATABASE ? AS attached", (str(attach.path),))
                db.execute("PRAGMA attached.synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def now() -> str:
    """The current time as stored in every durable file: ISO 8601 in UTC, to the µs."""
    return datetime.now(UTC).isoformat(timespec="microseconds")
