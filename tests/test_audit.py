"""The audit log: entries read back as recorded, the database refuses edits, tampering
breaks a SHA-256 chain that anyone can recompute, and concurrent writers from threads and
processes keep one unbroken chain."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import pet.audit
from pet.audit import AuditEntry, AuditError, AuditLog, entries_json, format_entries

FIELDS = ("index", "at", "analyst", "request", "query", "backend", "epsilon", "delta",
          "outcome", "detail", "digest")
COLUMNS = ", ".join(("idx", *FIELDS[1:]))


@pytest.fixture()
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.sqlite")


def _record(log: AuditLog, count: int, analysts: tuple[str, ...] = ("alice",)) -> None:
    for i in range(count):
        log.record(analyst=analysts[i % len(analysts)], request=f"r-{i + 1}",
                   query=f"Mean(age) #{i + 1}", backend="dp", epsilon=0.1, delta=1e-7,
                   outcome="answered")


def _raw(log: AuditLog, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(log.path) as db:
        return db.execute(sql, params).fetchall()


def _tamper(log: AuditLog, *statements: str) -> None:
    """Run statements with the append-only triggers dropped, as someone with write access
    to the file could."""
    db = sqlite3.connect(log.path, isolation_level=None)
    try:
        for trigger in ("entries_no_update", "entries_no_delete", "entries_append_only"):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


def _digest(previous: str, row: tuple[Any, ...]) -> str:
    body = dict(zip(FIELDS[:-1], row[:-1], strict=True))
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((previous + canonical).encode("utf-8")).hexdigest()


def test_entries_read_back_as_recorded_in_order(log: AuditLog) -> None:
    first = log.record(analyst="alice", request="r-1", query="Count()", backend="plaintext",
                       outcome="answered")
    second = log.record(analyst="bob", request="r-2", query="Mean(age)", backend="dp",
                        epsilon=0.5, delta=1e-6, outcome="refused",
                        detail="budget exhausted for dataset 'lung'")
    assert [first.index, second.index] == [1, 2]
    assert (second.analyst, second.epsilon, second.delta, second.detail) == (
        "bob", 0.5, 1e-6, "budget exhausted for dataset 'lung'")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", first.at)
    assert first.at <= second.at
    assert log.entries() == [first, second]
    assert _raw(log, "SELECT idx, query, outcome FROM entries ORDER BY idx") == [
        (1, "Count()", "answered"), (2, "Mean(age)", "refused")]

    reopened = AuditLog(log.path)
    assert reopened.entries() == [first, second]
    third = reopened.record(analyst="alice", request="r-3", query="Sum(age)", backend="he",
                            outcome="failed", detail="site 2 timed out")
    assert third.index == 3 and reopened.verify() == 3


def test_entries_filter_by_analyst_time_and_count(log: AuditLog) -> None:
    _record(log, 5, analysts=("alice", "bob"))
    every = log.entries()

    def indices(**filters: Any) -> list[int]:
        return [e.index for e in log.entries(**filters)]

    assert indices(analyst="alice") == [1, 3, 5]
    assert indices(analyst="carol") == []
    assert indices(limit=2) == [4, 5]
    assert indices(analyst="bob", limit=1) == [4]
    assert indices(limit=0) == []
    assert indices(limit=9) == [1, 2, 3, 4, 5]
    assert indices(since=every[2].at) == [3, 4, 5]
    moment = datetime.fromisoformat(every[2].at)
    elsewhere = moment.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert indices(since=elsewhere) == [3, 4, 5]  # the same instant at another offset
    assert indices(since=every[0].at[:10]) == [1, 2, 3, 4, 5]  # a date: midnight UTC
    assert indices(since=(moment + timedelta(days=1)).isoformat()) == []
    assert indices(analyst="alice", since=every[2].at, limit=1) == [5]


def test_the_database_refuses_updates_deletes_and_replacements(log: AuditLog) -> None:
    _record(log, 3)
    before = _raw(log, "SELECT * FROM entries ORDER BY idx")
    db = sqlite3.connect(log.path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*cannot be updated"):
            db.execute("UPDATE entries SET epsilon = 0 WHERE idx = 2")
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*cannot be deleted"):
            db.execute("DELETE FROM entries WHERE idx = 2")
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*added at the end"):
            db.execute(f"INSERT OR REPLACE INTO entries ({COLUMNS}) SELECT idx, at, analyst, "
                       "request, 'Count()', backend, epsilon, delta, outcome, detail, digest "
                       "FROM entries WHERE idx = 2")
    finally:
        db.close()
    assert _raw(log, "SELECT * FROM entries ORDER BY idx") == before
    assert log.verify() == 3


def test_an_altered_entry_breaks_the_chain_at_that_entry(log: AuditLog) -> None:
    _record(log, 5)
    assert log.verify() == 5
    _tamper(log, "UPDATE entries SET epsilon = 0 WHERE idx = 3")
    with pytest.raises(AuditError, match=r"entry 3 does not match its digest"):
        log.verify()

    # Rewriting entry 3's digest to fit only moves the evidence to entry 4.
    rows = _raw(log, f"SELECT {COLUMNS} FROM entries WHERE idx IN (2, 3) ORDER BY idx")
    forged = _digest(rows[0][-1], rows[1])
    _tamper(log, f"UPDATE entries SET digest = '{forged}' WHERE idx = 3")
    with pytest.raises(AuditError, match=r"entry 4 does not match its digest"):
        log.verify()


def test_a_removed_or_forged_entry_is_detected(tmp_path: Path) -> None:
    removed = AuditLog(tmp_path / "removed.sqlite")
    _record(removed, 5)
    _tamper(removed, "DELETE FROM entries WHERE idx = 3")
    with pytest.raises(AuditError, match=r"entry 3 is missing or out of order"):
        removed.verify()

    forged = AuditLog(tmp_path / "forged.sqlite")
    _record(forged, 2)
    _tamper(forged, f"INSERT INTO entries ({COLUMNS}) VALUES (3, '2026-01-01T00:00:00.000000"
                    "+00:00', 'mallory', 'r-x', 'Count()', 'plaintext', 0, 0, 'answered', "
                    f"'', '{'f' * 64}')")
    with pytest.raises(AuditError, match=r"entry 3 does not match its digest"):
        forged.verify()


def test_each_digest_is_sha256_of_the_previous_digest_and_the_entry(log: AuditLog) -> None:
    log.record(analyst="ana", request="r-1", query="Mean(âge)", backend="dp", epsilon=1,
               outcome="answered", detail="ρ-zCDP → (ε, δ)")
    _record(log, 3)
    rows = _raw(log, f"SELECT {COLUMNS} FROM entries ORDER BY idx")
    previous = "0" * 64
    for row in rows:
        assert row[-1] == _digest(previous, row)
        previous = row[-1]
    assert [e.digest for e in log.entries()] == [row[-1] for row in rows]
    assert log.verify() == 4


# Runs in spawned processes. It loads pet.audit without running pet/__init__.py, whose
# imports (opendp, torch) would cost each process seconds of start-up.
_APPEND_IN_CHILD = """
import sys, types
package = types.ModuleType("pet")
package.__path__ = [root]
sys.modules["pet"] = package
from pet.audit import AuditLog
log = AuditLog(path)
for i in range(count):
    log.record(analyst=writer, request=f"{writer}-{i}", query="Count()", backend="mpc",
               outcome="answered")
"""


def _append(path: Path, writer: str, count: int) -> None:
    log = AuditLog(path)
    for i in range(count):
        log.record(analyst=writer, request=f"{writer}-{i}", query="Count()", backend="he",
                   outcome="answered")


def test_threads_and_processes_appending_together_keep_one_chain(log: AuditLog) -> None:
    context = multiprocessing.get_context("spawn")
    root = str(Path(pet.audit.__file__).parent)
    processes = [context.Process(target=exec, args=(_APPEND_IN_CHILD, {
        "root": root, "path": str(log.path), "writer": f"process-{k}", "count": 30}))
        for k in range(3)]
    for process in processes:
        process.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(_append, [log.path] * 4, [f"thread-{k}" for k in range(4)], [50] * 4))
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0, 0]

    rows = _raw(log, "SELECT idx, analyst, request FROM entries ORDER BY idx")
    assert [r[0] for r in rows] == list(range(1, 4 * 50 + 3 * 30 + 1))
    assert Counter(r[1] for r in rows) == {
        **{f"thread-{k}": 50 for k in range(4)}, **{f"process-{k}": 30 for k in range(3)}}
    for writer in {r[1] for r in rows}:  # each writer's entries in the order it made them
        mine = [r[2] for r in rows if r[1] == writer]
        assert mine == [f"{writer}-{i}" for i in range(len(mine))]
    assert log.verify() == len(rows)


@pytest.mark.parametrize(("change", "field"), [
    ({"analyst": ""}, "analyst"),
    ({"request": "  "}, "request"),
    ({"query": None}, "query"),
    ({"backend": ""}, "backend"),
    ({"outcome": "ok"}, "outcome"),
    ({"detail": None}, "detail"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"epsilon": "1"}, "epsilon"),
    ({"delta": float("inf")}, "delta"),
    ({"delta": 2.0}, "delta"),
])
def test_bad_arguments_name_the_field_and_record_nothing(
        log: AuditLog, change: dict[str, Any], field: str) -> None:
    arguments = {"analyst": "alice", "request": "r-1", "query": "Count()",
                 "backend": "plaintext", "outcome": "answered", **change}
    with pytest.raises(AuditError, match=rf"^{field} must be"):
        log.record(**arguments)
    assert _raw(log, "SELECT COUNT(*) FROM entries") == [(0,)]


def test_bad_filters_name_the_filter(log: AuditLog) -> None:
    with pytest.raises(AuditError, match=r"^limit must be"):
        log.entries(limit=-1)
    with pytest.raises(AuditError, match=r"^since must be an ISO-8601"):
        log.entries(since="yesterday")


def test_the_table_and_the_json_show_every_entry(log: AuditLog) -> None:
    assert format_entries([]) == "no audit entries"
    assert json.loads(entries_json([])) == []
    log.record(analyst="alice", request="r-1", query="Histogram(stage)", backend="he",
               outcome="answered")
    log.record(analyst="bob", request="r-2", query="Mean(age)", backend="dp", epsilon=0.5,
               delta=1e-6, outcome="refused", detail="budget exhausted")
    entries = log.entries()

    lines = format_entries(entries).splitlines()
    assert len(lines) == 2 + len(entries)
    assert lines[0].split() == ["#", "time", "analyst", "backend", "ε", "δ", "outcome",
                                "query", "detail"]
    for line, entry in zip(lines[2:], entries, strict=True):
        assert entry.query in line and entry.outcome in line and entry.analyst in line
    assert "budget exhausted" in lines[3] and "0.5" in lines[3]
    assert len({line.index("outcome") for line in lines[:1]} |
               {line.index(e.outcome) for line, e in zip(lines[2:], entries, strict=True)}) == 1

    parsed = json.loads(entries_json(entries))
    raw = _raw(log, f"SELECT {COLUMNS} FROM entries ORDER BY idx")
    assert parsed == [dict(zip(FIELDS, row, strict=True)) for row in raw]
    assert [AuditEntry(**item) for item in parsed] == entries
