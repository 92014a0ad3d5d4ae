"""A site's privacy-budget ledger: per-dataset (ε, δ) budgets and every charge against
them, in a SQLite file the site keeps for itself.

A release is charged **before** its result leaves, in one transaction that checks what
is left and records the charge; a request that would overspend fails and records
nothing. Writers take SQLite's write lock at the start of the transaction (BEGIN
IMMEDIATE), so concurrent requests from threads or processes are serialised and never
overspend together; with synchronous=FULL a charge whose call returned survives a kill -9
of the process (and a power cut). `charge_in` and `spend_in` run inside a caller's
transaction, so that a site's release store can commit a charge, the release it pays for
and its audit entry together (`pet.releases`).

Amounts are kept as integers — ε in units of 10^-12, δ in units of 10^-18 — so that
sums are exact: a charge is rounded up and a budget down, never in the analyst's
favour. Composition is sequential (the ε and the δ of charges add), which holds for
every mechanism pet uses.

A request that makes many Gaussian releases (a synthesizer's fit) is charged its whole
(ε, δ) once, up front; each of its releases then spends ρ (zCDP, which composes by
addition) from the ρ that (ε, δ) affords, and the ledger refuses a release that would
spend more (`spend`). The (ε, δ) charged stays the request's true cost whatever it spent.
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

from pet.durable import DurableFile, now
from pet.errors import PetError

EPSILON_SCALE = 10**12
"""Ledger units per unit of ε."""
DELTA_SCALE = 10**18
"""Ledger units per unit of δ."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    epsilon INTEGER NOT NULL CHECK (epsilon >= 0),
    delta INTEGER NOT NULL CHECK (delta >= 0),
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    request TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES budgets (dataset),
    epsilon INTEGER NOT NULL CHECK (epsilon >= 0),
    delta INTEGER NOT NULL CHECK (delta >= 0),
    query TEXT NOT NULL,
    at TEXT NOT NULL,
    UNIQUE (request, dataset)
);
CREATE INDEX IF NOT EXISTS charges_by_dataset ON charges (dataset);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY,
    request TEXT NOT NULL,
    dataset TEXT NOT NULL,
    rho INTEGER NOT NULL CHECK (rho >= 0),
    query TEXT NOT NULL,
    at TEXT NOT NULL,
    FOREIGN KEY (request, dataset) REFERENCES charges (request, dataset)
);
CREATE INDEX IF NOT EXISTS spends_by_request ON spends (request, dataset);
"""
RHO_SCALE = 10**15
"""Ledger units per unit of ρ (zCDP)."""


class BudgetError(PetError):
    """A charge or a budget change the ledger refuses; nothing was recorded."""


@dataclass(frozen=True)
class Budget:
    """A dataset's budget, what has been spent of it, and in how many releases."""

    dataset: str
    epsilon: float
    delta: float
    spent_epsilon: float
    spent_delta: float
    releases: int

    @property
    def remaining_epsilon(self) -> float:
        return max(self.epsilon - self.spent_epsilon, 0.0)

    @property
    def remaining_delta(self) -> float:
        return max(self.delta - self.spent_delta, 0.0)


@dataclass(frozen=True)
class Charge:
    """One recorded charge: the request it paid for, against one dataset."""

    request: str
    dataset: str
    epsilon: float
    delta: float
    query: str
    at: str


class Ledger(DurableFile):
    """The ledger in one SQLite file; safe to use from many threads and processes (each
    operation opens its own connection)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        super().__init__(path, _SCHEMA, timeout_s=timeout_s)

    def set_budget(self, dataset: str, epsilon: float, delta: float = 0.0) -> Budget:
        """Configure a dataset's total budget; it may not drop below what is spent."""
        total_e, total_d = _units(epsilon, "epsilon", up=False), _units(delta, "delta", up=False)
        with self.transaction() as db:
            spent_e, spent_d, _ = _spent(db, dataset)
            if total_e < spent_e or total_d < spent_d:
                raise BudgetError(
                    f"dataset {dataset!r} has already spent ε={spent_e / EPSILON_SCALE:g}, "
                    f"δ={spent_d / DELTA_SCALE:g}; its budget cannot be set below that")
            db.execute("INSERT INTO budgets VALUES (?, ?, ?, ?) ON CONFLICT (dataset) DO "
                       "UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta, "
                       "updated = excluded.updated", (dataset, total_e, total_d, now()))
        return self.budget(dataset)

    def charge(self, datasets: str | Iterable[str], epsilon: float, delta: float = 0.0, *,
               query: str, request: str | None = None) -> list[Charge]:
        """Charge (ε, δ) to every dataset a release touches, all or none, before the
        release leaves. A request id already charged is not charged again (a retry)."""
        names = _names(datasets)
        request = request or uuid.uuid4().hex
        with self.transaction() as db:
            self.charge_in(db, names, epsilon, delta, query=query, request=request)
        return [c for c in self.charges(names) if c.request == request]

    def charge_in(self, db: sqlite3.Connection, datasets: str | Iterable[str], epsilon: float,
                  delta: float = 0.0, *, query: str, request: str) -> bool:
        """`charge` inside the caller's transaction on this ledger; whether the request was
        charged now (False: it had been charged this same amount before)."""
        names = _names(datasets)
        cost_e, cost_d = _units(epsilon, "epsilon", up=True), _units(delta, "delta", up=True)
        fresh = [self._check_room(db, dataset, cost_e, cost_d, request) for dataset in names]
        at = now()
        db.executemany("INSERT OR IGNORE INTO charges (request, dataset, epsilon, delta, "
                       "query, at) VALUES (?, ?, ?, ?, ?, ?)",
                       [(request, d, cost_e, cost_d, query, at) for d in names])
        return any(fresh)

    def budget(self, dataset: str) -> Budget:
        """The dataset's budget and spending."""
        with self.connection() as db:
            row = db.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?",
                             (dataset,)).fetchone()
            if row is None:
                raise BudgetError(_no_budget(dataset))
            spent_e, spent_d, releases = _spent(db, dataset)
        return Budget(dataset, row[0] / EPSILON_SCALE, row[1] / DELTA_SCALE,
                      spent_e / EPSILON_SCALE, spent_d / DELTA_SCALE, releases)

    def budgets(self) -> list[Budget]:
        """Every configured dataset's budget, by name."""
        with self.connection() as db:
            names = [r[0] for r in db.execute("SELECT dataset FROM budgets ORDER BY dataset")]
        return [self.budget(name) for name in names]

    def charges(self, datasets: str | Iterable[str]) -> list[Charge]:
        """The charges recorded against the datasets, oldest first."""
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        marks = ", ".join("?" * len(names))
        with self.connection() as db:
            rows = db.execute(f"SELECT request, dataset, epsilon, delta, query, at FROM charges "
                              f"WHERE dataset IN ({marks}) ORDER BY id", names).fetchall()
        return [Charge(r[0], r[1], r[2] / EPSILON_SCALE, r[3] / DELTA_SCALE, r[4], r[5])
                for r in rows]

    def charged(self, request: str) -> tuple[float, float]:
        """What one request has been charged, over every dataset (0, 0 if nothing)."""
        with self.connection() as db:
            row = db.execute("SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) "
                             "FROM charges WHERE request = ?", (request,)).fetchone()
        return row[0] / EPSILON_SCALE, row[1] / DELTA_SCALE

    def spend(self, datasets: str | Iterable[str], request: str, rho: float, *,
              allowed: float, query: str) -> float:
        """Record one ρ-zCDP release of an already charged request against every dataset it
        touches, all or none, refusing one that would take the request's releases past
        the `allowed` ρ its charge affords. Returns the ρ the request has spent since."""
        with self.transaction() as db:
            return self.spend_in(db, datasets, request, rho, allowed=allowed, query=query)

    def spend_in(self, db: sqlite3.Connection, datasets: str | Iterable[str], request: str,
                 rho: float, *, allowed: float, query: str) -> float:
        """`spend` inside the caller's transaction on this ledger."""
        names = _names(datasets)
        cost, limit = _units(rho, "rho", up=True), _units(allowed, "rho", up=False)
        spent = 0
        for dataset in names:
            if db.execute("SELECT 1 FROM charges WHERE request = ? AND dataset = ?",
                          (request, dataset)).fetchone() is None:
                raise BudgetError(f"request {request!r} has not been charged to dataset "
                                  f"{dataset!r}; charge its (ε, δ) before it spends ρ")
            spent = db.execute("SELECT COALESCE(SUM(rho), 0) FROM spends WHERE request = ? "
                               "AND dataset = ?", (request, dataset)).fetchone()[0]
            if spent + cost > limit:
                raise BudgetError(
                    f"request {request!r} cannot spend ρ={cost / RHO_SCALE:g} more on "
                    f"dataset {dataset!r}: it has spent {spent / RHO_SCALE:g} of the "
                    f"ρ={limit / RHO_SCALE:g} its charge affords; nothing was spent")
        at = now()
        db.executemany("INSERT INTO spends (request, dataset, rho, query, at) VALUES "
                       "(?, ?, ?, ?, ?)", [(request, d, cost, query, at) for d in names])
        return (spent + cost) / RHO_SCALE

    def spent_rho(self, request: str, dataset: str) -> float:
        """The ρ a request's releases have spent on one dataset."""
        return sum(self.spends(request, dataset))

    def spends(self, request: str, dataset: str) -> list[float]:
        """The ρ of each of a request's releases on one dataset, oldest first."""
        with self.connection() as db:
            rows = db.execute("SELECT rho FROM spends WHERE request = ? AND dataset = ? "
                              "ORDER BY id", (request, dataset)).fetchall()
        return [r[0] / RHO_SCALE for r in rows]

    def _check_room(self, db: sqlite3.Connection, dataset: str, cost_e: int, cost_d: int,
                    request: str) -> bool:
        """Refuse a charge the dataset cannot pay; False for a request already charged."""
        row = db.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?",
                         (dataset,)).fetchone()
        if row is None:
            raise BudgetError(_no_budget(dataset))
        earlier = db.execute("SELECT epsilon, delta FROM charges WHERE request = ? AND "
                             "dataset = ?", (request, dataset)).fetchone()
        if earlier is not None:
            if tuple(earlier) != (cost_e, cost_d):
                raise BudgetError(f"request {request!r} was already charged a different "
                                  f"amount to dataset {dataset!r}")
            return False
        spent_e, spent_d, _ = _spent(db, dataset)
        if spent_e + cost_e > row[0] or spent_d + cost_d > row[1]:
            raise BudgetError(
                f"dataset {dataset!r} cannot pay ε={cost_e / EPSILON_SCALE:g}, "
                f"δ={cost_d / DELTA_SCALE:g}: "
                f"{(row[0] - spent_e) / EPSILON_SCALE:g} of ε={row[0] / EPSILON_SCALE:g} and "
                f"{(row[1] - spent_d) / DELTA_SCALE:g} of δ={row[1] / DELTA_SCALE:g} remain; "
                "nothing was charged")
        return True


def _names(datasets: str | Iterable[str]) -> list[str]:
    """The datasets a charge names, once each; at least one."""
    names = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets))
    if not names:
        raise BudgetError("a charge must name at least one dataset")
    return names


def _spent(db: sqlite3.Connection, dataset: str) -> tuple[int, int, int]:
    row = db.execute("SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0), COUNT(*) "
                     "FROM charges WHERE dataset = ?", (dataset,)).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _units(value: float, name: str, *, up: bool) -> int:
    """An amount in whole units, from its shortest decimal form (0.1 is 10^11 units of ε
    exactly), rounded up for charges and down for budgets."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BudgetError(f"{name} must be a finite number >= 0, got {value!r}")
    if name == "delta" and value > 1:
        raise BudgetError(f"delta must be at most 1, got {value!r}")
    unit = {"epsilon": EPSILON_SCALE, "delta": DELTA_SCALE, "rho": RHO_SCALE}[name]
    scaled = Decimal(repr(float(value))) * unit
    whole = int(scaled.to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))
    if whole >= 2**63:
        raise BudgetError(f"{name}={value:g} is larger than the ledger can hold")
    return whole


def _no_budget(dataset: str) -> str:
    return (f"no privacy budget is configured for dataset {dataset!r}; the site must set "
            "one (Ledger.set_budget, or `pet budget LEDGER DATASET --set EPSILON DELTA`)"
            " before any DP release")
