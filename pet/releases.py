"""A site's release store: every DP release it made, bound to what determines it, kept
with the charge that paid for it and the audit entry that reports it.

Averaging fresh draws of one release removes its noise, so a request id buys one draw:
the first release under an id binds the id to a digest of what it asked (the backend
session, the query, the dataset), and every release is stored under a digest of all that
determines it (that, the round and its public state, and for a release spending ρ its ρ).
A retry with the same digest gets the stored bytes back — never a new draw — and any
other ask under a used id is refused (`ReleaseError`). A request charged once for many
Gaussian releases (a synthesizer's fit) binds the id to its session alone: each of its
different releases spends ρ from the charge, and a repeated one is the stored one.

Charge, stored release and audit entry commit in one transaction across the ledger's
file (which holds the store) and the audit log's (`DurableFile.transaction(attach=...)`),
before the release leaves: after any number of kill -9, every charge has its audit entry
and every audited cost is the ledger's, never a field of the request.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pet import codec
from pet.audit import AuditLog
from pet.durable import now
from pet.errors import PetError
from pet.ledger import BudgetError, Ledger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    request TEXT NOT NULL,
    dataset TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (request, dataset)
);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    request TEXT NOT NULL,
    dataset TEXT NOT NULL,
    slot TEXT NOT NULL,
    digest TEXT NOT NULL,
    message BLOB NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (request, dataset, slot)
);
"""


MAX_RELEASES = 10_000
"""Releases one request may make (a synthesizer's fit makes hundreds): each is stored, so
a request spending tiny amounts of ρ may not fill the site's disk."""


class ReleaseError(PetError):
    """A request id already used for another release; nothing was released or charged."""


class KeyReuse(PetError):
    """An HE key offered under another backend than the one this site first used it for."""


class ReleasesExhausted(BudgetError):
    """A request past `MAX_RELEASES`; nothing was released or charged."""


@dataclass(frozen=True)
class Ask:
    """Who asks for a release and the public session it belongs to: `session` is a
    canonical text of the backend session (name, (ε, δ), limits, key identity — not the ρ
    of one release), supplied by whoever knows its wire form. `round` numbers the rounds
    of a query, or the releases of a request that makes many: a retry repeats it, and a
    new number is a new release that its ρ pays for."""

    request: str
    session: str
    analyst: str = "(local)"
    round: int = 1


@dataclass(frozen=True)
class Release:
    """One release's place in the store: the request's binding, the slot it fills (its
    round, or its own digest for one of many releases), and its digest."""

    request: str
    dataset: str
    binding: str
    slot: str
    digest: str

    @classmethod
    def of(cls, ask: Ask, dataset: str, query: Any, state: Any,
           rho: float | None) -> Release:
        """The release an ask makes of a query round at a dataset."""
        asked = canonical(query)
        if rho is None:  # one charge for one query: the id is bound to the query
            binding = _digest(ask.session, asked, dataset)
            slot = f"round {ask.round}"
            digest = _digest(binding, ask.round, codec.dumps(state))
        else:  # one charge for many releases: the id is bound to the session
            binding = _digest(ask.session, dataset)
            digest = slot = _digest(binding, asked, repr(float(rho)), ask.round,
                                    codec.dumps(state))
        return cls(ask.request, dataset, binding, slot, digest)


Payment = Callable[[sqlite3.Connection], tuple[float, float, str]]
"""Charges a release inside the store's transaction; the (ε, δ) charged by it (0, 0 when
the request was paid for before) and a note on what it spent, for the audit entry."""


class Releases:
    """The store, in the ledger's file, committing with the ledger and the audit log."""

    def __init__(self, ledger: Ledger, audit: AuditLog | None = None) -> None:
        self.ledger, self.audit = ledger, audit
        self._bound: set[tuple[str, str]] = set()
        with ledger.connection() as db:
            db.executescript(_SCHEMA)

    def bind_keys(self, keys: Sequence[str], backend: str) -> None:
        """Bind the HE keys a contribution is encrypted under to its backend the first
        time, and refuse them under any other: a key the analyst made for `he+dp` decrypts
        only noisy sums, so no one may have this site encrypt an exact partial under it.
        A binding never changes, so one confirmed here is not asked of the file again."""
        if all((key, backend) in self._bound for key in keys):
            return
        with self.ledger.transaction() as db:
            for key in keys:
                db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?)", (key, backend))
                (bound,) = db.execute("SELECT backend FROM keys WHERE key = ?",
                                      (key,)).fetchone()
                if bound != backend:
                    raise KeyReuse(f"this site encrypted under that public key for a {bound} "
                                   f"study; it serves {bound} alone, not {backend}: make a "
                                   "new key for each study")
        self._bound.update((key, backend) for key in keys)

    def stored(self, release: Release) -> bytes | None:
        """The stored bytes of this very release, if it was made; refuses a release the
        request's id or slot is already used for otherwise."""
        with self.ledger.connection() as db:
            return _lookup(db, release)

    def commit(self, release: Release, message: bytes, pay: Payment, *, ask: Ask,
               query: str, backend: str) -> bytes:
        """Record a new release with its charge and audit entry, all or none; the bytes
        to send (those of an identical release stored meanwhile, if one was)."""
        with self.ledger.transaction(attach=self.audit) as db:
            earlier = _lookup(db, release)
            if earlier is not None:
                return earlier
            made = db.execute("SELECT COUNT(*) FROM releases WHERE request = ? AND dataset = ?",
                              (release.request, release.dataset)).fetchone()[0]
            if made >= MAX_RELEASES:
                raise ReleasesExhausted(f"request {release.request!r} has made {made} releases "
                                        f"at dataset {release.dataset!r}, the most one request "
                                        "may; start a new request")
            db.execute("INSERT OR IGNORE INTO bindings VALUES (?, ?, ?)",
                       (release.request, release.dataset, release.binding))
            epsilon, delta, note = pay(db)
            db.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?)",
                       (release.request, release.dataset, release.slot, release.digest,
                        message, now()))
            if self.audit is not None:
                self.audit.append_in(db, analyst=ask.analyst, request=ask.request,
                                     query=query, backend=backend, epsilon=epsilon,
                                     delta=delta, outcome="answered",
                                     detail=f"round {ask.round}; {note}release "
                                            f"{release.digest[:16]}")
        return message


def _lookup(db: sqlite3.Connection, release: Release) -> bytes | None:
    """The stored message of the release; ReleaseError if its id or slot is taken."""
    bound = db.execute("SELECT digest FROM bindings WHERE request = ? AND dataset = ?",
                       (release.request, release.dataset)).fetchone()
    if bound is not None and bound[0] != release.binding:
        raise ReleaseError(f"request id {release.request!r} was used for another query or "
                           f"backend session at dataset {release.dataset!r}; a request id "
                           "buys one release — start a new request")
    row = db.execute("SELECT digest, message FROM releases WHERE request = ? AND dataset = ? "
                     "AND slot = ?", (release.request, release.dataset, release.slot)
                     ).fetchone()
    if row is None:
        return None
    if row[0] != release.digest:
        raise ReleaseError(f"request {release.request!r} already released its "
                           f"{release.slot} at dataset {release.dataset!r} for another "
                           "state; a retry must ask exactly what was asked")
    return bytes(row[1])


def canonical(query: Any) -> str:
    """A query as canonical JSON: its kind, every field, its filter's text."""
    values = {f.name: getattr(query, f.name) for f in fields(query) if f.name != "where"}
    where = getattr(query.where, "text", query.where)
    return json.dumps({"kind": type(query).__name__, "fields": values, "where": where},
                      sort_keys=True, default=_plain, allow_nan=True)


def _plain(value: Any) -> Any:
    """JSON form of the field values json cannot write itself (sets, numpy numbers)."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a query field of type {type(value).__name__} has no canonical form")


def _digest(*parts: object) -> str:
    """SHA-256 of the parts, each length-prefixed so that no two lists of parts collide."""
    hasher = hashlib.sha256()
    for part in parts:
        data = str(part).encode()
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()
