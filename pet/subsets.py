"""Subset control, as DataSHIELD does it: a site's durable record of the subgroups it has
answered under exact backends, and the check that refuses a subgroup whose answer would
single out fewer rows than the site's minimum by differencing.

`Count(age >= 40)` and `Count(age > 40)` differ by the 40-year-olds alone, so answering
both discloses a subgroup the cell rule would refuse. A site therefore refuses a new
subgroup S (the rows a query's filter selects) when any of these is non-empty and smaller
than its minimum cell count:

- S itself;
- the rows whose filter columns are known but fail the filter (what `not (S)` selects);
- the rows of the table outside S, missing filter values included (DataSHIELD's
  complement: the difference from the whole table, which a site always counts as
  answered, so an unfiltered query is never recorded);
- S Δ T, the rows in exactly one of S and T, for every subgroup T answered before.

The complement is checked both ways because missing values are a third group: every
answer publishes the subgroup's missing-value counts, so from |table|, |S| and those
counts an analyst learns how many known rows fail the filter, and a filter chosen to
leave one known row outside would single it out.

The record is kept per dataset, every analyst's subgroups together, not per analyst: a
site knows who asks only from a field the coordinator writes into the request, and a
site never lets a request weaken its protection, so a dishonest coordinator could rotate
analyst names to start a fresh memory at will. Each record keeps its request id, by
which the site's audit log names the analyst.

`admit` checks and records in one call: the check passes over the table outside any lock,
then one write transaction (BEGIN IMMEDIATE) takes the subgroups recorded meanwhile,
checks S against them too (a second pass, under the lock, only when there are any) and
records S, so two concurrent requests can never both pass when together they would
difference. A subgroup is recorded before its answer leaves and stays recorded if the
answer then fails to leave: the record may over-refuse, never under-refuse. A subgroup
already recorded is admitted without a pass, so an iterative query's later rounds, and
repeats, cost one lookup. The record holds at most `max_subgroups` per dataset and then
refuses new ones: forgetting old subgroups would let new ones difference them.

Differencing attacks that no exact backend can stop are listed in the README under
"Disclosure control"; differential privacy is the answer to them, and under DP backends
subset control does not apply.
"""

from __future__ import annotations

import ast
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pet.durable import DurableFile, now
from pet.errors import ArgumentError, DisclosureError
from pet.table import Table
from pet.where import Where

MAX_SUBGROUPS = 10_000
"""Default cap on the subgroups remembered per dataset; each new subgroup is compared
with all of them, in one pass over the table."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subgroups (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    subgroup TEXT NOT NULL,
    request TEXT,
    at TEXT NOT NULL,
    UNIQUE (dataset, subgroup)
);
"""


@dataclass(frozen=True)
class Subgroup:
    """One answered subgroup of a dataset: its filter's canonical text, the request that
    first asked for it, and when."""

    dataset: str
    text: str
    request: str | None
    at: str


@dataclass(frozen=True)
class _Sizes:
    """Sizes a new subgroup S is judged by (counts of rows at this site, never shown)."""

    members: int
    outside: int
    rest: int
    differences: tuple[int, ...]


def canonical(where: Where | str) -> str:
    """The filter's text as Python's parser writes it back: `age>40`, `age > 40` and
    `(age > 40)` are one subgroup, while spaces inside quoted categories are kept."""
    text = (where if isinstance(where, Where) else Where(where)).text
    return ast.unparse(ast.parse(text, mode="eval"))


class SubsetControl(DurableFile):
    """The subgroups a site answered under exact backends, per dataset, in a SQLite file
    (table `subgroups`, so the file may be the site's ledger); safe to use from many
    threads and processes."""

    def __init__(self, path: str | Path, *, max_subgroups: int = MAX_SUBGROUPS,
                 timeout_s: float = 60.0) -> None:
        if not isinstance(max_subgroups, int) or max_subgroups < 1:
            raise ArgumentError(f"max_subgroups must be a whole number >= 1, got "
                                f"{max_subgroups!r}")
        super().__init__(path, _SCHEMA, timeout_s=timeout_s)
        self.max_subgroups = max_subgroups

    def admit(self, dataset: str, where: Where | str | None, table: Table, *, minimum: int,
              request: str | None = None, site: str | None = None) -> None:
        """Raise DisclosureError if the subgroup `where` selects from `table` would
        disclose fewer than `minimum` rows, alone, by its complement or by its difference
        from a subgroup of `dataset` answered before; otherwise record it. An unfiltered
        query (`where` None) and a `minimum` of 1 (the rule off) record nothing."""
        if where is None or minimum <= 1:
            return
        subgroup = Where(canonical(where))
        earlier = self.answered(dataset)
        if _holds(earlier, subgroup):
            return
        self._check_room(dataset, len(earlier), site)
        _judge(table, subgroup, earlier, minimum, site)
        with self.transaction() as db:
            later = _rows(db, dataset, skip=len(earlier))
            if _holds(later, subgroup):
                return
            if later:
                self._check_room(dataset, len(earlier) + len(later), site)
                _judge(table, subgroup, later, minimum, site)
            db.execute("INSERT INTO subgroups (dataset, subgroup, request, at) VALUES "
                       "(?, ?, ?, ?)", (dataset, subgroup.text, request,
                                         now()))

    def answered(self, dataset: str) -> list[Subgroup]:
        """The subgroups of `dataset` answered so far, oldest first."""
        with self.connection() as db:
            return _rows(db, dataset, skip=0)

    def _check_room(self, dataset: str, count: int, site: str | None) -> None:
        if count >= self.max_subgroups:
            raise DisclosureError(
                f"this site has answered {self.max_subgroups} different subgroups of dataset "
                f"{dataset!r}, the most it remembers, and forgetting any would let a new one "
                "difference it; repeat an answered subgroup, ask without a filter, or use a "
                "DP backend (dp, he+dp, mpc+dp)", site=site, limit=self.max_subgroups)


def _judge(table: Table, subgroup: Where, earlier: Sequence[Subgroup], minimum: int,
           site: str | None) -> None:
    """Raise DisclosureError naming the first rule the subgroup breaks, and the earlier
    subgroup it would difference against, but never a count."""
    sizes = _measure(table, subgroup, [Where(s.text) for s in earlier])

    def small(count: int) -> bool:
        return 0 < count < minimum

    rule = f"(this site's minimum cell count is {minimum})"
    if small(sizes.members):
        raise DisclosureError(f"subgroup {subgroup.text!r} has fewer rows here than the "
                              f"minimum {rule}; widen it", site=site, limit=minimum)
    if small(sizes.outside) or small(sizes.rest):
        raise DisclosureError(f"fewer rows than the minimum fall outside subgroup "
                              f"{subgroup.text!r} here {rule}, so the rest of the table "
                              "would single them out; narrow it, or ask without a filter",
                              site=site, limit=minimum)
    for other, count in zip(earlier, sizes.differences, strict=True):
        if small(count):
            raise DisclosureError(
                f"subgroup {subgroup.text!r} differs from subgroup {other.text!r}, answered "
                f"before, by fewer rows here than the minimum {rule}, so the two answers "
                "would single those rows out; choose a subgroup that differs from it by more",
                site=site, limit=minimum)


def _measure(table: Table, subgroup: Where, earlier: Sequence[Where]) -> _Sizes:
    """In one streaming pass over the filters' columns: |S|, the known rows outside S,
    all rows outside S, and |S Δ T| for each earlier T."""
    schema = table.schema
    columns = sorted({name for where in (subgroup, *earlier) for name in where.columns})
    members = outside = rest = 0
    differences = np.zeros(len(earlier), dtype=np.int64)
    for chunk in table.chunks(columns):
        inside = subgroup.mask(schema, chunk.columns)
        known = ~np.logical_or.reduce([np.isnan(chunk.columns[c]) for c in subgroup.columns])
        size = int(np.count_nonzero(inside))
        members += size
        outside += int(np.count_nonzero(known & ~inside))
        rest += chunk.n_rows - size
        for i, other in enumerate(earlier):
            differences[i] += np.count_nonzero(inside ^ other.mask(schema, chunk.columns))
    return _Sizes(members, outside, rest, tuple(int(d) for d in differences))


def _holds(subgroups: Sequence[Subgroup], subgroup: Where) -> bool:
    return any(s.text == subgroup.text for s in subgroups)


def _rows(db: sqlite3.Connection, dataset: str, *, skip: int) -> list[Subgroup]:
    """The dataset's subgroups after the first `skip`, oldest first (none is ever
    deleted, so the first `skip` are the ones an earlier read saw)."""
    rows = db.execute("SELECT dataset, subgroup, request, at FROM subgroups WHERE dataset = ? "
                      "ORDER BY id LIMIT -1 OFFSET ?", (dataset, skip)).fetchall()
    return [Subgroup(*row) for row in rows]
