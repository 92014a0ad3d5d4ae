"""Counts, sums, means, variances and standard deviations of one column."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pet.errors import QueryError
from pet.intervals import Interval, Spread, whole
from pet.layout import Block
from pet.queries.base import Query, State, affine, require_numeric, scale
from pet.schema import Schema


@dataclass(frozen=True)
class Count(Query):
    """Number of rows in the (optionally filtered) subgroup; a noisy count below zero is
    answered as 0 (post-processing)."""

    def inputs(self) -> tuple[str, ...]:
        return ()

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return ()

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        return {}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        return max(float(parts["n"][0]), 0.0)

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The noisy count's interval, in whole rows (it was rounded after the noise)."""
        interval = super().interval(total, spread, schema, state, answer)
        return None if interval is None else whole(interval, self.numbers(answer))


@dataclass(frozen=True)
class Moments(Query):
    """Shared layout of one column's moments: Σs and Σs² of the column scaled to [-1, 1]."""

    column: str

    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def check(self, schema: Schema) -> None:
        require_numeric(self, schema, self.inputs())

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.sums("sum", 1), Block.sums("sum_sq", 1))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        s = scale(schema[self.column], data[self.column])
        return {"sum": np.array([s.sum()]), "sum_sq": np.array([s @ s])}

    def moments(self, parts: dict[str, np.ndarray], schema: Schema) -> tuple[float, float, float]:
        """Count, mean and unbiased variance in the column's own units."""
        center, half = affine(schema[self.column])
        n, total, total_sq = parts["n"][0], parts["sum"][0], parts["sum_sq"][0]
        mean_scaled = total / n
        variance = np.nan if n < 2 else max(total_sq - n * mean_scaled**2, 0.0) / (n - 1)
        return n, center + half * mean_scaled, half**2 * variance


@dataclass(frozen=True)
class Sum(Moments):
    """Sum of a column over the subgroup."""

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        return (Block.sums("sum", 1),)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        return {"sum": np.array([scale(schema[self.column], data[self.column]).sum()])}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        center, half = affine(schema[self.column])
        return float(center * parts["n"][0] + half * parts["sum"][0])


@dataclass(frozen=True)
class Mean(Sum):
    """Mean of a column over the subgroup, always within the column's public bounds.

    Under DP the noisy mean is clipped to the bounds, and a noisy n below 1 says nothing
    about the values: the answer is then the bounds' midpoint, whose honest interval is
    the whole public range (post-processing; the release was charged either way)."""

    def min_rows(self, schema: Schema) -> int:
        return 1

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        return affine(schema[self.column])[0]

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        center, half = affine(schema[self.column])
        return float(center + half * np.clip(parts["sum"][0] / parts["n"][0], -1.0, 1.0))


@dataclass(frozen=True)
class Variance(Moments):
    """Sample variance (n - 1 in the denominator) of a column over the subgroup.

    An exact n below 2 is refused; a noisy n below 2 (a charged DP release) is answered
    NaN, as numpy and pandas answer the sample variance of fewer than two values: no
    spread can be estimated from it, only bounded by the column's public range."""

    def min_rows(self, schema: Schema) -> int:
        return 2

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        return math.nan

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        n, _, variance = self.moments(parts, schema)
        if n < 2:
            raise QueryError(f"{self.describe()}: needs at least 2 rows, got {n:g}")
        return float(variance)


@dataclass(frozen=True)
class StdDev(Variance):
    """Sample standard deviation of a column over the subgroup."""

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        return math.sqrt(super().answer(parts, schema, state))
