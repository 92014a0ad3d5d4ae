"""Marginals: several contingency tables of discretized columns in one DP release, the
measurements a synthesizer fits its model to.

Unlike `Contingency`, a missing value is a level of its own (the last one of a nullable
column), so every marginal counts every row of the subgroup and they all agree on n;
and the noisy counts come back raw — neither rounded nor clipped at zero — because the
estimator that consumes them weighs unbiased measurements against each other. Each row
adds 1 to one cell of every table: with k tables one row moves the vector by √(k + 1) in
L2 (the noisy n comes with it, a measurement of the total).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pet.errors import QueryError
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


@dataclass(frozen=True)
class Marginals(Query):
    """Counts of every combination of levels, for each clique of columns; numeric columns
    on the public bin edges in `bins`. Only DP backends may release it (a site refuses it
    under any other: exact k-way tables of small cells are what disclosure control
    forbids). The answer is one array per clique, an axis per column."""

    cliques: tuple[tuple[str, ...], ...]
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    requires_dp: ClassVar[bool] = True
    keeps_missing: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cliques", tuple(tuple(c) for c in self.cliques))
        object.__setattr__(self, "bins", {k: tuple(float(e) for e in v)
                                          for k, v in dict(self.bins).items()})

    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for clique in self.cliques for c in clique))

    def check(self, schema: Schema) -> None:
        if not self.cliques or any(not clique for clique in self.cliques):
            raise QueryError("Marginals needs at least one clique, each of one column or more")
        for clique in self.cliques:
            if len(set(clique)) != len(clique):
                raise QueryError(f"{self.describe()}: clique {list(clique)} repeats a column")
        check_bins(self, schema, self.inputs(), self.bins)

    def shape(self, schema: Schema, clique: Sequence[str]) -> tuple[int, ...]:
        """Levels of each column of a clique, in order."""
        return tuple(level_count(schema[c], self.bins.get(c)) for c in clique)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        # Real sums, not integer counts: DP backends then leave their noise unrounded.
        return tuple(Block(f"m{i}", int(np.prod(self.shape(schema, clique))), 1.0, 1.0, 1.0)
                     for i, clique in enumerate(self.cliques))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        level = {c: codes(data[c], schema[c], self.bins.get(c)) for c in self.inputs()}
        parts = {}
        for i, clique in enumerate(self.cliques):
            shape = self.shape(schema, clique)
            flat = (np.ravel_multi_index([level[c] for c in clique], shape)
                    if level[clique[0]].size else np.zeros(0, np.int64))
            parts[f"m{i}"] = np.bincount(flat, minlength=int(np.prod(shape))).astype(np.float64)
        return parts

    def finalize(self, total: np.ndarray, schema: Schema, state: State = None, *,
                 error_bounds: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The tables, even when the noisy n is below 1: a noisy count, not a subgroup
        with no rows (the estimator weighs it like any other measurement)."""
        return self.answer(self.layout(schema, state).split(total), schema, state)

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> tuple[np.ndarray, ...]:
        return tuple(parts[f"m{i}"].reshape(self.shape(schema, clique))
                     for i, clique in enumerate(self.cliques))
