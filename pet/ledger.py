"""A site's privacy-budget ledger: per-dataset budgets, set and shown as (ε, δ) but
composed in zero-concentrated DP, and every charge against them, in a SQLite file the
site keeps for itself.

A release is charged **before** its result leaves, in one transaction that checks what
is left and records the charge; a request that would overspend fails and records
nothing. Writers take SQLite's write lock at the start of the transaction (BEGIN
IMMEDIATE), so concurrent requests from threads or processes are serialised and never
overspend together; with synchronous=FULL a charge whose call returned survives a kill -9
of the process (and a power cut). `charge_in` and `spend_in` run inside a caller's
transaction, so that a site's release store can commit a charge, the release it pays for
and its audit entry together (`pet.releases`).

Composition is in ρ (zCDP, Bun & Steinke 2016: the ρ of releases adds). A budget (ε, δ)
with δ > 0 affords ρ = `rho_of(ε, δ)`, OpenDP's conversion; a charge (ε, δ) costs
`rho_of(ε, δ)`, or ε²/2 when δ = 0 (ε-DP implies ε²/2-zCDP); what is spent is shown as
the ε at the budget's δ that OpenDP converts the spent ρ to. A budget with δ = 0 is a
pure ε-DP budget: zCDP implies no pure ε-DP, so it takes only charges with δ = 0 and
adds their ε.

Amounts are kept as integers — ε in units of 10^-12, δ of 10^-18, ρ of 10^-15 — so that
sums are exact: a charge is rounded up and a budget down, never in the analyst's favour.
Each budget keeps running totals (ρ or ε spent, charges made), updated in the charge's
own transaction, so a charge costs as much with 10^5 charges recorded as with none.

A request that makes many Gaussian releases (a synthesizer's fit) is charged its whole
(ε, δ) once, up front; each of its releases then spends ρ from the ρ that (ε, δ) affords,
and the ledger refuses a release that would spend more (`spend`). The (ε, δ) charged
stays the request's true cost whatever it spent.
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import NamedTuple

from pet.durable import DurableFile, now
from pet.errors import ArgumentError, PetError
from pet.mechanisms import epsilon_of, rho_of

EPSILON_SCALE = 10**12
"""Ledger units per unit of ε."""
DELTA_SCALE = 10**18
"""Ledger units per unit of δ."""
RHO_SCALE = 10**15
"""Ledger units per unit of ρ (zCDP)."""
LARGEST = 2**63 - 1
"""The most units SQLite holds in an integer: ρ ≈ 9223, which a budget of ε ≈ 9.7·10³ at
δ = 10⁻³ reaches; a budget's ρ past it is cut to it (rounded down, as every budget)."""
FORMAT = 2
"""The ledger file's format (PRAGMA user_version): 2 composes in zCDP and keeps running
totals. Files of the earlier format (sums of ε and δ) are refused, not migrated."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    epsilon INTEGER NOT NULL CHECK (epsilon >= 0),
    delta INTEGER NOT NULL CHECK (delta >= 0 AND delta < {DELTA_SCALE}),
    rho INTEGER CHECK (rho >= 0),  -- NULL for a pure ε-DP budget (δ = 0)
    spent_rho INTEGER NOT NULL DEFAULT 0 CHECK (spent_rho <= COALESCE(rho, 0)),
    spent_epsilon INTEGER NOT NULL DEFAULT 0 CHECK (spent_epsilon <= epsilon OR rho IS NOT NULL),
    releases INTEGER NOT NULL DEFAULT 0 CHECK (releases >= 0),
    updated TEXT NOT NULL,
    CHECK ((rho IS NULL) = (delta = 0))
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    request TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES budgets (dataset),
    epsilon INTEGER NOT NULL CHECK (epsilon >= 0),
    delta INTEGER NOT NULL CHECK (delta >= 0),
    rho INTEGER CHECK (rho >= 0),  -- NULL when a pure budget paid it, adding ε
    released INTEGER NOT NULL DEFAULT 0 CHECK (released >= 0),  -- ρ its releases spent
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
PRAGMA user_version = {FORMAT};
"""
_ACCOUNT = ("SELECT dataset, epsilon, delta, rho, spent_rho, spent_epsilon, releases "
            "FROM budgets")
_CHARGE = "SELECT request, dataset, epsilon, delta, rho, query, at FROM charges"


class BudgetError(PetError):
    """A charge or a budget change the ledger refuses; nothing was recorded."""


@dataclass(frozen=True)
class Budget:
    """A dataset's budget as (ε, δ) and as ρ, what has been spent of it, and in how many
    charges. A pure ε-DP budget (δ = 0) adds ε: its `rho` and `spent_rho` are ε²/2 of
    its ε and of the ε spent, the zCDP those imply, shown for comparison, never a limit."""

    dataset: str
    epsilon: float
    delta: float
    spent_epsilon: float
    spent_delta: float
    releases: int
    rho: float
    spent_rho: float

    @property
    def remaining_epsilon(self) -> float:
        return max(self.epsilon - self.spent_epsilon, 0.0)

    @property
    def remaining_delta(self) -> float:
        return max(self.delta - self.spent_delta, 0.0)


@dataclass(frozen=True)
class Charge:
    """One recorded charge: the request it paid for, against one dataset, as the (ε, δ)
    the query asked for and the ρ that guarantee costs."""

    request: str
    dataset: str
    epsilon: float
    delta: float
    rho: float
    query: str
    at: str


class _Cost(NamedTuple):
    """A charge in ledger units; its ρ is unbounded (one no budget can hold is refused)."""

    epsilon: int
    delta: int
    rho: int

    def __str__(self) -> str:
        return (f"ε={self.epsilon / EPSILON_SCALE:g}, δ={self.delta / DELTA_SCALE:g} "
                f"(ρ={self.rho / RHO_SCALE:g})")


class _Account(NamedTuple):
    """A budget row: its limits and running totals, in ledger units."""

    dataset: str
    epsilon: int
    delta: int
    rho: int | None  # None for a pure ε-DP budget
    spent_rho: int
    spent_epsilon: int
    releases: int

    def check(self, cost: _Cost) -> None:
        """Refuse a charge this budget cannot pay, saying what remains."""
        if self.rho is not None:
            if self.spent_rho + cost.rho > self.rho:
                left = self.rho - self.spent_rho
                raise BudgetError(
                    f"dataset {self.dataset!r} cannot pay {cost}: ρ={left / RHO_SCALE:g} "
                    f"of ρ={self.rho / RHO_SCALE:g} remains, ε={_epsilon_at(left, self.delta):g}"
                    f" at its δ={self.delta / DELTA_SCALE:g}; nothing was charged")
        elif cost.delta:
            raise BudgetError(
                f"dataset {self.dataset!r} has a pure ε-DP budget (δ=0), which cannot pay "
                f"{cost}: releases with δ > 0 (zCDP) imply no pure ε-DP; give the dataset a "
                "budget with δ > 0 for them; nothing was charged")
        elif self.spent_epsilon + cost.epsilon > self.epsilon:
            left = self.epsilon - self.spent_epsilon
            raise BudgetError(
                f"dataset {self.dataset!r} cannot pay ε={cost.epsilon / EPSILON_SCALE:g}: "
                f"{left / EPSILON_SCALE:g} of ε={self.epsilon / EPSILON_SCALE:g} remains "
                f"(pure ε-DP, whose charges add ε; ρ={_pure_rho(left):g} as zCDP); "
                "nothing was charged")

    def check_resize(self, epsilon: int, rho: int | None) -> None:
        """Refuse a new budget below what is spent, or of the other kind once charged."""
        if self.releases and (self.rho is None) != (rho is None):
            kinds = ("pure ε-DP (δ=0)", "zCDP (δ > 0)")
            old, new = kinds if self.rho is None else kinds[::-1]
            raise BudgetError(f"dataset {self.dataset!r} has charges composed under its {old}"
                              f" budget; it cannot switch to a {new} one")
        if rho is None and epsilon < self.spent_epsilon:
            raise BudgetError(
                f"dataset {self.dataset!r} has already spent "
                f"ε={self.spent_epsilon / EPSILON_SCALE:g}; its budget cannot be set below that")
        if rho is not None and rho < self.spent_rho:
            raise BudgetError(
                f"dataset {self.dataset!r} has already spent ρ={self.spent_rho / RHO_SCALE:g},"
                f" more than the ρ={rho / RHO_SCALE:g} the new budget affords; its budget "
                "cannot be set below that")

    def budget(self) -> Budget:
        """The account as (ε, δ) and ρ, spending converted the way it composed."""
        epsilon, delta = self.epsilon / EPSILON_SCALE, self.delta / DELTA_SCALE
        if self.rho is None:
            return Budget(self.dataset, epsilon, delta, self.spent_epsilon / EPSILON_SCALE,
                          0.0, self.releases, _pure_rho(self.epsilon),
                          _pure_rho(self.spent_epsilon))
        return Budget(self.dataset, epsilon, delta, _epsilon_at(self.spent_rho, self.delta),
                      delta if self.spent_rho else 0.0, self.releases,
                      self.rho / RHO_SCALE, self.spent_rho / RHO_SCALE)


class Ledger(DurableFile):
    """The ledger in one SQLite file; safe to use from many threads and processes (each
    operation opens its own connection)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        _check_format(Path(path), timeout_s)
        super().__init__(path, _SCHEMA, timeout_s=timeout_s)

    def set_budget(self, dataset: str, epsilon: float, delta: float = 0.0) -> Budget:
        """Configure a dataset's total budget; it may not drop below what is spent, nor
        change kind (pure or zCDP) once charged."""
        if isinstance(delta, int | float) and delta >= 1:
            raise BudgetError(f"dataset {dataset!r}: a budget's delta must be below 1 (δ=1 "
                              f"guarantees nothing), got {delta!r}")
        total_e, total_d = _units(epsilon, "epsilon", up=False), _units(delta, "delta", up=False)
        rho = _capacity(dataset, epsilon, delta) if total_d else None
        with self.transaction() as db:
            row = db.execute(f"{_ACCOUNT} WHERE dataset = ?", (dataset,)).fetchone()
            if row is not None:
                _Account(*row).check_resize(total_e, rho)
            db.execute("INSERT INTO budgets (dataset, epsilon, delta, rho, updated) VALUES "
                       "(?, ?, ?, ?, ?) ON CONFLICT (dataset) DO UPDATE SET epsilon = "
                       "excluded.epsilon, delta = excluded.delta, rho = excluded.rho, "
                       "updated = excluded.updated", (dataset, total_e, total_d, rho, now()))
        return self.budget(dataset)

    def charge(self, datasets: str | Iterable[str], epsilon: float, delta: float = 0.0, *,
               query: str, request: str | None = None) -> list[Charge]:
        """Charge (ε, δ) to every dataset a release touches, all or none, before the
        release leaves. A request id already charged is not charged again (a retry)."""
        names = _names(datasets)
        request = request or uuid.uuid4().hex
        cost = _cost(names, epsilon, delta)  # before the lock: a new (ε, δ) is a 0.15 s search
        with self.transaction() as db:
            self._record(db, names, cost, query=query, request=request)
            marks = ", ".join("?" * len(names))
            return _read(db, f"WHERE request = ? AND dataset IN ({marks}) ORDER BY id",
                         (request, *names))

    def charge_in(self, db: sqlite3.Connection, datasets: str | Iterable[str], epsilon: float,
                  delta: float = 0.0, *, query: str, request: str) -> bool:
        """`charge` inside the caller's transaction on this ledger; whether the request was
        charged now (False: it had been charged this same amount before)."""
        names = _names(datasets)
        return self._record(db, names, _cost(names, epsilon, delta), query=query,
                            request=request)

    def budget(self, dataset: str) -> Budget:
        """The dataset's budget and spending."""
        with self.connection() as db:
            return _account(db, dataset).budget()

    def budgets(self) -> list[Budget]:
        """Every configured dataset's budget, by name."""
        with self.connection() as db:
            rows = db.execute(f"{_ACCOUNT} ORDER BY dataset").fetchall()
        return [_Account(*row).budget() for row in rows]

    def charges(self, datasets: str | Iterable[str]) -> list[Charge]:
        """The charges recorded against the datasets, oldest first."""
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        marks = ", ".join("?" * len(names))
        with self.connection() as db:
            return _read(db, f"WHERE dataset IN ({marks}) ORDER BY id", names)

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
        """`spend` inside the caller's transaction on this ledger. The request paid for
        `allowed` rounded up; each spend rounds up by less than one unit, and the
        floating-point shares of `allowed` a multi-round request computes may each be a
        few ulps above exact, so its releases may pass it by one unit or 2⁻⁵⁰ of it
        (whichever is more) per release: 10⁻¹⁵ ρ each below ρ ≈ 1, 10⁻¹⁵ of ρ above."""
        names = _names(datasets)
        cost, limit = _units(rho, "rho", up=True), _units(allowed, "rho", up=True)
        slack = max(1, math.ceil(limit * 2.0**-50))
        spent = 0
        for dataset in names:
            row = db.execute("SELECT released FROM charges WHERE request = ? AND dataset = ?",
                             (request, dataset)).fetchone()
            if row is None:
                raise BudgetError(f"request {request!r} has not been charged to dataset "
                                  f"{dataset!r}; charge its (ε, δ) before it spends ρ")
            spent = row[0]
            made = db.execute("SELECT COUNT(*) FROM spends WHERE request = ? AND dataset = ?",
                              (request, dataset)).fetchone()[0]
            if spent + cost > limit + (made + 1) * slack:
                raise BudgetError(
                    f"request {request!r} cannot spend ρ={cost / RHO_SCALE:g} more on "
                    f"dataset {dataset!r}: it has spent {spent / RHO_SCALE:g} of the "
                    f"ρ={limit / RHO_SCALE:g} its charge affords; nothing was spent")
        at = now()
        db.executemany("INSERT INTO spends (request, dataset, rho, query, at) VALUES "
                       "(?, ?, ?, ?, ?)", [(request, d, cost, query, at) for d in names])
        db.executemany("UPDATE charges SET released = released + ? WHERE request = ? AND "
                       "dataset = ?", [(cost, request, d) for d in names])
        return (spent + cost) / RHO_SCALE

    def spent_rho(self, request: str, dataset: str) -> float:
        """The ρ a request's releases have spent on one dataset."""
        with self.connection() as db:
            row = db.execute("SELECT released FROM charges WHERE request = ? AND dataset = ?",
                             (request, dataset)).fetchone()
        return 0.0 if row is None else row[0] / RHO_SCALE

    def spends(self, request: str, dataset: str) -> list[float]:
        """The ρ of each of a request's releases on one dataset, oldest first."""
        with self.connection() as db:
            rows = db.execute("SELECT rho FROM spends WHERE request = ? AND dataset = ? "
                              "ORDER BY id", (request, dataset)).fetchall()
        return [r[0] / RHO_SCALE for r in rows]

    def _record(self, db: sqlite3.Connection, names: list[str], cost: _Cost, *, query: str,
                request: str) -> bool:
        """Check every dataset, then charge those the request had not been charged yet, and
        add the charge to their running totals; whether any was charged now."""
        accounts = [_account(db, dataset) for dataset in names]
        fresh = [a for a in accounts if _is_new(db, a.dataset, cost, request)]
        for account in fresh:
            account.check(cost)
        at = now()
        db.executemany(
            "INSERT INTO charges (request, dataset, epsilon, delta, rho, query, at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?)",
            [(request, a.dataset, cost.epsilon, cost.delta,
              None if a.rho is None else cost.rho, query, at) for a in fresh])
        db.executemany(
            "UPDATE budgets SET spent_rho = spent_rho + ?, spent_epsilon = spent_epsilon + ?, "
            "releases = releases + 1 WHERE dataset = ?",
            [(0, cost.epsilon, a.dataset) if a.rho is None else (cost.rho, 0, a.dataset)
             for a in fresh])
        return bool(fresh)


def _check_format(path: Path, timeout_s: float) -> None:
    """Refuse a ledger file of another format: its amounts would be misread."""
    if not path.exists():
        return
    with closing(sqlite3.connect(path, timeout=timeout_s)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        kept = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'budgets'").fetchone()
    if kept is not None and version != FORMAT:
        raise PetError(f"{path} is a privacy ledger of format {version}, which this pet does "
                       f"not read (it keeps format {FORMAT}, composed in zCDP); keep that "
                       "file as the record of past charges and start a ledger in a new file")


def _account(db: sqlite3.Connection, dataset: str) -> _Account:
    """The dataset's budget row; refused if the site has set none."""
    row = db.execute(f"{_ACCOUNT} WHERE dataset = ?", (dataset,)).fetchone()
    if row is None:
        raise BudgetError(_no_budget(dataset))
    return _Account(*row)


def _is_new(db: sqlite3.Connection, dataset: str, cost: _Cost, request: str) -> bool:
    """Whether the request is still to be charged to the dataset: False for a retry of
    the same amount, refused for another amount under a used request id."""
    earlier = db.execute("SELECT epsilon, delta FROM charges WHERE request = ? AND "
                         "dataset = ?", (request, dataset)).fetchone()
    if earlier is None:
        return True
    if tuple(earlier) != (cost.epsilon, cost.delta):
        raise BudgetError(f"request {request!r} was already charged a different "
                          f"amount to dataset {dataset!r}")
    return False


def _read(db: sqlite3.Connection, where: str, params: Iterable[object]) -> list[Charge]:
    """The charges a WHERE clause selects, converted from ledger units; a charge a pure
    budget paid shows the ρ = ε²/2 its ε implies."""
    rows = db.execute(f"{_CHARGE} {where}", tuple(params)).fetchall()
    return [Charge(request, dataset, e / EPSILON_SCALE, d / DELTA_SCALE,
                   _pure_rho(e) if rho is None else rho / RHO_SCALE, query, at)
            for request, dataset, e, d, rho, query, at in rows]


def _cost(names: list[str], epsilon: float, delta: float) -> _Cost:
    """What a charge of (ε, δ) costs: ρ = ε²/2 for pure ε-DP, else OpenDP's `rho_of`."""
    cost_e, cost_d = _units(epsilon, "epsilon", up=True), _units(delta, "delta", up=True)
    if cost_d == 0:
        return _Cost(cost_e, 0, -(-cost_e**2 * RHO_SCALE // (2 * EPSILON_SCALE**2)))
    try:
        rho = rho_of(epsilon, delta)
    except ArgumentError as exc:
        raise BudgetError(f"datasets {names} cannot be charged ε={epsilon:g}, δ={delta:g}: "
                          f"{exc}; nothing was charged") from exc
    return _Cost(cost_e, cost_d, _rounded_up(rho))


def _capacity(dataset: str, epsilon: float, delta: float) -> int:
    """The ρ a zCDP budget (ε, δ > 0) affords, in ledger units, cut to what the ledger
    holds."""
    try:
        rho = rho_of(epsilon, delta)
    except ArgumentError as exc:
        raise BudgetError(f"dataset {dataset!r} cannot have the budget ε={epsilon:g}, "
                          f"δ={delta:g}: {exc}") from exc
    return min(_rounded_up(rho), LARGEST)


def _rounded_up(rho: float) -> int:
    """A ρ converted from (ε, δ) by OpenDP, in ledger units rounded up, for charges and
    budgets alike: a charge is never recorded below its cost (a tiny ε is at least one
    unit), and a budget pays a charge of its own (ε, δ) exactly (rounding it down would
    leave it a unit short). A budget gains less than one unit, 10⁻¹⁵ ρ."""
    return int((Decimal(repr(float(rho))) * RHO_SCALE).to_integral_value(ROUND_CEILING))


def _pure_rho(epsilon: int) -> float:
    """ε²/2, the ρ that ε-DP implies, from ε in ledger units."""
    return epsilon * epsilon / (2 * EPSILON_SCALE**2)


def _epsilon_at(rho: int, delta: int) -> float:
    """The ε at δ that OpenDP converts ρ-zCDP to, from ledger units (0 for no ρ)."""
    return epsilon_of(rho / RHO_SCALE, delta / DELTA_SCALE) if rho else 0.0


def _names(datasets: str | Iterable[str]) -> list[str]:
    """The datasets a charge names, once each; at least one."""
    names = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets))
    if not names:
        raise BudgetError("a charge must name at least one dataset")
    return names


def _units(value: float, name: str, *, up: bool) -> int:
    """An amount in whole ledger units, rounded up for charges and down for budgets;
    refused unless it is a finite number >= 0 that a SQLite integer holds."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BudgetError(f"{name} must be a finite number >= 0, got {value!r}")
    unit = {"epsilon": EPSILON_SCALE, "delta": DELTA_SCALE, "rho": RHO_SCALE}[name]
    whole = _scaled(value, unit, up=up)
    if whole > LARGEST:
        raise BudgetError(f"{name}={value:g} is larger than the ledger can hold (at most "
                          f"{LARGEST / unit:.4g}: it keeps whole units of {1 / unit:g})")
    return whole


def _scaled(value: float, unit: int, *, up: bool) -> int:
    """value × unit as a whole number, from the value's shortest decimal form (0.1 is
    10^11 units of ε exactly), rounded up or down."""
    scaled = Decimal(repr(float(value))) * unit
    return int(scaled.to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


def _no_budget(dataset: str) -> str:
    return (f"no privacy budget is configured for dataset {dataset!r}; the site must set "
            "one (Ledger.set_budget, or `pet budget LEDGER DATASET --set EPSILON DELTA`)"
            " before any DP release")
