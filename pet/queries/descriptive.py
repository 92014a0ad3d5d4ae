"""Counts, sums, means, variances and standard deviations of one column."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pet.errors import QueryError
from pet.intervals import Interval, Spread, counts
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

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> int | float:
        """A whole number of rows (exact, or a DP count after its rounding); a float only
        where the sum came back inexact (CKKS sums too large to round back)."""
        n = max(float(parts["n"][0]), 0.0)
        return int(n) if n.is_integer() else n

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The noisy n's own interval, in whole rows from 0 (it was rounded and kept at 0
        or more after the noise)."""
        return counts(self.numbers(answer), self.block_spread(spread, schema, state, "n"))


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
        n, mean, variance = self.raw_moments(parts, schema)
        return n, mean, max(variance, 0.0)

    def raw_moments(self, parts: dict[str, np.ndarray],
                    schema: Schema) -> tuple[float, float, float]:
        """`moments` as the sums give them: from noisy sums (DP) the variance may be
        negative and the mean outside the bounds."""
        center, half = affine(schema[self.column])
        n, total, total_sq = parts["n"][0], parts["sum"][0], parts["sum_sq"][0]
        mean_scaled = total / n
        variance = np.nan if n < 2 else (total_sq - n * mean_scaled**2) / (n - 1)
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

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The noisy mean's interval, its ends kept within the public bounds."""
        center, half = affine(self.bounded(schema)[self.column])
        low, high = self.raw_interval(lambda p: center + half * p["sum"][0] / p["n"][0],
                                      total, spread, schema, state)
        return np.clip(low, center - half, center + half), np.clip(high, center - half,
                                                                   center + half)


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

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """The noisy variance's interval from the variance the sums give before it is kept
        at 0 or more, its ends then kept there too (None when n is too small for any)."""
        if not np.isfinite(answer):
            return None
        bounded = self.bounded(schema)
        low, high = self.raw_interval(lambda p: self.raw_moments(p, bounded)[2], total,
                                      spread, schema, state)
        return self.settle(np.maximum(low, 0.0), np.maximum(high, 0.0))

    def settle(self, low: np.ndarray, high: np.ndarray) -> Interval:
        """The interval of the answer from the variance's: the same."""
        return low, high


@dataclass(frozen=True)
class StdDev(Variance):
    """Sample standard deviation of a column over the subgroup."""

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> float:
        return math.sqrt(super().answer(parts, schema, state))

    def settle(self, low: np.ndarray, high: np.ndarray) -> Interval:
        """The standard deviation's interval: the square roots of the variance's ends."""
        return np.sqrt(low), np.sqrt(high)
