"""A site's append-only audit log: who asked what, when, under which backend, at what
privacy cost, in a SQLite file the site keeps for itself.

Each entry is hash-chained to the one before it, so that editing, removing or reordering
a past entry is evident to anyone who recomputes the chain: an entry's digest is the hex
SHA-256 of the UTF-8 bytes of the previous entry's digest (64 zeros for the first)
followed by the canonical JSON of the entry's other fields (keys sorted, no whitespace,
non-ASCII characters as they are). The database itself refuses UPDATE and DELETE, and
accepts an INSERT only as the next index, by triggers; the chain is the evidence if
someone goes around them. The chain cannot show that entries were cut off the end, nor
that the whole chain was rewritten: keep the latest digest somewhere else to detect that.

Writers take SQLite's write lock at the start of the transaction (BEGIN IMMEDIATE) and
read the previous digest inside it, so threads and processes appending together keep one
unbroken chain; synchronous=FULL makes an entry whose call returned durable. `append_in`
appends inside a caller's transaction that has this log attached, so that a charged
release and its entry commit together (`pet.releases`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from pet.durable import DurableFile, now
from pet.errors import PetError

OUTCOMES = ("answered", "refused", "failed")
"""What became of a request: answered, refused (by a budget or disclosure control), or
failed (an error)."""
GENESIS = "0" * 64
"""The digest the first entry chains to."""

_COLUMNS = "idx, at, analyst, request, query, backend, epsilon, delta, outcome, detail, digest"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    analyst TEXT NOT NULL,
    request TEXT NOT NULL,
    query TEXT NOT NULL,
    backend TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0),
    outcome TEXT NOT NULL CHECK (outcome IN {OUTCOMES!r}),
    detail TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_analyst ON entries (analyst);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be updated');
END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted');
END;
-- INSERT OR REPLACE deletes the row it replaces without firing the delete trigger;
-- allowing only the next index closes that way round, and keeps indices contiguous.
CREATE TRIGGER IF NOT EXISTS entries_append_only BEFORE INSERT ON entries
WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx), 0) + 1 FROM entries) BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: entries are added at the end');
END;
"""


class AuditError(PetError):
    """An audit entry the log refuses, a bad filter, or evidence of tampering."""


@dataclass(frozen=True)
class AuditEntry:
    """One request as the site saw it, and its place in the hash chain."""

    index: int
    at: str
    analyst: str
    request: str
    query: str
    backend: str
    epsilon: float
    delta: float
    outcome: str
    detail: str
    digest: str


class AuditLog(DurableFile):
    """The audit log in one SQLite file; safe to use from many threads and processes
    (each operation opens its own connection)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        super().__init__(path, _SCHEMA, timeout_s=timeout_s)

    def record(self, *, analyst: str, request: str, query: str, backend: str,
               epsilon: float = 0.0, delta: float = 0.0, outcome: str,
               detail: str = "") -> AuditEntry:
        """Append one entry, chained to the last one in the same transaction."""
        with self.transaction() as db:
            return self.append_in(db, analyst=analyst, request=request, query=query,
                                  backend=backend, epsilon=epsilon, delta=delta,
                                  outcome=outcome, detail=detail)

    def append_in(self, db: sqlite3.Connection, *, analyst: str, request: str, query: str,
                  backend: str, epsilon: float = 0.0, delta: float = 0.0, outcome: str,
                  detail: str = "") -> AuditEntry:
        """`record` inside the caller's transaction (on this log, or with it attached)."""
        texts = {"analyst": analyst, "request": request, "query": query, "backend": backend}
        for name, value in texts.items():
            if not isinstance(value, str) or not value.strip():
                raise AuditError(f"{name} must be a non-empty string, got {value!r}")
        if outcome not in OUTCOMES:
            raise AuditError(f"outcome must be one of {', '.join(OUTCOMES)}; got {outcome!r}")
        if not isinstance(detail, str):
            raise AuditError(f"detail must be a string (may be empty), got {detail!r}")
        amounts = {"epsilon": _amount(epsilon, "epsilon"), "delta": _amount(delta, "delta")}
        last = db.execute("SELECT idx, digest FROM entries ORDER BY idx DESC LIMIT 1").fetchone()
        index, previous = (last[0] + 1, last[1]) if last else (1, GENESIS)
        draft = AuditEntry(index=index, at=now(), **texts, **amounts, outcome=outcome,
                           detail=detail, digest="")
        entry = replace(draft, digest=chain_digest(previous, draft))
        db.execute(f"INSERT INTO entries ({_COLUMNS}) VALUES "
                   f"({', '.join('?' * len(fields(AuditEntry)))})", astuple(entry))
        return entry

    def entries(self, *, analyst: str | None = None, since: str | None = None,
                limit: int | None = None) -> list[AuditEntry]:
        """The entries, oldest first: only the analyst's, only those at or after `since`
        (ISO-8601; a time without offset is read as UTC), only the most recent `limit`."""
        where, params = [], []
        if analyst is not None:
            where.append("analyst = ?")
            params.append(analyst)
        if since is not None:
            where.append("at >= ?")
            params.append(_utc(since))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise AuditError(f"limit must be a whole number >= 0, got {limit!r}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.connection() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM entries {clause} ORDER BY idx DESC "
                              "LIMIT ?", [*params, -1 if limit is None else limit]).fetchall()
        return [AuditEntry(*row) for row in reversed(rows)]

    def verify(self) -> int:
        """Recompute the chain from the first entry; return how many entries it holds,
        or raise AuditError naming the first entry that is missing, out of order or
        altered."""
        previous, count = GENESIS, 0
        with self.connection() as db:
            for row in db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY idx"):
                entry, count = AuditEntry(*row), count + 1
                if entry.index != count:
                    raise AuditError(f"audit log entry {count} is missing or out of order "
                                     f"(entry {entry.index} stands in its place): the log "
                                     "has been tampered with")
                if entry.digest != chain_digest(previous, entry):
                    raise AuditError(f"audit log entry {count} does not match its digest: "
                                     "it, or the one before it, has been altered")
                previous = entry.digest
        return count


def chain_digest(previous: str, entry: AuditEntry) -> str:
    """The digest that chains `entry` (its fields other than `digest`) to `previous`."""
    body = {k: v for k, v in asdict(entry).items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    return hashlib.sha256((previous + canonical).encode("utf-8")).hexdigest()


def format_entries(entries: Sequence[AuditEntry]) -> str:
    """A fixed-width text table of the entries, for people reading the log."""
    if not entries:
        return "no audit entries"
    header = ("#", "time", "analyst", "backend", "ε", "δ", "outcome", "query", "detail")
    rows = [(str(e.index), e.at[:19] + "Z", e.analyst, e.backend, f"{e.epsilon:g}",
             f"{e.delta:g}", e.outcome, _clip(e.query, 48), _clip(e.detail, 60))
            for e in entries]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {0, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def entries_json(entries: Sequence[AuditEntry]) -> str:
    """The entries as a JSON array of objects, one per entry with every field."""
    return json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=False)


def _amount(value: float, name: str) -> float:
    """A privacy cost as a float (so that its JSON form is the same after a round trip
    through SQLite), refused unless finite, >= 0 and, for δ, at most 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise AuditError(f"{name} must be a finite number >= 0, got {value!r}")
    if name == "delta" and value > 1:
        raise AuditError(f"delta must be at most 1, got {value!r}")
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


def _utc(since: str) -> str:
    """`since` in the form entries are stored in, so that strings compare as times."""
    try:
        moment = datetime.fromisoformat(since)
    except (TypeError, ValueError):
        raise AuditError(f"since must be an ISO-8601 date or time, such as "
                         f"2026-11-23T23:10:00+00:00; got {since!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
