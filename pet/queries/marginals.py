"""Marginals: several contingency tables of discretized columns in one DP release, the
measurements a synthesizer fits its model to.

Unlike `Contingency`, a missing value is a level of its own (the last one of a nullable
column), so every marginal counts every row of the subgroup and they all agree on n;
and the noisy counts come back raw — neither rounded nor clipped at zero — because the
estimator that consumes them weighs unbiased measurements against each other. Each row
adds 1 to one cell of every table: with k tables one row moves the tables by √k in L2,
and the noisy n that comes with every release by 1 more. A column's levels may be
merged by a public map (a synthesizer merges the levels an earlier DP release showed to
be rare), so its tables count on fewer, larger cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pet.errors import QueryError
from pet.intervals import Interval, Spread
from pet.layout import Block
from pet.queries.base import Query, State, levels
from pet.queries.tables import bin_index, check_bins
from pet.schema import Boolean, Categorical, Column, Schema


def level_count(column: Column, edges: Sequence[float] | None) -> int:
    """Levels of a discretized column: its categories or bins, plus one for missing
    values when the column is nullable."""
    base = levels(column) if isinstance(column, Categorical | Boolean) else len(edges or ()) - 1
    return base + int(column.nullable)


def codes(values: np.ndarray, column: Column, edges: Sequence[float] | None) -> np.ndarray:
    """Each value's level: its category or bin, and the last level for a missing value."""
    missing = np.isnan(values)
    known = np.where(missing, 0.0, values)
    if isinstance(column, Categorical | Boolean):
        level = known.astype(np.int64)
    else:
        level = bin_index(known, np.asarray(edges, dtype=np.float64))
    return np.where(missing, level_count(column, edges) - 1, level)


def merge_map(name: str, mapping: Sequence[float]) -> tuple[int, ...]:
    """A map of a column's levels onto merged ones as whole numbers (each level's new
    level), which must together cover 0, 1, …, k − 1. Raises QueryError naming the fault."""
    if not len(mapping) or any(float(v) != int(v) or v < 0 for v in mapping):
        raise QueryError(f"merged levels of {name!r}: {list(mapping)} must be whole "
                         "numbers >= 0, one per level")
    whole = tuple(int(v) for v in mapping)
    if set(whole) != set(range(max(whole) + 1)):
        raise QueryError(f"merged levels of {name!r}: {list(whole)} must use every level "
                         f"from 0 to {max(whole)}")
    return whole


def merged(level: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Levels carried through a merge map (each level's new level)."""
    return np.asarray(mapping, dtype=np.int64)[level]


@dataclass(frozen=True)
class Marginals(Query):
    """Counts of every combination of levels, for each clique of columns; numeric columns
    on the public bin edges in `bins`. Only DP backends may release it (a site refuses it
    under any other: exact k-way tables of small cells are what disclosure control
    forbids). `merged` maps a column's levels onto fewer (each level's new level). The
    answer is one array per clique, an axis per column."""

    cliques: tuple[tuple[str, ...], ...]
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    merged: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    requires_dp: ClassVar[bool] = True
    fingerprints_data: ClassVar[bool] = True
    keeps_missing: ClassVar[bool] = True
    n_weight: ClassVar[float] = 1e-6
    """A synthesizer reads the tables, not n (no minimum of rows either: a very noisy n
    changes nothing), so n gets 0.1% of a one-table release's ρ, not the 9% a weight of
    0.01 gave it: AIM measures one table a round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cliques", tuple(tuple(c) for c in self.cliques))
        object.__setattr__(self, "bins", {k: tuple(float(e) for e in v)
                                          for k, v in dict(self.bins).items()})
        object.__setattr__(self, "merged", {k: merge_map(k, v)
                                            for k, v in dict(self.merged).items()})

    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for clique in self.cliques for c in clique))

    def check(self, schema: Schema) -> None:
        if not self.cliques or any(not clique for clique in self.cliques):
            raise QueryError("Marginals needs at least one clique, each of one column or more")
        for clique in self.cliques:
            if len(set(clique)) != len(clique):
                raise QueryError(f"{self.describe()}: clique {list(clique)} repeats a column")
        check_bins(self, schema, self.inputs(), self.bins)
        stray = sorted(set(self.merged) - set(self.inputs()))
        if stray:
            raise QueryError(f"{self.describe()}: merged levels given for columns in no "
                             f"clique: {stray}")
        for name, mapping in self.merged.items():
            levels = level_count(schema[name], self.bins.get(name))
            if len(mapping) != levels:
                raise QueryError(f"{self.describe()}: merged levels of {name!r} map "
                                 f"{len(mapping)} levels, but it has {levels}")

    def shape(self, schema: Schema, clique: Sequence[str]) -> tuple[int, ...]:
        """Levels of each column of a clique (after merging), in order."""
        return tuple(max(self.merged[c]) + 1 if c in self.merged
                     else level_count(schema[c], self.bins.get(c)) for c in clique)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        # Real sums, not integer counts: DP backends then leave their noise unrounded.
        return tuple(Block(f"m{i}", math.prod(self.shape(schema, clique)), 1.0, 1.0, 1.0)
                     for i, clique in enumerate(self.cliques))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        level = {c: codes(data[c], schema[c], self.bins.get(c)) for c in self.inputs()}
        for c, mapping in self.merged.items():
            level[c] = merged(level[c], mapping)
        parts = {}
        for i, clique in enumerate(self.cliques):
            shape = self.shape(schema, clique)
            flat = (np.ravel_multi_index([level[c] for c in clique], shape)
                    if level[clique[0]].size else np.zeros(0, np.int64))
            parts[f"m{i}"] = np.bincount(flat, minlength=math.prod(shape)).astype(np.float64)
        return parts

    def finalize(self, total: np.ndarray, schema: Schema, state: State = None, *,
                 error_bounds: np.ndarray | None = None,
                 noise_sd: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The tables, even when the noisy n is below 1: a noisy count, not a subgroup
        with no rows (the estimator weighs it like any other measurement)."""
        return self.answer(self.layout(schema, state).split(total), schema, state)

    def numbers(self, answer: Any) -> np.ndarray:
        """Every clique's cells, flattened, one clique after another."""
        return np.concatenate([np.ravel(np.asarray(table, dtype=np.float64))
                               for table in answer])

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """None: a synthesizer weighs each noisy marginal by its noise's scale instead."""
        return None

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> tuple[np.ndarray, ...]:
        return tuple(parts[f"m{i}"].reshape(self.shape(schema, clique))
                     for i, clique in enumerate(self.cliques))
